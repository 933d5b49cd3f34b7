// wsbus-client: the wsbus WebSocket protocol done right, for browsers and
// Node. One connection carries every topic; it reconnects by itself and
// resumes each topic from the last event handed to the application, so the
// application sees every event once and in order, and is told (a "gap")
// when the server cannot prove that nothing was lost.
//
// The invariant this file keeps, per topic: the cursor (since, seq, epoch)
// is the last event delivered to the handler, or the head the server gave
// at subscribe time before any. Every (re)subscribe sends it; an event at or
// below it is a duplicate and is dropped; an event whose seq is not the
// cursor's plus one is a hole, reported rather than hidden.
//
// This file has no imports: the gateway serves it as is to the demo page
// (GET /wsbus-client.js), and npm ships it as is.

const OPEN = 1; // WebSocket.OPEN, the same in every implementation
const CLOSE_SLOW_CONSUMER = 4001;
const CLOSE_DRAINING = 4002;
const CLOSE_TOKEN_EXPIRED = 4003;
const CLOSE_NO_ANSWER = 4000; // ours: the connection is dead (no pong, no handshake)

// A connection that stayed open this long is a success: the next drop
// starts the backoff over.
const STABLE_MS = 10000;

// Error codes after which the server has not (or no longer) subscribed the
// topic and retrying the same subscribe cannot help.
const FATAL_SUBSCRIBE_ERRORS = new Set(["forbidden", "bad_topic", "bad_since", "bad_seq", "too_many_subscriptions"]);

const ID = /^(\d+)(?:-(\d+))?$/;

function parseId(id) {
  const m = typeof id === "string" && ID.exec(id);
  if (!m) throw new TypeError(`not a stream ID: ${JSON.stringify(id)}`);
  return [BigInt(m[1]), BigInt(m[2] ?? 0)];
}

/**
 * compareIds compares two Redis stream IDs ("1718000000000-1", or "0")
 * numerically: -1, 0 or 1. Strings compare wrongly ("9-0" > "10-0") and
 * numbers lose precision past 2^53, hence BigInt.
 */
export function compareIds(a, b) {
  const [am, as] = parseId(a);
  const [bm, bs] = parseId(b);
  if (am !== bm) return am < bm ? -1 : 1;
  return as === bs ? 0 : as < bs ? -1 : 1;
}

/** isId tells whether s is a stream ID that compareIds accepts. */
export function isId(s) {
  return typeof s === "string" && ID.test(s);
}

/**
 * tokenExpiry returns a JWT's exp claim (unix seconds), or undefined when
 * the token is not a JWT or has none. It checks no signature: the client
 * only needs to know when to fetch the next token.
 */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = atob(part + "=".repeat((4 - (part.length % 4)) % 4));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" && Number.isFinite(exp) ? exp : undefined;
  } catch {
    return undefined;
  }
}

/** ServerError is an {"type":"error"} message of the gateway. */
export class ServerError extends Error {
  constructor(m) {
    super(`${m.code}${m.topic ? " (" + m.topic + ")" : ""}: ${m.message}`);
    this.name = "ServerError";
    this.code = m.code;
    this.topic = m.topic;
  }
}

// Emitter is the small event interface of Client and Subscription; it works
// the same in browsers and Node (no EventTarget/EventEmitter differences).
class Emitter {
  #listeners = new Map();

  /** on adds a listener for type and returns this. */
  on(type, fn) {
    if (typeof fn !== "function") throw new TypeError("listener must be a function");
    const list = this.#listeners.get(type) ?? [];
    this.#listeners.set(type, [...list, fn]);
    return this;
  }

  /** off removes a listener added with on, and returns this. */
  off(type, fn) {
    const list = this.#listeners.get(type);
    if (list) this.#listeners.set(type, list.filter((f) => f !== fn));
    return this;
  }

  // _emit calls the listeners of type; a listener that throws is reported
  // to report and does not stop the others. It returns whether any listened.
  _emit(type, report, ...args) {
    const list = this.#listeners.get(type);
    if (!list || list.length === 0) return false;
    for (const fn of list) {
      try {
        fn(...args);
      } catch (err) {
        report(err);
      }
    }
    return true;
  }
}

/**
 * Subscription is one topic of a Client: its handler, its cursor and its
 * events ("subscribed", "gap", "resumed", "error"). Made by
 * Client.subscribe.
 */
