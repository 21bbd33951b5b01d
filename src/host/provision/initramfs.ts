/**
 * The qemu guest's initramfs: the agent as `/init`, the kernel modules it
 * loads, and a base `krunbox/boot.json` ({@link qemuBaseBootConfig}: the
 * transport and its modules). Every boot uses this archive as it is: the
 * agent asks the runner for the sandbox's own config over the agent
 * channel, so nothing per sandbox is written or copied at boot.
 *
 * @module
 */

import { join } from "node:path";
import { assetDir, assetPath, assetVersion } from "../../store/assets.ts";
import { type CpioEntry, encodeCpio } from "../../vmm/cpio.ts";
import { qemuBaseBootConfig } from "../../vmm/qemu.ts";
import { initramfsVersion } from "../../vmm/prereqs.ts";
import type { AssetStep } from "./step.ts";

/** Provisions `assets/initramfs/initramfs.cpio`. */
export const initramfsStep: AssetStep = {
  asset: "initramfs",
  async version(ctx) {
    const agent = await assetVersion("agent", ctx.home);
    const kernel = await assetVersion("kernel", ctx.home);
    if (!agent || !kernel) throw new Error("needs the agent and kernel assets first");
    // Checked whole by qemuChecks: the agent, the kernel and the layout this code boots.
    return initramfsVersion(agent, kernel);
  },
  async build(ctx, out) {
    const kernelDir = assetDir("kernel", ctx.home);
    const modules = JSON.parse(await Deno.readTextFile(join(kernelDir, "modules.json"))).modules;
    const base = new TextEncoder().encode(JSON.stringify(qemuBaseBootConfig(modules)));
    const entries: CpioEntry[] = [
      { kind: "file", path: "init", data: await Deno.readFile(assetPath("agent", ctx.home)), mode: 0o755 },
      { kind: "dir", path: "lib" },
      { kind: "dir", path: "lib/modules" },
      { kind: "dir", path: "krunbox" },
      { kind: "file", path: "krunbox/boot.json", data: base },
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
