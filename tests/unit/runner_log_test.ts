/**
 * runner.log is bounded like console.log, whoever writes it: a real helper
 * started through ChildGroup (as qemu, virtiofsd and netd are) flooding its
 * stderr, and the runner's own fd 2 (Deno's messages, libkrun's in-process
 * logging, a crash's last words). Checked on the host: each part stays
 * within the cap, the older part holds the flood (the positive control: the
 * bytes really arrived and rotated), and what was written after the flood
 * is what logTail returns last.
 */

import { assert, assertEquals } from "../util/assert.ts";
import { ChildGroup } from "../../src/vmm/children.ts";
import { RunnerLog } from "../../src/vmm/runner_log.ts";
import { BoundedLog } from "../../src/util/bounded_log.ts";
import { logTail } from "../../src/util/logs.ts";
import { DEFAULTS } from "../../src/settings.ts";

const CAP = 256 * 1024;
const FLOOD = 4 << 20;

async function sizes(path: string): Promise<{ current: number; older: number }> {
  return { current: (await Deno.stat(path)).size, older: (await Deno.stat(`${path}.1`)).size };
}

async function startsWith(path: string, byte: string): Promise<boolean> {
  using f = await Deno.open(path);
  const b = new Uint8Array(4096);
  const n = (await f.read(b)) ?? 0;
  return n > 0 && b.subarray(0, n).every((x) => x === byte.charCodeAt(0) || x === 10);
}

Deno.test("runner.log: a helper's 4 MiB stderr flood through ChildGroup keeps two capped parts, the newest last", async () => {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-runner-log-" });
  const path = `${dir}/runner.log`;
  try {
    {
      await using log = await RunnerLog.open(path, CAP);
      log.line("before the flood");
      using children = new ChildGroup("qemu", log);
      const flood =
        `head -c ${FLOOD} /dev/zero | tr '\\0' x >&2; echo >&2; for i in 1 2 3; do echo after-flood-$i >&2; done`;
      const child = children.spawn("sh", ["-c", flood]);
      assertEquals((await child.status).code, 0);
      await children.exited();
      let tail = "";
      for (let i = 0; i < 100 && !tail.endsWith("after-flood-3"); i++) {
        await log.flush(1000);
        tail = await logTail(path, 3);
        if (!tail.endsWith("after-flood-3")) await new Promise((r) => setTimeout(r, 50));
      }
      log.line("runner-marker");
      assert(await log.flush(5000), "the queue drains");
    }
    const { current, older } = await sizes(path);
    assert(current <= CAP, `runner.log holds ${current} bytes, over the ${CAP} cap`);
    assert(older <= CAP, `runner.log.1 holds ${older} bytes, over the ${CAP} cap`);
    assert(older > CAP / 2, `the flood reached the log and rotated (runner.log.1: ${older} bytes)`);
    assert(await startsWith(`${path}.1`, "x"), "the older part holds the helper's flood");
    const tail = (await logTail(path, 4)).split("\n");
    assertEquals(tail.slice(0, 3), ["after-flood-1", "after-flood-2", "after-flood-3"]);
    assert(/^\d{4}-\d\d-\d\dT\S+ runner-marker$/.test(tail[3]), `the runner's own line comes last: ${tail[3]}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runner.log: the runner's own fd 2 flood (a native writer) is capped, and a crash's last words are kept last", async () => {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-runner-fd2-" });
  const path = `${dir}/runner.log`;
  try {
    const fixture = new URL("./fixtures/runner_log/stderr_flood.ts", import.meta.url).pathname;
    // fd 2 starts where the starter's `exec 2>>runner.log` points it: the log file itself.
    const start = await Deno.open(path, { append: true, create: true, mode: 0o600 });
    start.close();
    const out = await new Deno.Command("bash", {
      args: [
        "-c",
        'exec 2>>"$0"; exec "$@"',
        path,
        Deno.execPath(),
        "run",
        "-A",
        fixture,
        path,
        String(CAP),
        String(FLOOD),
      ],
      stdout: "null",
      stderr: "null",
    }).output();
    assertEquals(out.code, 1, "the process died of its uncaught error");
    const { current, older } = await sizes(path);
    assert(current <= CAP, `runner.log holds ${current} bytes, over the ${CAP} cap`);
    assert(older <= CAP, `runner.log.1 holds ${older} bytes, over the ${CAP} cap`);
    assert(older > CAP / 2, `the fd 2 flood reached the log and rotated (runner.log.1: ${older} bytes)`);
    assert(await startsWith(`${path}.1`, "y"), "the older part holds the flood");
    const tail = await logTail(path, 20);
    const after = tail.indexOf("after-flood-1");
    const crash = tail.indexOf("last-words of a crash");
    assert(after >= 0 && crash > after, `the runtime's message, then the crash's last words, come last:\n${tail}`);
    assert(!tail.slice(after).includes("yyyy"), "nothing of the flood follows them");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("BoundedLog: writers that share a log share its size count; a long log found at open is cut to the cap", async () => {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-bounded-log-" });
  const path = `${dir}/a.log`;
  try {
    await Deno.writeTextFile(path, "z".repeat(10 * 8192));
    {
      await using log = await BoundedLog.open(path, 8192);
      const line = (w: string, i: number) => `${w}-${i}-${"-".repeat(40)}\n`;
      let written = 0;
      await Promise.all(["a", "b", "c"].map(async (w) => {
        for (let i = 0; i < 200; i++) {
          written += line(w, i).length;
          await log.write(line(w, i));
        }
      }));
      assertEquals(log.totalBytes, written, "every byte went through the one queue");
    }
    const { current, older } = await sizes(path);
    assert(current <= 8192 && older <= 8192, `parts ${current} and ${older} bytes`);
    assert(!(await Deno.readTextFile(`${path}.1`)).includes("z"), "the old long log rotated away");
    assertEquals((await logTail(path, 3)).split("\n").map((l) => l.split("-").slice(0, 2).join("-")), [
      "a-199",
      "b-199",
      "c-199",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("BoundedLog: a log whose file never takes its bytes does not hold its closer past the flush bound", async () => {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-bounded-stuck-" });
  const path = `${dir}/stuck.log`;
  try {
    // A FIFO nobody reads: once its 64 KiB buffer is full, every write waits forever (a disk that stopped).
    const mk = await new Deno.Command("mkfifo", { args: ["-m", "600", path] }).output();
    assert(mk.success, "mkfifo");
    const holder = await Deno.open(path, { read: true, write: true });
    const log = await BoundedLog.open(path, 64 << 20);
    const chunk = new Uint8Array(256 * 1024);
    const writes = [log.write(chunk), log.write(chunk)];
    const stuck = await log.flush(200);
    assertEquals(stuck, false, "the writes are stuck (the control: a flush cannot finish)");
    const t0 = performance.now();
    await log[Symbol.asyncDispose]();
    const ms = performance.now() - t0;
    assert(
      ms < DEFAULTS.logFlushMs + 500,
      `disposal took ${ms.toFixed(0)} ms, past its ${DEFAULTS.logFlushMs} ms bound`,
    );
    holder.close(); // the stuck write fails (no reader left), so nothing stays pending
    await Promise.all(writes);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
