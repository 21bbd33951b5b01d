/**
 * The backend interface. The library turns a `SandboxConfig` into a
 * {@link VmSpec} (host paths resolved: kernel, disks, shared directories, the
 * agent's boot config) and writes it into the sandbox directory; the runner
 * reads it and asks a backend to boot it. A backend returns a running
 * {@link Vm} whose agent stream is a byte connection to the guest agent.
 *
 * @module
 */

import type { NetdConfig } from "../net/engine.ts";
import type { BackendKind } from "./detect.ts";

/** The root filesystem as the VM sees it. */
export type VmRoot =
  /**
   * A host directory (virtiofs): with `upper`, shared read-only and joined
   * with this sandbox's ext4 upper by overlayfs in the guest; without, shared
   * read-write (the caller asked for a shared writable root).
   */
  | { readonly kind: "dir"; readonly path: string; readonly upper?: string }
  /** An EROFS lower (read-only, shared) and this sandbox's ext4 upper, joined by overlayfs in the guest. */
  | { readonly kind: "overlay"; readonly lower: string; readonly upper: string }
  /** A disk image as the root block device. */
  | { readonly kind: "disk"; readonly path: string; readonly format: "raw" | "qcow2"; readonly fstype: string };

/** A host directory shared into the guest. */
export interface VmShare {
  readonly tag: string;
  readonly hostPath: string;
  /** Where the guest mounts it. */
  readonly guestPath: string;
  readonly readonly: boolean;
}

/** Everything a backend needs to boot one sandbox. Written as `vm.json`. */
/** Log verbosity of a VM: the VMM's logger and the guest kernel's console level. */
export type VmLogLevel = "error" | "warn" | "info" | "debug" | "trace";

/** The guest kernel's console `loglevel=` for each level (messages below it are printed). */
export const KERNEL_LOGLEVEL: Readonly<Record<VmLogLevel, number>> = { error: 3, warn: 4, info: 6, debug: 7, trace: 8 };

export interface VmSpec {
  readonly name: string;
  readonly backend: BackendKind;
  readonly cpus: number;
  readonly memoryMib: number;
  /** The sandbox directory (sockets, logs, disks). */
  readonly dir: string;
  readonly root: VmRoot;
  readonly shares: readonly VmShare[];
  /** Published ports (network mode `user` only; netd listens for them, see {@link VmSpec.netd}). */
  readonly ports: readonly { readonly host: number; readonly guest: number; readonly protocol: "tcp" | "udp" }[];
  readonly network: "none" | "user";
  /**
   * netd's configuration line (netd/PROTOCOL.md) for a networked sandbox:
   * the runner starts netd with it before the VMM. Never holds a secret
   * value (a sandbox with secrets is refused before a spec is made).
   */
  readonly netd?: NetdConfig;
  /** The agent's boot config (agent/PROTOCOL.md, "Boot config"), minus what the backend adds. */
  readonly boot: Record<string, unknown>;
  /** Give up when the agent is not ready after this long. */
  readonly bootTimeoutMs: number;
  /** Stop after this long without exec or fs calls (host-enforced). */
  readonly idleTimeoutSecs?: number;
  /** Stop this long after boot (host-enforced). */
  readonly maxDurationSecs?: number;
  /** How much the VMM and the guest kernel log (default `warn`). */
  readonly logLevel?: VmLogLevel;
  /** Kernel modules the guest loads besides the usual ones (qemu; e.g. kvm-amd for a nested host). */
  readonly extraModules?: readonly string[];
  /**
   * Host programs by name, resolved by the caller while it checked the
   * prerequisites; a backend given none checks and resolves them itself.
   */
  readonly programs?: Readonly<Record<string, string>>;
}

