/**
 * The contained runner's warm cache (src/vmm/runner_cache.ts), with real
 * processes: a stand-in runner in a temporary package tree counts its runs,
 * so the tests see the warm-up run exactly when the code or nothing has
 * changed, and the real runner's `--warm` fills a fresh `DENO_DIR`.
 */

import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { assert, assertEquals } from "../util/assert.ts";
import { warmKey, warmRunnerCache } from "../../src/vmm/runner_cache.ts";

/** A package tree whose `src/vmm/runner.ts` appends a line to `runs` on `--warm` (and exits `code`). */
async function fakeTree(code = 0): Promise<{ root: string; runner: URL; runs: () => number }> {
  const root = await Deno.makeTempDir({ prefix: "krunbox-warm-" });
  await Deno.mkdir(join(root, "src/vmm"), { recursive: true });
  const runs = join(root, "runs");
  await Deno.writeTextFile(
    join(root, "src/vmm/runner.ts"),
    `if (Deno.args[0] !== "--warm") Deno.exit(9);\n` +
      `await Deno.writeTextFile(${JSON.stringify(runs)}, "x\\n", { append: true });\nDeno.exit(${code});\n`,
  );
  return {
    root,
    runner: pathToFileURL(join(root, "src/vmm/runner.ts")),
    runs: () => Deno.readTextFileSync(runs).split("\n").filter(Boolean).length,
  };
}

Deno.test("warmRunnerCache runs the runner once per code version and Deno cache", async () => {
  const t = await fakeTree();
  const cache = await Deno.makeTempDir({ prefix: "krunbox-denodir-" });
  try {
    await warmRunnerCache(cache, t.runner);
    assertEquals(t.runs(), 1);
    await warmRunnerCache(cache, t.runner);
    assertEquals(t.runs(), 1, "the marker matched: no second run");
    // A changed file of the code: warmed again.
    await Deno.writeTextFile(join(t.root, "src/vmm/other.ts"), "export const x = 1;\n");
    await warmRunnerCache(cache, t.runner);
    assertEquals(t.runs(), 2);
    // Another cache directory has no marker of its own.
    const other = await Deno.makeTempDir({ prefix: "krunbox-denodir-" });
    await warmRunnerCache(other, t.runner);
    assertEquals(t.runs(), 3);
    await Deno.remove(other, { recursive: true });
  } finally {
    await Deno.remove(t.root, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("a failed warm-up is logged and leaves no marker (it is tried again)", async () => {
  const t = await fakeTree(1);
  const cache = await Deno.makeTempDir({ prefix: "krunbox-denodir-" });
  try {
    const logged: string[] = [];
    await warmRunnerCache(cache, t.runner, (m) => logged.push(m));
    assertEquals(logged.length, 1);
    assert(logged[0].includes("failed"), logged[0]);
    await warmRunnerCache(cache, t.runner, (m) => logged.push(m));
    assertEquals(t.runs(), 2);
  } finally {
    await Deno.remove(t.root, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("warmKey changes with a file's size and with the runner's URL", async () => {
  const t = await fakeTree();
  try {
    const a = await warmKey(t.runner);
    assertEquals(await warmKey(t.runner), a);
    await Deno.writeTextFile(join(t.root, "src/vmm/runner.ts"), "// longer\n", { append: true });
    assert((await warmKey(t.runner)) !== a);
    assert((await warmKey(new URL("https://example.invalid/src/vmm/runner.ts"))) !== a);
  } finally {
    await Deno.remove(t.root, { recursive: true });
  }
});

Deno.test("the real runner's --warm fills a fresh DENO_DIR's code cache", async () => {
  const cache = await Deno.makeTempDir({ prefix: "krunbox-denodir-" });
  try {
    const logged: string[] = [];
    await warmRunnerCache(cache, new URL("../../src/vmm/runner.ts", import.meta.url), (m) => logged.push(m));
    assertEquals(logged, []);
    const names = [...Deno.readDirSync(cache)].map((e) => e.name);
    assert(names.includes("krunbox-runner-warm"), names.join(" "));
    assert(names.some((n) => n.startsWith("v8_code_cache")), names.join(" "));
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});
