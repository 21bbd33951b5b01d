/**
 * The backend interface. The library turns a `SandboxConfig` into a
 * {@link VmSpec} (host paths resolved: kernel, disks, shared directories, the
 * agent's boot config) and writes it into the sandbox directory; the runner
 * reads it and asks a backend to boot it. A backend returns a running
 * {@link Vm} whose agent stream is a byte connection to the guest agent.
 *
 * @module
 */

import type { ByteChannel } from "../agent/writer.ts";
import type { NetdConfig } from "../net/engine.ts";
import type { SecretConfig } from "../net/secrets.ts";
import type { PhaseClock } from "../util/phases.ts";
import type { BootConfig } from "./boot_config.ts";
import type { BackendKind, HostVirtualization } from "./detect.ts";
import type { RunnerLog } from "./runner_log.ts";
import type { Qmp } from "./qmp.ts";

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
   * value: its `secrets` is empty here, and the runner fills it in memory
   * from {@link VmSpec.secrets} and the values its starter writes on its
   * stdin.
   */
  readonly netd?: NetdConfig;
  /** The sandbox's secrets without their values (env, placeholder, hosts): what the runner pairs with the values. */
  readonly secrets?: readonly SecretConfig[];
  /**
   * netd's per-sandbox CA (its `ready` line's `caPem`), for the guest to
   * trust: set by the runner in memory after netd is ready, never in `vm.json`.
   */
  readonly caPem?: string;
  /**
   * The defaults of an exec that names no user or directory (the sandbox's
   * `user` and `workdir`), for a client that does not open the store: the
   * native `krunbox` front door (agent/src/bin/krunbox/) reads them here.
   */
  readonly execDefaults?: { readonly user?: string | number; readonly workdir?: string };
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
  /** The host's virtualization as the caller probed it (choosing the backend); a backend given none probes. */
  readonly host?: HostVirtualization;
  /**
   * True when this is the sandbox's first boot (create): its upper disk is
   * still empty, so it may be restored from a snapshot template instead
   * (src/vmm/template.ts). A later start boots its own disk cold.
   */
  readonly firstBoot?: boolean;
  /** qemu: a QMP monitor for the runner ({@link Vm.monitor}; snapshot templates). */
  readonly qmp?: boolean;
  /** qemu: a first boot restored from this snapshot (src/vmm/template.ts) instead of a template. */
  readonly fromSnapshot?: string;
  /**
   * qemu: restore the VM state from this migration stream file instead of
   * booting (the file open read-only on descriptor 3 of qemu's start, and
   * `migrate-incoming fd:3` over QMP: qemu reads it itself, with no `cat`
   * and pipe between).
   */
  readonly incomingFile?: string;
  /**
   * qemu, an OCI image root: the guest RAM is this file instead of
   * anonymous memory. `share`: a template's own boot, whose RAM the file
   * becomes (a migration with `x-ignore-shared` then saves the devices
   * only); else a private copy-on-write mapping of a template's RAM, which
   * the restored guest's writes never reach (src/vmm/template.ts).
   */
  readonly ramFile?: { readonly path: string; readonly share: boolean };
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
  /** libkrun: the VMM's end of the agent channel (the runner listens, the VMM connects; per boot). qemu uses its stdio. */
  readonly vmSocket: string;
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
  /** qemu: the QMP monitor socket (the runner listens, qemu connects; per boot, templates only). */
  readonly qmpSocket: string;
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
    trampoline: `${dir}/trampoline`,
    netDir: `${dir}/net`,
    netSocket: `${dir}/net/net.sock`,
    seccompFilter: `${dir}/seccomp.bpf`,
    containInfo: `${dir}/contain.json`,
    qmpSocket: `${dir}/qmp.sock`,
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
  readonly agent: ByteChannel;
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
  /**
   * This boot's config, for an agent that asks for it over its channel
   * (`boot.config`; qemu, whose shared initramfs carries only a base
   * config). A backend that hands the config over otherwise has none here.
   */
  readonly bootConfig?: BootConfig;
  /** qemu with {@link VmSpec.qmp}: its QMP monitor, opened (a restore's has started loading its stream). */
  readonly monitor?: Qmp;
  /**
   * How the guest came up: restored from a snapshot template (the agent is
   * past its `ready` and says nothing until asked: the runner configures
   * it), or booted cold and why (no template for this root or backend).
   */
  readonly start?: VmStart;
}

/** How a VM came up (the ready event's `start`). */
export type VmStart =
  | {
    readonly mode: "restored";
    /** The template's key (src/vmm/template.ts). */
    readonly template: string;
    /** True when this create built the template first. */
    readonly built: boolean;
    /** The agent's `ready` params as the template's boot sent them. */
    readonly ready: Record<string, unknown>;
    /** Forked from this snapshot (`sb.snapshot(name)`) rather than a template. */
    readonly snapshot?: string;
  }
  | { readonly mode: "cold"; readonly reason: string };

/** What a boot is given beside its spec. */
export interface BootOptions {
  /** Gets the backend's host-side phases (`vmm.*`), its last mark the VMM's exec. */
  readonly clock?: PhaseClock;
  /**
   * Settles once the sandbox's netd listens on `net.sock` (rejects when it
   * could not start): the runner starts netd and the boot together, and the
   * backend waits for it only where the VMM is about to connect to it.
   */
  readonly netReady?: Promise<unknown>;
}

/** A backend boots a spec. */
export interface Backend {
  readonly kind: BackendKind;
  /**
   * Boots the VM (its helpers' output and its own lines into `log`);
   * resolves once the agent stream is connected (not yet ready).
   */
  boot(spec: VmSpec, signal: AbortSignal, log: RunnerLog, options?: BootOptions): Promise<Vm>;
}
