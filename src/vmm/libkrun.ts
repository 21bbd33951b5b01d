/**
 * The libkrun backend: a libkrun context built from a {@link VmSpec} and run
 * inside the runner process with `krun_start_enter` as a nonblocking FFI
 * call, so the runner's event loop (relay, timers, status) keeps running
 * beside the VMM threads. libkrun ends the process when the guest powers
 * off, so this VM is `inProcess`: the runner writes a terminal status before
 * it asks for a shutdown.
 *
 * - Kernel: libkrunfw (preloaded by absolute path before the first context,
 *   so libkrun's own `dlopen("libkrunfw.so.5")` finds it).
 * - Init: krunbox's agent, served as the overlay file `/init.krun` of the
 *   root virtiofs (libkrun is built without its init blob), with its boot
 *   config as the overlay file `/krunbox/boot.json`. No image is modified.
 * - Root: a shared writable directory root is the virtiofs root itself; an
 *   OCI root is a trampoline directory plus the EROFS lower and ext4 upper as
 *   virtio-blk disks (the agent joins them and switches root); a disk image
 *   likewise; a private directory root is the trampoline plus the directory
 *   as a read-only virtiofs share and the sandbox's ext4 upper disk.
 * - Agent channel: the agent connects out on vsock port 1024, which libkrun
 *   maps to the runner's listening unix socket (guest-initiated, avoiding the
 *   stall of a first host-to-guest connection, libkrun issue 684).
 * - Network: never TSI (the vsock device carries only the agent's port). A
 *   networked sandbox gets one virtio-net device whose backend is netd's
 *   frame socket (`krun_add_net_unixstream`, no offloads); the agent
 *   configures eth0 statically, as on qemu. Published ports (TCP and UDP)
 *   are netd's listeners.
 *
 * @module
 */

import { doctorCommand, setupCommand } from "../setup_command.ts";
import { CStrings } from "../../ffi/cstring.ts";
import { checkKrun, KRUN_DISK_FORMAT, KRUN_FS_ROOT_TAG, KRUN_LOG_LEVEL, KRUN_MAC_BYTES } from "../../ffi/libkrun.ts";
import { type Libkrun, loadLibkrun, loadLibkrunfw } from "../../ffi/load.ts";
import { BackendUnavailableError } from "../errors.ts";
import { assetPath } from "../store/assets.ts";
import {
  type Backend,
  type BootOptions,
  type SandboxPaths,
  sandboxPaths,
  type Vm,
  type VmExit,
  type VmLogLevel,
  type VmSpec,
} from "./backend.ts";
import { NET_PLAN } from "../net/engine.ts";
import { type BootConfig, bootConfig, GUEST_NET, rootDisks } from "./boot_config.ts";
import { acceptAgent, listenFresh } from "./channel.ts";
import { containedPid } from "./contain.ts";
import type { RunnerLog } from "./runner_log.ts";

/** The vsock port the agent connects to. */
export const AGENT_VSOCK_PORT = 1024;

/** The virtiofs tag of a private directory root (read-only, under the sandbox's upper). */
const DIR_LOWER_TAG = "lower";

/**
 * The agent's boot config for a libkrun guest: the shared one
 * ({@link bootConfig}); its kernel has the drivers built in, a directory
 * root is already the virtiofs root, the agent connects out on vsock, and a
 * networked guest configures eth0 (netd's link) statically.
 *
 * @example
 * ```ts
 * import { libkrunBootConfig } from "./libkrun.ts";
 * console.log(libkrunBootConfig(
 *   { name: "a", backend: "libkrun", cpus: 1, memoryMib: 512, dir: "/s", root: { kind: "dir", path: "/r" },
 *     shares: [], ports: [], network: "none", boot: {}, bootTimeoutMs: 30000 },
 * ).transport); // { kind: "vsock-connect", port: 1024 }
 * ```
 */
export function libkrunBootConfig(spec: VmSpec): BootConfig {
  return bootConfig(spec, {
    modules: [],
    dirRoot: { kind: "initramfs" },
    dirLowerTag: DIR_LOWER_TAG,
    transport: { kind: "vsock-connect", port: AGENT_VSOCK_PORT },
    network: spec.network === "user" ? GUEST_NET : null,
  });
}

let loaded: { lib: Libkrun; fw: Deno.DynamicLibrary<Record<string, never>> } | undefined;

/** Loads libkrunfw then libkrun once per process (libkrun's logger can be set only once: one VM a runner). */
function load(level: VmLogLevel = "warn"): Libkrun {
  if (loaded) return loaded.lib;
  const fw = loadLibkrunfw(assetPath("libkrunfw"));
  const lib = loadLibkrun({ provisioned: assetPath("libkrun") });
  checkKrun("krun_set_log_level", lib.symbols.krun_set_log_level(KRUN_LOG_LEVEL[level]));
  loaded = { lib, fw };
  return lib;
}

