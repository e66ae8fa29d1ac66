// The SDK's browser bundle in a real headless Chromium (Debian's, driven by
// playwright-core; `scripts/install-browser.sh` installs it) against the real
// system: a page sends events; ingest goes away; the page queues more and
// reloads; ingest comes back; every event is stored exactly once.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { chromium } from "playwright-core";

import { assertStoredExactly, eventually, sessionId, startStack } from "./stack.mjs";

const CHROMIUM = process.env.SESSIONFOLD_CHROMIUM || "/usr/bin/chromium";
const BUNDLE = new URL("../dist/sessionfold.min.js", import.meta.url);

// The page: one session from the query string; it reports what it queued
// and what was acknowledged to the test through exposed functions, so the
// test keeps the record across reloads.
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>sessionfold-client test page</title>
<script type="module">
const params = new URLSearchParams(location.search);
// ?noidb: a browser without IndexedDB (blocked storage, some private modes).
if (params.has("noidb")) Object.defineProperty(window, "indexedDB", { value: undefined });
const { default: sessionfold } = await import("/sessionfold.min.js");
sessionStorage.loads = String(Number(sessionStorage.loads || 0) + 1);
const s = sessionfold.session({
  url: params.get("ingest"), sessionId: params.get("session"), token: params.get("token") ?? undefined,
  initialBackoffMs: 50, maxBackoffMs: 500,
});
s.on("ack", (ack) => window.reportAck(ack.events));
s.on("error", (error) => window.reportError(error.code));
window.s = s;
window.queue = (count, name) => {
  const ids = [];
  for (let i = 0; i < count; i++)
    ids.push(name == "start" ? s.start() : name == "end" ? s.end() : s.event(name, { i, load: sessionStorage.loads }));
  window.reportQueued(ids);
  return ids;
};
// What the page's storage holds for the session: events in IndexedDB, and
// the localStorage copy (null when there is none).
window.stored = () => new Promise((done) => {
  const local = localStorage.getItem("sessionfold:" + params.get("session"));
  if (!window.indexedDB) return done({ db: 0, local });
  const open = indexedDB.open("sessionfold", 1);
  open.onsuccess = () => {
    const get = open.result.transaction("pending").objectStore("pending").get(params.get("session"));
    get.onsuccess = () => done({ db: get.result?.e.length ?? 0, local });
  };
});
window.ready = true;
</script>`;

let stack;
let server;
let origin;
let profile;
let context;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: run scripts/install-browser.sh (make test does)`);
  stack = await startStack();
  server = createServer((request, response) => {
    if (request.url.startsWith("/sessionfold.min.js")) {
      response.writeHead(200, { "content-type": "text/javascript" }).end(readFileSync(BUNDLE));
    } else if (request.url.startsWith("/page")) {
      response.writeHead(200, { "content-type": "text/html" }).end(PAGE);
    } else response.writeHead(404).end();
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  origin = `http://127.0.0.1:${server.address().port}`;
  profile = mkdtempSync(join(tmpdir(), "sessionfold-chromium-"));
  context = await launch();
});

