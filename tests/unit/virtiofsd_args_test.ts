/** How the file server is started for each kind of share and caller, and how a directory root is served. */

import { assert, assertEquals } from "../util/assert.ts";
import { qemuArgs, qemuBootConfig, virtiofsdArgs } from "../../src/vmm/qemu.ts";
import { libkrunBootConfig } from "../../src/vmm/libkrun.ts";

const vol = { tag: "vol0", hostPath: "/srv/data", readonly: false };

Deno.test("virtiofsd: namespace sandbox, seccomp kill, no file handles, for every share", () => {
  for (const ids of [{ uid: 0, gid: 0 }, { uid: 1000, gid: 1000 }]) {
    const args = virtiofsdArgs(vol, "/s/fs-vol0.sock", ids);
    for (const a of ["--sandbox=namespace", "--seccomp=kill", "--inode-file-handles=never", "--shared-dir=/srv/data"]) {
      assert(args.includes(a), `${a} for uid ${ids.uid}`);
    }
    assert(!args.some((a) => a.startsWith("--xattr") || a.startsWith("--posix-acl")), "no xattrs are served");
  }
});

Deno.test("virtiofsd: read-only shares are read-only on the host", () => {
  assert(virtiofsdArgs({ ...vol, readonly: true }, "/s", { uid: 0, gid: 0 }).includes("--readonly"));
  assert(!virtiofsdArgs(vol, "/s", { uid: 0, gid: 0 }).includes("--readonly"));
});

Deno.test("virtiofsd: as root, mknod/fsetid/setfcap dropped and ids kept; as a user, ids squashed to the caller", () => {
  const root = virtiofsdArgs(vol, "/s", { uid: 0, gid: 0 });
  assert(root.includes("--modcaps=-mknod:-fsetid:-setfcap"));
  assert(!root.some((a) => a.startsWith("--translate-")));
  const user = virtiofsdArgs(vol, "/s", { uid: 1000, gid: 100 });
  assertEquals(user.filter((a) => a.startsWith("--translate-")), [
    "--translate-uid=squash-guest:0:1000:4294967295",
    "--translate-uid=host:1000:0:1",
    "--translate-gid=squash-guest:0:100:4294967295",
    "--translate-gid=host:100:0:1",
  ]);
  assert(!user.some((a) => a.startsWith("--modcaps")), "an unprivileged virtiofsd has no host capabilities to drop");
});

Deno.test("a private directory root: a read-only share under the sandbox's upper disk (qemu and libkrun)", () => {
  const spec = {
    name: "a",
    backend: "qemu" as const,
    cpus: 1,
    memoryMib: 256,
    dir: "/s",
    root: { kind: "dir" as const, path: "/r", upper: "/s/upper.ext4" },
    shares: [],
    ports: [],
    network: "none" as const,
    boot: {},
    bootTimeoutMs: 30000,
  };
  const upper = { serial: "upper", fstype: "ext4" };
  assertEquals(qemuBootConfig(spec, {}, []).root, { kind: "virtiofs", tag: "root", upper });
  const host = {
    kernel: "/k",
    initrd: "/i",
    accel: "tcg" as const,
    tscKhz: 1,
    fsSockets: { root: "/f" },
  };
  assert(qemuArgs(spec, host).some((a) => a.startsWith("id=upper,file=/s/upper.ext4,")), "the upper disk is attached");
  assertEquals(libkrunBootConfig(spec).root, { kind: "virtiofs", tag: "lower", upper });
  const shared = { ...spec, root: { kind: "dir" as const, path: "/r" } };
  assertEquals(qemuBootConfig(shared, {}, []).root, { kind: "virtiofs", tag: "root" });
  assert(!qemuArgs(shared, host).some((a) => a.includes("upper")), "a shared writable root has no upper");
  assertEquals(libkrunBootConfig(shared).root, { kind: "initramfs" });
});
