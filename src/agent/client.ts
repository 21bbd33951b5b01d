/**
 * The multiplexed JSON-RPC client of agent/PROTOCOL.md over one byte stream
 * (a unix socket to the runner's relay, or to an agent in host mode).
 * Requests get fresh ids; notifications tagged with a request id (`ref`) are
 * routed to whoever subscribed to that id (exec streams).
 *
 * The peer is not trusted: every request has a deadline (cancelled on the
 * wire when it passes), broken frames are counted, not kept (too many end the
 * connection), a frame announcing more than the frame limit ends the
 * connection from its 8-byte prefix, and the write queue is bounded.
 *
 * @module
 */

import { AgentError, AgentTimeoutError, ProtocolError } from "../errors.ts";
import { DEFAULTS, settings } from "../settings.ts";
import {
  type Frame,
  FrameErrorCounts,
  type FrameErrorSummary,
  FrameStream,
  isDecodeError,
  type RpcMessage,
} from "./frame.ts";
import {
  isMethod,
  MAX_EXEC_WINDOW,
  type Method,
  METHODS,
  type Notification,
  type NotificationParams,
  type Params,
  type ReadyInfo,
  type Result,
} from "./rpc.ts";
import { FrameWriter } from "./writer.ts";
import { closeQuietly } from "../util/close.ts";

export type { ReadyInfo } from "./rpc.ts";

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/** A response: its result object and attachment. */
export interface Reply<R = Record<string, unknown>> {
  readonly result: R;
  readonly attachment: Uint8Array;
}

/** Options of one request. */
export interface RequestOptions {
  /** Bytes sent as the frame's attachment. */
  attachment?: Uint8Array;
  /** Aborting sends `$/cancel` and rejects with the signal's reason. */
  signal?: AbortSignal;
  /**
   * Milliseconds until the request is cancelled and rejects with
   * {@link AgentTimeoutError} (`Infinity`: none). Default: the method's
   * deadline in the table of rpc.ts.
   */
  timeoutMs?: number;
}

/** The deadline a method gets when its caller passes none. */
function defaultTimeout(method: Method): number {
  // A name outside the table (only through a cast) gets the agent deadline.
  switch (isMethod(method) ? METHODS[method].deadline : "agent") {
    case "agent":
      return settings.agentTimeoutMs();
    case "control":
      return DEFAULTS.runnerControlTimeoutMs;
    case "exec":
      return Infinity;
  }
}

/** A notification routed to a subscriber. */
export type RefHandler = (frame: Frame) => void;

interface Pending {
  resolve(reply: Reply): void;
  reject(error: Error): void;
}

/**
 * One connection to an agent.
 *
 * @example
 * ```ts ignore
 * // Needs a live agent; tests/agent/protocol_test.ts ("ping answers with the uptime") runs the same.
 * import { AgentClient } from "./client.ts";
 * await using agent = await AgentClient.connect("/tmp/agent.sock");
 * console.log((await agent.request("ping", {})).result);
 * ```
 */
export class AgentClient implements AsyncDisposable {
  readonly #conn: Deno.Conn;
  readonly #pending = new Map<number, Pending>();
  readonly #subscribers = new Map<number, RefHandler>();
  readonly #closeHandlers = new Set<(error: Error) => void>();
  #nextId = 1;
  #unrefWhenIdle = false;
  #waiters = 0;
  readonly #writer: FrameWriter;
  #closedError: Error | undefined;
  readonly #brokenFrames = new FrameErrorCounts();
  #ready!: ReadyInfo;
  /** Resolves when the connection has ended, for any reason. */
  readonly closed: Promise<void>;

