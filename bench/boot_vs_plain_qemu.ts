/**
 * krunbox's boot overhead (issue 4): time from `create()` to the first
 * exec's result, against the same kernel + initramfs + root booted by plain
 * qemu (and virtiofsd) started by hand, timed to the agent's first frame.
 * Runs alternate in one process so both see the same machine load.
 * Target: krunbox's overhead under 15% of the plain boot.
 *
 *   deno run -A bench/boot_vs_plain_qemu.ts [runs=5]
 */

import { join } from "node:path";
import { busyboxRoot } from "../scripts/roots.ts";
import { Sandbox } from "../mod.ts";
import { assetPath } from "../src/store/assets.ts";
import { vmSpecOf } from "../src/sandbox/spec.ts";
import { parseConfig } from "../src/sandbox/config.ts";
import { AGENT_CHARDEV, qemuArgs, qemuBootConfig } from "../src/vmm/qemu.ts";
import { encodeCpio } from "../src/vmm/cpio.ts";
import { assetDir } from "../src/store/assets.ts";
import { median } from "./stats.ts";

const runs = Number(Deno.args[0] ?? 5);
const root = await busyboxRoot();
Deno.env.set("KRUNBOX_BACKEND", "qemu");

async function krunbox(i: number): Promise<number> {
  const t0 = performance.now();
  const sb = await Sandbox.builder(`bench-boot-${i}`).image(root).memory(256).replace().create();
  await sb.exec("true");
  const ms = performance.now() - t0;
  await sb.kill();
  await Sandbox.remove(sb.name);
  return ms;
}

async function plain(i: number): Promise<number> {
  const dir = await Deno.makeTempDir({ prefix: "plain-qemu-" });
  const config = parseConfig({ name: `plain-${i}`, image: { kind: "dir", path: root } });
  // Without a NIC: a networked plain qemu would need netd (krunbox's side starts it, and pays for it).
  const spec = { ...(await vmSpecOf(config, { kind: "dir", path: root })), dir, network: "none" as const };
  const modules = JSON.parse(await Deno.readTextFile(join(assetDir("kernel"), "modules.json"))).modules;
  const initrd = join(dir, "initrd.img");
  await Deno.copyFile(assetPath("initramfs"), initrd);
  const boot = new TextEncoder().encode(JSON.stringify(qemuBootConfig({ ...spec, memoryMib: 256 }, modules)));
  await Deno.writeFile(
    initrd,
    encodeCpio([{ kind: "dir", path: "krunbox" }, { kind: "file", path: "krunbox/boot.json", data: boot }]),
    { append: true },
  );
  const vmSock = join(dir, "vm.sock");
  const fsSock = join(dir, "fs.sock");
  const t0 = performance.now();
  const virtiofsd = new Deno.Command("/usr/lib/qemu/virtiofsd", {
    args: [`--socket-path=${fsSock}`, "-o", `source=${root}`, "-o", "cache=always"],
    stderr: "null",
  }).spawn();
  while (!(await Deno.stat(fsSock).then((s) => s.isSocket, () => false))) await new Promise((r) => setTimeout(r, 2));
  const listener = Deno.listen({ transport: "unix", path: vmSock });
  const args = qemuArgs({ ...spec, memoryMib: 256 }, {
    kernel: assetPath("kernel"),
    initrd,
    accel: "tcg",
    tscKhz: 2300000,
    fsSockets: { root: fsSock },
  });
  // krunbox hands qemu the agent channel on its stdio; plain qemu here connects a socket instead.
  args[args.indexOf(AGENT_CHARDEV)] = `socket,id=agent,path=${vmSock},server=off`;
  const qemu = new Deno.Command("qemu-system-x86_64", { args, stdout: "null", stderr: "null" }).spawn();
  const conn = await listener.accept();
  await conn.read(new Uint8Array(8)); // the first bytes of the agent's ready frame
  const ms = performance.now() - t0;
  qemu.kill("SIGKILL");
  virtiofsd.kill("SIGKILL");
  await Promise.all([qemu.status, virtiofsd.status]);
  conn.close();
  listener.close();
  await Deno.remove(dir, { recursive: true });
  return ms;
}

const k: number[] = [];
const p: number[] = [];
await krunbox(-1); // warm caches (page cache of kernel, initramfs, root)
for (let i = 0; i < runs; i++) {
  p.push(await plain(i));
  k.push(await krunbox(i));
}
const mk = median(k);
const mp = median(p);
console.log(`plain qemu boot to agent ready: median ${mp.toFixed(0)} ms  (${p.map((x) => x.toFixed(0)).join(", ")})`);
console.log(`krunbox create → first exec:    median ${mk.toFixed(0)} ms  (${k.map((x) => x.toFixed(0)).join(", ")})`);
console.log(
  `krunbox overhead: ${(mk - mp).toFixed(0)} ms = ${
    ((mk / mp - 1) * 100).toFixed(1)
  }% of the plain boot (target < 15%)`,
);
