// sessionfold-client: the producer SDK for browsers and Node. It turns
// `start()` / `event()` / `end()` calls into frames on sessionfold's
// WebSocket and keeps the server's promise on the client side: every event
// it accepted is sent until the server acknowledges it or refuses it for
// good, and none is stored twice.
//
// Why the stored document is exactly the fold of the acknowledged events:
// every event carries a UUIDv7 `id`, so a resend of something the server had
// already stored changes nothing; and a session has at most one frame in
// flight, so the next frame is sent only after the previous one was
// acknowledged, which makes acknowledgement order the order in which the
// events were first stored.

import { browserStore, type Store } from "./store.js";
import { uuidv7 } from "./uuid.js";

export { browserStore, uuidv7, type Store };

export type EventType = "SESSION_START" | "EVENT" | "SESSION_END";

/** `idle`: nothing to send, no socket. `offline`: waiting to reconnect. `failed`: the server refused the session for good. */
export type State = "idle" | "connecting" | "open" | "offline" | "failed" | "closed";

/** The server's input limits; the defaults are ingest's (1 048 406 frame bytes, 10 000 events, 64 KiB per event). */
export interface Limits {
  maxFrameBytes: number;
  maxEventsPerFrame: number;
  maxEventBytes: number;
}

/** The platform WebSocket, `ws`, or anything with the same shape. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason?: string }) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, options?: any) => WebSocketLike;

export interface SessionOptions {
  /** `ws://host:8080/websocket` (a bare `ws://host:8080` gets `/websocket`). */
  url: string;
  sessionId: string;
  /** An API key or session token: `Authorization: Bearer` in Node, `?token=` in browsers. */
  token?: string;
  limits?: Partial<Limits>;
  /** Most events waiting (queued or in flight); default 10 000. */
  maxQueueEvents?: number;
  /** Most bytes of events waiting; default 4 MiB. */
  maxQueueBytes?: number;
  /** First retry delay (default 100 ms); doubles per failure in a row, with jitter. */
  initialBackoffMs?: number;
  /** Largest retry delay; default 10 000 ms. */
  maxBackoffMs?: number;
  /** A frame without a reply after this long counts as lost; default 20 000 ms. */
  replyTimeoutMs?: number;
  /** How long `close()` waits for acknowledgements; default 10 000 ms. */
  closeTimeoutMs?: number;
  /** Keep unacknowledged events across reloads: in browsers (IndexedDB, localStorage) by default; in Node pass a Store. */
  persist?: boolean | Store;
  /** The WebSocket class; default the global one, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
}

/** An acknowledged frame. `events` are the JSON texts sent, in order. */
export interface Ack {
  /** The frame's number on its connection (from 1), as the reply gives it. */
  frame: number;
  /** Events the server accepted: all of the frame's. */
  accepted: number;
  /** The JetStream stream sequence that stores the frame, when the server sends it. */
  seq?: number;
  ids: string[];
  events: string[];
}

/**
 * A problem. `permanent` ones dropped `events` (never sent again); the
 * others (`rate_limited`, `unavailable`) are being retried. Codes are the
 * server's, plus the client's own `queue_full`, `event_too_large` and
 * `invalid_event` (events refused before sending) and `closed`.
 */
export interface SessionError {
  code: string;
  message: string;
  permanent: boolean;
  ids: string[];
  events: string[];
}

export interface Stats {
  /** Events waiting: queued or in flight. */
  pending: number;
  /** Events acknowledged. */
  acked: number;
  /** Events dropped: refused by the server or the client, or over the queue bound. */
  dropped: number;
  /** Frames written to a socket, resends included. */
  frames: number;
  /** `rate_limited` / `unavailable` replies. */
  retries: number;
  /** Connections opened after a failure. */
  reconnects: number;
}

interface Events {
  ack: Ack;
  error: SessionError;
  state: State;
}

interface Item {
  /** Enqueue order: restored events 0, new ones from 1. */
  n: number;
  id: string;
  json: string;
  bytes: number;
  type: EventType;
}

interface Frame {
  items: Item[];
  no: number;
}

// Ingest's defaults; its frame limit is 1 MiB less what its message headers
// take in NATS's default 1 MiB payload.
const DEFAULT_LIMITS: Limits = { maxFrameBytes: 1_048_406, maxEventsPerFrame: 10_000, maxEventBytes: 1 << 16 };
const TRANSIENT = ["rate_limited", "unavailable"];
const RESERVED = ["type", "id", "session_id"];