  private constructor(conn: Deno.Conn, onReady: (info: ReadyInfo) => void, onEarlyClose: (e: Error) => void) {
    this.#conn = conn;
    this.#writer = new FrameWriter(conn, { peer: "the agent", onOverflow: (e) => this.#shutdown(e) });
    this.closed = this.#readLoop(onReady).then(
      () => this.#shutdown(new ProtocolError("the agent connection closed")),
      (e) => this.#shutdown(e instanceof Error ? e : new ProtocolError(String(e))),
    ).then(() => onEarlyClose(this.#closedError!));
  }

  /**
   * Connects to a unix socket and waits for the agent's `ready`.
   *
   * @example
   * ```ts ignore
   * // Needs a live agent; tests/agent/protocol_test.ts connects the same way to the agent in host mode.
   * import { AgentClient } from "./client.ts";
   * const agent = await AgentClient.connect("/tmp/agent.sock", { timeoutMs: 5000 });
   * console.log(agent.ready.boot);
   * await agent.close();
   * ```
   */
  static async connect(path: string, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<AgentClient> {
    let conn: Deno.Conn;
    try {
      conn = await Deno.connect({ transport: "unix", path });
    } catch (cause) {
      throw new ProtocolError(`cannot connect to the agent at ${path}: ${(cause as Error).message}`, { cause });
    }
    return await AgentClient.fromConn(conn, options);
  }

  /**
   * Wraps an open connection and waits for the agent's `ready`.
   *
   * @example
   * ```ts ignore
   * // Needs a live agent; tests/agent/protocol_test.ts runs the same against the agent in host mode.
   * import { AgentClient } from "./client.ts";
   * const conn = await Deno.connect({ transport: "unix", path: "/tmp/agent.sock" });
   * const agent = await AgentClient.fromConn(conn);
   * await agent.close();
   * ```
   */
  static fromConn(conn: Deno.Conn, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<AgentClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULTS.agentReadyTimeoutMs;
    return new Promise((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(
        () => fail(new ProtocolError(`the agent sent no ready within ${timeoutMs} ms`)),
        timeoutMs,
      );
      const onAbort = () =>
        fail(options.signal!.reason instanceof Error ? options.signal!.reason : new Error("aborted"));
      options.signal?.addEventListener("abort", onAbort, { once: true });
      const done = () => {
        settled = true;
        clearTimeout(timer);
        options.signal?.removeEventListener("abort", onAbort);
      };
      const fail = (e: Error) => {
        if (settled) return;
        done();
        client.close().catch(() => {});
        reject(e);
      };
      const client: AgentClient = new AgentClient(conn, (info) => {
        if (settled) return;
        done();
        const refuse = readyProblem(info);
        if (refuse) {
          client.close().catch(() => {});
          reject(new ProtocolError(refuse));
          return;
        }
        resolve(client);
      }, (e) => fail(e));
    });
  }

  /** The agent's `ready` announcement. */
  get ready(): ReadyInfo {
    return this.#ready;
  }

  /** Broken frames seen so far (each skipped): counters and the first few messages. */
  get protocolErrors(): FrameErrorSummary {
    return this.#brokenFrames.summary;
  }

  /**
   * Lets the program exit while nothing waits on the agent: the connection
   * holds the event loop open only while a request or a stream is pending.
   */
  unrefWhenIdle(): void {
    this.#unrefWhenIdle = true;
    this.#updateRef();
  }

  /** Resolves when the connection has ended, keeping the program alive until then. */
  async waitClosed(): Promise<void> {
    this.#waiters++;
    this.#updateRef();
    try {
      await this.closed;
    } finally {
      this.#waiters--;
    }
  }

  #updateRef() {
    if (!this.#unrefWhenIdle || this.#closedError) return;
    if (this.#pending.size > 0 || this.#subscribers.size > 0 || this.#waiters > 0) this.#conn.ref();
    else this.#conn.unref();
  }

  /** Whether the connection has ended. */
  get isClosed(): boolean {
    return this.#closedError !== undefined;
  }

  /**
   * Sends a request and waits for its response. Rejects with
   * {@link AgentError} for an error response (callers map codes to richer
   * errors), {@link AgentTimeoutError} past its deadline (the request is
   * cancelled on the wire), or {@link ProtocolError} when the connection ends
   * first.
   */
  request<M extends Method>(method: M, params: Params<M>, options: RequestOptions = {}): Promise<Reply<Result<M>>> {
    return this.#start(this.#nextId++, method, params, options);
  }

  #start<M extends Method>(
    id: number,
    method: M,
    params: Params<M>,
    options: RequestOptions,
  ): Promise<Reply<Result<M>>> {
    if (this.#closedError) return Promise.reject(this.#closedError);
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    const timeoutMs = options.timeoutMs ?? defaultTimeout(method);
    return new Promise<Reply<Result<M>>>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const settle = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      const cancel = (error: unknown) => {
        if (!this.#pending.delete(id)) return;
        settle();
        this.#updateRef();
        this.notify("$/cancel", { id });
        reject(error);
      };
      const onAbort = () => cancel(signal!.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      if (Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => cancel(new AgentTimeoutError(method, timeoutMs)), Math.max(0, timeoutMs));
      }
      this.#pending.set(id, {
        resolve: (r) => {
          settle();
          resolve(r as Reply<Result<M>>);
        },
        reject: (e) => {
          settle();
          reject(e);
        },
      });
      this.#updateRef();
      this.#send({ jsonrpc: "2.0", id, method, params: params as Record<string, unknown> }, options.attachment)
        .catch((e) => {
          if (!this.#pending.delete(id)) return;
          settle();
          this.#updateRef();
          reject(e);
        });
    });
  }

  /**
   * Starts a request whose notifications (tagged `ref` = its id) go to
   * `handler`, subscribed before the request is sent so none is missed.
   * Returns the id and the response promise; call `unsubscribe(id)` when done.
   */
  requestWithStream<M extends Method>(
    method: M,
    params: Params<M>,
    handler: RefHandler,
    options: RequestOptions = {},
  ): { id: number; reply: Promise<Reply<Result<M>>> } {
    const id = this.#nextId++;
    this.#subscribers.set(id, handler);
    const reply = this.#start(id, method, params, options);
    return { id, reply };
  }

  /** Stops routing notifications for a request id. */
  unsubscribe(id: number): void {
    this.#subscribers.delete(id);
    this.#updateRef();
  }

  /** Sends a notification (fire and forget; errors surface as connection close). */
  notify<N extends Notification>(method: N, params: NotificationParams<N>, attachment?: Uint8Array): void {
    if (this.#closedError) return;
    this.#send({ jsonrpc: "2.0", method, params: params as Record<string, unknown> }, attachment).catch(() => {});
  }

  /** Calls `handler` once when the connection ends. Returns an unsubscribe function. */
  onClose(handler: (error: Error) => void): () => void {
    if (this.#closedError) {
      handler(this.#closedError);
      return () => {};
    }
    this.#closeHandlers.add(handler);
    return () => this.#closeHandlers.delete(handler);
  }

  /** Closes the connection; pending requests reject. */
  async close(): Promise<void> {
    if (!this.#closedError) {
      // Keep the loop alive until the read side has seen the close.
      this.#waiters++;
      this.#updateRef();
      closeQuietly(this.#conn);
    }
    await this.closed.catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #send(header: RpcMessage, attachment?: Uint8Array): Promise<void> {
    if (this.#closedError) return Promise.reject(this.#closedError);
    return this.#writer.write(header, attachment);
  }

  async #readLoop(onReady: (info: ReadyInfo) => void): Promise<void> {
    let gotReady = false;
    try {
      for await (const f of this.#conn.readable.pipeThrough(new FrameStream())) {
        if (isDecodeError(f)) {
          if (f.error === "frame_too_large" || f.error === "truncated") {
            throw new ProtocolError(`the agent broke the framing: ${f.message}; connection closed`);
          }
          this.#countBroken(f.error, f.message, f.count);
          continue;
        }
        if (!gotReady) {
          if (f.header.method !== "ready") {
            throw new ProtocolError(`the agent's first frame is "${f.header.method ?? "a response"}", not ready`);
          }
          gotReady = true;
          this.#ready = f.header.params as unknown as ReadyInfo;
          onReady(this.#ready);
          continue;
        }
        this.#dispatch(f);
      }
    } catch (e) {
      if (e instanceof ProtocolError) throw e;
      // A close (ours or the peer's) ends the read with one of these; anything else is a failure, typed.
      const closed = e instanceof Deno.errors.BadResource || e instanceof Deno.errors.ConnectionReset ||
        e instanceof Deno.errors.Interrupted;
      if (!closed) throw new ProtocolError(`reading from the agent failed: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Counts a broken frame; past the limit the peer is not an honest agent and the connection ends. */
  #countBroken(kind: Parameters<FrameErrorCounts["record"]>[0], message: string, count = 1) {
    this.#brokenFrames.record(kind, message, count);
    if (this.#brokenFrames.total > DEFAULTS.agentMaxBrokenFrames) {
      const { samples } = this.#brokenFrames.summary;
      throw new ProtocolError(
        `the agent sent more than ${DEFAULTS.agentMaxBrokenFrames} broken frames (first: ${samples.join("; ")}); ` +
          "connection closed",
      );
    }
  }

  #dispatch(f: Frame) {
    const h = f.header;
    if (h.method !== undefined) {
      const ref = (h.params as { ref?: unknown } | undefined)?.ref;
      if (typeof ref === "number") this.#subscribers.get(ref)?.(f);
      return;
    }
    if (typeof h.id !== "number") {
      // An error about a frame the agent could not read (id null).
      if (h.error) this.#countBroken("agent", `${h.error.code} ${h.error.message}`);
      return;
    }
    const p = this.#pending.get(h.id);
    if (!p) return;
    this.#pending.delete(h.id);
    this.#updateRef();
    if (h.error) p.reject(new AgentError(Number(h.error.code), String(h.error.message), h.error.data));
    else p.resolve({ result: isObject(h.result) ? h.result : {}, attachment: f.attachment });
  }

  #shutdown(error: Error) {
    if (this.#closedError) return;
    this.#closedError = error;
    closeQuietly(this.#conn);
    for (const p of this.#pending.values()) p.reject(error);
    this.#pending.clear();
    for (const h of this.#closeHandlers) h(error);
    this.#closeHandlers.clear();
  }
}

/** Why a `ready` announcement is refused, or undefined when it is acceptable. */
function readyProblem(info: ReadyInfo): string | undefined {
  if (typeof info !== "object" || info === null) return "the agent's ready has no params";
  if (Math.trunc(info.protocol) !== PROTOCOL_VERSION) {
    return `the agent speaks protocol ${info.protocol}, this library ${PROTOCOL_VERSION}`;
  }
  if (typeof info.window !== "number" || !(info.window > 0) || info.window > MAX_EXEC_WINDOW) {
    return `the agent announced an exec window of ${info.window} bytes (accepted: 1 to ${MAX_EXEC_WINDOW})`;
  }
  return undefined;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
