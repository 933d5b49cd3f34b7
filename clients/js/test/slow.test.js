// A client that cannot keep up. With --slow-consumer close (before that
// flag existed, the only behaviour) it is closed with 4001, reconnects and
// resumes from the last event it handed over; with lag (the default once
// the flag exists) the gateway catches it up on the same connection. Either
// way the handler gets every event once, in order.
import { test } from "node:test";
import assert from "node:assert/strict";
import { WebSocket, newClient, prefix, publisher, record, redis, serveHelp, sleep, startGateway, until } from "./helpers.js";

const hasMode = serveHelp().includes("-slow-consumer");

test("a slow consumer closed with 4001 resumes and loses nothing", (t) => slowReader(t, "close"));

test("a slow consumer in --slow-consumer lag mode is caught up on the same connection", { skip: !hasMode && "this gateway has no --slow-consumer flag yet" }, (t) =>
  slowReader(t, "lag"));

async function slowReader(t, mode) {
  const pfx = prefix();
  const args = ["--max-queue", "65536", "--history-len", "5000"];
  if (hasMode) args.push("--slow-consumer", mode);
  const g = await startGateway(t, pfx, { args });
  const pub = await publisher(pfx);
  const sockets = [];
  class Pausable extends WebSocket {
    constructor(...a) {
      super(...a);
      sockets.push(this);
    }
  }
  const client = newClient(t, g.url, { WebSocket: Pausable });
  const r = record(client, "firehose");
  await r.waitSubscribed();

  // Stop reading, then publish more than the socket buffers on both sides
  // and --max-queue hold together: 3000 events of 8 KiB.
  sockets[0].pause();
  const payload = "x".repeat(8192);
  const want = await Promise.all(Array.from({ length: 3000 }, (_, i) => pub.xadd("firehose", `${i} ${payload}`)));
  const rd = await redis();
  await until(async () => (await rd.call("XLEN", pub.history("firehose"))) === want.length, 20000, "the history to hold every event");
  await sleep(200);
  sockets[0].resume();

  await r.waitEvents(want.length, 30000);
  await sleep(100);
  if (mode === "close") {
    assert.ok(client.states.some((s) => s.s === "closed" && s.code === 4001), `closed with 4001, states ${JSON.stringify(client.states)}`);
    assert.ok(sockets.length >= 2, "it reconnected");
  } else {
    assert.deepEqual(client.states.map((s) => s.s), ["connecting", "open"], "one connection throughout");
  }
  assert.equal(r.events.length, want.length);
  assert.deepEqual(r.ids(), want, "every event once, in order");
  assert.equal(r.subscribed.at(-1).recovered, true);
  assert.deepEqual(r.gaps, []);
}
