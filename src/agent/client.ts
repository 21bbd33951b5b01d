/**
 * The multiplexed JSON-RPC client of agent/PROTOCOL.md over one byte stream
 * (a unix socket to the runner's relay, or to an agent in host mode).
 * Requests get fresh ids; notifications tagged with a request id (`ref`) are
 * routed to whoever subscribed to that id (exec streams).
 *
 * @module
 */

import { AgentError, ProtocolError } from "../errors.ts";
import { type Frame, FrameDecoder, isDecodeError, type RpcMessage } from "./frame.ts";
import { FrameWriter } from "./writer.ts";
import { closeQuietly } from "../util/close.ts";

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/** The agent's `ready` announcement. */
export interface ReadyInfo {
  readonly protocol: number;
  readonly agent: string;
  readonly mode: "init" | "host";
  readonly pid: number;
  /** Exec output flow-control window in bytes. */
  readonly window: number;
  /** Boot timings in ms on the guest's boot clock. */
  readonly boot: { readonly kernelMs: number; readonly agentStartMs: number; readonly readyMs: number };
}

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
 * ```ts
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
  #protocolErrors: string[] = [];
  #ready!: ReadyInfo;
  /** Resolves when the connection has ended, for any reason. */
  readonly closed: Promise<void>;

  private constructor(conn: Deno.Conn, onReady: (info: ReadyInfo) => void, onEarlyClose: (e: Error) => void) {
    this.#conn = conn;
    this.#writer = new FrameWriter(conn);
    this.closed = this.#readLoop(onReady).then(
      () => this.#shutdown(new ProtocolError("the agent connection closed")),
      (e) => this.#shutdown(e instanceof Error ? e : new ProtocolError(String(e))),
    ).then(() => onEarlyClose(this.#closedError!));
  }

  /**
   * Connects to a unix socket and waits for the agent's `ready`.
   *
   * @example
   * ```ts
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
   * ```ts
   * import { AgentClient } from "./client.ts";
   * const conn = await Deno.connect({ transport: "unix", path: "/tmp/agent.sock" });
   * const agent = await AgentClient.fromConn(conn);
   * await agent.close();
   * ```
   */
  static fromConn(conn: Deno.Conn, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<AgentClient> {
    const timeoutMs = options.timeoutMs ?? 30_000;
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
        if (Math.trunc(info.protocol) !== PROTOCOL_VERSION) {
          client.close().catch(() => {});
          reject(new ProtocolError(`the agent speaks protocol ${info.protocol}, this library ${PROTOCOL_VERSION}`));
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

  /** Decode errors seen so far (broken frames from the agent, each skipped). */
  get protocolErrors(): readonly string[] {
    return this.#protocolErrors;
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
   * errors), or {@link ProtocolError} when the connection ends first.
   */
  request<R = Record<string, unknown>>(
    method: string,
    params: Record<string, unknown>,
    options: RequestOptions = {},
  ): Promise<Reply<R>> {
    if (this.#closedError) return Promise.reject(this.#closedError);
    const id = this.#nextId++;
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<Reply<R>>((resolve, reject) => {
      const onAbort = () => {
        this.#pending.delete(id);
        this.#updateRef();
        this.notify("$/cancel", { id });
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#pending.set(id, {
        resolve: (r) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(r as Reply<R>);
        },
        reject: (e) => {
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
      });
      this.#updateRef();
      this.#send({ jsonrpc: "2.0", id, method, params }, options.attachment).catch((e) => {
        this.#pending.delete(id);
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
  requestWithStream<R = Record<string, unknown>>(
    method: string,
    params: Record<string, unknown>,
    handler: RefHandler,
  ): { id: number; reply: Promise<Reply<R>> } {
    const id = this.#nextId;
    this.#subscribers.set(id, handler);
    const reply = this.request<R>(method, params);
    return { id, reply };
  }

  /** Stops routing notifications for a request id. */
  unsubscribe(id: number): void {
    this.#subscribers.delete(id);
    this.#updateRef();
  }

  /** Sends a notification (fire and forget; errors surface as connection close). */
  notify(method: string, params: Record<string, unknown>, attachment?: Uint8Array): void {
    if (this.#closedError) return;
    this.#send({ jsonrpc: "2.0", method, params }, attachment).catch(() => {});
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
    const decoder = new FrameDecoder();
    let gotReady = false;
    try {
      for await (const chunk of this.#conn.readable) {
        decoder.push(chunk);
        for (let f = decoder.next(); f; f = decoder.next()) {
          if (isDecodeError(f)) {
            this.#protocolErrors.push(`${f.error}: ${f.message}`);
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
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.BadResource || e instanceof Deno.errors.ConnectionReset)) throw e;
    }
    const tail = decoder.finish();
    if (tail) this.#protocolErrors.push(`${tail.error}: ${tail.message}`);
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
      if (h.error) this.#protocolErrors.push(`agent: ${h.error.code} ${h.error.message}`);
      return;
    }
    const p = this.#pending.get(h.id);
    if (!p) return;
    this.#pending.delete(h.id);
    this.#updateRef();
    if (h.error) p.reject(new AgentError(h.error.code, h.error.message, h.error.data));
    else p.resolve({ result: h.result ?? {}, attachment: f.attachment });
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
