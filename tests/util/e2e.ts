/**
 * Shared setup of the end-to-end tests: an isolated state home per test run
 * (its own database and sandboxes; the provisioned assets and cached roots
 * linked from the real home), the prerequisites check that decides whether
 * VM tests run (skipped with the reason printed when they cannot; under CI
 * a failure), and process
 * accounting to prove nothing is left behind.
 *
 * @module
 */

import { join } from "node:path";
import { homeLayout } from "../../src/store/home.ts";
import { qemuChecks } from "../../src/vmm/prereqs.ts";
import { need } from "./require.ts";
import { parentPid as procParentPid } from "../../src/util/proc.ts";

const realHome = homeLayout();
/**
 * The directory a path names, links resolved: each test module of a run
 * evaluates this file anew while KRUNBOX_HOME already names the previous
 * module's test home, so linking to the path as given made a chain of links
 * one longer per module, until exec failed with ELOOP (40 links).
 */
function resolved(path: string): string {
  try {
    return Deno.realPathSync(path);
  } catch {
    return path; // not there yet (unprovisioned): the link says so when used
  }
}
/** The isolated state home of this test process. */
export const testHome = await Deno.makeTempDir({ prefix: "krunbox-e2e-home-" });
await Deno.symlink(resolved(realHome.assets), join(testHome, "assets"));
await Deno.mkdir(realHome.cache, { recursive: true });
await Deno.symlink(resolved(realHome.cache), join(testHome, "cache"));
Deno.env.set("KRUNBOX_HOME", testHome);
Deno.env.set("KRUNBOX_BACKEND", "qemu");

const failed = (await qemuChecks()).filter((c) => !c.ok);
/** Why VM tests cannot run here, or undefined when they can (under CI a missing part fails: ./require.ts). */
export const skipVmReason: string | undefined = need(
  "qemu",
  failed.length ? `qemu prerequisites missing: ${failed.map((c) => `${c.name} (${c.detail})`).join(", ")}` : undefined,
  "VM tests",
);

/** Pids of processes whose command line mentions `text` (runner, qemu, virtiofsd of a sandbox). */
export function processesMentioning(text: string): number[] {
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name) || Number(e.name) === Deno.pid) continue;
    try {
      const cmdline = Deno.readTextFileSync(`/proc/${e.name}/cmdline`);
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      if (cmdline.includes(text) && !/^\d+ \(.*\) Z/.test(stat)) pids.push(Number(e.name));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

// A failed test may leave a detached sandbox running: end them all with the test process.
globalThis.addEventListener("unload", () => {
  for (const pid of processesMentioning(testHome)) {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
});

/** The sandbox directory of a name in the test home. */
export function sandboxDir(name: string): string {
  return join(testHome, "sandboxes", name);
}

/** Waits until no process mentions the sandbox's directory; returns the leftovers. */
export async function leftovers(name: string, ms = 15_000): Promise<number[]> {
  const end = Date.now() + ms;
  let left = processesMentioning(sandboxDir(name));
  while (left.length > 0 && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    left = processesMentioning(sandboxDir(name));
  }
  return left;
}

/** A live process's parent pid (a sandbox's runner is its VMM's parent); throws for a process that is gone. */
export function parentPid(pid: number): number {
  const parent = procParentPid(pid);
  if (parent === undefined) throw new Error(`process ${pid} is gone`);
  return parent;
}
