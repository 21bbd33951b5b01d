/**
 * Byte helpers shared by the codec, the exec and fs clients and the image code.
 *
 * @module
 */

/**
 * Joins byte chunks into one array.
 *
 * @example
 * ```ts
 * import { concatBytes } from "./bytes.ts";
 * console.log(concatBytes([new Uint8Array([1]), new Uint8Array([2, 3])])); // Uint8Array [1, 2, 3]
 * ```
 */
export function concatBytes(chunks: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.byteLength;
  }
  return out;
}

/**
 * Reads a byte stream to its end.
 *
 * @example
 * ```ts
 * import { readAllBytes } from "./bytes.ts";
 * console.log((await readAllBytes(new Blob(["abc"]).stream())).length); // 3
 * ```
 */
export async function readAllBytes(stream: ReadableStream<Uint8Array>): Promise<Uint8Array<ArrayBuffer>> {
  const chunks: Uint8Array[] = [];
  for await (const c of stream) chunks.push(c);
  return concatBytes(chunks);
}

/**
 * Writes every byte of `bytes` to `w` (a `Deno.FsFile`, `Deno.Conn` or
 * `Deno.stdout`), whose `write` may take only part of a buffer.
 *
 * @example
 * ```ts
 * import { writeAll } from "./bytes.ts";
 * const path = await Deno.makeTempFile();
 * using f = await Deno.open(path, { write: true });
 * await writeAll(f, new TextEncoder().encode("hello"));
 * console.log(await Deno.readTextFile(path)); // hello
 * ```
 */
export async function writeAll(w: { write(p: Uint8Array): Promise<number> }, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await w.write(bytes.subarray(off));
}
