/**
 * Root filesystems for the demo and the tests, built offline from Debian
 * packages and cached under `$KRUNBOX_HOME/cache/roots`:
 * - busybox: Debian's busybox-static with its applet links (a few MB, ms to build);
 * - debian: an mmdebstrap minbase root (with extra packages, e.g. python3).
 *
 * @module
 */

import { join } from "node:path";
import { homeLayout } from "../src/store/home.ts";
import { runCommand } from "../src/util/command.ts";

const BUSYBOX = "/bin/busybox";

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/**
 * Builds (once) a busybox root directory and returns its path.
 *
 * @example
 * ```ts
 * import { busyboxRoot } from "./roots.ts";
 * console.log(await busyboxRoot());
 * ```
 */
export async function busyboxRoot(dir = join(homeLayout().cache, "roots", "busybox")): Promise<string> {
  if (await exists(join(dir, ".complete"))) return dir;
  if (!(await exists(BUSYBOX))) throw new Error(`${BUSYBOX} is missing: apt-get install busybox-static`);
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  for (
    const d of ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var/tmp"]
  ) {
    await Deno.mkdir(join(dir, d), { recursive: true });
  }
  await Deno.chmod(join(dir, "tmp"), 0o1777);
  await Deno.copyFile(BUSYBOX, join(dir, "bin/busybox"));
  await Deno.chmod(join(dir, "bin/busybox"), 0o755);
  const { stdout } = await runCommand(BUSYBOX, ["--list-full"]);
  for (const applet of stdout.split("\n").filter(Boolean)) {
    if (applet === "bin/busybox") continue;
    const depth = applet.split("/").length - 1;
    await Deno.symlink(`${"../".repeat(depth)}bin/busybox`, join(dir, applet)).catch(() => {});
  }
  await Deno.writeTextFile(
    join(dir, "etc/passwd"),
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
  );
  await Deno.writeTextFile(join(dir, "etc/group"), "root:x:0:\nnogroup:x:65534:\n");
  await Deno.writeTextFile(join(dir, ".complete"), "");
  return dir;
}

/**
 * Builds (once per package list) a Debian minbase root with extra packages
 * via mmdebstrap (needs root and Debian's mirror; a minute or two the first
 * time).
 *
 * @example
 * ```ts
 * import { debianRoot } from "./roots.ts";
 * console.log(await debianRoot(["python3"]));
 * ```
 */
export async function debianRoot(packages: readonly string[] = [], name = "debian"): Promise<string> {
  const dir = join(homeLayout().cache, "roots", name);
  const stamp = `bookworm minbase ${[...packages].sort().join(",")}`;
  if (await Deno.readTextFile(join(dir, ".complete")).then((s) => s === stamp, () => false)) return dir;
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  // The target exists (empty, as mmdebstrap allows) and is named by its real path: the cache may be reached
  // through a link (a test home's), and mmdebstrap refuses a target whose path it cannot resolve.
  await Deno.mkdir(dir, { recursive: true });
  await runCommand("mmdebstrap", [
    "--variant=minbase",
    "--mode=root",
    "--quiet",
    ...(packages.length ? [`--include=${packages.join(",")}`] : []),
    "bookworm",
    await Deno.realPath(dir),
  ]);
  await Deno.writeTextFile(join(dir, ".complete"), stamp);
  return dir;
}
