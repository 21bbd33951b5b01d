/**
 * Typed errors. Every error krunbox throws is a {@link KrunboxError} with a
 * stable string `code` a caller can branch on, a message that says what to
 * do, and the underlying `cause` when there is one.
 *
 * The wire form at the end ({@link errorToWire}, {@link errorFromWire})
 * carries an error across a process boundary as the same class. It lives
 * here, past 500 lines, because its table must name every class and field
 * above: one concern (the error model), kept in step in one file, and the
 * unit test fails when a class is added without its row.
 *
 * @module
 */

/** Stable error codes. Never renamed once published. */
export type ErrorCode =
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "STILL_RUNNING"
  | "NOT_RUNNING"
  | "INVALID_CONFIG"
  | "IMAGE_PULL"
  | "IMAGE_AUTH"
  | "IMAGE_NOT_FOUND"
  | "IMAGE_DIGEST_MISMATCH"
  | "IMAGE_INVALID"
  | "EXEC_TIMEOUT"
  | "EXEC_SPAWN_FAILED"
  | "EXEC_ABORTED"
  | "EXEC_OUTPUT_LIMIT"
  | "FS"
  | "BACKEND_UNAVAILABLE"
  | "VM_CRASHED"
  | "BOOT_TIMEOUT"
  | "PROTOCOL"
  | "AGENT"
  | "AGENT_TIMEOUT"
  | "LIBKRUN"
  | "STATE"
  | "SECRET_UNAVAILABLE";

/** Every code, for checks at run time (a wire form names one); the type below fails to compile if one is missing. */
const ERROR_CODES = [
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "STILL_RUNNING",
  "NOT_RUNNING",
  "INVALID_CONFIG",
  "IMAGE_PULL",
  "IMAGE_AUTH",
  "IMAGE_NOT_FOUND",
  "IMAGE_DIGEST_MISMATCH",
  "IMAGE_INVALID",
  "EXEC_TIMEOUT",
  "EXEC_SPAWN_FAILED",
  "EXEC_ABORTED",
  "EXEC_OUTPUT_LIMIT",
  "FS",
  "BACKEND_UNAVAILABLE",
  "VM_CRASHED",
  "BOOT_TIMEOUT",
  "PROTOCOL",
  "AGENT",
  "AGENT_TIMEOUT",
  "LIBKRUN",
  "STATE",
  "SECRET_UNAVAILABLE",
] as const satisfies readonly ErrorCode[];
/** `true` only while {@link ERROR_CODES} lists every {@link ErrorCode}. */
const EVERY_CODE_LISTED: Exclude<ErrorCode, typeof ERROR_CODES[number]> extends never ? true : never = true;
void EVERY_CODE_LISTED;

/** Options shared by every krunbox error. */
export interface KrunboxErrorOptions {
  /** The error that caused this one. */
  cause?: unknown;
}

/**
 * Base class of every error krunbox throws.
 *
 * @example
 * ```ts
 * import { KrunboxError, Sandbox } from "@krunbox/krunbox";
 * try {
 *   await Sandbox.get("nope");
 * } catch (e) {
 *   if (e instanceof KrunboxError && e.code === "NOT_FOUND") console.log("no such sandbox"); // no such sandbox
 * }
 * ```
 */
export class KrunboxError extends Error {
  /** Stable machine-readable code. */
  readonly code: ErrorCode;

  /** An error with a stable `code`; `options.cause` becomes its `cause`. */
  constructor(code: ErrorCode, message: string, options?: KrunboxErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.name = new.target.name;
  }
}

/**
 * A named thing (sandbox, image, volume) does not exist.
 *
 * @example
 * ```ts
 * import { NotFoundError } from "@krunbox/krunbox";
 * const e = new NotFoundError("sandbox", "job-1");
 * console.log(e.code, e.kind, e.what); // NOT_FOUND sandbox job-1
 * if (e.message !== 'sandbox "job-1" not found') throw new Error(e.message);
 * ```
 */
export class NotFoundError extends KrunboxError {
  /** `kind` is what was looked up (`sandbox`, `image`, `volume`); `what` is its name. */
  constructor(readonly kind: string, readonly what: string, options?: KrunboxErrorOptions) {
    super("NOT_FOUND", `${kind} "${what}" not found`, options);
  }
}

