/**
 * `metricsStream`: samples on a fixed schedule (deadlines computed from the
 * start, so drift does not accumulate), pulled one at a time (a slow
 * consumer delays sampling instead of growing a buffer), ending when the
 * sandbox stops, the consumer breaks out, or the signal aborts.
 *
 * @module
 */

import { InvalidConfigError, NotRunningError } from "../errors.ts";

/**
 * Samples `sample()` every `intervalMs`, first one at once. A sample that
 * finds the sandbox stopped (NotRunningError: its VMM gone before its
 * connection closed) ends the stream, as the connection's close does.
 *
 * @example
 * ```ts
 * import { metricsStream } from "./stream.ts";
 * let n = 0;
 * for await (const v of metricsStream(async () => ++n, 10)) if (v >= 3) break;
 * ```
 */
export async function* metricsStream<T>(
  sample: () => Promise<T>,
  intervalMs: number,
  options: { signal?: AbortSignal; closed?: Promise<unknown> } = {},
): AsyncGenerator<T, void, undefined> {
  if (typeof intervalMs !== "number" || !Number.isFinite(intervalMs) || intervalMs <= 0) {
    throw new InvalidConfigError("intervalMs", `must be a positive number of milliseconds, got ${intervalMs}`);
  }
  // One stop signal for the stream's life; each wait adds and removes one listener.
  const stopper = new AbortController();
  const stop = () => stopper.abort();
  options.signal?.addEventListener("abort", stop, { once: true });
  options.closed?.then(stop, stop);
  const start = performance.now();
  try {
    for (let i = 0; !stopper.signal.aborted; i++) {
      const wait = start + i * intervalMs - performance.now();
      if (wait > 0) {
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(t);
            stopper.signal.removeEventListener("abort", done);
            resolve();
          };
          const t = setTimeout(done, wait);
          stopper.signal.addEventListener("abort", done, { once: true });
        });
        if (stopper.signal.aborted) return;
      }
      let value: T;
      try {
        value = await sample();
      } catch (e) {
        if (stopper.signal.aborted || e instanceof NotRunningError) return;
        throw e;
      }
      yield value;
    }
  } finally {
    options.signal?.removeEventListener("abort", stop);
  }
}
