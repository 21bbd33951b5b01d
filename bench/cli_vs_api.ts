/**
 * The CLI's start-up cost, side by side in one run: `krunbox ls` as a
 * process (goal: under 150 ms wall), `krunbox exec NAME true` as a process
 * against the same exec through the API in this process (the round trip the
 * CLI adds to), all on one detached busybox sandbox in a temp state home.
 * Alternates the three, after a warm-up, and quotes medians and ratios.
 *
 * Usage: deno run -A bench/cli_vs_api.ts [runs=10]
 *
 * @module
 */

import { join } from "node:path";
import { busyboxRoot } from "../scripts/roots.ts";
import { homeLayout } from "../src/store/home.ts";
import { median } from "./stats.ts";

const runs = Math.max(5, Number(Deno.args[0] ?? 10));
const real = homeLayout();
const home = await Deno.makeTempDir({ prefix: "krunbox-bench-cli-" });
await Deno.symlink(real.assets, join(home, "assets"));
await Deno.symlink(real.cache, join(home, "cache"));
Deno.env.set("KRUNBOX_HOME", home);
Deno.env.set("KRUNBOX_BACKEND", Deno.env.get("KRUNBOX_BACKEND") ?? "qemu");
const { Sandbox } = await import("../mod.ts");
const cli = new URL("../cli.ts", import.meta.url).pathname;

async function timed(args: string[]): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", cli, ...args], stdout: "null" }).output();
  if (!out.success) throw new Error(`krunbox ${args.join(" ")} exited ${out.code}`);
  return performance.now() - t0;
}

const sb = await Sandbox.builder("bench-cli").image(await busyboxRoot()).memory(256).createDetached();
try {
  const ls: number[] = [];
  const cliExec: number[] = [];
  const api: number[] = [];
  // Warm-up: the module cache, the guest's page cache.
  await timed(["ls"]);
  await timed(["exec", "bench-cli", "true"]);
  await sb.exec("true");
  for (let i = 0; i < runs; i++) {
    ls.push(await timed(["ls"]));
    cliExec.push(await timed(["exec", "bench-cli", "true"]));
    const t0 = performance.now();
    await sb.exec("true");
    api.push(performance.now() - t0);
  }
  const [l, c, a] = [median(ls), median(cliExec), median(api)];
  console.log(`runs: ${runs} each, alternating`);
  console.log(`krunbox ls (process):             ${l.toFixed(0)} ms median (goal < 150 ms)`);
  console.log(`krunbox exec NAME true (process): ${c.toFixed(0)} ms median`);
  console.log(`sb.exec("true") (API, in process): ${a.toFixed(1)} ms median`);
  console.log(
    `CLI exec / API exec: ${(c / a).toFixed(1)}x; CLI exec - API exec = ${(c - a).toFixed(0)} ms of start-up`,
  );
} finally {
  await sb.stop().catch(() => {});
  await sb.removePersisted().catch(() => {});
  await sb[Symbol.asyncDispose]();
  await Deno.remove(home, { recursive: true }).catch(() => {});
}
