/**
 * Processes in the guest: `exec.start` and its stream of output, stdin,
 * signals and exit (agent/PROTOCOL.md, "exec"), as Web Streams.
 *
 * Output is flow-controlled end to end: bytes are acknowledged to the agent
 * only when the consumer reads them, so a slow reader stalls the guest
 * process instead of growing host memory. Read (or cancel) both stdout and
 * stderr of a streaming exec; an unread stream stops the process once the
 * window (1 MiB) is full.
 *
 * The window is enforced here too, not only trusted: an agent that sends
 * more unacknowledged output than an honest one can (`execWindowLimit`)
 * loses that exec — it is killed, its streams and `exited` fail with a
 * {@link ProtocolError} and what it had buffered is dropped. Collecting
 * calls ({@link runToCompletion}) also stop at `maxOutputBytes` per stream.
 *
 * @module
 */

import {
  AgentError,
  ExecAbortedError,
  ExecOutputLimitError,
  ExecSpawnError,
  ExecTimeoutError,
  KrunboxError,
  ProtocolError,
  type SpawnFailureKind,
} from "../errors.ts";
import { DEFAULTS, settings } from "../settings.ts";
import type { AgentClient } from "./client.ts";
import type { Frame } from "./frame.ts";
import { execWindowLimit, type NotificationParams, RPC_ERROR } from "./rpc.ts";
import { collectBytes } from "./collect.ts";

/** What to run. */
export interface ExecSpec {
  readonly cmd: string;
  readonly args?: readonly string[];
  /** Merged over the guest's default environment. */
  readonly env?: Readonly<Record<string, string>>;
  readonly cwd?: string;
  /** A user name or uid in the guest. */
  readonly user?: string | number;
  /** Run on a pseudo-terminal (stdout and stderr merged). */
  readonly tty?: boolean | { rows: number; cols: number };
  /** Open stdin as a pipe (`ExecProcess.stdin`). */
  readonly stdin?: boolean;
  /** Kill the process group after this many ms (enforced by the agent, backed by the host). */
  readonly timeoutMs?: number;
  /** Kill the process group when aborted. */
  readonly signal?: AbortSignal;
}

/**
 * How a process ended (exported as `ExecExitStatus`).
 *
 * @example
 * ```ts ignore
 * // Needs a VM; tests/e2e/exec_fs_test.ts ("execStream: … exited") runs the same flow.
 * import { Sandbox } from "@krunbox/krunbox";
 * await using sb = await Sandbox.builder("job-1").image("/srv/rootfs").create();
 * const p = await sb.execStream("false");
 * const { code, signal, success } = await p.exited;
 * console.log(code, signal, success); // 1 null false
 * ```
 */
export interface ExitStatus {
  /** Exit code, or null when killed by a signal. */
  readonly code: number | null;
  /** The signal that killed it, or null. */
  readonly signal: number | null;
  /** True when the exit code is 0. */
  readonly success: boolean;
}

/** One event of an exec's life, in order. */
export type ExecEvent =
  | { readonly type: "stdout"; readonly data: Uint8Array }
  | { readonly type: "stderr"; readonly data: Uint8Array }
  | { readonly type: "exit"; readonly status: ExitStatus };

