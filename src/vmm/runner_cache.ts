/**
 * Deno's caches for the contained runner. A libkrun runner sees Deno's
 * module cache (`DENO_DIR`: emitted JavaScript, the V8 code cache) read-only
 * (src/vmm/contain.ts): a runner serving a guest must not be able to write
 * code the host's own Deno runs later. So it never fills that cache itself,
 * and without a warm cache every runner transpiles and compiles all its
 * modules again (measured on the host: 265 ms against 50 ms for the
 * runner's start and module load; tenfold that in the nested test host).
 *
 * {@link warmRunnerCache} fills it from the host side: it runs the runner's
 * code once, uncontained (our own code, no guest), as
 * `runner.ts --warm`, which loads every module a runner loads (the static
 * ones and the backends' dynamic ones) and exits. A marker in the cache
 * directory, keyed by Deno's version, the runner's URL and the size and
 * modification time of every file of the local code, says it is done: a
 * changed file or another Deno warms again.
 *
 * @module
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The argument that makes the runner load its modules and exit (src/vmm/runner.ts). */
export const WARM_ARG = "--warm";

/** Directories of the package root whose files the runner's modules come from. */
const CODE_DIRS = ["src", "ffi"];

/** The marker's file name in the cache directory. */
const MARKER = "krunbox-runner-warm";

/** Size and modification time of every `.ts` file under `dir` (recursively), sorted by path. */
function stamps(dir: string, out: string[] = []): string[] {
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(dir)];
  } catch {
    return out;
  }
  for (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory) stamps(path, out);
    else if (e.isFile && e.name.endsWith(".ts")) {
      const s = Deno.statSync(path);
      out.push(`${path} ${s.size} ${s.mtime?.getTime() ?? 0}`);
    }
  }
  return out;
}

/**
 * What the warm cache was made for: Deno's version, the runner's URL and,
 * for local code, the stamps of its files. Two equal keys load the same
 * modules.
 *
 * @example
 * ```ts
 * import { warmKey } from "./runner_cache.ts";
 * const a = await warmKey(new URL("./runner.ts", import.meta.url));
 * console.log(a === await warmKey(new URL("./runner.ts", import.meta.url))); // true
 * ```
 */
export async function warmKey(runner: URL): Promise<string> {
  const lines = [`deno ${Deno.version.deno}`, `runner ${runner.href}`];
  if (runner.protocol === "file:") {
    const root = fileURLToPath(new URL("../..", runner));
    for (const d of CODE_DIRS) lines.push(...stamps(join(root, d)).sort());
  }
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(lines.join("\n")));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** One warm-up at a time per process and cache directory. */
const warming = new Map<string, Promise<void>>();

/**
 * Makes sure `denoDir` holds the runner's emitted modules and code cache:
 * a no-op when its marker matches {@link warmKey}, else one uncontained
 * `deno run runner.ts --warm` with that cache (a failure is logged through
 * `log` and left alone: the runner then only starts slower).
 *
 * @example
 * ```ts ignore
 * // Spawns Deno; src/sandbox/launch.ts calls it before a contained runner's spawn.
 * import { warmRunnerCache } from "./runner_cache.ts";
 * await warmRunnerCache(`${Deno.env.get("HOME")}/.cache/deno`, new URL("./runner.ts", import.meta.url));
 * ```
 */
export function warmRunnerCache(denoDir: string, runner: URL, log: (m: string) => void = () => {}): Promise<void> {
  const key = `${denoDir}\n${runner.href}`;
  let p = warming.get(key);
  if (!p) {
    p = warm(denoDir, runner, log).finally(() => warming.delete(key));
    warming.set(key, p);
  }
  return p;
}

async function warm(denoDir: string, runner: URL, log: (m: string) => void): Promise<void> {
  const want = await warmKey(runner);
  const marker = join(denoDir, MARKER);
  const have = await Deno.readTextFile(marker).catch(() => "");
  if (have.trim() === want) return;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-prompt", runner.href, WARM_ARG],
    env: { DENO_DIR: denoDir },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output().catch((e) => e as Error);
  if (out instanceof Error || !out.success) {
    const why = out instanceof Error ? out.message : new TextDecoder().decode(out.stderr).trim().slice(0, 500);
    log(`warming the runner's module cache in ${denoDir} failed (the runner starts slower): ${why}`);
    return;
  }
  // Written whole (a rename) so a concurrent reader sees the old key or the new one.
  const tmp = `${marker}.${Deno.pid}.tmp`;
  await Deno.writeTextFile(tmp, want + "\n");
  await Deno.rename(tmp, marker);
}
