// An independent wsbus client written against the protocol in the README only,
// with Node's ws package. The Go test drives it over stdin/stdout:
//
//   phase 1: subscribe to TOPIC, print SUBSCRIBED, print EVENT <id> <data> for
//            FIRST events, close, print AWAY <epoch> <last id>
//   wait for a line "GO" on stdin
//   phase 2: reconnect with ?topic=&since=&epoch=, print SUBSCRIBED <recovered>
//            and EVENT lines for SECOND events, then exit 0.
import WebSocket from "ws";
import readline from "node:readline";

const [url, topic, first, second] = [process.argv[2], process.argv[3], +process.argv[4], +process.argv[5]];
const out = (line) => process.stdout.write(line + "\n");
const fail = (msg) => { out("FAIL " + msg); process.exit(1); };
setTimeout(() => fail("timed out"), 30000).unref();

let epoch = "", last = "";
const seen = new Set();

function session(wsURL, want, onSubscribed, onSent) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsURL);
    let got = 0;
    ws.on("error", reject);
    ws.on("message", (raw, isBinary) => {
      if (isBinary) return reject(new Error("binary frame from server"));
      const m = JSON.parse(raw.toString());
      if (m.type === "subscribed") {
        epoch = m.epoch;
        onSubscribed(ws, m);
      } else if (m.type === "event") {
        if (seen.has(m.id)) return reject(new Error("duplicate " + m.id));
        if (last && !(cmp(m.id, last) > 0)) return reject(new Error("out of order " + m.id + " after " + last));
        seen.add(m.id);
        last = m.id;
        out("EVENT " + m.id + " " + JSON.stringify(m.data));
        if (++got === want) { ws.close(1000); }
      } else if (m.type === "error") {
        reject(new Error("server error " + m.code + ": " + m.message));
      }
    });
    ws.on("close", () => resolve());
    ws.on("open", () => onSent(ws));
  });
}

function cmp(a, b) {
  const [am, as] = a.split("-").map(BigInt), [bm, bs] = b.split("-").map(BigInt);
  return am === bm ? (as === bs ? 0 : as < bs ? -1 : 1) : am < bm ? -1 : 1;
}

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

try {
  await session(url, first, () => out("SUBSCRIBED"), (ws) => ws.send(JSON.stringify({ type: "subscribe", topic })));
  out("AWAY " + epoch + " " + last);
  if ((await nextLine()).trim() !== "GO") fail("expected GO");
  const resumeURL = url + "?topic=" + encodeURIComponent(topic) + "&since=" + last + "&epoch=" + epoch;
  await session(resumeURL, second, (ws, m) => out("SUBSCRIBED " + m.recovered), () => {});
  process.exit(0);
} catch (e) {
  fail(e.message);
}
