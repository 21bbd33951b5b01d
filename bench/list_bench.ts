/**
 * `Sandbox.list()` with 200 stopped sandboxes (issue 5 target: < 50 ms).
 *
 *   deno bench -A bench/list_bench.ts
 */

import { Store } from "../src/store/db.ts";
import { Sandbox } from "../mod.ts";
import { parseConfig } from "../src/sandbox/config.ts";

const home = await Deno.makeTempDir({ prefix: "krunbox-list-bench-" });
Deno.env.set("KRUNBOX_HOME", home);
await Deno.mkdir(`${home}/sandboxes`, { recursive: true });
{
  using store = Store.open(`${home}/db.sqlite`);
  for (let i = 0; i < 200; i++) {
    const config = parseConfig({ name: `sb-${i}`, image: { kind: "dir", path: "/srv/root" }, env: { I: String(i) } });
    store.insert(config.name, JSON.stringify(config), "stopped", false);
  }
}

Deno.bench("Sandbox.list() with 200 stopped sandboxes", async () => {
  const all = await Sandbox.list();
  if (all.length !== 200) throw new Error(`listed ${all.length}`);
});

globalThis.addEventListener("unload", () => Deno.removeSync(home, { recursive: true }));
