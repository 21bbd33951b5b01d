/**
 * Builder options no other test drives in a VM, checked on the guest's or
 * the host's real state: `user` (the uids in the guest process's
 * /proc/self/status), `hostname` (the guest's `hostname`), `entrypoint`
 * (stored, and what running it does), `port` (a guest TCP server reached
 * from the host's 127.0.0.1 with a Deno client; the host listener bound to
 * 127.0.0.1 only; a guest port not published is not reachable) and
 * `portUdp` (a guest UDP echo reached with node:dgram; likewise an
 * unpublished one is not). One sandbox on the Debian root (python3 serves
 * both protocols; busybox has no UDP server) serves them all. Also
 * `logLevel`, on two sandboxes of its own.
 */

import dgram from "node:dgram";
import { leftovers, sandboxDir, skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals } from "../util/assert.ts";
import { busyboxRoot, debianRoot } from "../../scripts/roots.ts";
import { type ExecProcess, Sandbox } from "../../mod.ts";

const ignore = skipVmReason !== undefined;
const NAME = "api-builder";
const HOSTNAME = "api-host";
const GUEST_TCP = 8080;
const GUEST_UDP = 9000;
const token = crypto.randomUUID().slice(0, 8);

function freeTcpPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = l.addr.port;
  l.close();
  return port;
}

async function freeUdpPort(): Promise<number> {
  const s = dgram.createSocket("udp4");
  await new Promise<void>((r) => s.bind(0, "127.0.0.1", r));
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

// Host ports for the published guest ports, and guest ports left unpublished
// whose numbers are free on the host too (so only a forward could answer there).
const hostTcp = freeTcpPort();
const hostUdp = await freeUdpPort();
const privateTcp = freeTcpPort();
const privateUdp = await freeUdpPort();
const entrypoint = [
  "python3",
  "/tmp/servers.py",
  String(GUEST_TCP),
  String(privateTcp),
  "--",
  String(GUEST_UDP),
  String(privateUdp),
];

let sb: Sandbox | undefined;
let servers: ExecProcess | undefined;

async function sandbox(): Promise<Sandbox> {
  if (sb) return sb;
  const root = await debianRoot(["python3"], "debian-python");
  sb = await Sandbox.builder(NAME).image(root).memory(512).user("nobody").hostname(HOSTNAME)
    .entrypoint(entrypoint).port(hostTcp, GUEST_TCP).portUdp(hostUdp, GUEST_UDP).create();
  // /tmp is the guest's own tmpfs: nothing is written into the shared Debian root.
  await sb.fs().write("/tmp/servers.py", await Deno.readFile(new URL("./fixtures/servers.py", import.meta.url)));
  return sb;
}

/** The entrypoint, started as the stored config has it, once it says it listens. */
async function listening(): Promise<Sandbox> {
  const s = await sandbox();
  if (servers) return s;
  const [cmd, ...args] = (await Sandbox.get(NAME)).config().entrypoint!;
  servers = await s.execStream(cmd, { args });
  const reader = servers.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("ready\n")) {
    const { value, done } = await reader.read();
    assert(!done, `the servers ended before they listened: ${seen}`);
    seen += value;
  }
  reader.releaseLock();
  return s;
}

Deno.test.afterAll(async () => {
  servers?.kill();
  await servers?.stdout.cancel().catch(() => {});
  await servers?.stderr.cancel().catch(() => {});
  if (sb) {
    await sb[Symbol.asyncDispose]();
    assertEquals(await leftovers(NAME), []);
    await Sandbox.remove(NAME);
  }
});

