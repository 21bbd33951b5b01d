/**
 * Every `KRUNBOX_*` variable krunbox reads and every default limit and
 * timeout, in one place. Nothing else in the library reads a `KRUNBOX_*`
 * variable: it asks here. The README lists the same table.
 *
 * Values are read when asked for (not at import), so a test or a program can
 * set a variable before the call it wants to affect.
 *
 * This module sits at the bottom of the layering with `ffi/` and `util/`: it
 * imports nothing of krunbox's.
 *
 * @example
 * ```ts
 * import { settings } from "./settings.ts";
 * Deno.env.set("KRUNBOX_BOOT_TIMEOUT_MS", "90000");
 * console.log(settings.bootTimeoutMs()); // 90000
 * Deno.env.delete("KRUNBOX_BOOT_TIMEOUT_MS");
 * console.log(settings.bootTimeoutMs()); // 60000
 * ```
 *
 * @module
 */

/** One variable: its name, what it does, and its default as the README shows it. */
export interface SettingDoc {
  /** The environment variable. */
  readonly name: string;
  /** What it changes. */
  readonly meaning: string;
  /** The default, as text. */
  readonly default: string;
}

/** Every variable, for the README and the doctor. */
export const SETTINGS: readonly SettingDoc[] = [
  { name: "KRUNBOX_HOME", meaning: "the state home (database, caches, sandboxes, assets)", default: "~/.krunbox" },
  { name: "KRUNBOX_BACKEND", meaning: "auto, libkrun or qemu; overrides `auto` on every builder", default: "auto" },
  { name: "KRUNBOX_BOOT_TIMEOUT_MS", meaning: "how long create/start waits for the guest agent", default: "60000" },
  {
    name: "KRUNBOX_GUEST_MODULES",
    meaning: "extra kernel modules (comma-separated) the qemu guest loads",
    default: "none",
  },
  { name: "KRUNBOX_GUNZIP", meaning: "`builtin` forces the runtime's inflate instead of ISA-L", default: "isal" },
  {
    name: "KRUNBOX_PULL_STALL_MS",
    meaning: "a download that sends no byte this long fails with IMAGE_PULL",
    default: "60000",
  },
  {
    name: "KRUNBOX_LIBKRUN_PATH",
    meaning: "libkrun.so.1 to load before the provisioned one",
    default: "the provisioned copy",
  },
  { name: "KRUNBOX_LIBISAL_PATH", meaning: "libisal.so.2 to load before the system's", default: "libisal.so.2" },
  { name: "KRUNBOX_LIBZSTD_PATH", meaning: "libzstd.so.1 to load before the system's", default: "libzstd.so.1" },
];

function env(name: string): string | undefined {
  const v = Deno.env.get(name);
  return v === undefined || v === "" ? undefined : v;
}

/** A positive number from `name`, else `fallback` (a bad value is ignored, not fatal). */
function positive(name: string, fallback: number): number {
  const v = Number(env(name));
  return Number.isFinite(v) && v > 0 ? v : fallback;
}

/** Default timeouts and limits that are not variables, named once. */
export const DEFAULTS = {
  /** How long create/start waits for the agent's ready (TCG boots take seconds). */
  bootTimeoutMs: 60_000,
  /** How long to wait for another process holding a sandbox name. */
  nameLockMs: 60_000,
  /** How long a download may go without a byte. */
  pullStallMs: 60_000,
  /** Give up on a blob another process has been downloading this long. */
  blobLockWaitMs: 30 * 60_000,
  /** Largest manifest or index accepted (as containerd). */
  manifestMaxBytes: 4 << 20,
  /** Largest image config accepted. */
  imageConfigMaxBytes: 16 << 20,
  /** Largest token-service answer read. */
  registryTokenMaxBytes: 4 << 20,
  /** Largest registry error body read for a message. */
  registryErrorBodyMaxBytes: 64 << 10,
  /** Redirects a registry request may follow. */
  registryMaxRedirects: 10,
} as const;

/**
 * The settings, each read from the environment when called.
 */
export const settings = {
  /** `KRUNBOX_HOME`, or undefined for the default (`~/.krunbox`). */
  home: (): string | undefined => env("KRUNBOX_HOME"),
  /** `KRUNBOX_BACKEND` as written (validated by the backend chooser), or undefined. */
  backend: (): string | undefined => env("KRUNBOX_BACKEND"),
  /** `KRUNBOX_BOOT_TIMEOUT_MS`, default 60 s. */
  bootTimeoutMs: (): number => positive("KRUNBOX_BOOT_TIMEOUT_MS", DEFAULTS.bootTimeoutMs),
  /** `KRUNBOX_GUEST_MODULES`, split on commas. */
  guestModules: (): string[] => (env("KRUNBOX_GUEST_MODULES") ?? "").split(",").map((m) => m.trim()).filter(Boolean),
  /** True when `KRUNBOX_GUNZIP=builtin`. */
  builtinGunzip: (): boolean => env("KRUNBOX_GUNZIP") === "builtin",
  /** `KRUNBOX_PULL_STALL_MS`, default 60 s. */
  pullStallMs: (): number => positive("KRUNBOX_PULL_STALL_MS", DEFAULTS.pullStallMs),
  /** `KRUNBOX_LIBKRUN_PATH`, or undefined. */
  libkrunPath: (): string | undefined => env("KRUNBOX_LIBKRUN_PATH"),
  /** The path override of an optional library (`KRUNBOX_LIBISAL_PATH`, `KRUNBOX_LIBZSTD_PATH`). */
  libraryPath: (variable: "KRUNBOX_LIBISAL_PATH" | "KRUNBOX_LIBZSTD_PATH"): string | undefined => env(variable),
} as const;
