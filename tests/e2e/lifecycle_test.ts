/**
 * The lifecycle across processes and time: detached sandboxes, reconnects,
 * stop/start with the root intact, crash detection, drain, host-enforced
 * timeouts, and racing creators.
 */

import { leftovers, processesMentioning, sandboxDir, skipVmReason, testHome } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { NotFoundError, NotRunningError, Sandbox, StillRunningError } from "../../mod.ts";

const ignore = skipVmReason !== undefined;
const root = ignore ? "" : await busyboxRoot();

/** A private, writable copy of the busybox root. */
async function privateRoot(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-root-" });
  await new Deno.Command("cp", { args: ["-a", `${root}/.`, dir] }).output();
  return dir;
}

async function runCreator(name: string, rootDir: string, mode: string): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./fixtures/creator.ts", import.meta.url).pathname, name, rootDir, mode],
    env: { KRUNBOX_HOME: testHome, KRUNBOX_BACKEND: "qemu" },
    stdout: "piped",
    stderr: "inherit",
  }).output();
  return new TextDecoder().decode(out.stdout).trim();
}

Deno.test(
  { name: "a detached sandbox outlives its creator and is reconnected from another process", ignore },
  async () => {
    assertEquals(await runCreator("det", root, "detached"), "created");
    const handle = await Sandbox.get("det");
    assertEquals(handle.status, "running");
    assertEquals(handle.config().memoryMib, 256);
    const sb = await handle.connect();
    assertEquals(sb.ownsLifecycle(), false);
    assertEquals((await sb.exec("echo", ["still here"])).stdout, "still here\n");
    const m = await handle.metrics();
    assert(m.memoryBytes > 0);
    await sb[Symbol.asyncDispose](); // a non-owner's dispose only disconnects
    assertEquals((await Sandbox.get("det")).status, "running");
    await assertRejects(() => Sandbox.remove("det"), StillRunningError);
    await assertRejects(() => Sandbox.start("det"), StillRunningError);
    await handle.stop();
    assertEquals((await Sandbox.get("det")).status, "stopped");
    assertEquals(await leftovers("det"), []);
    await Sandbox.remove("det");
    await assertRejects(() => Sandbox.get("det"), NotFoundError);
  },
);

Deno.test({ name: "detach() hands an attached sandbox over: it survives its creator", ignore }, async () => {
  assertEquals(await runCreator("handed", root, "detach-later"), "created");
  assertEquals((await Sandbox.get("handed")).status, "running");
  await (await Sandbox.get("handed")).kill();
  assertEquals(await leftovers("handed"), []);
  await Sandbox.remove("handed");
});

