/**
 * Create → first exec result of an OCI-image sandbox (busybox, 256 MiB,
 * qemu), booted cold (`KRUNBOX_TEMPLATES=0`) and restored from its snapshot
 * template, alternating, medians side by side. The template is built by a
 * warm-up create first (its time is printed too). The image comes from a
 * local registry on 127.0.0.1 (tests/util/registry.ts).
 *
 *   deno run -A bench/template_restore.ts [runs=5]
 */

import { busyboxRoot } from "../scripts/roots.ts";
import { Sandbox } from "../mod.ts";
import { LocalRegistry, pushImage } from "../tests/util/registry.ts";
import { median } from "./stats.ts";

const runs = Number(Deno.args[0] ?? 5);
await using registry = await LocalRegistry.start();
await pushImage(registry.host, "bench/tpl:1", [await busyboxRoot()], {
  env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
  cmd: ["sh"],
});
const ref = `${registry.host}/bench/tpl:1`;

/** One create → `true` → stop; the create and first-exec times in ms. */
async function once(name: string, cold: boolean): Promise<{ create: number; total: number }> {
  if (cold) Deno.env.set("KRUNBOX_TEMPLATES", "0");
  const t0 = performance.now();
  try {
    await using sb = await Sandbox.builder(name).image(ref).memory(256).replace().create();
    const create = performance.now() - t0;
    await sb.exec("true");
    const total = performance.now() - t0;
    await sb.stopAndWait();
    return { create, total };
  } finally {
    Deno.env.delete("KRUNBOX_TEMPLATES");
    await Sandbox.remove(name).catch(() => {});
  }
}

const warm = await once("bench-tpl-warm", false);
console.log(
  `first create of the shape (builds the template unless the state home has it, then restores): ${
    warm.total.toFixed(0)
  } ms`,
);
const cold: { create: number; total: number }[] = [];
const restored: { create: number; total: number }[] = [];
for (let i = 0; i < runs; i++) {
  cold.push(await once("bench-tpl-cold", true));
  restored.push(await once("bench-tpl-restored", false));
}
const row = (label: string, xs: { create: number; total: number }[]) =>
  console.log(
    `${label}: create ${median(xs.map((x) => x.create)).toFixed(0)} ms, create → first exec ${
      median(xs.map((x) => x.total)).toFixed(0)
    } ms (median of ${xs.length}; all: ${xs.map((x) => x.total.toFixed(0)).join(" ")})`,
  );
row("cold boot       ", cold);
row("template restore", restored);
console.log("goal under TCG: template restore ≤ 300 ms create → first exec");