/** UTF-8 length of a string as JSON.stringify writes it (no lone surrogates). */
function utf8Length(text: string): number {
  let length = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) continue;
    length += c < 0x800 ? 1 : 2;
    if (c >= 0xd800 && c < 0xdc00) i++; // a pair: 4 bytes for 2 units
  }
  return length;
}

const isNode = typeof process == "object" && !!(process as any).versions?.node;
declare const process: unknown;

export class Session {
  state: State = "idle";
  readonly sessionId: string;
  readonly stats: Stats = { pending: 0, acked: 0, dropped: 0, frames: 0, retries: 0, reconnects: 0 };
  private readonly o: SessionOptions;
  private readonly limits: Limits;
  private readonly store?: Store;
  private readonly key: string;
  private queue: Item[] = [];
  private flight: Frame | null = null;
  private bytes = 0;
  private counter = 0;
  private ready = false;
  private socket: WebSocketLike | null = null;
  private socketFrames = 0;
  private failures = 0;
  private recovering = false;
  private timer: any = 0;
  /** Backing off or asking why a connection failed: no connection attempt now. */
  private waiting = false;
  private readonly url: URL;
  private replyTimer: any = 0;
  private saveTimer: any = 0;
  private saving: Promise<void> | null = null;
  private dirty = false;
  private kicked = false;
  private waiters: { n: number; done: () => void; fail: (e: Error) => void }[] = [];
  private listeners: { [K in keyof Events]?: Set<(value: Events[K]) => void> } = {};
  private readonly onPage = (event: { type: string }) => {
    if (event.type == "online") {
      if (this.state == "offline") this.connectNow();
    } else if (event.type == "pagehide" || (globalThis as any).document?.visibilityState == "hidden") {
      this.persist(true);
    }
  };

  constructor(options: SessionOptions) {
    this.o = options;
    this.sessionId = options.sessionId;
    const url = (this.url = new URL(options.url));
    if (!/^wss?:$/.test(url.protocol)) throw new TypeError("sessionfold: the url must be ws:// or wss://");
    if (!options.sessionId) throw new TypeError("sessionfold: sessionId is required");
    if (url.pathname == "/") url.pathname = "/websocket";
    url.searchParams.set("session_id", options.sessionId);
    if (options.token && !isNode) url.searchParams.set("token", options.token);
    const limits = { ...DEFAULT_LIMITS, ...options.limits };
    limits.maxEventBytes = Math.min(limits.maxEventBytes, limits.maxFrameBytes - 2);
    this.limits = limits;
    this.key = options.sessionId;
    const persist = options.persist ?? !isNode;
    this.store = typeof persist == "object" ? persist : persist ? browserStore() : undefined;
    for (const type of ["pagehide", "visibilitychange", "online"]) (globalThis as any).addEventListener?.(type, this.onPage);
    if (!this.store) this.ready = true;
    else
      this.store.load(this.key).then(
        (saved) => this.restore(saved),
        () => this.restore([]),
      );
  }

  /** Queues `SESSION_START`; returns the event's id, or null when it was not queued. */
  start(props?: Record<string, unknown>): string | null {
    return this.add("SESSION_START", undefined, props);
  }

  /** Queues an `EVENT` named `name` with `props` (a `timestamp` in them replaces the default, `Date.now()`). */
  event(name: string, props?: Record<string, unknown>): string | null {
    return this.add("EVENT", name, props);
  }

  /** Queues `SESSION_END`. */
  end(props?: Record<string, unknown>): string | null {
    return this.add("SESSION_END", undefined, props);
  }

  on<K extends keyof Events>(type: K, listener: (value: Events[K]) => void): () => void {
    const set = (this.listeners[type] ??= new Set<any>()) as Set<(value: Events[K]) => void>;
    set.add(listener);
    return () => set.delete(listener);
  }

  /**
   * Resolves once every event queued before the call is acknowledged or
   * dropped; rejects if the session fails or closes first. It waits as
   * long as that takes: retries have no deadline.
   */
  flush(): Promise<void> {
    return new Promise((done, fail) => {
      if (this.state == "failed" || this.state == "closed") return fail(new Error("sessionfold: " + this.state));
      this.waiters.push({ n: this.counter, done, fail });
      this.settle();
    });
  }