/**
 * A named thing already exists (use `replace()` to replace a sandbox).
 *
 * @example
 * ```ts
 * import { AlreadyExistsError, KrunboxError } from "@krunbox/krunbox";
 * const e = new AlreadyExistsError("sandbox", "job-1");
 * console.log(e.code, e.kind, e.what); // ALREADY_EXISTS sandbox job-1
 * if (!(e instanceof KrunboxError) || e.code !== "ALREADY_EXISTS") throw new Error(e.code);
 * ```
 */
export class AlreadyExistsError extends KrunboxError {
  /** `kind` is what was being created (`sandbox`, …); `what` is the name already taken. */
  constructor(readonly kind: string, readonly what: string, options?: KrunboxErrorOptions) {
    super(
      "ALREADY_EXISTS",
      `${kind} "${what}" already exists; remove it first or call replace() on the builder`,
      options,
    );
  }
}

/**
 * The operation needs a stopped sandbox, and this one is running.
 *
 * @example
 * ```ts
 * import { StillRunningError } from "@krunbox/krunbox";
 * const e = new StillRunningError("job-1");
 * console.log(e.code, e.sandbox); // STILL_RUNNING job-1
 * if (e.message !== 'sandbox "job-1" is running; stop it first') throw new Error(e.message);
 * ```
 */
export class StillRunningError extends KrunboxError {
  /** `sandbox` names the running sandbox. */
  constructor(readonly sandbox: string, options?: KrunboxErrorOptions) {
    super("STILL_RUNNING", `sandbox "${sandbox}" is running; stop it first`, options);
  }
}

/**
 * The operation needs a running sandbox, and this one is not.
 *
 * @example
 * ```ts
 * import { NotRunningError } from "@krunbox/krunbox";
 * const e = new NotRunningError("job-1", "stopped");
 * console.log(e.code, e.status); // NOT_RUNNING stopped
 * if (e.message !== 'sandbox "job-1" is not running (status: stopped)') throw new Error(e.message);
 * ```
 */
export class NotRunningError extends KrunboxError {
  /** `sandbox` names the sandbox; `status` is its status at the time (e.g. `stopped`, `crashed`, `draining`). */
  constructor(readonly sandbox: string, readonly status: string, options?: KrunboxErrorOptions) {
    super("NOT_RUNNING", `sandbox "${sandbox}" is not running (status: ${status})`, options);
  }
}

/**
 * A configuration value is invalid. `field` names the offending setting.
 *
 * @example
 * ```ts
 * import { InvalidConfigError } from "@krunbox/krunbox";
 * const e = new InvalidConfigError("cpus", "must be an integer from 1 to 64, got 0");
 * console.log(e.code, e.field); // INVALID_CONFIG cpus
 * if (e.message !== "invalid cpus: must be an integer from 1 to 64, got 0") throw new Error(e.message);
 * ```
 */
export class InvalidConfigError extends KrunboxError {
  /** `field` names the setting (e.g. `cpus`, `volumes.hostPath`); `detail` says what is wrong with it. */
  constructor(readonly field: string, detail: string, options?: KrunboxErrorOptions) {
    super("INVALID_CONFIG", `invalid ${field}: ${detail}`, options);
  }
}

/**
 * An image could not be pulled, resolved or unpacked. The `code` tells which:
 * `IMAGE_PULL`, `IMAGE_AUTH`, `IMAGE_NOT_FOUND`, `IMAGE_DIGEST_MISMATCH`,
 * `IMAGE_INVALID`.
 *
 * @example
 * ```ts
 * import { ImageError } from "@krunbox/krunbox";
 * const e = new ImageError("IMAGE_NOT_FOUND", "127.0.0.1:5000/busybox:nope: manifest unknown");
 * console.log(e.code, e.name); // IMAGE_NOT_FOUND ImageError
 * if (e.code !== "IMAGE_NOT_FOUND") throw new Error(e.code);
 * ```
 */
export class ImageError extends KrunboxError {
  /** `code` says which image failure it is; `message` says what happened. */
  constructor(
    code:
      | "IMAGE_PULL"
      | "IMAGE_AUTH"
      | "IMAGE_NOT_FOUND"
      | "IMAGE_DIGEST_MISMATCH"
      | "IMAGE_INVALID",
    message: string,
    options?: KrunboxErrorOptions,
  ) {
    super(code, message, options);
  }
}

