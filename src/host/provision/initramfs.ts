/**
 * The qemu guest's initramfs: the agent as `/init` and the kernel modules it
 * loads. Per-sandbox settings are not in it: the backend appends a small
 * second archive with `krunbox/boot.json` at boot (Linux unpacks both).
 *
 * @module
 */

import { join } from "node:path";
import { assetDir, assetPath, assetVersion } from "../../store/assets.ts";
import { type CpioEntry, encodeCpio } from "../../vmm/cpio.ts";
import type { AssetStep } from "./step.ts";

/** Provisions `assets/initramfs/initramfs.cpio`. */
export const initramfsStep: AssetStep = {
  asset: "initramfs",
  async version(ctx) {
    const agent = await assetVersion("agent", ctx.home);
    const kernel = await assetVersion("kernel", ctx.home);
    if (!agent || !kernel) throw new Error("needs the agent and kernel assets first");
    return `agent-${agent}+${kernel}`;
  },
  async build(ctx, out) {
    const kernelDir = assetDir("kernel", ctx.home);
    const entries: CpioEntry[] = [
      { kind: "file", path: "init", data: await Deno.readFile(assetPath("agent", ctx.home)), mode: 0o755 },
      { kind: "dir", path: "lib" },
      { kind: "dir", path: "lib/modules" },
      { kind: "dir", path: "krunbox" },
      { kind: "dir", path: "dev" },
      { kind: "dir", path: "proc" },
      { kind: "dir", path: "sys" },
      { kind: "dir", path: "newroot" },
    ];
    for await (const e of Deno.readDir(join(kernelDir, "modules"))) {
      entries.push({
        kind: "file",
        path: `lib/modules/${e.name}`,
        data: await Deno.readFile(join(kernelDir, "modules", e.name)),
      });
    }
    const bytes = encodeCpio(entries);
    await Deno.writeFile(join(out, "initramfs.cpio"), bytes);
    ctx.log(`${(bytes.length / 1048576).toFixed(1)} MiB, ${entries.length} entries`);
  },
};
