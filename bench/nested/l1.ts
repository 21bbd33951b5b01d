/**
 * Runs one workload script of `bench/nested/` inside a fresh nested test
 * host (an L1 VM with emulated SVM, where libkrun and msb can run) with the
 * npm `microsandbox` package shared at `/opt/msb`, and returns the JSON
 * object the script prints as its last line. The outer halves of the
 * nested benchmarks share it.
 *
 * @module
 */

import { bootNestedHost, L1 } from "../../tests/nested/host.ts";
import { ensureMsb } from "../msb.ts";

/** The msb binary as the L1 sees it. */
export const L1_MSB = "/opt/msb/bin/msb";

/**
 * Boots an L1, runs `deno run -A <script> <args…>` from the project there
 * (with the L1's own state home), and parses the last stdout line.
 *
 * @example
 * ```ts ignore
 * // Boots an L1 VM (minutes under TCG): bench/exec_vs_msb_nested.ts uses it.
 * import { L1_MSB, runInL1 } from "./l1.ts";
 * const out = await runInL1<{ krunbox: number[] }>("bench/nested/exec_warm.ts", [L1_MSB, "5"]);
 * console.log(out.krunbox);
 * ```
 */
export async function runInL1<T>(script: string, args: readonly string[], timeoutMs = 20 * 60_000): Promise<T> {
  const msbPkg = await ensureMsb();
  await using l1 = await bootNestedHost("bench-l1", [{ guestPath: "/opt/msb", hostPath: msbPkg }]);
  const out = await l1.execWith(`${L1.denoDir}/deno`, {
    args: ["run", "-A", "--no-check", "--no-lock", script, ...args],
    cwd: L1.project,
    env: { KRUNBOX_HOME: L1.home, DENO_DIR: `${L1.home}/deno`, HOME: "/root", NO_COLOR: "1" },
    timeout: timeoutMs,
  });
  if (!out.success) throw new Error(`the nested workload ${script} failed:\n${out.stdout}\n${out.stderr}`);
  return JSON.parse(out.stdout.trim().split("\n").at(-1)!) as T;
}
