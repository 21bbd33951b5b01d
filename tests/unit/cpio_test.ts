import { assertEquals } from "../util/assert.ts";
import { encodeCpio } from "../../src/vmm/cpio.ts";

Deno.test("cpio archive is read back by GNU cpio with the same files, modes and links", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const data = new Uint8Array([0, 1, 2, 3, 255]);
    const archive = encodeCpio([
      { kind: "dir", path: "/krunbox", mode: 0o700 },
      { kind: "file", path: "krunbox/boot.json", data, mode: 0o600 },
      { kind: "symlink", path: "krunbox/link", target: "boot.json" },
    ]);
    await Deno.writeFile(`${dir}/a.cpio`, archive);
    const out = await new Deno.Command("cpio", {
      args: ["-idm", "--quiet", "-F", `${dir}/a.cpio`],
      cwd: dir,
      stderr: "piped",
    }).output();
    assertEquals(new TextDecoder().decode(out.stderr), "");
    assertEquals(await Deno.readFile(`${dir}/krunbox/boot.json`), data);
    assertEquals((await Deno.stat(`${dir}/krunbox/boot.json`)).mode! & 0o777, 0o600);
    assertEquals((await Deno.stat(`${dir}/krunbox`)).mode! & 0o777, 0o700);
    assertEquals(await Deno.readLink(`${dir}/krunbox/link`), "boot.json");
    assertEquals(archive.length % 4, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
