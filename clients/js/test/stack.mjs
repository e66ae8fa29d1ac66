// Test helpers: the real system (the `sessionfold-stack` launcher from the
// Rust workspace), the reference fold, and polling with a deadline.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));

/** The launcher: `SESSIONFOLD_STACK`, else the workspace's debug build. */
export const STACK_BIN = process.env.SESSIONFOLD_STACK || `${ROOT}target/debug/sessionfold-stack`;

export const DEADLINE_MS = 30_000;

/**
 * Starts nats-server, redis-server with RedisJSON, ingest, a processor and
 * the api on free ports. `env` reaches every service (ingest's limits,
 * authentication, rate limits …).
 */
export async function startStack(env = {}) {
  const child = spawn(STACK_BIN, [], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  const next = async (what) => {
    const line = await Promise.race([
      lines.next(),
      exited.then((code) => assert.fail(`sessionfold-stack exited (${code}) while waiting for ${what}`)),
    ]);
    if (line.done) assert.fail(`sessionfold-stack closed its output while waiting for ${what}`);
    return JSON.parse(line.value);
  };
  const addresses = await next("its addresses");
  let queue = Promise.resolve();
  return {
    ...addresses,
    /** Sends one command (`kill-ingest`, `start-ingest`, `stop-nats`, `start-nats`) and waits for its answer. */
    command(command) {
      const answer = queue.then(async () => {
        child.stdin.write(command + "\n");
        const reply = await next(command);
        assert.equal(reply.ok, true, `${command}: ${reply.error}`);
        return reply;
      });
      queue = answer.catch(() => {});
      return answer;
    },
    async stop() {
      child.stdin.end("quit\n");
      await exited;
    },
  };
}

/** Polls `check` until it returns something other than undefined/false, or fails after `ms`. */
export async function eventually(what, check, ms = DEADLINE_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last !== undefined && last !== false) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms (last: ${last?.stack ?? JSON.stringify(last)})`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * The document the fold rules (README, "The client contract") give for events
 * acknowledged in this order: start = smallest SESSION_START timestamp, end
 * = largest SESSION_END timestamp, children = the EVENTs as sent, the first
 * of each id only, ordered by timestamp with ties in arrival order.
 */
export function referenceFold(sessionId, ackedEvents) {
  let start = null;
  let end = null;
  const seen = new Set();
  const children = [];
  for (const event of ackedEvents) {
    const identity = event.id ?? JSON.stringify(event);
    if (seen.has(identity)) continue;
    seen.add(identity);
    if (event.type === "SESSION_START") start = start === null ? event.timestamp : Math.min(start, event.timestamp);
    else if (event.type === "SESSION_END") end = end === null ? event.timestamp : Math.max(end, event.timestamp);
    else children.push(event);
  }
  // Array.prototype.sort is stable: equal timestamps keep arrival order.
  children.sort((a, b) => a.timestamp - b.timestamp);
  return { session_id: sessionId, type: "SESSION", start, end, children };
}

/** GET /data for a session: the document, or undefined while there is none. */
export async function readDocument(api, sessionId, token) {
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  const response = await fetch(`${api}/data?session_id=${encodeURIComponent(sessionId)}`, { headers });
  if (response.status === 404) return undefined;
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

/**
 * Waits until the stored document equals the reference fold of `acked`
 * (the JSON texts of acknowledged events, in acknowledgement order), then
 * checks that no child is there twice.
 */
export async function assertStoredExactly(api, sessionId, acked, token) {
  const expected = referenceFold(sessionId, acked.map((text) => JSON.parse(text)));
  let stored;
  try {
    await eventually(
      `the document of ${sessionId} equals the reference fold`,
      async () => {
        stored = await readDocument(api, sessionId, token);
        assert.deepStrictEqual(stored, expected);
        return true;
      },
    );
  } catch (error) {
    // Show the difference, not only that there was one.
    assert.deepStrictEqual(stored, expected, error.message.slice(0, 300));
  }
  const ids = stored.children.map((child) => child.id);
  assert.equal(new Set(ids).size, ids.length, "no child is stored twice");
  return stored;
}

/** Collects what a session acknowledged, in order, and every error it reported. */
export function record(session) {
  const seen = { acked: [], ackedIds: new Set(), errors: [], states: [], frames: [] };
  session.on("ack", (ack) => {
    seen.frames.push(ack);
    for (const text of ack.events) seen.acked.push(text);
    for (const id of ack.ids) seen.ackedIds.add(id);
  });
  session.on("error", (error) => seen.errors.push(error));
  session.on("state", (state) => seen.states.push(state));
  return seen;
}

/** A fresh session id. */
export function sessionId(label) {
  return `${label}-${crypto.randomUUID()}`;
}

/** UTF-8 bytes of a string. */
export const utf8 = (text) => Buffer.byteLength(text, "utf8");