/**
 * An exec ran past its timeout; its process group was killed in the guest.
 *
 * @example
 * ```ts
 * import { ExecTimeoutError } from "@krunbox/krunbox";
 * const e = new ExecTimeoutError("sleep", 1000);
 * console.log(e.code, e.cmd, e.timeoutMs); // EXEC_TIMEOUT sleep 1000
 * if (e.message !== '"sleep" timed out after 1000 ms and was killed') throw new Error(e.message);
 * ```
 */
export class ExecTimeoutError extends KrunboxError {
  /** `cmd` is the program; `timeoutMs` the timeout it ran past, in milliseconds. */
  constructor(readonly cmd: string, readonly timeoutMs: number, options?: KrunboxErrorOptions) {
    super("EXEC_TIMEOUT", `"${cmd}" timed out after ${timeoutMs} ms and was killed`, options);
  }
}

/**
 * An exec was aborted through its AbortSignal; its process group was killed.
 *
 * @example
 * ```ts
 * import { ExecAbortedError } from "@krunbox/krunbox";
 * const e = new ExecAbortedError("sleep");
 * console.log(e.code, e.cmd); // EXEC_ABORTED sleep
 * if (e.message !== '"sleep" was aborted and killed') throw new Error(e.message);
 * ```
 */
export class ExecAbortedError extends KrunboxError {
  /** `cmd` is the program that was aborted. */
  constructor(readonly cmd: string, options?: KrunboxErrorOptions) {
    super("EXEC_ABORTED", `"${cmd}" was aborted and killed`, options);
  }
}

/**
 * A collecting call (`exec`, `shell`, `execWith`) got more output on one
 * stream than its `maxOutputBytes`; the process group was killed. Stream
 * big output with `execStream`, or raise `maxOutputBytes`.
 *
 * @example
 * ```ts
 * import { ExecOutputLimitError } from "@krunbox/krunbox";
 * const e = new ExecOutputLimitError("yes", "stdout", 1024);
 * console.log(e.code, e.stream, e.limitBytes); // EXEC_OUTPUT_LIMIT stdout 1024
 * ```
 */
export class ExecOutputLimitError extends KrunboxError {
  /** `cmd` is the program; `stream` the output that overflowed; `limitBytes` the limit it passed. */
  constructor(
    readonly cmd: string,
    readonly stream: "stdout" | "stderr",
    readonly limitBytes: number,
    options?: KrunboxErrorOptions,
  ) {
    super(
      "EXEC_OUTPUT_LIMIT",
      `"${cmd}" wrote more than ${limitBytes} bytes to ${stream} and was killed; ` +
        "use execStream() for big output or raise maxOutputBytes",
      options,
    );
  }
}

/** Why a process could not be started in the guest. */
export type SpawnFailureKind =
  | "not_found"
  | "permission_denied"
  | "not_executable"
  | "bad_cwd"
  | "unknown_user"
  | "invalid_argument"
  | "other";

/**
 * A process could not be started in the guest (never reported as exit 127).
 *
 * @example
 * ```ts
 * import { ExecSpawnError } from "@krunbox/krunbox";
 * const e = new ExecSpawnError("nope", "not_found", "ENOENT");
 * console.log(e.code, e.kind, e.errno); // EXEC_SPAWN_FAILED not_found ENOENT
 * if (e.message !== 'cannot start "nope": not found (ENOENT)') throw new Error(e.message);
 * ```
 */
export class ExecSpawnError extends KrunboxError {
  /** `cmd` is the program; `kind` why it could not start; `errno` the POSIX error name (e.g. `ENOENT`). */
  constructor(
    readonly cmd: string,
    readonly kind: SpawnFailureKind,
    readonly errno: string,
    options?: KrunboxErrorOptions,
  ) {
    super("EXEC_SPAWN_FAILED", `cannot start "${cmd}": ${kind.replaceAll("_", " ")} (${errno})`, options);
  }
}

/**
 * A guest filesystem call failed; `errno` is the POSIX error name (ENOENT…).
 *
 * @example
 * ```ts
 * import { FsError } from "@krunbox/krunbox";
 * const e = new FsError("ENOENT", "/missing");
 * console.log(e.code, e.errno, e.path); // FS ENOENT /missing
 * if (e.message !== "ENOENT: /missing") throw new Error(e.message);
 * ```
 */
