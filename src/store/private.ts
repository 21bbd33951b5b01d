/**
 * A private state home whatever the umask: every directory krunbox makes in
 * `$KRUNBOX_HOME` is 0700 and every file it writes 0600, each set explicitly
 * (the mode on create, which the umask can only narrow, then a `chmod`), and
 * an existing home with looser modes is tightened when the store opens.
 *
 * The directory mode is the only boundary of the unix sockets in a sandbox
 * directory (`agent.sock`, libkrun's `vm.sock`, `net.sock`, `fs-*.sock`): Deno cannot
 * read `SO_PEERCRED` of an accepted unix connection, so no other uid may
 * reach the directory they live in.
 *
 * @module
 */

import { join } from "node:path";
import { createFresh, ensureFile, walkNoFollow } from "../util/nofollow.ts";
import { homeLayout } from "./home.ts";

/** The mode of every directory krunbox makes in its state home. */
export const PRIVATE_DIR_MODE = 0o700;
/** The mode of every file krunbox writes in its state home. */
export const PRIVATE_FILE_MODE = 0o600;

/**
 * Makes `path` and its missing parents 0700 (each one this call created, and
 * `path` itself when it existed).
 *
 * @example
 * ```ts
 * import { privateDir } from "./private.ts";
 * await privateDir(`${await Deno.makeTempDir()}/a/b`);
 * ```
 */
export async function privateDir(path: string): Promise<void> {
  const missing: string[] = [];
  for (let p = path; p !== "/" && p !== "." && p !== ""; p = join(p, "..")) {
    if (await Deno.lstat(p).then(() => true, () => false)) break;
    missing.push(p);
  }
  await Deno.mkdir(path, { recursive: true, mode: PRIVATE_DIR_MODE });
  for (const p of missing.length ? missing : [path]) await Deno.chmod(p, PRIVATE_DIR_MODE);
}

/**
 * Writes a file 0600, created anew: whatever had the name (a link a runner
 * planted, a FIFO) is unlinked, never followed (src/util/nofollow.ts).
 *
 * @example
 * ```ts
 * import { writePrivate } from "./private.ts";
 * await writePrivate(`${await Deno.makeTempDir()}/vm.json`, "{}");
 * ```
 */
export async function writePrivate(path: string, data: string | Uint8Array): Promise<void> {
  await createFresh(path, data, PRIVATE_FILE_MODE);
}

/**
 * Makes sure a 0600 regular file is at `path` (kept with its content when
 * it is one, made empty anew when missing or anything else, a link never
 * followed), so a process that appends to it later (qemu's console, the
 * runner's log) never creates it with the umask's mode nor writes through a
 * link.
 *
 * @example
 * ```ts
 * import { touchPrivate } from "./private.ts";
 * await touchPrivate(`${await Deno.makeTempDir()}/console.log`);
 * ```
 */
export async function touchPrivate(path: string): Promise<void> {
  await ensureFile(path, PRIVATE_FILE_MODE);
}

/** An entry whose group/other bits were removed by {@link tightenHome}. */
export interface Tightened {
  readonly path: string;
  /** The permission bits before. */
  readonly from: number;
  /** The permission bits after. */
  readonly to: number;
}

/** The loose entries of a home (what {@link tightenHome} would change), found without changing anything. */
export function looseEntries(root: string = homeLayout().root): Promise<Tightened[]> {
  const found: Tightened[] = [];
  visit(root, found, false);
  return Promise.resolve(found);
}

/**
 * Removes group/other bits from the state home and what krunbox keeps in it
 * (the home itself, its top-level directories and files, `sandboxes/` and
 * `cache/` all the way down); sockets and symbolic links are left as they
 * are (a link is never followed: a test home linking a shared cache does not
 * tighten it). The owner's bits stay, so an
 * executable asset stays executable. Not descended into: directory trees
 * that are guest data (the contents of named volumes and of cached directory
 * roots keep the modes their files have in the guest) and what krunbox did
 * not write (`assets/`, `build/`, `tools/`): the home's own 0700 covers them.
 *
 * @example
 * ```ts
 * import { tightenHome } from "./private.ts";
 * const changed = await tightenHome(await Deno.makeTempDir());
 * console.log(changed.length); // 0
 * ```
 */
export function tightenHome(root: string = homeLayout().root): Promise<Tightened[]> {
  // By descriptor (src/util/nofollow.ts): an entry swapped for a link while the walk runs (a runner can write its
  // sandbox directory) is never followed, as the last name or as a directory on the way.
  const found: Tightened[] = [];
  visit(root, found, true);
  return Promise.resolve(found);
}

/**
 * Whether the walk goes into a directory (relative to the home): the home,
 * `sandboxes/` and `cache/` all the way down, except `cache/roots` (cached
 * directory roots are guest trees); `volumes/` (guest data), `assets/`,
 * `build/` and anything else are made 0700 themselves, their contents left
 * alone (the home's 0700 is their boundary).
 */
function descends(rel: string): boolean {
  const top = rel.split("/")[0];
  return rel === "" || top === "sandboxes" || (top === "cache" && !(rel + "/").startsWith("cache/roots/"));
}

function visit(root: string, found: Tightened[], tighten: boolean): void {
  walkNoFollow(root, (e) => {
    const bits = e.mode & 0o7777;
    const to = e.isDirectory ? (bits & ~0o077) | 0o700 : bits & ~0o077;
    if (to !== bits) {
      found.push({ path: e.rel ? join(root, e.rel) : root, from: bits, to });
      if (tighten) e.chmod(to);
    }
    return e.isDirectory && descends(e.rel);
  });
}
