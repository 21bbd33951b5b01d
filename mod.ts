/**
 * krunbox: run untrusted code in local microVM sandboxes from Deno.
 *
 * @example
 * ```ts
 * import { KrunboxError } from "@krunbox/krunbox";
 * console.log(KrunboxError.name);
 * ```
 *
 * @module
 */

export {
  AgentError,
  AlreadyExistsError,
  BackendUnavailableError,
  BootTimeoutError,
  type ErrorCode,
  ExecAbortedError,
  ExecSpawnError,
  ExecTimeoutError,
  FsError,
  ImageError,
  InvalidConfigError,
  KrunboxError,
  type KrunboxErrorOptions,
  LibkrunError,
  NotFoundError,
  NotRunningError,
  ProtocolError,
  type SpawnFailureKind,
  StateError,
  StillRunningError,
  VmCrashedError,
} from "./src/errors.ts";
export { type BackendChoice, type BackendKind } from "./src/vmm/detect.ts";
