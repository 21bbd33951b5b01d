/**
 * The vocabulary of agent/PROTOCOL.md in one table: every method with its
 * params and result types and the deadline that applies to it, every
 * notification with its params, and the JSON-RPC error codes named exactly as
 * agent/src/rpc.rs names them (a unit test reads rpc.rs and compares).
 *
 * The table is to the wire what the FFI symbol tables are to a C library:
 * `AgentClient.request("fs.stat", …)` takes `Params<"fs.stat">` and resolves
 * with `Result<"fs.stat">`, and a method that is not in the table does not
 * type-check. The `params` and `result` members are phantoms (`{} as T`):
 * they carry a type and an empty object at run time; `deadline` is read at
 * run time.
 *
 * @example
 * ```ts
 * import { METHODS, RPC_ERROR, type Result } from "./rpc.ts";
 * const pong: Result<"ping"> = { uptimeMs: 12.5 };
 * console.log(METHODS.ping.deadline, RPC_ERROR.METHOD_NOT_FOUND, pong.uptimeMs); // agent -32601 12.5
 * ```
 *
 * @module
 */

import { type FrameErrorKind, MAX_ATTACHMENT } from "./frame.ts";

/** JSON-RPC error codes, named and valued as in agent/src/rpc.rs. */
export const RPC_ERROR = {
  PARSE_ERROR: -32700,
  INVALID_REQUEST: -32600,
  METHOD_NOT_FOUND: -32601,
  INVALID_PARAMS: -32602,
  INTERNAL_ERROR: -32603,
  SPAWN_FAILED: -32010,
  NO_SUCH_PROCESS: -32011,
  FS_ERROR: -32020,
  SHUTTING_DOWN: -32040,
} as const satisfies Record<string, number>;

/** One of the codes in {@link RPC_ERROR}. */
export type RpcErrorCode = (typeof RPC_ERROR)[keyof typeof RPC_ERROR];

/**
 * Which deadline a request gets when its caller passes none:
 * - `agent`: `settings.agentTimeoutMs()` (`KRUNBOX_AGENT_TIMEOUT_MS`);
 * - `control`: `DEFAULTS.runnerControlTimeoutMs` (`runner.stop` waits for a poweroff);
 * - `exec`: none of its own; the request ends with its exec (exec.stdin's answer is
 *   the guest process's own flow control, which may take as long as the process runs).
 */
export type DeadlineKind = "agent" | "control" | "exec";

/** One row of the method table. */
export interface MethodSpec {
  /** Phantom: the params' type. */
  readonly params: Record<string, unknown>;
  /** Phantom: the result's type. */
  readonly result: Record<string, unknown>;
  /** The default deadline. */
  readonly deadline: DeadlineKind;
}

type Empty = Record<never, never>;

/** `exec.start` params (agent/PROTOCOL.md, "exec"). */
export type ExecStartParams = {
  cmd: string;
  args: readonly string[];
  env: Readonly<Record<string, string>>;
  cwd?: string;
  user?: string | number;
  tty: { rows: number; cols: number } | null;
  stdin: "pipe" | "null";
  timeoutMs?: number;
};

/** A filesystem entry as the agent sends it. */
export type WireEntry = {
  name: string;
  path: string;
  kind: "file" | "dir" | "symlink" | "fifo" | "socket" | "char" | "block";
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtimeMs: number;
  target?: string;
};

/** The `metrics` result. */
export type GuestMetrics = {
  uptimeMs: number;
  cpus: number;
  cpuBusyMs: number;
  cpuIdleMs: number;
  memTotalBytes: number;
  memUsedBytes: number;
  memAvailableBytes: number;
  diskReadBytes: number;
  diskWriteBytes: number;
  netRxBytes: number;
  netTxBytes: number;
  processes: number;
};

/** `guest.configure` params (agent/PROTOCOL.md, "guest.configure"). */
export type GuestConfigureWire = {
  hostname?: string;
  env?: Readonly<Record<string, string>>;
  timeNs?: number;
  /** base64 of at least 32 bytes. */
  seed?: string;
};

