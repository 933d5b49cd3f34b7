// Acknowledgements: two devices of one subject share a cursor per topic.
// A device that subscribes with since:"acked" starts after what any device
// of the subject acknowledged; an ack made while disconnected is sent on
// the next connection.
import { test } from "node:test";
import assert from "node:assert/strict";
import { newClient, prefix, publisher, record, sleep, startGateway, until } from "./helpers.js";

test('since:"acked" starts after the subject\'s acknowledged cursor, on another device', async (t) => {
  const pfx = prefix();
  const g = await startGateway(t, pfx);
  const pub = await publisher(pfx);
  const phone = newClient(t, g.url, { user: "ann" });
  const rp = record(phone, "inbox", { since: "acked" });
  await until(() => rp.subscribed.length || rp.errors.length, 10000, "an answer to the subscribe");
  assert.deepEqual(rp.errors, []);
  const ids = [await pub.xadd("inbox", 1), await pub.xadd("inbox", 2), await pub.xadd("inbox", 3)];
  await rp.waitEvents(3);
  phone.ack("inbox", ids[1]);
  await sleep(200); // acks are written in batches (a few ms)
  phone.close();

  const laptop = newClient(t, g.url, { user: "ann" });
  const rl = record(laptop, "inbox", { since: "acked" });
  await rl.waitEvents(1);
  await sleep(100);
  assert.equal(rl.subscribed[0].acked, ids[1]);
  assert.equal(rl.subscribed[0].unread, 1);
  assert.deepEqual(rl.ids(), [ids[2]]);
  assert.deepEqual(rl.resumed.map((x) => x.count), [1]);

  // An ack while disconnected waits for the next connection.
  laptop.close();
  laptop.ack("inbox", ids[2]);
  laptop.connect();
  await rl.waitSubscribed(2);
  await sleep(200);
  const tablet = newClient(t, g.url, { user: "ann" });
  const rt = record(tablet, "inbox", { since: "acked" });
  await rt.waitSubscribed();
  assert.equal(rt.subscribed[0].acked, ids[2]);
  assert.equal(rt.subscribed[0].unread, 0);
  assert.deepEqual(rt.resumed.map((x) => x.count), [0]);
  assert.deepEqual([...phone.errors, ...laptop.errors, ...tablet.errors], []);
});
