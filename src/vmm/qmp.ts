/**
 * A small QMP client (QEMU's JSON machine protocol) for the commands the
 * snapshot templates need: stop, migrate to a stream, query its progress,
 * quit. qemu connects to a socket the runner listens on (`-chardev
 * socket,server=off` + `-mon mode=control`), like the agent port, so no
 * side polls for a socket.
 *
 * One command at a time; every line is read as qemu writes it, events
 * (lines with `event`) kept for {@link Qmp.event}, the newest
 * {@link QMP_KEPT_EVENTS} of them.
 *
 * @module
 */

import { BackendUnavailableError } from "../errors.ts";
import { closeQuietly } from "../util/close.ts";
import { writeAll } from "../util/bytes.ts";

/** A QMP reply's `return` value. */
export type QmpReturn = Record<string, unknown> | unknown[];

/**
 * Events kept for {@link Qmp.event} at most; the oldest go first. A
 * monitor is read as qemu writes (its socket never fills), and what a guest
 * makes qemu report (RTC_CHANGE, …) while nobody waits stays bounded.
 */
export const QMP_KEPT_EVENTS = 256;

/** The longest line read from qemu's monitor; a longer one ends the connection. */
const QMP_MAX_LINE = 1 << 20;

/** One QMP connection (after the capabilities handshake). */
export class Qmp implements Disposable {
  readonly #conn: Deno.Conn;
  readonly #events: Record<string, unknown>[] = [];
  /** The greeting and command replies not yet taken, in order (qemu answers commands in order). */
  readonly #replies: Record<string, unknown>[] = [];
  #wake: (() => void)[] = [];
  #ended: BackendUnavailableError | undefined;
  /** Commands one at a time, so replies match commands. */
  readonly #commands = new Turns();
  /** {@link Qmp.exclusive} operations one at a time. */
  readonly #exclusive = new Turns();

  private constructor(conn: Deno.Conn) {
    this.#conn = conn;
    this.#read();
  }

  /**
   * Takes over qemu's connection: reads its greeting and leaves
   * capabilities negotiation mode. From here on every line qemu writes is
   * read as it comes.
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
    try {
      await q.#until(() => q.#replies.shift()); // {"QMP": {...}}
      await q.execute("qmp_capabilities");
    } catch (e) {
      q[Symbol.dispose]();
      throw e;
    }
    return q;
  }

  /** Runs one command (after the one in flight); its `return`, or a {@link BackendUnavailableError} with qemu's error text. */
  execute(command: string, args?: Record<string, unknown>): Promise<QmpReturn> {
    return this.#commands.run(async () => {
      const line = JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n";
      // After qemu closed its end, the connection is gone (Deno closes it at EOF): the same typed error as a read.
      if (this.#ended) throw this.#ended;
      await writeAll(this.#conn, new TextEncoder().encode(line)).catch((e) => {
        throw this.#ended ?? closedMonitor(e);
      });
      const msg = await this.#until(() => this.#replies.shift());
      if ("error" in msg) {
        const e = msg.error as { class?: string; desc?: string };
        throw new BackendUnavailableError(
          "qemu",
          `QMP ${command} failed: ${e.class ?? "error"}: ${e.desc ?? ""}`,
          "see the sandbox's runner.log",
        );
      }
      return (msg.return ?? {}) as QmpReturn;
    });
  }

  /**
   * Runs `op` once no other exclusive operation of this monitor runs, and
   * makes the next one wait for it: a save's commands, its events and the
   * resume it ends with belong to it alone (a second save of the same VM
   * meanwhile would fail its capabilities and resume the VM while the first
   * one copies its disk).
   */
  exclusive<T>(op: () => Promise<T>): Promise<T> {
    return this.#exclusive.run(op);
  }

  /**
   * Forgets the events kept so far: a wait that follows is for events of
   * what comes next (a restore's own MIGRATION events must not end a later
   * save's wait). Every event qemu wrote before the reply to an awaited
   * command is among them: lines are read in order.
   */
  dropEvents(): void {
    this.#events.length = 0;
  }

  /** The first event (kept or new) that `match` accepts; the others are kept. */
  event(match: (e: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
    return this.#until(() => {
      const i = this.#events.findIndex(match);
      return i >= 0 ? this.#events.splice(i, 1)[0] : undefined;
    });
  }

  /** How many events are kept now (at most {@link QMP_KEPT_EVENTS}). */
  get keptEvents(): number {
    return this.#events.length;
  }

  /** Reads every line qemu writes until the connection ends. */
  async #read(): Promise<void> {
    let cause: unknown;
    try {
      for await (const line of lines(this.#conn.readable)) {
        const msg = JSON.parse(line);
        if (typeof msg !== "object" || msg === null || Array.isArray(msg)) throw new Error("not a QMP message");
        if ("event" in msg) {
          this.#events.push(msg);
          if (this.#events.length > QMP_KEPT_EVENTS) this.#events.shift();
        } else this.#replies.push(msg);
        this.#notify();
      }
    } catch (e) {
      // A broken line, or the connection failed: the end of this monitor too, said below with why.
      cause = e;
    }
    this.#ended = closedMonitor(cause);
    this.#notify();
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = [];
    for (const r of w) r();
  }

  /** Waits until `take` gives something; rejects once the connection has ended with nothing to give. */
  async #until<T>(take: () => T | undefined): Promise<T> {
    for (;;) {
      const v = take();
      if (v !== undefined) return v;
      if (this.#ended) throw this.#ended;
      await new Promise<void>((r) => this.#wake.push(r));
    }
  }

  /** Closes the connection. */
  [Symbol.dispose](): void {
    closeQuietly(this.#conn);
  }
}

/** Operations in turn: each starts once the one before it has settled. */
class Turns {
  #last: Promise<unknown> = Promise.resolve();
  run<T>(op: () => Promise<T>): Promise<T> {
    const run = this.#last.then(op);
    this.#last = run.catch(() => {});
    return run;
  }
}

function closedMonitor(cause?: unknown): BackendUnavailableError {
  return new BackendUnavailableError(
    "qemu",
    "qemu closed its QMP monitor connection",
    "see the sandbox's runner.log",
    cause === undefined ? undefined : { cause },
  );
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
    if (buf.length > QMP_MAX_LINE) throw new Error(`a QMP line over ${QMP_MAX_LINE} bytes`);
  }
}