  /**
   * Waits for the acknowledgements (at most `closeTimeoutMs`), saves what is
   * still unacknowledged where the session persists, and closes the socket.
   */
  async close(): Promise<void> {
    if (this.state == "closed") return;
    let timeout: any;
    await Promise.race([
      this.flush().catch(() => {}),
      new Promise((done) => (timeout = setTimeout(done, this.o.closeTimeoutMs ?? 10_000))),
    ]);
    clearTimeout(timeout);
    for (const type of ["pagehide", "visibilitychange", "online"]) (globalThis as any).removeEventListener?.(type, this.onPage);
    if (this.flight) this.requeue(this.flight.items);
    this.flight = null;
    this.set("closed");
    this.detach();
    clearTimeout(this.timer);
    clearTimeout(this.saveTimer);
    await this.saving;
    await this.persist();
    this.fail("closed");
  }

  private add(type: EventType, name: string | undefined, props?: Record<string, unknown>): string | null {
    const now = Date.now();
    const id = uuidv7(now);
    const event: Record<string, unknown> = { type, timestamp: now };
    if (name !== undefined) event.name = name;
    event.id = id;
    for (const key in props)
      if (!RESERVED.includes(key) && (key != "name" || name === undefined)) event[key] = props[key];
    const refuse = (code: string, message: string, json = "") => {
      this.stats.dropped++;
      this.emit("error", { code, message, permanent: true, ids: [id], events: [json] });
      return null;
    };
    if (this.state == "closed") return refuse("closed", "the session is closed");
    const t = event.timestamp;
    if (typeof t != "number" || !(t >= 0) || t == Infinity || (name !== undefined && typeof name != "string"))
      return refuse("invalid_event", "timestamp must be a finite number >= 0 and name a string");
    let json: string;
    try {
      json = JSON.stringify(event);
    } catch (e) {
      return refuse("invalid_event", "not serializable as JSON: " + e);
    }
    const bytes = utf8Length(json);
    if (bytes > this.limits.maxEventBytes)
      return refuse("event_too_large", `event is ${bytes} bytes, the limit is ${this.limits.maxEventBytes}`, json);
    const full = () =>
      this.stats.pending >= (this.o.maxQueueEvents ?? 10_000) || this.bytes + bytes > (this.o.maxQueueBytes ?? 1 << 22);
    if (full() && type != "EVENT") {
      // Drop policy: a full queue drops the newest EVENTs. SESSION_START and
      // SESSION_END take the place of the newest queued EVENT instead.
      for (let i = this.queue.length - 1; i >= 0 && full(); i--) {
        const victim = this.queue[i]!;
        if (victim.type != "EVENT") continue;
        this.queue.splice(i, 1);
        this.forget([victim]);
        this.stats.dropped++;
        this.emit("error", { code: "queue_full", message: "evicted for " + type, permanent: true, ids: [victim.id], events: [victim.json] });
      }
    }
    if (full()) return refuse("queue_full", "the queue is full", json);
    this.queue.push({ n: ++this.counter, id, json, bytes, type });
    this.stats.pending++;
    this.bytes += bytes;
    this.changed();
    return id;
  }

  private restore(saved: string[]) {
    const items: Item[] = [];
    for (const json of saved) {
      try {
        const { id, type } = JSON.parse(json);
        items.push({ n: 0, id, json, bytes: utf8Length(json), type });
        this.bytes += items[items.length - 1]!.bytes;
      } catch {
        // not ours: skip it
      }
    }
    this.queue.unshift(...items);
    this.stats.pending += items.length;
    this.ready = true;
    this.changed();
  }

  private emit<K extends keyof Events>(type: K, value: Events[K]) {
    this.listeners[type]?.forEach((listener) => {
      try {
        listener(value);
      } catch (e) {
        setTimeout(() => {
          throw e; // an application bug: report it, keep sending
        });
      }
    });
  }

  private set(state: State) {
    if (this.state != state && this.state != "closed") {
      this.state = state;
      this.emit("state", state);
    }
  }

  /** Something to send or to save: act on it once the current task is done. */
  private changed() {
    this.dirty = true;
    if (this.store && !this.saveTimer) this.saveTimer = setTimeout(() => this.persist(), 50);
    if (!this.kicked) {
      this.kicked = true;
      queueMicrotask(() => {
        this.kicked = false;
        this.pump();
      });
    }
  }

