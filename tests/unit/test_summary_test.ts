/**
 * The test runner's counting (scripts/test_summary.ts), fed real outputs of
 * deno test, cargo test and go test -json recorded by
 * tests/unit/fixtures/runner/capture.ts: a run that dies must never read as
 * green, and the counts must be exactly what each runner reported.
 */

import { assert, assertEquals } from "../util/assert.ts";
import { cargoCounts, type Counts, denoCounts, goCounts, type RunOutput } from "../../scripts/test_summary.ts";

const fixture = (name: string): RunOutput =>
  JSON.parse(Deno.readTextFileSync(new URL(`./fixtures/runner/${name}.json`, import.meta.url)));
const counts = (c: Counts) => [c.passed, c.failed, c.skipped];

Deno.test("deno: counts come from the final summary (passed, failed, ignored; steps not counted as tests)", () => {
  const c = denoCounts(fixture("deno_mixed"));
  assertEquals(counts(c), [2, 1, 1]);
  // The failed test is named from the FAILURES list, so a log's last lines say which.
  // The error's first line follows its name; not the source line deno echoes, its caret or the stack.
  assertEquals(c.notes, ["failed: two => ./a_test.ts:2:6", "  error: Error: boom"]);
});

Deno.test("deno: a run killed after a test echoed the nested suite's summary is a failure, not 9 passed", () => {
  const run = fixture("deno_killed_after_l1_echo");
  assert(run.stdout.includes("[L1] ok | 9 passed | 0 failed"), "the fixture holds the echoed line");
  assertEquals(run.code, 137);
  const c = denoCounts(run);
  assertEquals(counts(c), [0, 1, 0]);
  assert(c.notes[0].includes("without its summary"), c.notes[0]);
});

Deno.test("deno: an echoed [L1] FAILED line inside a finished run is not the host's total", () => {
  const run = fixture("deno_ok_with_l1_echo");
  assert(run.stdout.includes("[L1] FAILED | 0 passed | 7 failed"));
  assertEquals(counts(denoCounts(run)), [2, 0, 0]);
});

Deno.test("deno: the summary line must be the last thing on stdout, whole and at the start of its line", () => {
  const run = (stdout: string, code = 0) => counts(denoCounts({ stdout, stderr: "", code }));
  assertEquals(run("ok | 3 passed (2 steps) | 0 failed | 1 ignored | 2 filtered out (1m 2s)\n\n"), [3, 0, 1]);
  assertEquals(run("\x1b[0m\x1b[32mok\x1b[0m | 4 passed | 0 failed \x1b[0m\x1b[38;5;245m(9ms)\x1b[0m\n"), [4, 0, 0]);
  assertEquals(run("  [L1] ok | 9 passed | 0 failed (1s)\n"), [0, 1, 0]);
  assertEquals(run("ok | 9 passed | 0 failed (1s)\nsome later output\n"), [0, 1, 0]);
  // a summary that says green from a process that exited non-zero is one failure
  assertEquals(run("ok | 9 passed | 0 failed (1s)\n", 1), [9, 1, 0]);
  assertEquals(run("", 0), [0, 1, 0]);
});

Deno.test("cargo: a compile error (no binary ran) counts as one failure", () => {
  const run = fixture("cargo_compile_error");
  assert(run.stderr.includes("could not compile"));
  const c = cargoCounts(run);
  assertEquals(counts(c), [0, 1, 0]);
  assert(c.notes[0].includes("before running any test binary"), c.notes[0]);
});

Deno.test("cargo: every binary counts (--no-fail-fast): a panicking test fails, a crashed binary is one failure", () => {
  const c = cargoCounts(fixture("cargo_panic_and_crash"));
  // lib: 1 passed, 1 failed (panic), 1 ignored; tests/crash.rs aborted without a result; tests/fine.rs: 1 passed;
  // doc tests: 0.
  assertEquals(counts(c), [2, 2, 1]);
  assert(c.notes.some((n) => n.includes("1 of 4 test binaries")), c.notes.join("; "));
});

Deno.test("cargo: a green run sums every binary's result line", () => {
  const c = cargoCounts(fixture("cargo_ok"));
  assertEquals(counts(c), [3, 0, 0]);
  assertEquals(c.notes, []);
});

Deno.test("go: tests from -json events; a package that does not build or whose binary crashes is a failure", () => {
  const c = goCounts(fixture("go_mixed"));
  // a: TestPass, TestSub pass (its subtests are not extra tests), TestFail fails, TestSkip skips;
  // b: build failure; c: TestOk passes, then os.Exit(3) ends the binary.
  assertEquals(counts(c), [3, 3, 1]);
  assertEquals(c.notes.length, 2, c.notes.join("; "));
});

Deno.test("go: a green run", () => {
  assertEquals(counts(goCounts(fixture("go_ok"))), [2, 0, 0]);
  assertEquals(counts(goCounts({ stdout: "", stderr: "go: cannot find main module", code: 1 })), [0, 1, 0]);
});

Deno.test("deno: a module's uncaught error is named with its message (it has no `=>` heading)", () => {
  const stdout = [
    "running 1 test from ./b_test.ts",
    "ok one ... ok (1ms)",
    "",
    " ERRORS ",
    "",
    "./b_test.ts (uncaught error)",
    "error: (in promise) Error: dangling",
    "    at file:///tmp/b_test.ts:3:9",
    "This error was not caught from a test and caused the test runner to fail on the referenced module.",
    "",
    " FAILURES ",
    "",
    "./b_test.ts (uncaught error)",
    "",
    "FAILED | 1 passed | 1 failed (5ms)",
  ].join("\n");
  const c = denoCounts({ stdout, stderr: "", code: 1 });
  assertEquals(counts(c), [1, 1, 0]);
  assertEquals(c.notes, ["failed: ./b_test.ts (uncaught error)", "  error: (in promise) Error: dangling"]);
});
