/**
 * Reading the ends of log files for error messages.
 *
 * @module
 */

/**
 * The last lines of a log file (for error messages).
 *
 * @example
 * ```ts
 * import { logTail } from "./logs.ts";
 * console.log(await logTail("/var/log/dpkg.log", 5)); // the last 5 lines, or "" when the file is missing
 * ```
 */
export async function logTail(path: string, lines = 20): Promise<string> {
  try {
    const text = await Deno.readTextFile(path);
    return text.trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}
