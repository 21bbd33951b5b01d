/**
 * Disk-image roots through `imageWith` (a raw ext4 image and a qcow2 image
 * holding ext2: the fstype the guest mounted, the size its `df` sees, and
 * the guest's writes read back out of the image file on the host), the fs
 * calls no other test drives in a VM (`rename`, `copy`, `exists`,
 * `removeDir`, each checked with the guest's own `ls`/`cat`/`stat`), and
 * `execWith({ tty })` as the guest sees it. The raw-disk sandbox serves
 * the fs and tty cases: two boots in all.
 */

import { join } from "node:path";
import { leftovers, skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { which } from "../../src/util/command.ts";
import { required } from "../util/require.ts";
import { FsError, Sandbox } from "../../mod.ts";

const missingTools: string[] = [];
for (const [tool, pkg] of [["mkfs.ext4", "e2fsprogs"], ["debugfs", "e2fsprogs"], ["qemu-img", "qemu-utils"]]) {
  if (!(await which(tool))) missingTools.push(`${tool} (apt-get install -y ${pkg})`);
}
// Under CI a missing tool fails the tests that need it (tests/util/require.ts); outside, they are skipped.
const missingReason = missingTools.length ? `missing ${missingTools.join(", ")}` : undefined;
if (missingReason && !required) console.log(`SKIPPING disk-image tests: ${missingReason}`);
const ignore = skipVmReason !== undefined || (missingReason !== undefined && !required);

const RAW_MIB = 96;
const QCOW2_MIB = 160;
const token = crypto.randomUUID().slice(0, 8);
const work = ignore ? "" : await Deno.makeTempDir({ prefix: "krunbox-api-disk-" });
const rawPath = join(work, "root.img");
const qcowPath = join(work, "root.qcow2");

async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")}: exit ${out.code}: ${dec.decode(out.stderr)}`);
  return dec.decode(out.stdout);
}

/** A filesystem image of `mib` MiB holding the busybox root, made by mke2fs from the directory. */
async function fsImage(path: string, fstype: "ext4" | "ext2", mib: number): Promise<void> {
  if (missingReason) throw new Error(`disk-image tests: ${missingReason}`);
  await run(`mkfs.${fstype}`, ["-q", "-F", "-d", await busyboxRoot(), path, `${mib}M`]);
}

/** A file of the image as the host reads it, without mounting (debugfs). */
async function readFromImage(rawImage: string, path: string): Promise<string> {
  return await run("debugfs", ["-R", `cat ${path}`, rawImage]);
}

let rawSb: Sandbox | undefined;
async function raw(): Promise<Sandbox> {
  if (rawSb) return rawSb;
  await fsImage(rawPath, "ext4", RAW_MIB);
  rawSb = await Sandbox.builder("api-raw").imageWith((i) => i.disk(rawPath, { format: "raw", fstype: "ext4" }))
    .memory(256).create();
  return rawSb;
}

Deno.test.afterAll(async () => {
  if (rawSb) {
    await rawSb[Symbol.asyncDispose]();
    await Sandbox.remove("api-raw").catch(() => {});
  }
  if (work) await Deno.remove(work, { recursive: true }).catch(() => {});
});

/** The guest's view of its root: mounted device, fstype, and `df` size in KiB. */
async function rootMount(sb: Sandbox): Promise<{ device: string; fstype: string; sizeKib: number }> {
  const mounts = (await sb.exec("cat", ["/proc/mounts"])).stdout;
  const line = mounts.split("\n").find((l) => l.split(" ")[1] === "/");
  assert(line, `no / in the guest's /proc/mounts:\n${mounts}`);
  const [device, , fstype] = line.split(" ");
  const df = (await sb.exec("df", ["-k", "/"])).stdout.trim().split("\n");
  const sizeKib = Number(df[df.length - 1].trim().split(/\s+/)[1]);
  return { device, fstype, sizeKib };
}

