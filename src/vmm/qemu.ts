/**
 * The qemu backend: `qemu-system-x86_64 -M microvm` with TCG (or KVM where
 * hardware virtualization works), Debian's kernel, an initramfs whose
 * `/init` is the agent, the agent on a virtio-serial port named `agent`, the
 * root on virtio-blk (OCI images, disk images) or virtiofs (directories,
 * through `virtiofsd` with memfd guest memory), and the console in the
 * sandbox's `console.log`.
 *
 * The agent channel is qemu's stdin and stdout (`-chardev stdio`), pipes
 * the runner made when it spawned qemu: no socket path exists that anyone
 * could connect to first and be taken for the guest (./channel.ts).
 *
 * @module
 */

import { join } from "node:path";
import { BackendUnavailableError } from "../errors.ts";
import { assetDir, assetPath } from "../store/assets.ts";
import { closeQuietly } from "../util/close.ts";
import {
  type Backend,
  type BootOptions,
  KERNEL_LOGLEVEL,
  type SandboxPaths,
  sandboxPaths,
  type Vm,
  type VmExit,
  type VmShare,
  type VmSpec,
} from "./backend.ts";
import { NET_PLAN } from "../net/engine.ts";
import { type BootConfig, bootConfig, GUEST_NET, ROOT_TAG, rootDisks } from "./boot_config.ts";
import { acceptAgent, listenFresh, stdioChannel } from "./channel.ts";
import { ChildGroup } from "./children.ts";
import type { RunnerLog } from "./runner_log.ts";
import { type HostVirtualization, probeHost } from "./detect.ts";
import { loadOrder, type ModuleIndex } from "./modules.ts";
import { checkedPrograms, qemuChecks } from "./prereqs.ts";
import { installShareFilter } from "./seccomp.ts";
import { Qmp } from "./qmp.ts";

/**
 * virtio-net without offloads: netd's stack sees plain, checksummed
 * Ethernet frames of at most the MTU, as on libkrun (features 0). Mergeable
 * receive buffers are no offload (the frames are the same): they let the
 * guest take frames of the large MTU qemu's device advertises (`host_mtu`)
 * in page-sized buffers rather than 64 KiB ones per ring entry.
 */
const NET_NO_OFFLOADS = [
  "csum=off",
  "guest_csum=off",
  "guest_tso4=off",
  "guest_tso6=off",
  "guest_ecn=off",
  "guest_ufo=off",
  "host_tso4=off",
  "host_tso6=off",
  "host_ecn=off",
  "host_ufo=off",
  "mrg_rxbuf=on",
].join(",");

/** Inputs of {@link qemuArgs} that come from the host. */
export interface QemuHost {
  readonly kernel: string;
  readonly initrd: string;
  readonly accel: "kvm" | "tcg";
  /** The host TSC frequency, to skip the guest's TSC calibration (hangs ~1 boot in 8 under TCG otherwise). */
  readonly tscKhz: number | undefined;
  /** vhost-user sockets of virtiofsd, by share tag. */
  readonly fsSockets: Readonly<Record<string, string>>;
  /** netd's frame socket, for a networked sandbox. */
  readonly netSocket?: string;
}

/**
 * The TCG guest CPU: every feature qemu emulates (svm too, for the nested
 * test host) but three that make a TCG guest slower, not faster:
 * - `erms`: with it, the kernel's page clears and user copies and glibc's
 *   large memcpy use `rep movsb`/`stosb`, which TCG runs one byte per
 *   iteration; without it they use the 8-byte forms. `dd` of 200 MiB from
 *   /dev/zero in a guest: 115–154 ms against 640–739 ms with it.
 * - `mpx`, `pku`: their XSAVE components grow the FPU state each context
 *   switch saves and restores from 832 to 2696 bytes (MPX is unused by
 *   Linux since 5.6; protection keys are an optional hardening).
 * A bare kernel boot to /init took 1.83 s of qemu CPU against 2.38 s with
 * `max` (5 alternating boots each).
 *
 * For an OCI image root (templates and their restores, which must agree)
 * also no 5-level paging: a guest with la57 walks five page-table levels on
 * each miss of qemu's software TLB, which a restored guest (every TLB empty)
 * takes on nearly every access at first: ~50 ms of a restore's create →
 * first exec here. A cold directory-root boot was ~130 ms slower without it
 * (2 A/B pairs of 7 boots), so those keep it. 48-bit addresses (128 TiB) are
 * plenty in a VM.
 */
