/**
 * A private state home whatever the umask: every directory krunbox makes in
 * `$KRUNBOX_HOME` is 0700 and every file it writes 0600, each set explicitly
 * (the mode on create, which the umask can only narrow, then a `chmod`), and
 * an existing home with looser modes is tightened when the store opens.
 *
 * The directory mode is the only boundary of the unix sockets in a sandbox
 * directory (`agent.sock`, `vm.sock`, `net.sock`, `fs-*.sock`): Deno cannot
 * read `SO_PEERCRED` of an accepted unix connection, so no other uid may
 * reach the directory they live in.
 *
 * @module
 */

import { join } from "node:path";
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
 * Writes a file 0600 (the mode on create, then a `chmod` for a file that
 * existed with a looser one).
 *
 * @example
 * ```ts
 * import { writePrivate } from "./private.ts";
 * await writePrivate(`${await Deno.makeTempDir()}/vm.json`, "{}");
 * ```
 */
export async function writePrivate(path: string, data: string, options: { append?: boolean } = {}): Promise<void> {
  await Deno.writeTextFile(path, data, { ...options, mode: PRIVATE_FILE_MODE });
  await Deno.chmod(path, PRIVATE_FILE_MODE);
}

/**
 * Creates an empty 0600 file if it is missing (and tightens it if not), so a
 * process that appends to it later (qemu's console, the runner's log) never
 * creates it with the umask's mode.
 *
 * @example
 * ```ts
 * import { touchPrivate } from "./private.ts";
 * await touchPrivate(`${await Deno.makeTempDir()}/console.log`);
 * ```
 */
export async function touchPrivate(path: string): Promise<void> {
  (await Deno.open(path, { write: true, create: true, mode: PRIVATE_FILE_MODE })).close();
  await Deno.chmod(path, PRIVATE_FILE_MODE);
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
export async function looseEntries(root: string = homeLayout().root): Promise<Tightened[]> {
  const found: Tightened[] = [];
  await visit(root, found);
  return found;
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
export async function tightenHome(root: string = homeLayout().root): Promise<Tightened[]> {
  const found = await looseEntries(root);
  for (const t of found) await Deno.chmod(t.path, t.to).catch(() => {});
  return found;
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

async function visit(root: string, found: Tightened[], rel = ""): Promise<void> {
  const path = rel ? join(root, rel) : root;
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(path);
  } catch {
    return;
  }
  if (info.isSymlink || info.mode === null) return;
  const bits = info.mode & 0o7777;
  const dir = info.isDirectory;
  if (!dir && !info.isFile) return; // sockets, fifos: the directory is their boundary
  const to = dir ? (bits & ~0o077) | 0o700 : bits & ~0o077;
  if (to !== bits) found.push({ path, from: bits, to });
  if (!dir || !descends(rel)) return;
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(path)) names.push(e.name);
  } catch {
    return; // gone meanwhile
  }
  for (const name of names) await visit(root, found, rel ? `${rel}/${name}` : name);
}
