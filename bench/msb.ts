/**
 * microsandbox's `msb` for side-by-side benchmarks: the npm package
 * `microsandbox` and its platform package (which carries `msb` and its
 * libkrunfw), installed once under `$KRUNBOX_HOME/tools`.
 *
 * @module
 */

import { join } from "node:path";
import { homeLayout } from "../src/store/home.ts";
import { runCommand } from "../src/util/command.ts";

/** The microsandbox release compared against. */
export const MSB_VERSION = "0.6.18";

/**
 * The directory of the platform package (`bin/msb`, `lib/libkrunfw…`), installing it when missing.
 *
 * @example
 * ```ts
 * import { ensureMsb } from "./msb.ts";
 * console.log(await ensureMsb());
 * ```
 */
export async function ensureMsb(): Promise<string> {
  const dir = join(homeLayout().root, "tools", `microsandbox-${MSB_VERSION}`);
  const pkg = join(dir, "node_modules/@superradcompany/microsandbox-linux-x64-gnu");
  if (!(await Deno.stat(join(pkg, "bin/msb")).then(() => true, () => false))) {
    console.log(`installing microsandbox ${MSB_VERSION} from npm into ${dir}`);
    await runCommand("npm", [
      "install",
      "--prefix",
      dir,
      "--no-audit",
      "--no-fund",
      `microsandbox@${MSB_VERSION}`,
      `@superradcompany/microsandbox-linux-x64-gnu@${MSB_VERSION}`,
    ]);
  }
  return pkg;
}