export const TCG_CPU = "max,erms=off,mpx=off,pku=off";

/** The agent port's chardev: qemu's stdin and stdout, pipes only the runner holds (no path to connect to). */
export const AGENT_CHARDEV = "stdio,id=agent,signal=off";

/** The descriptor a restoring qemu reads its migration stream from ({@link VmSpec.incomingFile}). */
export const INCOMING_FD = 3;

/**
 * The qemu command line for a spec (pure: no I/O).
 *
 * @example
 * ```ts
 * import { qemuArgs } from "./qemu.ts";
 * const args = qemuArgs(
 *   { name: "a", backend: "qemu", cpus: 1, memoryMib: 512, dir: "/s", root: { kind: "dir", path: "/r" },
 *     shares: [], ports: [], network: "none", boot: {}, bootTimeoutMs: 30000 },
 *   { kernel: "/k", initrd: "/i", accel: "tcg", tscKhz: 2300000, fsSockets: { root: "/s/fs-root.sock" } },
 * );
 * console.log(args.join(" "));
 * ```
 */
export function qemuArgs(spec: VmSpec, host: QemuHost): string[] {
  const usesVirtiofs = Object.keys(host.fsSockets).length > 0;
  const level = spec.logLevel ?? "warn";
  const cmdline = [
    "console=ttyS0",
    "panic=-1",
    // microvm has no PCI bus; saying so spares a probe and a "PCI: Fatal" line.
    "pci=off",
    // `quiet` unless asked for more; the console level follows the sandbox's logLevel.
    ...(level === "error" || level === "warn" ? ["quiet"] : []),
    `loglevel=${KERNEL_LOGLEVEL[level]}`,
    // Skips the crypto self-tests, a few hundred ms of every TCG boot.
    "cryptomgr.notests",
    // One UART (ttyS0) instead of probing four; no audit subsystem in a sandbox guest.
    "8250.nr_uarts=1",
    "audit=0",
    // RCU grace periods expedited: boot-time synchronize_rcu() calls (module loads, mounts) return sooner.
    "rcupdate.rcu_expedited=1",
    ...(host.tscKhz ? [`tsc_early_khz=${host.tscKhz}`, "tsc=reliable"] : []),
  ];
  // An OCI image root's RAM is a backend object too (snapshot templates, src/vmm/template.ts): anonymous, or a
  // template's file. One RAM block name ("mem") for every such VM, so any of them can restore any one's stream.
  const imageRam = !usesVirtiofs && spec.root.kind === "overlay";
  const args = [
    "-M",
    usesVirtiofs || imageRam ? "microvm,memory-backend=mem" : "microvm",
    "-accel",
    host.accel,
    "-cpu",
    host.accel === "kvm" ? "host" : imageRam ? `${TCG_CPU},la57=off` : TCG_CPU,
    "-smp",
    String(spec.cpus),
    "-m",
    `${spec.memoryMib}M`,
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-no-reboot",
    "-kernel",
    host.kernel,
    "-initrd",
    host.initrd,
    "-append",
    cmdline.join(" "),
    "-chardev",
    `file,id=con,path=${sandboxPaths(spec.dir).consoleFifo}`,
    "-serial",
    "chardev:con",
    "-global",
    "virtio-mmio.force-legacy=false",
    "-device",
    "virtio-serial-device",
    "-chardev",
    AGENT_CHARDEV,
    "-device",
    "virtserialport,chardev=agent,name=agent",
  ];
  // Snapshot templates (src/vmm/template.ts): a monitor to save the state with, or the state to restore.
  if (spec.qmp) {
    args.push(
      "-chardev",
      `socket,id=qmp,path=${sandboxPaths(spec.dir).qmpSocket},server=off`,
      "-mon",
      "chardev=qmp,mode=control",
    );
  }
  // The stream file on a descriptor of qemu's own (startQemu), loaded once the runner has set the migration
  // capabilities over QMP (restoreIncoming): qemu 7.2 has no `file:` URI, and `exec:cat` put a second process and a
  // pipe between the file and qemu's loader.
  if (spec.incomingFile) args.push("-incoming", "defer");
  if (imageRam) {
    const size = `${spec.memoryMib}M`;
    args.push(
      "-object",
      spec.ramFile
        ? `memory-backend-file,id=mem,size=${size},mem-path=${spec.ramFile.path},share=${
          spec.ramFile.share ? "on" : "off"
        }`
        : `memory-backend-ram,id=mem,size=${size}`,
    );
  }
  if (usesVirtiofs) {
    args.push("-object", `memory-backend-memfd,id=mem,size=${spec.memoryMib}M,share=on`);
    for (const [tag, sock] of Object.entries(host.fsSockets)) {
      args.push(
        "-chardev",
        `socket,id=fs-${tag},path=${sock}`,
        "-device",
        `vhost-user-fs-device,chardev=fs-${tag},tag=${tag}`,
      );
    }
  }
  for (const disk of rootDisks(spec.root)) {
    // A writable disk honours the guest's flushes (cache=writeback: the host page cache, and an fsync in
    // the guest is an fdatasync on the host), so what the guest synced survives a host crash; a read-only
    // one is never written, and unsafe spares it every flush.
    args.push(
      "-drive",
      `id=${disk.id},file=${disk.path},format=${disk.format},if=none,cache=${disk.readonly ? "unsafe" : "writeback"}${
        disk.readonly ? ",readonly=on" : ""
      }`,
      "-device",
      `virtio-blk-device,drive=${disk.id},serial=${disk.id}`,
    );
  }
  if (spec.network === "user") {
    // No slirp: frames go to netd, which decides every flow (published ports are its listeners).
    if (!host.netSocket) throw new TypeError("a networked qemu guest needs netd's socket");
    args.push(
      "-netdev",
      `stream,id=n0,server=off,addr.type=unix,addr.path=${host.netSocket}`,
      "-device",
      `virtio-net-device,netdev=n0,mac=${spec.netd?.guest.mac ?? NET_PLAN.mac},host_mtu=${
        spec.netd?.mtu ?? NET_PLAN.mtu
      },${NET_NO_OFFLOADS}`,
    );
  }
  return args;
}

