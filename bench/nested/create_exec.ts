/**
 * Runs INSIDE the nested test host (see bench/libkrun_vs_msb_nested.ts):
 * create → first exec result for krunbox's libkrun backend and for
 * microsandbox's `msb` (same busybox root directory, same memory), runs
 * alternating, printing one JSON line with the timings.
 *
 * Usage: create_exec.ts <msb binary> [runs]
 */

import { busyboxRoot } from "../../scripts/roots.ts";
import { Sandbox } from "../../mod.ts";

const [msb, runsArg] = Deno.args;
const runs = Number(runsArg ?? 2);
const root = await busyboxRoot();

async function krunbox(i: number): Promise<number> {
  const t0 = performance.now();
  const sb = await Sandbox.builder(`cmp-k${i}`).image(root).backend("libkrun").memory(256).replace().create();
  await sb.exec("true");
  const ms = performance.now() - t0;
  await sb.kill();
  await Sandbox.remove(sb.name);
  return ms;
}

async function run(args: string[]): Promise<void> {
  const out = await new Deno.Command(msb, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`msb ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

async function microsandbox(i: number): Promise<number> {
  const t0 = performance.now();
  await run(["create", "--quiet", "--name", `cmp-m${i}`, "--memory", "256M", "--replace", root]);
  await run(["exec", `cmp-m${i}`, "--", "true"]);
  const ms = performance.now() - t0;
  await run(["rm", "--force", "--quiet", `cmp-m${i}`]);
  return ms;
}

const k: number[] = [];
const m: number[] = [];
for (let i = 0; i < runs; i++) {
  m.push(await microsandbox(i));
  k.push(await krunbox(i));
}
console.log(JSON.stringify({ krunbox: k, msb: m }));