/** The `runner.info` result (answered by the runner, not the agent). */
export type RunnerInfo = {
  status: string;
  vmmPid: number;
  backend: string;
  attached: boolean;
  runningExecs: number;
  /** `none` (no network device), `up` (netd serving it) or `down` (netd gone: no traffic at all). */
  network?: "none" | "up" | "down";
};

/** netd's counters as the runner relays them (`runner.netStats`); null without a network. */
export type RunnerNetStats = {
  rxBytes: number;
  txBytes: number;
  /** Guest flows open now. */
  connections: number;
  /** Guest flows since start. */
  flows: number;
  /** Events netd could not write (rate limit overflow, full queue). */
  eventsDropped?: number;
} | null;

/** Every request a host sends: to the agent, and `runner.*` to the runner's relay. */
export const METHODS = {
  ping: { params: {} as Empty, result: {} as { uptimeMs: number }, deadline: "agent" },
  "exec.start": { params: {} as ExecStartParams, result: {} as { pid: number }, deadline: "agent" },
  "exec.stdin": { params: {} as { ref: number; eof?: boolean }, result: {} as Empty, deadline: "exec" },
  "exec.signal": { params: {} as { ref: number; signal: number }, result: {} as Empty, deadline: "agent" },
  "exec.resize": {
    params: {} as { ref: number; rows: number; cols: number },
    result: {} as Empty,
    deadline: "agent",
  },
  "fs.open": {
    params: {} as { path: string; mode: "r" | "w" | "a"; perm?: number },
    result: {} as { handle: number; size: number },
    deadline: "agent",
  },
  "fs.read": {
    params: {} as { handle: number; length: number },
    result: {} as { eof: boolean },
    deadline: "agent",
  },
  "fs.write": { params: {} as { handle: number }, result: {} as { written: number }, deadline: "agent" },
  "fs.close": { params: {} as { handle: number }, result: {} as Empty, deadline: "agent" },
  "fs.stat": { params: {} as { path: string; follow?: boolean }, result: {} as WireEntry, deadline: "agent" },
  "fs.list": { params: {} as { path: string }, result: {} as { entries: WireEntry[] }, deadline: "agent" },
  "fs.exists": { params: {} as { path: string }, result: {} as { exists: boolean }, deadline: "agent" },
  "fs.mkdir": {
    params: {} as { path: string; parents?: boolean; mode?: number },
    result: {} as Empty,
    deadline: "agent",
  },
  "fs.remove": { params: {} as { path: string }, result: {} as Empty, deadline: "agent" },
  "fs.removeDir": { params: {} as { path: string; recursive?: boolean }, result: {} as Empty, deadline: "agent" },
  "fs.rename": { params: {} as { from: string; to: string }, result: {} as Empty, deadline: "agent" },
  "fs.copy": { params: {} as { from: string; to: string }, result: {} as Empty, deadline: "agent" },
  "fs.symlink": { params: {} as { target: string; path: string }, result: {} as Empty, deadline: "agent" },
  metrics: { params: {} as Empty, result: {} as GuestMetrics, deadline: "agent" },
  /** A booted guest's identity in one call (src/agent/configure.ts). */
  "guest.configure": { params: {} as GuestConfigureWire, result: {} as Empty, deadline: "agent" },
  shutdown: { params: {} as { graceMs: number }, result: {} as Empty, deadline: "control" },
  "runner.info": { params: {} as Empty, result: {} as RunnerInfo, deadline: "control" },
  "runner.stop": { params: {} as { graceMs?: number }, result: {} as { status: string }, deadline: "control" },
  "runner.kill": { params: {} as Empty, result: {} as { status: string }, deadline: "control" },
  "runner.drain": { params: {} as Empty, result: {} as { status: string }, deadline: "control" },
  "runner.detach": { params: {} as Empty, result: {} as { detached: boolean }, deadline: "control" },
  /** The runner reports under `name` from now on: a warm pool's handout, which moves the row (src/sandbox/pool.ts). */
  "runner.rename": {
    params: {} as { name: string },
    result: {} as { name: string },
    deadline: "control",
  },
  /** Saves the running VM as snapshot `name` (src/vmm/template.ts); the VM goes on. */
  "runner.snapshot": { params: {} as { name: string }, result: {} as { name: string }, deadline: "agent" },
  /** netd's counters (`stats` line) for metrics. */
  "runner.netStats": { params: {} as Empty, result: {} as { stats: RunnerNetStats }, deadline: "control" },
  /** The recent network events, then one `runner.netEvent` notification per new one, tagged with this id. */
  "runner.netEvents": { params: {} as Empty, result: {} as { events: unknown[] }, deadline: "control" },
} as const satisfies Record<string, MethodSpec>;

