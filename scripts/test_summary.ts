/**
 * Counting a test runner's results from its own summary, and nothing else.
 * scripts/test.ts runs deno, cargo and go; each function here turns one
 * runner's captured output and exit code into counts. A runner that ends
 * without the summary it always prints when it finishes (a compile error, a
 * crashing test binary, a killed deno) counts as one failure, and so does a
 * runner that exits non-zero while its summary says nothing failed: a run
 * cannot look green by ending early.
 *
 * @module
 */

/** What one runner contributed to the total. */
export interface Counts {
  passed: number;
  failed: number;
  skipped: number;
  /** Why the runner counted as failed beyond its own summary, when it did. */
  notes: string[];
}

/** A runner's captured output. */
export interface RunOutput {
  readonly stdout: string;
  readonly stderr: string;
  readonly code: number;
}

const ESC = String.fromCharCode(27);
const ANSI_COLOURS = new RegExp(`${ESC}\\[[0-9;]*m`, "g");

/** Removes terminal colours (deno colours its summary even into a pipe). */
export function plain(text: string): string {
  return text.replace(ANSI_COLOURS, "");
}

/** Adds `b` into `a`. */
export function add(a: Counts, b: Counts): Counts {
  a.passed += b.passed;
  a.failed += b.failed;
  a.skipped += b.skipped;
  a.notes.push(...b.notes);
  return a;
}

/** Zero counts. */
export function none(): Counts {
  return { passed: 0, failed: 0, skipped: 0, notes: [] };
}

/** A non-zero exit that the summary does not explain is one more failure. */
function exitCheck(c: Counts, code: number, runner: string): Counts {
  if (code !== 0 && c.failed === 0) {
    c.failed++;
    c.notes.push(`${runner} exited with ${code} although its summary shows no failure`);
  }
  return c;
}

const STEPS = String.raw`(?: \(\d+ steps?\))?`;
/**
 * deno test's final summary, a whole line at the start of the line:
 * `ok | 3 passed (2 steps) | 0 failed | 1 ignored | 2 filtered out (1s)`.
 * Lines echoed by a test (the nested suite prints `  [L1] ok | …`) start
 * with something else and never match.
 */
const DENO_SUMMARY = new RegExp(
  String.raw`^(?:ok|FAILED) \| (\d+) passed${STEPS} \| (\d+) failed${STEPS}` +
    String.raw`(?: \| (\d+) ignored${STEPS})?(?: \| \d+ filtered out)?(?: \([^()]*\))?$`,
);

/**
 * Counts of a `deno test` run, from its final summary: the last non-empty
 * line of its stdout. Anything else there (the run died before its summary)
 * is one failure.
 *
 * @example
 * ```ts
 * import { denoCounts } from "./test_summary.ts";
 * const c = denoCounts({ stdout: "ok | 3 passed | 0 failed (5ms)\n", stderr: "", code: 0 });
 * console.log(c.passed); // 3
 * ```
 */
export function denoCounts(run: RunOutput): Counts {
  const lines = plain(run.stdout).split("\n").map((l) => l.trimEnd()).filter((l) => l !== "");
  const m = DENO_SUMMARY.exec(lines.at(-1) ?? "");
  if (!m) {
    return {
      passed: 0,
      failed: 1,
      skipped: 0,
      notes: [`deno test ended (exit ${run.code}) without its summary line`],
    };
  }
  const c = { passed: Number(m[1]), failed: Number(m[2]), skipped: Number(m[3] ?? 0), notes: failures(lines) };
  return exitCheck(c, run.code, "deno test");
}

/** How much of each failed test's error the summary repeats. */
const ERROR_LINES = 4;
const ERROR_LINE_CHARS = 240;
/**
 * A failure's heading in deno's ERRORS and FAILURES sections: a test's
 * `name => ./file.ts:12:6`, or a module's `./file.ts (uncaught error)`.
 */
const TEST_HEADING = / => \S+:\d+:\d+$|^\S+ \(uncaught error\)$/;

/**
 * The names deno test lists under its ` FAILURES ` heading (`name => file:line`),
 * each followed by the first lines of its error from the ` ERRORS ` section,
 * so the last lines of a run (all a CI log may keep) say which tests failed
 * and why.
 */
function failures(lines: string[]): string[] {
  const at = lines.findLastIndex((l) => l.trim() === "FAILURES");
  if (at < 0) return [];
  const errorsAt = lines.findLastIndex((l, i) => i < at && l.trim() === "ERRORS");
  const errors = errorsAt < 0 ? [] : lines.slice(errorsAt + 1, at);
  const notes: string[] = [];
  for (const l of lines.slice(at + 1)) {
    if (DENO_SUMMARY.test(l)) break;
    if (!TEST_HEADING.test(l)) continue;
    notes.push(`failed: ${l.trim()}`);
    notes.push(...errorOf(errors, l.trim()).map((e) => `  ${e}`));
  }
  return notes;
}

