// Helpers for the end-to-end tests of wsbus-client: a real redis-server, the
// real gateway binary, a small RESP client to publish and trim, HS256 tokens.
//
// JSCLIENT_GATEWAY names the gateway binary and JSCLIENT_REDIS a Redis URL
// (not WSBUS_*: the gateway reads those as its flags); the Go test that runs
// this suite (internal/e2e, TestJSClient) sets both; `npm test` builds the
// binary once and sets JSCLIENT_GATEWAY. Without them, each test file builds
// the binary and starts its own redis-server on a free port, so a file also
// runs on its own (node --test test/gap.test.js).
import { execFileSync, spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { Client } from "../index.js";
import { partition } from "../publish.js";

export { WebSocket };
export const jsDir = path.resolve(fileURLToPath(import.meta.url), "../..");
export const repoDir = path.resolve(jsDir, "../..");
const wait = 10000;

const children = new Set();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

function track(child) {
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

let tmp;
function tmpDir() {
  return (tmp ??= fs.mkdtempSync(path.join(os.tmpdir(), "wsbus-client-test-")));
}
process.on("exit", () => tmp && fs.rmSync(tmp, { recursive: true, force: true }));

/** freePort returns a TCP port nothing listens on now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** until polls fn every 20 ms until it returns a truthy value, for at most ms. */
export async function until(fn, ms = wait, what = "condition") {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${typeof what === "function" ? what() : what}`);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** prefix is a key prefix of its own for each test. */
export const prefix = () => "jsc" + crypto.randomBytes(4).toString("hex");

// Resp is a minimal RESP2 client: enough to XADD, HGET and XTRIM, pipelined.
export class Resp {
  constructor(host, port) {
    this.host = host;
    this.port = port;
    this.buf = Buffer.alloc(0);
    this.queue = [];
  }

  connect() {
    return new Promise((resolve, reject) => {
      this.sock = net.connect(this.port, this.host, () => resolve(this));
      this.sock.on("error", (err) => {
        reject(err);
        for (const q of this.queue.splice(0)) q.reject(err);
      });
      this.sock.on("data", (d) => this.onData(d));
      this.sock.unref();
    });
  }

  call(...args) {
    let out = `*${args.length}\r\n`;
    for (const a of args.map(String)) out += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
    return new Promise((resolve, reject) => {
      this.queue.push({ resolve, reject });
      this.sock.ref(); // keep the process alive while a reply is due
      this.sock.write(out);
    });
  }

  onData(d) {
    this.buf = Buffer.concat([this.buf, d]);
    for (;;) {
      const r = parseReply(this.buf, 0);
      if (!r) return;
      this.buf = this.buf.subarray(r[1]);
      const q = this.queue.shift();
      if (r[0] instanceof Error) q.reject(r[0]);
      else q.resolve(r[0]);
      if (this.queue.length === 0) this.sock.unref();
    }
  }

  close() {
    this.sock.destroy();
  }
}

function parseReply(buf, i) {
  const nl = buf.indexOf("\r\n", i);
  if (nl < 0) return undefined;
  const line = buf.toString("utf8", i + 1, nl);
  switch (String.fromCharCode(buf[i])) {
    case "+":
      return [line, nl + 2];
    case "-":
      return [new Error(line), nl + 2];
    case ":":
      return [Number(line), nl + 2];
    case "$": {
      const n = Number(line);
      if (n < 0) return [null, nl + 2];
      if (buf.length < nl + 2 + n + 2) return undefined;
      return [buf.toString("utf8", nl + 2, nl + 2 + n), nl + 2 + n + 2];
    }
    case "*": {
      const n = Number(line);
      if (n < 0) return [null, nl + 2];
      const arr = [];
      let j = nl + 2;
      for (let k = 0; k < n; k++) {
        const r = parseReply(buf, j);
        if (!r) return undefined;
        arr.push(r[0]);
        j = r[1];
      }
      return [arr, j];
    }
  }
  throw new Error("RESP: unexpected reply " + JSON.stringify(buf.toString("utf8", i, nl)));
}

let redisP;
/** redis is the suite's Redis: {url, host, port, call(...)}. */
export function redis() {
  return (redisP ??= startRedis());
}

async function startRedis() {
  let url = process.env.JSCLIENT_REDIS;
  if (!url) {
    const port = await freePort();
    const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmpDir()], { stdio: "ignore" });
    track(child).unref(); // killed at exit; it must not keep the process alive
    url = `redis://127.0.0.1:${port}/0`;
  }
  const u = new URL(url);
  const r = new Resp(u.hostname, Number(u.port || 6379));
  await until(async () => {
    try {
      await r.connect();
      return (await r.call("PING")) === "PONG";
    } catch {
      return false;
    }
  }, wait, "redis-server to answer PING");
  return { url, host: r.host, port: r.port, call: (...a) => r.call(...a) };
}

let bin;
/** gatewayBin is the wsbus binary: JSCLIENT_GATEWAY, or one built now. */
export function gatewayBin() {
  if (bin) return bin;
  bin = process.env.JSCLIENT_GATEWAY && path.resolve(process.env.JSCLIENT_GATEWAY);
  if (!bin) {
    bin = path.join(tmpDir(), "wsbus");
    execFileSync("go", ["build", "-o", bin, "./app/wsbus"], { cwd: repoDir, stdio: "inherit" });
  }
  return bin;
}

/** serveHelp is `wsbus serve --help` (stdout and stderr), to see which flags this gateway has. */
export function serveHelp() {
  const r = spawnSync(gatewayBin(), ["serve", "--help"], { encoding: "utf8" });
  return r.stdout + r.stderr;
}

/**
 * startGateway runs `wsbus serve --insecure` on listen (a free port by
 * default) and resolves when it serves. t.after kills it.
 */
export async function startGateway(t, pfx, { listen = "127.0.0.1:0", args = [] } = {}) {
  const r = await redis();
  const argv = ["serve", "--insecure", "--redis", r.url, "--prefix", pfx, "--listen", listen, ...args];
  // WSBUS_* in the environment would add to the flags (several --redis make a cluster).
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("WSBUS_")));
  const child = track(spawn(gatewayBin(), argv, { stdio: ["ignore", "ignore", "pipe"], env }));
  const g = { child, log: "", exited: new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal }))) };
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  g.addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("wsbus serve did not start within 15 s:\n" + g.log)), 15000);
    child.stderr.on("data", (d) => {
      g.log += d;
      const m = /msg="wsbus serving" addr=(\S+)/.exec(g.log);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on("exit", (code) => reject(new Error(`wsbus serve exited with ${code}:\n${g.log}`)));
  });
  g.url = `ws://${g.addr}/v1/ws`;
  g.kill = async (signal = "SIGKILL") => {
    child.kill(signal);
    return g.exited;
  };
  return g;
}

