import { assertEquals } from "../util/assert.ts";
import { checkLayers, layerOf } from "../../scripts/layers.ts";

/** A project tree in a temp directory: path → source. */
async function tree(files: Record<string, string>): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "krunbox-layers-" });
  for (const [path, source] of Object.entries(files)) {
    await Deno.mkdir(`${root}/${path.slice(0, path.lastIndexOf("/") + 1)}`, { recursive: true });
    await Deno.writeTextFile(`${root}/${path}`, source);
  }
  return root;
}

/** The problems as `kind: chain`, sorted. */
async function problemsOf(root: string): Promise<string[]> {
  const { problems } = await checkLayers(root);
  return problems.map((p) => `${p.kind}: ${p.chain.join(" → ")}`).sort();
}

/** A clean little library: every import goes down or sideways, no cycle. */
const CLEAN = {
  "mod.ts": 'export { a } from "./src/sandbox/a.ts";\n',
  "cli.ts": 'import { a } from "./mod.ts";\nconsole.log(a);\n',
  "src/errors.ts": "export class E extends Error {}\n",
  "src/settings.ts": "export const s = 1;\n",
  "ffi/lib.ts": 'import { E } from "../src/errors.ts";\nexport const lib = E;\n',
  "src/store/db.ts": 'import { lib } from "../../ffi/lib.ts";\nexport const db = lib;\n',
  "src/vmm/v.ts": 'import type { W } from "./w.ts";\nexport const v = 1;\nexport type V = W;\n',
  "src/vmm/w.ts": 'import { v } from "./v.ts";\nexport type W = number;\nexport const w = v;\n',
  "src/sandbox/a.ts":
    'import { db } from "../store/db.ts";\nimport { w } from "../vmm/w.ts";\nexport const a = [db, w];\n' +
    '/**\n * @example\n * ```ts\n * import { a } from "../../mod.ts";\n * ```\n */\nexport const doc = 1;\n',
  "src/sandbox/lazy.ts": 'export const later = () => import("./late.ts");\n',
  "src/sandbox/late.ts": 'import { later } from "./lazy.ts";\nexport const l = later;\n',
};

Deno.test("layers: a clean tree passes (type-only and dynamic imports make no cycle; JSDoc imports are not imports)", async () => {
  const root = await tree(CLEAN);
  assertEquals(await problemsOf(root), []);
  assertEquals((await checkLayers(root)).modules, Object.keys(CLEAN).length);
  await Deno.remove(root, { recursive: true });
});

Deno.test("layers: cycles, upward imports (type-only too), unlayered files and imports outside the library fail", async () => {
  const root = await tree({
    ...CLEAN,
    "src/sandbox/b.ts": 'import { c } from "./c.ts";\nexport const b = c;\n',
    "src/sandbox/c.ts": 'import { b } from "./b.ts";\nexport const c = () => b;\n',
    "src/store/up.ts": 'import { a } from "../sandbox/a.ts";\nexport const up = a;\n',
    "src/store/typed.ts": 'import type { V } from "../vmm/v.ts";\nexport type T = V;\n',
    "src/util/self.ts": 'import { me } from "./self.ts";\nexport const me = () => me;\n',
    "src/util/out.ts": 'import { t } from "../../scripts/tool.ts";\nexport const o = t;\n',
    "scripts/tool.ts": "export const t = 1;\n",
    "src/newpart/x.ts": "export const x = 1;\n",
  });
  assertEquals(await problemsOf(root), [
    "cycle: src/sandbox/b.ts → src/sandbox/c.ts → src/sandbox/b.ts",
    "cycle: src/util/self.ts → src/util/self.ts",
    "outside: src/util/out.ts:1 → scripts/tool.ts",
    "unlayered: src/newpart/x.ts",
    "upward: src/store/typed.ts:1 → src/vmm/v.ts",
    "upward: src/store/up.ts:1 → src/sandbox/a.ts",
  ]);
  const { problems } = await checkLayers(root);
  const up = problems.find((p) => p.kind === "upward" && p.chain[1] === "src/sandbox/a.ts")!;
  assertEquals(
    up.message,
    "upward import: src/store/up.ts:1 (store) → src/sandbox/a.ts (sandbox); store may import errors, settings, version, ffi, util, store",
  );
  await Deno.remove(root, { recursive: true });
});

Deno.test("layers: an import that does not resolve fails", async () => {
  const root = await tree({
    ...CLEAN,
    "src/store/gone.ts": 'import { x } from "./missing.ts";\nexport const g = x;\n',
  });
  const problems = await problemsOf(root);
  assertEquals(problems.length, 1, problems.join("\n"));
  assertEquals(problems[0].startsWith("unresolved: src/store/gone.ts"), true, problems[0]);
  await Deno.remove(root, { recursive: true });
});

Deno.test("layers: the real tree has no cycle and no upward import", async () => {
  const report = await checkLayers(new URL("../..", import.meta.url).pathname);
  assertEquals(report.problems.map((p) => p.message), []);
  assertEquals(report.modules > 40, true, `only ${report.modules} modules read`);
});

Deno.test("layers: every path maps to its layer", () => {
  assertEquals(
    ["src/errors.ts", "ffi/load.ts", "src/store/open.ts", "src/sandbox/launch.ts", "cli.ts", "src/nowhere/x.ts"].map((
      p,
    ) => layerOf(p)?.name),
    ["errors", "ffi", "store", "sandbox", "entry points", undefined],
  );
});
