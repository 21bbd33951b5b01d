/**
 * Image pulls side by side (issue 6): the Debian + python3 image (mmdebstrap,
 * pushed with umoci to a docker-registry on 127.0.0.1) pulled into an empty
 * store by krunbox and by microsandbox's `msb pull --insecure` (npm package
 * `microsandbox`, whose platform package carries `msb`), alternating, in one
 * run. krunbox is measured twice: in-process (a Deno program calling the
 * library, already started) and as a CLI process (`deno run -A cli.ts pull`,
 * start-up included, as msb's figure includes its own). Target: krunbox at
 * most 0.8x msb's time, on both figures.
 *
 * Also: creating a sandbox's root from a pulled image (store work only, no
 * boot: cached image lookup + the sparse ext4 upper). Target: < 100 ms.
 *
 *   deno run -A bench/pull_vs_msb.ts [runs=3]
 */

import { join } from "node:path";
import { debianRoot } from "../scripts/roots.ts";
import { LocalRegistry, pushImage } from "../tests/util/registry.ts";
import { pullImage } from "../src/image/pull.ts";
import { createUpperDisk } from "../src/image/upper.ts";
import { Store } from "../src/store/db.ts";
import { runCommand } from "../src/util/command.ts";
import { ensureMsb } from "./msb.ts";
import { fileURLToPath } from "node:url";
import { median } from "./stats.ts";

const runs = Number(Deno.args[0] ?? 3);

const msb = join(await ensureMsb(), "bin/msb");
await using registry = await LocalRegistry.start();
console.log("building the Debian + python3 image (mmdebstrap, cached) and pushing it");
const root = await debianRoot(["python3"], "debian-python");
await pushImage(registry.host, "bench/python:3", [root]);
const ref = `${registry.host}/bench/python:3`;

async function krunboxPull(): Promise<number> {
  const home = await Deno.makeTempDir({ prefix: "krunbox-pull-bench-" });
  const saved = Deno.env.get("KRUNBOX_HOME");
  Deno.env.set("KRUNBOX_HOME", home);
  try {
    using store = Store.open(join(home, "db.sqlite"));
    const t0 = performance.now();
    await pullImage(store, ref, { policy: "always" });
    return performance.now() - t0;
  } finally {
    if (saved) Deno.env.set("KRUNBOX_HOME", saved);
    else Deno.env.delete("KRUNBOX_HOME");
    await Deno.remove(home, { recursive: true });
  }
}

const cli = fileURLToPath(new URL("../cli.ts", import.meta.url));

/** `krunbox pull` as a user runs it: a new Deno process on cli.ts, into an empty state home. */
async function krunboxCliPull(args = ["pull", ref, "--insecure"]): Promise<number> {
  const home = await Deno.makeTempDir({ prefix: "krunbox-cli-pull-bench-" });
  try {
    const t0 = performance.now();
    await runCommand(Deno.execPath(), ["run", "-A", cli, ...args], { env: { KRUNBOX_HOME: home } });
    return performance.now() - t0;
  } finally {
    await Deno.remove(home, { recursive: true });
  }
}

async function msbPull(): Promise<number> {
  const home = await Deno.makeTempDir({ prefix: "msb-pull-bench-" });
  try {
    const t0 = performance.now();
    await runCommand(msb, ["pull", "--insecure", "--quiet", ref], { env: { HOME: home } });
    return performance.now() - t0;
  } finally {
    await Deno.remove(home, { recursive: true });
  }
}

// Warm-up, not timed: Deno's module cache for cli.ts, the registry's page cache.
await krunboxCliPull(["list"]);
await msbPull();
const k: number[] = [];
const c: number[] = [];
const m: number[] = [];
const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
for (let i = 0; i < runs; i++) {
  m.push(await msbPull());
  k.push(await krunboxPull());
  c.push(await krunboxCliPull());
  console.log(`run ${i + 1}: msb ${s(m[i])}, krunbox in-process ${s(k[i])}, krunbox CLI process ${s(c[i])}`);
}
console.log(
  `pull into an empty store, median: krunbox in-process ${s(median(k))}, krunbox CLI process ${s(median(c))}, ` +
    `msb ${s(median(m))}`,
);
console.log(
  `ratio krunbox/msb = ${(median(k) / median(m)).toFixed(2)} in-process, ${
    (median(c) / median(m)).toFixed(2)
  } as a CLI process (target <= 0.8)`,
);

// Store work of creating a sandbox from the pulled image: no copy, a sparse upper.
const home = await Deno.makeTempDir({ prefix: "krunbox-create-bench-" });
Deno.env.set("KRUNBOX_HOME", home);
using store = Store.open(join(home, "db.sqlite"));
await pullImage(store, ref, { policy: "always" });
const create: number[] = [];
for (let i = 0; i < 10; i++) {
  const t0 = performance.now();
  const img = await pullImage(store, ref, { policy: "if-missing" });
  await createUpperDisk(join(home, `upper-${i}.ext4`), 4096);
  create.push(performance.now() - t0);
  void img;
}
console.log(
  `sandbox root from a pulled image (store work, no boot): median ${median(create).toFixed(1)} ms (target < 100 ms)`,
);
await Deno.remove(home, { recursive: true });
