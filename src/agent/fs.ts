/**
 * Filesystem calls in the guest (agent/PROTOCOL.md, "fs"). Reads and writes
 * stream in chunks of up to 1 MiB through handles; reads are pipelined a few
 * requests deep for throughput, writes are acknowledged one by one so memory
 * stays bounded whatever the file size.
 *
 * Every call takes an `AbortSignal` and a `timeoutMs`: each request has a
 * deadline (default `KRUNBOX_AGENT_TIMEOUT_MS`; for a stream, each chunk),
 * and an abort or a deadline cancels the request on the wire. A call that
 * may legitimately take long in the guest (`copy` or `removeDir` of a big
 * tree) passes a longer `timeoutMs`.
 *
 * @module
 */

import { AgentError, FsError } from "../errors.ts";
import { DEFAULTS } from "../settings.ts";
import type { AgentClient } from "./client.ts";
import { type Method, type Params, type Result, RPC_ERROR, type WireEntry } from "./rpc.ts";
import { collectBytes } from "./collect.ts";

/** Kinds of guest filesystem entries. */
export type EntryKind = "file" | "dir" | "symlink" | "fifo" | "socket" | "char" | "block";

/** A guest filesystem entry. */
export interface FsEntry {
  /** Last component of `path` (`/` for the root). */
  readonly name: string;
  /** Absolute guest path. */
  readonly path: string;
  /** File type (`symlink` for a link itself, unless `stat` follows it). */
  readonly kind: EntryKind;
  /** Size in bytes (`st_size`). */
  readonly size: number;
  /** Permission bits (`st_mode & 0o7777`). */
  readonly mode: number;
  /** Owner's numeric user id in the guest. */
  readonly uid: number;
  /** Owner's numeric group id in the guest. */
  readonly gid: number;
  /** Last modification time. */
  readonly mtime: Date;
  /** The link text, for symlinks. */
  readonly target?: string;
}

/**
 * Options every guest filesystem call takes.
 *
 * @example
 * ```ts
 * import type { FsCallOptions } from "./fs.ts";
 * const o: FsCallOptions = { signal: AbortSignal.timeout(5000), timeoutMs: 120_000 };
 * console.log(o.timeoutMs); // 120000
 * ```
 */
export interface FsCallOptions {
  /** Aborting cancels the call in the guest; it rejects with the signal's reason. */
  readonly signal?: AbortSignal;
  /** Deadline of each request of the call (default `KRUNBOX_AGENT_TIMEOUT_MS`); past it, `AgentTimeoutError`. */
  readonly timeoutMs?: number;
}

/** Options of `read` and `readText`. */
export interface FsReadOptions extends FsCallOptions {
  /**
   * Bytes collected before the read fails with `FsError` `EFBIG` (default 1 GiB): the guest decides
   * what a path holds (a link to /dev/zero never ends). `readStream` has no such limit.
   */
  readonly maxBytes?: number;
}

/** Options of `write` and `writeStream`. */
export interface FsWriteOptions extends FsCallOptions {
  /** Permission bits of a file it creates (default 0o644). */
  readonly mode?: number;
  /** Append instead of truncating. */
  readonly append?: boolean;
}

/** Chunk size of streamed reads and writes. */
export const FS_CHUNK = 1 << 20;
/** Read requests in flight per stream. */
const READ_AHEAD = 4;

function fsError(e: unknown, path: string): unknown {
  if (e instanceof AgentError && e.rpcCode === RPC_ERROR.FS_ERROR) {
    const d = (e.data ?? {}) as { errno?: string; path?: string };
    return new FsError(d.errno ?? "EIO", d.path ?? path, { cause: e });
  }
  if (e instanceof AgentError && e.rpcCode === RPC_ERROR.INVALID_PARAMS) {
    return new FsError("EINVAL", path, { cause: e });
  }
  return e;
}

function checkPath(path: string): string {
  if (typeof path !== "string" || path.length === 0 || path.includes("\0")) throw new FsError("EINVAL", String(path));
  return path;
}