  private persist(urgent?: boolean): Promise<void> {
    clearTimeout(this.saveTimer);
    this.saveTimer = 0;
    if (!this.store || !this.ready || (!this.dirty && !urgent)) return Promise.resolve();
    if (this.saving && !urgent) {
      this.saveTimer = setTimeout(() => this.persist(), 50);
      return this.saving;
    }
    this.dirty = false;
    const events = [...(this.flight?.items ?? []), ...this.queue].map((item) => item.json);
    const saving = this.store
      .save(this.key, events, urgent)
      .catch(() => {})
      .then(() => {
        if (this.saving == saving) this.saving = null;
      });
    return (this.saving = saving);
  }

  private pump() {
    this.settle();
    if (!this.ready || this.flight || this.waiting || !this.queue.length || this.state == "failed") return;
    if (!this.socket) return void (this.state != "closed" && this.state != "connecting" && this.connect());
    if (this.state != "open") return;
    const { maxFrameBytes, maxEventsPerFrame } = this.limits;
    let count = 0;
    let bytes = 1;
    for (const item of this.queue) {
      if (count == maxEventsPerFrame || (count && bytes + item.bytes + 1 > maxFrameBytes)) break;
      count++;
      bytes += item.bytes + 1;
      // The server closes the socket after a frame that ends the session.
      if (item.type == "SESSION_END") break;
    }
    const items = this.queue.splice(0, count);
    this.flight = { items, no: ++this.socketFrames };
    this.stats.frames++;
    const socket = this.socket;
    this.replyTimer = setTimeout(() => this.lost(), this.o.replyTimeoutMs ?? 20_000);
    try {
      socket.send("[" + items.map((item) => item.json).join(",") + "]");
    } catch {
      this.lost();
    }
  }