/** A request method. */
export type Method = keyof typeof METHODS;
/** The params of a method. */
export type Params<M extends Method> = (typeof METHODS)[M]["params"];
/** The result of a method. */
export type Result<M extends Method> = (typeof METHODS)[M]["result"];

/** Whether a method name is in the table (for frames from a peer). */
export function isMethod(name: string): name is Method {
  return Object.hasOwn(METHODS, name);
}

/** The agent's `ready` announcement. */
export type ReadyInfo = {
  readonly protocol: number;
  readonly agent: string;
  readonly mode: "init" | "host";
  readonly pid: number;
  /** Exec output flow-control window in bytes. */
  readonly window: number;
  /** Boot timings in ms on the guest's boot clock. */
  readonly boot: {
    readonly kernelMs: number;
    readonly agentStartMs: number;
    readonly readyMs: number;
    /** The agent's boot steps (init mode), each with the uptime at its end (PROTOCOL.md, `ready`). */
    readonly steps?: readonly { readonly name: string; readonly endMs: number }[];
  };
};

/** Every notification, both directions, with its params. */
export const NOTIFICATIONS = {
  /** agent → host, first frame of every connection. */
  ready: {} as ReadyInfo,
  /** agent → host, with the output bytes as attachment. */
  "exec.out": {} as { ref: number; fd: 1 | 2 },
  /** agent → host, the last message of an exec. */
  "exec.exit": {} as { ref: number; code: number | null; signal: number | null; timedOut: boolean },
  /** host → agent: output bytes consumed since the previous ack of that ref. */
  "exec.ack": {} as { ref: number; bytes: number },
  /** host → agent: cancel a request (kills an exec, abandons a queued fs call). */
  "$/cancel": {} as { id: number },
  /** runner → client: one network decision of netd (checked again by the reader). */
  "runner.netEvent": {} as { event: Record<string, unknown> },
} as const satisfies Record<string, Record<string, unknown>>;

/** A notification method. */
export type Notification = keyof typeof NOTIFICATIONS;
/** The params of a notification. */
export type NotificationParams<N extends Notification> = (typeof NOTIFICATIONS)[N];

/** The largest exec output window a host accepts in `ready` (the agent announces 1 MiB). */
export const MAX_EXEC_WINDOW = 8 << 20;

/**
 * The most unacknowledged output an honest agent can have sent for one exec
 * with window `window`: it checks the window before it reads, then reads at
 * most one attachment from each of stdout and stderr.
 *
 * @example
 * ```ts
 * import { execWindowLimit } from "./rpc.ts";
 * console.log(execWindowLimit(1 << 20)); // 9437184
 * ```
 */
export function execWindowLimit(window: number): number {
  return window + 2 * MAX_ATTACHMENT;
}

/**
 * The error code a receiver answers a broken frame with (agent/PROTOCOL.md, "Frames").
 *
 * @example
 * ```ts
 * import { decodeErrorCode } from "./rpc.ts";
 * console.log(decodeErrorCode("parse_error")); // -32700
 * ```
 */
export function decodeErrorCode(kind: FrameErrorKind): RpcErrorCode {
  return kind === "parse_error" ? RPC_ERROR.PARSE_ERROR : RPC_ERROR.INVALID_REQUEST;
}
