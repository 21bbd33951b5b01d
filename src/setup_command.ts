/**
 * The command that provisions krunbox where this copy of it runs, for every
 * "Fix:" that says to run setup: a checkout has `./dev setup`; a copy of
 * the package on disk (the files `deno publish` uploads) has its own
 * `src/host/setup.ts`; the package from JSR has its `setup` entry point.
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
  if (root.protocol !== "file:") {
    return root.hostname === "jsr.io"
      ? `\`deno run -A jsr:@krunbox/krunbox@${VERSION}/setup\``
      : `\`deno run -A ${new URL("src/host/setup.ts", root).href}\``;
  }
  const dir = decodeURIComponent(root.pathname).replace(/\/$/, "");
  try {
    if (Deno.statSync(`${dir}/dev`).isFile) return dir === Deno.cwd() ? "`./dev setup`" : `\`${dir}/dev setup\``;
  } catch {
    // not a checkout (or not allowed to look): the package's own entry point
  }
  return `\`deno run -A ${dir}/src/host/setup.ts\``;
}
