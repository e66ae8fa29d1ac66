// The browser bundle's size: at most 6 KB (6 000 bytes) minified and gzipped. `npm run
// build` writes it; BENCHMARKS.md records the size at each `make bench`.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { gzipSync } from "node:zlib";

const LIMIT = 6_000;

test("the minified, gzipped browser bundle is at most 6 KB and imports nothing but the optional ws", (t) => {
  const bundle = readFileSync(new URL("../dist/sessionfold.min.js", import.meta.url));
  const gzipped = gzipSync(bundle, { level: 9 }).length;
  t.diagnostic(`dist/sessionfold.min.js: ${bundle.length} bytes minified, ${gzipped} bytes gzipped (limit ${LIMIT})`);
  assert.ok(gzipped <= LIMIT, `${gzipped} bytes gzipped, over the ${LIMIT}-byte budget`);
  const text = bundle.toString();
  assert.doesNotMatch(text, /^import\s|[;}]import\s*[{*\w]/m, "no static imports");
  assert.deepEqual([...text.matchAll(/import\(\s*"([^"]+)"\s*\)/g)].map((m) => m[1]), ["ws"]);
});
