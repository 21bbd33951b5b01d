/**
 * The guest console, kept bounded on the host. The VMM (qemu's serial
 * chardev, libkrun's console output) writes into a FIFO in the sandbox
 * directory; the runner drains it into `console.log`, a {@link BoundedLog}:
 * when that file reaches its cap it becomes `console.log.1` (replacing the
 * older part) and a new `console.log` starts. So the console never takes more than twice
 * the cap on disk, whatever the guest writes (`cat /dev/zero >
 * /dev/console`), and a guest that writes faster than the disk takes only
 * slows its own console (the FIFO's back-pressure). The newest bytes are
 * always the ones kept: an error message quotes the end.
 *
 * The FIFO is opened read-write by the runner before the VMM starts, so the
 * VMM's open for writing never blocks and the reader never sees an EOF
 * while the VM lives.
 *
 * @module
 */

import { loadLibc } from "../../ffi/libc.ts";
import { BackendUnavailableError } from "../errors.ts";
import type { SandboxPaths } from "./backend.ts";
import { BoundedLog } from "../util/bounded_log.ts";

/** Bytes read from the FIFO at a time. */
const CHUNK = 64 * 1024;

/**
 * Drains a sandbox's console FIFO into its bounded `console.log`.
 *
 * @example
 * ```ts
 * import { ConsoleLog } from "./console.ts";
 * import { sandboxPaths } from "./backend.ts";
 * const dir = await Deno.makeTempDir();
 * const paths = sandboxPaths(dir);
 * await using log = await ConsoleLog.start(paths, 64 * 1024);
 * const w = await Deno.open(paths.consoleFifo, { write: true });
 * const bytes = new TextEncoder().encode("x".repeat(300_000));
 * for (let off = 0; off < bytes.length;) off += await w.write(bytes.subarray(off));
 * w.close();
 * await log.flushed(bytes.length);
 * const kept = (await Deno.stat(paths.consoleLog)).size + (await Deno.stat(`${paths.consoleLog}.1`)).size;
 * console.log(log.totalBytes, kept <= 2 * 64 * 1024); // 300000 true
 * if (log.totalBytes !== 300_000 || kept > 2 * 64 * 1024) throw new Error(`kept ${kept}`);
 * ```
 */
export class ConsoleLog implements AsyncDisposable {
  readonly #fifo: Deno.FsFile;
  readonly #log: BoundedLog;
  #total = 0;
  #pump: Promise<void>;
  #closed = false;
  #waiters: { bytes: number; resolve: () => void }[] = [];

  private constructor(fifo: Deno.FsFile, log: BoundedLog) {
    this.#fifo = fifo;
    this.#log = log;
    this.#pump = this.#run();
  }

  /** Makes the FIFO (0600), opens it, and starts draining it into `paths.consoleLog` with `capBytes` per part. */
  static async start(paths: SandboxPaths, capBytes: number): Promise<ConsoleLog> {
    const libc = loadLibc();
    if (!libc) {
      throw new BackendUnavailableError("qemu", "libc could not be loaded for the console FIFO", "check ld.so");
    }
    await Deno.remove(paths.consoleFifo).catch(() => {});
    const rc = libc.mkfifo(paths.consoleFifo, 0o600);
    if (rc !== 0) {
      throw new BackendUnavailableError(
        "qemu",
        `cannot make the console FIFO ${paths.consoleFifo} (errno ${rc})`,
        "check that the sandbox directory is writable",
      );
    }
    // Read-write: this open does not wait for a writer, and the VMM's open for writing does not wait for us.
    const fifo = await Deno.open(paths.consoleFifo, { read: true, write: true });
    const log = await BoundedLog.open(paths.consoleLog, Math.max(CHUNK, capBytes), { truncate: true });
    return new ConsoleLog(fifo, log);
  }

  /** Bytes drained so far (all parts, including what was rotated away). */
  get totalBytes(): number {
    return this.#total;
  }

  /** Resolves once `bytes` in all have been drained (or the log is closed). */
  flushed(bytes: number): Promise<void> {
    if (this.#total >= bytes || this.#closed) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ bytes, resolve }));
  }

  async #run(): Promise<void> {
    const buf = new Uint8Array(CHUNK);
    try {
      while (!this.#closed) {
        const n = await this.#fifo.read(buf);
        if (n === null) break;
        await this.#log.write(buf.subarray(0, n));
        this.#total += n;
        this.#waiters = this.#waiters.filter((w) => (w.bytes <= this.#total ? (w.resolve(), false) : true));
      }
    } catch {
      // closed under the read at shutdown
    } finally {
      for (const w of this.#waiters) w.resolve();
      this.#waiters = [];
    }
  }

  /** Stops draining (the VMM is gone) and closes both files. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#fifo.close();
    } catch {
      // already closed
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.#pump, new Promise((r) => (timer = setTimeout(r, 1000)))]);
    clearTimeout(timer);
    await this.#log[Symbol.asyncDispose]();
  }
}
