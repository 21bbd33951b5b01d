/**
 * Finding and loading shared libraries, the one place krunbox calls
 * `Deno.dlopen`: {@link openFirst} (the first of several candidate paths
 * that opens, with why each other one failed), {@link openRequired} (the
 * same, or an error listing every path tried) and {@link OptionalLibrary}
 * (a library krunbox can do without, opened once: libc, ISA-L, libzstd).
 *
 * libkrun's search order: an explicit path, then
 * `KRUNBOX_LIBKRUN_PATH`, then krunbox's provisioned copy (its path is
 * given by the caller, `assetPath("libkrun")` in src/store/assets.ts: ffi is
 * the bottom layer and knows nothing of the state home), then the system's
 * `libkrun.so.1`. libkrun dlopens `libkrunfw.so.5` itself by soname: the
 * libkrun backend preloads the provisioned copy by absolute path
 * ({@link loadLibkrunfw}) before the first context, which glibc then reuses
 * (no `LD_LIBRARY_PATH` needed).
 *
 * @module
 */

import { BackendUnavailableError } from "../src/errors.ts";
import { LIBKRUN_SYMBOLS } from "./libkrun.ts";
import { settings } from "../src/settings.ts";

/** A loaded libkrun. Close it (or `using`) to unload. */
export type Libkrun = Deno.DynamicLibrary<typeof LIBKRUN_SYMBOLS>;

/** Where to look for libkrun, besides `KRUNBOX_LIBKRUN_PATH` and the system's soname. */
export interface LibkrunSearch {
  /** Tried first: a path the caller insists on. */
  readonly path?: string;
  /** krunbox's provisioned copy (`assetPath("libkrun")`), tried after `KRUNBOX_LIBKRUN_PATH`. */
  readonly provisioned: string;
}

/**
 * The candidate paths, in search order.
 *
 * @example
 * ```ts
 * import { libkrunCandidates } from "./load.ts";
 * console.log(libkrunCandidates({ path: "/opt/libkrun.so.1", provisioned: "/home/me/.krunbox/assets/libkrun/libkrun.so.1" })); // [ "/opt/libkrun.so.1", "/home/me/.krunbox/assets/libkrun/libkrun.so.1", "libkrun.so.1" ]
 * ```
 */
export function libkrunCandidates(search: LibkrunSearch): string[] {
  const env = settings.libkrunPath();
  return [search.path, env, search.provisioned, "libkrun.so.1"].filter((p): p is string => !!p);
}

/**
 * Loads libkrun from the first candidate that opens. The error lists every
 * path tried with its failure, and the variable to set.
 *
 * @example
 * ```ts
 * import { loadLibkrun } from "./load.ts";
 * import { assetPath } from "../src/store/assets.ts";
 * using lib = loadLibkrun({ provisioned: assetPath("libkrun") });
 * const ctx = lib.symbols.krun_create_ctx();
 * lib.symbols.krun_free_ctx(ctx);
 * ```
 */
export function loadLibkrun(search: LibkrunSearch): Libkrun & Disposable {
  return openRequired(
    "libkrun.so.1",
    libkrunCandidates(search),
    LIBKRUN_SYMBOLS,
    "run `./dev setup` to build it, or set KRUNBOX_LIBKRUN_PATH to a libkrun.so.1",
  );
}

/** libkrunfw's soname: what libkrun itself dlopens. */
export const LIBKRUNFW_SONAME = "libkrunfw.so.5";

/**
 * Loads libkrunfw (the guest kernel libkrun runs) from `provisioned`, else
 * by its soname, so that libkrun's own `dlopen("libkrunfw.so.5")` at its
 * first context finds the same copy already loaded. It exports nothing
 * krunbox calls. The error lists every path tried.
 *
 * @example
 * ```ts
 * import { loadLibkrunfw } from "./load.ts";
 * using fw = loadLibkrunfw("/root/.krunbox/assets/libkrunfw/libkrunfw.so.5");
 * console.log("libkrunfw loaded", fw); // libkrunfw loaded DynamicLibrary { … }
 * ```
 */
