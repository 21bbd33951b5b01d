/**
 * A test "internet" host: a network namespace this test process creates
 * and tears down, joined to the root namespace by a veth pair (host side
 * 203.0.113.201/29, namespace side 203.0.113.202/29 and .203: TEST-NET-3,
 * public to netd's classifier, never a real network), with an HTTP and a DNS
 * server inside (tests/util/ns_servers.ts) whose DNS log a test reads, and TCP
 * echo and half-close servers whose records it reads too.
 *
 * Only a /29 of TEST-NET-3, never the whole /24: on these machines the
 * package registries answer at an address in 203.0.113.0/24 (the proxy every
 * package client goes through), and a route for the whole /24 through the
 * veth would cut provisioning off while a test runs.
 *
 * {@link LocalTargets} adds, in the root namespace, an interface with
 * one address in each private range and the metadata address, so a test
 * can aim at them while all traffic stays on this machine.
 *
 * Needs root (`ip netns add`); {@link netnsSkipReason} says why not.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import type { TcpRecord } from "./ns_servers.ts";

/** The test internet's prefix length: 203.0.113.200/29 (see the module's note). */
const PREFIX = 29;
/** The host side of the veth pair (one of the host's own addresses: netd's `host` group). */
export const HOST_SIDE = "203.0.113.201";
/** The namespace side: the test internet host (public; its DNS server listens here). */
export const NS_HOST = "203.0.113.202";
/** A second address of the namespace side (a second public host; HTTP listens on both). */
export const NS_OTHER = "203.0.113.203";

/** The machine-wide lock one test internet at a time holds (its addresses are fixed). */
const LOCK_FILE = "/tmp/krunbox-test-internet.lock";