function toEntry(raw: WireEntry): FsEntry {
  const { mtimeMs, ...rest } = raw;
  return { ...rest, mtime: new Date(mtimeMs) };
}

/**
 * The guest filesystem, over one agent connection.
 *
 * @example
 * ```ts ignore
 * // Needs a live agent; tests/agent/protocol_test.ts ("fs calls: write, read, …") runs the same.
 * import { AgentClient } from "./client.ts";
 * import { GuestFs } from "./fs.ts";
 * const fs = new GuestFs(await AgentClient.connect("/tmp/agent.sock"));
 * await fs.write("/tmp/hello.txt", "hi");
 * console.log(await fs.readText("/tmp/hello.txt"));
 * ```
 */
export class GuestFs {
  /** @internal Use `Sandbox.fs()`. */
  constructor(/** @internal */ readonly agent: AgentClient) {}

  async #call<M extends Method>(
    method: M,
    path: string,
    params: Params<M>,
    o: FsCallOptions,
    attachment?: Uint8Array,
  ): Promise<Result<M>> {
    try {
      return (await this.agent.request(method, params, { signal: o.signal, timeoutMs: o.timeoutMs, attachment }))
        .result;
    } catch (e) {
      throw fsError(e, path);
    }
  }

  /** Reads a whole file (at most `maxBytes`, default 1 GiB). */
  async read(path: string, options: FsReadOptions = {}): Promise<Uint8Array> {
    const max = options.maxBytes ?? DEFAULTS.fsReadMaxBytes;
    const bytes = await collectBytes(this.readStream(path, options), max);
    if (bytes) return bytes;
    throw new FsError("EFBIG", path, { cause: new RangeError(`more than ${max} bytes; use readStream()`) });
  }

  /** Reads a whole file as UTF-8 text (invalid sequences replaced; at most `maxBytes`, default 1 GiB). */
  async readText(path: string, options: FsReadOptions = {}): Promise<string> {
    return new TextDecoder().decode(await this.read(path, options));
  }

  /** Streams a file's bytes. */
  readStream(path: string, options: FsCallOptions = {}): ReadableStream<Uint8Array> {
    checkPath(path);
    const call = { signal: options.signal, timeoutMs: options.timeoutMs };
    let handle: number | undefined;
    const inflight: Promise<{ eof: boolean; data: Uint8Array }>[] = [];
    let eofSeen = false;
    const readOne = (h: number) =>
      this.agent.request("fs.read", { handle: h, length: FS_CHUNK }, call)
        .then((r) => ({ eof: r.result.eof === true, data: r.attachment }));
    // The handle is closed even after an abort (with its own deadline only).
    const close = async () => {
      if (handle === undefined) return;
      const h = handle;
      handle = undefined;
      await this.agent.request("fs.close", { handle: h }, { timeoutMs: options.timeoutMs }).catch(() => {});
    };
    return new ReadableStream<Uint8Array>({
      start: async () => {
        handle = (await this.#call("fs.open", path, { path, mode: "r" }, options)).handle;
      },
      // A pull must enqueue or close: the stream does not pull again after an empty one.
      pull: async (controller) => {
        try {
          for (;;) {
            options.signal?.throwIfAborted();
            while (!eofSeen && handle !== undefined && inflight.length < READ_AHEAD) {
              inflight.push(readOne(handle));
            }
            const next = inflight.shift();
            if (!next) {
              await close();
              controller.close();
              return;
            }
            const { eof, data } = await next;
            if (eof) eofSeen = true;
            if (data.length > 0) {
              controller.enqueue(data);
              return;
            }
          }
        } catch (e) {
          await Promise.allSettled(inflight);
          await close();
          throw fsError(e, path);
        }
      },
      cancel: async () => {
        await Promise.allSettled(inflight);
        await close();
      },
    }, { highWaterMark: 0 });
  }

  /** Writes (creates or truncates) a file. */
  async write(path: string, data: Uint8Array | string, options: FsWriteOptions = {}): Promise<void> {
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
    const w = this.writeStream(path, options).getWriter();
    try {
      await w.write(bytes);
      await w.close();
    } catch (e) {
      await w.abort(e).catch(() => {});
      throw e;
    }
  }

  /** A stream that writes a file chunk by chunk. */
  writeStream(path: string, options: FsWriteOptions = {}): WritableStream<Uint8Array> {
    checkPath(path);
    let handle: number | undefined;
    const close = async (o: FsCallOptions) => {
      if (handle === undefined) return;
      const h = handle;
      handle = undefined;
      await this.#call("fs.close", path, { handle: h }, o);
    };
    return new WritableStream<Uint8Array>({
      start: async () => {
        handle = (await this.#call("fs.open", path, {
          path,
          mode: options.append ? "a" : "w",
          perm: options.mode ?? 0o644,
        }, options)).handle;
      },
      write: async (chunk) => {
        for (let off = 0; off < chunk.length; off += FS_CHUNK) {
          if (handle === undefined) throw new FsError("EBADF", path);
          await this.#call("fs.write", path, { handle }, options, chunk.subarray(off, off + FS_CHUNK));
        }
      },
      close: () => close(options),
      // After an abort the handle is still closed, with its own deadline only.
      abort: async () => {
        await close({ timeoutMs: options.timeoutMs }).catch(() => {});
      },
    });
  }

  /** Lists a directory (sorted by name). */
  async list(path: string, options: FsCallOptions = {}): Promise<FsEntry[]> {
    checkPath(path);
    const r = await this.#call("fs.list", path, { path }, options);
    return (Array.isArray(r.entries) ? r.entries : []).filter((e) => typeof e === "object" && e !== null).map(toEntry);
  }

  /** Stats a path (does not follow a final symlink unless `follow`). */
  async stat(path: string, options: FsCallOptions & { follow?: boolean } = {}): Promise<FsEntry> {
    checkPath(path);
    return toEntry(await this.#call("fs.stat", path, { path, follow: options.follow ?? false }, options));
  }

  /** Whether a path exists (a dangling symlink exists). */
  async exists(path: string, options: FsCallOptions = {}): Promise<boolean> {
    checkPath(path);
    return (await this.#call("fs.exists", path, { path }, options)).exists === true;
  }

  /** Creates a directory and its missing parents. */
  async mkdir(path: string, options: FsCallOptions & { mode?: number; parents?: boolean } = {}): Promise<void> {
    checkPath(path);
    await this.#call("fs.mkdir", path, {
      path,
      parents: options.parents ?? true,
      mode: options.mode ?? 0o755,
    }, options);
  }

  /** Removes a file, symlink or other non-directory. */
  async remove(path: string, options: FsCallOptions = {}): Promise<void> {
    checkPath(path);
    await this.#call("fs.remove", path, { path }, options);
  }

  /** Removes a directory and everything in it. */
  async removeDir(path: string, options: FsCallOptions & { recursive?: boolean } = {}): Promise<void> {
    checkPath(path);
    await this.#call("fs.removeDir", path, { path, recursive: options.recursive ?? true }, options);
  }

  /** Renames (moves) a path. */
  async rename(from: string, to: string, options: FsCallOptions = {}): Promise<void> {
    checkPath(from);
    checkPath(to);
    await this.#call("fs.rename", from, { from, to }, options);
  }

  /** Copies a file or directory tree inside the guest (a big tree may need a longer `timeoutMs`). */
  async copy(from: string, to: string, options: FsCallOptions = {}): Promise<void> {
    checkPath(from);
    checkPath(to);
    await this.#call("fs.copy", from, { from, to }, options);
  }

  /** Creates a symlink at `path` pointing to `target`. */
  async symlink(target: string, path: string, options: FsCallOptions = {}): Promise<void> {
    checkPath(path);
    await this.#call("fs.symlink", path, { target, path }, options);
  }
}