function required<T>(fn: T | null, name: string): T {
  if (!fn) {
    throw new BackendUnavailableError(
      "libkrun",
      `this libkrun lacks ${name}`,
      `use libkrun >= 1.19 (${setupCommand()} builds it)`,
    );
  }
  return fn;
}

/** A context being configured: the library, the context id, and the arena its strings live in. */
interface Ctx {
  readonly k: Libkrun["symbols"];
  readonly id: number;
  readonly arena: CStrings;
}

/** The mount points a trampoline root needs (the agent mounts the real root on `/newroot`). */
const TRAMPOLINE_DIRS = ["dev", "proc", "sys", "newroot", "tmp", "run"];

/**
 * Configures a libkrun context for a spec. Returns the context id; the arena
 * must stay alive while libkrun may read its strings (the VM's life).
 */
export async function configureContext(spec: VmSpec, vmSock: string, arena: CStrings): Promise<number> {
  const k = load(spec.logLevel).symbols;
  const c: Ctx = { k, id: checkKrun("krun_create_ctx", k.krun_create_ctx()), arena };
  const paths = sandboxPaths(spec.dir);
  try {
    checkKrun("krun_set_vm_config", k.krun_set_vm_config(c.id, spec.cpus, spec.memoryMib));
    await setRoot(c, spec, paths);
    await addInit(c, spec);
    addShares(c, spec);
    addVsock(c, vmSock);
    if (spec.network === "user") addNet(c, spec, paths);
    const setConsole = required(k.krun_set_console_output, "krun_set_console_output");
    checkKrun("krun_set_console_output", setConsole(c.id, arena.str(paths.consoleFifo)));
    return c.id;
  } catch (e) {
    k.krun_free_ctx(c.id);
    throw e;
  }
}

/** The root virtiofs: a shared writable directory root itself, else a trampoline directory with the root's disks (and a private directory root's share) attached. */
async function setRoot(c: Ctx, spec: VmSpec, paths: SandboxPaths): Promise<void> {
  let rootDir: string;
  if (spec.root.kind === "dir" && !spec.root.upper) {
    rootDir = spec.root.path;
  } else {
    // A trampoline root: only the agent, its config and the mount points it needs.
    rootDir = paths.trampoline;
    for (const d of TRAMPOLINE_DIRS) await Deno.mkdir(`${rootDir}/${d}`, { recursive: true });
    const addDisk = required(c.k.krun_add_disk2, "krun_add_disk2");
    for (const disk of rootDisks(spec.root)) {
      const rc = addDisk(
        c.id,
        c.arena.str(disk.id),
        c.arena.str(disk.path),
        KRUN_DISK_FORMAT[disk.format],
        disk.readonly,
      );
      checkKrun("krun_add_disk2", rc);
    }
    if (spec.root.kind === "dir") {
      // The directory read-only (libkrun enforces it) under this sandbox's upper.
      const add = required(c.k.krun_add_virtiofs3, "krun_add_virtiofs3");
      const rc = add(c.id, c.arena.str(DIR_LOWER_TAG), c.arena.str(spec.root.path), 0n, true);
      checkKrun("krun_add_virtiofs3", rc);
    }
  }
  checkKrun("krun_set_root", c.k.krun_set_root(c.id, c.arena.str(rootDir)));
}

/** The agent as `/init.krun` and its boot config as `/krunbox/boot.json`: overlay files on the root, so no image is modified. */
async function addInit(c: Ctx, spec: VmSpec): Promise<void> {
  const overlayDir = required(c.k.krun_fs_add_overlay_dir, "krun_fs_add_overlay_dir");
  const overlayFile = required(c.k.krun_fs_add_overlay_file, "krun_fs_add_overlay_file");
  const tag = c.arena.str(KRUN_FS_ROOT_TAG);
  const file = (path: string, data: Uint8Array, mode: number) => {
    const bytes = c.arena.bytes(data);
    checkKrun(
      "krun_fs_add_overlay_file",
      overlayFile(c.id, tag, c.arena.str(path), bytes, BigInt(bytes.length), mode, false),
    );
  };
  checkKrun("krun_fs_add_overlay_dir", overlayDir(c.id, tag, c.arena.str("/krunbox"), 0o755));
  file("/init.krun", await Deno.readFile(assetPath("agent")), 0o755);
  file("/krunbox/boot.json", new TextEncoder().encode(JSON.stringify(libkrunBootConfig(spec))), 0o644);
}

