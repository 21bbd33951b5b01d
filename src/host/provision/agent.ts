/**
 * The guest agent: built from `agent/` as a static binary
 * (`-C target-feature=+crt-static`) so it runs in any image.
 *
 * @module
 */

import { join } from "node:path";
import { runCommand } from "../../util/command.ts";
import { type AssetStep, hashFiles, listFiles } from "./step.ts";

const TARGET = "x86_64-unknown-linux-gnu";

/**
 * Provisions `assets/agent/krunbox-agent` (the guest agent) and
 * `assets/agent/krunbox` (the host's native front door, installed into
 * `bin/` by src/host/provision/front_door.ts): one crate, one build.
 */
export const agentStep: AssetStep = {
  asset: "agent",
  async version(ctx) {
    const dir = join(ctx.projectDir, "agent");
    return `src-${await hashFiles(await listFiles(dir), dir + "/")}`;
  },
  async build(ctx, out) {
    const dir = join(ctx.projectDir, "agent");
    ctx.log("cargo build --release (static)");
    await runCommand("cargo", ["build", "--release", "--locked", "--target", TARGET], {
      cwd: dir,
      env: { RUSTFLAGS: "-C target-feature=+crt-static" },
    });
    for (const name of ["krunbox-agent", "krunbox"]) {
      const bin = join(dir, "target", TARGET, "release", name);
      // ldd exits non-zero for a static binary ("not a dynamic executable").
      const linked = await runCommand("ldd", [bin]).then((r) => r.stdout.trim(), () => "");
      if (linked && !linked.includes("statically linked")) {
        throw new Error(`${name} is not statically linked: ${linked}`);
      }
      await Deno.copyFile(bin, join(out, name));
      await Deno.chmod(join(out, name), 0o755);
    }
  },
};
