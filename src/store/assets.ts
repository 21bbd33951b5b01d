/**
 * Provisioned assets under `$KRUNBOX_HOME/assets`: each asset is a directory
 * holding its files and a `VERSION` stamp written last, so a half-finished
 * provisioning step never looks complete. `src/host/setup.ts` writes them, the
 * doctor and the backends read them.
 *
 * @module
 */

import { join } from "node:path";
import { homeLayout } from "./home.ts";

/** The assets krunbox provisions. */
export type AssetName = "kernel" | "agent" | "netd" | "initramfs" | "libkrunfw" | "libkrun" | "virtiofsd";

/** Where each asset's main file lives, relative to its directory. */
export const ASSET_MAIN_FILE: Readonly<Record<AssetName, string>> = {
  kernel: "vmlinux",
  agent: "krunbox-agent",
  netd: "netd",
  initramfs: "initramfs.cpio",
  libkrunfw: "libkrunfw.so.5",
  libkrun: "libkrun.so.1",
  virtiofsd: "virtiofsd",
};

/**
 * The directory of an asset.
 *
 * @example
 * ```ts
 * import { assetDir } from "./assets.ts";
 * console.log(assetDir("kernel")); // $KRUNBOX_HOME/assets/kernel
 * ```
 */
export function assetDir(name: AssetName, home?: string): string {
  return join(homeLayout(home).assets, name);
}

/**
 * The main file of an asset (it may not exist yet).
 *
 * @example
 * ```ts
 * import { assetPath } from "./assets.ts";
 * console.log(assetPath("libkrun")); // …/assets/libkrun/libkrun.so.1
 * ```
 */
export function assetPath(name: AssetName, home?: string): string {
  return join(assetDir(name, home), ASSET_MAIN_FILE[name]);
}

/**
 * The version stamp of an installed asset, or `undefined` when it is absent
 * or incomplete.
 *
 * @example
 * ```ts
 * import { assetVersion } from "./assets.ts";
 * console.log(await assetVersion("kernel") ?? "not provisioned"); // e.g. linux-image-6.1.0-57-cloud-amd64=6.1.192-3 vmlinux-pvh unsigned-modules
 * ```
 */
export async function assetVersion(name: AssetName, home?: string): Promise<string | undefined> {
  try {
    return (await Deno.readTextFile(join(assetDir(name, home), "VERSION"))).trim();
  } catch {
    return undefined;
  }
}
