// The SDK's browser bundle in a real headless Chromium (Debian's, driven by
// playwright-core; `scripts/install-browser.sh` installs it) against the real
// system: a page sends events; ingest goes away; the page queues more and
// reloads; ingest comes back; every event is stored exactly once.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
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
import sessionfold from "/sessionfold.min.js";
const params = new URLSearchParams(location.search);
sessionStorage.loads = String(Number(sessionStorage.loads || 0) + 1);
const s = sessionfold.session({
  url: params.get("ingest"), sessionId: params.get("session"), initialBackoffMs: 50, maxBackoffMs: 500,
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
window.stored = () => new Promise((done) => {
  const open = indexedDB.open("sessionfold", 1);
  open.onsuccess = () => {
    const get = open.result.transaction("pending").objectStore("pending").get(params.get("session"));
    get.onsuccess = () => done({ db: get.result?.e.length ?? 0, local: localStorage.getItem("sessionfold:" + params.get("session")) });
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
  context = await chromium.launchPersistentContext(profile, {
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
});

after(async () => {
  await context?.close();
  server?.close();
  await stack?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test("a page's events survive ingest going away and a reload: each is stored exactly once", { timeout: 120_000 }, async () => {
  const id = sessionId("browser");
  const acked = [];
  const queued = [];
  const errors = [];
  const page = await context.newPage();
  await page.exposeFunction("reportAck", (events) => acked.push(...events));
  await page.exposeFunction("reportQueued", (ids) => queued.push(...ids));
  await page.exposeFunction("reportError", (code) => errors.push(code));
  const loads = async () => {
    try {
      return await page.evaluate(() => window.ready && Number(sessionStorage.loads));
    } catch {
      return undefined; // between two documents
    }
  };
  await page.goto(`${origin}/page?ingest=${encodeURIComponent(stack.ingest)}&session=${encodeURIComponent(id)}`);
  await eventually("the page is ready", async () => (await loads()) === 1);

  // Online: sent and acknowledged.
  await page.evaluate(async () => {
    window.queue(1, "start");
    window.queue(20, "online");
    await window.s.flush();
  });
  assert.equal(acked.length, 21);

  // Ingest goes away; the page queues more and reloads at once, before any
  // timer of its own could save them: the pagehide handler must.
  await stack.command("kill-ingest");
  await eventually("the page saw the connection drop", () => page.evaluate(() => window.s.state === "offline"));
  await page.evaluate(() => {
    window.queue(30, "before_reload");
    setTimeout(() => location.reload(), 0);
  });
  await eventually("the page reloaded", async () => (await loads()) === 2);
  await eventually("the reloaded page restored the 30 unsent events", () =>
    page.evaluate(() => window.s.stats.pending === 30),
  );
  await page.evaluate(() => {
    window.queue(10, "after_reload");
    window.queue(1, "end");
  });
  await eventually("the unsent events are in IndexedDB", async () => (await page.evaluate(() => window.stored())).db === 41);
  assert.equal(acked.length, 21, "nothing was acknowledged while ingest was away");

  // Ingest is back: the page reconnects by itself and sends everything.
  await stack.command("start-ingest");
  await page.evaluate(() => window.s.flush());
  assert.deepEqual(errors, []);
  assert.equal(queued.length, 62);
  assert.ok(!queued.includes(null), "every event was queued");
  assert.deepEqual(new Set(acked.map((text) => JSON.parse(text).id)), new Set(queued), "every queued event was acknowledged");
  const stored = await assertStoredExactly(stack.api, id, acked);
  assert.equal(stored.children.length, 60);
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
