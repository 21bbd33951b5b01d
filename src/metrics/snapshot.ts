/**
 * Metrics snapshots: host-side figures of the VMM process (CPU time → CPU
 * percent per vCPU, RSS) and of the network engine (netd's byte counters,
 * through the runner's `runner.netStats`: the guest cannot inflate or hide
 * them) joined with the agent's guest figures (memory, disk counters,
 * uptime).
 *
 * @module
 */

import type { AgentClient } from "../agent/client.ts";
import { hasEnded, processAlive, statFields } from "../util/proc.ts";

/** One sample of a sandbox's resource use. Counters are cumulative since boot. */
export interface SandboxMetrics {
  /** CPU use of the VM since the previous sample: 100 per busy vCPU (0 to 100 × vCPUs). */
  readonly cpuPercent: number;
  /** Guest memory in use (MemTotal − MemAvailable). */
  readonly memoryBytes: number;
  /** The sandbox's configured memory. */
  readonly memoryLimitBytes: number;
  /** Host memory of the VMM process (RSS). */
  readonly hostRssBytes: number;
  /** Bytes read from the guest's virtio disks. */
  readonly diskReadBytes: number;
  /** Bytes written to the guest's virtio disks. */
  readonly diskWriteBytes: number;
  /** Ethernet bytes the network engine delivered to the guest (host-counted; 0 without a network). */
  readonly netRxBytes: number;
  /** Ethernet bytes the guest sent to the network engine (host-counted; 0 without a network). */
  readonly netTxBytes: number;
  /** When the sample was taken (host clock). */
  readonly timestamp: Date;
  /** Milliseconds since the guest booted. */
  readonly uptimeMs: number;
}

/** Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux x86). */
const USER_HZ = 100;

/** CPU seconds and RSS of a host process, read from /proc. */
export interface ProcessUsage {
  readonly cpuSeconds: number;
  readonly rssBytes: number;
  readonly at: number;
}

/**
 * Reads a host process's CPU time and RSS.
 *
 * @example
 * ```ts
 * import { processUsage } from "./snapshot.ts";
 * console.log(await processUsage(Deno.pid)); // e.g. { cpuSeconds: 22.17, rssBytes: 178737152, at: 68.8 }
 * ```
 */
export async function processUsage(pid: number): Promise<ProcessUsage> {
  const at = performance.now();
  return usageOf(statFields(await Deno.readTextFile(`/proc/${pid}/stat`)), at);
}

/** CPU seconds and RSS from the fields of a /proc/PID/stat line (after the command). */
function usageOf(fields: readonly string[], at: number): ProcessUsage {
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  const rssPages = Number(fields[21]);
  return { cpuSeconds: (utime + stime) / USER_HZ, rssBytes: rssPages * 4096, at };
}

/**
 * The VMM's usage. A VMM that has ended while its agent's connection is
 * still open (a VM that just stopped or crashed) is `gone(cause)`, the
 * caller's typed error: its /proc entry missing (NotFound), reaped between
 * the open and the read (ESRCH), or a zombie whose stat still reads but
 * counts nothing.
 */
async function vmmUsage(vmmPid: number, gone: (cause: unknown) => Promise<Error>): Promise<ProcessUsage> {
  const at = performance.now();
  let stat: string;
  try {
    stat = await Deno.readTextFile(`/proc/${vmmPid}/stat`);
  } catch (e) {
    throw processAlive(vmmPid) ? e : await gone(e);
  }
  const fields = statFields(stat);
  if (hasEnded(fields)) throw await gone(new Error(`the VMM (pid ${vmmPid}) has exited`));
  return usageOf(fields, at);
}

/**
 * Samples a sandbox; `previous` (the last sample's host usage) gives the
 * interval for `cpuPercent`; without it the first sample covers a 50 ms window.
 * A VMM that has ended is `gone(cause)` (the caller's NotRunningError, with the
 * sandbox's real status).
 */
export async function sampleMetrics(
  agent: AgentClient,
  vmmPid: number,
  cpus: number,
  memoryMib: number,
  previous: ProcessUsage | undefined,
  gone: (cause: unknown) => Promise<Error>,
): Promise<{ metrics: SandboxMetrics; usage: ProcessUsage }> {
  let base = previous;
  if (!base) {
    base = await vmmUsage(vmmPid, gone);
    await new Promise((r) => setTimeout(r, 50));
  }
  const [guest, usage, net] = await Promise.all([
    agent.request("metrics", {}).then((r) => r.result),
    vmmUsage(vmmPid, gone),
    agent.request("runner.netStats", {})
      .then((r) => r.result.stats),
  ]);
  const wallSeconds = Math.max((usage.at - base.at) / 1000, 1e-3);
  const cpuPercent = Math.max(0, Math.min(100 * cpus, ((usage.cpuSeconds - base.cpuSeconds) / wallSeconds) * 100));
  return {
    usage,
    metrics: {
      cpuPercent,
      memoryBytes: guest.memUsedBytes,
      memoryLimitBytes: memoryMib * 1024 * 1024,
      hostRssBytes: usage.rssBytes,
      diskReadBytes: guest.diskReadBytes,
      diskWriteBytes: guest.diskWriteBytes,
      netRxBytes: net?.rxBytes ?? 0,
      netTxBytes: net?.txBytes ?? 0,
      timestamp: new Date(),
      uptimeMs: guest.uptimeMs,
    },
  };
}
