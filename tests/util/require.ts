/**
 * The one rule for a test whose part is missing: outside CI it is skipped,
 * with the reason and how to get the part printed; under CI (`CI=true`, or
 * `deno task test --require`) every part listed here is required, and a
 * missing one is a failing test named for it. No test decides this itself.
 *
 * At module load, for tests that cannot run at all without the part:
 * ```ts
 * const ignore = need("libkrun", await missingLibkrun(), "libkrun FFI tests") !== undefined;
 * Deno.test({ name: "…", ignore }, () => {});
 * ```
 * Inside a test, for a check that needs it:
 * ```ts
 * if (skipped("isal", loadIsal() ? undefined : "libisal.so.2 does not load")) return;
 * ```
 *
 * @module
 */

import { requireAll } from "../../src/host/ci.ts";
import { loadLibkrun, loadLibkrunfw } from "../../ffi/load.ts";
import { assetPath, assetVersion } from "../../src/store/assets.ts";

/** Every part a CI run must have, what it is and how to get it. */
export const PARTS = {
  qemu: {
    what: "the qemu backend (qemu, the kernel, initramfs and agent assets)",
    how: "run `./dev setup`; `./dev doctor` says what is missing",
  },
  libkrun: {
    what: "libkrun (libkrun.so.1)",
    how: "run `./dev setup` (builds libkrun 1.19.7 from crates.io with cargo), or set KRUNBOX_LIBKRUN_PATH",
  },
  libkrunfw: {
    what: "libkrunfw (libkrunfw.so.5)",
    how: "run `./dev setup` (fetches Debian sid's libkrunfw5 into the assets)",
  },
  isal: { what: "ISA-L (libisal.so.2)", how: "apt-get install libisal2, or set KRUNBOX_LIBISAL_PATH" },
  zstd: { what: "libzstd (libzstd.so.1)", how: "apt-get install libzstd1, or set KRUNBOX_LIBZSTD_PATH" },
  "zstd-cli": { what: "the zstd command (writes the tests' zstd layers)", how: "apt-get install zstd" },
  erofs: {
    what: "erofs read-back (fsck.erofs, or the kernel's erofs mount as root)",
    how: "apt-get install erofs-utils",
  },
  registry: {
    what: "the local registry tools (docker-registry, skopeo, umoci)",
    how: "run `./dev setup` (or apt-get install docker-registry skopeo umoci)",
  },
  nested: {
    what: "the nested libkrun suite (libkrun in an L1 VM)",
    how: "needs the qemu backend, libkrun, libkrunfw and the registry tools: run `./dev setup`",
  },
  bubblewrap: {
    what: "bubblewrap (bwrap), which contains the libkrun runner",
    how: "run `./dev setup` (or apt-get install bubblewrap)",
  },
  // For the tests that start netd (the runner already fails a CI run whose netd/ has go tests but no go).
  netd: {
    what: "the network engine netd",
    how: "run `./dev setup` (builds netd/ with go; Go from the Go module proxy's toolchain)",
  },
} as const;

/** A required part's name. */
export type Part = keyof typeof PARTS;

/** Why a required part is missing, as a failure says it. */
export class RequiredPartMissing extends Error {
  /** Stable code, as krunbox's own errors have. */
  readonly code = "REQUIRED_PART_MISSING";
  constructor(readonly part: Part, readonly reason: string) {
    super(
      `${PARTS[part].what} is missing: ${reason}. To get it: ${PARTS[part].how}. ` +
        "(Required under CI; outside CI the tests that need it are skipped.)",
    );
    this.name = "RequiredPartMissing";
  }
}

/** True when every part is required (CI, or `deno task test --require`). */
export const required: boolean = requireAll();
const registered = new Set<Part>();

/**
 * Decides, at module load, for tests that need `part`: returns `missing`
 * (so `ignore: need(…) !== undefined` skips them). Outside CI it prints
 * `SKIPPING …` with the reason; under CI it also registers one failing test,
 * `required part: <part>`, whose error names the part and how to get it.
 *
 * @example
 * ```ts
 * import { need } from "./require.ts";
 * const ignore = need("registry", undefined, "pull tests") !== undefined; // present: false
 * ```
 */
export function need(part: Part, missing: string | undefined, what = "tests"): string | undefined {
  if (missing === undefined) return undefined;
  const err = new RequiredPartMissing(part, missing);
  if (required) {
    if (!registered.has(part)) {
      registered.add(part);
      Deno.test(`required part: ${part}`, () => {
        throw err;
      });
    }
  } else {
    console.log(`SKIPPING ${what} (${part}): ${missing}; to get it: ${PARTS[part].how}`);
  }
  return missing;
}

/**
 * Decides inside a test: false when the part is there (`missing` undefined);
 * else outside CI prints `skipped: …` and returns true (the caller returns),
 * and under CI throws {@link RequiredPartMissing}, failing the test.
 *
 * @example
 * ```ts
 * import { skipped } from "./require.ts";
 * if (!skipped("zstd-cli", undefined)) console.log("the check runs");
 * ```
 */
export function skipped(part: Part, missing: string | undefined, what = "this check"): boolean {
  if (missing === undefined) return false;
  if (required) throw new RequiredPartMissing(part, missing);
  console.log(`skipped ${what} (${part}): ${missing}; to get it: ${PARTS[part].how}`);
  return true;
}

/**
 * Why libkrun cannot be used here: it is not provisioned, or no candidate
 * (KRUNBOX_LIBKRUN_PATH, the provisioned copy, the system's) loads.
 *
 * @example
 * ```ts
 * import { missingLibkrun } from "./require.ts";
 * console.log((await missingLibkrun()) ?? "libkrun loads");
 * ```
 */
export async function missingLibkrun(): Promise<string | undefined> {
  if (!(await assetVersion("libkrun"))) return `${assetPath("libkrun")} is not provisioned (no VERSION stamp)`;
  try {
    loadLibkrun({ provisioned: assetPath("libkrun") }).close();
    return undefined;
  } catch (e) {
    return (e as Error).message.trim().replaceAll("\n", " ");
  }
}

/**
 * Why the provisioned libkrunfw cannot be used here (missing, or it does not load).
 *
 * @example
 * ```ts
 * import { missingLibkrunfw } from "./require.ts";
 * console.log((await missingLibkrunfw()) ?? "libkrunfw loads");
 * ```
 */
export async function missingLibkrunfw(): Promise<string | undefined> {
  if (!(await assetVersion("libkrunfw"))) return `${assetPath("libkrunfw")} is not provisioned (no VERSION stamp)`;
  try {
    loadLibkrunfw(assetPath("libkrunfw")).close();
    return undefined;
  } catch (e) {
    return (e as Error).message.trim().replaceAll("\n", " ");
  }
}