/** Files of a sandbox directory. */
export interface SandboxPaths {
  readonly dir: string;
  readonly vmSpec: string;
  /** The guest console as the host keeps it (bounded: see src/vmm/console.ts); `console.log.1` is the previous part. */
  readonly consoleLog: string;
  /** The FIFO the VMM writes the guest console into; the runner drains it into {@link consoleLog}. */
  readonly consoleFifo: string;
  readonly runnerLog: string;
  /** The runner's status, written by it alone (src/vmm/status_file.ts); the host merges it into the sandbox's row. */
  readonly statusFile: string;
  /** The runner's relay: host clients connect here. */
  readonly agentSocket: string;
  /** Held by the runner for its whole life. */
  readonly runnerLock: string;
  /** Held briefly while the sandbox is created, started or removed. */
  readonly nameLock: string;
  readonly upperDisk: string;
  /** The VMM's end of the agent channel: the runner listens, the VMM connects (per boot). */
  readonly vmSocket: string;
  /** qemu: this boot's initramfs (the shared one plus its boot config). */
  readonly initrd: string;
  /** libkrun: the virtiofs root of a guest whose real root is on disks. */
  readonly trampoline: string;
  /** netd's 0700 directory. */
  readonly netDir: string;
  /** netd's frame socket: the VMM's virtio-net backend connects here (per boot). */
  readonly netSocket: string;
  /** libkrun: the share filter's program, which bwrap loads for the runner (per boot). */
  readonly seccompFilter: string;
  /** libkrun: bwrap's info (the contained runner's host pid; per boot). */
  readonly containInfo: string;
  /** qemu: the vhost-user socket of the virtiofsd serving share `tag` (per boot). */
  fsSocket(tag: string): string;
}

/**
 * The files of a sandbox directory.
 *
 * @example
 * ```ts
 * import { sandboxPaths } from "./backend.ts";
 * console.log(sandboxPaths("/root/.krunbox/sandboxes/job-1").agentSocket);
 * ```
 */
export function sandboxPaths(dir: string): SandboxPaths {
  return {
    dir,
    vmSpec: `${dir}/vm.json`,
    consoleLog: `${dir}/console.log`,
    consoleFifo: `${dir}/console.fifo`,
    runnerLog: `${dir}/runner.log`,
    statusFile: `${dir}/status.json`,
    agentSocket: `${dir}/agent.sock`,
    runnerLock: `${dir}/runner.lock`,
    nameLock: `${dir}.lock`,
    upperDisk: `${dir}/upper.ext4`,
    vmSocket: `${dir}/vm.sock`,
    initrd: `${dir}/initrd.img`,
    trampoline: `${dir}/trampoline`,
    netDir: `${dir}/net`,
    netSocket: `${dir}/net/net.sock`,
    seccompFilter: `${dir}/seccomp.bpf`,
    containInfo: `${dir}/contain.json`,
    fsSocket: (tag) => `${dir}/fs-${tag.replaceAll("/", "_")}.sock`,
  };
}

/** How a VM process ended. */
export interface VmExit {
  /** True when the VMM exited on its own accord (guest poweroff or guest crash). */
  readonly code: number | null;
  readonly signal: string | null;
}

/** A booting or running VM. */
export interface Vm {
  /** The byte stream to the guest agent (the first frame will be `ready`). */
  readonly agent: Deno.Conn;
  /** Resolves when the VMM has exited. */
  readonly exited: Promise<VmExit>;
  /** The host process that runs the guest (for CPU and memory figures). */
  readonly vmmPid: number;
  /**
   * The VMM runs inside this (the runner's) process and ends it with the
   * guest (libkrun): a terminal status must be written before a shutdown.
   */
  readonly inProcess?: boolean;
  /** Kills the VMM and its helpers at once. */
  kill(): void;
  /** Called once the guest agent is ready: per-boot files the VMM has loaded can go. */
  booted?(): Promise<void>;
}

/** A backend boots a spec. */
export interface Backend {
  readonly kind: BackendKind;
  /** Boots the VM; resolves once the agent stream is connected (not yet ready). */
  boot(spec: VmSpec, signal: AbortSignal): Promise<Vm>;
}
