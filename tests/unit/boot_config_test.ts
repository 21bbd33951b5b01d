/**
 * The boot config both backends give the agent: the same root and mounts
 * from one builder (src/vmm/boot_config.ts), each backend adding only its
 * modules, transport and network; the disks of a root, as qemu attaches them.
 */

import { assert, assertEquals } from "../util/assert.ts";
import { sandboxPaths, type VmRoot, type VmSpec } from "../../src/vmm/backend.ts";
import { rootDisks } from "../../src/vmm/boot_config.ts";
import { libkrunBootConfig } from "../../src/vmm/libkrun.ts";
import { qemuArgs, qemuBaseBootConfig, qemuBootConfig, qemuModules, qemuShares } from "../../src/vmm/qemu.ts";
import { GUEST_NET } from "../../src/vmm/boot_config.ts";
import { netdOf } from "../../src/sandbox/spec.ts";
import { parseConfig } from "../../src/sandbox/config.ts";

const ROOTS: Record<VmRoot["kind"], VmRoot> = {
  dir: { kind: "dir", path: "/roots/busybox" },
  overlay: { kind: "overlay", lower: "/cache/lowers/abc.erofs", upper: "/s/upper.ext4" },
  disk: { kind: "disk", path: "/images/debian.qcow2", format: "qcow2", fstype: "ext4" },
};

function spec(root: VmRoot, network: VmSpec["network"] = "none"): VmSpec {
  return {
    name: "sb",
    backend: "qemu",
    cpus: 1,
    memoryMib: 256,
    dir: "/home/.krunbox/sandboxes/sb",
    root,
    shares: [
      { tag: "v0", hostPath: "/h/data", guestPath: "/data", readonly: true },
      { tag: "v1", hostPath: "/h/out", guestPath: "/out", readonly: false },
    ],
    ports: [{ host: 8080, guest: 80, protocol: "tcp" }],
    network,
    boot: { hostname: "sb", workdir: "/w", mounts: [{ kind: "tmpfs", target: "/scratch", sizeMib: 64 }] },
    bootTimeoutMs: 30_000,
  };
}

const MOUNTS = [
  { kind: "tmpfs", target: "/scratch", sizeMib: 64 },
  { kind: "virtiofs", tag: "v0", target: "/data", readonly: true },
  { kind: "virtiofs", tag: "v1", target: "/out", readonly: false },
];

Deno.test("both backends give the same root and mounts; only modules, transport and network differ", () => {
  const modules = { virtio_console: { file: "kernel/virtio_console.ko", deps: [] } };
  for (const [kind, root] of Object.entries(ROOTS)) {
    const q = qemuBootConfig(spec(root), modules, ["virtio_console"]);
    const l = libkrunBootConfig(spec(root));
    assertEquals(q.mounts, MOUNTS, kind);
    assertEquals(l.mounts, MOUNTS, kind);
    assertEquals([q.hostname, q.workdir, l.hostname, l.workdir], ["sb", "/w", "sb", "/w"]);
    if (kind !== "dir") assertEquals(q.root, l.root, kind);
    const { modules: _qm, transport: _qt, network: _qn, root: _qr, ...qRest } = q;
    const { modules: _lm, transport: _lt, network: _ln, root: _lr, ...lRest } = l;
    assertEquals(qRest, lRest, kind);
    assertEquals(q.modules, ["/lib/modules/virtio_console.ko"]);
    assertEquals(l.modules, []);
    assertEquals(q.transport, { kind: "virtio-port", name: "agent" });
    assertEquals(l.transport, { kind: "vsock-connect", port: 1024 });
  }
  assertEquals(qemuBootConfig(spec(ROOTS.overlay), {}, []).root, {
    kind: "overlay",
    lower: { serial: "lower", fstype: "erofs" },
    upper: { serial: "upper", fstype: "ext4" },
  });
  assertEquals(qemuBootConfig(spec(ROOTS.disk), {}, []).root, { kind: "block", serial: "root", fstype: "ext4" });
  assertEquals(qemuBootConfig(spec(ROOTS.dir), {}, []).root, { kind: "virtiofs", tag: "root" });
  assertEquals(libkrunBootConfig(spec(ROOTS.dir)).root, { kind: "initramfs" });
  assertEquals(qemuBootConfig(spec(ROOTS.dir, "user"), {}, []).network, GUEST_NET);
  assertEquals(qemuBootConfig(spec(ROOTS.dir), {}, []).network, null);
  // No TSI: the libkrun guest configures the same static eth0 on netd's link.
  assertEquals(libkrunBootConfig(spec(ROOTS.dir, "user")).network, GUEST_NET);
  assertEquals(libkrunBootConfig(spec(ROOTS.dir)).network, null);
  assertEquals(GUEST_NET, { iface: "eth0", address: "10.0.2.15/24", gateway: "10.0.2.2", dns: ["10.0.2.3"] });
});