export class FsError extends KrunboxError {
  /** `errno` is the POSIX error name (e.g. `ENOENT`); `path` the guest (or host) path it concerns. */
  constructor(readonly errno: string, readonly path: string, options?: KrunboxErrorOptions) {
    super("FS", `${errno}: ${path}`, options);
  }
}

/**
 * A backend (libkrun or qemu) cannot run here. `missing` says what is absent
 * and `fix` how to get it.
 *
 * @example
 * ```ts
 * import { BackendUnavailableError } from "@krunbox/krunbox";
 * const e = new BackendUnavailableError("qemu", "qemu-system-x86_64", "run `./dev setup`");
 * console.log(e.code, e.backend, e.fix); // BACKEND_UNAVAILABLE qemu run `./dev setup`
 * if (e.message !== "qemu backend unavailable: qemu-system-x86_64. Fix: run `./dev setup`") throw new Error(e.message);
 * ```
 */
export class BackendUnavailableError extends KrunboxError {
  /** `backend` is `libkrun` or `qemu`; `missing` says what is absent; `fix` how to get it. */
  constructor(
    readonly backend: string,
    readonly missing: string,
    readonly fix: string,
    options?: KrunboxErrorOptions,
  ) {
    super("BACKEND_UNAVAILABLE", `${backend} backend unavailable: ${missing}. Fix: ${fix}`, options);
  }
}

/**
 * The VM died without an orderly poweroff (guest panic, VMM crash, runner
 * killed). `logTail` quotes the end of the console log.
 *
 * @example
 * ```ts
 * import { VmCrashedError } from "@krunbox/krunbox";
 * const e = new VmCrashedError("job-1", "Kernel panic - not syncing");
 * console.log(e.code, e.logTail); // VM_CRASHED Kernel panic - not syncing
 * if (!e.message.endsWith("console log ends with:\nKernel panic - not syncing")) throw new Error(e.message);
 * ```
 */
export class VmCrashedError extends KrunboxError {
  /** `sandbox` names the sandbox; `logTail` is the end of its console log (may be empty). */
  constructor(readonly sandbox: string, readonly logTail: string, options?: KrunboxErrorOptions) {
    super(
      "VM_CRASHED",
      `sandbox "${sandbox}" VM crashed${logTail ? `; console log ends with:\n${logTail}` : ""}`,
      options,
    );
  }
}

/**
 * The guest did not become ready in time. `logTail` quotes the console log.
 *
 * @example
 * ```ts
 * import { BootTimeoutError } from "@krunbox/krunbox";
 * const e = new BootTimeoutError("job-1", 30000, "");
 * console.log(e.code, e.timeoutMs); // BOOT_TIMEOUT 30000
 * if (!e.message.endsWith("the console log is empty")) throw new Error(e.message);
 * ```
 */
export class BootTimeoutError extends KrunboxError {
  /** `sandbox` names the sandbox; `timeoutMs` is the boot timeout in ms; `logTail` the end of its console log. */
  constructor(
    readonly sandbox: string,
    readonly timeoutMs: number,
    readonly logTail: string,
    options?: KrunboxErrorOptions,
  ) {
    super(
      "BOOT_TIMEOUT",
      `sandbox "${sandbox}" did not become ready within ${timeoutMs} ms` +
        (logTail ? `; console log ends with:\n${logTail}` : "; the console log is empty"),
      options,
    );
  }
}

/**
 * A frame or message from the agent broke the protocol (agent/PROTOCOL.md).
 *
 * @example
 * ```ts
 * import { ProtocolError } from "@krunbox/krunbox";
 * const e = new ProtocolError("frame header of 5000000 bytes exceeds 1 MiB");
 * console.log(e.code, e.message); // PROTOCOL frame header of 5000000 bytes exceeds 1 MiB
 * if (e.code !== "PROTOCOL") throw new Error(e.code);
 * ```
 */
export class ProtocolError extends KrunboxError {
  /** `message` says what broke the protocol. */
  constructor(message: string, options?: KrunboxErrorOptions) {
    super("PROTOCOL", message, options);
  }
}

/**
 * The agent answered a request with an error this library has no better
 * type for. `rpcCode` is the JSON-RPC error code.
 *
 * @example
 * ```ts
 * import { AgentError } from "@krunbox/krunbox";
 * const e = new AgentError(-32601, "method not found");
 * console.log(e.code, e.rpcCode, e.message); // AGENT -32601 agent error -32601: method not found
 * if (e.rpcCode !== -32601 || e.message !== "agent error -32601: method not found") throw new Error(e.message);
 * ```
 */
