/**
 * The network engine against qemu's slirp (issue 15): HTTP download
 * throughput and TCP connection set-up latency from the guest to the test
 * internet host (a network namespace this bench creates: 203.0.113.202),
 * through netd (a krunbox sandbox, default policy) and through slirp (the
 * same kernel, initramfs, root and virtio-net device flags, booted by hand
 * with `-netdev user`), in the same run, alternating, so both see the same
 * machine load. The guest side is a static Go prober (connect() timing and
 * a raw HTTP/1.0 download), the same binary in both guests.
 * Goal: at least slirp's throughput, set-up latency at most 1.2x slirp's.
 *
 *   deno run -A bench/net_vs_slirp.ts [rounds=3] [downloadMiB=32] [connects=200]
 */

import { dirname, join } from "node:path";
import { busyboxRoot } from "../scripts/roots.ts";
import { Sandbox } from "../mod.ts";
import { AgentClient } from "../src/agent/client.ts";
import { runToCompletion } from "../src/agent/exec.ts";
import { parseConfig } from "../src/sandbox/config.ts";
import { vmSpecOf } from "../src/sandbox/spec.ts";
import { assetDir, assetPath } from "../src/store/assets.ts";
import { encodeCpio } from "../src/vmm/cpio.ts";
import { NET_PLAN } from "../src/net/engine.ts";
import { AGENT_CHARDEV, qemuArgs, qemuBootConfig, qemuShares } from "../src/vmm/qemu.ts";
import { probeHost } from "../src/vmm/detect.ts";
import { buildGoProgram } from "../tests/util/go_build.ts";
import { NS_HOST, TestInternet } from "../tests/util/netns.ts";

const rounds = Number(Deno.args[0] ?? 3);
const downloadMiB = Number(Deno.args[1] ?? 32);
const connects = Number(Deno.args[2] ?? 200);
Deno.env.set("KRUNBOX_BACKEND", "qemu");

/** `netprobe connect ADDR PORT N`: median connect() µs; `netprobe get ADDR PORT BYTES`: download MB/s. */
const NETPROBE_GO = `package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"time"
)

func main() {
	addr := net.JoinHostPort(os.Args[2], os.Args[3])
	n, _ := strconv.Atoi(os.Args[4])
	switch os.Args[1] {
	case "connect":
		ds := make([]float64, 0, n)
		for i := 0; i < n; i++ {
			t := time.Now()
			c, err := net.Dial("tcp4", addr)
			if err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
			ds = append(ds, float64(time.Since(t).Microseconds()))
			c.Close()
		}
		sort.Float64s(ds)
		fmt.Printf("connect_us %.0f\\n", ds[len(ds)/2])
	case "get":
		t := time.Now()
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Fprintf(c, "GET /bytes/%d HTTP/1.0\\r\\n\\r\\n", n)
		got, _ := io.Copy(io.Discard, c)
		s := time.Since(t).Seconds()
		fmt.Printf("bytes %d mbps %.2f\\n", got, float64(got)/s/1e6)
	}
}
`;

interface Figures {
  readonly mbps: number;
  readonly connectUs: number;
}

type Run = (cmd: string, args: string[]) => Promise<string>;

async function measure(run: Run): Promise<Figures> {
  const get = await run("/bench/netprobe", ["get", NS_HOST, "80", String(downloadMiB << 20)]);
  const conn = await run("/bench/netprobe", ["connect", NS_HOST, "80", String(connects)]);
  const mbps = Number(/mbps ([\d.]+)/.exec(get)?.[1]);
  const connectUs = Number(/connect_us ([\d.]+)/.exec(conn)?.[1]);
  if (!(mbps > 0) || !(connectUs > 0)) throw new Error(`the probe failed: ${get} ${conn}`);
  return { mbps, connectUs };
}

/** A guest on netd: a krunbox sandbox with the default policy. */
async function netdGuest(root: string, benchDir: string): Promise<{ run: Run; close: () => Promise<void> }> {
  const sb = await Sandbox.builder("bench-netd").image(root).memory(256).replace()
    .volume("/bench", (v) => v.bind(benchDir, { readonly: true })).create();
  return {
    run: async (cmd, args) => (await sb.exec(cmd, args)).stdout,
    close: async () => {
      await sb.kill();
      await Sandbox.remove(sb.name);
    },
  };
}