class OutputQueue {
  readonly #chunks: Uint8Array[] = [];
  #waiter: (() => void) | undefined;
  #ended = false;
  #discard = false;
  #error: Error | undefined;
  constructor(readonly ack: (bytes: number) => void) {}
  push(data: Uint8Array) {
    if (this.#ended) return;
    if (this.#discard) return this.ack(data.length);
    this.#chunks.push(data);
    this.#wake();
  }
  end() {
    this.#ended = true;
    this.#wake();
  }
  /** Ends the stream with an error, dropping what is buffered. */
  fail(error: Error) {
    if (this.#ended) return;
    this.#error = error;
    this.#chunks.length = 0;
    this.end();
  }
  discard() {
    this.#discard = true;
    const n = this.#chunks.reduce((a, c) => a + c.length, 0);
    this.#chunks.length = 0;
    if (n) this.ack(n);
  }
  async take(): Promise<Uint8Array | undefined> {
    while (this.#chunks.length === 0 && !this.#ended) await new Promise<void>((r) => (this.#waiter = r));
    if (this.#error) throw this.#error;
    const c = this.#chunks.shift();
    if (c) this.ack(c.length);
    return c;
  }
  #wake() {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }
}

function toStream(q: OutputQueue): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const c = await q.take();
      if (c) controller.enqueue(c);
      else controller.close();
    },
    cancel() {
      q.discard();
    },
  }, { highWaterMark: 0 });
}

/**
 * Maps an agent error of exec.start to a typed error.
 *
 * @example
 * ```ts
 * import { spawnError } from "./exec.ts";
 * import { AgentError, ExecSpawnError } from "../errors.ts";
 * const e = spawnError("nope", new AgentError(-32010, "x", { kind: "not_found", errno: "ENOENT" }));
 * console.log(e instanceof ExecSpawnError && e.kind); // "not_found"
 * ```
 */
export function spawnError(cmd: string, e: unknown): unknown {
  if (e instanceof AgentError && e.rpcCode === RPC_ERROR.SPAWN_FAILED) {
    const d = (e.data ?? {}) as { kind?: SpawnFailureKind; errno?: string };
    return new ExecSpawnError(cmd, d.kind ?? "other", d.errno ?? "EUNKNOWN", { cause: e });
  }
  if (e instanceof AgentError && e.rpcCode === RPC_ERROR.INVALID_PARAMS) {
    return new ExecSpawnError(cmd, "invalid_argument", "EINVAL", { cause: e });
  }
  return e;
}

/**
 * A running process in the guest.
 *
 * @example
 * ```ts ignore
 * // Needs a live agent; tests/agent/protocol_test.ts ("exec returns stdout, stderr and the exit code") runs the same.
 * import { AgentClient } from "./client.ts";
 * import { ExecProcess } from "./exec.ts";
 * const agent = await AgentClient.connect("/tmp/agent.sock");
 * const p = await ExecProcess.start(agent, { cmd: "echo", args: ["hi"] });
 * for await (const ev of p) if (ev.type === "stdout") console.log(new TextDecoder().decode(ev.data));
 * ```
 */
export class ExecProcess implements AsyncIterable<ExecEvent> {
  /** The process id in the guest. */
  readonly pid: number;
  /** Output bytes as they arrive (tty: everything). */
  readonly stdout: ReadableStream<Uint8Array>;
  /** Error bytes as they arrive (empty with a tty). */
  readonly stderr: ReadableStream<Uint8Array>;
  /** The process's stdin (a pipe when `stdin: true`; otherwise writes fail). */
  readonly stdin: WritableStream<Uint8Array>;
  /** Resolves with the exit status; rejects with a timeout or abort error. */
  readonly exited: Promise<ExitStatus>;

  readonly #agent: AgentClient;
  readonly #id: number;

  private constructor(
    agent: AgentClient,
    id: number,
    pid: number,
    out: OutputQueue,
    err: OutputQueue,
    exited: Promise<ExitStatus>,
    stdinOpen: boolean,
    ended: AbortSignal,
  ) {
    this.#agent = agent;
    this.#id = id;
    this.pid = pid;
    this.stdout = toStream(out);
    this.stderr = toStream(err);
    this.exited = exited;
    this.stdin = new WritableStream<Uint8Array>({
      write: async (chunk) => {
        if (!stdinOpen) throw new KrunboxError("EXEC_SPAWN_FAILED", "stdin was not opened (pass stdin: true)");
        // No deadline of its own: the answer is the guest process's flow control; it ends with the exec.
        for (let off = 0; off < chunk.length; off += 1 << 20) {
          await agent.request("exec.stdin", { ref: id }, {
            attachment: chunk.subarray(off, off + (1 << 20)),
            signal: ended,
          });
        }
      },
      close: async () => {
        if (stdinOpen) await agent.request("exec.stdin", { ref: id, eof: true }, { signal: ended }).catch(() => {});
      },
      abort: async () => {
        if (stdinOpen) await agent.request("exec.stdin", { ref: id, eof: true }, { signal: ended }).catch(() => {});
      },
    });
  }

