/**
 * What `create()` does in the guest after boot and before it returns: the
 * builder's root patches, in order, then its scripts under `/.msb/scripts`
 * (on the guest's PATH, see `GUEST_PATH` in spec.ts). Both go through the
 * guest filesystem calls, so they land in the sandbox's own root (its upper
 * disk for an OCI image) and survive a restart.
 *
 * @module
 */

import type { Patch, SandboxConfig } from "./config.ts";
import type { SandboxFs } from "./fs.ts";

/** Where the builder's scripts are installed in the guest. */
export const SCRIPTS_DIR = "/.msb/scripts";

/**
 * Applies a config's patches, then installs its scripts.
 *
 * @example
 * ```ts ignore
 * // Needs a VM; tests/e2e/qemu_busybox_test.ts ("builder patches edit the root …", "builder scripts are on PATH") runs the same.
 * import { Sandbox } from "@krunbox/krunbox";
 * import { applyRootEdits } from "./patches.ts";
 * await using sb = await Sandbox.builder("job-1").image("/srv/rootfs").create();
 * await applyRootEdits(sb.fs(), { ...sb.config(), scripts: { hello: "#!/bin/sh\necho hello\n" } });
 * console.log((await sb.exec("hello")).stdout); // hello
 * ```
 */
export async function applyRootEdits(fs: SandboxFs, config: Pick<SandboxConfig, "patches" | "scripts">): Promise<void> {
  await applyPatches(fs, config.patches);
  await installScripts(fs, config.scripts);
}

async function applyPatches(fs: SandboxFs, patches: readonly Patch[]): Promise<void> {
  for (const p of patches) {
    switch (p.op) {
      case "text":
        await fs.write(p.path, p.content, { mode: p.mode ?? 0o644 });
        break;
      case "append":
        await fs.write(p.path, p.content, { append: true });
        break;
      case "copy":
        await fs.copyFromHost(p.hostPath, p.path);
        break;
      case "mkdir":
        await fs.mkdir(p.path, { mode: p.mode ?? 0o755 });
        break;
      case "symlink":
        await fs.symlink(p.target, p.path);
        break;
      case "remove":
        if (!(await fs.exists(p.path))) break;
        if ((await fs.stat(p.path)).kind === "dir") await fs.removeDir(p.path);
        else await fs.remove(p.path);
        break;
    }
  }
}

async function installScripts(fs: SandboxFs, scripts: Readonly<Record<string, string>>): Promise<void> {
  const names = Object.keys(scripts);
  if (names.length === 0) return;
  await fs.mkdir(SCRIPTS_DIR);
  for (const name of names) await fs.write(`${SCRIPTS_DIR}/${name}`, scripts[name], { mode: 0o755 });
}