/** Chromium on the test's profile directory (a fresh one, kept across relaunches). */
function launch() {
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** A page of the test page, with its reports going to `record`. */
async function openPage(record, session, query = "", ingest = stack.ingest) {
  const page = await context.newPage();
  await page.exposeFunction("reportAck", (events) => record.acked.push(...events));
  await page.exposeFunction("reportQueued", (ids) => record.queued.push(...ids));
  await page.exposeFunction("reportError", (code) => record.errors.push(code));
  const url = `${origin}/page?ingest=${encodeURIComponent(ingest)}&session=${encodeURIComponent(session)}${query}`;
  await page.goto(url);
  await eventually("the page is ready", () => loads(page));
  return page;
}

/** How often the tab loaded the page, once the page is ready (undefined between two documents). */
async function loads(page) {
  try {
    return await page.evaluate(() => window.ready && Number(sessionStorage.loads));
  } catch {
    return undefined;
  }
}

/** Every event queued was acknowledged, and the document is their fold with each stored once. */
async function assertAllStored(record, session, children, api = stack.api, token = undefined) {
  assert.deepEqual(record.errors, []);
  assert.ok(!record.queued.includes(null), "every event was queued");
  const ackedIds = new Set(record.acked.map((text) => JSON.parse(text).id));
  assert.deepEqual(ackedIds, new Set(record.queued), "every queued event was acknowledged");
  const stored = await assertStoredExactly(api, session, record.acked, token);
  assert.equal(stored.children.length, children);
  return stored;
}

after(async () => {
  await context?.close();
  server?.close();
  await stack?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test("a page's events survive ingest going away and a reload: each is stored exactly once", { timeout: 120_000 }, async () => {
  const id = sessionId("browser");
  const record = { acked: [], queued: [], errors: [] };
  const page = await openPage(record, id);

  // Online: sent and acknowledged.
  await page.evaluate(async () => {
    window.queue(1, "start");
    window.queue(20, "online");
    await window.s.flush();
  });
  assert.equal(record.acked.length, 21);

  // Ingest goes away; the page queues more and reloads at once, before any
  // timer of its own could save them: the pagehide handler must.
  await stack.command("kill-ingest");
  await eventually("the page saw the connection drop", () => page.evaluate(() => window.s.state === "offline"));
  await page.evaluate(() => {
    window.queue(30, "before_reload");
    setTimeout(() => location.reload(), 0);
  });
  await eventually("the page reloaded", async () => (await loads(page)) === 2);
  await eventually("the reloaded page restored the 30 unsent events", () =>
    page.evaluate(() => window.s.stats.pending === 30),
  );
  await page.evaluate(() => {
    window.queue(10, "after_reload");
    window.queue(1, "end");
  });
  await eventually("the unsent events are in IndexedDB", async () => (await page.evaluate(() => window.stored())).db === 41);
  assert.equal(record.acked.length, 21, "nothing was acknowledged while ingest was away");

  // Ingest is back: the page reconnects by itself and sends everything.
  await stack.command("start-ingest");
  await page.evaluate(() => window.s.flush());
  assert.equal(record.queued.length, 62);
  const stored = await assertAllStored(record, id, 60);
  assert.deepEqual(
    stored.children.map((child) => child.name).filter((name, i, all) => all.indexOf(name) === i),
    ["online", "before_reload", "after_reload"],
  );
  await eventually("nothing is left in the page's storage", async () => {
    const left = await page.evaluate(() => window.stored());
    return left.db === 0 && left.local === null;
  });
  await page.close();
});

test("without IndexedDB, localStorage keeps the unsent events across a reload", { timeout: 120_000 }, async () => {
  const id = sessionId("browser-local");
  const record = { acked: [], queued: [], errors: [] };
  const page = await openPage(record, id, "&noidb");
  await page.evaluate(() => {
    window.queue(1, "start");
    return window.s.flush();
  });
  await stack.command("kill-ingest");
  await page.evaluate(() => window.queue(20, "offline"));
  await eventually("the events are in localStorage", async () => {
    const { local } = await page.evaluate(() => window.stored());
    return local !== null && JSON.parse(local).e.length === 20;
  });
  await page.evaluate(() => setTimeout(() => location.reload(), 0));
  await eventually("the reloaded page restored the 20 events", async () =>
    (await loads(page)) >= 2 && page.evaluate(() => window.s.stats.pending === 20),
  );
  await stack.command("start-ingest");
  await page.evaluate(() => {
    window.queue(1, "end");
    return window.s.flush();
  });
  await assertAllStored(record, id, 20);
  await eventually("localStorage is emptied", async () => (await page.evaluate(() => window.stored())).local === null);
  await page.close();
});

test("events saved in IndexedDB survive the browser being killed, with no pagehide", { timeout: 120_000 }, async () => {
  const id = sessionId("browser-crash");
  const record = { acked: [], queued: [], errors: [] };
  let page = await openPage(record, id);
  await page.evaluate(() => {
    window.queue(1, "start");
    window.queue(5, "online");
    return window.s.flush();
  });
  await stack.command("kill-ingest");
  await page.evaluate(() => window.queue(25, "offline"));
  await eventually("the page saved the 25 events in IndexedDB", async () => (await page.evaluate(() => window.stored())).db === 25);
  assert.equal((await page.evaluate(() => window.stored())).local, null, "nothing in localStorage: no pagehide yet");

  // SIGKILL the browser process: no pagehide, no unload, no last write.
  const closed = new Promise((resolve) => context.once("close", resolve));
  process.kill(browserPid(), "SIGKILL");
  await closed;
  context = await launch();
  page = await openPage(record, id);
  await eventually("the relaunched page restored the 25 events", () => page.evaluate(() => window.s.stats.pending === 25));
  await stack.command("start-ingest");
  await page.evaluate(() => {
    window.queue(1, "end");
    return window.s.flush();
  });
  await assertAllStored(record, id, 30);
  await page.close();
});

test("a page opens a session with a token in the query, as browsers must", { timeout: 120_000 }, async () => {
  const secret = "a-test-secret-for-browser-tokens";
  const secured = await startStack({ AUTH_REQUIRED: "true", AUTH_TOKEN_SECRET: secret });
  try {
    const id = sessionId("browser-token");
    const token = execFileSync(secured.sessionfold, ["token", "--session", id, "--scope", "read-write"], {
      env: { ...process.env, AUTH_TOKEN_SECRET: secret },
    })
      .toString()
      .trim();
    const record = { acked: [], queued: [], errors: [] };
    const page = await openPage(record, id, `&token=${encodeURIComponent(token)}`, secured.ingest);
    await page.evaluate(() => {
      window.queue(1, "start");
      window.queue(3, "signed_in");
      window.queue(1, "end");
      return window.s.flush();
    });
    await assertAllStored(record, id, 3, secured.api, token);
    await page.close();
  } finally {
    await secured.stop();
  }
});

/** The main Chromium process of this test's profile (the one without --type=). */
function browserPid() {
  for (const pid of readdirSync("/proc").filter((name) => /^\d+$/.test(name))) {
    let args;
    try {
      args = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    } catch {
      continue; // gone meanwhile
    }
    if (args.includes(`--user-data-dir=${profile}`) && !args.some((arg) => arg.startsWith("--type="))) return Number(pid);
  }
  assert.fail(`no Chromium process with --user-data-dir=${profile}`);
}
