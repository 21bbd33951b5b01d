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
