/**
 * Runs INSIDE the nested test host (see bench/exec_vs_msb_nested.ts): one
 * running sandbox a side on the same busybox root, then `runs` rounds that
 * alternate, each timing as a process `krunbox exec NAME true` (the CLI:
 * Deno's start, module loading, the agent round trip) and `msb exec NAME --
 * true`, and in this process `sb.exec("true")` (the API round trip the CLI
 * adds to), and `krunbox --version` as a process (Deno's start and the CLI's
 * entry module only: the floor of any CLI command). One warm-up round is
 * discarded. Prints one JSON line (with the L1's load average).
 *
 * Usage: exec_warm.ts <msb binary> [runs=5]
 *
 * @module
 */

import { busyboxRoot } from "../../scripts/roots.ts";
import { Sandbox } from "../../mod.ts";
import { installFrontDoor } from "../../src/host/provision/front_door.ts";
import { krunboxHome } from "../../src/store/home.ts";

const [msb, runsArg] = Deno.args;
const runs = Number(runsArg ?? 5);
const root = await busyboxRoot();
const cli = new URL("../../cli.ts", import.meta.url).pathname;
// The `krunbox` a user runs: the native front door setup installs (it hands all but exec to the Deno CLI).
const door = await installFrontDoor(krunboxHome());

async function timed(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  return performance.now() - t0;
}

const NAME = "exec-k";
const MSB_NAME = "exec-m";
await using sb = await Sandbox.builder(NAME).image(root).backend("libkrun").memory(256).replace().create();
await timed(msb, ["create", "--quiet", "--name", MSB_NAME, "--memory", "256M", "--replace", root]);
try {
  const round = async () => ({
    cli: await timed(door, ["exec", NAME, "true"]),
    deno: await timed(Deno.execPath(), ["run", "-A", "--no-check", cli, "exec", NAME, "true"]),
    version: await timed(Deno.execPath(), ["run", "-A", "--no-check", cli, "--version"]),
    msb: await timed(msb, ["exec", MSB_NAME, "--", "true"]),
    api: await (async () => {
      const t0 = performance.now();
      await sb.exec("true");
      return performance.now() - t0;
    })(),
  });
  await round();
  const rounds = [];
  for (let i = 0; i < runs; i++) rounds.push(await round());
  const load = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
  console.log(JSON.stringify({
    load,
    cli: rounds.map((r) => r.cli),
    deno: rounds.map((r) => r.deno),
    version: rounds.map((r) => r.version),
    msb: rounds.map((r) => r.msb),
    api: rounds.map((r) => r.api),
  }));
} finally {
  await timed(msb, ["rm", "--force", "--quiet", MSB_NAME]).catch(() => {});
  await sb.kill().catch(() => {});
  await Sandbox.remove(NAME).catch(() => {});
}
