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
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path);
  } catch {
    return "";
  }
  try {
    // Only the end is read, however long the file grew: at most TAIL_BYTES.
    const size = (await f.stat()).size;
    const start = Math.max(0, size - TAIL_BYTES);
    await f.seek(start, Deno.SeekMode.Start);
    const buf = new Uint8Array(size - start);
    let got = 0;
    while (got < buf.length) {
      const n = await f.read(buf.subarray(got));
      if (n === null) break;
      got += n;
    }
    let text = new TextDecoder().decode(buf.subarray(0, got));
    if (start > 0) text = text.slice(text.indexOf("\n") + 1); // the first line may be cut
    return text.trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  } finally {
    f.close();
  }
}

/** The most of a log's end {@link logTail} reads. */
const TAIL_BYTES = 64 * 1024;