/** `df` shows a filesystem's size minus its metadata: within 80–100 % of the image. */
function assertSize(sizeKib: number, mib: number): void {
  assert(sizeKib > mib * 1024 * 0.8 && sizeKib <= mib * 1024, `df sees ${sizeKib} KiB for a ${mib} MiB image`);
}

Deno.test({ name: "imageWith disk (raw, ext4): the guest's root is that image, at its size", ignore }, async () => {
  const sb = await raw();
  const root = await rootMount(sb);
  assert(root.device.startsWith("/dev/vd"), `root device ${root.device}`);
  assertEquals(root.fstype, "ext4");
  assertSize(root.sizeKib, RAW_MIB);
  // The image's own content, not some other root.
  assertEquals(
    (await sb.exec("cat", ["/etc/passwd"])).stdout,
    await Deno.readTextFile(`${await busyboxRoot()}/etc/passwd`),
  );
});

Deno.test({ name: "fs.rename moves a file and a tree the guest made; the guest's ls agrees", ignore }, async () => {
  const sb = await raw();
  const fs = sb.fs();
  assertEquals(
    (await sb.shell("mkdir -p /root/ren/a/b && echo tree > /root/ren/a/b/f && echo one > /root/ren/x")).code,
    0,
  );
  await fs.rename("/root/ren/a", "/root/ren/moved");
  await fs.rename("/root/ren/x", "/root/ren/moved/y");
  const out = await sb.shell("ls /root/ren; ls /root/ren/moved; cat /root/ren/moved/b/f /root/ren/moved/y");
  assertEquals(out.stdout, "moved\nb\ny\ntree\none\n");
  assertEquals((await assertRejects(() => fs.rename("/root/ren/gone", "/root/ren/z"), FsError)).errno, "ENOENT");
  assertEquals((await sb.exec("ls", ["/root/ren"])).stdout, "moved\n", "a failed rename changed nothing");
});

Deno.test({ name: "fs.copy copies a file and a tree into independent files the guest reads", ignore }, async () => {
  const sb = await raw();
  const fs = sb.fs();
  await sb.shell(
    "mkdir -p /root/cp/src/sub && echo top > /root/cp/src/t && echo deep > /root/cp/src/sub/d && " +
      "chmod 750 /root/cp/src/sub && chmod 604 /root/cp/src/t && ln -s t /root/cp/src/link",
  );
  await fs.copy("/root/cp/src/t", "/root/cp/t2");
  await fs.copy("/root/cp/src", "/root/cp/dst");
  const out = await sb.shell(
    "cat /root/cp/t2 /root/cp/dst/t /root/cp/dst/sub/d; readlink /root/cp/dst/link; " +
      "stat -c %a /root/cp/t2 /root/cp/dst/sub; " +
      "[ $(stat -c %i /root/cp/src/t) != $(stat -c %i /root/cp/dst/t) ] && echo own-inode; " +
      "echo changed >> /root/cp/dst/t; cat /root/cp/src/t",
  );
  assertEquals(out.stdout, "top\ntop\ndeep\nt\n604\n750\nown-inode\ntop\n");
  assertEquals((await assertRejects(() => fs.copy("/root/cp/src", "/root/cp/src/inside"), FsError)).errno, "EINVAL");
  assertEquals((await sb.exec("ls", ["/root/cp/src"])).stdout, "link\nsub\nt\n");
});

Deno.test({ name: "fs.exists follows what the guest does to the tree", ignore }, async () => {
  const sb = await raw();
  const fs = sb.fs();
  await sb.shell("mkdir -p /root/ex && touch /root/ex/f && ln -s /nowhere /root/ex/dangling");
  assertEquals(
    await Promise.all(
      ["/root/ex", "/root/ex/f", "/root/ex/dangling", "/root/ex/none", "/root/ex/f/below"].map((p) => fs.exists(p)),
    ),
    [true, true, true, false, false],
  );
  await sb.exec("rm", ["/root/ex/f"]);
  assertEquals(await fs.exists("/root/ex/f"), false);
});

