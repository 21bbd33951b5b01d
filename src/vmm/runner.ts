/**
 * The runner: one process per sandbox that owns its VM (DESIGN.md,
 * "Processes"). Started by the library as
 * `deno run -A runner.ts <sandbox dir> attached|detached`.
 *
 * - Holds `runner.lock` for its whole life: readers that find the lock free
 *   and no terminal status know the sandbox crashed.
 * - Boots the VM through its backend, relays host clients on `agent.sock`,
 *   writes the status (running, draining, stopped, crashed) to the store.
 * - Tells its starter how boot went with one JSON line on stdout
 *   (`{"event":"ready",…}` or `{"event":"failed",…}`).
 * - Attached: EOF on stdin (the owner exited or dropped the sandbox, however
 *   it died) means orderly shutdown, then kill after a grace period.
 * - Enforces `maxDurationSecs` and `idleTimeoutSecs` host-side.
 *
 * @module
 */

import { BootTimeoutError, KrunboxError, VmCrashedError } from "../errors.ts";
import { Store, type StoredStatus } from "../store/db.ts";
import { homeLayout } from "../store/home.ts";
import { tryLock } from "../store/lock.ts";
import { sandboxPaths, type Vm, type VmSpec } from "./backend.ts";
import { qemuBackend } from "./qemu.ts";
import { Relay } from "./relay.ts";
import { logTail } from "../util/logs.ts";

/** Grace between the agent's shutdown request and killing the VMM. */
const STOP_GRACE_MS = 5000;

/** The lines a runner prints on stdout for its starter. */
export type RunnerEvent =
  | { event: "ready"; bootMs: number; boot: Record<string, number>; vmmPid: number }
  | { event: "failed"; code: string; message: string };

function emit(e: RunnerEvent) {
  try {
    Deno.stdout.writeSync(new TextEncoder().encode(JSON.stringify(e) + "\n"));
  } catch {
    // the starter is gone: nobody to tell
  }
}

