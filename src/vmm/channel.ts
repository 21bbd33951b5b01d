/**
 * The host end of the agent channel, which only the VMM can hold.
 *
 * - qemu: the channel is qemu's own stdin and stdout (`-chardev stdio` under
 *   the virtio-serial port), pipes the runner made when it spawned qemu
 *   ({@link stdioChannel}). No path exists, so nobody can connect to it
 *   first and be taken for the guest.
 * - libkrun: the VMM is the runner itself, and libkrun maps the agent's
 *   vsock port only to a unix socket path: the runner listens on `vm.sock`
 *   in the 0700 sandbox directory before it starts the VM
 *   ({@link listenFresh}), takes the first connection and closes the
 *   listener at once ({@link acceptAgent}), and removes the path right
 *   after that connection.
 *
 * @module
 */

import type { ByteChannel } from "../agent/writer.ts";
import { closeQuietly } from "../util/close.ts";
import { PRIVATE_FILE_MODE } from "../store/private.ts";
import type { VmExit } from "./backend.ts";

/**
 * The agent channel over a child's stdin (to the guest) and stdout (from
 * it). `close()` ends both (the pending read ends as the end of the
 * stream).
 *
 * @example
 * ```ts
 * import { stdioChannel } from "./channel.ts";
 * const cat = new Deno.Command("cat", { stdin: "piped", stdout: "piped" }).spawn();
 * const ch = stdioChannel(cat);
 * await ch.write(new TextEncoder().encode("ping"));
 * const reader = ch.readable.getReader();
 * console.log(new TextDecoder().decode((await reader.read()).value)); // ping
 * reader.releaseLock();
 * ch.close();
 * await cat.status;
 * ```
 */
export function stdioChannel(child: Deno.ChildProcess): ByteChannel {
  const writer = child.stdin.getWriter();
  const reader = child.stdout.getReader();
  let closed = false;
  const readable = new ReadableStream<Uint8Array>({
    async pull(c) {
      try {
        const { value, done } = await reader.read();
        if (done) c.close();
        else c.enqueue(value);
      } catch (e) {
        c.error(e);
      }
    },
    cancel: (reason) => reader.cancel(reason),
  });
  return {
    readable,
    async write(p: Uint8Array): Promise<number> {
      if (closed) throw new Deno.errors.BadResource("the agent channel is closed");
      await writer.write(p);
      return p.length;
    },
    close(): void {
      if (closed) return;
      closed = true;
      writer.close().catch(() => {});
      reader.cancel().catch(() => {});
    },
  };
}

/**
 * Listens on `path`, removing a stale socket of an earlier boot first. The
 * socket is made 0600 at once (its mode would follow the umask): its 0700
 * directory already keeps other uids out, and the home holds no entry with
 * group or other bits.
 *
 * @example
 * ```ts
 * import { listenFresh } from "./channel.ts";
 * using listener = await listenFresh(`${await Deno.makeTempDir()}/vm.sock`);
 * console.log(listener.addr);
 * ```
 */
export async function listenFresh(path: string): Promise<Deno.UnixListener> {
  await Deno.remove(path).catch(() => {});
  const listener = Deno.listen({ transport: "unix", path });
  try {
    await Deno.chmod(path, PRIVATE_FILE_MODE);
  } catch (e) {
    listener.close();
    throw e;
  }
  return listener;
}

/**
 * The VMM's connection, or `failed(exit)` thrown if the VMM exits first.
 * The listener is closed either way: one VMM, one agent stream.
 *
 * @example
 * ```ts
 * import { acceptAgent, listenFresh } from "./channel.ts";
 * const path = `${await Deno.makeTempDir()}/vm.sock`;
 * const listener = await listenFresh(path);
 * const exited = new Promise<{ code: number | null; signal: null }>(() => {});
 * const vmm = Deno.connect({ transport: "unix", path });
 * const agent = await acceptAgent(listener, exited, () => new Error("the VMM exited"));
 * agent.close();
 * (await vmm).close();
 * ```
 */
export async function acceptAgent(
  listener: Deno.UnixListener,
  exited: Promise<VmExit>,
  failed: (exit: VmExit) => Error,
): Promise<Deno.UnixConn> {
  try {
    return await Promise.race([
      listener.accept(),
      exited.then((e) => {
        throw failed(e);
      }),
    ]);
  } finally {
    closeQuietly(listener);
  }
}