/**
 * The agent's boot config for a qemu guest: the shared one
 * ({@link bootConfig}) with the modules to load, a directory root on
 * virtiofs, the virtio-serial port and the static address plan netd serves.
 *
 * @example
 * ```ts
 * import { qemuBootConfig } from "./qemu.ts";
 * const idx = { virtio_console: { file: "modules/virtio_console.ko", deps: [] } };
 * console.log(qemuBootConfig(
 *   { name: "a", backend: "qemu", cpus: 1, memoryMib: 512, dir: "/s", root: { kind: "dir", path: "/r" },
 *     shares: [], ports: [], network: "none", boot: {}, bootTimeoutMs: 30000 },
 *   idx,
 *   ["virtio_console"],
 * ).modules); // ["/lib/modules/virtio_console.ko"]
 * ```
 */
export function qemuBootConfig(
  spec: VmSpec,
  modules: ModuleIndex,
  wanted: readonly string[] = qemuModules(spec),
): BootConfig {
  return bootConfig(spec, {
    modules: moduleFiles(modules, wanted),
    dirRoot: { kind: "virtiofs", tag: ROOT_TAG },
    dirLowerTag: ROOT_TAG,
    transport: QEMU_TRANSPORT,
    network: spec.network === "user" ? GUEST_NET : null,
  });
}

/** The agent's transport on qemu: the virtio-serial port `agent`. */
const QEMU_TRANSPORT = Object.freeze({ kind: "virtio-port", name: "agent" } as const);