async function ip(...args: string[]): Promise<void> {
  const out = await new Deno.Command("ip", { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
}

/** Why network-namespace tests cannot run here, or undefined. */
export const netnsSkipReason: string | undefined = await (async () => {
  if (Deno.uid() !== 0) return "not root (ip netns needs it)";
  try {
    await new Deno.Command("ip", { args: ["netns", "list"], stdout: "null", stderr: "null" }).output();
    return undefined;
  } catch {
    return "no `ip` command";
  }
})();

/**
 * The test internet host. `using`-free: dispose with `await using` or call
 * {@link TestInternet.close}.
 *
 * @example
 * ```ts
 * import { TestInternet } from "./netns.ts";
 * await using net = await TestInternet.create({ "ns.test": "203.0.113.202" });
 * console.log(net.queries());
 * ```
 */
export class TestInternet implements AsyncDisposable {
  readonly #queries: string[] = [];
  readonly #tcp: TcpRecord[] = [];
  #closed = false;
  #lock?: Deno.FsFile;

  private constructor(
    /** The namespace's name. */
    readonly ns: string,
    readonly vethHost: string,
    readonly servers: Deno.ChildProcess,
  ) {}

  /**
   * Creates the namespace, the veth pair and the servers; `hosts` are the
   * DNS server's A records. Every test internet uses the same addresses, so
   * two at once on one machine (two test processes) would split the routes:
   * it first waits for {@link LOCK_FILE}, held until {@link close}.
   */
  static async create(hosts: Record<string, string>): Promise<TestInternet> {
    const lock = await Deno.open(LOCK_FILE, { create: true, write: true });
    await lock.lock(true);
    try {
      const net = await TestInternet.#create(hosts);
      net.#lock = lock;
      return net;
    } catch (e) {
      lock.close();
      throw e;
    }
  }

  static async #create(hosts: Record<string, string>): Promise<TestInternet> {
    const tag = `kbx${Deno.pid % 100000}`;
    const ns = `${tag}-inet`;
    const vethHost = `${tag}h`;
    const vethNs = `${tag}n`;
    await ip("netns", "add", ns);
    try {
      await ip("link", "add", vethHost, "type", "veth", "peer", "name", vethNs);
      await ip("link", "set", vethNs, "netns", ns);
      await ip("addr", "add", `${HOST_SIDE}/${PREFIX}`, "dev", vethHost);
      await ip("link", "set", vethHost, "up");
      await ip("-n", ns, "addr", "add", `${NS_HOST}/${PREFIX}`, "dev", vethNs);
      await ip("-n", ns, "addr", "add", `${NS_OTHER}/${PREFIX}`, "dev", vethNs);
      await ip("-n", ns, "link", "set", vethNs, "up");
      await ip("-n", ns, "link", "set", "lo", "up");
    } catch (e) {
      await ip("link", "del", vethHost).catch(() => {});
      await ip("netns", "del", ns).catch(() => {});
      throw e;
    }
    const script = fileURLToPath(new URL("./ns_servers.ts", import.meta.url));
    const servers = new Deno.Command("ip", {
      args: ["netns", "exec", ns, Deno.execPath(), "run", "-A", script, NS_HOST, JSON.stringify(hosts)],
      stdin: "null",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const net = new TestInternet(ns, vethHost, servers);
    await net.#readLog();
    return net;
  }

  /** Every name the DNS server was asked for, in order. */
  queries(): readonly string[] {
    return [...this.#queries];
  }

  /** What the TCP servers saw (ns_servers.ts: echo, drain, banner), in order. */
  tcpRecords(): readonly TcpRecord[] {
    return [...this.#tcp];
  }

  /** Resolves once the servers said ready; then records DNS queries as they come. */
  async #readLog(): Promise<void> {
    const lines = this.servers.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    let onReady!: () => void;
    let onFail!: (e: Error) => void;
    const ready = new Promise<void>((res, rej) => ((onReady = res), (onFail = rej)));
    (async () => {
      for (;;) {
        const { value, done } = await lines.read();
        if (done) return onFail(new Error("the test internet's servers exited"));
        buf += value;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = JSON.parse(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
          if (line.ready) onReady();
          else if (typeof line.query === "string") this.#queries.push(line.query);
          else if (line.tcp) this.#tcp.push(line.tcp);
        }
      }
    })().catch(() => {});
    const timer = setTimeout(() => onFail(new Error("the test internet's servers did not start in 20 s")), 20_000);
    try {
      await ready;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops the servers and removes the veth pair and the namespace. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.servers.kill("SIGKILL");
    } catch {
      // gone
    }
    await this.servers.status;
    await ip("link", "del", this.vethHost).catch(() => {});
    await ip("netns", "del", this.ns).catch(() => {});
    this.#lock?.close(); // closing the file releases the lock
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Root-namespace addresses the test owns: one per private range, and the metadata address. */
export const LOCAL_TARGETS = ["10.99.0.1", "172.16.99.1", "192.168.99.1", "169.254.169.254"] as const;

/**
 * {@link LOCAL_TARGETS} on a veth pair of its own in the root namespace
 * (this kernel has no dummy links): they are local addresses, so traffic to
 * them never leaves this machine. Removed on dispose.
 *
 * @example
 * ```ts
 * import { LocalTargets } from "./netns.ts";
 * await using targets = await LocalTargets.create();
 * ```
 */
export class LocalTargets implements AsyncDisposable {
  private constructor(readonly link: string) {}

  /** Adds the pair and the addresses. */
  static async create(): Promise<LocalTargets> {
    const link = `kbx${Deno.pid % 100000}a`;
    await ip("link", "add", link, "type", "veth", "peer", "name", `kbx${Deno.pid % 100000}b`);
    try {
      for (const a of LOCAL_TARGETS) await ip("addr", "add", `${a}/32`, "dev", link);
      await ip("link", "set", link, "up");
    } catch (e) {
      await ip("link", "del", link).catch(() => {});
      throw e;
    }
    return new LocalTargets(link);
  }

  /** Removes the pair. */
  async [Symbol.asyncDispose](): Promise<void> {
    await ip("link", "del", this.link).catch(() => {});
  }
}
