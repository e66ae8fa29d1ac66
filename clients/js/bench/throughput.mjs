// `make sdk-bench` (part of `make bench`): how many events per second one
// Node client gets acknowledged by a local ingest (release build, started by
// sessionfold-stack), and the browser bundle's size; records both in
// BENCHMARKS.md between the `sdk:begin` / `sdk:end` markers.
//
// The client is driven as an application would be: it queues events in
// chunks and waits for the previous chunk's flush before queueing past the
// next one, so the queue stays bounded and every event is acknowledged.
import { readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
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

// Twice: ingest and JetStream alone (what the client's acknowledgements
// wait for), then with a processor folding the same events into the
// session's document on the same two cores.
const results = [];
for (const processors of [0, 1]) {
  const stack = await startStack({ RUST_LOG: "warn", SESSIONFOLD_STACK_PROCESSORS: String(processors) });
  try {
    await send(stack.ingest, 20_000); // warm-up: connections, JIT, stream
    results.push({ processors, load: loadavg()[0], ...(await send(stack.ingest, EVENTS)) });
  } finally {
    await stack.stop();
  }
}
const result = results[0];

const bundle = readFileSync(new URL("../dist/sessionfold.min.js", import.meta.url));
const gzipped = gzipSync(bundle, { level: 9 }).length;
const fmt = (n) => Math.round(n).toLocaleString("en-US").replace(/,/g, " ");
const cpu = cpus()[0]?.model ?? "unknown CPU";
const date = new Date().toISOString().slice(0, 10);
const met = result.rate >= TARGET;
const row = (r) =>
  `| ${r.processors ? "with one processor folding at the same time" : "ingest and JetStream alone (no processor)"} | ` +
  `**${fmt(r.rate)}** | ${fmt(EVENTS + 2)} events of ~130 bytes in ${fmt(r.frames)} frames ` +
  `(${fmt((EVENTS + 2) / r.frames)} per frame), ${r.seconds.toFixed(2)} s | ${r.cpu.toFixed(2)} s ` +
  `(${((100 * r.cpu) / r.seconds).toFixed(0)} % of one core) | ${r.load.toFixed(1)} |`;
const table = `<!-- sdk:begin -->
### JavaScript SDK (\`make sdk-bench\`)

${date}, ${cpu}, ${cpus().length} cores, Node ${process.versions.node}. One \`sessionfold-client\` session in
Node sends ${fmt(EVENTS)} events as fast as it can (queued in chunks of ${fmt(CHUNK)}, each chunk's
\`flush()\` awaited before the next but one) to ingest from the release build on the same machine
(\`sessionfold-stack\`), one frame in flight at a time. The load average is the machine's at the end
of the run (other work on the two cores counts in it).

| run | events acknowledged per second | events, frames, time | client CPU | load average |
|---|---|---|---|---|
${results.map(row).join("\n")}

Target: one client sends at least ${fmt(TARGET)} events/s to the local server: **${met ? "met" : "NOT met"}**
(${fmt(result.rate)} events/s without a processor competing for the cores).

Browser bundle \`dist/sessionfold.min.js\`: ${fmt(bundle.length)} bytes minified, **${fmt(gzipped)} bytes
minified and gzipped** (budget 6 000; \`test/bundle.test.mjs\` fails the test run over it).
<!-- sdk:end -->`;
console.log(table);

if (process.env.SDK_BENCH_NO_RECORD) process.exit(0);
const current = readFileSync(RECORD, "utf8");
const block = /<!-- sdk:begin -->[\s\S]*?<!-- sdk:end -->/;
writeFileSync(RECORD, block.test(current) ? current.replace(block, table) : `${current.trimEnd()}\n\n${table}\n`);
console.log(`recorded in ${RECORD}`);
