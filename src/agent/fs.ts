/**
 * Filesystem calls in the guest (agent/PROTOCOL.md, "fs"). Reads and writes
 * stream in chunks of up to 1 MiB through handles; reads are pipelined a few
 * requests deep for throughput, writes are acknowledged one by one so memory
 * stays bounded whatever the file size.
 *
 * @module
 */

import { AgentError, FsError } from "../errors.ts";
import type { AgentClient } from "./client.ts";
import { readAllBytes } from "../util/bytes.ts";

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

/** Chunk size of streamed reads and writes. */
export const FS_CHUNK = 1 << 20;
/** Read requests in flight per stream. */
const READ_AHEAD = 4;

function fsError(e: unknown, path: string): unknown {
  if (e instanceof AgentError && e.rpcCode === -32020) {
    const d = (e.data ?? {}) as { errno?: string; path?: string };
    return new FsError(d.errno ?? "EIO", d.path ?? path, { cause: e });
  }
  if (e instanceof AgentError && e.rpcCode === -32602) return new FsError("EINVAL", path, { cause: e });
  return e;
}

function checkPath(path: string): string {
  if (typeof path !== "string" || path.length === 0 || path.includes("\0")) throw new FsError("EINVAL", String(path));
  return path;
}

function toEntry(raw: Record<string, unknown>): FsEntry {
  const { mtimeMs, ...rest } = raw as unknown as Omit<FsEntry, "mtime"> & { mtimeMs: number };
  return { ...rest, mtime: new Date(mtimeMs) };
}

/**
 * The guest filesystem, over one agent connection.
 *
 * @example
 * ```ts
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

  async #call<R>(method: string, path: string, params: Record<string, unknown>): Promise<R> {
    try {
      return (await this.agent.request<R>(method, params)).result;
    } catch (e) {
      throw fsError(e, path);
    }
  }

  /** Reads a whole file. */
  async read(path: string): Promise<Uint8Array> {
    return await readAllBytes(this.readStream(path));
  }

  /** Reads a whole file as UTF-8 text (invalid sequences replaced). */
  async readText(path: string): Promise<string> {
    return new TextDecoder().decode(await this.read(path));
  }

  /** Streams a file's bytes. */
  readStream(path: string): ReadableStream<Uint8Array> {
    checkPath(path);
    let handle: number | undefined;
    const inflight: Promise<{ eof: boolean; data: Uint8Array }>[] = [];
    let eofSeen = false;
    const readOne = () =>
      this.agent.request<{ eof: boolean }>("fs.read", { handle, length: FS_CHUNK })
        .then((r) => ({ eof: r.result.eof, data: r.attachment }));
    const close = async () => {
      if (handle === undefined) return;
      const h = handle;
      handle = undefined;
      await this.agent.request("fs.close", { handle: h }).catch(() => {});
    };
    return new ReadableStream<Uint8Array>({
      start: async () => {
        handle = (await this.#call<{ handle: number }>("fs.open", path, { path, mode: "r" })).handle;
      },
      // A pull must enqueue or close: the stream does not pull again after an empty one.
      pull: async (controller) => {
        try {
          for (;;) {
            while (!eofSeen && inflight.length < READ_AHEAD) inflight.push(readOne());
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
  async write(
    path: string,
    data: Uint8Array | string,
    options: { mode?: number; append?: boolean } = {},
  ): Promise<void> {
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
  writeStream(path: string, options: { mode?: number; append?: boolean } = {}): WritableStream<Uint8Array> {
    checkPath(path);
    let handle: number | undefined;
    const close = async () => {
      if (handle === undefined) return;
      const h = handle;
      handle = undefined;
      await this.#call("fs.close", path, { handle: h });
    };
    return new WritableStream<Uint8Array>({
      start: async () => {
        handle = (await this.#call<{ handle: number }>("fs.open", path, {
          path,
          mode: options.append ? "a" : "w",
          perm: options.mode ?? 0o644,
        })).handle;
      },
      write: async (chunk) => {
        for (let off = 0; off < chunk.length; off += FS_CHUNK) {
          try {
            await this.agent.request("fs.write", { handle }, { attachment: chunk.subarray(off, off + FS_CHUNK) });
          } catch (e) {
            throw fsError(e, path);
          }
        }
      },
      close,
      abort: async () => {
        await close().catch(() => {});
      },
    });
  }

  /** Lists a directory (sorted by name). */
  async list(path: string): Promise<FsEntry[]> {
    checkPath(path);
    const r = await this.#call<{ entries: Record<string, unknown>[] }>("fs.list", path, { path });
    return r.entries.map(toEntry);
  }

  /** Stats a path (does not follow a final symlink unless `follow`). */
  async stat(path: string, options: { follow?: boolean } = {}): Promise<FsEntry> {
    checkPath(path);
    return toEntry(await this.#call("fs.stat", path, { path, follow: options.follow ?? false }));
  }

  /** Whether a path exists (a dangling symlink exists). */
  async exists(path: string): Promise<boolean> {
    checkPath(path);
    return (await this.#call<{ exists: boolean }>("fs.exists", path, { path })).exists;
  }

  /** Creates a directory and its missing parents. */
  async mkdir(path: string, options: { mode?: number; parents?: boolean } = {}): Promise<void> {
    checkPath(path);
    await this.#call("fs.mkdir", path, { path, parents: options.parents ?? true, mode: options.mode ?? 0o755 });
  }

  /** Removes a file, symlink or other non-directory. */
  async remove(path: string): Promise<void> {
    checkPath(path);
    await this.#call("fs.remove", path, { path });
  }

  /** Removes a directory and everything in it. */
  async removeDir(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    checkPath(path);
    await this.#call("fs.removeDir", path, { path, recursive: options.recursive ?? true });
  }

  /** Renames (moves) a path. */
  async rename(from: string, to: string): Promise<void> {
    checkPath(from);
    checkPath(to);
    await this.#call("fs.rename", from, { from, to });
  }

  /** Copies a file or directory tree inside the guest. */
  async copy(from: string, to: string): Promise<void> {
    checkPath(from);
    checkPath(to);
    await this.#call("fs.copy", from, { from, to });
  }

  /** Creates a symlink at `path` pointing to `target`. */
  async symlink(target: string, path: string): Promise<void> {
    checkPath(path);
    await this.#call("fs.symlink", path, { target, path });
  }
}
