/**
 * Assets built from this checkout for a test's own state home: the agent,
 * netd and the initramfs (which holds the agent) are built here by the
 * provisioning steps themselves (cached by their source hash in `home`),
 * every other asset is linked from the real home. A test of a change to
 * the agent or netd then runs the code under test, not whatever the shared
 * home was last provisioned with.
 *
 * @module
 */

import { join } from "node:path";
import { homeLayout } from "../../src/store/home.ts";
import type { AssetName } from "../../src/store/assets.ts";
import { agentStep } from "../../src/host/provision/agent.ts";
import { netdStep } from "../../src/host/provision/netd.ts";
import { initramfsStep } from "../../src/host/provision/initramfs.ts";
import { runStep } from "../../src/host/provision/step.ts";

const BUILT: readonly AssetName[] = ["agent", "netd", "initramfs"];
const LINKED: readonly AssetName[] = ["kernel", "libkrunfw", "libkrun", "virtiofsd"];

/**
 * Makes `home`'s assets directory (replacing a link to the real one, whose
 * other assets it links) and builds the agent, netd and initramfs into it
 * from `projectDir`.
 *
 * @example
 * ```ts ignore
 * import { freshAssets } from "./fresh_assets.ts";
 * await freshAssets(testHome);
 * ```
 */
export async function freshAssets(home: string, projectDir = projectRoot()): Promise<void> {
  const dir = homeLayout(home).assets;
  const st = await Deno.lstat(dir).catch(() => undefined);
  // The real assets: where the home's link points, else the default home's.
  const realAssets = st?.isSymlink
    ? await Deno.readLink(dir)
    : join(Deno.env.get("HOME") ?? "/root", ".krunbox", "assets");
  if (st?.isSymlink) await Deno.remove(dir);
  await Deno.mkdir(dir, { recursive: true });
  for (const a of LINKED) {
    await Deno.symlink(join(realAssets, a), join(dir, a)).catch((e) => {
      if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    });
  }
  const ctx = { projectDir, home, log: (m: string) => console.log(`fresh assets: ${m}`) };
  for (const step of [agentStep, netdStep, initramfsStep]) {
    const out = await runStep(step, ctx);
    if (out.status === "failed") throw out.error ?? new Error(`building ${step.asset} failed`);
  }
  for (const a of BUILT) await Deno.stat(join(dir, a, "VERSION"));
}

function projectRoot(): string {
  return new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
}
