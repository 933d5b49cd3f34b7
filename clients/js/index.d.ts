// Types of wsbus-client. The protocol is in the wsbus README ("The client
// protocol", "Resume") and DESIGN.md ("WebSocket protocol").

/** The part of the WebSocket interface the client uses: browsers' WebSocket and Node's `ws` both have it. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: any }) => any) | null;
  onclose: ((ev: { code: number; reason: string }) => any) | null;
  onerror: ((ev: any) => any) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** getItem/setItem storage, as localStorage is. */
export interface CursorStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface ClientOptions {
  /** A JWT, or an async function returning a fresh one (asked again after 4003, a refused handshake, and before exp for a refresh). Sent as ?token=. */
  token?: string | (() => string | Promise<string>);
  /** A WebSocket implementation (Node 20: the `ws` package). Default globalThis.WebSocket. */
  WebSocket?: WebSocketConstructor;
  /** Keeps each topic's cursor (key: "wsbus-client <url> <topic>") so a new Client, after a page reload, resumes. */
  store?: CursorStore;
  /** The subject on an --insecure gateway (sent as ?user=). */
  user?: string;
  /** Ping a connection quiet for this long, ms. Default 20000; 0 turns pings off. */
  pingInterval?: number;
  /** Leave a connection that answers nothing this long after a ping, ms. Default 10000. */
  pongTimeout?: number;
  /** Give up a handshake after this long, ms. Default 10000. */
  connectTimeout?: number;
  /** Base of the exponential backoff (full jitter), ms. Default 500. */
  reconnectDelay?: number;
  /** Cap of the backoff, ms. Default 20000. */
  maxReconnectDelay?: number;
  /** Reconnect within [0, drainDelay) ms after 4002 (draining) and 4003 (token expired). Default 500. */
  drainDelay?: number;
  /** Refresh the token this long before its exp (or a third of its lifetime if shorter), ms. Default 30000; 0: no refresh (4003 then reconnects). */
  refreshBefore?: number;
}

export type State = "connecting" | "open" | "closed";

export interface StateInfo {
  /** The close code (4001 slow consumer, 4002 draining, 4003 token expired, 4000 no answer, ...) when closed. */
  code?: number;
  reason?: string;
  /** When the client reconnects, in ms; absent after close(). */
  delay?: number;
}

export interface WsbusEvent<T = unknown> {
  topic: string;
  /** Stream ID, "<ms>-<n>". Compare with compareIds. */
  id: string;
  /** 1 for the topic's first event, then +1 each. */
  seq: number;
  data: T;
}

export interface SubscribedInfo {
  topic: string;
  /** False when the server cannot prove nothing after the cursor was lost: a "gap" follows. */
  recovered: boolean;
  epoch: string;
  /** Newest event ID when the subscription took effect ("0": none). */
  head: string;
  seq: number;
  /** With recovered:false, how many events after the cursor were trimmed away, when known. */
  missed?: number;
  /** On a connection with a subject: the acknowledged cursor and the events after it. */
  acked?: string;
  unread?: number;
  /** Whether the subscribe sent a cursor (a resume, or since "0"/"acked"). */
  resumed: boolean;
}

export interface GapInfo {
  topic: string;
  /** not_recovered: the server said recovered:false; seq: an event's seq is not the previous one's plus one (a new sequence, seq 1, is no gap). */
  reason: "not_recovered" | "seq";
  recovered?: false;
  /** How many events are lost, when known. */
  missed?: number;
  /** The cursor before the gap. */
  after?: string;
  /** The event after the gap (reason seq). */
  id?: string;
  seq?: number;
  epoch?: string;
}

export interface ResumedInfo {
  topic: string;
  /** Events delivered after the resume up to the head the server gave: those published while away. */
  count: number;
  recovered: boolean;
  missed?: number;
}

export interface SubscribeOptions {
  /** "0": everything retained; "acked": after the subject's acknowledged cursor; an event ID; absent: only new events. A stored cursor wins. */
  since?: string;
  /** seq and epoch of an event-ID since, for an exact resume. */
  seq?: number;
  epoch?: string;
}

/** An {"type":"error"} message of the gateway. */
export class ServerError extends Error {
  code: string;
  topic?: string;
}

export class Subscription {
  readonly topic: string;
  /** Events dropped as duplicates or out of order. */
  readonly dropped: number;
  /** Where a resume would start: the last event delivered, or the head given at subscribe. */
  readonly cursor: { since: string; seq?: number; epoch?: string } | undefined;
  on(type: "subscribed", fn: (info: SubscribedInfo) => void): this;
  on(type: "gap", fn: (info: GapInfo) => void): this;
  on(type: "resumed", fn: (info: ResumedInfo) => void): this;
  on(type: "error", fn: (err: ServerError) => void): this;
  off(type: string, fn: (...args: any[]) => void): this;
  unsubscribe(): void;
}

export class Client {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  readonly state: State;
  subscribe<T = unknown>(topic: string, handler: (event: WsbusEvent<T>) => void, options?: SubscribeOptions): Subscription;
  /** Move the subject's cursor for topic forward to id; sent on the next connection when none is open. */
  ack(topic: string, id: string): void;
  on(type: "state", fn: (state: State, info: StateInfo) => void): this;
  on(type: "refreshed", fn: (info: { expires: number }) => void): this;
  on(type: "error", fn: (err: Error) => void): this;
  off(type: string, fn: (...args: any[]) => void): this;
  /** Open again after close(). */
  connect(): void;
  /** Drop the connection and reconnect now, resuming every topic. */
  reconnect(): void;
  /** Close and stop reconnecting; subscriptions and cursors are kept for connect(). */
  close(): void;
}

/** Compare two stream IDs numerically: -1, 0 or 1. */
export function compareIds(a: string, b: string): -1 | 0 | 1;
/** Whether s is a stream ID ("<ms>-<n>" or "<ms>"). */
export function isId(s: unknown): s is string;
/** A JWT's exp (unix seconds), unverified; undefined when absent. */
export function tokenExpiry(token: string): number | undefined;
