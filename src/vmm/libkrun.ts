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
 * - Root: a directory root is the virtiofs root itself; an OCI root is a
 *   trampoline directory plus the EROFS lower and ext4 upper as virtio-blk
 *   disks (the agent joins them and switches root); a disk image likewise.
 * - Agent channel: the agent connects out on vsock port 1024, which libkrun
 *   maps to the runner's listening unix socket (guest-initiated, avoiding the
 *   stall of a first host-to-guest connection, libkrun issue 684).
 * - Network: TSI with the port map, or no vsock networking at all.
 *
 * @module
 */

import { join } from "node:path";
import { CStrings } from "../../ffi/cstring.ts";
import { checkKrun, KRUN_DISK_FORMAT, KRUN_FS_ROOT_TAG, KRUN_LOG_LEVEL, KRUN_TSI } from "../../ffi/libkrun.ts";
import { type Libkrun, loadLibkrun } from "../../ffi/load.ts";
import { BackendUnavailableError } from "../errors.ts";
import { assetPath } from "../store/assets.ts";
import type { Backend, Vm, VmExit, VmSpec } from "./backend.ts";

/** The vsock port the agent connects to. */
export const AGENT_VSOCK_PORT = 1024;

/** The virtiofs tag of a directory root that is the read-only lower of an overlay. */
const DIR_LOWER_TAG = "lower";

/** The agent's boot config for a libkrun guest (its kernel has the drivers built in). */
export function libkrunBootConfig(spec: VmSpec): Record<string, unknown> {
  const root = spec.root.kind === "dir"
    ? (spec.root.upper
      ? { kind: "virtiofs", tag: DIR_LOWER_TAG, upper: { serial: "upper", fstype: "ext4" } }
      : { kind: "initramfs" }) // the virtiofs root is already the final root
    : spec.root.kind === "overlay"
    ? { kind: "overlay", lower: { serial: "lower", fstype: "erofs" }, upper: { serial: "upper", fstype: "ext4" } }
    : { kind: "block", serial: "root", fstype: spec.root.fstype };
  return {
    ...spec.boot,
    modules: [],
    root,
    mounts: [
      ...((spec.boot.mounts as unknown[] | undefined) ?? []),
      ...spec.shares.map((s) => ({ kind: "virtiofs", tag: s.tag, target: s.guestPath, readonly: s.readonly })),
    ],
    transport: { kind: "vsock-connect", port: AGENT_VSOCK_PORT },
    // TSI carries the guest's sockets over vsock: no interface to configure.
    network: null,
  };
}

let loaded: { lib: Libkrun; fw: Deno.DynamicLibrary<Record<string, never>> } | undefined;

/** Loads libkrunfw then libkrun once per process (libkrun's logger can be set only once). */
function load(): Libkrun {
  if (loaded) return loaded.lib;
  let fw: Deno.DynamicLibrary<Record<string, never>>;
  try {
    fw = Deno.dlopen(assetPath("libkrunfw"), {});
  } catch (cause) {
    throw new BackendUnavailableError(
      "libkrun",
      `libkrunfw cannot be loaded from ${assetPath("libkrunfw")}`,
      "run `./dev setup`",
      {
        cause,
      },
    );
  }
  const lib = loadLibkrun();
  checkKrun("krun_set_log_level", lib.symbols.krun_set_log_level(KRUN_LOG_LEVEL.warn));
  loaded = { lib, fw };
  return lib;
}

function required<T>(fn: T | null, name: string): T {
  if (!fn) {
    throw new BackendUnavailableError("libkrun", `this libkrun lacks ${name}`, "use libkrun >= 1.19 (`./dev setup`)");
  }
  return fn;
}

/**
 * Configures a libkrun context for a spec. Returns the context id; the arena
 * must stay alive while libkrun may read its strings (the VM's life).
 *
 * @example
 * ```ts
 * import { configureContext } from "./libkrun.ts";
 * // const ctx = await configureContext(spec, "/s/vm.sock", new CStrings());
 * ```
 */
