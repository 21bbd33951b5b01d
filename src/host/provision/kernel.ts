/**
 * The guest kernel for the qemu backend (and the nested test host): Debian's
 * cloud kernel, unpacked from its package without installing it, plus the
 * modules guests load, copied out with an index.
 *
 * @module
 */

import { join } from "node:path";
import { GUEST_MODULES, loadOrder, NESTED_HOST_MODULES, parseModulesDep } from "../../vmm/modules.ts";
import { runCommand } from "../../util/command.ts";
import { candidateVersion, downloadAndUnpack, firstDependency, withFreshLists } from "./apt.ts";
import type { AssetStep } from "./step.ts";
import { extractVmlinux } from "./vmlinux.ts";
import { stripModuleSignature } from "./module_sig.ts";

const META_PACKAGE = "linux-image-cloud-amd64";

/**
 * What the asset makes of the package: the ELF qemu boots directly (./vmlinux.ts) and modules without their
 * signatures (./module_sig.ts). A new value rebuilds the asset.
 */
const KERNEL_FORM = "vmlinux-pvh unsigned-modules";

async function kernelPackage(): Promise<string> {
  return await withFreshLists(() => firstDependency(META_PACKAGE));
}

/** Provisions `assets/kernel`: vmlinux (the uncompressed ELF), config, modules/*.ko (unsigned), modules.json. */
export const kernelStep: AssetStep = {
  asset: "kernel",
  async version() {
    const pkg = await kernelPackage();
    return `${pkg}=${await withFreshLists(() => candidateVersion(pkg))} ${KERNEL_FORM}`;
  },
  async build(ctx, out) {
    const pkg = await kernelPackage();
    const unpacked = await Deno.makeTempDir({ prefix: "krunbox-kernel-" });
    try {
      ctx.log(`downloading and unpacking ${pkg}`);
      await downloadAndUnpack(pkg, unpacked);
      const boot = join(unpacked, "boot");
      const release = [...Deno.readDirSync(boot)].find((e) => e.name.startsWith("vmlinuz-"))?.name.slice(8);
      if (!release) throw new Error(`${pkg} has no /boot/vmlinuz-*`);
      ctx.log("unpacking the kernel image to the ELF qemu boots directly");
      await extractVmlinux(join(boot, `vmlinuz-${release}`), join(out, "vmlinux"));
      await Deno.copyFile(join(boot, `config-${release}`), join(out, "config"));
      const modDir = join(unpacked, "lib", "modules", release);
      // The package does not ship modules.dep (dpkg's postinst makes it): make it.
      await runCommand("depmod", ["-b", unpacked, release]);
      const index = parseModulesDep(await Deno.readTextFile(join(modDir, "modules.dep")));
      const names = loadOrder(index, [...GUEST_MODULES, ...NESTED_HOST_MODULES]);
      await Deno.mkdir(join(out, "modules"));
      const kept: Record<string, { file: string; deps: readonly string[] }> = {};
      for (const name of names) {
        const file = `modules/${name}.ko`;
        await Deno.writeFile(
          join(out, file),
          stripModuleSignature(await Deno.readFile(join(modDir, index[name].file))),
        );
        kept[name] = { file, deps: index[name].deps };
      }
      await Deno.writeTextFile(
        join(out, "modules.json"),
        JSON.stringify({ release, modules: kept }, null, 1) + "\n",
      );
      ctx.log(`kernel ${release}, ${names.length} modules`);
    } finally {
      await Deno.remove(unpacked, { recursive: true });
    }
  },
};