/** The same guest on slirp: qemu started by hand, as krunbox did before netd. */
async function slirpGuest(root: string, benchDir: string): Promise<{ run: Run; close: () => Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "slirp-qemu-" });
  const config = parseConfig({
    name: "bench-slirp",
    image: { kind: "dir", path: root },
    memoryMib: 256,
    volumes: [{ kind: "bind", hostPath: benchDir, guestPath: "/bench", readonly: true }],
  });
  const base = await vmSpecOf(config, { kind: "dir", path: root });
  // slirp's link is 1500 bytes (its own MTU): the device advertises that, not netd's large one.
  const spec = { ...base, dir, netd: base.netd && { ...base.netd, mtu: NET_PLAN.mtu } };
  const modules = JSON.parse(await Deno.readTextFile(join(assetDir("kernel"), "modules.json"))).modules;
  const initrd = join(dir, "initrd.img");
  await Deno.copyFile(assetPath("initramfs"), initrd);
  // The boot config of a networked guest: eth0 10.0.2.15/24 via 10.0.2.2, DNS 10.0.2.3 (slirp's plan too).
  const boot = new TextEncoder().encode(JSON.stringify(qemuBootConfig(spec, modules)));
  await Deno.writeFile(
    initrd,
    encodeCpio([{ kind: "dir", path: "krunbox" }, { kind: "file", path: "krunbox/boot.json", data: boot }]),
    { append: true },
  );
  const helpers: Deno.ChildProcess[] = [];
  const fsSockets: Record<string, string> = {};
  for (const share of qemuShares(spec)) {
    const sock = join(dir, `fs-${share.tag}.sock`);
    helpers.push(
      new Deno.Command(spec.programs?.["virtiofsd"] ?? "/usr/lib/qemu/virtiofsd", {
        args: [`--socket-path=${sock}`, "-o", `source=${share.hostPath}`, "-o", "cache=always"],
        stderr: "null",
      }).spawn(),
    );
    while (!(await Deno.stat(sock).then((s) => s.isSocket, () => false))) await new Promise((r) => setTimeout(r, 5));
    fsSockets[share.tag] = sock;
  }
  const vmSock = join(dir, "vm.sock");
  const listener = Deno.listen({ transport: "unix", path: vmSock });
  const args = qemuArgs({ ...spec, network: "user" }, {
    kernel: assetPath("kernel"),
    initrd,
    accel: "tcg",
    // The host TSC frequency: without it about one TCG boot in 8 hangs in TSC calibration.
    tscKhz: (await probeHost()).tscKhz,
    fsSockets,
    netSocket: join(dir, "unused.sock"),
  });
  // The agent on a socket this bench listens on, rather than qemu's stdio (the runner's channel).
  args[args.indexOf(AGENT_CHARDEV)] = `socket,id=agent,path=${vmSock},server=off`;
  // Swap netd's stream netdev for slirp; the device (and its no-offload flags) stays the same.
  const at = args.indexOf("-netdev");
  args[at + 1] = "user,id=n0";
  const qemu = new Deno.Command(spec.programs?.["qemu-system-x86_64"] ?? "qemu-system-x86_64", {
    args,
    stdout: "null",
    stderr: "null",
  }).spawn();
  helpers.push(qemu);
  let agent: AgentClient;
  try {
    agent = await AgentClient.fromConn(await listener.accept(), { timeoutMs: 60_000 });
  } catch (e) {
    for (const h of helpers) h.kill("SIGKILL");
    listener.close();
    throw e;
  }
  return {
    run: async (cmd, args) => (await runToCompletion(agent, { cmd, args })).stdout,
    close: async () => {
      for (const h of helpers) h.kill("SIGKILL");
      await Promise.all(helpers.map((h) => h.status));
      await agent.close();
      listener.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

await using _inet = await TestInternet.create({});
const root = await busyboxRoot();
const probe = await buildGoProgram("netprobe", NETPROBE_GO);
const benchDir = dirname(probe);
const netd = await netdGuest(root, benchDir);
const slirp = await slirpGuest(root, benchDir).catch(async (e) => {
  await netd.close();
  throw e;
});
const n: Figures[] = [];
const s: Figures[] = [];
try {
  await measure(netd.run); // warm both (page cache, ARP, TCP slow start of the server)
  await measure(slirp.run);
  for (let i = 0; i < rounds; i++) {
    s.push(await measure(slirp.run));
    n.push(await measure(netd.run));
  }
} finally {
  await netd.close();
  await slirp.close();
  await Deno.remove(benchDir, { recursive: true });
}
const fmt = (xs: number[], d = 1) => xs.map((x) => x.toFixed(d)).join(", ");
const [nm, sm] = [median(n.map((f) => f.mbps)), median(s.map((f) => f.mbps))];
const [nc, sc] = [median(n.map((f) => f.connectUs)), median(s.map((f) => f.connectUs))];
console.log(`download ${downloadMiB} MiB, guest → ${NS_HOST} (MB/s, median of ${rounds}):`);
console.log(`  netd  ${nm.toFixed(1)}  (${fmt(n.map((f) => f.mbps))})`);
console.log(`  slirp ${sm.toFixed(1)}  (${fmt(s.map((f) => f.mbps))})`);
console.log(`  netd/slirp ${(nm / sm).toFixed(2)} (goal >= 1.00)`);
console.log(`connect() set-up latency, median of ${connects} connects (µs, median of ${rounds} rounds):`);
console.log(`  netd  ${nc.toFixed(0)}  (${fmt(n.map((f) => f.connectUs), 0)})`);
console.log(`  slirp ${sc.toFixed(0)}  (${fmt(s.map((f) => f.connectUs), 0)})`);
console.log(`  netd/slirp ${(nc / sc).toFixed(2)} (goal <= 1.20)`);
