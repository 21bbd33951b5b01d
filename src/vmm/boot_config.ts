/**
 * The boot config both backends give the guest agent (agent/PROTOCOL.md,
 * "Boot config"), and the disks of a root. What a sandbox looks like inside
 * (its root, its mounts, the spec's hostname, env, workdir, rlimits) is
 * built here once; a backend adds only what differs between VMMs: the
 * modules its kernel needs, how a directory root reaches the guest, the
 * agent's transport and the network.
 *
 * @module
 */

import { NET_PLAN } from "../net/engine.ts";
import type { VmRoot, VmSpec } from "./backend.ts";

/** The virtiofs tag of a directory root (qemu serves it through virtiofsd). */
export const ROOT_TAG = "root";

/** Where the agent finds the root (PROTOCOL.md, `root`). */
export type GuestRoot =
  /** With `upper`: the share read-only under an overlay whose writes go to that disk (a private directory root). */
  | {
    readonly kind: "virtiofs";
    readonly tag: string;
    readonly upper?: { readonly serial: string; readonly fstype: string };
  }
  | { readonly kind: "initramfs" }
  | { readonly kind: "block"; readonly serial: string; readonly fstype: string }
  | {
    readonly kind: "overlay";
    readonly lower: { readonly serial: string; readonly fstype: string };
    readonly upper: { readonly serial: string; readonly fstype: string };
  };

/** A mount the agent makes after the root (PROTOCOL.md, `mounts`). */
export type GuestMount =
  | { readonly kind: "virtiofs"; readonly tag: string; readonly target: string; readonly readonly: boolean }
  | { readonly kind: "tmpfs"; readonly target: string; readonly sizeMib?: number };

/** How the agent reaches the host (PROTOCOL.md, `transport`). */
export type GuestTransport =
  | { readonly kind: "virtio-port"; readonly name: string }
  | { readonly kind: "vsock" | "vsock-connect"; readonly port: number };

/** The guest's interface (PROTOCOL.md, `network`). */
export interface GuestNetwork {
  readonly iface: string;
  readonly address: string;
  readonly gateway: string;
  readonly dns: readonly string[];
}

/**
 * The guest's interface on both backends: a static address on the link to
 * netd (no DHCP), netd's gateway and its DNS address.
 */
export const GUEST_NET: GuestNetwork = Object.freeze({
  iface: "eth0",
  address: `${NET_PLAN.guestIp}/${NET_PLAN.prefix}`,
  gateway: NET_PLAN.gateway,
  dns: Object.freeze([NET_PLAN.dnsAddress]),
});

/** The boot config as the agent reads it: the spec's own entries plus these. */
export interface BootConfig {
  readonly [key: string]: unknown;
  readonly modules: readonly string[];
  readonly root: GuestRoot;
  readonly mounts: readonly unknown[];
  readonly transport: GuestTransport;
  readonly network: GuestNetwork | null;
  /** netd's per-sandbox CA (a sandbox with secrets): the agent installs it into the guest's trust store. */
  readonly caPem?: string;
}

/** What a backend adds to the shared boot config. */
export interface BackendBoot {
  /** Kernel modules to load, in order, as guest paths (none for a kernel with the drivers built in). */
  readonly modules: readonly string[];
  /** How the guest finds a directory root shared writable (the caller asked for it). */
  readonly dirRoot: GuestRoot;
  /** The virtiofs tag of a private directory root's read-only share (the overlay's lower). */
  readonly dirLowerTag: string;
  readonly transport: GuestTransport;
  readonly network: GuestNetwork | null;
}

/** One disk of a root, attached as virtio-blk; `id` is also the serial the guest finds it by. */
export interface VmDisk {
  readonly id: "lower" | "upper" | "root";
  readonly path: string;
  readonly format: "raw" | "qcow2";
  readonly readonly: boolean;
}

