// The session's state machine against a scripted WebSocket, for the cases a
// real server does not produce on demand: replies that never come, replies
// to the wrong frame, a close with 1009, codes the SDK does not know. The
// behaviour against the real system is in node.test.mjs.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import sessionfold from "../dist/index.js";
import { eventually, record } from "./stack.mjs";

/** Every socket the session opened, with what it sent; the test answers. */
function scripted() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.readyState = 0;
      sockets.push(this);
      queueMicrotask(() => {
        this.readyState = 1;
        this.onopen?.({});
      });
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close() {
      this.readyState = 3;
    }
    reply(body) {
      this.onmessage?.({ data: JSON.stringify(body) });
    }
    drop(code = 1006) {
      this.readyState = 3;
      this.onclose?.({ code });
    }
  }
  return { sockets, WebSocket: FakeWebSocket };
}

// Closed after each test, so that no retry timer outlives it.
const sessions = [];
afterEach(async () => {
  await Promise.all(sessions.splice(0).map((s) => s.close()));
});
const session = (opts) => {
  const s = sessionfold.session(opts);
  sessions.push(s);
  return s;
};

const options = (fake, more = {}) => ({
  url: "ws://127.0.0.1:9/websocket",
  sessionId: "s 1",
  WebSocket: fake.WebSocket,
  persist: false,
  closeTimeoutMs: 10,
  initialBackoffMs: 1,
  maxBackoffMs: 5,
  ...more,
});

test("the session id and token go in the URL the socket opens", async () => {
  const fake = scripted();
  const s = session(options(fake, { url: "ws://h:1", token: "t" }));
  s.event("e");
  await eventually("a socket", () => fake.sockets[0]?.sent.length === 1);
  const url = new URL(fake.sockets[0].url);
  assert.equal(url.pathname, "/websocket");
  assert.equal(url.searchParams.get("session_id"), "s 1");
  // Node sends the token as a header; browsers cannot, and use the query.
  assert.equal(url.searchParams.get("token"), null);
  assert.throws(() => sessionfold.session(options(fake, { url: "http://h:1" })), TypeError);
});

test("one frame is in flight at a time; the next carries what was queued meanwhile", async () => {
  const fake = scripted();
  const s = session(options(fake));
  const seen = record(s);
  s.event("a", { timestamp: 1 });
  await eventually("the first frame", () => fake.sockets[0]?.sent.length === 1);
  s.event("b", { timestamp: 2 });
  s.event("c", { timestamp: 3 });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(fake.sockets[0].sent.length, 1, "nothing more before the reply");
  fake.sockets[0].reply({ ok: true, frame: 1, accepted: 1, seq: 7 });
  await eventually("the second frame", () => fake.sockets[0].sent.length === 2);
  assert.deepEqual(fake.sockets[0].sent[1].map((e) => e.name), ["b", "c"]);
  fake.sockets[0].reply({ ok: true, frame: 2, accepted: 2, seq: 8 });
  await s.flush();
  assert.deepEqual(seen.frames.map((f) => [f.frame, f.seq, f.ids.length]), [[1, 7, 1], [2, 8, 2]]);
});

test("a frame without a reply, or a reply to another frame, is sent again on a new connection", async () => {
  const fake = scripted();
  const s = session(options(fake, { replyTimeoutMs: 30 }));
  const ids = [s.event("a"), s.event("b")];
  await eventually("the first frame", () => fake.sockets[0]?.sent.length === 1);
  // No reply: after replyTimeoutMs the socket is given up.
  await eventually("a second connection", () => fake.sockets[1]?.sent.length === 1);
  assert.deepEqual(fake.sockets[1].sent[0].map((e) => e.id), ids);
  fake.sockets[1].reply({ ok: true, frame: 2, accepted: 2 });
  await eventually("a third connection", () => fake.sockets[2]?.sent.length === 1);
  assert.deepEqual(fake.sockets[2].sent[0].map((e) => e.id), ids);
  fake.sockets[2].reply({ ok: true, frame: 1, accepted: 2 });
  await s.flush();
  assert.equal(s.stats.reconnects, 2);
  assert.equal(s.stats.acked, 2);
});

test("a close with 1009 halves the frames instead of resending the same one forever", async () => {
  const fake = scripted();
  const s = session(options(fake));
  for (let i = 0; i < 8; i++) s.event("e", { i });
  await eventually("the first frame", () => fake.sockets[0]?.sent.length === 1);
  assert.equal(fake.sockets[0].sent[0].length, 8);
  fake.sockets[0].drop(1009);
  await eventually("a smaller frame", () => fake.sockets[1]?.sent.length === 1);
  assert.ok(fake.sockets[1].sent[0].length < 8, `${fake.sockets[1].sent[0].length} events`);
});

test("an unknown code is permanent: the frame is reported and dropped, not retried", async () => {
  const fake = scripted();
  const s = session(options(fake));
  const seen = record(s);
  const id = s.event("e");
  await eventually("the frame", () => fake.sockets[0]?.sent.length === 1);
  fake.sockets[0].reply({ ok: false, frame: 1, error: { code: "session_closed", message: "closed long ago" } });
  await s.flush();
  assert.deepEqual(
    seen.errors.map((e) => [e.code, e.permanent, e.ids]),
    [["session_closed", true, [id]]],
  );
  assert.equal(s.stats.dropped, 1);
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(fake.sockets[0].sent.length, 1);
});

test("after a frame with SESSION_END the next events go over a new connection", async () => {
  const fake = scripted();
  const s = session(options(fake));
  s.start();
  s.end();
  s.event("late");
  await eventually("the first frame", () => fake.sockets[0]?.sent.length === 1);
  assert.deepEqual(fake.sockets[0].sent[0].map((e) => e.type), ["SESSION_START", "SESSION_END"]);
  fake.sockets[0].reply({ ok: true, frame: 1, accepted: 2 });
  await eventually("a second connection", () => fake.sockets[1]?.sent.length === 1);
  assert.equal(fake.sockets[0].readyState, 3, "the client closed the first socket");
  fake.sockets[1].reply({ ok: true, frame: 1, accepted: 1 });
  await s.flush();
  assert.equal(s.stats.reconnects, 0, "not a failure");
});

test("invalid timestamps and unserializable props are refused before sending", () => {
  const fake = scripted();
  const s = session(options(fake));
  const seen = record(s);
  assert.equal(s.event("e", { timestamp: -1 }), null);
  assert.equal(s.event("e", { timestamp: Number.NaN }), null);
  assert.equal(s.event("e", { big: 1n }), null);
  assert.deepEqual(seen.errors.map((e) => e.code), ["invalid_event", "invalid_event", "invalid_event"]);
  assert.equal(s.stats.pending, 0);
});
