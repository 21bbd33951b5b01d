/**
 * The layering and import-cycle check of the library (mod.ts, cli.ts, src/,
 * ffi/), run by `deno task check`:
 *
 * ```
 * deno run --allow-read --allow-run scripts/layers.ts [project root]
 * ```
 *
 * The module graph is Deno's own (`deno info --json`, one call over every
 * file), so imports are read by the same parser that runs them and an
 * `import` inside a JSDoc example is never mistaken for one.
 *
 * Rules, each problem printed with its import chain:
 * - **Layers**, bottom to top (see {@link LAYERS}): a module imports only
 *   its own layer or lower ones. `errors`, `settings` and `version` are the floor:
 *   every layer throws typed errors and reads its settings, and both import
 *   nothing of krunbox's. ffi and util come next, then store, agent, image,
 *   net, vmm, metrics, sandbox, host (provisioning and the doctor), and the entry points mod.ts, cli.ts and src/cli. This
 *   holds for type-only imports too: a type names the layer it comes from.
 * - **No cycles** among the imports a module runs (value imports, static).
 *   A type-only import is erased before the module loads and a dynamic
 *   `import()` runs later, so neither can make a module see another one
 *   half-initialised; they are left out of the cycle check (not the layer
 *   check).
 * - Every file belongs to a layer, imports no project file outside the
 *   library (scripts/, tests/, bench/), and resolves.
 *
 * @example
 * ```ts
 * import { checkLayers } from "./layers.ts";
 * const { modules, problems } = await checkLayers(new URL("..", import.meta.url).pathname);
 * console.log(`${modules} modules, ${problems.length} problems`);
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join, relative, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** One layer: the paths it holds (a directory ends with `/`) and its height. */
export interface Layer {
  /** The layer's name in messages. */
  readonly name: string;
  /** Paths relative to the project root; a directory ends with `/`. */
  readonly paths: readonly string[];
  /** Height: a module may import modules of the same or a lower rank. */
  readonly rank: number;
}

/** The layers of the library, bottom first (DESIGN.md, "Parts"). */
export const LAYERS: readonly Layer[] = [
  { name: "errors", paths: ["src/errors.ts"], rank: 0 },
  { name: "settings", paths: ["src/settings.ts"], rank: 0 },
  { name: "version", paths: ["src/version.ts", "src/setup_command.ts"], rank: 0 },
  { name: "ffi", paths: ["ffi/"], rank: 1 },
  { name: "util", paths: ["src/util/"], rank: 1 },
  { name: "store", paths: ["src/store/"], rank: 2 },
  { name: "agent", paths: ["src/agent/"], rank: 3 },
  { name: "image", paths: ["src/image/"], rank: 4 },
  { name: "net", paths: ["src/net/"], rank: 5 },
  { name: "vmm", paths: ["src/vmm/"], rank: 6 },
  { name: "metrics", paths: ["src/metrics/"], rank: 7 },
  { name: "sandbox", paths: ["src/sandbox/"], rank: 8 },
  { name: "host", paths: ["src/host/"], rank: 9 },
  { name: "entry points", paths: ["mod.ts", "cli.ts", "src/cli/"], rank: 10 },
];

/** The library's files: what the check reads (relative to the root). */
const LIBRARY = ["mod.ts", "cli.ts", "src/", "ffi/"];

/** A broken rule, with the chain of imports that breaks it (relative paths, `path:line` for the importer). */
export interface Problem {
  /** Which rule. */
  readonly kind: "cycle" | "upward" | "unlayered" | "outside" | "unresolved";
  /** The modules involved, in import order (a cycle ends where it starts). */
  readonly chain: readonly string[];
  /** One line saying what is wrong and what to do. */
  readonly message: string;
}

/** What {@link checkLayers} found. */
export interface LayerReport {
  /** How many library modules were read. */
  readonly modules: number;
  /** Every broken rule; empty when the tree is clean. */
  readonly problems: readonly Problem[];
}

