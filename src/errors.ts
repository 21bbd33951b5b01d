/**
 * Typed errors. Every error krunbox throws is a {@link KrunboxError} with a
 * stable string `code` a caller can branch on, a message that says what to
 * do, and the underlying `cause` when there is one.
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
  | "FS"
  | "BACKEND_UNAVAILABLE"
  | "VM_CRASHED"
  | "BOOT_TIMEOUT"
  | "PROTOCOL"
  | "AGENT"
  | "LIBKRUN"
  | "STATE"
  | "SECRET_UNAVAILABLE";

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
 *   if (e instanceof KrunboxError && e.code === "NOT_FOUND") console.log("no such sandbox");
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
 * throw new NotFoundError("sandbox", "job-1");
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
 * import { AlreadyExistsError } from "@krunbox/krunbox";
 * throw new AlreadyExistsError("sandbox", "job-1");
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
 * throw new StillRunningError("job-1");
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
 * throw new NotRunningError("job-1", "stopped");
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
 * throw new InvalidConfigError("cpus", "must be an integer from 1 to 64, got 0");
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
 * throw new ImageError("IMAGE_NOT_FOUND", "127.0.0.1:5000/busybox:nope: manifest unknown");
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
 * throw new ExecTimeoutError("sleep", 1000);
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
 * throw new ExecAbortedError("sleep");
 * ```
 */
export class ExecAbortedError extends KrunboxError {
  /** `cmd` is the program that was aborted. */
  constructor(readonly cmd: string, options?: KrunboxErrorOptions) {
    super("EXEC_ABORTED", `"${cmd}" was aborted and killed`, options);
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
 * throw new ExecSpawnError("nope", "not_found", "ENOENT");
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
 * throw new FsError("ENOENT", "/missing");
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
 * throw new BackendUnavailableError("qemu", "qemu-system-x86_64", "run `./dev setup`");
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
 * throw new VmCrashedError("job-1", "Kernel panic - not syncing");
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
 * throw new BootTimeoutError("job-1", 30000, "");
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
 * throw new ProtocolError("frame header of 5000000 bytes exceeds 1 MiB");
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
 * throw new AgentError(-32601, "method not found");
 * ```
 */
export class AgentError extends KrunboxError {
  /** `rpcCode` is the JSON-RPC error code; `data` the error's `data` member, if any. */
  constructor(readonly rpcCode: number, message: string, readonly data?: unknown, options?: KrunboxErrorOptions) {
    super("AGENT", `agent error ${rpcCode}: ${message}`, options);
  }
}

/**
 * A libkrun call returned a negative errno.
 *
 * @example
 * ```ts
 * import { LibkrunError } from "@krunbox/krunbox";
 * throw new LibkrunError("krun_set_vm_config", -22);
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
 * throw new StateError("state home /ro is not writable; set KRUNBOX_HOME");
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
 * throw new SecretUnavailableError("job-1", ["OPENAI_API_KEY"]);
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