export class Subscription extends Emitter {
  constructor(client, topic, handler, options) {
    super();
    /** The topic. */
    this.topic = topic;
    /** Events dropped as duplicates or out of order (IDs at or below the cursor). */
    this.dropped = 0;
    this._client = client;
    this._handler = handler;
    this._start = options.since; // "0", "acked", an ID, or undefined: where to begin without a cursor
    this._state = "pending"; // pending: subscribe not answered on this connection; active; closed
    this._since = undefined; // the cursor: last delivered event ID, or the head
    this._seq = undefined; // its seq
    this._epoch = undefined; // the partition's epoch the cursor belongs to
    this._lastSeq = undefined; // seq the next event must follow, for hole detection
    this._catchUp = undefined; // {head, count, ...}: events owed since a resume, until the head
    this._sentSince = undefined; // since of the last subscribe sent
    this._floor = undefined; // the cursor before the stream went back below it: events at or below it are dropped
    if (isId(options.since)) {
      this._since = options.since;
      this._seq = options.seq;
      this._epoch = options.epoch;
    }
    this._load();
  }

  /**
   * cursor is where a resume would start: {since, seq, epoch} of the last
   * event delivered (or the head given at subscribe time), or undefined
   * before the first subscribe is answered.
   */
  get cursor() {
    return this._since === undefined ? undefined : { since: this._since, seq: this._seq, epoch: this._epoch };
  }

  /** unsubscribe stops the subscription; its handler gets no more events. */
  unsubscribe() {
    if (this._state === "closed") return;
    this._state = "closed";
    this._client._unsubscribe(this);
  }

  get _storeKey() {
    return `wsbus-client ${this._client.url} ${this.topic}`;
  }

  _load() {
    const store = this._client._options.store;
    if (!store) return;
    try {
      const raw = store.getItem(this._storeKey);
      const c = raw && JSON.parse(raw);
      if (c && isId(c.since)) {
        this._since = c.since;
        this._seq = typeof c.seq === "number" ? c.seq : undefined;
        this._epoch = typeof c.epoch === "string" ? c.epoch : undefined;
      }
    } catch (err) {
      this._client._report(err);
    }
  }

  _save() {
    const store = this._client._options.store;
    if (!store || this._since === undefined) return;
    try {
      store.setItem(this._storeKey, JSON.stringify(this.cursor));
    } catch (err) {
      this._client._report(err); // a full localStorage must not stop delivery
    }
  }

  // _subscribeMessage is what (re)subscribing sends: the cursor when there
  // is one, else the starting point asked for.
  _subscribeMessage() {
    const m = { type: "subscribe", topic: this.topic };
    if (this._since !== undefined) {
      m.since = this._since;
      if (this._seq !== undefined) m.seq = this._seq;
      if (this._epoch !== undefined) m.epoch = this._epoch;
    } else if (this._start !== undefined) {
      m.since = this._start;
    }
    this._sentSince = m.since;
    this._state = "pending";
    this._catchUp = undefined;
    return m;
  }

  _subscribed(m) {
    const report = this._client._reporter;
    this._state = "active";
    const sent = this._sentSince;
    if (this._since === undefined && sent === undefined) {
      this._since = m.head; // new events only: the head is the cursor until the first one
      this._seq = m.seq;
    } else if (m.recovered === false && isId(this._since) && isId(m.head)) {
      // The cursor may belong to data that was lost: the server sends
      // everything it retains. What sorts at or below the cursor is what
      // Redis kept of events already handed over (an older snapshot, a
      // replica that lagged), dropped as any duplicate: never twice, never
      // out of order.
      if (compareIds(m.head, this._since) < 0) {
        // The stream went back (or expired: head "0"): the head is the
        // cursor now, so that the next resume can be trusted (the server
        // trusts no cursor past the head), and the old one a floor: what a
        // new owner applies from ingress between the two was handed over
        // already.
        if (this._floor === undefined || compareIds(this._floor, this._since) < 0) this._floor = this._since;
        this._since = m.head;
        this._seq = m.seq;
      } else if (this._epoch !== undefined && m.epoch !== this._epoch) {
        this._seq = undefined; // it belongs to the old data: not sent again
      }
    }
    this._epoch = m.epoch;
    if (m.recovered === false) {
      // The server sends what it still has after the cursor; with missed
      // known, the first of it has seq cursor+missed+1: no second gap.
      this._lastSeq = typeof m.missed === "number" && this._seq !== undefined ? this._seq + m.missed : undefined;
    } else {
      this._lastSeq = this._seq;
    }
    this._save();
    const info = { ...m, resumed: sent !== undefined };
    delete info.type;
    this._emit("subscribed", report, info);
    if (m.recovered === false) {
      const gap = { topic: this.topic, reason: "not_recovered", recovered: false, after: sent, epoch: m.epoch };
      if (typeof m.missed === "number") gap.missed = m.missed;
      this._emit("gap", report, gap);
    }
    if (sent !== undefined) this._trackCatchUp(m, sent);
  }

