// A SIGTERM drain closes clients with 4002: the client reconnects at once
// (a small random delay, not the backoff) and resumes on the node that
// serves next, here a new gateway on the same address.
import { test } from "node:test";
import assert from "node:assert/strict";
import { freePort, newClient, prefix, publisher, record, sleep, startGateway, until } from "./helpers.js";

test("a drain (4002) reconnects at once, jittered, and resumes on the next gateway", async (t) => {
  const pfx = prefix();
  const listen = `127.0.0.1:${await freePort()}`;
  const g = await startGateway(t, pfx, { listen, args: ["--node-id", "a"] });
  const pub = await publisher(pfx);
  const client = newClient(t, g.url, { drainDelay: 100, reconnectDelay: 2000, maxReconnectDelay: 2000 });
  const r = record(client, "drain");
  await r.waitSubscribed();
  const want = [await pub.xadd("drain", 1), await pub.xadd("drain", 2)];
  await r.waitEvents(2);

  const { code } = await g.kill("SIGTERM");
  assert.equal(code, 0, "the drained gateway exits cleanly");
  const i = client.states.findIndex((s) => s.s === "closed" && s.code === 4002);
  assert.ok(i >= 0, `a close with 4002, states ${JSON.stringify(client.states)}`);
  assert.ok(client.states[i].delay <= 100, `reconnect after ${client.states[i].delay} ms, want within drainDelay (100), not the backoff (2000)`);
  await until(() => client.states.length > i + 1, 1000, "the reconnect attempt after 4002");
  assert.equal(client.states[i + 1].s, "connecting");
  assert.ok(client.states[i + 1].at - client.states[i].at < 1000, "not after the backoff (2000 ms)");

  want.push(await pub.xadd("drain", 3), await pub.xadd("drain", 4)); // published between the nodes
  await startGateway(t, pfx, { listen, args: ["--node-id", "b"] });
  await r.waitEvents(4, 15000);
  want.push(await pub.xadd("drain", 5));
  await r.waitEvents(5);
  await sleep(100);
  assert.deepEqual(r.ids(), want);
  assert.deepEqual(r.events.map((e) => e.seq), [1, 2, 3, 4, 5]);
  assert.equal(r.subscribed.at(-1).recovered, true);
  assert.deepEqual(r.gaps, []);
});
