/**
 * The state home: where krunbox keeps its database, caches, sandboxes and
 * provisioned assets. `$KRUNBOX_HOME`, default `~/.krunbox`.
 *
 * @module
 */

import { join } from "node:path";
import { StateError } from "../errors.ts";
import { settings } from "../settings.ts";

/**
 * The state home directory (not created).
 *
 * @example
 * ```ts
 * import { krunboxHome } from "./home.ts";
 * console.log(krunboxHome()); // e.g. /root/.krunbox
 * ```
 */
export function krunboxHome(): string {
  const fromEnv = settings.home();
  if (fromEnv) return fromEnv;
  const home = Deno.env.get("HOME");
  if (!home) throw new StateError("neither KRUNBOX_HOME nor HOME is set; set KRUNBOX_HOME to a writable directory");
  return join(home, ".krunbox");
}

/** Well-known places inside a state home. */
export interface HomeLayout {
  /** The state home itself. */
  readonly root: string;
  /** Provisioned assets (kernel, initramfs, agent, libkrun, libkrunfw). */
  readonly assets: string;
  /** Blobs, layers and image lowers. */
  readonly cache: string;
  /** One directory per sandbox. */
  readonly sandboxes: string;
  /** Named volumes. */
  readonly volumes: string;
  /** qemu snapshot templates, one directory per key (src/vmm/template.ts). */
  readonly templates: string;
  /** Snapshots of running qemu sandboxes, one directory per name (`sb.snapshot(name)`). */
  readonly snapshots: string;
  /** The SQLite database. */
  readonly db: string;
  /** Programs for the user's PATH: the native `krunbox` front door and its `krunbox.json`. */
  readonly bin: string;
}

/**
 * Paths of a state home.
 *
 * @example
 * ```ts
 * import { homeLayout } from "./home.ts";
 * console.log(homeLayout("/tmp/kb").sandboxes); // /tmp/kb/sandboxes
 * ```
 */
export function homeLayout(root: string = krunboxHome()): HomeLayout {
  return {
    root,
    assets: join(root, "assets"),
    cache: join(root, "cache"),
    sandboxes: join(root, "sandboxes"),
    volumes: join(root, "volumes"),
    templates: join(root, "templates"),
    snapshots: join(root, "snapshots"),
    db: join(root, "db.sqlite"),
    bin: join(root, "bin"),
  };
}