/**
 * The layer of a path relative to the project root, if any.
 *
 * @example
 * ```ts
 * import { layerOf } from "./layers.ts";
 * console.log(layerOf("src/vmm/runner.ts")?.name); // vmm
 * ```
 */
export function layerOf(path: string, layers: readonly Layer[] = LAYERS): Layer | undefined {
  return layers.find((l) => l.paths.some((p) => p.endsWith("/") ? path.startsWith(p) : path === p));
}

/** One import as `deno info --json` reports it. */
interface InfoDependency {
  readonly specifier: string;
  readonly code?: { readonly specifier?: string; readonly error?: string; readonly span?: InfoSpan };
  readonly type?: { readonly specifier?: string; readonly error?: string; readonly span?: InfoSpan };
  readonly isDynamic?: boolean;
}
interface InfoSpan {
  readonly start: { readonly line: number };
}
interface InfoModule {
  readonly specifier: string;
  readonly error?: string;
  readonly dependencies?: readonly InfoDependency[];
}

/** An import between two library modules. */
interface Edge {
  readonly from: string;
  readonly to: string;
  readonly line: number;
  /** Runs when the importer loads (a static value import). */
  readonly runs: boolean;
}

/**
 * Checks the library under `root` against {@link LAYERS} and for cycles.
 *
 * @example
 * ```ts
 * import { checkLayers } from "./layers.ts";
 * const { problems } = await checkLayers(".");
 * for (const p of problems) console.log(p.message);
 * ```
 */
export async function checkLayers(root: string, layers: readonly Layer[] = LAYERS): Promise<LayerReport> {
  root = resolve(root);
  const files = await libraryFiles(root);
  const problems: Problem[] = [];
  for (const f of files) {
    if (!layerOf(f, layers)) {
      problems.push({
        kind: "unlayered",
        chain: [f],
        message: `not in any layer: ${f} (add its directory to LAYERS in scripts/layers.ts)`,
      });
    }
  }
  const edges: Edge[] = [];
  const rel = (specifier: string) => relative(root, fileURLToPath(specifier));
  const graph = await moduleGraph(root, files);
  const failed = new Map(graph.filter((m) => m.error).map((m) => [m.specifier, m.error!]));
  for (const m of graph) {
    if (!m.specifier.startsWith("file:")) continue;
    const from = rel(m.specifier);
    if (!files.includes(from)) continue;
    if (m.error) problems.push({ kind: "unresolved", chain: [from], message: `cannot read ${from}: ${m.error}` });
    for (const d of m.dependencies ?? []) {
      for (const [target, runs] of [[d.code, !d.isDynamic], [d.type, false]] as const) {
        if (!target) continue;
        const line = (target.span?.start.line ?? 0) + 1;
        const error = target.error ?? (target.specifier && failed.get(target.specifier));
        if (error) {
          problems.push({
            kind: "unresolved",
            chain: [`${from}:${line}`, d.specifier],
            message: `${from}:${line} imports ${d.specifier}, which cannot be loaded: ${error}`,
          });
          continue;
        }
        if (!target.specifier?.startsWith("file:")) continue;
        edges.push({ from, to: rel(target.specifier), line, runs });
      }
    }
  }
  for (const e of dedupe(edges)) {
    if (!files.includes(e.to)) {
      problems.push({
        kind: "outside",
        chain: [`${e.from}:${e.line}`, e.to],
        message:
          `outside the library: ${e.from}:${e.line} → ${e.to} (the library may import only mod.ts, cli.ts, src/ and ffi/)`,
      });
      continue;
    }
    const [a, b] = [layerOf(e.from, layers), layerOf(e.to, layers)];
    if (a && b && b.rank > a.rank) {
      const allowed = layers.filter((l) => l.rank <= a.rank).map((l) => l.name).join(", ");
      problems.push({
        kind: "upward",
        chain: [`${e.from}:${e.line}`, e.to],
        message:
          `upward import: ${e.from}:${e.line} (${a.name}) → ${e.to} (${b.name}); ${a.name} may import ${allowed}`,
      });
    }
  }
  for (const cycle of cycles(files, edges.filter((e) => e.runs && files.includes(e.to)))) {
    problems.push({ kind: "cycle", chain: cycle, message: `import cycle: ${cycle.join(" → ")}` });
  }
  return { modules: files.length, problems };
}