/** The modules a qemu guest needs for its transport alone (the base config's). */
const TRANSPORT_MODULES = ["virtio_mmio", "virtio_console"] as const;

/** Guest paths of `wanted` and their dependencies, in load order. */
function moduleFiles(modules: ModuleIndex, wanted: readonly string[]): string[] {
  return loadOrder(modules, wanted).map((m) => `/lib/modules/${m}.ko`);
}

/**
 * The modules a qemu guest of `spec` loads: the transport's, and only what
 * its devices and root need (each costs a few ms of a TCG boot):
 * virtio_blk for disks, erofs and overlay for an image root, overlay for a
 * private directory root, virtiofs for a directory root or shares,
 * virtio_net with a network; then the spec's extra modules.
 *
 * @example
 * ```ts
 * import { qemuModules } from "./qemu.ts";
 * console.log(qemuModules(
 *   { name: "a", backend: "qemu", cpus: 1, memoryMib: 512, dir: "/s", root: { kind: "dir", path: "/r" },
 *     shares: [], ports: [], network: "none", boot: {}, bootTimeoutMs: 30000 },
 * )); // ["virtio_mmio", "virtio_console", "virtiofs"]
 * ```
 */
export function qemuModules(spec: VmSpec): string[] {
  const root = spec.root;
  const wanted: string[] = [...TRANSPORT_MODULES];
  if (rootDisks(root).length > 0) wanted.push("virtio_blk");
  if (root.kind === "overlay") wanted.push("erofs");
  if (root.kind === "overlay" || (root.kind === "dir" && root.upper)) wanted.push("overlay");
  if (root.kind === "dir" || spec.shares.length > 0) wanted.push("virtiofs");
  if (spec.network === "user") wanted.push("virtio_net");
  return [...wanted, ...(spec.extraModules ?? [])];
}

/**
 * The boot config the shared initramfs carries as `krunbox/boot.json`: the
 * transport and its modules, and `fromHost`, which makes the agent ask the
 * runner for this boot's config over that transport (`boot.config`) before
 * anything else. Nothing of a sandbox is in it, so every boot uses the
 * provisioned archive as it is.
 *
 * @example
 * ```ts
 * import { qemuBaseBootConfig } from "./qemu.ts";
 * const idx = { virtio_mmio: { file: "m/virtio_mmio.ko", deps: [] }, virtio_console: { file: "m/virtio_console.ko", deps: [] } };
 * console.log(qemuBaseBootConfig(idx).modules); // ["/lib/modules/virtio_mmio.ko", "/lib/modules/virtio_console.ko"]
 * ```
 */
export function qemuBaseBootConfig(
  modules: ModuleIndex,
): { fromHost: true; modules: string[]; transport: typeof QEMU_TRANSPORT } {
  return { fromHost: true, modules: moduleFiles(modules, TRANSPORT_MODULES), transport: QEMU_TRANSPORT };
}

/**
 * The directories virtiofsd serves for a spec: its shares, and a directory
 * root first (as tag `root`; read-only unless the caller asked for a shared
 * writable root).
 *
 * @example
 * ```ts
 * import { qemuShares } from "./qemu.ts";
 * console.log(qemuShares(
 *   { name: "a", backend: "qemu", cpus: 1, memoryMib: 512, dir: "/s", root: { kind: "dir", path: "/r" },
 *     shares: [], ports: [], network: "none", boot: {}, bootTimeoutMs: 30000 },
 * )); // [{ tag: "root", hostPath: "/r", guestPath: "/", readonly: false }]
 * ```
 */
export function qemuShares(spec: VmSpec): VmShare[] {
  return spec.root.kind === "dir"
    ? [{ tag: ROOT_TAG, hostPath: spec.root.path, guestPath: "/", readonly: !!spec.root.upper }, ...spec.shares]
    : [...spec.shares];
}

/**
 * The accelerator qemu runs with on `host`: KVM where the CPU has hardware
 * virtualization and /dev/kvm works, else TCG (the template key uses the
 * same rule as the boot, so the two cannot drift apart).
 *
 * @example
 * ```ts
 * import { qemuAccel } from "./qemu.ts";
 * console.log(qemuAccel({ hardwareFlag: undefined, kvmUsable: true })); // "tcg"
 * ```
 */
