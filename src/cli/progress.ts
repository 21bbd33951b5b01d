/**
 * Pull progress for people. On a terminal: one live line per layer (bytes
 * and rate), redrawn in place. Otherwise: plain lines, one when the pull is
 * resolved, one per finished layer and one at the end — never a line per
 * chunk, so a log stays readable.
 *
 * @example
 * ```ts
 * import { PullProgress } from "./progress.ts";
 * const lines: string[] = [];
 * const p = new PullProgress({ live: false, write: (s) => lines.push(s) });
 * p.event({ phase: "resolved", reference: "r/x:1", manifestDigest: "sha256:ab", layers: 1, totalBytes: 2048 });
 * p.event({ phase: "layer", digest: "sha256:" + "c".repeat(64), downloadedBytes: 2048, totalBytes: 2048, cached: false });
 * console.log(lines.join("")); // pulling r/x:1: 1 layers, 2.0 KiB, then cccccccccccc  2.0 KiB / 2.0 KiB  done
 * if (!lines.join("").includes("2.0 KiB / 2.0 KiB  done")) throw new Error(lines.join(""));
 * ```
 *
 * @module
 */

import type { PullEvent } from "../image/pull.ts";
import { humanBytes } from "./format.ts";

interface Layer {
  readonly short: string;
  done: number;
  total: number;
  cached: boolean;
  finished: boolean;
  readonly started: number;
}

/** Where progress goes, and whether it may redraw (a terminal). */
export interface ProgressSink {
  /** Redraw lines in place (stderr is a terminal). */
  readonly live: boolean;
  /** Writes text as it is (no newline added). */
  readonly write: (text: string) => void;
}

/** The sink for stderr: live when stderr is a terminal. */
export function stderrSink(): ProgressSink {
  const enc = new TextEncoder();
  return { live: Deno.stderr.isTerminal(), write: (s) => Deno.stderr.writeSync(enc.encode(s)) };
}

/** Turns pull events into lines on a {@link ProgressSink}. */
export class PullProgress {
  readonly #sink: ProgressSink;
  readonly #layers = new Map<string, Layer>();
  #drawn = 0;
  /** When the block was last drawn (never, at first: the first event always draws). */
  #lastDraw = -Infinity;

  constructor(sink: ProgressSink) {
    this.#sink = sink;
  }

  /** Feeds one event. */
  event(e: PullEvent): void {
    switch (e.phase) {
      case "resolved":
        this.#line(`pulling ${e.reference}: ${e.layers} layers, ${humanBytes(e.totalBytes)}`);
        break;
      case "layer": {
        let l = this.#layers.get(e.digest);
        if (!l) {
          l = {
            short: e.digest.slice(7, 19),
            done: 0,
            total: e.totalBytes,
            cached: e.cached,
            finished: false,
            started: performance.now(),
          };
          this.#layers.set(e.digest, l);
        }
        l.done = e.downloadedBytes;
        l.total = e.totalBytes;
        l.cached = e.cached;
        const finished = e.cached || e.downloadedBytes >= e.totalBytes;
        const justFinished = finished && !l.finished;
        l.finished = finished;
        if (this.#sink.live) this.#redraw(justFinished);
        else if (justFinished) this.#sink.write(`${this.#describe(l)}\n`);
        break;
      }
      case "done":
        if (this.#sink.live) this.#redraw(true);
        this.#line(`pulled ${e.reference}${e.cached ? " (already in the store)" : ""}: ${e.manifestDigest}`);
        break;
      default:
        break;
    }
  }

  #describe(l: Layer): string {
    if (l.cached) return `${l.short}  in the store`;
    const secs = (performance.now() - l.started) / 1000;
    const rate = secs > 0.05 ? `  ${humanBytes(l.done / secs)}/s` : "";
    return `${l.short}  ${humanBytes(l.done)} / ${humanBytes(l.total)}${l.finished ? "  done" : rate}`;
  }

  /** A line above the live block. */
  #line(text: string): void {
    if (this.#sink.live && this.#drawn > 0) {
      this.#sink.write(`\x1b[${this.#drawn}A\x1b[J`);
      this.#drawn = 0;
    }
    this.#sink.write(`${text}\n`);
    if (this.#sink.live) this.#redraw(true);
  }

  #redraw(force: boolean): void {
    const now = performance.now();
    if (!force && now - this.#lastDraw < 100) return;
    this.#lastDraw = now;
    const lines = [...this.#layers.values()].map((l) => `\x1b[2K${this.#describe(l)}\n`);
    const up = this.#drawn > 0 ? `\x1b[${this.#drawn}A` : "";
    this.#sink.write(up + lines.join(""));
    this.#drawn = lines.length;
  }
}

/** How long a start may take before it is announced. */
const BOOT_QUIET_MS = 1000;

/**
 * Waits for `starting` (a sandbox's create or start); on a terminal, when
 * that takes longer than a moment, a live line counts the seconds and is
 * erased when it is done (nothing is left in the scrollback). Off a
 * terminal it writes nothing: logs and captured stderr stay the command's.
 *
 * @example
 * ```ts
 * import { withStartProgress } from "./progress.ts";
 * const lines: string[] = [];
 * const slow = new Promise<string>((r) => setTimeout(() => r("up"), 1300));
 * console.log(await withStartProgress("job-1", slow, { live: true, write: (s) => lines.push(s) })); // up
 * if (!lines.some((l) => l.includes("starting job-1"))) throw new Error("no progress line");
 * if (lines.at(-1) !== "\r\x1b[2K") throw new Error("the line is not erased");
 * ```
 */
export async function withStartProgress<T>(name: string, starting: Promise<T>, sink: ProgressSink): Promise<T> {
  if (!sink.live) return await starting;
  const t0 = performance.now();
  let shown = false;
  const tick = () => {
    shown = true;
    sink.write(`\r\x1b[2Kstarting ${name} … ${((performance.now() - t0) / 1000).toFixed(1)}s`);
  };
  let ticker: ReturnType<typeof setInterval> | undefined;
  const first = setTimeout(() => {
    tick();
    ticker = setInterval(tick, 200);
  }, BOOT_QUIET_MS);
  try {
    return await starting;
  } finally {
    clearTimeout(first);
    clearInterval(ticker);
    if (shown) sink.write("\r\x1b[2K");
  }
}
