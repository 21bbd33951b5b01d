/**
 * The runner's relay (agent/PROTOCOL.md, "Relay"): one guest stream, many
 * host clients. Client request ids are rewritten to relay ids and mapped back
 * on responses and on notifications that carry them (`ref` of `exec.*`,
 * `id` of `$/cancel`). A client that disconnects has its processes killed and
 * its file handles closed in the guest. Requests whose method starts with
 * `runner.` are answered by the runner itself (stop, kill, drain, info).
 * A `runner.netEvents` request also subscribes its client: every later
 * {@link Relay.publish}ed notification reaches it tagged `ref` = that
 * request's id, until the client disconnects.
 *
 * Writes to clients are queued, not awaited, so one slow client never stalls
 * the guest stream; each client's queue is capped in bytes
 * (`DEFAULTS.relayClientQueueBytes`) and a client that does not read is cut off
 * (its execs killed, its handles closed), the others unaffected.
 *
 * The host keeps its own account of time and of execs, whatever the guest
 * says or fails to say:
 * - idle time runs from the last frame a client sent (a request, an ack of
 *   output it consumed, stdin, a cancel), or to the end of the timeout a
 *   running exec was given; a silent exec without a timeout does not hold
 *   it off, and neither does anything the guest sends on its own;
 * - an exec stops counting as running (for drain and `runningExecs`) at its
 *   `exec.exit`, or `DEFAULTS.execAbandonGraceMs` after it was cancelled, its
 *   client left, or its timeout passed — then its route is dropped, so a
 *   guest that never sends `exec.exit` holds neither drain nor memory;
 * - a cancelled request that the guest never answers is forgotten after the
 *   same grace; the runner's own requests have deadlines;
 * - broken frames from the guest are counted (bounded), skipped, never kept.
 *
 * Before its `ready`, the agent of a base config asks for this boot's
 * config (`boot.config`, agent/PROTOCOL.md "Boot config"): the relay answers
 * it once with the config the backend made, and refuses any later ask.
 *
 * @module
 */

import { AgentTimeoutError } from "../errors.ts";
import {
  type Frame,
  FrameErrorCounts,
  type FrameErrorSummary,
  FrameStream,
  isDecodeError,
  type RpcMessage,
} from "../agent/frame.ts";
import { decodeErrorCode, type Method, type Params, RPC_ERROR } from "../agent/rpc.ts";
import { type ByteChannel, FrameWriter } from "../agent/writer.ts";
import { DEFAULTS } from "../settings.ts";
import { closeQuietly } from "../util/close.ts";

/** Handles `runner.*` requests. */
export type ControlHandler = (
  method: string,
  params: Record<string, unknown>,
) => Promise<Record<string, unknown>>;

interface Client {
  readonly writer: FrameWriter;
  /** client request id → relay id, for requests that have not been answered or whose exec lives. */
  readonly ids: Map<number, number>;
  /** relay ids of this client's live execs. */
  readonly execs: Set<number>;
  /** open fs handles. */
  readonly handles: Set<number>;
  /** Set once the client is gone. */
  gone: boolean;
}

/** Where a relay id's answers go: a client's request, or the runner's own. */
type Route =
  | {
    readonly client: Client;
    readonly clientId: number;
    readonly method: string;
    /** For an exec: when the host expects it to be over (its timeout), if it has one. */
    readonly dueAt?: number;
    /** When the host stops waiting for this route (set by a cancel, a disconnect or a passed timeout). */
    expiresAt?: number;
  }
  | { readonly client?: undefined; readonly resolve: (h: RpcMessage) => void };

/** How often the relay looks for abandoned execs while someone waits on them. */
const SWEEP_MS = 100;

/**
 * The relay between a guest stream and host clients.
 */
export class Relay {
  readonly #guest: FrameWriter;
  readonly #routes = new Map<number, Route>();
  readonly #clients = new Set<Client>();
  /** Clients subscribed by `runner.netEvents`: the id of that request, and how many notifications are unwritten. */
  readonly #subscribed = new Map<Client, { ref: number; unwritten: number; dropped: number }>();
  #nextId = 1;
  #readyFrame: Frame | undefined;
  #draining = false;
  /** Idle time counts from the agent's ready (a boot is never idle time), then from each client frame. */
  #lastActivity = Date.now();
  readonly #guestErrors = new FrameErrorCounts();
  /** Callers of {@link execsDone} waiting for the last exec to end. */
  readonly #execsDoneWaiters: (() => void)[] = [];
  #sweeper: ReturnType<typeof setInterval> | undefined;
  /** Resolves with the agent's ready frame. */
  readonly ready: Promise<Frame>;
  /** Resolves when the guest stream ends. */
  readonly guestClosed: Promise<void>;

