/**
 * The qemu prerequisites refuse an initramfs provisioned before the base
 * boot config (its agent would wait for a config no host sends) and accept
 * one of this layout.
 */

import { assertEquals } from "../util/assert.ts";
import { INITRAMFS_LAYOUT, qemuChecks } from "../../src/vmm/prereqs.ts";

Deno.test("an initramfs without this layout in its version is stale: setup rebuilds it", async () => {
  const home = await Deno.makeTempDir({ prefix: "krunbox-layout-" });
  const dir = `${home}/assets/initramfs`;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeFile(`${dir}/initramfs.cpio`, new Uint8Array(4));
  const previous = Deno.env.get("KRUNBOX_HOME");
  Deno.env.set("KRUNBOX_HOME", home);
  const initramfs = async () => (await qemuChecks()).find((c) => c.name === "guest initramfs")!;
  try {
    await Deno.writeTextFile(`${dir}/VERSION`, "agent-src-1+linux-image-6.1=6.1.1-3\n");
    const stale = await initramfs();
    assertEquals([stale.ok, stale.fix?.includes("setup")], [false, true]);
    await Deno.writeTextFile(`${dir}/VERSION`, `agent-src-1+linux-image-6.1=6.1.1-3+${INITRAMFS_LAYOUT}\n`);
    assertEquals((await initramfs()).ok, true);
  } finally {
    if (previous === undefined) Deno.env.delete("KRUNBOX_HOME");
    else Deno.env.set("KRUNBOX_HOME", previous);
    await Deno.remove(home, { recursive: true });
  }
});