export class AgentError extends KrunboxError {
  /** `rpcCode` is the JSON-RPC error code; `data` the error's `data` member, if any. */
  constructor(readonly rpcCode: number, message: string, readonly data?: unknown, options?: KrunboxErrorOptions) {
    super("AGENT", `agent error ${rpcCode}: ${message}`, options);
  }
}

/**
 * The agent did not answer a request within its deadline (the request was
 * cancelled on the wire). Deadlines default to `KRUNBOX_AGENT_TIMEOUT_MS`;
 * calls that may legitimately take long (a big `fs.copy`) take `timeoutMs`.
 *
 * @example
 * ```ts
 * import { AgentTimeoutError } from "@krunbox/krunbox";
 * const e = new AgentTimeoutError("fs.stat", 60000);
 * console.log(e.code, e.method); // AGENT_TIMEOUT fs.stat
 * ```
 */
export class AgentTimeoutError extends KrunboxError {
  /** `method` is the request that got no answer; `timeoutMs` its deadline in milliseconds. */
  constructor(readonly method: string, readonly timeoutMs: number, options?: KrunboxErrorOptions) {
    super(
      "AGENT_TIMEOUT",
      `the agent did not answer ${method} within ${timeoutMs} ms; the request was cancelled ` +
        "(pass a longer timeoutMs, or check the sandbox with metrics() or its console log)",
      options,
    );
  }
}

/**
 * A libkrun call returned a negative errno.
 *
 * @example
 * ```ts
 * import { LibkrunError } from "@krunbox/krunbox";
 * const e = new LibkrunError("krun_set_vm_config", -22);
 * console.log(e.code, e.message); // LIBKRUN krun_set_vm_config failed with errno 22
 * if (e.message !== "krun_set_vm_config failed with errno 22") throw new Error(e.message);
 * ```
 */
export class LibkrunError extends KrunboxError {
  /** `call` is the libkrun function; `errnoNum` its negative return value (−errno). */
  constructor(readonly call: string, readonly errnoNum: number, options?: KrunboxErrorOptions) {
    super("LIBKRUN", `${call} failed with errno ${-errnoNum}`, options);
  }
}

/**
 * The state home or its database cannot be used (read-only, corrupt, foreign).
 *
 * @example
 * ```ts
 * import { StateError } from "@krunbox/krunbox";
 * const e = new StateError("state home /ro is not writable; set KRUNBOX_HOME");
 * console.log(e.code, e.name); // STATE StateError
 * if (e.code !== "STATE") throw new Error(e.code);
 * ```
 */
export class StateError extends KrunboxError {
  /** `message` says what is wrong with the state home and how to fix it. */
  constructor(message: string, options?: KrunboxErrorOptions) {
    super("STATE", message, options);
  }
}

/**
 * A sandbox with secrets was asked to start from its stored config, which
 * holds only the secrets' placeholders: krunbox never stores a secret's
 * value. Create the sandbox again (with `replace()`) and the same
 * `secret(...)` calls. Nothing was changed.
 *
 * @example
 * ```ts
 * import { SecretUnavailableError } from "@krunbox/krunbox";
 * const e = new SecretUnavailableError("job-1", ["OPENAI_API_KEY"]);
 * console.log(e.code, e.envs); // SECRET_UNAVAILABLE [ "OPENAI_API_KEY" ]
 * if (e.code !== "SECRET_UNAVAILABLE" || e.envs[0] !== "OPENAI_API_KEY") throw new Error(e.code);
 * ```
 */
export class SecretUnavailableError extends KrunboxError {
  /** `sandbox` names the sandbox; `envs` the secrets whose values are missing. */
  constructor(readonly sandbox: string, readonly envs: readonly string[], options?: KrunboxErrorOptions) {
    super(
      "SECRET_UNAVAILABLE",
      `sandbox "${sandbox}" has secrets (${envs.join(", ")}) whose values krunbox never stores, so it cannot ` +
        `start from its stored config; create it again with Sandbox.builder("${sandbox}").replace() and the same ` +
        `secret(...) calls`,
      options,
    );
  }
}
// ---------------------------------------------------------------------------
// The wire form: an error as JSON, for process boundaries (the runner tells
// its starter why a boot failed). The receiver rethrows the same class with
// the same fields, so `instanceof`, `code` and fields such as
// `BackendUnavailableError.fix` survive the hop.

