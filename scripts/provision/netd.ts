/**
 * The network engine: built from `netd/` (Go, the gVisor netstack) as a
 * static binary (`CGO_ENABLED=0`), cached by a hash of its sources like the
 * agent. Modules come from the Go module proxy through the ordinary client;
 * `go.sum` pins them.
 *
 * @module
 */

import { join } from "node:path";
import { runCommand } from "../../src/util/command.ts";
import { type AssetStep, hashFiles, listFiles } from "./step.ts";

/** Where Go is looked for when `go` is not on PATH. */
const GO_FALLBACK = "/usr/local/go/bin/go";

async function goBinary(): Promise<string> {
  try {
    await runCommand("go", ["version"]);
    return "go";
  } catch {
    return GO_FALLBACK;
  }
}

/** The inputs of the build: Go sources and the module files. */
async function sources(dir: string): Promise<string[]> {
  return (await listFiles(dir)).filter((p) => p.endsWith(".go") || p.endsWith("/go.mod") || p.endsWith("/go.sum"));
}

/** Provisions `assets/netd/netd`. */
export const netdStep: AssetStep = {
  asset: "netd",
  async version(ctx) {
    const dir = join(ctx.projectDir, "netd");
    return `src-${await hashFiles(await sources(dir), dir + "/")}`;
  },
  async build(ctx, out) {
    const dir = join(ctx.projectDir, "netd");
    const go = await goBinary();
    const bin = join(out, "netd");
    ctx.log(`${go} build (static)`);
    await runCommand(go, ["build", "-mod=readonly", "-trimpath", "-ldflags=-s -w", "-o", bin, "."], {
      cwd: dir,
      env: { CGO_ENABLED: "0", GOTOOLCHAIN: "local", GOFLAGS: "-buildvcs=false" },
    });
    const { stdout } = await runCommand(bin, ["--version"]);
    if (!stdout.startsWith("netd ")) {
      throw new Error(`the built netd answered --version with ${JSON.stringify(stdout)}`);
    }
    await Deno.chmod(bin, 0o755);
  },
};
