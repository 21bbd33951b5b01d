/**
 * Provisioning: installs what is missing and builds the assets under
 * `$KRUNBOX_HOME/assets`, each step cached by its version stamp. Run with
 * `deno task setup` (the README's two commands call it first).
 *
 * Optional steps (libkrun, libkrunfw) may fail without failing setup: the
 * doctor reports them and the tests that need them are skipped with a reason.
 * Under CI (`CI=true`, src/host/ci.ts) nothing is optional: a failed step
 * fails setup, named with its error.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { homeLayout, krunboxHome } from "../store/home.ts";
import { ensurePackages, HOST_PACKAGES } from "./provision/apt.ts";
import { agentStep } from "./provision/agent.ts";
import { initramfsStep } from "./provision/initramfs.ts";
import { kernelStep } from "./provision/kernel.ts";
import { libkrunfwStep, libkrunStep } from "./provision/libkrun.ts";
import { netdStep } from "./provision/netd.ts";
import { virtiofsdStep } from "./provision/virtiofsd.ts";
import { type AssetStep, runStep, type StepContext, type StepOutcome } from "./provision/step.ts";
import { requireAll } from "./ci.ts";
import { installFrontDoor } from "./provision/front_door.ts";

const STEPS: readonly AssetStep[] = [
  kernelStep,
  agentStep,
  netdStep,
  initramfsStep,
  virtiofsdStep,
  libkrunfwStep,
  libkrunStep,
];

/** Provisions what is missing; resolves 0 when every required step succeeded. */
export async function main(): Promise<number> {
  const started = performance.now();
  const home = krunboxHome();
  const log = (m: string) => console.log(`[setup] ${m}`);
  await Deno.mkdir(homeLayout(home).assets, { recursive: true });
  const ctx: StepContext = { projectDir: fileURLToPath(new URL("../..", import.meta.url)), home, log };
  log(`state home ${home}`);

  const t0 = performance.now();
  try {
    await ensurePackages(Object.keys(HOST_PACKAGES), (m) => log(`packages: ${m}`));
  } catch (e) {
    log(`packages: FAILED: ${(e as Error).message}`);
    return 1;
  }
  log(`packages: ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  const outcomes: StepOutcome[] = [];
  for (const step of STEPS) outcomes.push(await runStep(step, ctx));
  if (outcomes.find((o) => o.asset === "agent")?.status !== "failed") {
    try {
      const bin = await installFrontDoor(home);
      log(`front door: ${bin} (put ${homeLayout(home).bin} on PATH to run \`krunbox\` natively)`);
    } catch (e) {
      log(`front door: FAILED: ${(e as Error).message}`);
      outcomes.push({ asset: "agent", status: "failed", seconds: 0, error: e as Error });
    }
  }

  const total = ((performance.now() - started) / 1000).toFixed(1);
  const ci = requireAll();
  const optional = (o: StepOutcome) => !ci && STEPS.find((s) => s.asset === o.asset)?.optional === true;
  const failedRequired = outcomes.filter((o) => o.status === "failed" && !optional(o));
  const failedOptional = outcomes.filter((o) => o.status === "failed" && optional(o));
  for (const o of failedOptional) {
    log(
      `warning: ${o.asset} is unavailable (${
        o.error?.message.split("\n")[0]
      }); the libkrun backend will be reported by the doctor and skipped by tests`,
    );
  }
  log(`finished in ${total} s: ${outcomes.map((o) => `${o.asset} ${o.status}`).join(", ")}`);
  for (const o of failedRequired) {
    log(
      `FAILED: ${o.asset} could not be provisioned${ci ? " (required under CI)" : ""}: ${
        o.error?.message.split("\n")[0]
      }`,
    );
  }
  return failedRequired.length > 0 ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