/**
 * An error as JSON (see {@link errorToWire}, {@link errorFromWire}).
 *
 * @example
 * ```ts
 * import { errorToWire, FsError, type WireError } from "./errors.ts";
 * const wire: WireError = errorToWire(new FsError("ENOENT", "/x"));
 * console.log(wire); // { class: "FsError", code: "FS", message: "ENOENT: /x", fields: { errno: "ENOENT", path: "/x" } }
 * ```
 */
export interface WireError {
  /** The class name, e.g. `BackendUnavailableError`; for an error that is not krunbox's, its `name`. */
  readonly class: string;
  /** The stable code; absent for an error that is not a {@link KrunboxError}. */
  readonly code?: ErrorCode;
  /** The message as the sender had it. */
  readonly message: string;
  /** The class's own fields (`fix`, `missing`, `errno`, `timeoutMs`, …), JSON values. */
  readonly fields?: Readonly<Record<string, unknown>>;
  /** The cause in the same form (a few levels deep at most). */
  readonly cause?: WireError;
}

/** How deep a chain of causes is carried. */
const WIRE_CAUSE_DEPTH = 4;

/** Reads one field of a wire error, checking its type (a wrong one is a malformed wire error). */
interface FieldReader {
  str(name: string): string;
  num(name: string): number;
  json(name: string): unknown;
}

/** One class of the wire table: its own fields and how to rebuild it. */
interface WireClass {
  // deno-lint-ignore no-explicit-any
  readonly cls: new (...args: any[]) => KrunboxError;
  readonly fields: readonly string[];
  readonly make: (f: FieldReader, code: ErrorCode, options: KrunboxErrorOptions) => KrunboxError;
}

const SPAWN_KINDS: readonly SpawnFailureKind[] = [
  "not_found",
  "permission_denied",
  "not_executable",
  "bad_cwd",
  "unknown_user",
  "invalid_argument",
  "other",
];
const IMAGE_CODES = ["IMAGE_PULL", "IMAGE_AUTH", "IMAGE_NOT_FOUND", "IMAGE_DIGEST_MISMATCH", "IMAGE_INVALID"] as const;

/**
 * Every error class with its fields, by class name. A class missing here
 * travels as its nearest listed ancestor (the unit test fails on one).
 * Messages are carried verbatim; the arguments below that only shape a
 * message get a placeholder that the carried message then replaces.
 */
