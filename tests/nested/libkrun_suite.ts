/**
 * The libkrun end-to-end suite, run INSIDE the nested test host (an L1 VM
 * with a working /dev/kvm; see host.ts and tests/e2e/nested_libkrun_test.ts).
 * Not named `_test.ts`: on the outer host it must not run.
 *
 * Environment: KRUNBOX_HOME (the L1's state home, assets linked in),
 * KRUNBOX_NESTED_IMAGE (an OCI reference on the outer host's registry),
 * CI (passed on from the outer run: then nothing here may skip).
 */

import { assert, assertEquals } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { type ExecOutput, Images, Sandbox } from "../../mod.ts";
import { chooseBackend, probeHost } from "../../src/vmm/detect.ts";
import { need } from "../util/require.ts";
import { dirname } from "node:path";
import { AgentClient } from "../../src/agent/client.ts";
import { homeLayout } from "../../src/store/home.ts";
import { pathsOf } from "../../src/sandbox/state.ts";
import { runnerCapMask } from "../../src/vmm/contain.ts";

/**
 * A guest command's deadline: killed in the guest after a minute, and the
 * host stops waiting half a minute later, so a hang fails its test with a
 * message instead of using up the suite's 15 minutes. (fs calls have the
 * agent's per-request deadline; create() has the boot timeout.)
 */
const deadline = () => ({ timeout: 60_000, signal: AbortSignal.timeout(90_000) });

/** `sb.shell(script)` with the {@link deadline}. */
function shell(sb: Sandbox, script: string): Promise<ExecOutput> {
  return sb.shell(script, deadline());
}

/** `sb.exec(cmd, args)` with the {@link deadline}. */
function exec(sb: Sandbox, cmd: string, args: readonly string[]): Promise<ExecOutput> {
  return sb.execWith(cmd, { args, ...deadline() });
}

const noImage = need(
  "nested",
  Deno.env.get("KRUNBOX_NESTED_IMAGE") ? undefined : "KRUNBOX_NESTED_IMAGE (an image on the outer registry) is not set",
  "the nested OCI test",
);

Deno.test("auto selects libkrun here, where it can work", async () => {
  const decision = chooseBackend("auto", await probeHost(), "");
  assertEquals(decision.backend, "libkrun", decision.reason);
});

Deno.test("libkrun, directory root, attached: create → exec → fs → metrics → stop", async () => {
  const root = await busyboxRoot();
  const t0 = performance.now();
  const sb = await Sandbox.builder("krun-dir").image(root).backend("libkrun").memory(256).replace().create();
  const createMs = performance.now() - t0;
  const out = await shell(sb, "echo hello from $(uname -r); cat /proc/cpuinfo | grep -c ^processor");
  console.log(`create ${createMs.toFixed(0)} ms, first exec ${(performance.now() - t0 - createMs).toFixed(0)} ms`);
  assert(out.stdout.startsWith("hello from"), out.stdout + out.stderr);
  await sb.fs().write("/tmp/x", "via libkrun");
  assertEquals(await sb.fs().readText("/tmp/x"), "via libkrun");
  const m = await sb.metrics();
  assert(m.memoryBytes > 0 && m.memoryLimitBytes === 256 * 1048576, JSON.stringify(m));
  const status = await sb.stopAndWait();
  assertEquals(status.status, "stopped");
  await Sandbox.remove("krun-dir");
});

Deno.test("libkrun, detached: outlives its handle, reconnects, stops", async () => {
  const root = await busyboxRoot();
  const first = await Sandbox.builder("krun-det").image(root).backend("libkrun").memory(256).replace().createDetached();
  await first[Symbol.asyncDispose]();
  const handle = await Sandbox.get("krun-det");
  assertEquals(handle.status, "running");
  const sb = await handle.connect();
  assertEquals((await exec(sb, "echo", ["again"])).stdout, "again\n");
  await sb[Symbol.asyncDispose]();
  await handle.stop();
  assertEquals((await Sandbox.get("krun-det")).status, "stopped");
  await Sandbox.remove("krun-det");
});