/** The first lines of the error deno printed under `heading` (`name => file:line`) in its ERRORS section. */
function errorOf(errors: string[], heading: string): string[] {
  const start = errors.findIndex((l) => l.trim() === heading);
  if (start < 0) return [];
  const out: string[] = [];
  for (const l of errors.slice(start + 1)) {
    // The next test's heading, or the stack: the message is over.
    if (TEST_HEADING.test(l) || /^\s+at /.test(l)) break;
    // deno echoes the throwing source line with a caret under it: the message is what says why.
    if (/^\s*\^+\s*$/.test(l)) {
      if (out.length > 1) out.pop();
      continue;
    }
    out.push(l.length > ERROR_LINE_CHARS ? `${l.slice(0, ERROR_LINE_CHARS)}…` : l);
    if (out.length === ERROR_LINES) break;
  }
  return out;
}

const CARGO_RESULT = /^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored; (\d+) measured;/;
/** The line cargo prints (stderr) before it runs each test binary or the doc tests. */
const CARGO_BINARY = /^\s+(?:Running|Doc-tests) (.+)$/;

/**
 * Counts of `cargo test --no-fail-fast` (without `-q`: the `Running` lines
 * are how a binary that printed no `test result:` is noticed). Each binary
 * contributes its own `test result:` line; a binary that started and printed
 * none (it crashed) is one failure; a build that failed before any binary ran
 * is one failure.
 *
 * @example
 * ```ts
 * import { cargoCounts } from "./test_summary.ts";
 * const c = cargoCounts({
 *   stdout: "running 1 test\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n",
 *   stderr: "     Running unittests src/lib.rs (target/debug/deps/x-1)\n",
 *   code: 0,
 * });
 * console.log(c.passed); // 1
 * ```
 */
export function cargoCounts(run: RunOutput): Counts {
  const c = none();
  const results = plain(run.stdout).split("\n").map((l) => CARGO_RESULT.exec(l.trim())).filter((m) => m !== null);
  for (const m of results) {
    c.passed += Number(m[1]);
    c.failed += Number(m[2]);
    c.skipped += Number(m[3]);
  }
  const binaries = plain(run.stderr).split("\n").map((l) => CARGO_BINARY.exec(l)?.[1]).filter((b) => b !== undefined);
  if (binaries.length > results.length) {
    const missing = binaries.length - results.length;
    c.failed += missing;
    c.notes.push(`cargo: ${missing} of ${binaries.length} test binaries ended without a result (crashed)`);
  }
  if (binaries.length === 0 && run.code !== 0) {
    c.failed++;
    c.notes.push(`cargo test failed (exit ${run.code}) before running any test binary (a build error?)`);
    return c;
  }
  return exitCheck(c, run.code, "cargo test");
}

interface GoEvent {
  Action?: string;
  Package?: string;
  Test?: string;
}

/**
 * Counts of `go test -json ./...`: one per top-level test from its `pass`,
 * `fail` or `skip` event (subtests are part of their parent). A package that
 * fails with no failing test of its own (a build error, a panic outside a
 * test, a test binary that crashed) is one failure.
 *
 * @example
 * ```ts
 * import { goCounts } from "./test_summary.ts";
 * const ev = (a: string, t?: string) => JSON.stringify({ Action: a, Package: "p", Test: t });
 * const c = goCounts({ stdout: [ev("pass", "TestA"), ev("pass")].join("\n"), stderr: "", code: 0 });
 * console.log(c.passed); // 1
 * ```
 */
export function goCounts(run: RunOutput): Counts {
  const c = none();
  const failedTests = new Map<string, number>();
  const failedPackages = new Set<string>();
  const packages = new Set<string>();
  let events = 0;
  for (const line of run.stdout.split("\n")) {
    if (!line.startsWith("{")) continue;
    let ev: GoEvent;
    try {
      ev = JSON.parse(line);
    } catch {
      continue;
    }
    events++;
    const pkg = ev.Package ?? "";
    if (pkg) packages.add(pkg);
    if (ev.Test === undefined) {
      // A build failure ends as its package's `fail` (with FailedBuild); `build-fail` events only repeat it.
      if (ev.Action === "fail" && pkg) failedPackages.add(pkg);
      continue;
    }
    if (ev.Test.includes("/")) continue;
    if (ev.Action === "pass") c.passed++;
    else if (ev.Action === "skip") c.skipped++;
    else if (ev.Action === "fail") {
      c.failed++;
      failedTests.set(pkg, (failedTests.get(pkg) ?? 0) + 1);
    }
  }
  for (const pkg of failedPackages) {
    if (!failedTests.has(pkg)) {
      c.failed++;
      c.notes.push(`go: package ${pkg} failed outside its tests (build error or crash)`);
    }
  }
  if (events === 0 && run.code !== 0) {
    c.failed++;
    c.notes.push(`go test failed (exit ${run.code}) without a single test event`);
    return c;
  }
  return exitCheck(c, run.code, "go test");
}