/** The library's .ts files under `root`, relative and sorted. */
async function libraryFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(join(root, dir)));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    for (const e of entries) {
      const path = `${dir}${e.name}`;
      if (e.isDirectory) await walk(`${path}/`);
      else if (e.isFile && /\.(ts|tsx|mts)$/.test(e.name)) out.push(path);
    }
  };
  for (const entry of LIBRARY) {
    if (entry.endsWith("/")) await walk(entry);
    else if (await Deno.stat(join(root, entry)).then((s) => s.isFile, () => false)) out.push(entry);
  }
  return out.sort();
}

/** Deno's module graph of every file at once: a `data:` root that imports each of them. */
async function moduleGraph(root: string, files: readonly string[]): Promise<InfoModule[]> {
  const source = files.map((f) => `import ${JSON.stringify(pathToFileURL(join(root, f)).href)};`).join("\n");
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", `data:application/typescript,${encodeURIComponent(source)}`],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`deno info failed (exit ${out.code}):\n${new TextDecoder().decode(out.stderr)}`);
  }
  return (JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: InfoModule[] }).modules;
}

/** One edge per (from, to, runs), the first line kept. */
function dedupe(edges: readonly Edge[]): Edge[] {
  const seen = new Set<string>();
  return edges.filter((e) => {
    const key = `${e.from}\0${e.to}\0${e.runs}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/**
 * The cycles among `edges`: the strongly connected groups of modules
 * (Tarjan), and in each group the shortest cycle through every member not
 * already on one printed, so each module caught in a cycle is named on one.
 */
function cycles(nodes: readonly string[], edges: readonly Edge[]): string[][] {
  const next = new Map<string, string[]>(nodes.map((n) => [n, []]));
  for (const e of edges) next.get(e.from)!.push(e.to);
  for (const list of next.values()) list.sort();

  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const groups: string[][] = [];
  const visit = (v: string) => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    onStack.add(v);
    for (const w of next.get(v)!) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const group: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        group.push(w);
      } while (w !== v);
      if (group.length > 1 || next.get(v)!.includes(v)) groups.push(group.sort());
    }
  };
  for (const n of nodes) if (!index.has(n)) visit(n);

  const found: string[][] = [];
  for (const group of groups.sort((a, b) => a[0].localeCompare(b[0]))) {
    const covered = new Set<string>();
    for (const start of group) {
      if (covered.has(start)) continue;
      const path = shortestCycle(start, new Set(group), next);
      for (const m of path) covered.add(m);
      found.push(path);
    }
  }
  return found;
}

/** The shortest way from `start` back to itself inside `group` (breadth-first), as [start, …, start]. */
function shortestCycle(
  start: string,
  group: ReadonlySet<string>,
  next: ReadonlyMap<string, readonly string[]>,
): string[] {
  const via = new Map<string, string>();
  const queue = [start];
  let last: string | undefined;
  while (queue.length && last === undefined) {
    const v = queue.shift()!;
    for (const w of next.get(v)!) {
      if (w === start) {
        last = v;
        break;
      }
      if (group.has(w) && !via.has(w)) {
        via.set(w, v);
        queue.push(w);
      }
    }
  }
  const path = [start];
  for (let v = last!; v !== start; v = via.get(v)!) path.splice(1, 0, v);
  path.push(start);
  return path;
}

if (import.meta.main) {
  const { positionals } = parseArgs({ args: Deno.args, allowPositionals: true });
  const root = positionals[0] ?? fileURLToPath(new URL("..", import.meta.url));
  const { modules, problems } = await checkLayers(root);
  for (const p of problems) console.error(p.message);
  if (problems.length) {
    console.error(`layers: ${problems.length} problem(s) in ${modules} modules (rules: scripts/layers.ts)`);
    Deno.exit(1);
  }
  console.log(`layers: ${modules} modules, no cycle, no upward import`);
}
