/**
 * The EROFS writer's on-disk structs against an independent reader:
 * erofs-utils' `dump.erofs` parses the superblock, inodes and dirents with
 * its own copy of `erofs_fs.h`, so a field written at the wrong offset of
 * `erofs_format.ts` reads back wrong here. (lower_test.ts checks the same
 * images through the kernel mount and `fsck.erofs`.)
 */

import { assert, assertEquals } from "../util/assert.ts";
import { writeTar } from "../util/tar_writer.ts";
import { buildLower } from "../util/erofs.ts";
import { SUPER_BLOCK, SUPERBLOCK_OFFSET } from "../../src/image/erofs_format.ts";
import { which } from "../../src/util/command.ts";

/** `dump.erofs` output for `args`, in UTC; throws when it fails. */
async function dump(image: string, ...args: string[]): Promise<string> {
  const bin = (await which("dump.erofs", ["/usr/sbin", "/sbin"]))!;
  const out = await new Deno.Command(bin, {
    args: [...args, image],
    env: { TZ: "UTC" },
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`dump.erofs ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  return text;
}

/** The `Name: value` pairs of a dump (several per line, separated by runs of spaces). */
function fields(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    for (const m of line.matchAll(/([A-Za-z][A-Za-z -]*?):\s+(\S+(?: \S+)*?)(?=\s{2,}|$)/g)) out[m[1].trim()] = m[2];
  }
  return out;
}

Deno.test("erofs: superblock, inode and dirent fields read back through dump.erofs", async () => {
  if (!(await which("dump.erofs", ["/usr/sbin", "/sbin"]))) {
    console.log("skipped: dump.erofs is not installed (apt-get install erofs-utils)");
    return;
  }
  const dir = await Deno.makeTempDir({ prefix: "krunbox-erofs-fmt-" });
  try {
    const built = await buildLower(`${dir}/x.erofs`, [writeTar([
      { name: "d/", type: "dir", mode: 0o750, uid: 5, gid: 6, mtime: 1600000000 },
      { name: "d/f", data: "hello", mode: 0o640, uid: 1234, gid: 5678, mtime: 1650000000, xattrs: { "user.a": "b" } },
      { name: "big", data: new Uint8Array(10_000).fill(1), mode: 0o711, uid: 70000, gid: 3, mtime: 1700000001 },
      { name: "null", type: "char", devmajor: 1, devminor: 3, mode: 0o666 },
      { name: "l", type: "symlink", linkname: "d/f", mtime: 1500000000 },
      { name: "d/f2", type: "hardlink", linkname: "d/f" },
    ])]);
    const image = built.path;

    // superblock: every field dump.erofs prints, and the uuid bytes at the table's offset
    const sb = fields(await dump(image, "-s"));
    const raw = new Uint8Array(await Deno.readFile(image));
    const uuid = [...raw.subarray(SUPERBLOCK_OFFSET + SUPER_BLOCK.uuid, SUPERBLOCK_OFFSET + SUPER_BLOCK.uuid + 16)]
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    assertEquals(sb["Filesystem magic number"], "0xE0F5E1E2");
    assertEquals(Number(sb["Filesystem blocks"]), built.summary.blocks);
    assertEquals(Number(sb["Filesystem inode count"]), built.summary.inodes);
    assertEquals(Number(sb["Filesystem root nid"]), 0);
    assert(Number(sb["Filesystem inode metadata start block"]) >= 1, "metadata after the data area");
    assertEquals(sb["Filesystem created"], "Tue Nov 14 22:13:21 2023", "build_time: the newest mtime");
    assertEquals(sb["Filesystem UUID"].replaceAll("-", ""), uuid);
    assert(uuid !== "0".repeat(32), "a random uuid");

    // inodes: i_size, i_format's layout, xattr icount, i_mode, i_uid/i_gid (32-bit), i_mtime, i_nlink
    const inode = async (path: string) => fields(await dump(image, `--path=${path}`));
    const f = await inode("/d/f");
    assertEquals(
      [f.Size, f.Layout, f["Xattr size"], f.Uid, f.Gid, f.Access, f.Links, f["Inode size"]],
      ["5", "2", "20", "1234", "5678", "0640/rw-r-----", "2", "64"],
    );
    assertEquals(f.Timestamp, "2022-04-15 05:20:00.000000000");
    const big = await inode("/big");
    assertEquals(
      [big.Size, big.Layout, big.Uid, big.Gid, big.Access.split("/")[0], big.Links],
      ["10000", "0", "70000", "3", "0711", "1"],
    );
    const d = await inode("/d");
    assertEquals([d.Size, d.Layout, d.Uid, d.Gid, d.Access, d.Links], ["54", "2", "5", "6", "0750/rwxr-x---", "2"]);
    const root = await inode("/");
    assertEquals([root.NID, root.Links], ["0", "3"]);
    const l = await inode("/l");
    assertEquals([l.Size, l.Layout, l.Timestamp], ["3", "2", "2017-07-14 02:40:00.000000000"]);
    assertEquals((await dump(image, "--path=/null")).includes("char dev"), true);

    // dirents: nid, file_type and name of every entry, sorted by name
    const listing = (await dump(image, "--ls", "--path=/")).split("\n")
      .map((line) => line.trim().split(/\s+/))
      .filter((cols) => cols.length === 3 && /^\d+$/.test(cols[0]))
      .map(([nid, type, name]) => [name, type, nid]);
    const nidOf = async (path: string) => (await inode(path)).NID;
    assertEquals(listing, [
      [".", "2", "0"],
      ["..", "2", "0"],
      ["big", "1", await nidOf("/big")],
      ["d", "2", await nidOf("/d")],
      ["l", "7", await nidOf("/l")],
      ["null", "3", await nidOf("/null")],
    ]);
    const sub = (await dump(image, "--ls", "--path=/d")).split("\n").map((line) => line.trim().split(/\s+/))
      .filter((cols) => cols.length === 3 && /^\d+$/.test(cols[0]));
    assertEquals(sub.map(([, , name]) => name), [".", "..", "f", "f2"]);
    assertEquals(sub[2][0], sub[3][0], "a hard link shares its nid");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
