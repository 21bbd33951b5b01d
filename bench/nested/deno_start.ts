/**
 * The inner half of a Deno start-up probe in the nested test host: times
 * `deno --version`, `deno run cli.ts --version` and the same with V8 flags,
 * each as a process, and prints one JSON line of the timings (ms).
 *
 * @module
 */

const cli = new URL("../../cli.ts", import.meta.url).pathname;
const runs = Number(Deno.args[0] ?? 3);

async function timed(args: string[], env: Record<string, string> = {}): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    stdout: "null",
    stderr: "piped",
    env,
  }).output();
  if (!out.success) throw new Error(`deno ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  return performance.now() - t0;
}

const runner = new URL("../../src/vmm/runner.ts", import.meta.url).pathname;
const variants: Record<string, string[]> = {
  binary: ["--version"],
  cli: ["run", "-A", "--no-check", cli, "--version"],
  cliNoConfig: ["run", "-A", "--no-check", "--no-config", "--no-lock", cli, "--version"],
  runner: ["run", "-A", "--no-prompt", runner, "--warm"],
  runnerNoConfig: ["run", "-A", "--no-prompt", "--no-config", "--no-lock", runner, "--warm"],
};
const noUpdate = { DENO_NO_UPDATE_CHECK: "1" };
const out: Record<string, number[]> = {};
for (const args of Object.values(variants)) await timed(args); // warm the caches
for (let i = 0; i < runs; i++) {
  for (const [name, args] of Object.entries(variants)) (out[name] ??= []).push(await timed(args));
  (out.runnerNoUpdateCheck ??= []).push(await timed(variants.runner, noUpdate));
}
console.log(JSON.stringify(out));
