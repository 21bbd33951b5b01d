/**
 * The host end of the agent channel. The runner listens on the sandbox's
 * `vm.sock` before the VMM starts, and the VMM connects to it (qemu's
 * virtio-serial chardev with `server=off`, libkrun's vsock port map), so no
 * side polls; the first connection is the agent stream.
 *
 * @module
 */

import { closeQuietly } from "../util/close.ts";
import { PRIVATE_FILE_MODE } from "../store/private.ts";
import type { VmExit } from "./backend.ts";

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