  /**
   * Starts a process. Rejects with {@link ExecSpawnError} when it cannot start.
   */
  static async start(agent: AgentClient, spec: ExecSpec): Promise<ExecProcess> {
    if (spec.signal?.aborted) throw new ExecAbortedError(spec.cmd, { cause: spec.signal.reason });
    // Unacknowledged output of this exec, both streams: the host's own count of the window.
    let outstanding = 0;
    const limit = execWindowLimit(agent.ready.window);
    const ack = (bytes: number) => {
      outstanding -= bytes;
      agent.notify("exec.ack", { ref: id, bytes });
    };
    const out = new OutputQueue(ack);
    const err = new OutputQueue(ack);
    type RawExit = { code: number | null; signal: number | null; timedOut: boolean };
    let exitResolve!: (s: RawExit) => void;
    let exitReject!: (e: Error) => void;
    const rawExit = new Promise<RawExit>((res, rej) => {
      exitResolve = res;
      exitReject = rej;
    });
    const lose = (e: Error) => {
      agent.notify("$/cancel", { id });
      agent.unsubscribe(id);
      out.fail(e);
      err.fail(e);
      exitReject(e);
    };
    const onFrame = (f: Frame) => {
      if (f.header.method === "exec.out") {
        const p = f.header.params as Partial<NotificationParams<"exec.out">>;
        outstanding += f.attachment.length;
        if (outstanding > limit) {
          return lose(
            new ProtocolError(
              `the agent sent ${outstanding} unacknowledged output bytes for "${spec.cmd}", over the ` +
                `${agent.ready.window}-byte window (limit ${limit}): the exec was killed and its output dropped`,
            ),
          );
        }
        (p.fd === 2 ? err : out).push(f.attachment);
      } else if (f.header.method === "exec.exit") {
        const p = f.header.params as Partial<NotificationParams<"exec.exit">>;
        out.end();
        err.end();
        agent.unsubscribe(id);
        const num = (v: unknown) => (typeof v === "number" ? v : null);
        exitResolve({ code: num(p.code), signal: num(p.signal), timedOut: p.timedOut === true });
      }
    };
    const tty = spec.tty === true ? { rows: 24, cols: 80 } : spec.tty || null;
    const { id, reply } = agent.requestWithStream("exec.start", {
      cmd: spec.cmd,
      args: spec.args ?? [],
      env: spec.env ?? {},
      cwd: spec.cwd,
      user: spec.user,
      tty,
      stdin: spec.stdin ? "pipe" : "null",
      timeoutMs: spec.timeoutMs,
    }, onFrame);
    const stopOnClose = agent.onClose((e) => {
      out.fail(e);
      err.fail(e);
      exitReject(e);
    });
    let pid: number;
    try {
      pid = (await reply).result.pid;
    } catch (e) {
      agent.unsubscribe(id);
      stopOnClose();
      throw spawnError(spec.cmd, e);
    }
    const kill = () => agent.notify("$/cancel", { id });
    const ended = new AbortController();
    const exited = new Promise<ExitStatus>((resolve, reject) => {
      let hostTimer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = () => {
        kill();
        reject(new ExecAbortedError(spec.cmd, { cause: spec.signal!.reason }));
      };
      spec.signal?.addEventListener("abort", onAbort, { once: true });
      if (spec.timeoutMs !== undefined) {
        hostTimer = setTimeout(() => {
          kill();
          reject(new ExecTimeoutError(spec.cmd, spec.timeoutMs!));
        }, spec.timeoutMs + DEFAULTS.execHostTimeoutGraceMs);
      }
      rawExit.then((s) => {
        if (s.timedOut) reject(new ExecTimeoutError(spec.cmd, spec.timeoutMs ?? 0));
        else resolve({ code: s.code, signal: s.signal, success: s.code === 0 });
      }, reject).finally(() => {
        clearTimeout(hostTimer);
        stopOnClose();
        spec.signal?.removeEventListener("abort", onAbort);
      });
    });
    // A caller that only awaits the streams must not see an unhandled rejection.
    exited.catch(() => {}).finally(() =>
      ended.abort(new KrunboxError("EXEC_ABORTED", `"${spec.cmd}" ended before it read all of its stdin`))
    );
    return new ExecProcess(
      agent,
      id,
      typeof pid === "number" ? pid : -1,
      out,
      err,
      exited,
      spec.stdin ?? false,
      ended.signal,
    );
  }

  /** Sends a signal (number, e.g. 15) to the process group. */
  async signal(signal: number): Promise<void> {
    await this.#agent.request("exec.signal", { ref: this.#id, signal });
  }

