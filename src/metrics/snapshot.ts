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
import { NotRunningError } from "../errors.ts";
import { statFields } from "../util/proc.ts";

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
  const fields = statFields(await Deno.readTextFile(`/proc/${pid}/stat`));
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  const rssPages = Number(fields[21]);
  return { cpuSeconds: (utime + stime) / USER_HZ, rssBytes: rssPages * 4096, at };
}

/** The VMM's usage; its /proc entry gone (the VM just ended, its agent's connection not yet closed) is NotRunningError. */
async function vmmUsage(sandbox: string, vmmPid: number): Promise<ProcessUsage> {
  try {
    return await processUsage(vmmPid);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new NotRunningError(sandbox, "stopped", { cause: e });
    throw e;
  }
}

/**
 * Samples sandbox `sandbox`; `previous` (the last sample's host usage) gives the
 * interval for `cpuPercent`; without it the first sample covers a 50 ms window.
 * A VMM that has ended is a {@link NotRunningError}.
 */
export async function sampleMetrics(
  sandbox: string,
  agent: AgentClient,
  vmmPid: number,
  cpus: number,
  memoryMib: number,
  previous: ProcessUsage | undefined,
): Promise<{ metrics: SandboxMetrics; usage: ProcessUsage }> {
  let base = previous;
  if (!base) {
    base = await vmmUsage(sandbox, vmmPid);
    await new Promise((r) => setTimeout(r, 50));
  }
  const [guest, usage, net] = await Promise.all([
    agent.request("metrics", {}).then((r) => r.result),
    vmmUsage(sandbox, vmmPid),
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
