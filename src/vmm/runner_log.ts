/**
 * A sandbox's `runner.log`, bounded like its console ({@link BoundedLog}:
 * `runner.log.1` the older part, `runner.log` the newer, at most
 * `KRUNBOX_RUNNER_LOG_MAX_BYTES` each). Every writer goes through the one
 * instance the runner opens: its own lines ({@link RunnerLog.line}), the
 * VMM's, virtiofsd's and netd's stderr ({@link RunnerLog.pipeFrom}, from
 * ChildGroup), qemu's command line, and the runner's own fd 2
 * ({@link RunnerLog.captureStderr}): Deno's runtime messages, an uncaught
 * error, a panic, and libkrun's in-process logging on the libkrun backend.
 *
 * fd 2 is `dup2`ed onto each new part rather than drained through a pipe:
 * what is written there goes to the file from the kernel at once, so a
 * crash's last words are never left unread in a pipe of a dead process, and
 * a native writer (libkrun's threads) is never blocked by a reader that has
 * stopped, which could keep the runner from exiting. Its bytes count in the
 * part's size, checked before every queued write and every 50 ms.
 *
 * Closing waits for queued lines at most `DEFAULTS.logFlushMs`: the runner's
 * exit never waits on its log.
 *
 * @module
 */

import { DEFAULTS, settings } from "../settings.ts";
import { BoundedLog } from "../util/bounded_log.ts";
import { errnoName } from "../../ffi/libc.ts";

/** The process's stderr. */
const STDERR = 2;

/**
 * A sandbox's bounded runner log.
 *
 * @example
 * ```ts
 * import { RunnerLog } from "./runner_log.ts";
 * const dir = await Deno.makeTempDir();
 * await using log = await RunnerLog.open(`${dir}/runner.log`, 64 * 1024);
 * log.line("netd ready");
 * await log.flush();
 * console.log((await Deno.readTextFile(`${dir}/runner.log`)).endsWith(" netd ready\n")); // true
 * ```
 */
export class RunnerLog implements AsyncDisposable {
  readonly #log: BoundedLog;

  private constructor(log: BoundedLog) {
    this.#log = log;
  }

  /** Opens `path` (appending: a restarted sandbox keeps its earlier runs) with `capBytes` per part. */
  static async open(path: string, capBytes: number = settings.runnerLogMaxBytes()): Promise<RunnerLog> {
    return new RunnerLog(await BoundedLog.open(path, capBytes));
  }

  /** The current part's path (`runner.log`; the older is `runner.log.1`). */
  get path(): string {
    return this.#log.path;
  }

  /** One timestamped line, queued (never throws, never waits). */
  line(message: string): void {
    this.#log.write(`${new Date().toISOString()} ${message}\n`);
  }

  /** Bytes as they are (qemu's command line), queued; resolves once on disk or dropped. */
  write(data: Uint8Array | string): Promise<void> {
    return this.#log.write(data);
  }

  /** Drains a child's stream into the log, chunk by chunk (the child waits for the disk, not for memory). */
  pipeFrom(stream: ReadableStream<Uint8Array>): Promise<void> {
    return this.#log.pipeFrom(stream);
  }

  /**
   * Points the runner's own fd 2 at the log, now and after every rotation.
   * Where it cannot (no FFI), fd 2 stays on the file the starter opened and
   * a line says that it is not bounded.
   */
  captureStderr(): void {
    const rc = this.#log.captureFd(STDERR);
    if (rc !== 0) this.line(`the runner's own stderr is not bounded: dup2 failed (${errnoName(rc)})`);
  }

  /** Waits up to `ms` for the queued lines to reach the disk; true when they did. */
  flush(ms: number = DEFAULTS.logFlushMs): Promise<boolean> {
    return this.#log.flush(ms);
  }

  /** Flushes (bounded) and closes; fd 2 stays on the last part. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.#log[Symbol.asyncDispose]();
  }
}