Deno.test({
  name: "libkrun, OCI image root (EROFS lower + ext4 upper)",
  ignore: noImage !== undefined,
}, async () => {
  const ref = Deno.env.get("KRUNBOX_NESTED_IMAGE")!;
  await Images.pull(ref, { insecure: true });
  const create = () => Sandbox.builder("krun-oci").image(ref).backend("libkrun").memory(256).replace().create();
  const sb = await create().catch(async (e) => {
    // Seen twice in about ten runs of this nested host, both times in this case: the L2 guest ends before it
    // prints a line (libkrun exits 0: a reset under the L1's emulated SVM) and the runner dies with it. That is
    // retried once, said here with what the sandbox left, so a regression (every boot failing) still fails.
    if (!/exited before the VM was ready \(exit code 0\)/.test(String(e))) throw e;
    const dir = pathsOf("krun-oci");
    const left = await Promise.all([dir.runnerLog, dir.consoleLog].map((f) => Deno.readTextFile(f).catch(() => "")));
    console.log(
      `RETRIED once: ${e.message}\nrunner.log:\n${left[0]}\nconsole.log (${left[1].length} bytes):\n${left[1]}`,
    );
    return await create();
  });
  assertEquals((await shell(sb, "cat /etc/replaced; test -e /etc/lower-only || echo gone")).stdout, "new\ngone\n");
  assert(/^overlay \/ overlay/m.test((await exec(sb, "cat", ["/proc/mounts"])).stdout));
  await sb.stopAndWait();
  await Sandbox.remove("krun-oci");
});

// --- containment: the runner under bubblewrap (src/vmm/contain.ts), seen from the L1 host ---------------

/** The contained runner's deno process (its exe is deno, its command line names runner.ts and the sandbox dir). */
function runnerProcess(dir: string): number[] {
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const argv = Deno.readTextFileSync(`/proc/${e.name}/cmdline`).split("\0");
      if (Deno.readLinkSync(`/proc/${e.name}/exe`) !== Deno.execPath()) continue;
      if (argv.some((a) => a.endsWith("/vmm/runner.ts")) && argv.includes(dir)) pids.push(Number(e.name));
    } catch {
      // gone, or not ours to read
    }
  }
  return pids;
}

const exists = (path: string) => {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
};

