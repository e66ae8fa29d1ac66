// The SDK in Node against the real system: nats-server with JetStream,
// redis-server with RedisJSON, ingest, a processor and the api, started by
// the `sessionfold-stack` launcher. Every test compares the stored document
// with the reference fold of what the SDK reported as acknowledged.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, describe, test } from "node:test";

import sessionfold from "../dist/index.js";
import { assertStoredExactly, eventually, readDocument, record, sessionId, startStack, utf8 } from "./stack.mjs";

const FAST = { initialBackoffMs: 20, maxBackoffMs: 500, persist: false };

describe("against a default server", () => {
  let stack;
  before(async () => {
    // A short publish timeout, so that a stopped NATS gives `unavailable` quickly.
    stack = await startStack({ PUBLISH_TIMEOUT_MS: "500" });
  });
  after(() => stack?.stop());

  test("events are acknowledged, with ids, and stored as the reference fold", { timeout: 120_000 }, async () => {
    const id = sessionId("acks");
    const s = sessionfold.session({ url: stack.ingest, sessionId: id, ...FAST });
    const seen = record(s);
    const start = s.start();
    const ids = [s.event("cart_loaded", { cart: { items: 2 } }), s.event("checkout", { total: 9.5, note: "ünïcødé 😀" })];
    const end = s.end();
    await s.flush();
    assert.deepEqual([...seen.ackedIds], [start, ...ids, end]);
    for (const uuid of [start, ...ids, end]) assert.match(uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(s.stats.acked, 4);
    assert.equal(s.stats.pending, 0);
    assert.deepEqual(seen.errors, []);
    assert.deepEqual(seen.states.slice(0, 2), ["connecting", "open"]);
    const stored = await assertStoredExactly(stack.api, id, seen.acked);
    assert.equal(stored.children.length, 2);
    assert.equal(stored.children[1].note, "ünïcødé 😀");
    await s.close();
    assert.equal(s.state, "closed");
  });

  test("10 000 events in one burst are stored once each, in frames within the limits", { timeout: 120_000 }, async () => {
    const id = sessionId("ten-thousand");
    const s = sessionfold.session({ url: stack.ingest, sessionId: id, ...FAST, maxQueueEvents: 10_002 });
    const seen = record(s);
    s.start({ timestamp: 1000 });
    // Few distinct timestamps: the order of ties shows arrival order is kept.
    for (let i = 0; i < 10_000; i++) s.event("tick", { timestamp: 1000 + (i % 7), i });
    s.end({ timestamp: 2000 });
    await s.flush();
    assert.equal(s.stats.acked, 10_002);
    assert.equal(seen.errors.length, 0);
    assert.ok(seen.frames.length >= 2, `10 002 events of ~100 bytes do not fit one 1 MiB frame (${seen.frames.length})`);
    for (const frame of seen.frames) {
      assert.ok(frame.events.length <= 10_000);
      assert.ok(utf8(`[${frame.events.join(",")}]`) <= 1_048_406);
      assert.equal(frame.accepted, frame.events.length);
    }
    const stored = await assertStoredExactly(stack.api, id, seen.acked);
    assert.equal(stored.children.length, 10_000);
    await s.close();
  });

  test("frames are packed up to the frame and event limits; a too-large event is reported, not sent", { timeout: 120_000 }, async () => {
    const id = sessionId("limits");
    const s = sessionfold.session({ url: stack.ingest, sessionId: id, ...FAST, maxQueueEvents: 20_000 });
    const seen = record(s);
    // An event of exactly 64 KiB, multi-byte characters included.
    const sample = JSON.stringify({ type: "EVENT", timestamp: 5, name: "big", id: "0".repeat(36), pad: "" });
    const pad = (bytes) => "😀".repeat(10) + "é".repeat(10) + "x".repeat(bytes - utf8(sample) - 60);
    const big = [];
    for (let i = 0; i < 31; i++) big.push(s.event("big", { timestamp: 5, pad: pad(65_536) }));
    const tooBig = s.event("big", { timestamp: 5, pad: pad(65_537) });
    assert.equal(tooBig, null);
    assert.equal(seen.errors.length, 1);
    assert.equal(seen.errors[0].code, "event_too_large");
    assert.equal(seen.errors[0].permanent, true);
    // 10 000 small events fill exactly one frame.
    for (let i = 0; i < 10_000; i++) s.event("small", { timestamp: 6 });
    await s.flush();
    assert.equal(seen.errors.length, 1, JSON.stringify(seen.errors.map((e) => e.code)));
    const sizes = seen.frames.map((frame) => utf8(`[${frame.events.join(",")}]`));
    for (const text of seen.frames[0].events) assert.equal(utf8(text), 65_536);
    // 15 events of 64 KiB fit 1 MiB, 16 do not.
    assert.deepEqual(
      seen.frames.map((frame) => frame.events.length),
      [15, 15, 10_000, 1],
    );
    for (const size of sizes) assert.ok(size <= 1_048_406, `a frame of ${size} bytes`);
    assert.ok(big.every((uuid) => seen.ackedIds.has(uuid)));
    const stored = await assertStoredExactly(stack.api, id, seen.acked);
    assert.equal(stored.children.length, 10_031);
    await s.close();
  });

  test("an event the server refuses is reported alone; the rest of its frame is stored", { timeout: 120_000 }, async () => {
    const id = sessionId("refused");
    const s = sessionfold.session({ url: stack.ingest, sessionId: id, ...FAST });
    const seen = record(s);
    let deep = {};
    for (let i = 0; i < 70; i++) deep = { deep };
    s.start({ timestamp: 1 });
    s.event("before", { timestamp: 2 });
    const refused = s.event("too_deep", { timestamp: 3, deep });
    s.event("after", { timestamp: 4 });
    await s.flush();
    assert.equal(seen.errors.length, 1);
    assert.deepEqual(
      { code: seen.errors[0].code, permanent: seen.errors[0].permanent, ids: seen.errors[0].ids },
      { code: "invalid_event", permanent: true, ids: [refused] },
    );
    assert.equal(s.stats.dropped, 1);
    assert.equal(s.stats.acked, 3);
    const stored = await assertStoredExactly(stack.api, id, seen.acked);
    assert.deepEqual(stored.children.map((child) => child.name), ["before", "after"]);
    await s.close();
  });

  test("a full queue drops the newest events, counts them, and keeps the session's end", { timeout: 120_000 }, async () => {
    const id = sessionId("bounded");
    const s = sessionfold.session({ url: stack.ingest, sessionId: id, ...FAST, maxQueueEvents: 5 });
    const seen = record(s);
    const kept = [s.start({ timestamp: 1 })];
    for (let i = 0; i < 4; i++) kept.push(s.event("kept", { timestamp: 2 + i }));
    const dropped = [];
    for (let i = 0; i < 3; i++) dropped.push(s.event("dropped", { timestamp: 10 + i }));
    assert.deepEqual(dropped, [null, null, null]);
    // SESSION_END takes the place of the newest queued EVENT.
    const end = s.end({ timestamp: 20 });
    assert.ok(end);
    const evicted = kept.pop();
    assert.equal(s.stats.dropped, 4);
    assert.deepEqual(
      seen.errors.map((error) => error.code),
      ["queue_full", "queue_full", "queue_full", "queue_full"],
    );
    assert.deepEqual(seen.errors[3].ids, [evicted]);
    await s.flush();
    assert.deepEqual([...seen.ackedIds], [...kept, end]);
    const stored = await assertStoredExactly(stack.api, id, seen.acked);
    assert.deepEqual([stored.start, stored.end, stored.children.length], [1, 20, 3]);
    await s.close();
  });

  test("ingest killed and restarted mid-stream: every unacknowledged frame is resent, nothing doubles", { timeout: 120_000 }, async () => {
    const id = sessionId("ingest-killed");
    const s = sessionfold.session({ url: stack.ingest, sessionId: id, ...FAST });
    const seen = record(s);
    const queued = [s.start({ timestamp: 0 })];
    for (let i = 0; i < 500; i++) queued.push(s.event("before", { timestamp: i % 10 }));
    await s.flush();
    // Keep producing; kill ingest at the first acknowledgement, while the
    // next frame is on its way.
    let killed = false;
    const unsubscribe = s.on("ack", () => {
      unsubscribe();
      stack.command("kill-ingest").then(() => (killed = true));
    });
    const giveUp = Date.now() + 20_000;
    for (let round = 0; !killed; round++) {
      assert.ok(Date.now() < giveUp, "no acknowledgement came to trigger the kill");
      for (let i = 0; i < 50; i++) queued.push(s.event("during", { timestamp: i % 10, round }));
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    assert.ok(s.stats.pending > 0, "events were unacknowledged when ingest died");
    await eventually("the session noticed", () => s.state === "offline" || s.state === "connecting");
    for (let i = 0; i < 300; i++) queued.push(s.event("while_down", { timestamp: i % 10 }));
    assert.ok(s.stats.pending > 0);
    await stack.command("start-ingest");
    queued.push(s.end({ timestamp: 99 }));
    await s.flush();
    assert.ok(s.stats.reconnects >= 1, `reconnects: ${s.stats.reconnects}`);
    assert.equal(s.stats.dropped, 0);
    assert.deepEqual(new Set(queued), seen.ackedIds, "every queued event was acknowledged");
    const stored = await assertStoredExactly(stack.api, id, seen.acked);
    assert.equal(stored.children.length, queued.length - 2);
    await s.close();
  });

  test("NATS stopped mid-stream: `unavailable` frames are retried with backoff until stored", { timeout: 120_000 }, async () => {
    const id = sessionId("nats-down");
    const s = sessionfold.session({ url: stack.ingest, sessionId: id, ...FAST });
    const seen = record(s);
    const queued = [s.start({ timestamp: 0 })];
    for (let i = 0; i < 100; i++) queued.push(s.event("before", { timestamp: i }));
    await s.flush();
    await stack.command("stop-nats");
    for (let i = 0; i < 100; i++) queued.push(s.event("while_down", { timestamp: 100 + (i % 5) }));
    await eventually("ingest answered unavailable", () => seen.errors.some((e) => e.code === "unavailable"));
    assert.ok(seen.errors.every((e) => e.code === "unavailable" && !e.permanent));
    await stack.command("start-nats");
    await s.flush();
    assert.ok(s.stats.retries >= 1);
    assert.deepEqual(new Set(queued), seen.ackedIds);
    const stored = await assertStoredExactly(stack.api, id, seen.acked);
    assert.equal(stored.children.length, 200);
    await s.close();
  });

  test("events that could not be sent are kept in the store and sent by the next session", { timeout: 120_000 }, async () => {
    const saved = new Map();
    const store = {
      async load(key) {
        return saved.get(key) ?? [];
      },
      async save(key, events) {
        saved.set(key, events);
      },
    };
    const id = sessionId("persisted");
    const first = sessionfold.session({ url: stack.ingest, sessionId: id, ...FAST, persist: store, closeTimeoutMs: 300 });
    const seenFirst = record(first);
    const queued = [first.start({ timestamp: 1 }), first.event("acked", { timestamp: 2 })];
    await first.flush();
    await stack.command("kill-ingest");
    for (let i = 0; i < 50; i++) queued.push(first.event("unsent", { timestamp: 3 + i }));
    await first.close(); // gives up after closeTimeoutMs and saves the rest
    assert.equal(saved.get(id).length, 50);
    await stack.command("start-ingest");
    const second = sessionfold.session({ url: stack.ingest, sessionId: id, ...FAST, persist: store });
    const seenSecond = record(second);
    queued.push(second.end({ timestamp: 100 }));
    await second.flush();
    assert.equal(second.stats.acked, 51);
    await eventually("the acknowledged events leave the store", () => saved.get(id)?.length === 0);
    const acked = [...seenFirst.acked, ...seenSecond.acked];
    assert.deepEqual(new Set(acked.map((text) => JSON.parse(text).id)), new Set(queued));
    await assertStoredExactly(stack.api, id, acked);
    await second.close();
  });

  test("without a global WebSocket the SDK uses the `ws` package", { timeout: 120_000 }, async () => {
    const id = sessionId("ws-package");
    const script = `
      delete globalThis.WebSocket;
      const { default: sessionfold } = await import(${JSON.stringify(new URL("../dist/index.js", import.meta.url).href)});
      const s = sessionfold.session({ url: ${JSON.stringify(stack.ingest)}, sessionId: ${JSON.stringify(id)}, persist: false });
      const acked = [];
      s.on("ack", (ack) => acked.push(...ack.events));
      s.start({ timestamp: 1 }); s.event("via_ws", { timestamp: 2 }); s.end({ timestamp: 3 });
      await s.flush(); await s.close();
      console.log(JSON.stringify(acked));`;
    const output = await new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      child.stdout.on("data", (chunk) => (out += chunk));
      child.on("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`exit ${code}`))));
    });
    const acked = JSON.parse(output);
    assert.equal(acked.length, 3);
    await assertStoredExactly(stack.api, id, acked);
  });
});

describe("against a server with a tight rate limit", () => {
  let stack;
  before(async () => {
    stack = await startStack({ SESSION_FRAMES_PER_SEC: "4" });
  });
  after(() => stack?.stop());

  test("`rate_limited` frames are retried later and every event is stored once", { timeout: 120_000 }, async () => {
    const id = sessionId("rate-limited");
    const s = sessionfold.session({ url: stack.ingest, sessionId: id, ...FAST });
    const seen = record(s);
    const queued = [s.start({ timestamp: 0 })];
    // One frame per flush: far more frames per second than the limit allows.
    for (let i = 0; i < 20; i++) {
      queued.push(s.event("click", { timestamp: i }));
      await s.flush();
    }
    queued.push(s.end({ timestamp: 50 }));
    await s.flush();
    assert.ok(s.stats.retries > 0, "some frames were rate limited");
    assert.ok(seen.errors.length > 0 && seen.errors.every((e) => e.code === "rate_limited" && !e.permanent));
    assert.deepEqual(new Set(queued), seen.ackedIds);
    await assertStoredExactly(stack.api, id, seen.acked);
    await s.close();
  });
});

describe("against a server with smaller limits than the SDK's", () => {
  let stack;
  before(async () => {
    stack = await startStack({ MAX_EVENTS_PER_FRAME: "64", MAX_FRAME_BYTES: "16384" });
  });
  after(() => stack?.stop());

  test("frames refused as too large are split until they fit; nothing is lost", { timeout: 120_000 }, async () => {
    const id = sessionId("small-limits");
    const s = sessionfold.session({ url: stack.ingest, sessionId: id, ...FAST, maxQueueEvents: 2000 });
    const seen = record(s);
    const queued = [s.start({ timestamp: 0 })];
    for (let i = 0; i < 1000; i++) queued.push(s.event("e", { timestamp: i % 3, i }));
    queued.push(s.end({ timestamp: 9 }));
    await s.flush();
    assert.deepEqual(seen.errors, []);
    assert.deepEqual(new Set(queued), seen.ackedIds);
    for (const frame of seen.frames) {
      assert.ok(frame.events.length <= 64);
      assert.ok(utf8(`[${frame.events.join(",")}]`) <= 16384);
    }
    await assertStoredExactly(stack.api, id, seen.acked);
    await s.close();
  });
});

describe("against a server that requires tokens", () => {
  const secret = "a-test-secret-for-session-tokens";
  let stack;
  const token = async (session, scope) => {
    const child = spawn(stack.sessionfold, ["token", "--session", session, "--scope", scope, "--ttl-secs", "600"], {
      env: { ...process.env, AUTH_TOKEN_SECRET: secret },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (chunk) => (out += chunk));
    await new Promise((resolve) => child.on("exit", resolve));
    assert.match(out.trim(), /^sf1\./);
    return out.trim();
  };
  before(async () => {
    stack = await startStack({ AUTH_REQUIRED: "true", AUTH_TOKEN_SECRET: secret });
  });
  after(() => stack?.stop());

  test("a session token opens the session; the events are stored", { timeout: 120_000 }, async () => {
    const id = sessionId("token");
    const writeAndRead = await token(id, "read-write");
    const s = sessionfold.session({ url: stack.ingest, sessionId: id, token: writeAndRead, ...FAST });
    const seen = record(s);
    s.start({ timestamp: 1 });
    s.event("signed_in", { timestamp: 2 });
    s.end({ timestamp: 3 });
    await s.flush();
    assert.equal(s.stats.acked, 3);
    await assertStoredExactly(stack.api, id, seen.acked, writeAndRead);
    await s.close();
  });

  test("a bad or foreign token fails the session with the server's code, without endless retries", { timeout: 120_000 }, async () => {
    const id = sessionId("token-refused");
    for (const [credential, code] of [
      [undefined, "unauthorized"],
      ["sf1.not-a-token.x", "invalid_token"],
      [await token("someone-else", "write"), "forbidden"],
    ]) {
      const s = sessionfold.session({ url: stack.ingest, sessionId: id, token: credential, ...FAST });
      const seen = record(s);
      s.event("never_stored", { timestamp: 1 });
      await assert.rejects(s.flush(), /sessionfold/);
      assert.equal(s.state, "failed");
      assert.deepEqual(
        seen.errors.map((e) => [e.code, e.permanent]),
        [[code, true]],
      );
      assert.equal(s.stats.pending, 1, "the event is kept, not dropped");
      await s.close();
    }
    assert.equal(await readDocument(stack.api, id, await token(id, "read")), undefined);
  });
});
