/**
 * Runs INSIDE the nested test host (see bench/libkrun_vs_msb_nested.ts):
 * create → first exec result for krunbox's libkrun backend and for
 * microsandbox's `msb`, on the same busybox root directory with the same
 * vCPUs and memory on both sides. One warm-up run of each is discarded
 * (page cache, first-use work), then `runs` runs alternate; prints one JSON
 * line with the timings, each krunbox run's boot phases
 * (`Sandbox.bootPhases`: name → durations, one per run), the L1's load
 * average and the configuration.
 *
 * Usage: create_exec.ts <msb binary> [runs=5] [cpus=1] [memoryMiB=256]
 */

import { busyboxRoot } from "../../scripts/roots.ts";
import { Sandbox } from "../../mod.ts";

const [msb, runsArg, cpusArg, memArg] = Deno.args;
const runs = Number(runsArg ?? 5);
const cpus = Number(cpusArg ?? 1);
const memory = Number(memArg ?? 256);
const root = await busyboxRoot();

/** Each boot phase's durations, one per measured krunbox run, in the order the phases come. */
const phases: Record<string, number[]> = {};

async function krunbox(name: string, measured = true): Promise<number> {
  const t0 = performance.now();
  const sb = await Sandbox.builder(name).image(root).backend("libkrun").cpus(cpus).memory(memory).replace().create();
  const created = performance.now() - t0;
  await sb.exec("true");
  const ms = performance.now() - t0;
  if (measured) {
    for (const p of sb.bootPhases) (phases[p.name] ??= []).push(p.durationMs);
    (phases["first exec"] ??= []).push(ms - created);
  }
  await sb.kill();
  await Sandbox.remove(sb.name);
  return ms;
}

async function run(args: string[]): Promise<void> {
  const out = await new Deno.Command(msb, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`msb ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

async function microsandbox(name: string): Promise<number> {
  const t0 = performance.now();
  await run(["create", "--quiet", "--name", name, "--cpus", String(cpus), "--memory", `${memory}M`, "--replace", root]);
  await run(["exec", name, "--", "true"]);
  const ms = performance.now() - t0;
  await run(["rm", "--force", "--quiet", name]);
  return ms;
}

await microsandbox("cmp-m-warm");
await krunbox("cmp-k-warm", false);
const k: number[] = [];
const m: number[] = [];
for (let i = 0; i < runs; i++) {
  // Alternate which side goes first, so neither always runs on the other's warm cache.
  if (i % 2 === 0) {
    m.push(await microsandbox(`cmp-m${i}`));
    k.push(await krunbox(`cmp-k${i}`));
  } else {
    k.push(await krunbox(`cmp-k${i}`));
    m.push(await microsandbox(`cmp-m${i}`));
  }
}
const load = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
console.log(JSON.stringify({ cpus, memory, load, krunbox: k, msb: m, phases }));