Deno.test("libkrun runner contained: own namespaces, capabilities cut, host files out of sight, shares in, read-only kept", async () => {
  const tag = crypto.randomUUID().slice(0, 8);
  // Canaries outside every share (the L1's /root, /tmp, another sandbox's directory), one beside the share.
  const canaries = [`/root/canary-${tag}`, `/tmp/canary-${tag}`, `${homeLayout().sandboxes}/other-${tag}/secret`];
  const share = await Deno.makeTempDir({ prefix: `krun-share-${tag}-` });
  await Deno.writeTextFile(`${share}/present`, "from the host\n");
  const roShare = await Deno.makeTempDir({ prefix: `krun-ro-${tag}-` });
  await Deno.writeTextFile(`${roShare}/fixed`, "original\n");
  for (const c of canaries) {
    await Deno.mkdir(dirname(c), { recursive: true });
    await Deno.writeTextFile(c, "canary\n");
  }
  const sb = await Sandbox.builder("krun-contain").image(await busyboxRoot()).backend("libkrun").memory(256)
    .volume("/data", (v) => v.bind(share)).volume("/ro", (v) => v.bind(roShare, { readonly: true })).replace().create();
  try {
    const paths = pathsOf("krun-contain");
    const pids = runnerProcess(paths.dir);
    assertEquals(pids.length, 1, `one runner process for ${paths.dir}: ${pids}`);
    const pid = pids[0];
    // The pid the sandbox reports (metrics read it) is the runner's host pid, not its pid 1 inside.
    await using agent = await AgentClient.connect(paths.agentSocket);
    assertEquals((await agent.request("runner.info", {})).result.vmmPid, pid);

    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const field = (name: string) => new RegExp(`^${name}:\\s*(\\S+)`, "m").exec(status)?.[1];
    assertEquals(BigInt(`0x${field("CapEff")}`), runnerCapMask(0), status);
    assertEquals(BigInt(`0x${field("CapPrm")}`), runnerCapMask(0), status);
    assertEquals(field("NoNewPrivs"), "1");
    assertEquals(field("Seccomp"), "2", "the share filter is on (seccomp filter mode)");
    for (const ns of ["mnt", "pid", "ipc", "uts"]) {
      assert(Deno.readLinkSync(`/proc/${pid}/ns/${ns}`) !== Deno.readLinkSync(`/proc/self/ns/${ns}`), `own ${ns} ns`);
    }
    const seen = (p: string) => exists(`/proc/${pid}/root${p}`);
    // Positive controls first: the share, the sandbox directory, deno, /dev/kvm (the database exists on the host).
    assert(exists(homeLayout().db), "the database exists on the host");
    for (const p of [`${share}/present`, paths.vmSpec, Deno.execPath(), "/dev/kvm", "/usr/bin"]) {
      assert(seen(p), `${p} is visible to the runner`);
    }
    // The runner never opens the database (its status goes to its own status.json): it is not there at all.
    const db = homeLayout().db;
    for (
      const p of [...canaries, db, `${db}-wal`, `${db}-shm`, "/etc/passwd", "/etc/shadow", "/dev/vda", "/sys/kernel"]
    ) {
      assert(!seen(p), `${p} is out of the runner's sight`);
    }
    // Its /proc is its own pid namespace's: pid 1 there is the runner itself.
    assert(Deno.readTextFileSync(`/proc/${pid}/root/proc/1/cmdline`).includes("runner.ts"), "its pid 1 is itself");

    // The guest still works: exec, fs, the share both ways.
    assertEquals((await exec(sb, "cat", ["/data/present"])).stdout, "from the host\n");
    await sb.fs().write("/data/from-guest", "hi");
    assertEquals(await Deno.readTextFile(`${share}/from-guest`), "hi");
    // The share filter on libkrun, checked on the host: chmod 0640 applies, the setuid bit and a device node do not.
    const out = await shell(
      sb,
      "chmod 0640 /data/from-guest; echo plain=$?; chmod 4755 /data/from-guest; echo setuid=$?; " +
        "mknod /data/dev c 1 3; echo mknod=$?; mkfifo /data/fifo; echo fifo=$?",
    );
    assert(out.stdout.includes("plain=0") && out.stdout.includes("fifo=0"), out.stdout + out.stderr);
    assertEquals((await Deno.stat(`${share}/from-guest`)).mode! & 0o7777, 0o640, out.stdout);
    assert(!exists(`${share}/dev`) || !(await Deno.lstat(`${share}/dev`)).isCharDevice, "no device node on the host");
    assert((await Deno.lstat(`${share}/fifo`)).isFifo, "the fifo (no privilege needed) was made");
    // A read-only volume stays read-only on the host whatever the guest does to its own mount flag
    // (positive control: the same writes on /data reached the host above).
    const ro = await shell(
      sb,
      "mount -o remount,rw /ro; echo remount=$?; echo evil > /ro/fixed; echo new > /ro/new; rm -f /ro/fixed; true",
    );
    assertEquals(await Deno.readTextFile(`${roShare}/fixed`), "original\n", ro.stdout + ro.stderr);
    assert(!exists(`${roShare}/new`), `nothing was created on the host: ${ro.stdout}${ro.stderr}`);
    await sb.stopAndWait();
    await Sandbox.remove("krun-contain");
  } finally {
    await sb[Symbol.asyncDispose]().catch(() => {});
    for (const c of canaries) await Deno.remove(c).catch(() => {});
    await Deno.remove(dirname(canaries[2]), { recursive: true }).catch(() => {});
    await Deno.remove(share, { recursive: true }).catch(() => {});
    await Deno.remove(roShare, { recursive: true }).catch(() => {});
  }
});

// --- network: netd through krun_add_net_unixstream (no TSI) -------------------

const INET = Deno.env.get("KRUNBOX_NESTED_INET");
const INET_OTHER = Deno.env.get("KRUNBOX_NESTED_INET_OTHER");
const HTTP_GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'";

