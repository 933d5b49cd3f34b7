// Resume across a gateway that dies, a page reload and a connection that
// goes silent: every event reaches the handler once and in order.
import { test } from "node:test";
import assert from "node:assert/strict";
import { freePort, memoryStore, newClient, prefix, publisher, record, redis, sleep, startGateway, until } from "./helpers.js";

const seqs = (r) => r.events.map((e) => e.seq);
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test("every topic resumes after the gateway is SIGKILLed and restarted on the same address", async (t) => {
  const pfx = prefix();
  const listen = `127.0.0.1:${await freePort()}`;
  let g = await startGateway(t, pfx, { listen, args: ["--node-id", "a", "--lease-ttl", "1s"] });
  const pub = await publisher(pfx);
  const client = newClient(t, g.url);
  const topics = ["kill:a", "kill:b"];
  const rec = Object.fromEntries(topics.map((topic) => [topic, record(client, topic)]));
  const want = Object.fromEntries(topics.map((topic) => [topic, []]));
  const publish = async (from, to) => {
    for (let i = from; i < to; i++) for (const topic of topics) want[topic].push(await pub.xadd(topic, { i }));
  };
  for (const topic of topics) await rec[topic].waitSubscribed();

  await publish(0, 3);
  for (const topic of topics) await rec[topic].waitEvents(3);
  await g.kill("SIGKILL");
  await until(() => client.state !== "open", 5000, "the client to see the connection die");
  await publish(3, 6); // no gateway: they wait in the ingress
  g = await startGateway(t, pfx, { listen, args: ["--node-id", "b", "--lease-ttl", "1s"] });
  for (const topic of topics) await rec[topic].waitEvents(6);
  await publish(6, 8); // live again
  for (const topic of topics) await rec[topic].waitEvents(8);
  await sleep(100);

  for (const topic of topics) {
    const r = rec[topic];
    assert.deepEqual(r.ids(), want[topic], `${topic}: every event once, in order`);
    assert.deepEqual(seqs(r), range(1, 8));
    assert.deepEqual(r.gaps, []);
    assert.equal(r.subscribed.length, 2);
    assert.equal(r.subscribed[1].resumed, true);
    assert.equal(r.subscribed[1].recovered, true);
    assert.equal(r.resumed.length, 1, "one resumed report per resume");
  }
  assert.ok(client.states.some((s) => s.s === "closed" && s.delay !== undefined), "a reconnect was scheduled");
  assert.deepEqual(client.errors, []);
});

test("a new Client with the same store resumes where the last one stopped (a page reload)", async (t) => {
  const pfx = prefix();
  const g = await startGateway(t, pfx);
  const pub = await publisher(pfx);
  const store = memoryStore();
  const first = newClient(t, g.url, { store });
  const r1 = record(first, "reload");
  await r1.waitSubscribed();
  const seen = [await pub.xadd("reload", "a"), await pub.xadd("reload", "b")];
  await r1.waitEvents(2);
  first.close();
  const key = [...store.map.keys()].find((k) => k.includes(g.url) && k.endsWith(" reload"));
  assert.ok(key, `a store key for the URL and the topic, have ${[...store.map.keys()]}`);
  assert.equal(JSON.parse(store.map.get(key)).since, seen[1]);

  const away = [await pub.xadd("reload", "c"), await pub.xadd("reload", "d"), await pub.xadd("reload", "e")];
  const r = await redis();
  await until(async () => (await r.call("XLEN", pub.history("reload"))) === 5, 10000, "the history to hold 5 events");

  const second = newClient(t, g.url, { store });
  const r2 = record(second, "reload");
  await r2.waitEvents(3);
  const live = await pub.xadd("reload", "f");
  await r2.waitEvents(4);
  await sleep(100);
  assert.deepEqual(r2.ids(), [...away, live]);
  assert.deepEqual(seqs(r2), [3, 4, 5, 6]);
  assert.equal(r2.subscribed[0].resumed, true);
  assert.equal(r2.subscribed[0].recovered, true);
  assert.deepEqual(r2.resumed.map((x) => x.count), [3], "the library counts the events recovered");
  assert.deepEqual(r2.gaps, []);
});

test("a gateway that stops answering is noticed by the ping and left; the client resumes when it answers again", async (t) => {
  const pfx = prefix();
  const g = await startGateway(t, pfx, { args: ["--lease-ttl", "1s"] });
  const pub = await publisher(pfx);
  const client = newClient(t, g.url, { pingInterval: 300, pongTimeout: 300, connectTimeout: 500 });
  const r = record(client, "stall");
  await r.waitSubscribed();
  const want = [await pub.xadd("stall", 1)];
  await r.waitEvents(1);

  g.child.kill("SIGSTOP");
  const t0 = Date.now();
  await until(() => client.states.some((s) => s.reason === "no answer to ping"), 5000, "the ping to find the connection dead");
  const noticed = Date.now() - t0;
  assert.ok(noticed < 2000, `noticed after ${noticed} ms, want within ping interval + pong timeout`);
  want.push(await pub.xadd("stall", 2));
  g.child.kill("SIGCONT");
  await r.waitEvents(2, 15000);
  want.push(await pub.xadd("stall", 3));
  await r.waitEvents(3);
  assert.deepEqual(r.ids(), want);
  assert.deepEqual(r.gaps, []);
});
