/**
 * `SandboxFs`: the guest filesystem calls plus copies between host and guest.
 * Copies stream (bounded memory) and never write through a symlink on the
 * host: a guest tree cannot place files outside the host target directory.
 *
 * @module
 */

import { dirname, join, relative, resolve } from "node:path";
import { FsError } from "../errors.ts";
import { GuestFs } from "../agent/fs.ts";

/**
 * The filesystem of a running sandbox.
 *
 * @example
 * ```ts ignore
 * // Needs a VM; tests/e2e/exec_fs_test.ts copies files in and out the same way.
 * import { Sandbox } from "@krunbox/krunbox";
 * await using sb = await Sandbox.builder("fs-demo").image("/srv/rootfs").create();
 * await sb.fs().write("/tmp/a.txt", "hello");
 * await sb.fs().copyToHost("/tmp/a.txt", "/tmp/from-guest.txt");
 * ```
 */
export class SandboxFs extends GuestFs {
  /** Copies a host file or directory tree into the guest. */
  async copyFromHost(hostPath: string, guestPath: string): Promise<void> {
    const st = await Deno.lstat(hostPath).catch((cause) => {
      throw new FsError(cause instanceof Deno.errors.NotFound ? "ENOENT" : "EACCES", hostPath, { cause });
    });
    if (st.isSymlink) {
      await this.symlink(await Deno.readLink(hostPath), guestPath);
    } else if (st.isDirectory) {
      await this.mkdir(guestPath, { mode: (st.mode ?? 0o755) & 0o7777 });
      for await (const e of Deno.readDir(hostPath)) {
        await this.copyFromHost(join(hostPath, e.name), `${guestPath.replace(/\/$/, "")}/${e.name}`);
      }
    } else if (st.isFile) {
      const file = await Deno.open(hostPath, { read: true });
      await file.readable.pipeTo(this.writeStream(guestPath, { mode: (st.mode ?? 0o644) & 0o7777 }));
    }
  }

  /**
   * Copies a guest file or directory tree to the host. Symlinks are copied
   * as symlinks; nothing is written through an existing host symlink or
   * outside `hostPath`.
   */
  async copyToHost(guestPath: string, hostPath: string): Promise<void> {
    const root = resolve(hostPath);
    await this.#copyOut(guestPath, root, root);
  }

  async #copyOut(guestPath: string, hostPath: string, root: string): Promise<void> {
    await this.#checkInside(hostPath, root);
    const entry = await this.stat(guestPath);
    if (entry.kind === "symlink") {
      await Deno.symlink(entry.target ?? "", hostPath);
    } else if (entry.kind === "dir") {
      await Deno.mkdir(hostPath, { recursive: false, mode: entry.mode }).catch((e) => {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw this.#hostError(e, hostPath);
      });
      if (!(await Deno.lstat(hostPath)).isDirectory) throw new FsError("ENOTDIR", hostPath);
      for (const child of await this.list(guestPath)) {
        await this.#copyOut(`${guestPath.replace(/\/$/, "")}/${child.name}`, join(hostPath, child.name), root);
      }
    } else if (entry.kind === "file") {
      let file: Deno.FsFile;
      try {
        file = await Deno.open(hostPath, { write: true, create: true, truncate: true, mode: entry.mode });
      } catch (e) {
        throw this.#hostError(e, hostPath);
      }
      await this.readStream(guestPath).pipeTo(file.writable);
    }
  }

  /** Refuses a host path that is a symlink or whose parent resolves outside the root. */
  async #checkInside(hostPath: string, root: string): Promise<void> {
    const st = await Deno.lstat(hostPath).catch(() => undefined);
    if (st?.isSymlink) throw new FsError("ELOOP", hostPath);
    if (hostPath === root) return;
    const parent = await Deno.realPath(dirname(hostPath)).catch((e) => {
      throw this.#hostError(e, dirname(hostPath));
    });
    const realRoot = await Deno.realPath(root).catch(() => root);
    const rel = relative(realRoot, parent);
    if (rel.startsWith("..") || resolve(realRoot, rel) !== parent) throw new FsError("EXDEV", hostPath);
  }

  #hostError(e: unknown, path: string): FsError {
    const errno = e instanceof Deno.errors.NotFound
      ? "ENOENT"
      : e instanceof Deno.errors.PermissionDenied
      ? "EACCES"
      : e instanceof Deno.errors.AlreadyExists
      ? "EEXIST"
      : e instanceof Deno.errors.IsADirectory
      ? "EISDIR"
      : "EIO";
    return new FsError(errno, path, { cause: e });
  }
}
