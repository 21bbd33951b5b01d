/**
 * The guest's own truth, read from its /proc with busybox sh builtins (the
 * Debian busybox-static root has no pgrep or pkill): which processes run,
 * how many processors and how much memory the guest kernel sees.
 *
 * @module
 */

import type { Sandbox } from "../../mod.ts";

// Matched inside the shell (no grep whose own argv would hold the pattern); zombies count as gone.
const PIDS_SCRIPT = `for d in /proc/[0-9]*; do
  c=$(tr '\\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
  [ "$c" = "$WANT " ] || continue
  read -r st < "$d/stat" 2>/dev/null || continue
  case "$st" in *") Z "*) continue ;; esac
  echo "\${d#/proc/}"
done`;

/**
 * Pids of live guest processes whose command line is exactly `argv`
 * (e.g. `["sleep", "30"]`), from the guest's /proc.
 *
 * @example
 * ```ts
 * import { guestPids } from "./guest.ts";
 * // const pids = await guestPids(sb, ["sleep", "30"]);
 * ```
 */
export async function guestPids(sb: Sandbox, argv: readonly string[]): Promise<number[]> {
  const out = await sb.execWith("sh", { args: ["-c", PIDS_SCRIPT], env: { WANT: argv.join(" ") } });
  if (out.code !== 0) throw new Error(`listing guest processes failed: ${out.stderr}`);
  return out.stdout.split("\n").filter((l) => l !== "").map(Number);
}

/**
 * Polls the guest until `pred` holds for the pids of `argv` or `ms` pass;
 * returns the last pids seen.
 *
 * @example
 * ```ts
 * import { waitGuestPids } from "./guest.ts";
 * // const left = await waitGuestPids(sb, ["sleep", "30"], (p) => p.length === 0);
 * ```
 */
export async function waitGuestPids(
  sb: Sandbox,
  argv: readonly string[],
  pred: (pids: number[]) => boolean,
  ms = 10_000,
): Promise<number[]> {
  const end = Date.now() + ms;
  let pids = await guestPids(sb, argv);
  while (!pred(pids) && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    pids = await guestPids(sb, argv);
  }
  return pids;
}

/**
 * What the guest kernel itself reports: processors in /proc/cpuinfo, and
 * MemTotal / MemAvailable from /proc/meminfo, in bytes.
 *
 * @example
 * ```ts
 * import { guestResources } from "./guest.ts";
 * // const { cpus, memTotalBytes } = await guestResources(sb);
 * ```
 */
export async function guestResources(
  sb: Sandbox,
): Promise<{ cpus: number; memTotalBytes: number; memAvailableBytes: number }> {
  const cpuinfo = (await sb.exec("cat", ["/proc/cpuinfo"])).stdout;
  const meminfo = (await sb.exec("cat", ["/proc/meminfo"])).stdout;
  const kib = (key: string) => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB$`, "m").exec(meminfo);
    if (!m) throw new Error(`no ${key} in the guest's /proc/meminfo:\n${meminfo}`);
    return Number(m[1]) * 1024;
  };
  return {
    cpus: cpuinfo.split("\n").filter((l) => /^processor\s*:/.test(l)).length,
    memTotalBytes: kib("MemTotal"),
    memAvailableBytes: kib("MemAvailable"),
  };
}
