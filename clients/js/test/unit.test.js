// Unit tests of the client against a scripted fake WebSocket: what it sends,
// what it hands the application, and what it does on each close code, in
// cases a real gateway does not produce on demand (duplicates, events out of
// order, a hole in seq).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client, compareIds, isId, tokenExpiry } from "../index.js";
import { crc32, partition, publish } from "../publish.js";
import { hs256, memoryStore, sleep, until } from "./helpers.js";

class FakeWS {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWS.all.push(this);
  }
  send(s) {
    this.sent.push(JSON.parse(s));
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  recv(m) {
    this.onmessage?.({ data: JSON.stringify(m) });
  }
  drop(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  static last() {
    return FakeWS.all.at(-1);
  }
}

const subscribed = (topic, extra) => ({ type: "subscribed", topic, recovered: true, epoch: "e1", head: "0", seq: 0, ...extra });
const event = (topic, id, seq, data = seq) => ({ type: "event", topic, id, seq, data });

function fake(t, options = {}) {
  FakeWS.all = [];
  const c = new Client("ws://gw.test/v1/ws", { WebSocket: FakeWS, reconnectDelay: 10, maxReconnectDelay: 40, drainDelay: 5, ...options });
  c.states = [];
  c.errors = [];
  c.on("state", (s, info) => c.states.push({ s, ...info }));
  c.on("error", (e) => c.errors.push(e));
  t.after(() => c.close());
  return c;
}

async function opened(c) {
  await until(() => FakeWS.last() && FakeWS.last().readyState === 0, 1000, "a socket");
  const ws = FakeWS.last();
  ws.open();
  return ws;
}

function collect(sub) {
  const r = { events: [], gaps: [], subscribed: [], resumed: [] };
  sub.on("gap", (g) => r.gaps.push(g)).on("subscribed", (i) => r.subscribed.push(i)).on("resumed", (x) => r.resumed.push(x));
  return r;
}

test("compareIds orders stream IDs numerically, past 2^53", () => {
  const cases = [
    ["9-0", "10-0", -1],
    ["1718000000000-2", "1718000000000-10", -1],
    ["1718000000000-0", "1718000000000-0", 0],
    ["0", "0-0", 0],
    ["0", "1-0", -1],
    ["18446744073709551615-1", "18446744073709551615-0", 1],
    ["9007199254740993-0", "9007199254740992-0", 1],
  ];
  for (const [a, b, want] of cases) {
    assert.equal(compareIds(a, b), want, `${a} vs ${b}`);
    assert.equal(compareIds(b, a), 0 - want, `${b} vs ${a}`);
  }
  assert.throws(() => compareIds("acked", "0"), TypeError);
  assert.equal(isId("1-2"), true);
  assert.equal(isId("1-"), false);
  assert.equal(isId("acked"), false);
});

test("tokenExpiry reads exp from a JWT's payload, and nothing from what is not one", () => {
  assert.equal(tokenExpiry(hs256("k", { exp: 1893456000, sub: "é" })), 1893456000);
  assert.equal(tokenExpiry(hs256("k", { sub: "x" })), undefined);
  assert.equal(tokenExpiry("not a jwt"), undefined);
  assert.equal(tokenExpiry(""), undefined);
});

test("crc32 and partition match zlib and the README (demo is partition 32 of 64)", () => {
  assert.equal(crc32("123456789"), 0xcbf43926);
  assert.equal(crc32("héllo"), 2654700086); // UTF-8 bytes, as zlib.crc32("héllo".encode())
  assert.equal(partition("demo", 64), 32);
  assert.equal(partition("user:42", 64), 6);
});

test("publish XADDs to the topic's partition with node-redis and ioredis shapes", async () => {
  const calls = [];
  const nodeRedis = { hGet: async () => "64", xAdd: async (...a) => (calls.push(a), "1-0") };
  assert.equal(await publish(nodeRedis, "user:42", { text: "hi" }), "1-0");
  await publish(nodeRedis, "demo", "plain");
  const ioredis = { xadd: async (...a) => (calls.push(a), "2-0") };
  assert.equal(await publish(ioredis, "demo", [1], { prefix: "p", partitions: 64 }), "2-0");
  assert.deepEqual(calls, [
    ["wsbus:{6}:in", "*", { topic: "user:42", data: '{"text":"hi"}' }],
    ["wsbus:{32}:in", "*", { topic: "demo", data: '"plain"' }],
    ["p:{32}:in", "*", "topic", "demo", "data", "[1]"],
  ]);
  await assert.rejects(publish({ hGet: async () => null, xAdd: async () => "" }, "t", 1), /no partitions/);
});

test("a first subscribe takes the head as its cursor; duplicates and events out of order are dropped", async (t) => {
  const c = fake(t);
  const got = [];
  const sub = c.subscribe("t", (e) => got.push(e));
  const r = collect(sub);
  const ws = await opened(c);
  assert.deepEqual(ws.sent, [{ type: "subscribe", topic: "t" }]);
  ws.recv(subscribed("t", { head: "100-0", seq: 7 }));
  assert.deepEqual(sub.cursor, { since: "100-0", seq: 7, epoch: "e1" });
  ws.recv(event("t", "99-5", 6)); // at or below the head: not owed
  ws.recv(event("t", "100-1", 8));
  ws.recv(event("t", "100-1", 8)); // duplicate
  ws.recv(event("t", "101-0", 9));
  ws.recv(event("t", "100-5", 9)); // out of order
  assert.deepEqual(got.map((e) => e.id), ["100-1", "101-0"]);
  assert.deepEqual(got[0], { topic: "t", id: "100-1", seq: 8, data: 8 });
  assert.equal(sub.dropped, 3);
  assert.deepEqual(r.gaps, []);
  assert.equal(r.subscribed[0].resumed, false);
  assert.deepEqual(r.resumed, [], "nothing to resume on a first subscribe");
});

test("a hole in seq is reported as a gap, and the event still delivered; seq 1 begins a new sequence", async (t) => {
  const c = fake(t);
  const got = [];
  const r = collect(c.subscribe("t", (e) => got.push(e.seq)));
  const ws = await opened(c);
  ws.recv(subscribed("t", { head: "5-0", seq: 5 }));
  ws.recv(event("t", "6-0", 6));
  ws.recv(event("t", "9-0", 9));
  ws.recv(event("t", "10-0", 1)); // the sequence started again: no hole
  ws.recv(event("t", "11-0", 2));
  ws.recv(event("t", "12-0", 2)); // seq repeated under a newer ID
  assert.deepEqual(got, [6, 9, 1, 2, 2]);
  assert.deepEqual(r.gaps, [
    { topic: "t", reason: "seq", after: "6-0", id: "9-0", seq: 9, missed: 2 },
    { topic: "t", reason: "seq", after: "11-0", id: "12-0", seq: 2 },
  ]);
});

test("a reconnect resumes every topic with since, seq and epoch, and reports the catch-up", async (t) => {
  const c = fake(t);
  const got = [];
  const a = collect(c.subscribe("a", (e) => got.push(e.id)));
  c.subscribe("b", () => {});
  let ws = await opened(c);
  ws.recv(subscribed("a", { head: "1-0", seq: 1, epoch: "ea" }));
  ws.recv(subscribed("b", { head: "0", seq: 0, epoch: "eb" }));
  ws.recv(event("a", "2-0", 2));
  ws.drop(1006);
  assert.equal(c.state, "closed");
  assert.ok(c.states.at(-1).delay <= 10, "the first retry within reconnectDelay");
  ws = await opened(c);
  assert.deepEqual(ws.sent, [
    { type: "subscribe", topic: "a", since: "2-0", seq: 2, epoch: "ea" },
    { type: "subscribe", topic: "b", since: "0", seq: 0, epoch: "eb" },
  ]);
  ws.recv(event("a", "3-0", 3)); // before subscribed: not this subscription's
  ws.recv(subscribed("a", { head: "4-0", seq: 4, epoch: "ea" }));
  ws.recv(event("a", "2-0", 2));
  ws.recv(event("a", "3-0", 3));
  assert.deepEqual(a.resumed, []);
  ws.recv(event("a", "4-0", 4));
  assert.deepEqual(got, ["2-0", "3-0", "4-0"]);
  assert.deepEqual(a.resumed, [{ topic: "a", recovered: true, count: 2 }]);
  assert.equal(a.subscribed[1].resumed, true);
});

test("recovered:false is a gap with missed; the retained events that follow are no second gap", async (t) => {
  const c = fake(t);
  const got = [];
  const r = collect(c.subscribe("t", (e) => got.push(e.seq), { since: "10-0", seq: 10, epoch: "e1" }));
  const ws = await opened(c);
  assert.deepEqual(ws.sent, [{ type: "subscribe", topic: "t", since: "10-0", seq: 10, epoch: "e1" }]);
  ws.recv(subscribed("t", { recovered: false, head: "20-0", seq: 20, missed: 7 }));
  for (let s = 18; s <= 20; s++) ws.recv(event("t", `${s}-0`, s));
  assert.deepEqual(got, [18, 19, 20]);
  assert.deepEqual(r.gaps, [{ topic: "t", reason: "not_recovered", recovered: false, after: "10-0", epoch: "e1", missed: 7 }]);
  assert.deepEqual(r.resumed, [{ topic: "t", recovered: false, missed: 7, count: 3 }]);
});

test("a new epoch: what Redis kept at or below the cursor was handed over already, and is dropped", async (t) => {
  // Redis restored an older snapshot: the server sends everything retained.
  const c = fake(t);
  const got = [];
  const sub = c.subscribe("t", (e) => got.push(e.id), { since: "50-0", seq: 50, epoch: "old" });
  const r = collect(sub);
  const ws = await opened(c);
  ws.recv(subscribed("t", { recovered: false, epoch: "new", head: "60-0", seq: 4 }));
  assert.deepEqual(sub.cursor, { since: "50-0", seq: undefined, epoch: "new" }, "the old seq is not sent again");
  ws.recv(event("t", "20-0", 1));
  ws.recv(event("t", "50-0", 2));
  ws.recv(event("t", "55-0", 3));
  ws.recv(event("t", "60-0", 4));
  ws.recv(event("t", "60-0", 4)); // twice: still dropped
  assert.deepEqual(got, ["55-0", "60-0"]);
  assert.equal(sub.dropped, 3);
  assert.equal(r.gaps.length, 1);
  assert.deepEqual(sub.cursor, { since: "60-0", seq: 4, epoch: "new" });
});

test("a stream that went back below the cursor: the head is the cursor to resume from, the old one still drops what was handed", async (t) => {
  const c = fake(t);
  const got = [];
  const sub = c.subscribe("t", (e) => got.push(e.id), { since: "50-0", seq: 50, epoch: "old" });
  const ws = await opened(c);
  ws.recv(subscribed("t", { recovered: false, epoch: "new", head: "30-0", seq: 2 }));
  assert.deepEqual(sub.cursor, { since: "30-0", seq: 2, epoch: "new" });
  ws.recv(event("t", "20-0", 1)); // retained: handed before the loss
  ws.recv(event("t", "30-0", 2));
  ws.recv(event("t", "40-0", 3)); // applied again from ingress by a new owner: handed before the loss
  ws.recv(event("t", "60-0", 4));
  assert.deepEqual(got, ["60-0"]);
  assert.equal(sub.dropped, 3);
  assert.deepEqual(sub.cursor, { since: "60-0", seq: 4, epoch: "new" });
});

test("the store holds a cursor once the handler returned: a process that dies in its handler gets the event again", async (t) => {
  const store = new Map();
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
  const c = fake(t, { store: storage });
  const key = "wsbus-client ws://gw.test/v1/ws t";
  const seen = [];
  c.subscribe("t", (e) => seen.push([e.id, store.get(key) && JSON.parse(store.get(key)).since]), { since: "0" });
  const ws = await opened(c);
  ws.recv(subscribed("t", { head: "2-0", seq: 2 }));
  ws.recv(event("t", "1-0", 1));
  ws.recv(event("t", "2-0", 2));
  assert.deepEqual(seen, [["1-0", "0"], ["2-0", "1-0"]], "in the handler, the store still holds the event before");
  assert.equal(JSON.parse(store.get(key)).since, "2-0");
});

test("close codes: 4002 and 4003 reconnect at once; other closes back off, exponentially with full jitter", async (t) => {
  const c = fake(t, { token: async () => "tok", reconnectDelay: 1000, maxReconnectDelay: 8000, drainDelay: 5 });
  let ws = await opened(c);
  ws.drop(4002);
  assert.ok(c.states.at(-1).delay <= 5);
  ws = await opened(c);
  ws.drop(4003);
  assert.equal(c.states.at(-1).code, 4003);
  assert.ok(c.states.at(-1).delay <= 5);
  ws = await opened(c);
  const caps = [];
  for (let i = 0; i < 6; i++) caps.push(Math.min(8000, 1000 * 2 ** i));
  for (const cap of caps) {
    const d = c._backoff();
    assert.ok(d >= 0 && d < cap, `delay ${d} within [0, ${cap})`);
  }
});

test("a static token that expires (4003) stops the client: no token function to get another", async (t) => {
  const c = fake(t, { token: "static" });
  const ws = await opened(c);
  assert.match(ws.url, /[?&]token=static/);
  ws.drop(4003, "token expired");
  await sleep(30);
  assert.equal(FakeWS.all.length, 1, "no reconnect");
  assert.equal(c.state, "closed");
  assert.match(String(c.errors[0]), /token expired/);
});

test("token and user go in the query; a token function is asked again after a refused handshake", async (t) => {
  let n = 0;
  const c = fake(t, { token: async () => `t${++n}`, user: "ann" });
  let ws = await opened(c);
  assert.equal(new URL(ws.url).searchParams.get("token"), "t1");
  assert.equal(new URL(ws.url).searchParams.get("user"), "ann");
  ws.drop(1006); // after an open connection: the token is still good
  ws = await opened(c);
  assert.equal(new URL(ws.url).searchParams.get("token"), "t1");
  ws.drop(1006);
  await until(() => FakeWS.all.length === 3 && FakeWS.last().readyState === 0);
  FakeWS.last().drop(1006, "Unexpected server response: 401"); // refused before open
  ws = await opened(c);
  assert.equal(new URL(ws.url).searchParams.get("token"), "t2");
  assert.equal(n, 2);
});

test("a quiet connection is pinged; one that does not answer is left and replaced", async (t) => {
  const c = fake(t, { pingInterval: 40, pongTimeout: 40 });
  const ws = await opened(c);
  await until(() => ws.sent.some((m) => m.type === "ping"), 1000, "a ping");
  ws.recv({ type: "pong" });
  await sleep(60);
  assert.equal(c.state, "open", "a pong keeps it");
  await until(() => c.states.some((s) => s.reason === "no answer to ping"), 1000, "the dead connection to be left");
  assert.equal(ws.closedWith.code, 4000);
  await until(() => FakeWS.all.length === 2, 1000, "a new connection");
});

test("acks wait for a connection, newest per topic; sent at once when open", async (t) => {
  const c = fake(t);
  c.ack("t", "5-0");
  c.ack("t", "7-0");
  c.ack("t", "6-0");
  c.ack("u", "1-0");
  const ws = await opened(c);
  assert.deepEqual(ws.sent, [
    { type: "ack", topic: "t", id: "7-0" },
    { type: "ack", topic: "u", id: "1-0" },
  ]);
  c.ack("t", "8-0");
  assert.deepEqual(ws.sent.at(-1), { type: "ack", topic: "t", id: "8-0" });
  assert.throws(() => c.ack("t", "latest"), TypeError);
});

test("the store keeps each topic's cursor under its URL, for the next Client", async (t) => {
  const store = memoryStore();
  const c = fake(t, { store });
  c.subscribe("t", () => {});
  let ws = await opened(c);
  ws.recv(subscribed("t", { head: "3-0", seq: 3 }));
  ws.recv(event("t", "4-0", 4));
  c.close();
  assert.deepEqual(JSON.parse(store.getItem("wsbus-client ws://gw.test/v1/ws t")), { since: "4-0", seq: 4, epoch: "e1" });
  const d = fake(t, { store });
  d.subscribe("t", () => {}, { since: "acked" });
  ws = await opened(d);
  assert.deepEqual(ws.sent, [{ type: "subscribe", topic: "t", since: "4-0", seq: 4, epoch: "e1" }], "the stored cursor wins over since");
});

test("since acked is resent until the first event; events of an unsubscribed topic are ignored until it is answered", async (t) => {
  const c = fake(t);
  const got = [];
  const sub = c.subscribe("t", (e) => got.push(e.id), { since: "acked" });
  let ws = await opened(c);
  ws.recv(subscribed("t", { head: "9-0", seq: 9, acked: "7-0", unread: 2 }));
  ws.drop(1006);
  ws = await opened(c);
  assert.deepEqual(ws.sent, [{ type: "subscribe", topic: "t", since: "acked" }]);
  ws.recv(subscribed("t", { head: "9-0", seq: 9, acked: "7-0", unread: 2 }));
  ws.recv(event("t", "8-0", 8));
  sub.unsubscribe();
  const again = [];
  c.subscribe("t", (e) => again.push(e.id));
  assert.deepEqual(ws.sent.slice(-2), [{ type: "unsubscribe", topic: "t" }, { type: "subscribe", topic: "t" }]);
  ws.recv(event("t", "9-0", 9)); // the old subscription's, before unsubscribed
  ws.recv({ type: "unsubscribed", topic: "t" });
  ws.recv(subscribed("t", { head: "9-0", seq: 9 }));
  ws.recv(event("t", "10-0", 10));
  assert.deepEqual(got, ["8-0"]);
  assert.deepEqual(again, ["10-0"]);
});

test("a refused subscribe ends the subscription and is reported on it", async (t) => {
  const c = fake(t);
  const sub = c.subscribe("secret", () => {});
  const errors = [];
  sub.on("error", (e) => errors.push(e));
  const ws = await opened(c);
  ws.recv({ type: "error", code: "forbidden", topic: "secret", message: "token does not allow this topic" });
  assert.equal(errors[0].code, "forbidden");
  assert.equal(errors[0].topic, "secret");
  c.subscribe("secret", () => {}); // may subscribe again: the first is gone
  assert.deepEqual(c.errors, []);
});

test("without a WebSocket implementation the constructor says what to pass", () => {
  const saved = globalThis.WebSocket;
  try {
    delete globalThis.WebSocket;
    assert.throws(() => new Client("ws://x/v1/ws"), /pass \{ WebSocket \}/);
  } finally {
    if (saved) globalThis.WebSocket = saved;
  }
});