export function qemuAccel(host: Pick<HostVirtualization, "hardwareFlag" | "kvmUsable">): "kvm" | "tcg" {
  return host.hardwareFlag && host.kvmUsable ? "kvm" : "tcg";
}

/**
 * The qemu backend. A boot: check the programs, make this boot's config
 * (the runner's relay hands it to the agent when it asks), start a
 * virtiofsd per shared directory, listen for the agent port, start qemu
 * with the shared initramfs, accept its connection.
 *
 * @example
 * ```ts
 * import { qemuBackend } from "./qemu.ts";
 * console.log(qemuBackend.kind);
 * ```
 */
export const qemuBackend: Backend = {
  kind: "qemu",
  async boot(spec: VmSpec, signal: AbortSignal, log: RunnerLog, options: BootOptions = {}): Promise<Vm> {
    const { clock } = options;
    const paths = sandboxPaths(spec.dir);
    const programs = spec.programs ?? await checkedPrograms("qemu", await qemuChecks());
    const host = spec.host ?? await probeHost();
    // Answered over the agent channel when the guest asks (`boot.config`): the shared initramfs is used as it is.
    const config = qemuBootConfig(spec, await kernelModules());
    clock?.mark("vmm.prepare");
    const children = new ChildGroup("qemu", log);
    signal.addEventListener("abort", () => children.kill(), { once: true });
    let qmpListener: Deno.UnixListener | undefined;
    try {
      const fsSockets = await startVirtiofsd(children, programs["virtiofsd"], qemuShares(spec), paths);
      if (spec.qmp) qmpListener = await listenFresh(paths.qmpSocket);
      const args = qemuArgs(spec, {
        kernel: assetPath("kernel"),
        initrd: assetPath("initramfs"),
        accel: qemuAccel(host),
        tscKhz: host.tscKhz,
        fsSockets,
        netSocket: spec.network === "user" ? paths.netSocket : undefined,
      });
      clock?.mark("vmm.helpers");
      // qemu connects to netd's socket as it starts: netd listens by now.
      await options.netReady;
      const vmm = await startQemu(children, programs["qemu-system-x86_64"], args, spec.incomingFile);
      const bootFiles = [paths.qmpSocket, ...Object.values(fsSockets).flatMap((s) => [s, `${s}.pid`])];
      const exited = whenExited(vmm, children, bootFiles);
      // qemu exiting before the agent's ready is the runner's boot failure (VM_CRASHED, with the console's end).
      const agent = stdioChannel(vmm);
      const failed = (e: VmExit) =>
        new BackendUnavailableError("qemu", `qemu exited at start (code ${e.code})`, "see the sandbox's runner.log");
      const qmp = qmpListener ? await acceptAgent(qmpListener, exited, failed) : undefined;
      // One monitor connection: the path goes at once, so nothing else can reach qemu's monitor there.
      if (qmpListener) await Deno.remove(paths.qmpSocket).catch(() => {});
      const monitor = qmp ? await openMonitor(qmp, exited, spec.incomingFile !== undefined) : undefined;
      return { agent, monitor, exited, vmmPid: vmm.pid, kill: () => children.kill(), bootConfig: config };
    } catch (e) {
      children.kill();
      if (qmpListener) closeQuietly(qmpListener);
      throw e;
    }
  },
};

/**
 * The migration capabilities of every save and restore of an OCI image
 * root's VM (src/vmm/template.ts): `x-ignore-shared` leaves shared RAM out
 * of the stream (a template boot's RAM is its file); private RAM, anonymous
 * or a restored guest's copy-on-write mapping of a template's file, is
 * saved whole (sb.snapshot). Both ends of a stream need the same set: it
 * changes the stream's format.
 */
export const STREAM_CAPABILITIES = [{ capability: "x-ignore-shared", state: true }] as const;

