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
 * the guest stream; memory stays bounded because exec output is windowed by
 * the agent and file reads are pulled by each client.
 *
 * @module
 */

import { type Frame, FrameDecoder, isDecodeError, type RpcMessage } from "../agent/frame.ts";
import { FrameWriter } from "../agent/writer.ts";
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
}

/** Where a relay id's answers go: a client's request, or the runner's own. */
type Route =
  | { readonly client: Client; readonly clientId: number; readonly method: string }
  | { readonly client?: undefined; readonly resolve: (h: RpcMessage) => void };

const ERR_SHUTTING_DOWN = -32040;

/**
 * The relay between a guest stream and host clients.
 *
 * @example
 * ```ts
 * import { Relay } from "./relay.ts";
 * // const relay = new Relay(vm.agent, async () => ({}));
 * // await relay.ready; relay.serve(Deno.listen({ transport: "unix", path: "agent.sock" }));
 * ```
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
  #lastActivity = Date.now();
  /** Callers of {@link execsDone} waiting for the last exec to end. */
  readonly #execsDoneWaiters: (() => void)[] = [];
  /** Resolves with the agent's ready frame. */
  readonly ready: Promise<Frame>;
  /** Resolves when the guest stream ends. */
  readonly guestClosed: Promise<void>;
  /** Broken frames seen from the guest (skipped). */
  readonly guestErrors: string[] = [];

  constructor(guest: Deno.Conn, readonly control: ControlHandler) {
    this.#guest = new FrameWriter(guest);
    let onReady!: (f: Frame) => void;
    this.ready = new Promise((r) => (onReady = r));
    this.guestClosed = this.#readGuest(guest, onReady);
  }

  /** Milliseconds since the last client request, or 0 while an exec runs. */
  get idleMs(): number {
    for (const c of this.#clients) if (c.execs.size > 0) return 0;
    return Date.now() - this.#lastActivity;
  }

  /** Number of execs running for all clients. */
  get runningExecs(): number {
    let n = 0;
    for (const c of this.#clients) n += c.execs.size;
    return n;
  }

  /** Resolves once no exec is running (at once when none is). */
  execsDone(): Promise<void> {
    if (this.runningExecs === 0) return Promise.resolve();
    return new Promise((resolve) => this.#execsDoneWaiters.push(resolve));
  }

  #execsChanged(): void {
    if (this.#execsDoneWaiters.length > 0 && this.runningExecs === 0) {
      for (const resolve of this.#execsDoneWaiters.splice(0)) resolve();
    }
  }

  /** Refuse new execs from now on (in-flight ones finish). */
  startDraining(): void {
    this.#draining = true;
  }

  /** Sends a request of the runner's own to the agent; resolves with the response header. */
  requestGuest(method: string, params: Record<string, unknown>): Promise<RpcMessage> {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#routes.set(id, { resolve });
      this.#guest.write({ jsonrpc: "2.0", id, method, params }).catch(reject);
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

  async #readGuest(guest: Deno.Conn, onReady: (f: Frame) => void): Promise<void> {
    const dec = new FrameDecoder();
    try {
      for await (const chunk of guest.readable) {
        dec.push(chunk);
        for (let f = dec.next(); f; f = dec.next()) {
          if (isDecodeError(f)) {
            this.guestErrors.push(`${f.error}: ${f.message}`);
            continue;
          }
          if (!this.#readyFrame && f.header.method === "ready") {
            this.#readyFrame = f;
            onReady(f);
            continue;
          }
          this.#fromGuest(f);
        }
      }
    } catch {
      // the VM went away
    }
  }

  /** Disconnects every client after its pending frames (the runner calls it once the final status is written). */
  async closeClients(): Promise<void> {
    for (const c of this.#clients) {
      await c.writer.flushed();
      closeQuietly(c.writer.conn);
    }
  }

  #fromGuest(f: Frame) {
    const h = f.header;
    if (h.method !== undefined) {
      const p = (h.params ?? {}) as { ref?: number };
      if (typeof p.ref !== "number") return;
      const route = this.#routes.get(p.ref);
      if (!route?.client) return;
      if (h.method === "exec.exit") {
        this.#routes.delete(p.ref);
        route.client.execs.delete(p.ref);
        route.client.ids.delete(route.clientId);
        this.#execsChanged();
      }
      route.client.writer.write({ ...h, params: { ...h.params, ref: route.clientId } }, f.attachment).catch(() => {});
      return;
    }
    if (typeof h.id !== "number") {
      if (h.error) this.guestErrors.push(`agent: ${h.error.code} ${h.error.message}`);
      return;
    }
    const route = this.#routes.get(h.id);
    if (!route) return;
    if (!route.client) {
      this.#routes.delete(h.id);
      route.resolve(h);
      return;
    }
    const keep = route.method === "exec.start" && !h.error;
    if (!keep) {
      this.#routes.delete(h.id);
      route.client.ids.delete(route.clientId);
    }
    if (route.method === "exec.start" && h.error) {
      route.client.execs.delete(h.id);
      this.#execsChanged();
    }
    if (route.method === "fs.open" && h.result) route.client.handles.add(h.result.handle as number);
    route.client.writer.write({ ...h, id: route.clientId }, f.attachment).catch(() => {});
  }

  async #serveClient(conn: Deno.Conn) {
    const client: Client = { writer: new FrameWriter(conn), ids: new Map(), execs: new Set(), handles: new Set() };
    this.#clients.add(client);
    try {
      const ready = await this.ready;
      await client.writer.write(ready.header, ready.attachment);
      const dec = new FrameDecoder();
      for await (const chunk of conn.readable) {
        dec.push(chunk);
        for (let f = dec.next(); f; f = dec.next()) {
          if (isDecodeError(f)) {
            client.writer.write({
              jsonrpc: "2.0",
              id: null,
              error: { code: f.error === "parse_error" ? -32700 : -32600, message: f.message },
            })
              .catch(() => {});
            continue;
          }
          await this.#fromClient(client, f);
        }
      }
    } catch {
      // the client went away
    } finally {
      this.#clients.delete(client);
      this.#release(client);
      this.#execsChanged();
      closeQuietly(conn);
    }
  }

  async #fromClient(client: Client, f: Frame) {
    const h = f.header;
    const reply = (m: Partial<RpcMessage>) => client.writer.write({ jsonrpc: "2.0", id: h.id, ...m }).catch(() => {});
    if (h.method === undefined) return;
    this.#lastActivity = Date.now();
    if (h.id === undefined || h.id === null) {
      // Notifications: rewrite the request id they name.
      const p = { ...(h.params ?? {}) } as { id?: number; ref?: number };
      if (h.method === "$/cancel" && typeof p.id === "number") p.id = client.ids.get(p.id) ?? -1;
      if (typeof p.ref === "number") p.ref = client.ids.get(p.ref) ?? -1;
      if ((p.id ?? 0) < 0 || (p.ref ?? 0) < 0) return;
      await this.#guest.write({ ...h, params: p as Record<string, unknown> }, f.attachment).catch(() => {});
      return;
    }
    if (h.method.startsWith("runner.")) {
      // Subscribed in the same tick as the handler reads its backlog: no event falls between.
      if (h.method === "runner.netEvents") this.#subscribed.set(client, { ref: h.id, unwritten: 0, dropped: 0 });
      try {
        reply({ result: await this.control(h.method, h.params ?? {}) });
      } catch (e) {
        reply({ error: { code: -32603, message: (e as Error).message } });
      }
      return;
    }
    if (h.method === "exec.start" && this.#draining) {
      reply({ error: { code: ERR_SHUTTING_DOWN, message: "the sandbox is draining: no new execs" } });
      return;
    }
    const id = this.#nextId++;
    const params = { ...(h.params ?? {}) } as Record<string, unknown>;
    if (typeof params.ref === "number") {
      const mapped = client.ids.get(params.ref);
      if (mapped === undefined) {
        reply({ error: { code: -32011, message: "no such process" } });
        return;
      }
      params.ref = mapped;
    }
    if (h.method === "fs.close") client.handles.delete(params.handle as number);
    client.ids.set(h.id, id);
    if (h.method === "exec.start") client.execs.add(id);
    this.#routes.set(id, { client, clientId: h.id, method: h.method });
    await this.#guest.write({ ...h, id, params }, f.attachment).catch(() => {});
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
    for (const [id, route] of this.#routes) {
      if (route.client === client && !client.execs.has(id)) this.#routes.delete(id);
    }
    // Exec routes stay until their exec.exit arrives (the write to the gone client is dropped).
  }
}