Deno.test(
  { name: "libkrun network, default policy: the internet host, not the host's loopback", ignore: !INET },
  async () => {
    // A service on the L1's own loopback: what TSI used to hand every guest.
    const secret = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    (async () => {
      for await (const c of secret) c.write(new TextEncoder().encode("host-only\n")).finally(() => c.close());
    })().catch(() => {});
    const port = (secret.addr as Deno.NetAddr).port;
    try {
      const sb = await Sandbox.builder("krun-net").image(await busyboxRoot()).backend("libkrun").memory(256).replace()
        .create();
      const out = await shell(
        sb,
        `ip -o -4 addr show eth0; ${HTTP_GET} | timeout 10 nc ${INET} 80; echo "rc=$?"; ` +
          `for a in 10.0.2.2 10.0.2.254 127.0.0.1; do timeout 5 nc $a ${port} </dev/null; echo "$a rc=$?"; done`,
      );
      assert(out.stdout.includes("10.0.2.15/24"), out.stdout);
      assert(
        out.stdout.includes("hello from the test internet") && out.stdout.includes("rc=0"),
        out.stdout + out.stderr,
      );
      assert(!out.stdout.includes("host-only"), `the guest reached the host's loopback:\n${out.stdout}`);
      const denied: string[] = [];
      for await (const e of sb.networkEvents({ signal: AbortSignal.timeout(5000) })) {
        if (e.action === "denied" && e.port === port) denied.push(e.address);
        if (denied.length >= 2) break;
      }
      assert(denied.includes("10.0.2.2") && denied.includes("10.0.2.254"), `denied events: ${denied}`);
      await sb.stopAndWait();
      await Sandbox.remove("krun-net");
    } finally {
      secret.close();
    }
  },
);

Deno.test({
  name: "libkrun network, a domain allowlist: the name works, others NXDOMAIN, their IP refused",
  ignore: !INET,
}, async () => {
  const sb = await Sandbox.builder("krun-allow").image(await busyboxRoot()).backend("libkrun").memory(256).replace()
    .network((n) => n.policy("none").allow("allowed.test").dns({ upstream: [`${INET}:53`] })).create();
  const out = await shell(
    sb,
    `nslookup allowed.test; echo ---; nslookup other.test; echo ---; ` +
      `${HTTP_GET} | timeout 10 nc ${INET} 80; echo "rc=$?"; echo ---; ${HTTP_GET} | timeout 5 nc ${INET_OTHER} 80; echo "rc=$?"`,
  );
  const [allowed, other, ok, refused] = out.stdout.split("---\n");
  assert(allowed.includes(INET!), allowed);
  assert(/NXDOMAIN|can't find/i.test(other) && !other.includes(INET_OTHER!), other);
  assert(ok.includes("hello from the test internet") && ok.includes("rc=0"), ok);
  assert(!refused.includes("hello") && !refused.includes("rc=0"), refused);
  await sb.stopAndWait();
  await Sandbox.remove("krun-allow");
});

Deno.test({
  name: "libkrun network: port and portUdp through netd's listeners",
  ignore: !Deno.env.get("KRUNBOX_NESTED_UDPECHO"),
}, async () => {
  const free = () => {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const p = (l.addr as Deno.NetAddr).port;
    l.close();
    return p;
  };
  const [tcp, udp] = [free(), free()];
  const sb = await Sandbox.builder("krun-ports").image(await busyboxRoot()).backend("libkrun").memory(256).replace()
    .port(tcp, 8000).portUdp(udp, 9000).create();
  await sb.fs().write("/udpecho", await Deno.readFile(Deno.env.get("KRUNBOX_NESTED_UDPECHO")!));
  await shell(
    sb,
    "chmod +x /udpecho; (nc -ll -p 8000 -e echo tcp-hi >/dev/null 2>&1 &); (/udpecho 9000 >/dev/null 2>&1 &); sleep 0.5",
  );
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: tcp });
  const buf = new Uint8Array(64);
  const n = await conn.read(buf);
  conn.close();
  assertEquals(new TextDecoder().decode(buf.subarray(0, n ?? 0)), "tcp-hi\n");
  const { default: dgram } = await import("node:dgram");
  const sock = dgram.createSocket("udp4");
  const answer = await new Promise<string>((resolve) => {
    const timer = setTimeout(() => resolve(""), 5000);
    sock.on("message", (m) => {
      clearTimeout(timer);
      resolve(new TextDecoder().decode(m));
    });
    sock.send(new TextEncoder().encode("ping"), udp, "127.0.0.1");
  });
  sock.close();
  assertEquals(answer, "echo:ping");
  await sb.stopAndWait();
  await Sandbox.remove("krun-ports");
});