/** Every shared directory as a virtiofs device (libkrun enforces read-only ones). */
function addShares(c: Ctx, spec: VmSpec): void {
  for (const s of spec.shares) {
    const add = required(c.k.krun_add_virtiofs3, "krun_add_virtiofs3");
    checkKrun("krun_add_virtiofs3", add(c.id, c.arena.str(s.tag), c.arena.str(s.hostPath), 0n, s.readonly));
  }
}

/** One vsock device without TSI (no implicit one either), carrying only the agent's port mapped to `vmSock`. */
function addVsock(c: Ctx, vmSock: string): void {
  const { k, id, arena } = c;
  checkKrun("krun_disable_implicit_vsock", required(k.krun_disable_implicit_vsock, "krun_disable_implicit_vsock")(id));
  checkKrun("krun_add_vsock", required(k.krun_add_vsock, "krun_add_vsock")(id, 0));
  checkKrun(
    "krun_add_vsock_port2",
    required(k.krun_add_vsock_port2, "krun_add_vsock_port2")(id, AGENT_VSOCK_PORT, arena.str(vmSock), false),
  );
}

/** The guest's one network device: virtio-net to netd's frame socket, no offloads (features 0, flags 0). */
function addNet(c: Ctx, spec: VmSpec, paths: SandboxPaths): void {
  const add = required(c.k.krun_add_net_unixstream, "krun_add_net_unixstream");
  const mac = macBytes(spec.netd?.guest.mac ?? NET_PLAN.mac);
  checkKrun("krun_add_net_unixstream", add(c.id, c.arena.str(paths.netSocket), -1, c.arena.bytes(mac), 0, 0));
}

/**
 * The 6 bytes of a MAC address in `aa:bb:cc:dd:ee:ff` form.
 *
 * @example
 * ```ts
 * import { macBytes } from "./libkrun.ts";
 * console.log(macBytes("5a:94:ef:e4:0c:ee")); // Uint8Array [90, 148, 239, 228, 12, 238]
 * ```
 */
export function macBytes(mac: string): Uint8Array {
  const parts = mac.split(":").map((h) => parseInt(h, 16));
  if (parts.length !== KRUN_MAC_BYTES || parts.some((b) => !(b >= 0 && b <= 255))) {
    throw new TypeError(`${JSON.stringify(mac)} is not a MAC address`);
  }
  return Uint8Array.from(parts);
}

/**
 * The libkrun backend. A boot: listen for the agent's vsock port, configure
 * a context, start it (a nonblocking call that returns only if the VM could
 * not start), accept the agent's connection.
 *
 * @example
 * ```ts
 * import { libkrunBackend } from "./libkrun.ts";
 * console.log(libkrunBackend.kind);
 * ```
 */
export const libkrunBackend: Backend = {
  kind: "libkrun",
  async boot(spec: VmSpec, signal: AbortSignal, log: RunnerLog, options: BootOptions = {}): Promise<Vm> {
    const { clock } = options;
    const arena = new CStrings();
    const paths = sandboxPaths(spec.dir);
    const listener = await listenFresh(paths.vmSocket);
    // The context's net device is netd's socket: netd listens by now.
    await options.netReady;
    const ctx = await configureContext(spec, paths.vmSocket, arena);
    const k = load(spec.logLevel).symbols;
    clock?.mark("vmm.prepare");
    // Resolves only if the VM could not start: on success the process ends with the guest.
    const started = k.krun_start_enter(ctx);
    const exited: Promise<VmExit> = started.then((rc) => {
      void arena; // keep every string alive for as long as libkrun runs
      return { code: rc, signal: null };
    });
    // The process ends with the VM: the queued log lines get their bounded flush first (never an unbounded wait).
    const kill = () => void log.flush().finally(() => Deno.exit(137));
    signal.addEventListener("abort", kill, { once: true });
    const agent = await acceptAgent(listener, exited, (e) =>
      new BackendUnavailableError(
        "libkrun",
        `krun_start_enter failed with errno ${-(e.code ?? 0)}`,
        `see the sandbox's console.log; ${doctorCommand()} checks KVM`,
      ));
    signal.removeEventListener("abort", kill);
    // One VMM, one agent stream: the listener is closed; the path goes too, so nothing can be reached there.
    await Deno.remove(paths.vmSocket).catch(() => {});
    // Contained (src/vmm/contain.ts), this process is pid 1 of its own pid namespace: the host's pid is bwrap's word.
    return { agent, exited, vmmPid: (await containedPid(paths.containInfo)) ?? Deno.pid, inProcess: true, kill };
  },
};
