// Tokens: a gateway with --jwt-secret and short-lived HS256 tokens signed
// here. The token function is asked again after 4003 (expired) and after a
// 401 at the handshake, and ahead of expiry for a refresh in place.
import { test } from "node:test";
import assert from "node:assert/strict";
import { hs256, newClient, prefix, publisher, record, sleep, startGateway, until } from "./helpers.js";

const secret = "wsbus-client-test-secret";
const token = (seconds, sub = "ann") => hs256(secret, { sub, exp: Math.floor(Date.now() / 1000) + seconds, topics: ["tok:*"] });

test("an expired token (4003) is replaced by the token function and the topic resumes", async (t) => {
  const pfx = prefix();
  const g = await startGateway(t, pfx, { args: ["--jwt-secret", secret] });
  const pub = await publisher(pfx);
  let calls = 0;
  // The first token lives 1-2 s; the one after the 4003 long enough for the rest.
  const client = newClient(t, g.url, { token: async () => (++calls === 1 ? token(2) : token(60)), refreshBefore: 0 });
  const r = record(client, "tok:a");
  await r.waitSubscribed();
  const want = [await pub.xadd("tok:a", 1)];
  await r.waitEvents(1);
  await until(() => client.states.some((s) => s.code === 4003), 5000, "the gateway to close the connection with 4003");
  want.push(await pub.xadd("tok:a", 2));
  await r.waitSubscribed(2);
  want.push(await pub.xadd("tok:a", 3));
  await r.waitEvents(3);
  await sleep(100);
  assert.equal(calls, 2, "one token per connection");
  assert.ok(client.states.find((s) => s.code === 4003).delay <= 100, "reconnect at once after 4003");
  assert.deepEqual(r.ids(), want);
  assert.equal(r.subscribed[1].recovered, true);
  assert.deepEqual(r.gaps, []);
});

test("a token about to expire is refreshed in place: the connection stays open", async (t) => {
  const pfx = prefix();
  const g = await startGateway(t, pfx, { args: ["--jwt-secret", secret] });
  const pub = await publisher(pfx);
  let calls = 0;
  const client = newClient(t, g.url, { token: async () => (++calls, token(3)) });
  const refreshed = [];
  client.on("refreshed", (x) => refreshed.push(x));
  const r = record(client, "tok:b");
  await r.waitSubscribed();
  await until(() => refreshed.length >= 2, 10000, "two refreshes");
  const id = await pub.xadd("tok:b", "after the refreshes");
  await r.waitEvents(1);
  assert.deepEqual(r.ids(), [id]);
  assert.equal(client.states.filter((s) => s.s === "open").length, 1, `one connection, states ${JSON.stringify(client.states)}`);
  assert.ok(calls >= 3);
  assert.ok(refreshed.every((x) => x.expires * 1000 > Date.now() - 3000));
  assert.deepEqual(client.errors, []);
});

test("a token refused at the handshake (401) makes the client ask for another", async (t) => {
  const pfx = prefix();
  const g = await startGateway(t, pfx, { args: ["--jwt-secret", secret] });
  let calls = 0;
  const client = newClient(t, g.url, { token: async () => (++calls === 1 ? token(-10) : token(60)) });
  const r = record(client, "tok:c");
  await r.waitSubscribed();
  assert.equal(calls, 2);
  assert.ok(client.states.some((s) => s.s === "closed" && /401/.test(s.reason)), `a refused handshake, states ${JSON.stringify(client.states)}`);
});
