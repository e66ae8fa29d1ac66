// Runs the tests with node's test runner; Node 20 and 21 need
// --experimental-websocket for the global WebSocket the SDK uses.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";

const major = Number(process.versions.node.split(".")[0]);
const flags = major < 22 ? ["--experimental-websocket", "--no-warnings=ExperimentalWarning"] : [];
const given = process.argv.slice(2);
const files = given.length ? given : readdirSync(new URL("../test", import.meta.url)).filter((f) => f.endsWith(".test.mjs")).map((f) => "test/" + f);
const run = spawnSync(process.execPath, [...flags, "--test", "--test-concurrency=1", ...files], {
  stdio: "inherit",
  cwd: new URL("..", import.meta.url),
});
process.exit(run.status ?? 1);