  /** This boot's config, until the guest has asked for it (once). */
  #bootConfig: Readonly<Record<string, unknown>> | undefined;

  /** A relay of the guest stream `guest`; `bootConfig` answers the agent's `boot.config`. */
  constructor(guest: ByteChannel, readonly control: ControlHandler, bootConfig?: Readonly<Record<string, unknown>>) {
    this.#bootConfig = bootConfig;
    this.#guest = new FrameWriter(guest, { peer: "the guest agent" });
    let onReady!: (f: Frame) => void;
    this.ready = new Promise((r) => (onReady = r));
    this.#onReady = onReady;
    this.guestClosed = this.#readGuest(guest, onReady);
  }

  readonly #onReady: (f: Frame) => void;

  /**
   * Takes `frame` as the agent's ready: a guest restored from a snapshot
   * template announced its ready before it was saved and says nothing until
   * asked; clients get this one (the runner's, with this boot's figures).
   */
  adoptReady(frame: Frame): void {
    if (this.#readyFrame) return;
    this.#takeReady(frame, this.#onReady);
  }

  #takeReady(frame: Frame, onReady: (f: Frame) => void): void {
    this.#readyFrame = frame;
    this.#lastActivity = Date.now();
    onReady(frame);
  }

  /** Broken frames seen from the guest (each skipped): counters and the first few messages. */
  get guestErrors(): FrameErrorSummary {
    return this.#guestErrors.summary;
  }

  /**
   * Milliseconds without host activity: since the agent's ready, the last
   * client frame, or the last exec timeout that ran out, whichever is last.
   */
  get idleMs(): number {
    const now = Date.now();
    this.#sweep(now);
    let busyUntil = this.#lastActivity;
    for (const route of this.#routes.values()) {
      if (route.client && !route.client.gone && route.dueAt !== undefined && route.expiresAt === undefined) {
        busyUntil = Math.max(busyUntil, route.dueAt);
      }
    }
    return Math.max(0, now - busyUntil);
  }