const WIRE_CLASSES: Readonly<Record<string, WireClass>> = {
  KrunboxError: { cls: KrunboxError, fields: [], make: (_f, code, o) => new KrunboxError(code, "", o) },
  NotFoundError: {
    cls: NotFoundError,
    fields: ["kind", "what"],
    make: (f, _c, o) => new NotFoundError(f.str("kind"), f.str("what"), o),
  },
  AlreadyExistsError: {
    cls: AlreadyExistsError,
    fields: ["kind", "what"],
    make: (f, _c, o) => new AlreadyExistsError(f.str("kind"), f.str("what"), o),
  },
  StillRunningError: {
    cls: StillRunningError,
    fields: ["sandbox"],
    make: (f, _c, o) => new StillRunningError(f.str("sandbox"), o),
  },
  NotRunningError: {
    cls: NotRunningError,
    fields: ["sandbox", "status"],
    make: (f, _c, o) => new NotRunningError(f.str("sandbox"), f.str("status"), o),
  },
  InvalidConfigError: {
    cls: InvalidConfigError,
    fields: ["field"],
    make: (f, _c, o) => new InvalidConfigError(f.str("field"), "", o),
  },
  ImageError: {
    cls: ImageError,
    fields: [],
    make: (_f, code, o) => {
      const imageCode = IMAGE_CODES.find((c) => c === code);
      if (!imageCode) throw new TypeError(`ImageError with code ${code}`);
      return new ImageError(imageCode, "", o);
    },
  },
  ExecTimeoutError: {
    cls: ExecTimeoutError,
    fields: ["cmd", "timeoutMs"],
    make: (f, _c, o) => new ExecTimeoutError(f.str("cmd"), f.num("timeoutMs"), o),
  },
  ExecAbortedError: {
    cls: ExecAbortedError,
    fields: ["cmd"],
    make: (f, _c, o) => new ExecAbortedError(f.str("cmd"), o),
  },
  ExecSpawnError: {
    cls: ExecSpawnError,
    fields: ["cmd", "kind", "errno"],
    make: (f, _c, o) => {
      const kind = SPAWN_KINDS.find((k) => k === f.str("kind"));
      if (!kind) throw new TypeError(`unknown spawn failure kind ${f.str("kind")}`);
      return new ExecSpawnError(f.str("cmd"), kind, f.str("errno"), o);
    },
  },
  FsError: {
    cls: FsError,
    fields: ["errno", "path"],
    make: (f, _c, o) => new FsError(f.str("errno"), f.str("path"), o),
  },
  BackendUnavailableError: {
    cls: BackendUnavailableError,
    fields: ["backend", "missing", "fix"],
    make: (f, _c, o) => new BackendUnavailableError(f.str("backend"), f.str("missing"), f.str("fix"), o),
  },
  VmCrashedError: {
    cls: VmCrashedError,
    fields: ["sandbox", "logTail"],
    make: (f, _c, o) => new VmCrashedError(f.str("sandbox"), f.str("logTail"), o),
  },
  BootTimeoutError: {
    cls: BootTimeoutError,
    fields: ["sandbox", "timeoutMs", "logTail"],
    make: (f, _c, o) => new BootTimeoutError(f.str("sandbox"), f.num("timeoutMs"), f.str("logTail"), o),
  },
  ProtocolError: { cls: ProtocolError, fields: [], make: (_f, _c, o) => new ProtocolError("", o) },
  AgentError: {
    cls: AgentError,
    fields: ["rpcCode", "data"],
    make: (f, _c, o) => new AgentError(f.num("rpcCode"), "", f.json("data"), o),
  },
  LibkrunError: {
    cls: LibkrunError,
    fields: ["call", "errnoNum"],
    make: (f, _c, o) => new LibkrunError(f.str("call"), f.num("errnoNum"), o),
  },
  StateError: { cls: StateError, fields: [], make: (_f, _c, o) => new StateError("", o) },
  ExecOutputLimitError: {
    cls: ExecOutputLimitError,
    fields: ["cmd", "stream", "limitBytes"],
    make: (f, _c, o) => {
      const stream = f.str("stream");
      if (stream !== "stdout" && stream !== "stderr") throw new TypeError(`stream ${stream}`);
      return new ExecOutputLimitError(f.str("cmd"), stream, f.num("limitBytes"), o);
    },
  },
  AgentTimeoutError: {
    cls: AgentTimeoutError,
    fields: ["method", "timeoutMs"],
    make: (f, _c, o) => new AgentTimeoutError(f.str("method"), f.num("timeoutMs"), o),
  },
  SecretUnavailableError: {
    cls: SecretUnavailableError,
    fields: ["sandbox", "envs"],
    make: (f, _c, o) => {
      const envs = f.json("envs");
      if (!Array.isArray(envs) || !envs.every((e) => typeof e === "string")) throw new TypeError("envs is not a list");
      return new SecretUnavailableError(f.str("sandbox"), envs, o);
    },
  },
};

/** The nearest class of the wire table that `e` is an instance of. */
function wireClassOf(e: KrunboxError): [string, WireClass] {
  for (let p = Object.getPrototypeOf(e); p && p !== Error.prototype; p = Object.getPrototypeOf(p)) {
    const entry = Object.entries(WIRE_CLASSES).find(([, w]) => w.cls.prototype === p);
    if (entry) return entry;
  }
  return ["KrunboxError", WIRE_CLASSES.KrunboxError];
}

/** A value as JSON would carry it (`undefined` stays absent; what JSON cannot hold becomes its text). */
function jsonValue(v: unknown): unknown {
  if (v === undefined) return undefined;
  try {
    return JSON.parse(JSON.stringify(v) ?? "null");
  } catch {
    return String(v);
  }
}

/**
 * The wire form of any thrown value: a {@link KrunboxError} with its class,
 * code and fields; another error by name and message; causes likewise, a
 * few levels deep. The result is plain JSON.
 *
 * @example
 * ```ts
 * import { BackendUnavailableError, errorToWire } from "./errors.ts";
 * const wire = errorToWire(new BackendUnavailableError("qemu", "qemu-system-x86_64", "apt-get install qemu-system-x86"));
 * console.log(wire.fields?.fix); // "apt-get install qemu-system-x86"
 * ```
 */
