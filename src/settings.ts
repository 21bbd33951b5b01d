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
  {
    name: "KRUNBOX_CONSOLE_MAX_BYTES",
    meaning: "bytes of guest console kept per part (console.log, then console.log.1)",
    default: "8388608 (8 MiB)",
  },
  {
    name: "KRUNBOX_RUNNER_LOG_MAX_BYTES",
    meaning: "bytes of runner log (runner, VMM, virtiofsd, netd) kept per part (runner.log, then runner.log.1)",
    default: "8388608 (8 MiB)",
  },
  { name: "KRUNBOX_DEBUG", meaning: "the CLI prints an error's stack as well as its message", default: "off" },
  { name: "KRUNBOX_LIBZSTD_PATH", meaning: "libzstd.so.1 to load before the system's", default: "libzstd.so.1" },
  {
    name: "KRUNBOX_AGENT_TIMEOUT_MS",
    meaning: "deadline of each agent request (fs calls, exec.start, metrics) unless the call passes its own",
    default: "60000",
  },
  {
    name: "KRUNBOX_EXEC_MAX_OUTPUT_BYTES",
    meaning: "default `maxOutputBytes` of exec/shell/execWith, per stream",
    default: "67108864 (64 MiB)",
  },
  {
    name: "KRUNBOX_COPY_MAX_BYTES",
    meaning: "bytes one copyToHost/copyFromHost may move; over it the copy fails with FS EFBIG",
    default: "17179869184 (16 GiB)",
  },
  {
    name: "KRUNBOX_COPY_MAX_ENTRIES",
    meaning: "entries (files, directories, links) one copyToHost/copyFromHost may visit; over it FS E2BIG",
    default: "1000000",
  },
  {
    name: "KRUNBOX_PULL_MAX_BYTES",
    meaning: "uncompressed layer bytes (the tar streams) one image may have; over it a pull fails with IMAGE_INVALID",
    default: "34359738368 (32 GiB)",
  },
  {
    name: "KRUNBOX_PULL_MAX_ENTRIES",
    meaning: "tar entries one image may have, all layers together",
    default: "1000000",
  },
  {
    name: "KRUNBOX_PULL_MAX_NAME_BYTES",
    meaning: "characters of entry names and link targets one image may hold in memory while it is built",
    default: "268435456 (256 Mi)",
  },
  {
    name: "KRUNBOX_PULL_MAX_XATTR_BYTES",
    meaning: "xattr bytes (names and values) one image may have",
    default: "67108864 (64 MiB)",
  },
  {
    name: "KRUNBOX_PULL_MAX_ENTRY_XATTR_BYTES",
    meaning: "xattr bytes one tar entry may have",
    default: "1048576 (1 MiB)",
  },
  {
    name: "KRUNBOX_PULL_MAX_PAX_BYTES",
    meaning: "size of one pax extended header or GNU long name (and of the pax records in force at once)",
    default: "1048576 (1 MiB)",
  },
  {
    name: "KRUNBOX_PULL_MEMORY_BYTES",
    meaning: "bytes of small files one pull holds in memory; past it they are written to disk at once (not an error)",
    default: "268435456 (256 MiB)",
  },
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

/** A positive integer from `name`, else `fallback` (a bad value is ignored, not fatal). */
function positiveInteger(name: string, fallback: number): number {
  const v = Number(env(name));
  return Number.isSafeInteger(v) && v > 0 ? v : fallback;
}