/**
 * Opens qemu's monitor; for a restore (`incoming`), then starts loading its
 * stream (`-incoming defer`: on {@link INCOMING_FD}) with
 * {@link STREAM_CAPABILITIES}. The load goes on in qemu; the guest runs
 * once it is done.
 */
async function openMonitor(conn: Deno.Conn, exited: Promise<VmExit>, incoming: boolean): Promise<Qmp> {
  const gone = exited.then((e) => {
    throw new BackendUnavailableError("qemu", `qemu exited at start (code ${e.code})`, "see the sandbox's runner.log");
  });
  const qmp = await Promise.race([Qmp.open(conn), gone]);
  if (!incoming) return qmp;
  await Promise.race([qmp.execute("migrate-set-capabilities", { capabilities: [...STREAM_CAPABILITIES] }), gone]);
  await Promise.race([qmp.execute("migrate-incoming", { uri: `fd:${INCOMING_FD}` }), gone]);
  return qmp;
}

/** The guest kernel's module index (written by provisioning beside the kernel). */
async function kernelModules(): Promise<ModuleIndex> {
  return JSON.parse(await Deno.readTextFile(join(assetDir("kernel"), "modules.json"))).modules as ModuleIndex;
}

/** The host identity virtiofsd runs as (the runner's). */
export interface HostIds {
  readonly uid: number;
  readonly gid: number;
}

/**
 * virtiofsd's command line for one share (the Rust virtiofsd, crates.io
 * 1.14, provisioned by src/host/provision/virtiofsd.ts). The policy, for a
 * guest that is root in its VM and sends whatever FUSE requests it likes:
 *
 * - `--sandbox namespace`: virtiofsd pivots into the shared directory in
 *   its own mount, pid and network namespaces (and, for an ordinary user,
 *   a user namespace), so no name the guest sends resolves outside it.
 * - `--seccomp kill`: its own system-call allow list; anything else kills it
 *   (kill works with every call the guest can cause here, see the e2e
 *   containment test; `log` was not needed).
 * - `--readonly` for read-only shares: enforced on the host, so a guest
 *   `mount -o remount,rw` gets a writable mount whose writes still fail
 *   (`EROFS`).
 * - No device nodes, no set-user-ID/set-group-ID files: the capabilities
 *   `mknod`, `fsetid` and `setfcap` are dropped (`--modcaps`, as root), no
 *   xattrs are served (so no `security.capability` file capabilities), and
 *   the runner's share filter (src/vmm/seccomp.ts), which every virtiofsd
 *   inherits, refuses a setid mode or a device node in every `chmod`,
 *   `open`/`creat` and `mknod`. The filter is needed because dropping
 *   capabilities cannot forbid `chmod u+s`: the owner of a file may always
 *   set it. Without `CAP_FSETID`, a guest write to a setid file that already
 *   exists on the host clears the bit (the kernel's rule for writers), and a
 *   `chown` clears it too. Fifos and sockets can still be made (they need no
 *   privilege and are what builds and tests create). Directories created
 *   inside a host setgid directory still inherit its setgid bit and group:
 *   that is the kernel carrying out the host directory's own policy, and a
 *   setgid directory grants nothing but its group to new files.
 * - No uid translation as root: guest ids are host ids, so a directory root
 *   keeps its owners, and what guest root creates is root's, as a file the
 *   root caller made would be (it can carry no setid bit and is no device).
 *   Translating guest root to an unprivileged uid was the other choice; it
 *   would make every host file of a root-owned root look foreign to the
 *   guest and, by itself, would still let the guest set a setuid bit (on the
 *   unprivileged uid's files).
 * - As an ordinary user virtiofsd runs unprivileged in a user namespace
 *   where only the caller's uid and gid exist; every guest id is squashed to
 *   them (`--translate-uid squash-guest:…`, or a guest user other than root
 *   could create nothing) and the caller's files show as root's in the
 *   guest (`host:<uid>:0:1`). Everything the guest creates belongs to the
 *   caller.
 * - `--inode-file-handles=never`: file handles would need
 *   `CAP_DAC_READ_SEARCH`, with which `open_by_handle_at` reaches any file
 *   of the host filesystem, namespaces or not.
 *
 * @example
 * ```ts
 * import { virtiofsdArgs } from "./qemu.ts";
 * console.log(virtiofsdArgs({ tag: "vol0", hostPath: "/srv/data", readonly: true }, "/s/fs-vol0.sock").join(" "));
 * ```
 */