export function errorToWire(e: unknown, depth = 0): WireError {
  const cause = e instanceof Error && e.cause !== undefined && depth < WIRE_CAUSE_DEPTH
    ? errorToWire(e.cause, depth + 1)
    : undefined;
  if (e instanceof KrunboxError) {
    const [name, entry] = wireClassOf(e);
    const own = e as unknown as Record<string, unknown>;
    const fields = Object.fromEntries(
      entry.fields.map((k) => [k, jsonValue(own[k])]).filter(([, v]) => v !== undefined),
    );
    return { class: name, code: e.code, message: e.message, fields, ...(cause ? { cause } : {}) };
  }
  if (e instanceof Error) return { class: e.name, message: e.message, ...(cause ? { cause } : {}) };
  return { class: "Error", message: String(e) };
}

/**
 * Rebuilds an error from its wire form: the same class (so `instanceof`
 * holds), code, message and fields, with the cause rebuilt likewise. A wire
 * error of an unknown class keeps its code as a plain {@link KrunboxError};
 * anything malformed (no known code, a field of the wrong type, not an
 * object) is a {@link ProtocolError} quoting what arrived.
 *
 * @example
 * ```ts
 * import { BackendUnavailableError, errorFromWire, errorToWire } from "./errors.ts";
 * const sent = JSON.stringify(errorToWire(new BackendUnavailableError("libkrun", "libkrunfw", "run `./dev setup`")));
 * const e = errorFromWire(JSON.parse(sent));
 * if (e instanceof BackendUnavailableError) console.log(e.fix); // "run `./dev setup`"
 * ```
 */
export function errorFromWire(wire: unknown): KrunboxError {
  const e = fromWire(wire, 0);
  if (e instanceof KrunboxError) return e;
  const text = JSON.stringify(wire) ?? String(wire);
  return new ProtocolError(`not a wire form of a krunbox error (known class, code and fields): ${text.slice(0, 500)}`, {
    cause: e,
  });
}

function fromWire(wire: unknown, depth: number): Error {
  if (typeof wire !== "object" || wire === null || Array.isArray(wire)) {
    return new Error(`not a wire error: ${String(wire)}`);
  }
  const w = wire as Record<string, unknown>;
  const name = typeof w.class === "string" ? w.class : "Error";
  const message = typeof w.message === "string" ? w.message : String(w.message ?? "");
  const cause = w.cause !== undefined && depth < WIRE_CAUSE_DEPTH ? fromWire(w.cause, depth + 1) : undefined;
  const options: KrunboxErrorOptions = cause ? { cause } : {};
  const code = ERROR_CODES.find((c) => c === w.code);
  if (!code) {
    const plain = new Error(message, options);
    plain.name = name;
    return plain;
  }
  const fields = typeof w.fields === "object" && w.fields !== null ? w.fields as Record<string, unknown> : {};
  const wrong = (k: string, type: string) => new TypeError(`field ${k} of ${name} is not a ${type}`);
  const reader: FieldReader = {
    str(k) {
      const v = fields[k];
      if (typeof v !== "string") throw wrong(k, "string");
      return v;
    },
    num(k) {
      const v = fields[k];
      if (typeof v !== "number") throw wrong(k, "number");
      return v;
    },
    json: (k) => fields[k],
  };
  let err: KrunboxError;
  try {
    err = Object.hasOwn(WIRE_CLASSES, name)
      ? WIRE_CLASSES[name].make(reader, code, options)
      : new KrunboxError(code, message, options);
  } catch (e) {
    return new Error(`malformed ${name}: ${(e as Error).message}`);
  }
  if (err.code !== code) return new Error(`${name} cannot have code ${code}`);
  return withMessage(err, message);
}

/** Sets the carried message (and the first line of the stack that quotes it). */
function withMessage<E extends Error>(err: E, message: string): E {
  if (err.message === message) return err;
  const head = `${err.name}: ${err.message}`;
  err.message = message;
  if (err.stack?.startsWith(head)) err.stack = `${err.name}: ${message}${err.stack.slice(head.length)}`;
  return err;
}