  /** Kills the process group (SIGKILL). */
  kill(): void {
    this.#agent.notify("$/cancel", { id: this.#id });
  }

  /** Resizes the tty. */
  async resize(rows: number, cols: number): Promise<void> {
    await this.#agent.request("exec.resize", { ref: this.#id, rows, cols });
  }

  /** Output and exit as one ordered stream of events (consumes stdout and stderr). */
  async *[Symbol.asyncIterator](): AsyncIterator<ExecEvent> {
    const queue: ExecEvent[] = [];
    let wake: (() => void) | undefined;
    let pending = 2;
    const pump = async (s: ReadableStream<Uint8Array>, type: "stdout" | "stderr") => {
      for await (const data of s) {
        queue.push({ type, data });
        wake?.();
      }
      pending--;
      wake?.();
    };
    const pumps = Promise.all([pump(this.stdout, "stdout"), pump(this.stderr, "stderr")]);
    while (pending > 0 || queue.length > 0) {
      if (queue.length === 0) await new Promise<void>((r) => (wake = r));
      while (queue.length > 0) yield queue.shift()!;
    }
    await pumps;
    yield { type: "exit", status: await this.exited };
  }
}

/** What a finished exec produced. */
export interface ExecOutput extends ExitStatus {
  /** stdout decoded as UTF-8 (invalid sequences replaced). */
  readonly stdout: string;
  /** stderr decoded as UTF-8 (invalid sequences replaced); empty with a tty. */
  readonly stderr: string;
  /** stdout as raw bytes. */
  readonly stdoutBytes: Uint8Array;
  /** stderr as raw bytes. */
  readonly stderrBytes: Uint8Array;
}

/** Limits of a collecting call. */
export interface CollectOptions {
  /** Bytes collected per stream before the process is killed with {@link ExecOutputLimitError} (default: settings). */
  readonly maxOutputBytes?: number;
}

/** Reads a stream to its end, or kills the exec and fails once it passes `limit` bytes. */
async function collect(proc: ExecProcess, stream: "stdout" | "stderr", cmd: string, limit: number) {
  const bytes = await collectBytes(proc[stream], limit);
  if (bytes) return bytes;
  proc.kill();
  throw new ExecOutputLimitError(cmd, stream, limit);
}

/**
 * Runs a process to completion, feeding stdin and collecting output.
 *
 * @example
 * ```ts ignore
 * // Needs a live agent; tests/agent/protocol_test.ts ("exec passes env, cwd and stdin") runs the same.
 * import { AgentClient } from "./client.ts";
 * import { runToCompletion } from "./exec.ts";
 * const agent = await AgentClient.connect("/tmp/agent.sock");
 * const out = await runToCompletion(agent, { cmd: "cat" }, "hello");
 * console.log(out.stdout);
 * ```
 */
export async function runToCompletion(
  agent: AgentClient,
  spec: ExecSpec,
  stdin?: Uint8Array | string | ReadableStream<Uint8Array>,
  options: CollectOptions = {},
): Promise<ExecOutput> {
  const limit = options.maxOutputBytes ?? settings.execMaxOutputBytes();
  const proc = await ExecProcess.start(agent, { ...spec, stdin: stdin !== undefined });
  const feeding = (async () => {
    if (stdin === undefined) return;
    const src = typeof stdin === "string" ? new TextEncoder().encode(stdin) : stdin;
    if (src instanceof Uint8Array) {
      const w = proc.stdin.getWriter();
      await w.write(src).catch(() => {});
      await w.close().catch(() => {});
    } else {
      await src.pipeTo(proc.stdin).catch(() => {});
    }
  })();
  const [stdoutBytes, stderrBytes, status] = await Promise.all([
    collect(proc, "stdout", spec.cmd, limit),
    collect(proc, "stderr", spec.cmd, limit),
    proc.exited,
    feeding,
  ]).catch(async (e) => {
    // Whatever failed first, the process is over for this caller: kill it, drop the other stream.
    proc.kill();
    await Promise.allSettled([proc.stdout.cancel(), proc.stderr.cancel()]);
    throw e;
  });
  const dec = new TextDecoder();
  return { ...status, stdout: dec.decode(stdoutBytes), stderr: dec.decode(stderrBytes), stdoutBytes, stderrBytes };
}