Deno.test("netd's CA (set by the runner) reaches both backends' boot config; without it there is none", () => {
  const caPem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  const withCa = { ...spec(ROOTS.dir, "user"), caPem };
  assertEquals(qemuBootConfig(withCa, {}, []).caPem, caPem);
  assertEquals(libkrunBootConfig(withCa).caPem, caPem);
  assert(!("caPem" in qemuBootConfig(spec(ROOTS.dir, "user"), {}, [])), "no CA member without one");
  assert(!("caPem" in libkrunBootConfig(spec(ROOTS.dir, "user"))), "no CA member without one");
});

Deno.test("qemu's network is a stream netdev to netd's socket, never slirp, without offloads", () => {
  const host = { kernel: "/k", initrd: "/i", accel: "tcg" as const, tscKhz: undefined };
  const spec1 = { ...spec(ROOTS.dir, "user"), ports: [{ host: 8080, guest: 80, protocol: "tcp" as const }] };
  const args = qemuArgs(spec1, { ...host, fsSockets: {}, netSocket: "/s/net/net.sock" });
  const line = args.join(" ");
  assert(!line.includes("user,") && !line.includes("hostfwd"), line);
  assertEquals(args[args.indexOf("-netdev") + 1], "stream,id=n0,server=off,addr.type=unix,addr.path=/s/net/net.sock");
  const dev = args.find((a) => a.startsWith("virtio-net-device,"))!;
  for (const f of ["csum=off", "guest_csum=off", "guest_tso4=off", "host_tso4=off", "mac=5a:94:ef:e4:0c:ee"]) {
    assert(dev.split(",").includes(f), dev);
  }
  assert(!qemuArgs(spec(ROOTS.dir), { ...host, fsSockets: {} }).includes("-netdev"));
  assertEquals(sandboxPaths("/s").netSocket, "/s/net/net.sock");
  // The device advertises netd's MTU (the guest's eth0 takes it), 1500 without a netd config; mergeable buffers hold it.
  assert(dev.split(",").includes("host_mtu=1500") && dev.split(",").includes("mrg_rxbuf=on"), dev);
  const netd = netdOf(parseConfig({ name: "sb", image: { kind: "dir", path: "/" } }), "/n", "qemu");
  const big = { ...spec1, netd };
  const bigDev = qemuArgs(big, { ...host, fsSockets: {}, netSocket: "/n" }).find((a) => a.startsWith("virtio-net-"))!;
  assert(bigDev.split(",").includes("host_mtu=65520"), bigDev);
});

Deno.test("a root's disks: the lower read-only, the upper and a disk image writable, as qemu attaches them", () => {
  assertEquals(rootDisks(ROOTS.dir), []);
  assertEquals(rootDisks(ROOTS.overlay).map((d) => [d.id, d.format, d.readonly]), [
    ["lower", "raw", true],
    ["upper", "raw", false],
  ]);
  const host = {
    kernel: "/k",
    initrd: "/i",
    accel: "tcg" as const,
    tscKhz: undefined,
    fsSockets: {},
  };
  const drives = (root: VmRoot) => {
    const args = qemuArgs(spec(root), host);
    return args.flatMap((a, i) => (args[i - 1] === "-drive" ? [a] : []));
  };
  assertEquals(drives(ROOTS.overlay), [
    "id=lower,file=/cache/lowers/abc.erofs,format=raw,if=none,cache=unsafe,readonly=on",
    "id=upper,file=/s/upper.ext4,format=raw,if=none,cache=writeback",
  ]);
  assertEquals(drives(ROOTS.disk), ["id=root,file=/images/debian.qcow2,format=qcow2,if=none,cache=writeback"]);
  assertEquals(drives(ROOTS.dir), []);
  const args = qemuArgs(spec(ROOTS.overlay), host);
  assert(args.includes(`file,id=con,path=${sandboxPaths(spec(ROOTS.overlay).dir).consoleFifo}`), args.join(" "));
});