/**
 * The disks a root needs, in attach order: an OCI root's read-only EROFS
 * lower and writable ext4 upper, or a disk image; a private directory root's
 * upper (its lower is a virtiofs share); none for a shared writable directory.
 *
 * @example
 * ```ts
 * import { rootDisks } from "./boot_config.ts";
 * console.log(rootDisks({ kind: "overlay", lower: "/c/lower.erofs", upper: "/s/upper.ext4" }).map((d) => d.id));
 * // ["lower", "upper"]
 * ```
 */
export function rootDisks(root: VmRoot): VmDisk[] {
  switch (root.kind) {
    case "overlay":
      return [
        { id: "lower", path: root.lower, format: "raw", readonly: true },
        { id: "upper", path: root.upper, format: "raw", readonly: false },
      ];
    case "disk":
      return [{ id: "root", path: root.path, format: root.format, readonly: false }];
    case "dir":
      return root.upper ? [{ id: "upper", path: root.upper, format: "raw", readonly: false }] : [];
  }
}

/**
 * Where the guest finds a root on disks ({@link rootDisks}'s serials); a
 * shared writable directory root is the backend's `dirRoot`, a private one
 * the share `dirLowerTag` under its upper disk.
 *
 * @example
 * ```ts
 * import { guestRoot } from "./boot_config.ts";
 * console.log(guestRoot({ kind: "disk", path: "/d.img", format: "raw", fstype: "ext4" }, { kind: "initramfs" }));
 * // { kind: "block", serial: "root", fstype: "ext4" }
 * ```
 */
export function guestRoot(root: VmRoot, dirRoot: GuestRoot, dirLowerTag: string = ROOT_TAG): GuestRoot {
  switch (root.kind) {
    case "overlay":
      return {
        kind: "overlay",
        lower: { serial: "lower", fstype: "erofs" },
        upper: { serial: "upper", fstype: "ext4" },
      };
    case "disk":
      return { kind: "block", serial: "root", fstype: root.fstype };
    case "dir":
      return root.upper ? { kind: "virtiofs", tag: dirLowerTag, upper: { serial: "upper", fstype: "ext4" } } : dirRoot;
  }
}

/**
 * The agent's boot config for a spec: the spec's entries (hostname, env,
 * workdir, rlimits, its tmpfs mounts), the root, every share as a virtiofs
 * mount, what the backend adds, and netd's CA when the runner set one
 * ({@link VmSpec.caPem}).
 *
 * @example
 * ```ts
 * import { bootConfig } from "./boot_config.ts";
 * const config = bootConfig(
 *   { name: "a", backend: "qemu", cpus: 1, memoryMib: 512, dir: "/s", root: { kind: "dir", path: "/r" },
 *     shares: [{ tag: "v0", hostPath: "/h", guestPath: "/data", readonly: true }], ports: [], network: "none",
 *     boot: { hostname: "a" }, bootTimeoutMs: 30000 },
 *   { modules: [], dirRoot: { kind: "virtiofs", tag: "root" }, dirLowerTag: "root",
 *     transport: { kind: "virtio-port", name: "agent" }, network: null },
 * );
 * console.log(config.mounts); // [{ kind: "virtiofs", tag: "v0", target: "/data", readonly: true }]
 * ```
 */
export function bootConfig(spec: VmSpec, backend: BackendBoot): BootConfig {
  const shares: GuestMount[] = spec.shares.map((s) => ({
    kind: "virtiofs",
    tag: s.tag,
    target: s.guestPath,
    readonly: s.readonly,
  }));
  return {
    ...spec.boot,
    modules: backend.modules,
    root: guestRoot(spec.root, backend.dirRoot, backend.dirLowerTag),
    mounts: [...((spec.boot.mounts as unknown[] | undefined) ?? []), ...shares],
    transport: backend.transport,
    network: backend.network,
    ...(spec.caPem ? { caPem: spec.caPem } : {}),
  };
}
