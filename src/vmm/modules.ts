/**
 * Guest kernel modules: which ones a guest needs and in which order to load
 * them. Provisioning copies the closure of {@link GUEST_MODULES} out of the
 * Debian kernel package together with a `modules.json` index (name → file,
 * direct and indirect dependencies, from the kernel's `modules.dep`).
 *
 * @module
 */

/** Modules every qemu guest loads (dependencies are added automatically). */
export const GUEST_MODULES = [
  "virtio_mmio",
  "virtio_console",
  "virtio_blk",
  "virtio_net",
  "erofs",
  "overlay",
  "virtiofs",
] as const;

/** Extra modules of the nested test host (an L1 VM that runs libkrun). */
export const NESTED_HOST_MODULES = ["kvm-amd", "vhost_vsock"] as const;

/** One module of the index: its file (relative to the modules dir) and deps. */
export interface ModuleInfo {
  readonly file: string;
  readonly deps: readonly string[];
}

/** name → info */
export type ModuleIndex = Readonly<Record<string, ModuleInfo>>;

function moduleName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1).replace(/\.ko(\.(xz|zst|gz))?$/, "");
}

/**
 * Parses a kernel's `modules.dep` into an index keyed by module name.
 *
 * @example
 * ```ts
 * import { parseModulesDep } from "./modules.ts";
 * const idx = parseModulesDep("kernel/a/virtio_blk.ko: kernel/a/virtio.ko\nkernel/a/virtio.ko:\n");
 * console.log(idx.virtio_blk.deps); // ["virtio"]
 * ```
 */
export function parseModulesDep(text: string): ModuleIndex {
  const index: Record<string, ModuleInfo> = {};
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const file = line.slice(0, colon).trim();
    const deps = line.slice(colon + 1).trim().split(/\s+/).filter(Boolean).map(moduleName);
    index[moduleName(file)] = { file, deps };
  }
  return index;
}

/**
 * The load order for the wanted modules: every module after all of its
 * dependencies, each once. Throws on a module the index does not have.
 *
 * @example
 * ```ts
 * import { loadOrder, parseModulesDep } from "./modules.ts";
 * const idx = parseModulesDep("b.ko: a.ko\na.ko:\n");
 * console.log(loadOrder(idx, ["b"])); // ["a", "b"]
 * ```
 */
export function loadOrder(index: ModuleIndex, wanted: readonly string[]): string[] {
  const order: string[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (name: string, from: string) => {
    const info = index[name];
    if (!info) throw new Error(`kernel module ${name} (needed by ${from}) is not in the kernel package`);
    const s = state.get(name);
    if (s === "done") return;
    if (s === "visiting") throw new Error(`kernel module dependency cycle at ${name}`);
    state.set(name, "visiting");
    for (const d of info.deps) visit(d, name);
    state.set(name, "done");
    order.push(name);
  };
  for (const w of wanted) visit(w, "krunbox");
  return order;
}
