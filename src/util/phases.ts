/**
 * Boot phase timing: a {@link PhaseClock} cuts the time since its origin
 * into contiguous named phases, each ending at a mark. A sandbox's boot is
 * timed by three such clocks in turn (the caller's, the runner's, and the
 * guest's own uptime figures the runner turns into host times); they share
 * the host's wall clock (epoch milliseconds with sub-millisecond precision),
 * so one process can continue another's phases.
 *
 * @module
 */

/** One phase of a boot: `startMs` after the clock's origin, lasting `durationMs`. */
export interface BootPhase {
  /** What ran, `<part>.<step>`: `host.prepare`, `runner.start`, `vmm.start`, `guest.kernel`, … */
  readonly name: string;
  /** Milliseconds from the clock's origin (the `create()` call) to the phase's start. */
  readonly startMs: number;
  /** How long it took, ms (phases are contiguous: the next one starts where this one ends). */
  readonly durationMs: number;
}

/**
 * Now, as epoch milliseconds with sub-millisecond precision (the same clock
 * in every process of the host).
 *
 * @example
 * ```ts
 * import { epochMs } from "./phases.ts";
 * console.log(Math.abs(epochMs() - Date.now()) < 50); // true
 * ```
 */
export function epochMs(): number {
  return performance.timeOrigin + performance.now();
}

/** Milliseconds rounded to a tenth. */
function tenth(ms: number): number {
  return Math.round(ms * 10) / 10;
}

/**
 * Contiguous phases from an origin: each {@link PhaseClock.mark} ends the
 * open phase. A mark earlier than the previous one (another process's clock
 * read a hair apart, a guest's estimate) is moved up to it, so phases never
 * overlap and always add up to the time from the origin to the last mark.
 *
 * @example
 * ```ts
 * import { PhaseClock } from "./phases.ts";
 * const clock = new PhaseClock(1000);
 * clock.mark("host.prepare", 1040);
 * clock.mark("runner.start", 1086);
 * console.log(clock.phases); // [{ name: "host.prepare", startMs: 0, durationMs: 40 }, { name: "runner.start", startMs: 40, durationMs: 46 }]
 * console.log(clock.totalMs); // 86
 * ```
 */
export class PhaseClock {
  readonly #phases: BootPhase[] = [];
  #last: number;

  /** A clock whose first phase starts at `originMs` (epoch milliseconds, default now). */
  constructor(readonly originMs: number = epochMs()) {
    this.#last = originMs;
  }

  /** Ends the open phase as `name` at `atMs` (epoch milliseconds, default now); returns its duration. */
  mark(name: string, atMs: number = epochMs()): number {
    const end = Math.max(atMs, this.#last);
    const phase = { name, startMs: this.#last - this.originMs, durationMs: end - this.#last };
    this.#phases.push(phase);
    this.#last = end;
    return phase.durationMs;
  }

  /**
   * Continues with phases another clock measured from `originMs` (epoch
   * milliseconds): each ends here where it ended there.
   */
  adopt(phases: readonly BootPhase[], originMs: number): void {
    for (const p of phases) this.mark(p.name, originMs + p.startMs + p.durationMs);
  }

  /** When the last phase ended (epoch milliseconds; the origin before any mark). */
  get lastMs(): number {
    return this.#last;
  }

  /** The time from the origin to the last mark. */
  get totalMs(): number {
    return this.#last - this.originMs;
  }

  /** The phases so far (a frozen copy, times rounded to a tenth of a millisecond). */
  get phases(): readonly BootPhase[] {
    // Rounded boundaries, so rounded phases stay contiguous.
    return Object.freeze(this.#phases.map((p) => {
      const start = tenth(p.startMs);
      return Object.freeze({
        name: p.name,
        startMs: start,
        durationMs: tenth(tenth(p.startMs + p.durationMs) - start),
      });
    }));
  }

  /** One line for a log: `a 12 ms, b 30 ms; total 42 ms`. */
  toString(): string {
    const parts = this.#phases.map((p) => `${p.name} ${Math.round(p.durationMs)} ms`);
    return `${parts.join(", ")}; total ${Math.round(this.totalMs)} ms`;
  }
}