  /** Number of execs running for all clients, as the host counts them. */
  get runningExecs(): number {
    this.#sweep(Date.now());
    let n = 0;
    for (const c of this.#clients) n += c.execs.size;
    return n;
  }

  /** Resolves once no exec is running (at once when none is); an exec the guest never ends counts until abandoned. */
  execsDone(): Promise<void> {
    if (this.runningExecs === 0) return Promise.resolve();
    this.#sweeper ??= setInterval(() => this.#execsChanged(), SWEEP_MS);
    return new Promise((resolve) => this.#execsDoneWaiters.push(resolve));
  }

  #execsChanged(): void {
    if (this.#execsDoneWaiters.length > 0 && this.runningExecs === 0) {
      for (const resolve of this.#execsDoneWaiters.splice(0)) resolve();
    }
    if (this.#execsDoneWaiters.length === 0 && this.#sweeper !== undefined) {
      clearInterval(this.#sweeper);
      this.#sweeper = undefined;
    }
  }

  /** Drops routes the host no longer waits for: abandoned execs and cancelled requests past their grace. */
  #sweep(now: number): void {
    for (const [id, route] of this.#routes) {
      if (!route.client) continue;
      if (route.expiresAt === undefined && route.dueAt !== undefined && now >= route.dueAt) {
        // The exec was activity up to its timeout; idle time runs from there.
        this.#lastActivity = Math.max(this.#lastActivity, route.dueAt);
        route.expiresAt = route.dueAt + DEFAULTS.execAbandonGraceMs;
      }
      if (route.expiresAt !== undefined && now >= route.expiresAt) this.#forget(id, route);
    }
  }

  #forget(id: number, route: Route & { client: Client }): void {
    this.#routes.delete(id);
    route.client.execs.delete(id);
    if (route.client.ids.get(route.clientId) === id) route.client.ids.delete(route.clientId);
  }

  /** Refuse new execs from now on (in-flight ones finish). */
  startDraining(): void {
    this.#draining = true;
  }

  /** Sends a request of the runner's own to the agent; resolves with the response header, rejects past its deadline. */
  requestGuest<M extends Method>(
    method: M,
    params: Params<M>,
    timeoutMs: number = DEFAULTS.runnerControlTimeoutMs,
  ): Promise<RpcMessage> {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#routes.delete(id);
        reject(new AgentTimeoutError(method, timeoutMs));
      }, timeoutMs);
      this.#routes.set(id, {
        resolve: (h) => {
          clearTimeout(timer);
          resolve(h);
        },
      });
      this.#guest.write({ jsonrpc: "2.0", id, method, params: params as Record<string, unknown> }).catch((e) => {
        clearTimeout(timer);
        this.#routes.delete(id);
        reject(e);
      });
    });
  }

  /**
   * Sends a notification to every subscribed client (tagged `ref` = its
   * subscribing request's id). A client that does not read gets at most
   * `DEFAULTS.netEventRing` unwritten notifications; later ones are dropped
   * and counted (`dropped` in its next one), so a guest that makes events
   * fast cannot grow the runner's memory through a slow client.
   */
  publish(method: string, params: Record<string, unknown>): void {
    for (const [client, sub] of this.#subscribed) {
      if (sub.unwritten >= DEFAULTS.netEventRing) {
        sub.dropped++;
        continue;
      }
      sub.unwritten++;
      const extra = sub.dropped > 0 ? { dropped: sub.dropped } : {};
      sub.dropped = 0;
      client.writer.write({ jsonrpc: "2.0", method, params: { ...params, ...extra, ref: sub.ref } })
        .catch(() => {})
        .finally(() => sub.unwritten--);
    }
  }

  /** Accepts clients until the listener closes. */
  async serve(listener: Deno.Listener): Promise<void> {
    try {
      for await (const conn of listener) this.#serveClient(conn);
    } catch {
      // listener closed
    }
  }

  async #readGuest(guest: ByteChannel, onReady: (f: Frame) => void): Promise<void> {
    try {
      for await (const f of guest.readable.pipeThrough(new FrameStream())) {
        if (isDecodeError(f)) {
          // Skipped (an oversized one without being buffered) and counted; the guest only hurts itself.
          this.#guestErrors.record(f.error, f.message, f.count);
          continue;
        }
        if (!this.#readyFrame && f.header.method === "ready") {
          this.#takeReady(f, onReady);
          continue;
        }
        if (f.header.method === "boot.config" && typeof f.header.id === "number") {
          this.#answerBootConfig(f.header.id);
          continue;
        }
        this.#fromGuest(f);
      }
    } catch {
      // the VM went away
    }
  }

  /** The agent's one `boot.config` before its ready; after that (or with none to give), a refusal. */
  #answerBootConfig(id: number): void {
    const config = this.#readyFrame ? undefined : this.#bootConfig;
    this.#bootConfig = undefined;
    this.#guest.write(bootConfigAnswer(id, config)).catch(() => {});
  }

  /** Disconnects every client after its pending frames (the runner calls it once the final status is written). */
  async closeClients(): Promise<void> {
    for (const c of this.#clients) {
      await c.writer.flushed();
      closeQuietly(c.writer.conn);
    }
  }

  #toClient(client: Client, header: RpcMessage, attachment?: Uint8Array): void {
    if (client.gone) return;
    // A client that does not read is cut off by its writer's cap (the write closes its connection).
    client.writer.write(header, attachment).catch(() => {});
  }

  #fromGuest(f: Frame) {
    const h = f.header;
    if (h.method !== undefined) {
      const p = (h.params ?? {}) as { ref?: unknown };
      if (typeof p.ref !== "number") return;
      const route = this.#routes.get(p.ref);
      if (!route?.client) return;
      if (h.method === "exec.exit") {
        // An exec with a timeout was activity until it ended (never past its timeout).
        if (route.dueAt !== undefined && route.expiresAt === undefined) {
          this.#lastActivity = Math.max(this.#lastActivity, Math.min(Date.now(), route.dueAt));
        }
        this.#forget(p.ref, route);
        this.#execsChanged();
      }
      this.#toClient(route.client, { ...h, params: { ...h.params, ref: route.clientId } }, f.attachment);
      return;
    }
    if (typeof h.id !== "number") {
      if (h.error) this.#guestErrors.record("agent", `${h.error.code} ${h.error.message}`);
      return;
    }
    const route = this.#routes.get(h.id);
    if (!route) return;
    if (!route.client) {
      this.#routes.delete(h.id);
      route.resolve(h);
      return;
    }
    const isExec = route.method === "exec.start";
    if (!isExec || h.error) this.#forget(h.id, route);
    if (isExec && h.error) this.#execsChanged();
    if (route.method === "fs.open" && typeof h.result?.handle === "number") route.client.handles.add(h.result.handle);
    this.#toClient(route.client, { ...h, id: route.clientId }, f.attachment);
  }

  async #serveClient(conn: Deno.Conn) {
    const client: Client = {
      writer: new FrameWriter(conn, { peer: "a relay client", maxQueuedBytes: DEFAULTS.relayClientQueueBytes }),
      ids: new Map(),
      execs: new Set(),
      handles: new Set(),
      gone: false,
    };
    this.#clients.add(client);
    try {
      const ready = await this.ready;
      await client.writer.write(ready.header, ready.attachment);
      for await (const f of conn.readable.pipeThrough(new FrameStream())) {
        if (isDecodeError(f)) {
          this.#toClient(client, {
            jsonrpc: "2.0",
            id: null,
            error: { code: decodeErrorCode(f.error), message: f.message },
          });
          continue;
        }
        await this.#fromClient(client, f);
      }
    } catch {
      // the client went away
    } finally {
      client.gone = true;
      this.#clients.delete(client);
      this.#release(client);
      this.#execsChanged();
      closeQuietly(conn);
    }
  }

  async #fromClient(client: Client, f: Frame) {
    const h = f.header;
    const reply = (m: Partial<RpcMessage>) => this.#toClient(client, { jsonrpc: "2.0", id: h.id, ...m });
    if (h.method === undefined) return;
    this.#lastActivity = Date.now();
    if (h.id === undefined || h.id === null) {
      // Notifications: rewrite the request id they name.
      const p = { ...(h.params ?? {}) } as { id?: number; ref?: number };
      if (h.method === "$/cancel" && typeof p.id === "number") {
        const id = client.ids.get(p.id);
        if (id === undefined) return;
        this.#cancelled(id);
        p.id = id;
      }
      if (typeof p.ref === "number") p.ref = client.ids.get(p.ref) ?? -1;
      if ((p.ref ?? 0) < 0) return;
      await this.#guest.write({ ...h, params: p as Record<string, unknown> }, f.attachment).catch(() => {});
      return;
    }
    if (h.method.startsWith("runner.")) {
      // Subscribed in the same tick as the handler reads its backlog: no event falls between.
      if (h.method === "runner.netEvents") this.#subscribed.set(client, { ref: h.id, unwritten: 0, dropped: 0 });
      try {
        reply({ result: await this.control(h.method, h.params ?? {}) });
      } catch (e) {
        reply({ error: { code: RPC_ERROR.INTERNAL_ERROR, message: (e as Error).message } });
      }
      return;
    }
    if (h.method === "exec.start" && this.#draining) {
      reply({ error: { code: RPC_ERROR.SHUTTING_DOWN, message: "the sandbox is draining: no new execs" } });
      return;
    }
    const id = this.#nextId++;
    const params = { ...(h.params ?? {}) } as Record<string, unknown>;
    if (typeof params.ref === "number") {
      const mapped = client.ids.get(params.ref);
      if (mapped === undefined) {
        reply({ error: { code: RPC_ERROR.NO_SUCH_PROCESS, message: "no such process" } });
        return;
      }
      params.ref = mapped;
    }
    if (h.method === "fs.close") client.handles.delete(params.handle as number);
    client.ids.set(h.id, id);
    let dueAt: number | undefined;
    if (h.method === "exec.start") {
      client.execs.add(id);
      const t = params.timeoutMs;
      if (typeof t === "number" && Number.isFinite(t) && t >= 0) dueAt = Date.now() + t;
    }
    this.#routes.set(id, { client, clientId: h.id, method: h.method, dueAt });
    await this.#guest.write({ ...h, id, params }, f.attachment).catch(() => {});
  }

  /** A client cancelled relay request `id`: the host waits for the guest's answer (or exec.exit) a grace at most. */
  #cancelled(id: number): void {
    const route = this.#routes.get(id);
    if (route?.client && route.expiresAt === undefined) route.expiresAt = Date.now() + DEFAULTS.execAbandonGraceMs;
    // Cancels are where forgotten requests pile up: sweep here too, not only when someone asks.
    this.#sweep(Date.now());
  }

  #release(client: Client) {
    this.#subscribed.delete(client);
    for (const id of client.execs) {
      this.#guest.write({ jsonrpc: "2.0", method: "$/cancel", params: { id } }).catch(() => {});
    }
    for (const handle of client.handles) {
      const id = this.#nextId++;
      this.#guest.write({ jsonrpc: "2.0", id, method: "fs.close", params: { handle } }).catch(() => {});
    }
    const expiresAt = Date.now() + DEFAULTS.execAbandonGraceMs;
    for (const [id, route] of this.#routes) {
      if (route.client !== client) continue;
      // Exec routes wait a grace for their exec.exit (the write to the gone client is dropped).
      if (client.execs.has(id)) route.expiresAt ??= expiresAt;
      else this.#routes.delete(id);
    }
  }
}

/**
 * The answer to the agent's `boot.config` request `id`: the config, or a
 * refusal when there is none to give (asked twice, or after `ready`).
 *
 * @example
 * ```ts
 * import { bootConfigAnswer } from "./relay.ts";
 * console.log(bootConfigAnswer(0, { hostname: "job" }).result); // { hostname: "job" }
 * ```
 */
export function bootConfigAnswer(id: number, config: Readonly<Record<string, unknown>> | undefined): RpcMessage {
  return config
    ? { jsonrpc: "2.0", id, result: config as Record<string, unknown> }
    : { jsonrpc: "2.0", id, error: { code: RPC_ERROR.INVALID_REQUEST, message: "no boot config to give" } };
}