export function loadLibkrunfw(provisioned: string): Deno.DynamicLibrary<Record<string, never>> & Disposable {
  return openRequired(LIBKRUNFW_SONAME, [provisioned, LIBKRUNFW_SONAME], {}, "run `./dev setup`");
}

/**
 * Opens the first of `candidates` that loads, or throws the libkrun
 * backend's {@link BackendUnavailableError} naming `library`, every path
 * tried with its failure, and `fix`.
 *
 * @example
 * ```ts
 * import { openRequired } from "./load.ts";
 * try {
 *   using lib = openRequired("libz.so.1", ["/opt/libz.so.1", "libz.so.1"], {}, "apt-get install zlib1g");
 *   console.log("loaded", lib); // loaded DynamicLibrary { … } (from libz.so.1)
 * } catch (e) {
 *   console.log((e as Error).message); // "libkrun backend unavailable: libz.so.1 could not be loaded; tried: …"
 * }
 * ```
 */
export function openRequired<S extends Deno.ForeignLibraryInterface>(
  library: string,
  candidates: readonly string[],
  symbols: S,
  fix: string,
): Deno.DynamicLibrary<S> & Disposable {
  const { lib, errors } = openFirst(candidates, symbols);
  if (lib) return Object.assign(lib, { [Symbol.dispose]: () => lib.close() });
  throw new BackendUnavailableError(
    "libkrun",
    `${library} could not be loaded; tried:\n  ${errors.join("\n  ")}\n`,
    fix,
  );
}

/**
 * Opens the first of `candidates` that loads; `errors` says, one line
 * each, why the ones tried before it failed.
 *
 * @example
 * ```ts
 * import { openFirst } from "./load.ts";
 * const { lib, path, errors } = openFirst(["/opt/libz.so.1", "libz.so.1"], {});
 * console.log(lib ? `opened ${path}` : errors.join("\n")); // opened libz.so.1 (/opt/libz.so.1 does not exist)
 * ```
 */
export function openFirst<S extends Deno.ForeignLibraryInterface>(
  candidates: readonly string[],
  symbols: S,
): { lib?: Deno.DynamicLibrary<S>; path?: string; errors: string[] } {
  const errors: string[] = [];
  for (const path of candidates) {
    try {
      return { lib: Deno.dlopen(path, symbols), path, errors };
    } catch (e) {
      errors.push(`${path}: ${(e as Error).message.split("\n")[0]}`);
    }
  }
  return { errors };
}

/**
 * A library krunbox works without (or with less): looked for at `$envVar`
 * (when it has one), then by `soname`, opened once on first use; `undefined` when it cannot be
 * loaded (not installed, or no `--allow-ffi`), with {@link errors} saying why.
 *
 * @example
 * ```ts
 * import { OptionalLibrary } from "./load.ts";
 * const zlib = new OptionalLibrary(undefined, "libz.so.1", {
 *   // const char *zlibVersion(void)
 *   zlibVersion: { parameters: [], result: "pointer" },
 * });
 * console.log(zlib.load() ? `zlib at ${zlib.path}` : zlib.errors().join("; ")); // zlib at libz.so.1
 * ```
 */
export class OptionalLibrary<S extends Deno.ForeignLibraryInterface> {
  #opened?: { lib?: Deno.DynamicLibrary<S>; path?: string; errors: string[] };

  constructor(
    readonly envVar: "KRUNBOX_LIBISAL_PATH" | "KRUNBOX_LIBZSTD_PATH" | undefined,
    readonly soname: string,
    readonly symbols: S,
  ) {}

  /** The library, opened on the first call. */
  load(): Deno.DynamicLibrary<S> | undefined {
    const env = this.envVar && settings.libraryPath(this.envVar);
    this.#opened ??= openFirst(env ? [env, this.soname] : [this.soname], this.symbols);
    return this.#opened.lib;
  }

  /** The path it was opened from (after {@link load}). */
  get path(): string | undefined {
    return this.#opened?.path;
  }

  /** Why {@link load} found nothing: every path tried, with its error. */
  errors(): string[] {
    this.load();
    return this.#opened!.errors;
  }
}
