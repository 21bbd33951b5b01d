/**
 * A small QMP client (QEMU's JSON machine protocol) for the commands the
 * snapshot templates need: stop, migrate to a stream, query its progress,
 * quit. qemu connects to a socket the runner listens on (`-chardev
 * socket,server=off` + `-mon mode=control`), like the agent port, so no
 * side polls for a socket.
 *
 * One command at a time; events (lines with `event`) are kept for
 * {@link Qmp.event}.
 *
 * @module
 */

import { BackendUnavailableError } from "../errors.ts";
import { closeQuietly } from "../util/close.ts";
import { writeAll } from "../util/bytes.ts";

/** A QMP reply's `return` value. */
export type QmpReturn = Record<string, unknown> | unknown[];

/** One QMP connection (after the capabilities handshake). */
export class Qmp implements Disposable {
  readonly #conn: Deno.Conn;
  readonly #lines: AsyncIterator<string>;
  readonly #events: Record<string, unknown>[] = [];

  private constructor(conn: Deno.Conn) {
    this.#conn = conn;
    this.#lines = lines(conn.readable)[Symbol.asyncIterator]();
  }

  /**
   * Takes over qemu's connection: reads its greeting and leaves
   * capabilities negotiation mode.
   *
   * @example
   * ```ts ignore
   * // Needs a qemu started with `-chardev socket,id=qmp,path=…,server=off -mon chardev=qmp,mode=control`.
   * import { Qmp } from "./qmp.ts";
   * declare const conn: Deno.Conn;
   * using qmp = await Qmp.open(conn);
   * await qmp.execute("stop");
   * ```
   */
  static async open(conn: Deno.Conn): Promise<Qmp> {
    const q = new Qmp(conn);
    await q.#next(); // {"QMP": {...}}
    await q.execute("qmp_capabilities");
    return q;
  }

  /** Runs one command; its `return`, or a {@link BackendUnavailableError} with qemu's error text. */
  async execute(command: string, args?: Record<string, unknown>): Promise<QmpReturn> {
    const line = JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n";
    await writeAll(this.#conn, new TextEncoder().encode(line));
    for (;;) {
      const msg = await this.#next();
      if ("event" in msg) {
        this.#events.push(msg);
        continue;
      }
      if ("error" in msg) {
        const e = msg.error as { class?: string; desc?: string };
        throw new BackendUnavailableError(
          "qemu",
          `QMP ${command} failed: ${e.class ?? "error"}: ${e.desc ?? ""}`,
          "see the sandbox's runner.log",
        );
      }
      return (msg.return ?? {}) as QmpReturn;
    }
  }

  /**
   * Forgets the events kept so far: a wait that follows is for events of
   * what comes next (a restore's own MIGRATION events must not end a later
   * save's wait).
   */
  dropEvents(): void {
    this.#events.length = 0;
  }

  /** The first event (kept or new) that `match` accepts; the others are kept. */
  async event(match: (e: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
    for (;;) {
      const i = this.#events.findIndex(match);
      if (i >= 0) return this.#events.splice(i, 1)[0];
      const msg = await this.#next();
      if ("event" in msg) this.#events.push(msg);
    }
  }

  async #next(): Promise<Record<string, unknown>> {
    const r = await this.#lines.next();
    if (r.done) {
      throw new BackendUnavailableError(
        "qemu",
        "qemu closed its QMP monitor connection",
        "see the sandbox's runner.log",
      );
    }
    return JSON.parse(r.value) as Record<string, unknown>;
  }

  /** Closes the connection. */
  [Symbol.dispose](): void {
    closeQuietly(this.#conn);
  }
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buf = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) yield line;
    }
  }
}
