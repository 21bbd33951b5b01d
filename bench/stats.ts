/**
 * The benchmarks' one statistic: a true median.
 *
 * @module
 */

/**
 * The median of `xs`: the middle value, or the mean of the two middle ones
 * when there is an even number of them.
 *
 * @example
 * ```ts
 * import { median } from "./stats.ts";
 * console.log(median([3, 1, 2]), median([4, 1, 3, 2])); // 2 2.5
 * ```
 */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new RangeError("the median of no values");
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}
