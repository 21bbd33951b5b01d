/**
 * The commands that provision and check krunbox where this copy of it
 * runs, for every "Fix:" that says to run setup or the doctor: a checkout
 * has `./dev setup`; a copy of the package on disk (the files `deno
 * publish` uploads) has its own `src/host/setup.ts`; the package from JSR
 * has its `setup` and `doctor` entry points.
 *
 * @example
 * ```ts
 * import { setupCommand } from "./setup_command.ts";
 * console.log(`Fix: run ${setupCommand()}`); // in a checkout: Fix: run `./dev setup`
 * ```
 *
 * @module
 */

import { VERSION } from "./version.ts";

/** The package's root directory (or URL). */
const ROOT = new URL("../", import.meta.url);

/** The setup command for this copy of krunbox, in backticks. */
export function setupCommand(root: URL = ROOT): string {
  return entryCommand("setup", root);
}

/** The doctor command for this copy of krunbox, in backticks. */
export function doctorCommand(root: URL = ROOT): string {
  return entryCommand("doctor", root);
}

/** `./dev <entry>` in a checkout, the package's `src/host/<entry>.ts` on disk, its `<entry>` export on JSR. */
function entryCommand(entry: "setup" | "doctor", root: URL): string {
  if (root.protocol !== "file:") {
    return root.hostname === "jsr.io"
      ? `\`deno run -A jsr:@krunbox/krunbox@${VERSION}/${entry}\``
      : `\`deno run -A ${new URL(`src/host/${entry}.ts`, root).href}\``;
  }
  const dir = decodeURIComponent(root.pathname).replace(/\/$/, "");
  try {
    if (Deno.statSync(`${dir}/dev`).isFile) {
      return dir === Deno.cwd() ? `\`./dev ${entry}\`` : `\`${dir}/dev ${entry}\``;
    }
  } catch {
    // not a checkout (or not allowed to look): the package's own entry point
  }
  return `\`deno run -A ${dir}/src/host/${entry}.ts\``;
}
