/**
 * Where a cold create() goes (issue 18): boots a busybox directory root
 * (256 MiB, qemu) several times and prints the median of each boot phase
 * (`Sandbox.bootPhases`), the host's part up to the VMM's exec, and the
 * total. Runs one after another; figures under load are noisy.
 *
 *   deno run -A bench/boot_phases.ts [runs=7] [--json]
 *
 * `--json` prints every run's phases (one JSON object) instead of medians,
 * for a driver that alternates two trees.
 */

import { busyboxRoot } from "../scripts/roots.ts";
import { type BootPhase, Sandbox } from "../mod.ts";
import { median } from "./stats.ts";

const json = Deno.args.includes("--json");
const runs = Number(Deno.args.find((a) => !a.startsWith("--")) ?? 7);
const root = await busyboxRoot();
Deno.env.set("KRUNBOX_BACKEND", "qemu");

/** The phases before the VMM's exec: everything up to `vmm.start`. */
function hostBeforeVmm(phases: readonly BootPhase[]): number {
  const vmm = phases.find((p) => p.name === "vmm.start");
  return vmm ? vmm.startMs : NaN;
}

const byName = new Map<string, number[]>();
const hostMs: number[] = [];
const totals: number[] = [];
for (let i = 0; i < runs; i++) {
  const sb = await Sandbox.builder(`bench-phases-${i}`).image(root).memory(256).replace().create();
  const phases = sb.bootPhases;
  await sb.kill();
  await Sandbox.remove(sb.name);
  for (const p of phases) byName.set(p.name, [...(byName.get(p.name) ?? []), p.durationMs]);
  hostMs.push(hostBeforeVmm(phases));
  totals.push(phases.reduce((s, p) => s + p.durationMs, 0));
}

if (json) {
  console.log(JSON.stringify({ phases: Object.fromEntries(byName), hostMs, totals }));
  Deno.exit(0);
}
const load = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
console.log(`boot phases, median of ${runs} runs (busybox dir root, 256 MiB, qemu; load average ${load}):`);
for (const [name, xs] of byName) console.log(`  ${name.padEnd(16)} ${median(xs).toFixed(1).padStart(8)} ms`);
console.log(`  ${"host → VMM exec".padEnd(16)} ${median(hostMs).toFixed(1).padStart(8)} ms`);
console.log(`  ${"total".padEnd(16)} ${median(totals).toFixed(1).padStart(8)} ms`);
