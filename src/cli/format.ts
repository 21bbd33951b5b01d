/**
 * How the CLI prints for people: aligned tables with headers (also when
 * empty), sizes in binary units and short durations.
 *
 * @example
 * ```ts
 * import { humanBytes, humanDuration, table } from "./format.ts";
 * console.log(table(["NAME", "SIZE"], [["web", humanBytes(1536)]]));
 * // NAME  SIZE
 * // web   1.5 KiB
 * console.log(humanDuration(90_000)); // 1m30s
 * ```
 *
 * @module
 */

/** Columns padded to their widest cell, two spaces apart; the last column unpadded. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const all = [headers, ...rows];
  const widths = headers.map((_, i) => Math.max(...all.map((r) => [...(r[i] ?? "")].length)));
  return all.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  ").trimEnd())
    .join("\n");
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** `1536` → `1.5 KiB`; bytes below 1 KiB as they are. */
export function humanBytes(n: number): string {
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v < 10 ? v.toFixed(1) : Math.round(v)} ${UNITS[u]}`;
}

/** `90_000` → `1m30s`; under a minute with one decimal below 10 s. */
export function humanDuration(ms: number): string {
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d`;
}

/** How long ago `d` was, as docker says it: `5 seconds ago`, `3 minutes ago`, `2 days ago`. */
export function ago(d: Date, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - d.getTime()) / 1000));
  const say = (n: number, unit: string) => `${n} ${unit}${n === 1 ? "" : "s"} ago`;
  if (s < 60) return say(s, "second");
  if (s < 3600) return say(Math.floor(s / 60), "minute");
  if (s < 86400) return say(Math.floor(s / 3600), "hour");
  return say(Math.floor(s / 86400), "day");
}
