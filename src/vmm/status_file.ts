/**
 * The runner's status, reported through a file in its own sandbox
 * directory (`status.json`), never through the database: a guest that
 * escapes libkrun's in-process virtiofs owns the runner, and the database
 * holds every sandbox's row (DESIGN.md, "Containment"). The runner writes
 * the whole status atomically (a temporary file, then `rename`); the host
 * reads it without following a link, bounded in size, and parses it
 * strictly ({@link parseRunnerStatus}): known fields and statuses only, and
 * the sandbox's own name, so it can change nothing but that sandbox's row
 * (src/sandbox/state.ts merges it when it reconciles a row).
 *
 * @module
 */

import { StateError } from "../errors.ts";
import { readBounded } from "../util/nofollow.ts";

/** The statuses a runner reports (the stored ones). */
export const RUNNER_STATUSES = ["creating", "running", "draining", "stopped", "crashed"] as const;

/** A runner's status as it reports it. */
export interface RunnerStatus {
  /** The sandbox the runner serves: the file is refused for any other. */
  readonly name: string;
  readonly status: (typeof RUNNER_STATUSES)[number];
  /** Why it ended (or is draining); null while running. */
  readonly stopReason: string | null;
  /** Whether it outlives its owner. */
  readonly detached: boolean;
  /** The boot's ready time, once known. */
  readonly bootMs: number | null;
}

/** The most bytes a status file may hold. */
export const STATUS_FILE_MAX_BYTES = 8192;
/** The longest stop reason kept (a longer one is cut when written, refused when read). */
const REASON_MAX_CHARS = 2000;
/** The largest boot time believed (ms). */
const BOOT_MS_MAX = 3_600_000;
const FIELDS = ["name", "status", "stopReason", "detached", "bootMs"];

/**
 * Parses a status file's text for sandbox `name`; anything else than what
 * a runner writes (bad JSON, unknown or missing fields, an unknown status,
 * another sandbox's name, a reason too long) is a {@link StateError}.
 *
 * @example
 * ```ts
 * import { parseRunnerStatus } from "./status_file.ts";
 * const s = parseRunnerStatus('{"name":"a","status":"running","stopReason":null,"detached":false,"bootMs":900}', "a");
 * console.log(s.status); // running
 * ```
 */
export function parseRunnerStatus(text: string, name: string): RunnerStatus {
  const bad = (why: string) => new StateError(`the status file of sandbox "${name}" is invalid: ${why}`);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw bad("not JSON");
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw bad("not an object");
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.length !== FIELDS.length || !FIELDS.every((f) => keys.includes(f))) {
    throw bad(`its fields must be exactly ${FIELDS.join(", ")}`);
  }
  if (o.name !== name) throw bad("it names another sandbox");
  if (!RUNNER_STATUSES.includes(o.status as RunnerStatus["status"])) throw bad("unknown status");
  if (o.stopReason !== null && (typeof o.stopReason !== "string" || o.stopReason.length > REASON_MAX_CHARS)) {
    throw bad(`stopReason must be null or a string of at most ${REASON_MAX_CHARS} characters`);
  }
  if (typeof o.detached !== "boolean") throw bad("detached must be a boolean");
  const ms = o.bootMs;
  if (ms !== null && !(typeof ms === "number" && Number.isFinite(ms) && ms >= 0 && ms <= BOOT_MS_MAX)) {
    throw bad(`bootMs must be null or a number from 0 to ${BOOT_MS_MAX}`);
  }
  return o as unknown as RunnerStatus;
}

/**
 * The status file of sandbox `name` at `path`, or undefined when there is
 * none; a link, a non-regular file, more than {@link STATUS_FILE_MAX_BYTES}
 * or an invalid content is a {@link StateError}.
 *
 * @example
 * ```ts
 * import { readRunnerStatus } from "./status_file.ts";
 * console.log(readRunnerStatus("/nonexistent/status.json", "a")); // undefined
 * ```
 */
export function readRunnerStatus(path: string, name: string): RunnerStatus | undefined {
  const bytes = readBounded(path, STATUS_FILE_MAX_BYTES);
  if (!bytes) return undefined;
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new StateError(`the status file of sandbox "${name}" is invalid: not UTF-8`);
  }
  return parseRunnerStatus(text, name);
}

/**
 * The runner's side: holds its status and rewrites the whole file at each
 * change (a temporary file in the same directory, then `rename`: a reader
 * sees the old status or the new one, never half of one).
 *
 * @example
 * ```ts
 * import { StatusFile } from "./status_file.ts";
 * const file = new StatusFile(`${await Deno.makeTempDir()}/status.json`, "a", false);
 * file.update({ status: "running", bootMs: 900 });
 * console.log(file.current.status); // running
 * ```
 */
export class StatusFile {
  #current: RunnerStatus;

  /** A status file for sandbox `name` at `path`, starting as `creating` (nothing written yet). */
  constructor(readonly path: string, name: string, detached: boolean) {
    this.#current = { name, status: "creating", stopReason: null, detached, bootMs: null };
  }

  /** The status last written. */
  get current(): RunnerStatus {
    return this.#current;
  }

  /** Reports under a new name from now on (a warm pool's handout), written at once. */
  rename(name: string): void {
    this.#current = { ...this.#current, name };
    this.update({});
  }

  /** Changes some fields and writes the whole status. */
  update(fields: Partial<Omit<RunnerStatus, "name">>): void {
    const next = { ...this.#current, ...fields };
    if (next.stopReason !== null && next.stopReason.length > REASON_MAX_CHARS) {
      next.stopReason = next.stopReason.slice(0, REASON_MAX_CHARS - 1) + "…";
    }
    this.#current = next;
    const tmp = `${this.path}.tmp`;
    // Made anew, never through a link (the qemu runner is not contained; a directory may have served a libkrun one).
    try {
      Deno.removeSync(tmp);
    } catch {
      // none
    }
    Deno.writeTextFileSync(tmp, JSON.stringify(next), { createNew: true, mode: 0o600 });
    Deno.renameSync(tmp, this.path);
  }
}