/** publisher XADDs as any service does: the topic's partition, crc32(topic) % N. */
export async function publisher(pfx) {
  const r = await redis();
  const n = Number(await until(() => r.call("HGET", `${pfx}:meta`, "partitions"), wait, `${pfx}:meta partitions`));
  return {
    n,
    xadd: (topic, data) => r.call("XADD", `${pfx}:{${partition(topic, n)}}:in`, "*", "topic", topic, "data", JSON.stringify(data)),
    history: (topic) => `${pfx}:{${partition(topic, n)}}:topic:${topic}`,
  };
}

/** newClient is a Client over Node's ws with fast reconnects; t.after closes it. */
export function newClient(t, url, options = {}) {
  const c = new Client(url, { WebSocket, reconnectDelay: 50, maxReconnectDelay: 400, drainDelay: 100, ...options });
  c.states = [];
  c.errors = [];
  c.on("state", (s, info) => c.states.push({ s, at: Date.now(), ...info }));
  c.on("error", (err) => c.errors.push(err));
  t.after(() => c.close());
  return c;
}

/** record subscribes to topic and keeps everything the subscription says. */
export function record(client, topic, options) {
  const r = { events: [], subscribed: [], gaps: [], resumed: [], errors: [] };
  r.sub = client.subscribe(topic, (e) => r.events.push(e), options);
  r.sub.on("subscribed", (i) => r.subscribed.push(i));
  r.sub.on("gap", (g) => r.gaps.push(g));
  r.sub.on("resumed", (x) => r.resumed.push(x));
  r.sub.on("error", (e) => r.errors.push(e));
  r.ids = () => r.events.map((e) => e.id);
  r.waitEvents = (n, ms = wait) => until(() => r.events.length >= n, ms, () => `${n} events on ${topic}, have ${r.events.length}`);
  r.waitSubscribed = (n = 1, ms = wait) => until(() => r.subscribed.length >= n, ms, () => `subscribed #${n} on ${topic}; errors ${r.errors.map(String)}`);
  return r;
}

/** memoryStore is a getItem/setItem store, as localStorage is. */
export function memoryStore() {
  const m = new Map();
  return { getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => m.set(k, String(v)), map: m };
}

/** hs256 signs a JWT with node:crypto. */
export function hs256(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" }) + "." + b64(claims);
  return head + "." + crypto.createHmac("sha256", secret).update(head).digest("base64url");
}
