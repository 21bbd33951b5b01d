/**
 * krunbox: run untrusted code in local microVM sandboxes from Deno.
 *
 * @example
 * ```ts
 * import { KrunboxError } from "@krunbox/krunbox";
 * console.log(KrunboxError.name); // KrunboxError
 * ```
 *
 * @module
 */

export {
  AgentError,
  AgentTimeoutError,
  AlreadyExistsError,
  BackendUnavailableError,
  BootTimeoutError,
  type ErrorCode,
  ExecAbortedError,
  ExecOutputLimitError,
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
  SecretUnavailableError,
  type SpawnFailureKind,
  StateError,
  StillRunningError,
  VmCrashedError,
} from "./src/errors.ts";
export { type BackendChoice, type BackendKind } from "./src/vmm/detect.ts";
export { Sandbox } from "./src/sandbox/sandbox.ts";
export type { ExecOptions, ExecStreamOptions, ExitStatus } from "./src/sandbox/sandbox.ts";
export type { BootPhase } from "./src/util/phases.ts";
export {
  type ImageChooser,
  type PatchChooser,
  type PortOptions,
  SandboxBuilder,
  type VolumeChooser,
} from "./src/sandbox/builder.ts";
export { SandboxHandle } from "./src/sandbox/handle.ts";
export { type CopyOptions, type CopyReport, SandboxFs, type SkippedEntry } from "./src/sandbox/fs.ts";
export type { GuestFs } from "./src/agent/fs.ts";
export type { SandboxStatus } from "./src/sandbox/state.ts";
export type {
  ImageSource,
  LogLevel,
  NetworkConfig,
  Patch,
  PortMapping,
  SandboxConfig,
  SecretConfig,
  VolumeMount,
} from "./src/sandbox/config.ts";
export {
  type Action,
  type Destination,
  type Direction,
  formatRule,
  type Group,
  parseRule,
  type PortRange,
  type Protocol,
  type Rule,
  type RuleInit,
  type RuleSpec,
} from "./src/net/rules.ts";
export { type DnsConfig, NetworkBuilder, type Profile, type RuleArg, type TlsConfig } from "./src/net/policy.ts";
export { SecretBuilder } from "./src/net/secrets.ts";
export type { NetStats, NetworkAction, NetworkEvent, NetworkReason } from "./src/net/engine.ts";
export type { NetworkEventsOptions } from "./src/sandbox/net_events.ts";
export { type ExecEvent, type ExecOutput, ExecProcess, type ExitStatus as ExecExitStatus } from "./src/agent/exec.ts";
export type { EntryKind, FsCallOptions, FsEntry, FsReadOptions, FsWriteOptions } from "./src/agent/fs.ts";
export type { SandboxMetrics } from "./src/metrics/snapshot.ts";
export { Images, type PruneResult, type StoredImage } from "./src/image/images.ts";
export type { PulledImage, PullEvent, PullOptions, PullPolicy } from "./src/image/pull.ts";
export type { BasicAuth } from "./src/image/auth.ts";
export type { ImageConfig, ImageRuntimeConfig } from "./src/image/oci.ts";
