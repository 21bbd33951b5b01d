/**
 * Reading a stream whose length the guest decides into memory, up to a
 * limit: the collecting calls (`exec` output, `fs.read`) use it so that a
 * guest that never stops sending costs the host `limit` bytes at most.
 *
 * @module
 */

import { concatBytes } from "../util/bytes.ts";

/**
 * Reads `stream` to its end, or cancels it once more than `limit` bytes came
 * and resolves with `undefined` (what was read is dropped).
 *
 * @example
 * ```ts
 * import { collectBytes } from "./collect.ts";
 * console.log((await collectBytes(new Blob(["abc"]).stream(), 10))?.length); // 3
 * console.log(await collectBytes(new Blob(["abc"]).stream(), 2)); // undefined
 * ```
 */
export async function collectBytes(stream: ReadableStream<Uint8Array>, limit: number): Promise<Uint8Array | undefined> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = stream.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return concatBytes(chunks);
    total += value.length;
    if (total > limit) {
      chunks.length = 0;
      await reader.cancel().catch(() => {});
      return undefined;
    }
    chunks.push(value);
  }
}
