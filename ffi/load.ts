/**
 * Finding and loading libkrun. Search order: an explicit path, then
 * `KRUNBOX_LIBKRUN_PATH`, then krunbox's provisioned copy
 * (`$KRUNBOX_HOME/assets/libkrun/libkrun.so.1`), then the system's
 * `libkrun.so.1`. libkrun dlopens `libkrunfw.so.5` itself by soname: the
 * libkrun backend preloads the provisioned copy by absolute path before the
 * first context, which glibc then reuses (no `LD_LIBRARY_PATH` needed).
 *
 * @module
 */

import { BackendUnavailableError } from "../src/errors.ts";
import { assetPath } from "../src/store/assets.ts";
import { LIBKRUN_SYMBOLS } from "./libkrun.ts";

/** A loaded libkrun. Close it (or `using`) to unload. */
export type Libkrun = Deno.DynamicLibrary<typeof LIBKRUN_SYMBOLS>;

/**
 * The candidate paths, in search order.
 *
 * @example
 * ```ts
 * import { libkrunCandidates } from "./load.ts";
 * console.log(libkrunCandidates());
 * ```
 */
export function libkrunCandidates(explicitPath?: string): string[] {
  const env = Deno.env.get("KRUNBOX_LIBKRUN_PATH");
  return [explicitPath, env, assetPath("libkrun"), "libkrun.so.1"].filter((p): p is string => !!p);
}

/**
 * Loads libkrun from the first candidate that opens. The error lists every
 * path tried with its failure, and the variable to set.
 *
 * @example
 * ```ts
 * import { loadLibkrun } from "./load.ts";
 * using lib = loadLibkrun();
 * const ctx = lib.symbols.krun_create_ctx();
 * lib.symbols.krun_free_ctx(ctx);
 * ```
 */
export function loadLibkrun(explicitPath?: string): Libkrun & Disposable {
  const tried: string[] = [];
  for (const path of libkrunCandidates(explicitPath)) {
    try {
      const lib = Deno.dlopen(path, LIBKRUN_SYMBOLS);
      return Object.assign(lib, { [Symbol.dispose]: () => lib.close() });
    } catch (e) {
      tried.push(`${path}: ${(e as Error).message.split("\n")[0]}`);
    }
  }
  throw new BackendUnavailableError(
    "libkrun",
    `libkrun.so.1 could not be loaded; tried:\n  ${tried.join("\n  ")}\n`,
    "run `./dev setup` to build it, or set KRUNBOX_LIBKRUN_PATH to a libkrun.so.1",
  );
}
