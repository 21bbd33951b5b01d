/**
 * The main job (`./dev demo`): boots a sandbox from a busybox root built
 * from Debian's busybox-static, runs code in it, and stops it.
 *
 * @module
 */

import { Sandbox } from "../mod.ts";
import { busyboxRoot } from "./roots.ts";

const root = await busyboxRoot();
const t0 = performance.now();
await using sb = await Sandbox.builder("demo").image(root).cpus(1).memory(256).replace().create();
const booted = performance.now();
console.log(`sandbox "${sb.name}" is running (create took ${((booted - t0) / 1000).toFixed(2)} s)`);

const out = await sb.shell('echo "6*7 = $((6*7))"; uname -sr; echo "hostname: $(hostname)"');
console.log(out.stdout.trimEnd());
console.log(`exit code ${out.code}, exec round-trip ${((performance.now() - booted) / 1000).toFixed(2)} s`);

await sb.fs().write("/tmp/hello.txt", "written from the host\n");
console.log(`guest file: ${(await sb.fs().readText("/tmp/hello.txt")).trimEnd()}`);

const status = await sb.stopAndWait();
console.log(`stopped: ${status.status} (${status.reason})`);