/** Resolves with `p`'s value, or with `undefined` when `ms` pass first. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([p, new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), ms))]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test(
  { name: "a creator's captured stdout and stderr close when it exits, while its detached sandbox runs on", ignore },
  async () => {
    // Control: a process that leaves a child holding its stderr is waited for by
    // `output()` as long as that child lives, so a leak below would show.
    const pidFile = await Deno.makeTempFile();
    const leaky = new Deno.Command("sh", {
      args: ["-c", `sleep 60 >/dev/null & echo $! > ${pidFile}`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(await within(leaky, 2000), undefined, "output() waits for the child that holds the stderr");
    Deno.kill(Number(await Deno.readTextFile(pidFile)), "SIGKILL");
    assert(await within(leaky, 10_000), "output() returns once that child is gone");
    await Deno.remove(pidFile);

    // The creator pipes both streams to us, holds one more copy of its stderr
    // on fd 12 without close-on-exec (as a caller's inherited descriptor would
    // be), and ends on its own (no Deno.exit); through createDetached() and
    // through create() + detach().
    const creatorTs = new URL("./fixtures/creator.ts", import.meta.url).pathname;
    for (const [name, mode] of [["freed", "detached"], ["freed-later", "detach-later"]]) {
      const creator = new Deno.Command("/bin/bash", {
        args: ["-c", 'exec "$@" 12>&2', "bash", Deno.execPath(), "run", "-A", creatorTs, name, root, mode, "return"],
        env: { KRUNBOX_HOME: testHome, KRUNBOX_BACKEND: "qemu" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      // Far above a boot; a leak would hold it until the sandbox stops, which nothing here does.
      const out = await within(creator, 150_000);
      assert(out, `${mode}: the creator's output stayed open after it created "${name}"`);
      assertEquals([new TextDecoder().decode(out.stdout).trim(), out.code], ["created", 0]);
      const handle = await Sandbox.get(name);
      assertEquals(handle.status, "running");
      const sb = await handle.connect();
      assertEquals((await sb.exec("echo", ["still here"])).stdout, "still here\n");
      await sb[Symbol.asyncDispose]();
      await handle.stop();
      assertEquals(await leftovers(name), []);
      await Sandbox.remove(name);
    }
  },
);

Deno.test({ name: "files written to the root survive stop and start", ignore }, async () => {
  const dir = await privateRoot();
  const sb = await Sandbox.builder("persist").image(dir).memory(256).create();
  await sb.fs().write("/root/note.txt", "kept");
  await sb.stopAndWait();
  const again = await Sandbox.start("persist");
  assertEquals(await again.fs().readText("/root/note.txt"), "kept");
  await again.stopAndWait();
  await Sandbox.remove("persist");
  await Deno.remove(dir, { recursive: true });
});

Deno.test({ name: "kill -9 of the runner is reported as crashed and leaves no VM", ignore }, async () => {
  const sb = await Sandbox.builder("crashy").image(root).memory(256).createDetached();
  const runner = processesMentioning(sandboxDir("crashy")).find((pid) =>
    Deno.readTextFileSync(`/proc/${pid}/cmdline`).includes("runner.ts")
  );
  assert(runner, "the runner is found");
  Deno.kill(runner, "SIGKILL");
  assertEquals(await leftovers("crashy"), []);
  // A killed process drops its lock a moment after its command line is gone.
  const deadline = Date.now() + 5000;
  while ((await Sandbox.get("crashy")).status !== "crashed" && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  assertEquals((await Sandbox.get("crashy")).status, "crashed");
  await assertRejects(() => sb.exec("true"), NotRunningError);
  await Sandbox.remove("crashy");
});

Deno.test({ name: "drain lets a running exec finish and refuses new ones", ignore }, async () => {
  const sb = await Sandbox.builder("drainer").image(root).memory(256).create();
  const long = sb.shell("sleep 3; echo finished");
  await new Promise((r) => setTimeout(r, 300));
  await sb.drain();
  assertEquals((await Sandbox.get("drainer")).status, "draining");
  await assertRejects(() => sb.exec("true"), NotRunningError);
  assertEquals((await long).stdout, "finished\n");
  const status = await sb.wait();
  assertEquals([status.status, status.reason], ["stopped", "drained"]);
  await Sandbox.remove("drainer");
  // With nothing running, drain answers and stops at once.
  const idle = await Sandbox.builder("drainer").image(root).memory(256).create();
  const t0 = performance.now();
  await idle.drain();
  const idleStatus = await idle.wait();
  assertEquals([idleStatus.status, idleStatus.reason], ["stopped", "drained"]);
  assert(performance.now() - t0 < 5000, "an idle drain stops without waiting");
  await Sandbox.remove("drainer");
});

Deno.test({
  name:
    "idle timeout and max duration stop the VM, a few seconds at most after the deadline (bench/vm_deadlines.ts measures how late)",
  ignore,
}, async () => {
  const idle = await Sandbox.builder("idle").image(root).memory(256).idleTimeout(2).create();
  await idle.exec("true");
  const lastCall = performance.now();
  const idleStatus = await idle.wait();
  const idleLate = performance.now() - lastCall - 2000;
  assertEquals(idleStatus.reason, "idle timeout");
  assert(idleLate < 10_000, `idle stop came ${idleLate.toFixed(0)} ms after the deadline`);
  // Idle time counts from the last call, never from the boot (a boot over 2 s once stopped it before its first exec).
  assert(idleLate > -750, `idle stop came ${(-idleLate).toFixed(0)} ms before the deadline`);

  const t0 = performance.now();
  const capped = await Sandbox.builder("capped").image(root).memory(256).maxDuration(4).create();
  const bootMs = performance.now() - t0;
  // A running exec does not hold off max duration.
  capped.shell("sleep 60").catch(() => {});
  const cappedStatus = await capped.wait();
  const cappedLate = performance.now() - t0 - 4000;
  assertEquals(cappedStatus.reason, "max duration reached");
  assert(cappedLate < 10_000 + bootMs, `max-duration stop came ${cappedLate.toFixed(0)} ms late`);
  await Sandbox.remove("idle");
  await Sandbox.remove("capped");
});

Deno.test({ name: "10 processes racing to create one name produce exactly one sandbox", ignore }, async () => {
  const results = await Promise.all(Array.from({ length: 10 }, () => runCreator("contested", root, "race")));
  assertEquals(results.filter((r) => r === "created").length, 1, results.join(","));
  assertEquals(results.filter((r) => r === "ALREADY_EXISTS").length, 9, results.join(","));
  assertEquals((await Sandbox.list()).filter((h) => h.name === "contested").length, 1);
  await (await Sandbox.get("contested")).kill();
  assertEquals(await leftovers("contested"), []);
  await Sandbox.remove("contested");
});
