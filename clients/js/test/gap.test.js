// Events trimmed from a topic's history while the client was away: the
// resume is answered recovered:false with missed, and the client reports a
// gap with that count instead of hiding it, then delivers what is left.
import { test } from "node:test";
import assert from "node:assert/strict";
import { newClient, prefix, publisher, record, redis, sleep, startGateway, until } from "./helpers.js";

test("a resume after a trimmed history reports a gap with missed", async (t) => {
  const pfx = prefix();
  const g = await startGateway(t, pfx);
  const pub = await publisher(pfx);
  const rd = await redis();
  const client = newClient(t, g.url);
  const r = record(client, "trim");
  await r.waitSubscribed();
  const seen = [];
  for (let i = 1; i <= 5; i++) seen.push(await pub.xadd("trim", i));
  await r.waitEvents(5);

  client.close();
  const away = [];
  for (let i = 6; i <= 15; i++) away.push(await pub.xadd("trim", i));
  await until(async () => (await rd.call("XLEN", pub.history("trim"))) === 15, 10000, "the history to hold 15 events");
  assert.equal(await rd.call("XTRIM", pub.history("trim"), "MAXLEN", "3"), 12);

  client.connect();
  await r.waitSubscribed(2);
  await r.waitEvents(8);
  const live = await pub.xadd("trim", 16);
  await r.waitEvents(9);
  await sleep(100);

  assert.equal(r.subscribed[1].recovered, false);
  assert.equal(r.subscribed[1].missed, 7);
  assert.equal(r.gaps.length, 1, `one gap, have ${JSON.stringify(r.gaps)}`);
  assert.equal(r.gaps[0].missed, 7);
  assert.equal(r.gaps[0].recovered, false);
  assert.equal(r.gaps[0].after, seen[4]);
  assert.deepEqual(r.ids(), [...seen, ...away.slice(7), live], "what is left, once each, in order");
  assert.deepEqual(r.events.map((e) => e.seq), [1, 2, 3, 4, 5, 13, 14, 15, 16]);
  assert.deepEqual(r.resumed.map((x) => [x.count, x.recovered, x.missed]), [[3, false, 7]]);
});
