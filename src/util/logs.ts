/**
 * Reading the ends of log files for error messages.
 *
 * @module
 */

import { readSlice } from "./nofollow.ts";

/**
 * The last lines of a log file (for error messages).
 *
 * @example
 * ```ts
 * import { logTail } from "./logs.ts";
 * console.log(await logTail("/var/log/dpkg.log", 5)); // the last 5 lines, or "" when the file is missing
 * ```
 */
export function logTail(path: string, lines = 20): Promise<string> {
  let slice;
  try {
    // Only the end is read, however long the file grew (at most TAIL_BYTES), and never through a link or from a
    // FIFO a runner left in its directory (src/util/nofollow.ts).
    slice = readSlice(path, "end", TAIL_BYTES);
  } catch {
    return Promise.resolve("");
  }
  if (!slice) return Promise.resolve("");
  let text = new TextDecoder().decode(slice.bytes);
  if (slice.offset > 0) text = text.slice(text.indexOf("\n") + 1); // the first line may be cut
  return Promise.resolve(text.trimEnd().split("\n").slice(-lines).join("\n"));
}

/** The most of a log's end {@link logTail} reads. */
const TAIL_BYTES = 64 * 1024;