/** Default timeouts and limits, named once (those with a variable are read through {@link settings}). */
export const DEFAULTS = {
  /** How long create/start waits for the agent's ready (TCG boots take seconds). */
  bootTimeoutMs: 60_000,
  /** How long to wait for another process holding a sandbox name. */
  nameLockMs: 60_000,
  /** How long a host client waits to connect to a sandbox runner's relay. */
  relayConnectMs: 10_000,
  /** How long a runner that failed to boot gets to exit before it is killed. */
  runnerExitMs: 2_000,
  /** How long a closing log (runner.log, console.log) lets its queued writes reach the disk before dropping them. */
  logFlushMs: 1_000,
  /** How long `kill` waits for the relay to take its request before going on without it. */
  killConnectMs: 5_000,
  /** How long `kill` waits for the runner to let go of its lock. */
  killWaitMs: 10_000,
  /** How long a download may go without a byte. */
  pullStallMs: 60_000,
  /** Give up on a blob another process has been downloading this long. */
  blobLockWaitMs: 30 * 60_000,
  /** How long a new agent connection waits for the agent's `ready`. */
  agentReadyTimeoutMs: 30_000,
  /** Deadline of one agent request (fs calls, exec.start, exec.signal, metrics, ping). */
  agentTimeoutMs: 60_000,
  /** Deadline of a `runner.*` request: `runner.stop` waits for the guest's poweroff and then a kill. */
  runnerControlTimeoutMs: 120_000,
  /** Output `exec`/`shell`/`execWith` collect per stream before failing with EXEC_OUTPUT_LIMIT. */
  execMaxOutputBytes: 64 << 20,
  /** Bytes `fs().read()`/`readText()` collect before failing with FS EFBIG (a guest file can be endless). */
  fsReadMaxBytes: 1 << 30,
  /** Bytes one `copyToHost`/`copyFromHost` moves before failing with FS EFBIG (`KRUNBOX_COPY_MAX_BYTES`). */
  copyMaxBytes: 16 * 2 ** 30,
  /** Entries one `copyToHost`/`copyFromHost` visits before failing with FS E2BIG (`KRUNBOX_COPY_MAX_ENTRIES`). */
  copyMaxEntries: 1_000_000,
  /** Broken frames an agent connection survives; one more ends it (an honest agent sends none). */
  agentMaxBrokenFrames: 256,
  /** Bytes the relay queues for one client before it cuts that client off (an AgentClient drains its socket at once). */
  relayClientQueueBytes: 64 << 20,
  /**
   * Bytes queued towards an agent (the client's, the relay's guest writer) before the connection is given up: the
   * host's requests are awaited by their callers, so what piles up there is acks and cancels to a peer that stopped
   * reading, plus the callers' own concurrent writes.
   */
  agentWriteQueueBytes: 256 << 20,
  /** Grace the host adds to an exec's timeout before it kills the process itself (the agent kills at the timeout). */
  execHostTimeoutGraceMs: 1_000,
  /** How long the relay still counts an exec after it was cancelled or ran past its timeout, awaiting exec.exit. */
  execAbandonGraceMs: 5_000,
  /** Concurrent guest flows (TCP + UDP) netd admits per sandbox (`n.maxConnections`). */
  netMaxConnections: 256,
  /** TLS ports netd intercepts in a sandbox with secrets (`n.tls({ ports })`). */
  netTlsPorts: [443] as readonly number[],
  /** The longest line netd may write on stdout (a longer one is discarded as a protocol error). */
  netdLineMaxBytes: 64 * 1024,
  /** How long the runner waits for netd's `ready` line before the boot fails. */
  netdReadyMs: 10_000,
  /** How long a `stats` request to netd may take. */
  netdStatsMs: 2_000,
  /** How many recent network events the runner keeps for clients that connect later (and the most a slow client may have unwritten). */
  netEventRing: 1024,
  /** The longest secret value (it is substituted in HTTP headers). */
  secretMaxBytes: 16 * 1024,
  /** The most secrets a sandbox can have. */
  secretMaxCount: 64,
  /** The largest certificate (DER bytes) `trustCa` takes. */
  trustCaMaxBytes: 16 * 1024,
  /** The most certificates `trustCa` takes. */
  trustCaMaxCount: 64,
  /** The most rules a policy can have. */
  netMaxRules: 1024,
  /** The most names `dns({ hosts })` can fix. */
  netMaxDnsHosts: 1024,
  /** The most resolvers `dns({ upstream })` can name. */
  netMaxUpstreams: 8,
  /** How long the runner waits for the guest to power off after asking for a shutdown, before killing the VMM. */
  stopGraceMs: 5_000,
  /** The most of that grace the agent gets to end its processes before it syncs and powers off. */
  guestShutdownGraceMs: 2_000,
  /** How long a VMM helper (virtiofsd) may take to create its socket. */
  helperSocketMs: 5_000,
  /** How often the runner checks the idle timeout. */
  idleCheckMs: 100,
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
  /** Uncompressed layer bytes per image (`KRUNBOX_PULL_MAX_BYTES`). */
  pullMaxBytes: 32 * 2 ** 30,
  /** Tar entries per image (`KRUNBOX_PULL_MAX_ENTRIES`). */
  pullMaxEntries: 1_000_000,
  /** Characters of names and link targets per image (`KRUNBOX_PULL_MAX_NAME_BYTES`). */
  pullMaxNameBytes: 256 << 20,
  /** xattr bytes per image (`KRUNBOX_PULL_MAX_XATTR_BYTES`). */
  pullMaxXattrBytes: 64 << 20,
  /** xattr bytes per tar entry (`KRUNBOX_PULL_MAX_ENTRY_XATTR_BYTES`). */
  pullMaxEntryXattrBytes: 1 << 20,
  /** One pax header or GNU long name (`KRUNBOX_PULL_MAX_PAX_BYTES`; Go's archive/tar uses the same). */
  pullMaxPaxBytes: 1 << 20,
  /** Small-file bytes one pull holds in memory (`KRUNBOX_PULL_MEMORY_BYTES`). */
  pullMemoryBytes: 256 << 20,
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
  /** `KRUNBOX_AGENT_TIMEOUT_MS`, default 60 s. */
  agentTimeoutMs: (): number => positive("KRUNBOX_AGENT_TIMEOUT_MS", DEFAULTS.agentTimeoutMs),
  /** `KRUNBOX_EXEC_MAX_OUTPUT_BYTES`, default 64 MiB. */
  execMaxOutputBytes: (): number => positive("KRUNBOX_EXEC_MAX_OUTPUT_BYTES", DEFAULTS.execMaxOutputBytes),
  /** `KRUNBOX_LIBKRUN_PATH`, or undefined. */
  libkrunPath: (): string | undefined => env("KRUNBOX_LIBKRUN_PATH"),
  /** `KRUNBOX_CONSOLE_MAX_BYTES`: the guest console kept per part (two parts at most), default 8 MiB. */
  consoleMaxBytes: (): number => positive("KRUNBOX_CONSOLE_MAX_BYTES", 8 << 20),
  /** `KRUNBOX_RUNNER_LOG_MAX_BYTES`: the runner log kept per part (two parts at most), default 8 MiB. */
  runnerLogMaxBytes: (): number => positive("KRUNBOX_RUNNER_LOG_MAX_BYTES", 8 << 20),
  /** True when `KRUNBOX_DEBUG` is set (to anything but `0`). */
  debug: (): boolean => (env("KRUNBOX_DEBUG") ?? "0") !== "0",
  /** The path override of an optional library (`KRUNBOX_LIBISAL_PATH`, `KRUNBOX_LIBZSTD_PATH`). */
  libraryPath: (variable: "KRUNBOX_LIBISAL_PATH" | "KRUNBOX_LIBZSTD_PATH"): string | undefined => env(variable),
  /** `KRUNBOX_COPY_MAX_BYTES`, default 16 GiB. */
  copyMaxBytes: (): number => positiveInteger("KRUNBOX_COPY_MAX_BYTES", DEFAULTS.copyMaxBytes),
  /** `KRUNBOX_COPY_MAX_ENTRIES`, default 1,000,000. */
  copyMaxEntries: (): number => positiveInteger("KRUNBOX_COPY_MAX_ENTRIES", DEFAULTS.copyMaxEntries),
  /** `KRUNBOX_PULL_MAX_BYTES`, default 32 GiB. */
  pullMaxBytes: (): number => positiveInteger("KRUNBOX_PULL_MAX_BYTES", DEFAULTS.pullMaxBytes),
  /** `KRUNBOX_PULL_MAX_ENTRIES`, default 1,000,000. */
  pullMaxEntries: (): number => positiveInteger("KRUNBOX_PULL_MAX_ENTRIES", DEFAULTS.pullMaxEntries),
  /** `KRUNBOX_PULL_MAX_NAME_BYTES`, default 256 Mi. */
  pullMaxNameBytes: (): number => positiveInteger("KRUNBOX_PULL_MAX_NAME_BYTES", DEFAULTS.pullMaxNameBytes),
  /** `KRUNBOX_PULL_MAX_XATTR_BYTES`, default 64 MiB. */
  pullMaxXattrBytes: (): number => positiveInteger("KRUNBOX_PULL_MAX_XATTR_BYTES", DEFAULTS.pullMaxXattrBytes),
  /** `KRUNBOX_PULL_MAX_ENTRY_XATTR_BYTES`, default 1 MiB. */
  pullMaxEntryXattrBytes: (): number =>
    positiveInteger("KRUNBOX_PULL_MAX_ENTRY_XATTR_BYTES", DEFAULTS.pullMaxEntryXattrBytes),
  /** `KRUNBOX_PULL_MAX_PAX_BYTES`, default 1 MiB. */
  pullMaxPaxBytes: (): number => positiveInteger("KRUNBOX_PULL_MAX_PAX_BYTES", DEFAULTS.pullMaxPaxBytes),
  /** `KRUNBOX_PULL_MEMORY_BYTES`, default 256 MiB. */
  pullMemoryBytes: (): number => positiveInteger("KRUNBOX_PULL_MEMORY_BYTES", DEFAULTS.pullMemoryBytes),
} as const;