  // _trackCatchUp counts the events owed after a subscribe with a cursor:
  // every event up to the head given in subscribed. "resumed" fires when the
  // head is delivered (at once when nothing was owed).
  _trackCatchUp(m, sent) {
    const from = sent === "acked" ? m.acked ?? undefined : sent;
    const base = { topic: this.topic, recovered: m.recovered };
    if (typeof m.missed === "number") base.missed = m.missed;
    if (!isId(from) || !isId(m.head)) return;
    if (compareIds(m.head, from) <= 0) {
      this._emit("resumed", this._client._reporter, { ...base, count: 0 });
      return;
    }
    this._catchUp = { ...base, head: m.head, count: 0 };
  }

  _event(m) {
    if (this._state !== "active") return;
    if (!isId(m.id)) return;
    if (this._since !== undefined && compareIds(m.id, this._since) <= 0 ||
      this._floor !== undefined && compareIds(m.id, this._floor) <= 0) {
      this.dropped++;
      return;
    }
    this._floor = undefined;
    const report = this._client._reporter;
    const seq = typeof m.seq === "number" ? m.seq : undefined;
    // seq 1 after others is a new sequence (the idle topic's history
    // expired): nothing was lost, the server still sent every newer ID.
    if (seq !== undefined && this._lastSeq !== undefined && seq !== this._lastSeq + 1 && seq !== 1) {
      const gap = { topic: this.topic, reason: "seq", after: this._since, id: m.id, seq };
      if (seq > this._lastSeq) gap.missed = seq - this._lastSeq - 1;
      this._emit("gap", report, gap);
    }
    this._since = m.id;
    this._seq = seq;
    this._lastSeq = seq;
    try {
      this._handler({ topic: this.topic, id: m.id, seq, data: m.data });
    } catch (err) {
      report(err);
    }
    // Stored once the handler returned: an application that dies in its
    // handler is handed the event again after a restart (at least once).
    this._save();
    const c = this._catchUp;
    if (c) {
      c.count++;
      if (compareIds(m.id, c.head) >= 0) {
        this._catchUp = undefined;
        const { head: _, ...info } = c;
        this._emit("resumed", report, info);
      }
    }
  }

  _error(err) {
    if (FATAL_SUBSCRIBE_ERRORS.has(err.code) && this._state !== "closed") {
      this._state = "closed";
      this._client._forget(this);
    }
    if (!this._emit("error", this._client._reporter, err)) this._client._report(err);
  }
}

/**
 * Client is one WebSocket connection to a wsbus gateway, shared by every
 * subscription. It connects at once; see the package README for options.
 */
