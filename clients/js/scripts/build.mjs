// Builds dist/sessionfold.min.js, the minified browser bundle (ESM), after
// `tsc` has written dist/index.js and the type declarations; prints the
// bundle's size minified and gzipped.
import { build } from "esbuild";
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

export const BUNDLE = new URL("../dist/sessionfold.min.js", import.meta.url);

await build({
  entryPoints: [new URL("../src/index.ts", import.meta.url).pathname],
  outfile: BUNDLE.pathname,
  bundle: true,
  minify: true,
  format: "esm",
  platform: "browser",
  target: "es2020",
  // Only Node without a global WebSocket loads `ws`, the optional peer.
  external: ["ws"],
  logLevel: "warning",
});

const bytes = readFileSync(BUNDLE);
console.log(`dist/sessionfold.min.js: ${bytes.length} bytes minified, ${gzipSync(bytes, { level: 9 }).length} bytes gzipped`);
