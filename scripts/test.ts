/**
 * The whole test suite, as the README's test command runs it: static checks
 * (fmt, lint, types, publish dry-run, `deno doc --lint` of the public API),
 * the agent's Rust tests, the network engine's Go tests (when netd/ has a
 * go.mod), the Deno tests (unit, agent in host mode, e2e with real VMs), and
 * the JSDoc `@example` blocks (`deno test --doc`, in a temp state home).
 * Ends with one plain line `N passed, N failed, N skipped` for CI: the exact
 * sum of what each runner's own summary says (scripts/test_summary.ts), where
 * a runner that ends without its summary counts as failed.
 *
 * Usage: deno task test [--require] [deno test args…]   (extra args go to
 * `deno test`, e.g. `deno task test tests/unit` or `--filter exec`).
 *
 * `--require` (and `CI=true`, which CI sets) makes every required part —
 * libkrun, libkrunfw, ISA-L, libzstd, erofs read-back, the nested suite,
 * netd — a must: a test that would skip for want of one fails instead,
 * naming it and how to get it (tests/util/require.ts).
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { which } from "../src/util/command.ts";
import { requireAll } from "../src/host/ci.ts";
import { homeLayout } from "../src/store/home.ts";
import { add, cargoCounts, type Counts, denoCounts, goCounts, none, plain, type RunOutput } from "./test_summary.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
// Our one flag; everything else goes to `deno test` in its order (so no parseArgs here).
const passThrough = Deno.args.filter((a) => a !== "--require");
// Children decide skip-versus-fail from CI (tests/util/require.ts).
if (passThrough.length < Deno.args.length) Deno.env.set("CI", "true");

const totals = none();
const report: string[] = [];
const skips = new Set<string>();
const enc = new TextEncoder();

/**
 * Runs one command with its output shown as it comes (`show` may rewrite
 * stdout lines for the terminal) and captured for counting; `env` is added
 * to this process's environment.
 */
async function run(
  label: string,
  cmd: string,
  args: string[],
  cwd = root,
  show: (line: string) => string | undefined = (l) => l,
  env: Record<string, string> = {},
): Promise<RunOutput> {
  console.log(`\n=== ${label}: ${cmd} ${args.join(" ")}`);
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, { args, cwd, env, stdout: "piped", stderr: "piped" }).spawn();
  } catch (e) {
    const msg = `${label}: cannot start ${cmd}: ${(e as Error).message}`;
    console.log(msg);
    return { stdout: "", stderr: msg, code: 127 };
  }
  const pump = async (s: ReadableStream<Uint8Array>, out: typeof Deno.stdout, rewrite: boolean) => {
    let text = "";
    let pending = "";
    for await (const chunk of s.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      if (!rewrite) {
        await out.write(enc.encode(chunk));
        continue;
      }
      const lines = (pending + chunk).split("\n");
      pending = lines.pop()!;
      for (const line of lines) {
        const shown = show(line);
        if (shown !== undefined) await out.write(enc.encode(shown + "\n"));
      }
    }
    if (pending) {
      const shown = show(pending);
      if (shown !== undefined) await out.write(enc.encode(shown + "\n"));
    }
    return text;
  };
  const [status, stdout, stderr] = await Promise.all([
    child.status,
    pump(child.stdout, Deno.stdout, true),
    pump(child.stderr, Deno.stderr, false),
  ]);
  return { stdout, stderr, code: status.code };
}

function record(label: string, c: Counts) {
  add(totals, c);
  report.push(`${label}: ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped`);
  for (const n of c.notes) report.push(`  ${n}`);
}

/** A step that is one test: it passes when the command succeeds. */
async function single(label: string, cmd: string, args: string[]) {
  const { code } = await run(label, cmd, args);
  record(label, { passed: code === 0 ? 1 : 0, failed: code === 0 ? 0 : 1, skipped: 0, notes: [] });
}

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
const onlyDeno = passThrough.length > 0;

if (!onlyDeno) {
  await single("format", Deno.execPath(), ["fmt", "--check"]);
  await single("lint", Deno.execPath(), ["lint"]);
  await single("types", Deno.execPath(), ["check", "mod.ts", "cli.ts", "scripts/", "tests/", "bench/", "src/", "ffi/"]);
  await single("publish dry-run", Deno.execPath(), ["publish", "--dry-run", "--allow-dirty"]);
  await single("docs of the public API", Deno.execPath(), ["doc", "--lint", "mod.ts", "cli.ts"]);
  await single("layers and cycles", Deno.execPath(), ["run", "--allow-read", "--allow-run", "scripts/layers.ts"]);

  // No -q: cargo's `Running …` lines are how a binary that crashed before its result line is noticed.
  record(
    "agent (cargo test)",
    cargoCounts(await run("agent (cargo test)", "cargo", ["test", "--locked", "--no-fail-fast"], `${root}agent`)),
  );

  const hasNetd = await exists(`${root}netd/go.mod`);
  const go = hasNetd ? await which("go", ["/usr/local/go/bin"]) : undefined;
  if (!hasNetd) {
    skips.add("netd (go test): netd/go.mod does not exist yet, nothing to test");
  } else if (!go) {
    const why = "netd (go test): the go toolchain is missing (apt-get install golang-go, or Go in /usr/local/go)";
    if (requireAll()) {
      record("netd (go test)", { passed: 0, failed: 1, skipped: 0, notes: [`${why}; required under CI`] });
    } else skips.add(why);
  } else {
    // -json for counting; the terminal gets the tests' own output lines.
    const showGo = (line: string) => {
      if (!line.startsWith("{")) return line;
      try {
        const out = (JSON.parse(line) as { Output?: string }).Output;
        return out === undefined ? undefined : out.replace(/\n$/, "");
      } catch {
        return line;
      }
    };
    record(
      "netd (go test)",
      goCounts(await run("netd (go test)", go, ["test", "-json", "./..."], `${root}netd`, showGo)),
    );
  }
}

const deno = await run("deno test", Deno.execPath(), [
  "test",
  "-A",
  "--no-check=remote",
  ...(onlyDeno ? passThrough : ["tests/"]),
]);
record("deno test", denoCounts(deno));

if (!onlyDeno) {
  // The JSDoc examples run as one more deno runner, in a state home of their
  // own (with the provisioned assets) and a temp dir inside it, so what they
  // make goes when the home does.
  const home = await Deno.makeTempDir({ prefix: "krunbox-doctest-" });
  try {
    await Deno.symlink(homeLayout().assets, `${home}/assets`);
    await Deno.mkdir(`${home}/tmp`);
    const args = ["test", "--doc", "-A", "mod.ts", "cli.ts", "src/", "ffi/"];
    const env = { KRUNBOX_HOME: home, TMPDIR: `${home}/tmp` };
    record(
      "doc examples (deno test --doc)",
      denoCounts(await run("doc examples", Deno.execPath(), args, root, undefined, env)),
    );
  } finally {
    await Deno.remove(home, { recursive: true });
  }
}
// Outside CI a skip stays a skip: list every reason printed, once.
for (const line of plain(deno.stdout).split("\n")) {
  if (/^\s*(SKIPPING|skipped)\b/.test(line)) skips.add(line.trim());
}

if (skips.size > 0) console.log(`\nskipped, with their reasons:\n${[...skips].map((s) => `  ${s}`).join("\n")}`);
console.log(`\nper runner:\n${report.map((r) => `  ${r}`).join("\n")}`);
console.log(`\n${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
Deno.exit(totals.failed > 0 ? 1 : 0);
