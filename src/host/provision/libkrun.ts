/**
 * libkrun and its kernel bundle libkrunfw, for the libkrun backend.
 *
 * - libkrunfw: Debian sid's `libkrunfw5`, fetched through a private sid
 *   source list and unpacked (never installed system-wide).
 * - libkrun: built from its crates.io source. The crates.io copy cannot build
 *   its default init blob (its C source is not in the crate), so it is built
 *   without `init-blob`: krunbox's own agent is the guest's init.
 *
 * @module
 */

import { join } from "node:path";
import { assetVersion } from "../../store/assets.ts";
import { homeLayout } from "../../store/home.ts";
import { runCommand } from "../../util/command.ts";
import { candidateVersion, downloadAndUnpack, preparePrivateSource, type PrivateSource } from "./apt.ts";
import type { AssetStep, StepContext } from "./step.ts";

/** The libkrun release krunbox's FFI table is written against. */
export const LIBKRUN_VERSION = "1.19.7";
/** Cargo features: virtio-blk for image roots, virtio-net for later network modes. */
export const LIBKRUN_FEATURES = ["blk", "net"] as const;

function sidSource(ctx: StepContext): PrivateSource {
  return {
    dir: join(homeLayout(ctx.home).root, "build", "apt-sid"),
    line: "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main",
  };
}

/** Provisions `assets/libkrunfw/libkrunfw.so.5`. */
export const libkrunfwStep: AssetStep = {
  asset: "libkrunfw",
  optional: true,
  async version(ctx) {
    const src = sidSource(ctx);
    try {
      await preparePrivateSource(src);
      return `libkrunfw5=${await candidateVersion("libkrunfw5", src)}`;
    } catch (e) {
      // Offline, or sid's lists unreachable: a libkrunfw already provisioned stays (setup is idempotent).
      const have = await assetVersion("libkrunfw", ctx.home);
      if (!have) throw e;
      ctx.log(`Debian sid cannot be asked (${(e as Error).message.split("\n")[0]}); keeping ${have}`);
      return have;
    }
  },
  async build(ctx, out) {
    const unpacked = await Deno.makeTempDir({ prefix: "krunbox-krunfw-" });
    try {
      ctx.log("downloading libkrunfw5 from Debian sid");
      await downloadAndUnpack("libkrunfw5", unpacked, sidSource(ctx));
      const libDir = join(unpacked, "usr", "lib", "x86_64-linux-gnu");
      const real = [...Deno.readDirSync(libDir)].find((e) => /^libkrunfw\.so\.5\.\d/.test(e.name));
      if (!real) throw new Error("libkrunfw5 has no libkrunfw.so.5.*");
      await Deno.copyFile(join(libDir, real.name), join(out, "libkrunfw.so.5"));
    } finally {
      await Deno.remove(unpacked, { recursive: true });
    }
  },
};

async function crateSource(ctx: StepContext): Promise<string> {
  const buildRoot = join(homeLayout(ctx.home).root, "build");
  const fetcher = join(buildRoot, "libkrun-fetch");
  await Deno.mkdir(join(fetcher, "src"), { recursive: true });
  await Deno.writeTextFile(
    join(fetcher, "Cargo.toml"),
    `[package]\nname = "krunbox-libkrun-fetch"\nversion = "0.0.0"\nedition = "2021"\n\n` +
      `[dependencies]\nlibkrun = { version = "=${LIBKRUN_VERSION}", default-features = false }\n`,
  );
  await Deno.writeTextFile(join(fetcher, "src", "lib.rs"), "");
  ctx.log(`fetching the libkrun ${LIBKRUN_VERSION} crate`);
  await runCommand("cargo", ["fetch", "-q"], { cwd: fetcher });
  const { stdout } = await runCommand("cargo", ["metadata", "--format-version", "1"], { cwd: fetcher });
  const meta = JSON.parse(stdout) as { packages: { name: string; manifest_path: string }[] };
  const pkg = meta.packages.find((p) => p.name === "libkrun");
  if (!pkg) throw new Error("cargo metadata does not list libkrun");
  return pkg.manifest_path.replace(/\/Cargo\.toml$/, "");
}

/** Provisions `assets/libkrun/libkrun.so.1`. */
export const libkrunStep: AssetStep = {
  asset: "libkrun",
  optional: true,
  async version() {
    const { stdout } = await runCommand("rustc", ["--version"]);
    return `libkrun-${LIBKRUN_VERSION}+${LIBKRUN_FEATURES.join(",")} (${stdout.trim()})`;
  },
  async build(ctx, out) {
    const src = await crateSource(ctx);
    const work = join(homeLayout(ctx.home).root, "build", `libkrun-${LIBKRUN_VERSION}`);
    // Build in a private copy: the registry source is shared and read-only by convention.
    await runCommand("cp", ["-a", "-T", src, work]);
    ctx.log(`cargo build --release --no-default-features --features ${LIBKRUN_FEATURES.join(",")} (about 2-4 min)`);
    await runCommand("cargo", [
      "build",
      "--release",
      "--lib",
      "--no-default-features",
      "--features",
      LIBKRUN_FEATURES.join(","),
    ], { cwd: work });
    await Deno.copyFile(join(work, "target", "release", "libkrun.so"), join(out, "libkrun.so.1"));
  },
};