Deno.test("qemu serves a directory root first, as tag root, then the shares; socket names stay in the sandbox dir", () => {
  assertEquals(qemuShares(spec(ROOTS.dir)).map((s) => [s.tag, s.hostPath, s.guestPath]), [
    ["root", "/roots/busybox", "/"],
    ["v0", "/h/data", "/data"],
    ["v1", "/h/out", "/out"],
  ]);
  assertEquals(qemuShares(spec(ROOTS.overlay)).map((s) => s.tag), ["v0", "v1"]);
  const paths = sandboxPaths("/s");
  assertEquals(paths.fsSocket("../a/b"), "/s/fs-.._a_b.sock");
  assertEquals([paths.vmSocket, paths.trampoline], ["/s/vm.sock", "/s/trampoline"]);
});

Deno.test("a qemu guest loads only the modules its root, shares and network need", () => {
  const none = (root: VmRoot) => ({ ...spec(root), shares: [] });
  const base = ["virtio_mmio", "virtio_console"];
  assertEquals(qemuModules(none(ROOTS.dir)), [...base, "virtiofs"]);
  assertEquals(qemuModules(none({ kind: "dir", path: "/r", upper: "/s/u" })), [
    ...base,
    "virtio_blk",
    "overlay",
    "virtiofs",
  ]);
  assertEquals(qemuModules(none(ROOTS.overlay)), [...base, "virtio_blk", "erofs", "overlay"]);
  assertEquals(qemuModules(none(ROOTS.disk)), [...base, "virtio_blk"]);
  assertEquals(qemuModules(spec(ROOTS.disk, "user")), [...base, "virtio_blk", "virtiofs", "virtio_net"]);
  assertEquals(qemuModules({ ...none(ROOTS.disk), extraModules: ["kvm-amd"] }), [...base, "virtio_blk", "kvm-amd"]);
});

Deno.test("the shared initramfs's base config: the transport and its modules, and ask the host for the rest", () => {
  const idx = {
    virtio: { file: "k/virtio.ko", deps: [] },
    virtio_mmio: { file: "k/virtio_mmio.ko", deps: ["virtio"] },
    virtio_console: { file: "k/virtio_console.ko", deps: ["virtio"] },
    virtio_blk: { file: "k/virtio_blk.ko", deps: ["virtio"] },
  };
  const baseConfig = qemuBaseBootConfig(idx);
  assertEquals(baseConfig, {
    fromHost: true,
    modules: ["/lib/modules/virtio.ko", "/lib/modules/virtio_mmio.ko", "/lib/modules/virtio_console.ko"],
    transport: { kind: "virtio-port", name: "agent" },
  });
  // The host's answer has the same transport and starts with the same modules (the agent loads each once).
  const full = qemuBootConfig({ ...spec(ROOTS.disk), shares: [] }, idx);
  assertEquals(full.transport, baseConfig.transport);
  assertEquals(full.modules.slice(0, 3), baseConfig.modules);
  assertEquals("fromHost" in full, false);
});

Deno.test("an OCI image VM's RAM is one backend object: anonymous, a template's shared file, or a restore's private copy", () => {
  const host = { kernel: "/k", initrd: "/i", accel: "tcg" as const, tscKhz: undefined, fsSockets: {} };
  const after = (args: string[], flag: string) => args.flatMap((a, i) => (args[i - 1] === flag ? [a] : []));
  const image = { ...spec(ROOTS.overlay), shares: [] };
  const cold = qemuArgs(image, host);
  assertEquals(after(cold, "-M"), ["microvm,memory-backend=mem"]);
  assertEquals(after(cold, "-object"), ["memory-backend-ram,id=mem,size=256M"]);
  assertEquals(after(cold, "-incoming"), []);
  const template = qemuArgs({ ...image, ramFile: { path: "/t/ram", share: true } }, host);
  assertEquals(after(template, "-object"), ["memory-backend-file,id=mem,size=256M,mem-path=/t/ram,share=on"]);
  const restore = qemuArgs({ ...image, ramFile: { path: "/t/ram", share: false }, incomingFile: "/t/state" }, host);
  assertEquals(after(restore, "-object"), ["memory-backend-file,id=mem,size=256M,mem-path=/t/ram,share=off"]);
  // The stream comes over QMP (migrate-incoming fd:3) once its capabilities are set: never a path on the line.
  assertEquals(after(restore, "-incoming"), ["defer"]);
  assert(!restore.join(" ").includes("/t/state"), restore.join(" "));
  // A disk or directory root keeps qemu's own RAM (a directory's is virtiofs' memfd).
  assertEquals(after(qemuArgs(spec(ROOTS.disk), host), "-M"), ["microvm"]);
  assertEquals(after(qemuArgs(spec(ROOTS.dir), { ...host, fsSockets: { root: "/s/fs.sock" } }), "-object"), [
    "memory-backend-memfd,id=mem,size=256M,share=on",
  ]);
});