Deno.test({ name: "fs.removeDir removes a tree, not what its symlinks point at", ignore }, async () => {
  const sb = await raw();
  const fs = sb.fs();
  await sb.shell(
    "mkdir -p /root/keep /root/rm/a/b && echo kept > /root/keep/file && echo x > /root/rm/a/b/c && " +
      "ln -s /root/keep /root/rm/a/to-keep",
  );
  assertEquals((await assertRejects(() => fs.removeDir("/root/rm", { recursive: false }), FsError)).errno, "ENOTEMPTY");
  assertEquals((await sb.exec("ls", ["/root/rm"])).stdout, "a\n");
  await fs.removeDir("/root/rm");
  const out = await sb.shell("ls /root; cat /root/keep/file; test -e /root/rm || echo gone");
  assert(!out.stdout.split("\n").includes("rm"), out.stdout);
  assert(out.stdout.endsWith("kept\ngone\n"), out.stdout);
  assertEquals((await assertRejects(() => fs.removeDir("/root/keep/file"), FsError)).errno, "ENOTDIR");
});

Deno.test({ name: "execWith({ tty }) runs on a terminal of the given size", ignore }, async () => {
  const sb = await raw();
  const script = "tty; stty size; test -t 0 && echo stdin-tty";
  const sized = await sb.execWith("sh", { args: ["-c", script], tty: { rows: 37, cols: 111 } });
  assertEquals(sized.code, 0);
  assert(/^\/dev\/pts\/\d+\r?\n37 111\r?\nstdin-tty\r?\n$/.test(sized.stdout), JSON.stringify(sized.stdout));
  const dflt = await sb.execWith("sh", { args: ["-c", script], tty: true });
  assert(/^\/dev\/pts\/\d+\r?\n24 80\r?\nstdin-tty\r?\n$/.test(dflt.stdout), JSON.stringify(dflt.stdout));
  // Control: the same script without a tty.
  const plain = await sb.execWith("sh", { args: ["-c", "tty; echo code=$?"] });
  assertEquals(plain.stdout, "not a tty\ncode=1\n");
});

Deno.test({ name: "a raw disk root keeps the guest's writes in the image file itself", ignore }, async () => {
  const sb = await raw();
  await sb.shell(`echo raw-${token} > /root/from-guest`);
  await sb.stopAndWait();
  assertEquals(await leftovers("api-raw"), []);
  assertEquals(await readFromImage(rawPath, "/root/from-guest"), `raw-${token}\n`);
  // Control: the reader finds what mke2fs put there, and nothing where nothing is.
  assertEquals(
    await readFromImage(rawPath, "/etc/passwd"),
    await Deno.readTextFile(`${await busyboxRoot()}/etc/passwd`),
  );
  assertEquals(await readFromImage(rawPath, "/root/never-written"), "");
  await Sandbox.remove("api-raw");
  rawSb = undefined;
});

Deno.test({ name: "imageWith disk (qcow2, ext2): the guest mounts it as ext2 at its size", ignore }, async () => {
  const plain = join(work, "qcow-src.img");
  await fsImage(plain, "ext2", QCOW2_MIB);
  await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", plain, qcowPath]);
  await Deno.remove(plain);
  assert((await run("qemu-img", ["info", qcowPath])).includes("file format: qcow2"));
  {
    await using sb = await Sandbox.builder("api-qcow").imageWith((i) =>
      i.disk(qcowPath, { format: "qcow2", fstype: "ext2" })
    ).memory(256).create();
    const root = await rootMount(sb);
    assertEquals(root.fstype, "ext2");
    assertSize(root.sizeKib, QCOW2_MIB);
    await sb.shell(`echo qcow-${token} > /root/from-guest`);
  }
  assertEquals(await leftovers("api-qcow"), []);
  const back = join(work, "qcow-back.img");
  await run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", qcowPath, back]);
  assertEquals(await readFromImage(back, "/root/from-guest"), `qcow-${token}\n`);
  await Sandbox.remove("api-qcow");
});
