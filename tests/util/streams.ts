/**
 * Test and bench stream helpers.
 *
 * @module
 */

/**
 * A pull-based stream repeating `chunk` until `total` bytes, calling
 * `onChunk(sent)` after each one; nothing is buffered ahead of the reader.
 *
 * @example
 * ```ts
 * import { repeatedChunks } from "./streams.ts";
 * const s = repeatedChunks(new Uint8Array(1024), 4096);
 * console.log((await new Response(s).arrayBuffer()).byteLength); // 4096
 * ```
 */
export function repeatedChunks(
  chunk: Uint8Array,
  total: number,
  onChunk: (sent: number) => void = () => {},
): ReadableStream<Uint8Array> {
  let sent = 0;
  return new ReadableStream<Uint8Array>({
    pull(c) {
      if (sent >= total) return c.close();
      c.enqueue(chunk);
      sent += chunk.length;
      onChunk(sent);
    },
  }, { highWaterMark: 0 });
}
