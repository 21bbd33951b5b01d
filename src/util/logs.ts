/**
 * Reading the ends of log files for error messages.
 *
 * @module
 */

import { concatBytes } from "./bytes.ts";
import { readSlice } from "./nofollow.ts";

/**
 * The last lines of a log file (for error messages). A bounded log's older
 * part (`<path>.1`, see ./bounded_log.ts) is read first when the newer one
 * holds too little, so the lines before a rotation are not lost.
 *
 * @example
 * ```ts
 * import { logTail } from "./logs.ts";
 * console.log(await logTail("/var/log/dpkg.log", 5)); // the last 5 lines, or "" when the file is missing
 * ```
 */
export async function logTail(path: string, lines = 20): Promise<string> {
  // Only the end is read, however long the parts grew: at most TAIL_BYTES in all.
  const newer = await fileTail(path, TAIL_BYTES);
  let { bytes, cut } = newer;
  if (!cut) {
    const older = await fileTail(`${path}.1`, TAIL_BYTES - bytes.length);
    if (older.bytes.length > 0) ({ bytes, cut } = { bytes: concatBytes([older.bytes, bytes]), cut: older.cut });
  }
  let text = new TextDecoder().decode(bytes);
  if (cut) text = text.slice(text.indexOf("\n") + 1); // the first line may be cut
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/**
 * The last `max` bytes of `path` (none when it is missing, unreadable, a
 * link or not a regular file: never read through a link or from a FIFO a
 * runner left in its directory, src/util/nofollow.ts); `cut` when the file
 * holds more.
 *
 * @example
 * ```ts
 * import { fileTail } from "./logs.ts";
 * const path = await Deno.makeTempFile();
 * await Deno.writeTextFile(path, "abcdef");
 * const { bytes, cut } = await fileTail(path, 2);
 * console.log(new TextDecoder().decode(bytes), cut); // ef true
 * ```
 */
export function fileTail(path: string, max: number): Promise<{ bytes: Uint8Array; cut: boolean }> {
  const none = { bytes: new Uint8Array(), cut: false };
  try {
    const slice = readSlice(path, "end", max);
    return Promise.resolve(slice ? { bytes: slice.bytes, cut: slice.offset > 0 } : none);
  } catch {
    return Promise.resolve(none);
  }
}

/** The most of a log's end {@link logTail} reads. */
const TAIL_BYTES = 64 * 1024;