export class Client extends Emitter {
  constructor(url, options = {}) {
    super();
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError("wsbus-client: no WebSocket implementation: pass { WebSocket } (in Node 20: import WebSocket from \"ws\")");
    }
    /** The gateway's WebSocket URL, as given. */
    this.url = String(url);
    this._options = {
      pingInterval: 20000,
      pongTimeout: 10000,
      connectTimeout: 10000,
      reconnectDelay: 500,
      maxReconnectDelay: 20000,
      drainDelay: 500,
      refreshBefore: 30000,
      ...options,
      WebSocket: WS,
    };
    this._reporter = (err) => this._report(err);
    this._subs = new Map(); // topic -> Subscription
    this._unsubscribing = new Map(); // topic -> unsubscribes sent on this connection, not yet answered
    this._acks = new Map(); // topic -> newest ID acked while no connection was open
    this._state = "closed";
    this._ws = null;
    this._gen = 0; // bumped by every connection attempt and by close()
    this._running = false;
    this._attempts = 0; // connection attempts since the last stable connection
    this._openedAt = 0;
    this._lastRx = 0;
    this._pingSentAt = 0;
    this._timers = { reconnect: 0, connect: 0, ping: 0, refresh: 0 };
    this._token = undefined;
    this._tokenStale = true;
    // Connect in a microtask, so that listeners added right after the
    // constructor hear "connecting"; subscribe() before then is sent on open.
    this._running = true;
    this._state = "connecting";
    queueMicrotask(() => {
      if (this._running && this._gen === 0) this._open();
    });
  }

  /** state is "connecting", "open" or "closed". */
  get state() {
    return this._state;
  }

  /**
   * subscribe starts delivering the topic's events to handler, once each
   * and in order. options.since: "0" (everything retained), "acked" (from
   * the subject's acknowledged cursor) or an event ID; absent, only new
   * events. A cursor found in the store wins over since.
   */
  subscribe(topic, handler, options = {}) {
    if (typeof topic !== "string" || topic === "") throw new TypeError("topic must be a non-empty string");
    if (typeof handler !== "function") throw new TypeError("handler must be a function");
    if (this._subs.has(topic)) throw new Error(`wsbus-client: already subscribed to ${topic}`);
    const sub = new Subscription(this, topic, handler, options);
    this._subs.set(topic, sub);
    if (this._state === "open") this._send(sub._subscribeMessage());
    return sub;
  }

  /**
   * ack moves the connection's subject's cursor for topic to id (forward
   * only). Acks made while disconnected are sent on the next connection.
   */
  ack(topic, id) {
    if (!isId(id)) throw new TypeError(`ack: not an event ID: ${JSON.stringify(id)}`);
    if (this._send({ type: "ack", topic, id })) return;
    const prev = this._acks.get(topic);
    if (prev === undefined || compareIds(id, prev) > 0) this._acks.set(topic, id);
  }

  /** connect opens the connection again after close() (a new Client connects by itself). */
  connect() {
    if (this._running) return;
    this._running = true;
    this._attempts = 0;
    this._open();
  }

  /**
   * reconnect drops the current connection and opens a new one at once,
   * resuming every topic: what a network failure does, without the wait
   * (call it on the browser's "online" event).
   */
  reconnect() {
    if (!this._running) {
      this.connect();
      return;
    }
    this._gen++;
    clearTimeout(this._timers.reconnect);
    this._detach(1000, "reconnect");
    for (const sub of this._subs.values()) sub._state = "pending";
    this._setState("closed", { code: 1000, reason: "reconnect", delay: 0 });
    this._open();
  }

  /** close closes the connection and stops reconnecting; subscriptions and their cursors are kept for connect(). */
  close() {
    if (!this._running) return;
    this._running = false;
    this._gen++;
    clearTimeout(this._timers.reconnect);
    this._detach(1000, "closed by the client");
    this._setState("closed", { code: 1000, reason: "closed by the client" });
  }

  _report(err) {
    if (!this._emit("error", (e) => console.error("wsbus-client: error listener threw", e), err)) {
      console.error("wsbus-client:", err);
    }
  }

  _setState(state, info) {
    this._state = state;
    this._emit("state", this._reporter, state, info ?? {});
  }

  _send(m) {
    if (this._state !== "open" || !this._ws || this._ws.readyState !== OPEN) return false;
    this._ws.send(JSON.stringify(m));
    return true;
  }

  async _currentToken() {
    const t = this._options.token;
    if (t === undefined || t === null) return undefined;
    if (typeof t === "string") return t;
    const exp = tokenExpiry(this._token ?? "");
    if (this._token === undefined || this._tokenStale || (exp !== undefined && exp * 1000 < Date.now() + 1000)) {
      const fresh = await t();
      if (typeof fresh !== "string") throw new TypeError("the token function must return a string");
      this._token = fresh;
      this._tokenStale = false;
    }
    return this._token;
  }

  _connectURL(token) {
    const base = globalThis.location?.href;
    const u = base ? new URL(this.url, base) : new URL(this.url);
    if (u.protocol === "http:") u.protocol = "ws:";
    if (u.protocol === "https:") u.protocol = "wss:";
    if (token !== undefined) u.searchParams.set("token", token);
    if (this._options.user !== undefined) u.searchParams.set("user", this._options.user);
    return u.toString();
  }

  async _open() {
    const gen = ++this._gen;
    this._setState("connecting");
    let token;
    try {
      token = await this._currentToken();
    } catch (err) {
      if (gen !== this._gen) return;
      this._report(err);
      this._reconnect({ code: 0, reason: "getting a token: " + (err?.message ?? err) }, this._backoff());
      return;
    }
    if (gen !== this._gen) return;
    let ws;
    try {
      ws = new this._options.WebSocket(this._connectURL(token));
    } catch (err) {
      this._report(err);
      this._reconnect({ code: 0, reason: String(err?.message ?? err) }, this._backoff());
      return;
    }
    this._ws = ws;
    this._openedAt = 0;
    let failure = "";
    ws.onopen = () => ws === this._ws && this._onOpen();
    ws.onmessage = (e) => ws === this._ws && this._onMessage(e.data);
    ws.onerror = (e) => {
      failure = e?.message ?? e?.error?.message ?? "";
    };
    ws.onclose = (e) => ws === this._ws && this._onClose(e.code, e.reason || failure);
    if (this._options.connectTimeout > 0) {
      this._timers.connect = setTimeout(() => {
        if (ws === this._ws && this._openedAt === 0) this._onClose(CLOSE_NO_ANSWER, "handshake timed out");
      }, this._options.connectTimeout);
    }
  }

  _onOpen() {
    clearTimeout(this._timers.connect);
    this._openedAt = this._lastRx = Date.now();
    this._pingSentAt = 0;
    this._unsubscribing.clear();
    this._setState("open");
    for (const sub of this._subs.values()) this._send(sub._subscribeMessage());
    for (const [topic, id] of this._acks) this._send({ type: "ack", topic, id });
    this._acks.clear();
    this._armPing(this._options.pingInterval);
    this._scheduleRefresh();
  }

  _onMessage(data) {
    this._lastRx = Date.now();
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      this._report(new Error("wsbus-client: a message that is not JSON: " + String(data).slice(0, 100)));
      return;
    }
    if (!m || typeof m !== "object") return;
    const sub = typeof m.topic === "string" ? this._subs.get(m.topic) : undefined;
    const ignored = (this._unsubscribing.get(m.topic) ?? 0) > 0; // an earlier subscription's tail
    switch (m.type) {
      case "event":
        if (sub && !ignored) sub._event(m);
        break;
      case "subscribed":
        if (sub && !ignored) sub._subscribed(m);
        break;
      case "unsubscribed":
        this._unsubscribed(m.topic);
        break;
      case "error":
        this._serverError(m, ignored ? undefined : sub);
        break;
      case "refreshed":
        this._emit("refreshed", this._reporter, { expires: m.expires });
        this._scheduleRefresh();
        break;
    }
  }

  _serverError(m, sub) {
    const err = new ServerError(m);
    if (m.code === "not_subscribed" && this._unsubscribing.has(m.topic)) {
      this._unsubscribed(m.topic);
      return;
    }
    if (m.code === "unavailable" && sub) {
      // Redis did not answer the subscribe: try again shortly, same cursor.
      const ws = this._ws;
      setTimeout(() => {
        if (ws === this._ws && this._subs.get(sub.topic) === sub) this._send(sub._subscribeMessage());
      }, 500 + Math.random() * 1000);
    }
    if (sub) sub._error(err);
    else this._report(err);
  }

  _unsubscribed(topic) {
    const n = (this._unsubscribing.get(topic) ?? 0) - 1;
    if (n > 0) this._unsubscribing.set(topic, n);
    else this._unsubscribing.delete(topic);
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.topic) !== sub) return;
    this._subs.delete(sub.topic);
    if (this._send({ type: "unsubscribe", topic: sub.topic })) {
      this._unsubscribing.set(sub.topic, (this._unsubscribing.get(sub.topic) ?? 0) + 1);
    }
  }

  // _forget drops a subscription the server refused; nothing to unsubscribe.
  _forget(sub) {
    if (this._subs.get(sub.topic) === sub) this._subs.delete(sub.topic);
  }

  // _detach leaves the current socket, closing it if it is still there.
  _detach(code, reason) {
    for (const k of ["connect", "ping", "refresh"]) clearTimeout(this._timers[k]);
    const ws = this._ws;
    this._ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {}; // ws (Node) throws on an error event without a listener
    try {
      if (ws.readyState <= OPEN) ws.close(code, reason);
    } catch {
      // closing a socket that never connected may throw; it is gone either way
    }
  }

  _onClose(code, reason) {
    const openedAt = this._openedAt;
    this._detach(code >= 4000 && code < 5000 ? code : 1000, reason);
    const tokenFn = typeof this._options.token === "function";
    let delay;
    if (openedAt === 0) {
      // The handshake failed: refused, 401, 403, 503. A browser cannot tell
      // which, so a token function is asked for a fresh token each time.
      if (tokenFn) this._tokenStale = true;
      delay = this._backoff();
    } else if (code === CLOSE_DRAINING) {
      delay = Math.random() * this._options.drainDelay; // at once: another node serves us
    } else if (code === CLOSE_TOKEN_EXPIRED) {
      if (!tokenFn) {
        this._running = false;
        this._report(new Error("wsbus-client: the token expired (4003) and no token function was given to fetch another"));
        this._setState("closed", { code, reason });
        return;
      }
      this._tokenStale = true;
      delay = Math.random() * this._options.drainDelay;
    } else {
      if (Date.now() - openedAt >= STABLE_MS) this._attempts = 0;
      delay = this._backoff(); // 4001 (resume), 1001, a network drop, a dead connection
    }
    this._reconnect({ code, reason }, delay);
  }

  _reconnect(info, delay) {
    for (const sub of this._subs.values()) sub._state = "pending";
    this._setState("closed", { ...info, delay: Math.round(delay) });
    clearTimeout(this._timers.reconnect);
    const gen = this._gen;
    this._timers.reconnect = setTimeout(() => {
      if (gen === this._gen && this._running) this._open();
    }, delay);
  }

  // _backoff is exponential backoff with full jitter: uniform in
  // [0, min(max, base * 2^attempt)), so clients dropped together spread out.
  _backoff() {
    const { reconnectDelay, maxReconnectDelay } = this._options;
    const cap = Math.min(maxReconnectDelay, reconnectDelay * 2 ** this._attempts);
    this._attempts = Math.min(this._attempts + 1, 30);
    return Math.random() * cap;
  }

  // _armPing checks the connection after ms: a socket quiet for
  // pingInterval is sent a ping; one that then stays silent for
  // pongTimeout is dead (a NAT or proxy dropped it without a close).
  _armPing(ms) {
    clearTimeout(this._timers.ping);
    if (!(this._options.pingInterval > 0)) return;
    this._timers.ping = setTimeout(() => this._checkAlive(), Math.max(ms, 10));
  }

  _checkAlive() {
    const now = Date.now();
    const { pingInterval, pongTimeout } = this._options;
    if (this._pingSentAt > 0) {
      if (this._lastRx >= this._pingSentAt) {
        this._pingSentAt = 0;
      } else if (now - this._pingSentAt >= pongTimeout) {
        this._onClose(CLOSE_NO_ANSWER, "no answer to ping");
        return;
      } else {
        this._armPing(this._pingSentAt + pongTimeout - now);
        return;
      }
    }
    const quiet = now - this._lastRx;
    if (quiet < pingInterval) {
      this._armPing(pingInterval - quiet);
      return;
    }
    this._send({ type: "ping" });
    this._pingSentAt = now;
    this._armPing(pongTimeout);
  }

  // _scheduleRefresh fetches the next token shortly before the current one
  // expires (refreshBefore, or a third of what is left for short-lived
  // tokens) and sends it as {"type":"refresh"}.
  _scheduleRefresh() {
    clearTimeout(this._timers.refresh);
    if (typeof this._options.token !== "function" || !(this._options.refreshBefore > 0)) return;
    const exp = tokenExpiry(this._token ?? "");
    if (exp === undefined) return;
    const left = exp * 1000 - Date.now();
    if (left <= 0) return;
    const lead = Math.min(this._options.refreshBefore, left / 3);
    this._timers.refresh = setTimeout(() => this._refresh(), left - lead);
  }

  async _refresh() {
    const ws = this._ws;
    const oldExp = tokenExpiry(this._token ?? "") ?? 0;
    let token;
    try {
      token = await this._options.token();
    } catch (err) {
      this._report(err);
    }
    if (ws !== this._ws || this._state !== "open") return;
    const exp = typeof token === "string" ? tokenExpiry(token) : undefined;
    if (exp === undefined || exp <= oldExp) {
      // No newer token yet (or the function failed): ask again later; if it
      // never comes, the server closes with 4003 and we reconnect.
      const left = oldExp * 1000 - Date.now();
      if (left > 0) this._timers.refresh = setTimeout(() => this._refresh(), Math.max(1000, left / 2));
      return;
    }
    this._token = token;
    this._send({ type: "refresh", token });
  }
}
