/**
 * Reading the ends of log files for error messages.
 *
 * @module
 */

import { concatBytes } from "./bytes.ts";

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
 * The last `max` bytes of `path` (none when it is missing or unreadable);
 * `cut` when the file holds more.
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
export async function fileTail(path: string, max: number): Promise<{ bytes: Uint8Array; cut: boolean }> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path);
  } catch {
    return { bytes: new Uint8Array(), cut: false };
  }
  try {
    const size = (await f.stat()).size;
    const start = Math.max(0, size - max);
    await f.seek(start, Deno.SeekMode.Start);
    const buf = new Uint8Array(size - start);
    let got = 0;
    while (got < buf.length) {
      const n = await f.read(buf.subarray(got));
      if (n === null) break;
      got += n;
    }
    return { bytes: buf.subarray(0, got), cut: start > 0 };
  } catch {
    return { bytes: new Uint8Array(), cut: false };
  } finally {
    f.close();
  }
}

/** The most of a log's end {@link logTail} reads. */
const TAIL_BYTES = 64 * 1024;
