/**
 * Only qemu can be the guest end of the agent channel: the channel is
 * qemu's stdin and stdout (pipes the runner made), so there is no socket
 * path anyone could connect to first and be taken for the guest. The
 * attacker is another local process racing the boot: it polls the sandbox
 * directory for `vm.sock` every millisecond and connects the moment it
 * appears. Checked on the host: it never found one, and after boot neither
 * the filesystem nor /proc/net/unix shows a vm.sock, while the runner's
 * own `agent.sock` is seen listening there (the positive control: the check
 * sees a listening socket in that directory) and exec works.
 */

import { leftovers, processesMentioning, sandboxDir, skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { Sandbox } from "../../mod.ts";

const ignore = skipVmReason !== undefined;
/** `__SO_ACCEPTCON` in /proc/net/unix's Flags column: a listening socket. */
const SO_ACCEPTCON = 0x10000;

/** Paths of the unix sockets /proc/net/unix lists under `dir`, with whether each listens. */
async function unixSocketsUnder(dir: string): Promise<{ path: string; listening: boolean }[]> {
  const rows = (await Deno.readTextFile("/proc/net/unix")).split("\n").slice(1);
  return rows.map((r) => r.trim().split(/\s+/)).filter((c) => c.length >= 8 && c[7].startsWith(`${dir}/`))
    .map((c) => ({ path: c[7], listening: (parseInt(c[3], 16) & SO_ACCEPTCON) !== 0 }));
}

Deno.test(
  { name: "agent channel: no vm.sock to race for during boot or after it, and exec works", ignore },
  async () => {
    const name = "chan";
    const dir = sandboxDir(name);
    const vmSock = `${dir}/vm.sock`;
    let racing = true;
    let seen = 0;
    let connected = 0;
    const racer = (async () => {
      while (racing) {
        try {
          if ((await Deno.lstat(vmSock)).isSocket) seen++;
          const conn = await Deno.connect({ transport: "unix", path: vmSock });
          connected++;
          conn.close();
        } catch {
          // not there (yet)
        }
        await new Promise((r) => setTimeout(r, 1));
      }
    })();
    try {
      await using sb = await Sandbox.builder(name).image(await busyboxRoot()).create();
      racing = false;
      await racer;
      assertEquals({ seen, connected }, { seen: 0, connected: 0 }, "a racer never found a vm.sock during the boot");
      assertEquals((await sb.exec("echo", ["from-the-guest"])).stdout, "from-the-guest\n", "exec works");
      let onDisk = true;
      await Deno.lstat(vmSock).catch(() => (onDisk = false));
      assertEquals(onDisk, false, "no vm.sock in the sandbox directory");
      const sockets = await unixSocketsUnder(dir);
      assertEquals(sockets.filter((s) => s.path === vmSock), [], "no vm.sock in /proc/net/unix");
      assert(
        sockets.some((s) => s.path === `${dir}/agent.sock` && s.listening),
        `the check sees the runner's listening agent.sock (positive control): ${JSON.stringify(sockets)}`,
      );
      const qemu = processesMentioning(dir).map((p) => Deno.readTextFileSync(`/proc/${p}/cmdline`).split("\0"))
        .find((a) => a.some((x) => x.endsWith("qemu-system-x86_64")));
      assert(qemu, "the host sees this sandbox's qemu");
      assert(qemu.includes("stdio,id=agent,signal=off"), "qemu's agent port is on its stdio");
      assert(!qemu.some((a) => a.includes("vm.sock")), "qemu's command line names no vm.sock");
    } finally {
      racing = false;
      await racer;
      await Sandbox.remove(name).catch(() => {});
    }
    assertEquals(await leftovers(name), []);
  },
);
