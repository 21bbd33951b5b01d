/**
 * Writing frames to a connection in order. `Deno.Conn.write` may write part
 * of a buffer, and concurrent writes would interleave frames, so every frame
 * goes through one queue per connection.
 *
 * @module
 */

import { encodeFrame, type RpcMessage } from "./frame.ts";

/**
 * An ordered frame writer.
 *
 * @example
 * ```ts
 * import { FrameWriter } from "./writer.ts";
 * const conn = await Deno.connect({ transport: "unix", path: "/tmp/agent.sock" });
 * const w = new FrameWriter(conn);
 * await w.write({ jsonrpc: "2.0", id: 1, method: "ping", params: {} });
 * ```
 */
export class FrameWriter {
  #chain: Promise<void> = Promise.resolve();
  #failed: Error | undefined;

  constructor(readonly conn: Deno.Conn) {}

  /** Resolves once every frame queued so far has been written (or failed). */
  flushed(): Promise<void> {
    return this.#chain;
  }

  /** Queues a frame; resolves when it was written, rejects if the connection failed. */
  write(header: RpcMessage, attachment?: Uint8Array): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed);
    const bytes = encodeFrame(header, attachment);
    const done = this.#chain.then(async () => {
      if (this.#failed) throw this.#failed;
      try {
        for (let off = 0; off < bytes.length;) off += await this.conn.write(bytes.subarray(off));
      } catch (e) {
        this.#failed = e instanceof Error ? e : new Error(String(e));
        throw this.#failed;
      }
    });
    this.#chain = done.catch(() => {});
    return done;
  }
}
