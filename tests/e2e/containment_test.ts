/**
 * The guest is hostile (DESIGN.md "Containment"): these tests act as root in
 * real qemu VMs against what the host shares with them, and check the host
 * with its own eyes (Deno.lstat, byte comparisons), never the guest's word.
 * Every refusal has a positive control in the same run: the same kind of
 * change on a writable share, or a harmless variant, reaches the host.
 *
 * One VM serves the share cases; the root cases add a second sandbox on the
 * same directory root and one that asks for a shared writable root.
 */

import { join } from "node:path";
import { skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { Sandbox } from "../../mod.ts";

const ignore = skipVmReason !== undefined;
const asRoot = Deno.uid() === 0;

/** Mode bits as the host sees them, and whether the node is a device. */
async function hostNode(path: string): Promise<{ setid: number; device: boolean; fifo: boolean } | undefined> {
  const st = await Deno.lstat(path).catch(() => undefined);
  if (!st) return undefined;
  return { setid: (st.mode ?? 0) & 0o6000, device: !!(st.isCharDevice || st.isBlockDevice), fifo: !!st.isFifo };
}

const NAME = "containment: read-only shares hold on the host, no planted devices or setid files, private roots";

Deno.test({ name: NAME, ignore }, async (t) => {
  const root = await Deno.makeTempDir({ prefix: "krunbox-contain-root-" });
  const host = await Deno.makeTempDir({ prefix: "krunbox-contain-host-" });
  try {
    await new Deno.Command("cp", { args: ["-a", `${await busyboxRoot()}/.`, root] }).output();
    await Deno.mkdir(join(host, "ro"));
    await Deno.mkdir(join(host, "rw"));
    const original = crypto.getRandomValues(new Uint8Array(4096));
    await Deno.writeFile(join(host, "ro", "fixed.bin"), original);
    await using sb = await Sandbox.builder("contain").image(root).memory(256).replace()
      .volume("/ro", (v) => v.bind(join(host, "ro"), { readonly: true }))
      .volume("/rw", (v) => v.bind(join(host, "rw")))
      .create();
    const sh = (script: string) => sb.shell(script);

    await t.step("a read-only bind volume stays read-only after a guest remount,rw", async () => {
      const remount = await sh("mount -o remount,rw /ro && grep ' /ro ' /proc/mounts");
      // The guest's own flag is gone: what holds now is the host's --readonly.
      assert(remount.success && / rw[ ,]/.test(remount.stdout), `guest remount: ${remount.stdout}${remount.stderr}`);
      assert(!(await sh("echo evil > /ro/fixed.bin")).success, "overwriting a file on the read-only share fails");
      assert(!(await sh("echo evil > /ro/new.txt")).success, "creating a file on the read-only share fails");
      assert(!(await sh("rm -f /ro/fixed.bin")).success, "deleting a file on the read-only share fails");
      assertEquals(await Deno.readFile(join(host, "ro", "fixed.bin")), original, "the host file is byte-identical");
      assertEquals(await hostNode(join(host, "ro", "new.txt")), undefined, "nothing was created on the host");
      // Positive control: the same write on a read-write share reaches the host.
      assertEquals((await sh("echo reached > /rw/written.txt")).code, 0);
      assertEquals(await Deno.readTextFile(join(host, "rw", "written.txt")), "reached\n");
    });

    await t.step("no device nodes on a bind volume; a fifo still works", async () => {
      const r = await sh("mknod /rw/chr c 1 3; mknod /rw/blk b 7 0; mknod /rw/wh c 0 0; mknod /rw/fifo p");
      assert(!r.success || r.stderr.length > 0, "mknod of devices is refused in the guest");
      for (const name of ["chr", "blk", "wh"]) {
        const n = await hostNode(join(host, "rw", name));
        assert(!n?.device, `${name}: the host has no device node (${JSON.stringify(n)})`);
      }
      assert((await hostNode(join(host, "rw", "fifo")))?.fifo, "positive control: the fifo exists on the host");
    });

    await t.step("no setuid/setgid files on a bind volume; other modes still reach the host", async () => {
      const r = await sh(
        [
          "echo x > /rw/suid; chmod 4755 /rw/suid",
          "echo x > /rw/sgid; chmod 2755 /rw/sgid",
          "echo x > /rw/own; chown 0:0 /rw/own; chmod u+s,g+s /rw/own",
          // Created with the mode already set (cp -p of a setuid file made on the guest's tmpfs).
          "cp /bin/busybox /tmp/s; chmod 6755 /tmp/s; cp -p /tmp/s /rw/copied",
          "echo x > /rw/plain; chmod 0751 /rw/plain",
        ].join("; "),
      );
      assertEquals(r.stdout, "", r.stderr);
      for (const name of ["suid", "sgid", "own"]) {
        assertEquals((await hostNode(join(host, "rw", name)))?.setid, 0, `${name}: no setuid/setgid bit on the host`);
      }
      // A create with a setid mode is refused outright: the file is absent or plain.
      assertEquals((await hostNode(join(host, "rw", "copied")))?.setid ?? 0, 0, "copied: no setuid/setgid bit");
      const plain = await Deno.lstat(join(host, "rw", "plain"));
      assertEquals((plain.mode ?? 0) & 0o7777, 0o751, "positive control: an ordinary chmod reaches the host");
      assertEquals((await Deno.lstat(join(host, "rw", "own"))).uid, Deno.uid(), "chown lands on the caller's uid");
    });

    await t.step("in a host setgid directory: no setid file; a new directory inherits setgid only", async () => {
      const dir = join(host, "rw", "team");
      await Deno.mkdir(dir);
      await Deno.chmod(dir, 0o2777);
      const r = await sh("echo x > /rw/team/f; chmod 2755 /rw/team/f; mkdir /rw/team/d; chmod 4755 /rw/team/d");
      assert(!r.success, "the setid chmods are refused");
      assertEquals((await hostNode(join(dir, "f")))?.setid, 0, "the file has no setid bit");
      // A new directory inherits the parent's setgid bit (the kernel applies the host directory's own
      // policy; it grants only the group to new files), never a setuid bit.
      assertEquals((await hostNode(join(dir, "d")))?.setid, 0o2000, "the directory inherits setgid only");
    });

    await t.step({
      name: "a guest write clears the setuid bit of a host file",
      ignore: !asRoot, // only root can make the host's setuid file to begin with
      fn: async () => {
        const path = join(host, "rw", "host-suid");
        await Deno.writeTextFile(path, "#!/bin/sh\n");
        await Deno.chmod(path, 0o4755);
        assertEquals((await hostNode(path))?.setid, 0o4000, "set up: the host file is setuid");
        assertEquals((await sh("echo 'id' >> /rw/host-suid")).code, 0, "the guest may write it");
        assertEquals((await hostNode(path))?.setid, 0, "the write cleared its setuid bit");
      },
    });

    await t.step("a directory root used by two sandboxes: one's writes are not seen by the other", async () => {
      await using other = await Sandbox.builder("contain-b").image(root).memory(256).replace().create();
      const plant = await sh("echo trojan > /etc/planted && rm /bin/cat && mknod /dev-node c 1 3; cat /etc/planted");
      assertEquals(plant.stdout, "trojan\n", `positive control: the writer sees its own writes ${plant.stderr}`);
      assertEquals(await hostNode(join(root, "etc", "planted")), undefined, "nothing reached the host directory");
      assert(await hostNode(join(root, "bin", "cat")), "the host directory kept /bin/cat");
      const seen = await other.shell("ls /etc/planted /dev-node; ls /bin/cat");
      assert(/planted: No such file/.test(seen.stderr) && /dev-node: No such file/.test(seen.stderr), seen.stderr);
      assertEquals(seen.stdout, "/bin/cat\n", "the other sandbox still has /bin/cat");
      const mounts = await other.shell("grep -E ' / | /lower ' /proc/mounts");
      assert(/^overlay \/ overlay/m.test(mounts.stdout), `the root is an overlay: ${mounts.stdout}`);
    });

    await t.step(
      "a shared writable root (asked for) writes through to the host, still without devices or setid",
      async () => {
        await using shared = await Sandbox.builder("contain-w").imageWith((i) => i.dir(root, { writable: true }))
          .memory(256).replace().create();
        const r = await shared.shell(
          "echo through > /etc/shared-note; mknod /etc/chr c 1 3; echo x > /etc/s; chmod 4755 /etc/s",
        );
        assertEquals(await Deno.readTextFile(join(root, "etc", "shared-note")), "through\n", r.stderr);
        assert(!(await hostNode(join(root, "etc", "chr")))?.device, "no device node in the host root");
        assertEquals((await hostNode(join(root, "etc", "s")))?.setid, 0, "no setuid file in the host root");
      },
    );
  } finally {
    for (const name of ["contain", "contain-b", "contain-w"]) await Sandbox.remove(name).catch(() => {});
    await Deno.remove(root, { recursive: true }).catch(() => {});
    await Deno.remove(host, { recursive: true }).catch(() => {});
  }
});
