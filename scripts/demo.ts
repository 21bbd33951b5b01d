/**
 * The main job (`./dev demo`): boots a sandbox from a busybox root built
 * from Debian's busybox-static, runs code in it, shows the network policy
 * at work (one allowed and one denied connection, as netd reports them),
 * and stops it.
 *
 * @module
 */

import { Sandbox } from "../mod.ts";
import { busyboxRoot } from "./roots.ts";

const root = await busyboxRoot();
const t0 = performance.now();
// Two services on the host's loopback: one the sandbox may reach, one it may not.
const serve = (text: string) =>
  Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => new Response(`${text}\n`));
await using open = serve("hello from a host service the policy allows");
await using closed = serve("the host's private admin API");
await using sb = await Sandbox.builder("demo").image(root).cpus(1).memory(256).replace()
  // The default policy (the internet, nothing of the host) plus one rule: one host port.
  .network((n) => n.allow(`host:tcp:${open.addr.port}`))
  .create();
const booted = performance.now();
console.log(`sandbox "${sb.name}" is running (create took ${((booted - t0) / 1000).toFixed(2)} s)`);

const out = await sb.shell('echo "6*7 = $((6*7))"; uname -sr; echo "hostname: $(hostname)"');
console.log(out.stdout.trimEnd());
console.log(`exit code ${out.code}, exec round-trip ${((performance.now() - booted) / 1000).toFixed(2)} s`);

await sb.fs().write("/tmp/hello.txt", "written from the host\n");
console.log(`guest file: ${(await sb.fs().readText("/tmp/hello.txt")).trimEnd()}`);

// host.krunbox.internal is the host, reachable only where the policy says so.
const get = (port: number) =>
  `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc host.krunbox.internal ${port} 2>&1 | tail -1`;
const net = await sb.shell(`echo "allowed: $(${get(open.addr.port)})"; echo "denied:  $(${get(closed.addr.port)})"`);
console.log(net.stdout.trimEnd());
const seen = [];
for await (const e of sb.networkEvents({ signal: AbortSignal.timeout(3000) })) {
  if (e.port !== open.addr.port && e.port !== closed.addr.port) continue;
  seen.push(e);
  console.log(`netd: ${e.action} ${e.protocol} ${e.name ?? e.address}:${e.port} (${e.rule ?? e.reason})`);
  if (seen.length === 2) break;
}

const status = await sb.stopAndWait();
console.log(`stopped: ${status.status} (${status.reason})`);