/** Sends one line to 127.0.0.1:port over TCP and reads the answer to EOF (20 s at most). */
async function tcpAsk(port: number, line: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let late = false;
  const timer = setTimeout(() => {
    late = true;
    conn.close();
  }, 20_000);
  try {
    await conn.write(new TextEncoder().encode(`${line}\n`));
    return await new Response(conn.readable).text();
  } catch (e) {
    if (late) return "(no answer in 20 s)";
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** Sends a datagram to 127.0.0.1:port (again every second) until one comes back or `ms` pass. */
async function udpAsk(port: number, text: string, ms: number): Promise<string | undefined> {
  const sock = dgram.createSocket("udp4");
  sock.on("error", () => {}); // an ICMP unreachable is just "no answer"
  let resend: ReturnType<typeof setInterval> | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await new Promise<string | undefined>((resolve) => {
      sock.on("message", (m) => resolve(m.toString()));
      timer = setTimeout(() => resolve(undefined), ms);
      const send = () => sock.send(text, port, "127.0.0.1");
      send();
      resend = setInterval(send, 1000);
    });
  } finally {
    clearInterval(resend);
    clearTimeout(timer);
    await new Promise<void>((r) => sock.close(() => r()));
  }
}

/** Local addresses (hex, as /proc/net shows them) with a socket on `port` in `states`. */
async function hostSockets(table: "tcp" | "tcp6" | "udp" | "udp6", port: number, states: string[]): Promise<string[]> {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  const text = await Deno.readTextFile(`/proc/net/${table}`).catch(() => "");
  return text.split("\n").slice(1).map((l) => l.trim().split(/\s+/)).filter((f) =>
    f.length > 3 && f[1].endsWith(`:${hex}`) && states.includes(f[3])
  ).map((f) => f[1].split(":")[0]);
}

/** A guest-side client (python3 in the guest) for the servers on the guest's own loopback. */
async function guestAsk(s: Sandbox, kind: "tcp" | "udp", port: number, line: string): Promise<string> {
  const code = kind === "tcp"
    ? `import socket,sys\ns=socket.create_connection(("127.0.0.1",${port}),5)\ns.sendall(sys.argv[1].encode()+b"\\n")\n` +
      `print(s.makefile().readline(),end="")`
    : `import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(5)\n` +
      `s.sendto(sys.argv[1].encode(),("127.0.0.1",${port}))\nprint(s.recv(2048).decode(),end="")`;
  return (await s.exec("python3", ["-c", code, line])).stdout;
}

Deno.test(
  { name: "user(name): the guest's processes run as that user; an exec's user overrides it", ignore },
  async () => {
    const s = await sandbox();
    const status = async (user?: number) =>
      (await s.execWith("cat", { args: ["/proc/self/status"], user })).stdout.split("\n")
        .filter((l) => /^(Uid|Gid):/.test(l)).map((l) => l.split(/\s+/).slice(1).join(" "));
    assertEquals(await status(), ["65534 65534 65534 65534", "65534 65534 65534 65534"]);
    assertEquals(await status(0), ["0 0 0 0", "0 0 0 0"]);
  },
);

Deno.test({ name: "hostname(name): the guest's hostname is that name", ignore }, async () => {
  const s = await sandbox();
  assertEquals((await s.shell("hostname; cat /proc/sys/kernel/hostname; uname -n")).stdout, `${HOSTNAME}\n`.repeat(3));
});

Deno.test(
  { name: "entrypoint(cmd) is stored, and running it starts the guest's servers as the user", ignore },
  async () => {
    await sandbox();
    assertEquals((await Sandbox.get(NAME)).config().entrypoint, entrypoint);
    const s = await listening();
    // What it started: the guest's own client reaches it, and it runs as the sandbox's user.
    assertEquals(await guestAsk(s, "tcp", GUEST_TCP, "inside"), `inside from ${HOSTNAME} uid 65534\n`);
  },
);

Deno.test({ name: "port(host, guest): a guest TCP server answers on the host's 127.0.0.1 only", ignore }, async () => {
  const s = await listening();
  assertEquals(await tcpAsk(hostTcp, `ping-${token}`), `ping-${token} from ${HOSTNAME} uid 65534\n`);
  assertEquals(await tcpAsk(hostTcp, "again"), `again from ${HOSTNAME} uid 65534\n`, "every connection is served");
  // The host listener is on 127.0.0.1, on no other address.
  assertEquals(await hostSockets("tcp", hostTcp, ["0A"]), ["0100007F"]);
  assertEquals(await hostSockets("tcp6", hostTcp, ["0A"]), []);
  // A guest port not published: served in the guest (control), not reachable from the host.
  assertEquals(await guestAsk(s, "tcp", privateTcp, "private"), `private from ${HOSTNAME} uid 65534\n`);
  let refused = false;
  try {
    (await Deno.connect({ hostname: "127.0.0.1", port: privateTcp })).close();
  } catch (e) {
    refused = e instanceof Deno.errors.ConnectionRefused;
  }
  assert(refused, `127.0.0.1:${privateTcp} (not published) is refused on the host`);
  assertEquals(await hostSockets("tcp", privateTcp, ["0A"]), []);
});

Deno.test({ name: "portUdp(host, guest): a guest UDP echo answers on the host's 127.0.0.1 only", ignore }, async () => {
  const s = await listening();
  assertEquals(await udpAsk(hostUdp, `dgram-${token}`, 20_000), `dgram-${token} from ${HOSTNAME} uid 65534\n`);
  assertEquals(await hostSockets("udp", hostUdp, ["07"]), ["0100007F"]);
  assertEquals(await hostSockets("udp6", hostUdp, ["07"]), []);
  // Control: the unpublished UDP echo answers in the guest; from the host nothing answers there.
  assertEquals(await guestAsk(s, "udp", privateUdp, "private"), `private from ${HOSTNAME} uid 65534\n`);
  assertEquals(await udpAsk(privateUdp, "lost", 3000), undefined);
  assertEquals(await hostSockets("udp", privateUdp, ["07"]), []);
});

Deno.test({
  name: "logLevel reaches the VMM and the guest: the guest kernel's console level and the console log follow it",
  ignore,
}, async () => {
  const root = await busyboxRoot();
  const consoleLines: Record<string, number> = {};
  const consoleLevel: Record<string, number> = {};
  for (const level of ["error", "debug"] as const) {
    const name = `api-log-${level}`;
    {
      await using s = await Sandbox.builder(name).image(root).memory(256).logLevel(level).create();
      assertEquals((await Sandbox.get(name)).config().logLevel, level);
      consoleLevel[level] = Number((await s.exec("cat", ["/proc/sys/kernel/printk"])).stdout.trim().split(/\s+/)[0]);
      assertEquals((await s.exec("true")).code, 0);
    }
    assertEquals(await leftovers(name), []);
    consoleLines[level] = (await Deno.readTextFile(`${sandboxDir(name)}/console.log`)).split("\n").length;
    await Sandbox.remove(name);
  }
  assert(consoleLevel.error <= 3, `an "error" guest's console level is ${consoleLevel.error}`);
  assert(consoleLevel.debug >= 7, `a "debug" guest's console level is ${consoleLevel.debug}`);
  assert(consoleLines.debug > 2 * consoleLines.error + 20, `console lines: ${JSON.stringify(consoleLines)}`);
});