async function main(dir: string, mode: string): Promise<number> {
  const paths = sandboxPaths(dir);
  const lock = tryLock(paths.runnerLock, true);
  if (!lock) {
    emit({ event: "failed", code: "STILL_RUNNING", message: `a runner already owns ${dir}` });
    return 3;
  }
  const spec = JSON.parse(await Deno.readTextFile(paths.vmSpec)) as VmSpec;
  const store = Store.open(homeLayout().db);
  let attached = mode === "attached";
  let status: StoredStatus = "creating";
  let stopReason: string | null = null;
  let orderly = false;
  const setStatus = (s: StoredStatus, reason?: string) => {
    status = s;
    if (reason !== undefined) stopReason = reason;
    store.update(spec.name, { status: s, stopReason, detached: !attached });
  };
  const log = (m: string) =>
    Deno.writeTextFileSync(paths.runnerLog, `${new Date().toISOString()} ${m}\n`, { append: true });

  const abort = new AbortController();
  let vm: Vm;
  try {
    const backend = spec.backend === "qemu" ? qemuBackend : (await import("./libkrun.ts")).libkrunBackend;
    vm = await backend.boot(spec, abort.signal);
  } catch (e) {
    const err = e instanceof KrunboxError
      ? e
      : new KrunboxError("BACKEND_UNAVAILABLE", String((e as Error).message ?? e));
    emit({ event: "failed", code: err.code, message: err.message });
    setStatus("crashed", `boot failed: ${err.message}`);
    log(`boot failed: ${err.message}`);
    return 1;
  }

  // The terminal status is written before any client hears that the VM is gone.
  const timers: ReturnType<typeof setTimeout>[] = [];
  const finished = vm.exited.then(async (exit) => {
    for (const t of timers) clearTimeout(t);
    await Deno.remove(paths.agentSocket).catch(() => {});
    if (orderly) setStatus("stopped", stopReason ?? "stopped");
    else setStatus("crashed", `the VM exited unexpectedly (code ${exit.code}, signal ${exit.signal})`);
    log(`exited: ${status} (${stopReason})`);
  });

  /** Marks an orderly end; an in-process VMM ends this process with the guest, so its status cannot wait. */
  const beginEnd = (reason: string, verb: string) => {
    orderly = true;
    stopReason = reason;
    log(`${verb}: ${reason}`);
    if (vm.inProcess) setStatus("stopped", reason);
  };
  const stop = async (reason: string, graceMs = STOP_GRACE_MS) => {
    if (orderly) return;
    beginEnd(reason, "stopping");
    relay.requestGuest("shutdown", { graceMs: Math.min(graceMs, 2000) }).catch(() => {});
    const timer = setTimeout(() => {
      log("the guest did not power off in time: killing the VMM");
      vm.kill();
    }, graceMs);
    await vm.exited;
    clearTimeout(timer);
  };
  const kill = async (reason: string) => {
    beginEnd(reason, "killing");
    if (vm.inProcess) await relay.closeClients();
    vm.kill();
  };

  const relay: Relay = new Relay(vm.agent, async (method, params) => {
    switch (method) {
      case "runner.info":
        return { status, vmmPid: vm.vmmPid, backend: spec.backend, attached, runningExecs: relay.runningExecs };
      case "runner.stop":
        await stop("stopped by request", typeof params.graceMs === "number" ? params.graceMs : STOP_GRACE_MS);
        await finished;
        return { status };
      case "runner.kill":
        await kill("killed by request");
        await finished;
        return { status };
      case "runner.drain":
        relay.startDraining();
        setStatus("draining", "drained");
        relay.execsDone().then(() => stop("drained"));
        return { status: "draining" };
      case "runner.detach":
        attached = false;
        store.update(spec.name, { detached: true });
        return { detached: true };
      default:
        throw new Error(`unknown runner method ${method}`);
    }
  });

  await Deno.remove(paths.agentSocket).catch(() => {});
  const listener = Deno.listen({ transport: "unix", path: paths.agentSocket });

  const bootTimer = setTimeout(() => abort.abort(), spec.bootTimeoutMs);
  const ready = await Promise.race([
    relay.ready.then((f) => f.header.params as { boot: Record<string, number> }),
    vm.exited.then(() => undefined),
    new Promise<undefined>((r) => abort.signal.addEventListener("abort", () => r(undefined))),
  ]);
  clearTimeout(bootTimer);
  if (!ready) {
    vm.kill();
    await vm.exited;
    const tail = await logTail(paths.consoleLog);
    const err = abort.signal.aborted
      ? new BootTimeoutError(spec.name, spec.bootTimeoutMs, tail)
      : new VmCrashedError(spec.name, tail);
    emit({ event: "failed", code: err.code, message: err.message });
    setStatus("crashed", `boot failed: ${err.code}`);
    listener.close();
    return 1;
  }
  await vm.booted?.();
  const bootMs = ready.boot.readyMs ?? 0;
  store.update(spec.name, { bootMs });
  log(`ready: kernel ${ready.boot.kernelMs} ms, agent start ${ready.boot.agentStartMs} ms, ready ${bootMs} ms`);
  setStatus("running");
  relay.serve(listener);
  emit({ event: "ready", bootMs, boot: ready.boot, vmmPid: vm.vmmPid });

  // Attached: the owner holds our stdin; EOF means it is gone.
  if (attached) {
    (async () => {
      const buf = new Uint8Array(64);
      try {
        while ((await Deno.stdin.read(buf)) !== null) { /* owner alive */ }
      } catch {
        // treated as EOF
      }
      if (attached) await stop("the owner exited");
    })();
  }
  if (spec.maxDurationSecs) {
    timers.push(setTimeout(() => stop("max duration reached"), spec.maxDurationSecs * 1000));
  }
  if (spec.idleTimeoutSecs) {
    const idleMs = spec.idleTimeoutSecs * 1000;
    timers.push(setInterval(() => {
      if (relay.idleMs >= idleMs) stop("idle timeout");
    }, 100));
  }
  for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    Deno.addSignalListener(sig, () => stop(`runner got ${sig}`));
  }

  await finished;
  // Let a runner.stop/kill reply reach its caller before the connections close.
  await new Promise((r) => setTimeout(r, 0));
  await relay.closeClients();
  listener.close();
  store.close();
  lock.release();
  return 0;
}

if (import.meta.main) {
  const [dir, mode] = Deno.args;
  if (!dir || (mode !== "attached" && mode !== "detached")) {
    console.error("usage: runner.ts <sandbox dir> attached|detached");
    Deno.exit(2);
  }
  Deno.exit(await main(dir, mode));
}