export async function configureContext(spec: VmSpec, vmSock: string, arena: CStrings): Promise<number> {
  const k = load().symbols;
  const ctx = checkKrun("krun_create_ctx", k.krun_create_ctx());
  try {
    checkKrun("krun_set_vm_config", k.krun_set_vm_config(ctx, spec.cpus, spec.memoryMib));
    let rootDir: string;
    if (spec.root.kind === "dir" && !spec.root.upper) {
      rootDir = spec.root.path;
    } else {
      // A trampoline root: only the agent, its config and the mount points it needs.
      rootDir = join(spec.dir, "trampoline");
      for (const d of ["dev", "proc", "sys", "newroot", "tmp", "run"]) {
        await Deno.mkdir(join(rootDir, d), { recursive: true });
      }
      const addDisk = required(k.krun_add_disk2, "krun_add_disk2");
      const disk = (id: string, path: string, format: number, ro: boolean) =>
        checkKrun("krun_add_disk2", addDisk(ctx, arena.str(id), arena.str(path), format, ro));
      if (spec.root.kind === "overlay") {
        disk("lower", spec.root.lower, KRUN_DISK_FORMAT.raw, true);
        disk("upper", spec.root.upper, KRUN_DISK_FORMAT.raw, false);
      } else if (spec.root.kind === "dir" && spec.root.upper) {
        // The directory read-only (enforced by libkrun) under this sandbox's upper.
        disk("upper", spec.root.upper, KRUN_DISK_FORMAT.raw, false);
        const add = required(k.krun_add_virtiofs3, "krun_add_virtiofs3");
        checkKrun("krun_add_virtiofs3", add(ctx, arena.str(DIR_LOWER_TAG), arena.str(spec.root.path), 0n, true));
      } else if (spec.root.kind === "disk") {
        disk("root", spec.root.path, KRUN_DISK_FORMAT[spec.root.format], false);
      }
    }
    checkKrun("krun_set_root", k.krun_set_root(ctx, arena.str(rootDir)));
    const overlayDir = required(k.krun_fs_add_overlay_dir, "krun_fs_add_overlay_dir");
    const overlayFile = required(k.krun_fs_add_overlay_file, "krun_fs_add_overlay_file");
    const file = (path: string, data: Uint8Array, mode: number) => {
      const bytes = arena.bytes(data);
      checkKrun(
        "krun_fs_add_overlay_file",
        overlayFile(ctx, arena.str(KRUN_FS_ROOT_TAG), arena.str(path), bytes, BigInt(bytes.length), mode, false),
      );
    };
    checkKrun("krun_fs_add_overlay_dir", overlayDir(ctx, arena.str(KRUN_FS_ROOT_TAG), arena.str("/krunbox"), 0o755));
    file("/init.krun", await Deno.readFile(assetPath("agent")), 0o755);
    file("/krunbox/boot.json", new TextEncoder().encode(JSON.stringify(libkrunBootConfig(spec))), 0o644);
    for (const s of spec.shares) {
      const add = required(k.krun_add_virtiofs3, "krun_add_virtiofs3");
      checkKrun("krun_add_virtiofs3", add(ctx, arena.str(s.tag), arena.str(s.hostPath), 0n, s.readonly));
    }
    checkKrun(
      "krun_disable_implicit_vsock",
      required(k.krun_disable_implicit_vsock, "krun_disable_implicit_vsock")(ctx),
    );
    const tsi = spec.network === "user" ? KRUN_TSI.hijackInet : 0;
    checkKrun("krun_add_vsock", required(k.krun_add_vsock, "krun_add_vsock")(ctx, tsi));
    const tcp = spec.ports.filter((p) => p.protocol === "tcp").map((p) => `${p.host}:${p.guest}`);
    if (spec.network === "user") checkKrun("krun_set_port_map", k.krun_set_port_map(ctx, arena.array(tcp)));
    checkKrun(
      "krun_add_vsock_port2",
      required(k.krun_add_vsock_port2, "krun_add_vsock_port2")(ctx, AGENT_VSOCK_PORT, arena.str(vmSock), false),
    );
    checkKrun(
      "krun_set_console_output",
      required(k.krun_set_console_output, "krun_set_console_output")(ctx, arena.str(join(spec.dir, "console.log"))),
    );
    return ctx;
  } catch (e) {
    k.krun_free_ctx(ctx);
    throw e;
  }
}

/**
 * The libkrun backend.
 *
 * @example
 * ```ts
 * import { libkrunBackend } from "./libkrun.ts";
 * console.log(libkrunBackend.kind);
 * ```
 */
export const libkrunBackend: Backend = {
  kind: "libkrun",
  async boot(spec: VmSpec, signal: AbortSignal): Promise<Vm> {
    const arena = new CStrings();
    const vmSock = join(spec.dir, "vm.sock");
    await Deno.remove(vmSock).catch(() => {});
    const listener = Deno.listen({ transport: "unix", path: vmSock });
    const ctx = await configureContext(spec, vmSock, arena);
    const k = load().symbols;
    // Resolves only if the VM could not start: on success the process ends with the guest.
    const started = k.krun_start_enter(ctx);
    const exited: Promise<VmExit> = started.then((rc) => {
      void arena; // keep every string alive for as long as libkrun runs
      return { code: rc, signal: null };
    });
    const kill = () => Deno.exit(137);
    signal.addEventListener("abort", kill, { once: true });
    const agent = await Promise.race([
      listener.accept(),
      exited.then((e) => {
        throw new BackendUnavailableError(
          "libkrun",
          `krun_start_enter failed with errno ${-(e.code ?? 0)}`,
          "see the sandbox's console.log; `./dev doctor` checks KVM",
        );
      }),
    ]);
    listener.close();
    signal.removeEventListener("abort", kill);
    return { agent, exited, vmmPid: Deno.pid, inProcess: true, kill };
  },
};
