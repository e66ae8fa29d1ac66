// `make sdk-bench` (part of `make bench`): how many events per second one
// Node client gets acknowledged by a local ingest (release build, started by
// sessionfold-stack), and the browser bundle's size; records both in
// BENCHMARKS.md between the `sdk:begin` / `sdk:end` markers.
//
// The client is driven as an application would be: it queues events in
// chunks and waits for the previous chunk's flush before queueing past the
// next one, so the queue stays bounded and every event is acknowledged.
import { readFileSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { gzipSync } from "node:zlib";

import sessionfold from "../dist/index.js";
import { sessionId, startStack } from "../test/stack.mjs";

const EVENTS = Number(process.env.SDK_BENCH_EVENTS || 500_000);
const CHUNK = 20_000;
const TARGET = 50_000;
const RECORD = process.env.SDK_BENCH_RECORD ?? new URL("../../../BENCHMARKS.md", import.meta.url).pathname;

async function send(url, events) {
  const s = sessionfold.session({
    url,
    sessionId: sessionId("bench"),
    persist: false,
    maxQueueEvents: 4 * CHUNK,
    maxQueueBytes: 64 << 20,
  });
  let failed = 0;
  s.on("error", () => failed++);
  const cpu = process.cpuUsage();
  const started = performance.now();
  s.start();
  let previous = Promise.resolve();
  for (let sent = 0; sent < events; sent += CHUNK) {
    for (let i = sent; i < Math.min(events, sent + CHUNK); i++) {
      s.event("page_view", { path: "/checkout/step-" + (i % 5), value: i * 0.25, experiment: "b" });
    }
    const flushed = s.flush();
    await previous;
    previous = flushed;
  }
  s.end();
  await s.flush();
  const seconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  const stats = { ...s.stats };
  await s.close();
  if (failed || stats.acked !== events + 2) throw new Error(`acked ${stats.acked} of ${events + 2}, ${failed} errors`);
  return { seconds, rate: stats.acked / seconds, frames: stats.frames, cpu: (used.user + used.system) / 1e6 };
}

const stack = await startStack({ RUST_LOG: "warn" });
let result;
try {
  await send(stack.ingest, 20_000); // warm-up: connections, JIT, stream
  result = await send(stack.ingest, EVENTS);
} finally {
  await stack.stop();
}

const bundle = readFileSync(new URL("../dist/sessionfold.min.js", import.meta.url));
const gzipped = gzipSync(bundle, { level: 9 }).length;
const fmt = (n) => Math.round(n).toLocaleString("en-US").replace(/,/g, " ");
const cpu = cpus()[0]?.model ?? "unknown CPU";
const date = new Date().toISOString().slice(0, 10);
const met = result.rate >= TARGET;
const table = `<!-- sdk:begin -->
### JavaScript SDK (\`make sdk-bench\`)

${date}, ${cpu}, ${cpus().length} cores, Node ${process.versions.node}; ingest, one processor and the api
from the release build on the same machine (\`sessionfold-stack\`).

| measure | value |
|---|---|
| one Node client, events acknowledged per second | **${fmt(result.rate)}** (target ${fmt(TARGET)}: ${met ? "met" : "NOT met"}) |
| events, frames, time | ${fmt(EVENTS + 2)} events of ~130 bytes in ${fmt(result.frames)} frames (${fmt((EVENTS + 2) / result.frames)} per frame), ${result.seconds.toFixed(2)} s |
| client CPU | ${result.cpu.toFixed(2)} s (${((100 * result.cpu) / result.seconds).toFixed(0)} % of one core) |
| browser bundle \`dist/sessionfold.min.js\` | ${fmt(bundle.length)} bytes minified, **${fmt(gzipped)} bytes gzipped** (budget 6 144) |
<!-- sdk:end -->`;
console.log(table);

if (process.env.SDK_BENCH_NO_RECORD) process.exit(met ? 0 : 1);
const current = readFileSync(RECORD, "utf8");
const block = /<!-- sdk:begin -->[\s\S]*?<!-- sdk:end -->/;
writeFileSync(RECORD, block.test(current) ? current.replace(block, table) : `${current.trimEnd()}\n\n${table}\n`);
console.log(`recorded in ${RECORD}`);
process.exit(met ? 0 : 1);
