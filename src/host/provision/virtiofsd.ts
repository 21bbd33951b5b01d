/**
 * The Rust `virtiofsd` (crates.io), the file server of the qemu backend's
 * shared directories. Debian's qemu 7.2 ships the C virtiofsd, which has no
 * read-only mode, needs root and runs without seccomp; the Rust one has
 * `--readonly`, `--sandbox namespace` (works unprivileged), `--seccomp` and
 * `--modcaps` (see `virtiofsdArgs` in src/vmm/qemu.ts for how krunbox runs it).
 *
 * Built with `cargo install --locked` (the crate's own lock file) against
 * Debian's libcap-ng-dev and libseccomp-dev (in HOST_PACKAGES).
 *
 * @module
 */

import { join } from "node:path";
import { homeLayout } from "../../store/home.ts";
import { runCommand } from "../../util/command.ts";
import type { AssetStep } from "./step.ts";

/** The virtiofsd release krunbox's invocation is written against. */
export const VIRTIOFSD_VERSION = "1.14.0";

/** Provisions `assets/virtiofsd/virtiofsd`. */
export const virtiofsdStep: AssetStep = {
  asset: "virtiofsd",
  async version() {
    const { stdout } = await runCommand("rustc", ["--version"]);
    return `virtiofsd-${VIRTIOFSD_VERSION} (${stdout.trim()})`;
  },
  async build(ctx, out) {
    const root = join(homeLayout(ctx.home).root, "build", `virtiofsd-${VIRTIOFSD_VERSION}`);
    await Deno.remove(root, { recursive: true }).catch(() => {});
    ctx.log(`cargo install --locked virtiofsd@${VIRTIOFSD_VERSION} (about 1-3 min)`);
    try {
      await runCommand("cargo", [
        "install",
        "--locked",
        "--quiet",
        "--root",
        root,
        "--target-dir",
        join(root, "target"),
        `virtiofsd@${VIRTIOFSD_VERSION}`,
      ]);
      const bin = join(out, "virtiofsd");
      await Deno.copyFile(join(root, "bin", "virtiofsd"), bin);
      await Deno.chmod(bin, 0o755);
      const { stdout } = await runCommand(bin, ["--version"]);
      if (!stdout.includes(VIRTIOFSD_VERSION)) {
        throw new Error(`the built virtiofsd reports ${JSON.stringify(stdout.trim())}, not ${VIRTIOFSD_VERSION}`);
      }
    } finally {
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
  },
};
