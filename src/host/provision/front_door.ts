/**
 * The native `krunbox` front door (`agent/src/bin/krunbox/`, built with the
 * agent): setup installs it as `$KRUNBOX_HOME/bin/krunbox` with
 * `krunbox.json` beside it, which names the Deno binary and the CLI module
 * it hands every command but a non-interactive `exec` to, and the version it
 * prints. The file is rewritten on every setup, so it names the Deno and
 * the checkout (or package) that ran setup last.
 *
 * @module
 */

import { join } from "node:path";
import { homeLayout } from "../../store/home.ts";
import { VERSION } from "../../version.ts";

/** What `krunbox.json` holds. */
export interface FrontDoorConfig {
  /** The Deno binary the front door hands over to. */
  readonly deno: string;
  /** The CLI module (a path, or a URL for a remote package). */
  readonly cli: string;
  /** The version `krunbox --version` prints. */
  readonly version: string;
}

/** The CLI module beside this package: a path for a local copy, the URL otherwise. */
export function cliModule(): string {
  const url = new URL("../../../cli.ts", import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname) : url.href;
}

/**
 * Copies the provisioned front door into `bin/` (a new file renamed over the
 * old one, so a running `krunbox` is never rewritten under itself) and
 * writes `krunbox.json`. Resolves with the installed binary's path.
 *
 * @example
 * ```ts ignore
 * // Needs the provisioned agent asset: src/host/setup.ts runs it after the steps.
 * import { installFrontDoor } from "./front_door.ts";
 * console.log(await installFrontDoor("/root/.krunbox")); // /root/.krunbox/bin/krunbox
 * ```
 */
export async function installFrontDoor(home: string, config?: Partial<FrontDoorConfig>): Promise<string> {
  const { assets, bin } = homeLayout(home);
  await Deno.mkdir(bin, { recursive: true, mode: 0o755 });
  const target = join(bin, "krunbox");
  await replace(target, async (fresh) => {
    await Deno.copyFile(join(assets, "agent", "krunbox"), fresh);
    await Deno.chmod(fresh, 0o755);
  });
  const full: FrontDoorConfig = { deno: Deno.execPath(), cli: cliModule(), version: VERSION, ...config };
  await replace(join(bin, "krunbox.json"), (fresh) => Deno.writeTextFile(fresh, JSON.stringify(full, null, 1) + "\n"));
  return target;
}

/** The `krunbox.json` setup wrote under `bin` (throws as `Deno.readTextFile` does when it is not there). */
export async function readFrontDoorConfig(bin: string): Promise<Partial<FrontDoorConfig>> {
  return JSON.parse(await Deno.readTextFile(join(bin, "krunbox.json")));
}

/** Makes `path` anew: `write` fills a temporary beside it, which is then renamed over it. */
async function replace(path: string, write: (fresh: string) => Promise<void>): Promise<void> {
  const fresh = `${path}.new-${Deno.pid}`;
  await write(fresh);
  await Deno.rename(fresh, path);
}
