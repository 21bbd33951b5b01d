/**
 * Exit codes as docker's: the guest program's own code; 128 + N when a
 * signal killed it; 126 when it could not be executed; 127 when it was not
 * found; 125 for krunbox's own errors (bad flags included). Errors print as
 * one line `krunbox: <message>`, with the fix where one exists.
 *
 * @example
 * ```ts
 * import { exitCodeOf } from "./exit.ts";
 * import { ExecSpawnError } from "../errors.ts";
 * console.log(exitCodeOf(new ExecSpawnError("nope", "not_found", "ENOENT"))); // 127
 * ```
 *
 * @module
 */

import { BackendUnavailableError, ExecSpawnError, KrunboxError } from "../errors.ts";
import { type CommandSpec, type Parsed, positional } from "./command.ts";

/** krunbox itself failed. */
export const EXIT_KRUNBOX = 125;
/** The command exists but cannot be run. */
export const EXIT_NOT_EXECUTABLE = 126;
/** The command was not found. */
export const EXIT_NOT_FOUND = 127;

/** The exit code for an error that ended a command. */
export function exitCodeOf(e: unknown): number {
  if (e instanceof ExecSpawnError) {
    if (e.kind === "not_found") return EXIT_NOT_FOUND;
    if (e.kind === "not_executable" || e.kind === "permission_denied") return EXIT_NOT_EXECUTABLE;
  }
  return EXIT_KRUNBOX;
}

/** The exit code of a guest process: its code, or 128 + the signal that killed it. */
export function exitCodeOfStatus(status: { code: number | null; signal: number | null }): number {
  return status.code ?? 128 + (status.signal ?? 0);
}

/** One line (plus the fix, where the error names one) for stderr. */
export function errorLine(e: unknown): string {
  if (e instanceof BackendUnavailableError) return `krunbox: ${e.message}`;
  if (e instanceof KrunboxError) return `krunbox: ${e.message.split("\n")[0]}`;
  return `krunbox: ${e instanceof Error ? e.message : String(e)}`;
}

/**
 * Runs `fn` for each positional of `p` (at least one, named `what` in the
 * usage error): a failing one prints its one line and the others still run;
 * the exit code is 125 if any failed, else 0.
 */
export async function eachPositional(
  spec: CommandSpec,
  p: Parsed,
  what: string,
  fn: (arg: string) => Promise<void>,
): Promise<number> {
  positional(spec, p, 0, what);
  let failed = false;
  for (const arg of p.positionals) {
    try {
      await fn(arg);
    } catch (e) {
      console.error(errorLine(e));
      failed = true;
    }
  }
  return failed ? EXIT_KRUNBOX : 0;
}
