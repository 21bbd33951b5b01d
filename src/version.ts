/**
 * krunbox's version, as `krunbox --version` prints it (the Deno CLI and the native front door). It must equal
 * deno.json's `version` (a unit test holds them together): kept here so the
 * CLI needs no JSON import of the package manifest.
 *
 * @example
 * ```ts
 * import { VERSION } from "./version.ts";
 * console.log(VERSION); // e.g. 0.1.0
 * ```
 *
 * @module
 */

/** The package version. */
export const VERSION = "0.1.0";
