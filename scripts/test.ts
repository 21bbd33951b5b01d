/**
 * The whole test suite, as the README's test command runs it: static checks
 * (fmt, lint, types, publish dry-run, `deno doc --lint` of the public API),
 * the agent's Rust tests, and the Deno tests (unit, agent in host mode, e2e
 * with real VMs). Ends with one plain line `N passed, N failed, N skipped`
 * for CI.
 *
 * Usage: deno task test [deno test args…]   (extra args go to `deno test`,
 * e.g. `deno task test tests/unit` or `--filter exec`).
 *
 * @module
 */

import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const totals = { passed: 0, failed: 0, skipped: 0 };
const failures: string[] = [];

async function run(label: string, cmd: string, args: string[], cwd = root): Promise<string> {
  console.log(`\n=== ${label}: ${cmd} ${args.join(" ")}`);
  const child = new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).spawn();
  const dec = new TextDecoder();
  let text = "";
  const pump = async (s: ReadableStream<Uint8Array>, out: typeof Deno.stdout) => {
    for await (const chunk of s) {
      text += dec.decode(chunk, { stream: true });
      await out.write(chunk);
    }
  };
  const [status] = await Promise.all([child.status, pump(child.stdout, Deno.stdout), pump(child.stderr, Deno.stderr)]);
  if (!status.success) failures.push(`${label} (exit ${status.code})`);
  return text;
}

/** A step that is one test: it passes when the command succeeds. */
async function single(label: string, cmd: string, args: string[]) {
  const before = failures.length;
  await run(label, cmd, args);
  if (failures.length === before) totals.passed++;
  else totals.failed++;
}

const denoArgs = Deno.args.length > 0 ? Deno.args : ["tests/"];
const onlyDeno = Deno.args.length > 0;

if (!onlyDeno) {
  await single("format", Deno.execPath(), ["fmt", "--check"]);
  await single("lint", Deno.execPath(), ["lint"]);
  await single("types", Deno.execPath(), ["check", "mod.ts", "cli.ts", "scripts/", "tests/", "bench/", "src/", "ffi/"]);
  await single("publish dry-run", Deno.execPath(), ["publish", "--dry-run", "--allow-dirty"]);
  await single("docs of the public API", Deno.execPath(), ["doc", "--lint", "mod.ts", "cli.ts"]);

  const cargo = await run("agent (cargo test)", "cargo", ["test", "--locked", "-q"], `${root}agent`);
  for (const m of cargo.matchAll(/test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored/g)) {
    totals.passed += Number(m[1]);
    totals.failed += Number(m[2]);
    totals.skipped += Number(m[3]);
  }
}

// deno colours its summary; count from the plain text.
const ANSI_COLOURS = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, "g");
const deno = (await run("deno test", Deno.execPath(), ["test", "-A", "--no-check=remote", ...denoArgs]))
  .replace(ANSI_COLOURS, "");
const summary = [
  ...deno.matchAll(
    /(?:ok|FAILED) \| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed(?: \(\d+ steps?\))?(?: \| (\d+) ignored)?/g,
  ),
]
  .at(-1);
if (summary) {
  totals.passed += Number(summary[1]);
  totals.failed += Number(summary[2]);
  totals.skipped += Number(summary[3] ?? 0);
} else {
  totals.failed++;
}

if (failures.length > 0) console.log(`\nfailed steps: ${failures.join(", ")}`);
console.log(`\n${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
Deno.exit(failures.length > 0 || totals.failed > 0 ? 1 : 0);