  private async connect() {
    this.set("connecting");
    const token = this.o.token;
    const headers = token && isNode ? { headers: { Authorization: "Bearer " + token } } : undefined;
    let socket: WebSocketLike;
    try {
      const WS: WebSocketConstructor =
        this.o.WebSocket ?? (globalThis as any).WebSocket ?? (await import("ws" as string)).default;
      if (this.state != "connecting") return; // closed meanwhile
      socket = this.socket = new WS(this.url.href, headers);
    } catch (e) {
      this.set("failed");
      this.emit("error", { code: "no_websocket", message: "no WebSocket: " + e, permanent: true, ids: [], events: [] });
      return this.fail("no_websocket");
    }
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.socketFrames = 0;
      if (this.recovering) this.stats.reconnects++;
      this.recovering = false;
      this.set("open");
      this.pump();
    };
    socket.onmessage = (message) => this.reply(message.data);
    // Some WebSockets (Node 20's) report a refused upgrade only as an error.
    const closed = (code: number) => {
      if (this.socket != socket) return;
      this.detach();
      // A close after an idle timeout with nothing in flight is no failure.
      if (code == 1000 && !this.flight && opened) {
        this.set("idle");
        return this.changed();
      }
      // 1009: the frame was over 4x the server's frame limit.
      if (code == 1009 && this.flight) this.tooLarge(this.flight.items.splice(0), "frame_too_large");
      this.broken(opened, headers);
    };
    socket.onclose = (event) => closed(event.code);
    socket.onerror = () => closed(1006);
  }

  /** The connection failed: resend what it carried, after a backoff. */
  private async broken(opened: boolean, headers?: object) {
    this.socket = null;
    this.recovering = true;
    if (this.flight) this.requeue(this.flight.items);
    this.flight = null;
    if (this.state == "closed") return;
    this.set("offline");
    this.waiting = true;
    if (!opened && typeof fetch == "function") {
      // The WebSocket API hides why an upgrade was refused: ask over plain
      // HTTP, which answers with the same error (401, 403, 400 …) before the
      // upgrade check. Cross-origin pages cannot read it; they retry.
      try {
        const response = await fetch(this.url.href.replace(/^ws/, "http"), headers);
        const error = (await response.json())?.error;
        const status = response.status;
        if (status >= 400 && status < 500 && status != 408 && status != 429 && error?.code && error.code != "not_a_websocket") {
          this.set("failed");
          this.emit("error", { code: error.code, message: error.message, permanent: true, ids: [], events: [] });
          return this.fail(error.code);
        }
      } catch {
        // unreachable or unreadable: retry
      }
    }
    this.retryLater();
  }

  private retryLater() {
    clearTimeout(this.timer);
    if (this.state == "closed" || this.state == "failed") return;
    this.waiting = true;
    const base = this.o.initialBackoffMs ?? 100;
    const step = Math.min(this.o.maxBackoffMs ?? 10_000, base * 2 ** Math.min(this.failures++, 30));
    // Between half and all of the step, so producers failing together spread out.
    this.timer = setTimeout(() => this.connectNow(), step * (0.5 + Math.random() / 2));
  }

  private connectNow() {
    clearTimeout(this.timer);
    this.waiting = false;
    this.pump();
  }

  /** No reply in time, or a reply that does not fit: give the socket up. */
  private lost() {
    const socket = this.socket;
    this.detach();
    if (socket) this.broken(true);
  }

  private detach() {
    const socket = this.socket;
    this.socket = null;
    clearTimeout(this.replyTimer);
    if (socket) {
      socket.onclose = socket.onerror = socket.onmessage = socket.onopen = null;
      try {
        socket.close(1000);
      } catch {
        // already closing
      }
    }
  }

  private reply(data: unknown) {
    const frame = this.flight;
    let reply: any;
    try {
      reply = JSON.parse(String(data));
    } catch {
      // unreadable below
    }
    if (!frame || reply?.frame !== frame.no) return this.lost();
    clearTimeout(this.replyTimer);
    this.flight = null;
    const items = frame.items;
    const ids = items.map((item) => item.id);
    const events = items.map((item) => item.json);
    if (reply.ok) {
      this.failures = 0;
      this.forget(items);
      this.stats.acked += items.length;
      this.emit("ack", { frame: reply.frame, accepted: reply.accepted, seq: reply.seq, ids, events });
      // The server closes after a SESSION_END; the next frame gets a new socket.
      if (items[items.length - 1]!.type == "SESSION_END") {
        this.detach();
        this.set("idle");
      }
      return this.changed();
    }
    const { code = "unknown", message = "", index } = reply.error ?? {};
    if (TRANSIENT.includes(code)) {
      this.stats.retries++;
      this.requeue(items);
      this.emit("error", { code, message, permanent: false, ids, events });
      return this.retryLater();
    }
    if (code == "frame_too_large" || code == "too_many_events") return this.tooLarge(items, code, message);
    // The server names the offending event: drop it alone, send the others again.
    this.drop(typeof index == "number" && items[index] ? items.splice(index, 1) : items.splice(0), code, message);
    this.requeue(items);
    this.changed();
  }

  /** The server's limits are lower than ours: halve the frames and resend; a single event that is still too large is dropped. */
  private tooLarge(items: Item[], code: string, message = "") {
    if (items.length < 2) this.drop(items, code, message);
    else if (code == "too_many_events") this.limits.maxEventsPerFrame = Math.ceil(items.length / 2);
    else this.limits.maxFrameBytes = Math.ceil(items.reduce((sum, item) => sum + item.bytes + 1, 1) / 2);
    this.requeue(items.length < 2 ? [] : items);
    this.changed();
  }

  /** Refused for good: report and forget. */
  private drop(items: Item[], code: string, message: string) {
    this.forget(items);
    this.stats.dropped += items.length;
    const ids = items.map((item) => item.id);
    this.emit("error", { code, message, permanent: true, ids, events: items.map((item) => item.json) });
  }

  private requeue(items: Item[]) {
    this.queue.unshift(...items);
  }

  private forget(items: Item[]) {
    for (const item of items) this.bytes -= item.bytes;
    this.stats.pending -= items.length;
    this.dirty = true;
  }

  /** Resolves the flushes whose events are all done. */
  private settle() {
    if (!this.ready) return;
    const oldest = (this.flight?.items[0] ?? this.queue[0])?.n ?? Infinity;
    this.waiters = this.waiters.filter((waiter) => waiter.n >= oldest || void waiter.done());
  }

  private fail(code: string) {
    for (const waiter of this.waiters.splice(0)) waiter.fail(new Error("sessionfold: " + code));
  }
}

/** A producer for one session; nothing connects until there is an event to send. */
export function session(options: SessionOptions): Session {
  return new Session(options);
}

export const sessionfold = { session };
export default sessionfold;
