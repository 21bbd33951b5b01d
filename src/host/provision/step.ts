/**
 * The provisioning framework: each step builds one asset into a staging
 * directory; the directory replaces the old asset in one rename, with its
 * `VERSION` stamp inside, so an interrupted step never looks finished and a
 * finished one is never redone (idempotent and cached).
 *
 * @module
 */

import { join } from "node:path";
import { assetDir, type AssetName, assetVersion } from "../../store/assets.ts";

/** What every step gets. */
export interface StepContext {
  /** The project checkout (sources of the agent, …). */
  readonly projectDir: string;
  /** The state home. */
  readonly home: string;
  /** Prints one progress line for this step. */
  log(message: string): void;
}

/** One asset's provisioning. */
export interface AssetStep {
  readonly asset: AssetName;
  /** A failure is reported and provisioning goes on (the tests skip what needs it); under CI it fails setup. */
  readonly optional?: boolean;
  /** Identifies the inputs: a changed version rebuilds the asset. */
  version(ctx: StepContext): Promise<string>;
  /** Builds the asset's files into `outDir` (empty, created). */
  build(ctx: StepContext, outDir: string, version: string): Promise<void>;
}

/** How one step ended. */
export interface StepOutcome {
  readonly asset: AssetName;
  readonly status: "cached" | "built" | "failed";
  readonly version?: string;
  readonly seconds: number;
  readonly error?: Error;
}

/**
 * Runs one step if its asset is missing or stale.
 *
 * @example
 * ```ts
 * import { runStep } from "./step.ts";
 * const home = await Deno.makeTempDir();
 * const step = {
 *   asset: "kernel" as const,
 *   version: () => Promise.resolve("v1"),
 *   build: (_ctx: unknown, out: string) => Deno.writeTextFile(`${out}/vmlinuz`, "not a kernel"),
 * };
 * const ctx = { projectDir: ".", home, log: () => {} };
 * const first = await runStep(step, ctx);
 * const second = await runStep(step, ctx);
 * console.log(first.status, second.status); // built cached
 * if (first.status !== "built" || second.status !== "cached") throw new Error(second.status);
 * await Deno.remove(home, { recursive: true });
 * ```
 */
export async function runStep(step: AssetStep, ctx: StepContext): Promise<StepOutcome> {
  const started = performance.now();
  const seconds = () => Math.round((performance.now() - started) / 100) / 10;
  const log = (m: string) => ctx.log(`${step.asset}: ${m}`);
  try {
    const version = await step.version(ctx);
    if ((await assetVersion(step.asset, ctx.home)) === version) {
      log(`cached (${version})`);
      return { asset: step.asset, status: "cached", version, seconds: seconds() };
    }
    const dir = assetDir(step.asset, ctx.home);
    const staging = `${dir}.staging-${Deno.pid}`;
    await Deno.remove(staging, { recursive: true }).catch(() => {});
    await Deno.mkdir(staging, { recursive: true });
    log(`building ${version}`);
    await step.build({ ...ctx, log }, staging, version);
    await Deno.writeTextFile(join(staging, "VERSION"), version + "\n");
    const old = `${dir}.old-${Deno.pid}`;
    await Deno.rename(dir, old).catch(() => {});
    await Deno.rename(staging, dir);
    await Deno.remove(old, { recursive: true }).catch(() => {});
    log(`done in ${seconds()} s`);
    return { asset: step.asset, status: "built", version, seconds: seconds() };
  } catch (e) {
    const error = e instanceof Error ? e : new Error(String(e));
    log(`FAILED after ${seconds()} s: ${error.message}`);
    return { asset: step.asset, status: "failed", seconds: seconds(), error };
  }
}

/**
 * A short content hash of files, for version stamps of things built from
 * the checkout.
 *
 * @example
 * ```ts
 * import { hashFiles } from "./step.ts";
 * const a = await Deno.makeTempDir();
 * const b = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${a}/x.txt`, "same");
 * await Deno.writeTextFile(`${b}/x.txt`, "same");
 * const h = await hashFiles([`${a}/x.txt`], `${a}/`);
 * console.log(h.length); // 16 (hex digits: the first 8 bytes of a SHA-256)
 * // The same file under the same relative name hashes the same in any checkout.
 * if (h !== await hashFiles([`${b}/x.txt`], `${b}/`)) throw new Error("hashes differ");
 * ```
 */
export async function hashFiles(paths: string[], base = ""): Promise<string> {
  const parts: Uint8Array[] = [];
  const enc = new TextEncoder();
  // Names relative to `base`: the same sources hash the same in any checkout.
  for (const p of [...paths].sort()) {
    const name = base && p.startsWith(base) ? p.slice(base.length) : p;
    parts.push(enc.encode(name + "\0"), await Deno.readFile(p), enc.encode("\0"));
  }
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    all.set(p, off);
    off += p.length;
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(digest.slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Every file under a directory (recursively), skipping `target/`.
 *
 * @example
 * ```ts
 * import { listFiles } from "./step.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.mkdir(`${dir}/target`);
 * await Deno.writeTextFile(`${dir}/target/skipped`, "");
 * await Deno.writeTextFile(`${dir}/kept.rs`, "");
 * console.log(await listFiles(dir)); // [ "<dir>/kept.rs" ]
 * if ((await listFiles(dir)).length !== 1) throw new Error("target/ was listed");
 * ```
 */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory && e.name !== "target") out.push(...await listFiles(p));
    else if (e.isFile) out.push(p);
  }
  return out;
}