export function virtiofsdArgs(
  share: { readonly tag: string; readonly hostPath: string; readonly readonly: boolean },
  socket: string,
  ids: HostIds = { uid: Deno.uid() ?? 0, gid: Deno.gid() ?? 0 },
): string[] {
  const args = [
    `--socket-path=${socket}`,
    `--shared-dir=${share.hostPath}`,
    "--sandbox=namespace",
    "--seccomp=kill",
    "--inode-file-handles=never",
    // A read-only root changes under no guest: caching it fully makes a spawn
    // ~15x faster under TCG (no FUSE round trip per lookup). Volumes and a
    // shared writable root stay coherent with changes made elsewhere.
    `--cache=${share.tag === ROOT_TAG && share.readonly ? "always" : "auto"}`,
    "--log-level=warn",
  ];
  if (share.readonly) args.push("--readonly");
  if (ids.uid === 0) {
    args.push("--modcaps=-mknod:-fsetid:-setfcap");
  } else {
    args.push(
      `--translate-uid=squash-guest:0:${ids.uid}:4294967295`,
      `--translate-uid=host:${ids.uid}:0:1`,
      `--translate-gid=squash-guest:0:${ids.gid}:4294967295`,
      `--translate-gid=host:${ids.gid}:0:1`,
    );
  }
  return args;
}

/**
 * One virtiofsd per share (the runner's share filter installed first, so
 * each inherits it), all started together, each ready on its vhost-user
 * socket; the sockets by tag.
 */
async function startVirtiofsd(
  children: ChildGroup,
  virtiofsd: string,
  shares: readonly VmShare[],
  paths: SandboxPaths,
): Promise<Record<string, string>> {
  if (shares.length > 0) installShareFilter();
  // All started at once, then each awaited: their starts overlap.
  const started = await Promise.all(shares.map(async (share) => {
    const sock = paths.fsSocket(share.tag);
    await Deno.remove(sock).catch(() => {});
    return { tag: share.tag, sock, child: children.spawn(virtiofsd, virtiofsdArgs(share, sock)) };
  }));
  await Promise.all(started.map((s) => children.waitForSocket(s.child, s.sock, "virtiofsd")));
  return Object.fromEntries(started.map((s) => [s.tag, s.sock]));
}

/**
 * Starts qemu with `args`, its command line first in the runner log. With
 * `incomingFile`, qemu starts with that file open read-only on
 * {@link INCOMING_FD} (Deno's spawn passes no descriptor beyond stdio: a
 * shell opens it and execs qemu, under the same `setpriv`); a file that
 * cannot be opened ends the start with code 70 before qemu runs.
 */
async function startQemu(
  children: ChildGroup,
  qemu: string,
  args: readonly string[],
  incomingFile?: string,
): Promise<Deno.ChildProcess> {
  await children.log.write(`qemu ${args.join(" ")}${incomingFile ? ` ${INCOMING_FD}<${incomingFile}` : ""}\n`);
  if (!incomingFile) return children.spawnPiped(qemu, args);
  return children.spawnPiped("/bin/sh", [
    "-c",
    `exec ${INCOMING_FD}<"$1" || exit 70; shift; exec "$@"`,
    "sh",
    incomingFile,
    qemu,
    ...args,
  ]);
}

/** Resolves when qemu has exited and its helpers with it, this boot's files removed. */
async function whenExited(
  vmm: Deno.ChildProcess,
  children: ChildGroup,
  bootFiles: readonly string[],
): Promise<VmExit> {
  const s = await vmm.status;
  children.kill();
  await children.exited();
  // Per-boot files; the next boot makes them anew.
  for (const f of bootFiles) await Deno.remove(f).catch(() => {});
  return { code: s.signal ? null : s.code, signal: s.signal };
}
