/**
 * A runner a guest may own can write its sandbox directory (DESIGN.md
 * "Containment"); the host, later, writes and reads there. The test is that
 * runner: with the sandbox stopped, it plants links in the directory to
 * canary files outside (`vm.json`, `runner.log`, `console.log`,
 * `status.json`, `upper.ext4`), then drives the host's operations — start
 * (`Sandbox.start`), `inspect`/`ls` (`Sandbox.get`, `Sandbox.list`),
 * `krunbox logs`, stop — and checks on the host that every canary is
 * unchanged (content and mode) while the host's own writes land on plain
 * files (the positive controls: `vm.json` holds the spec, `runner.log` the
 * runner's lines, the sandbox runs). An upper disk that is a link is
 * refused typed (a VMM would open its target read-write as a disk); the
 * real one put back, the sandbox starts. One real qemu VM.
 */

import { join } from "node:path";
import { leftovers, sandboxDir, skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { Sandbox, StateError } from "../../mod.ts";

const ignore = skipVmReason !== undefined;
const root = ignore ? "" : await busyboxRoot();
const cli = new URL("../../cli.ts", import.meta.url).pathname;
const NAME = "planted";

/** `krunbox logs NAME`: its exit code, stdout and stderr. */
async function cliLogs(): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, "logs", NAME],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test(
  { name: "links a runner planted in its sandbox directory are never written or read through", ignore },
  async () => {
    const outside = await Deno.makeTempDir({ prefix: "krunbox-canaries-" });
    const dir = sandboxDir(NAME);
    const names = ["vm.json", "runner.log", "console.log", "status.json"];
    const canary = (n: string) => join(outside, `canary-${n}`);
    const canaryText = (n: string) =>
      n === "status.json"
        ? JSON.stringify({ name: NAME, status: "draining", stopReason: "FORGED", detached: true, bootMs: 1 })
        : `CANARY ${n}\n`;
    try {
      const sb = await Sandbox.builder(NAME).image(root).memory(256).create();
      assertEquals((await sb.exec("echo", ["hi"])).stdout, "hi\n");
      await sb.stopAndWait();
      // Positive control for the logs: the console and runner logs are printed.
      const before = await cliLogs();
      assertEquals(before.code, 0, before.stderr);
      assert(before.stdout.includes("ready:"), "krunbox logs prints the runner log");

      // The attacker's move, with the runner gone: every file the host touches becomes a link to a canary.
      for (const n of names) {
        await Deno.writeTextFile(canary(n), canaryText(n));
        await Deno.chmod(canary(n), 0o644);
        await Deno.remove(join(dir, n)).catch(() => {});
        await Deno.symlink(canary(n), join(dir, n));
      }
      // inspect/ls while links are there: a linked status.json is not believed (the row stays as it was).
      assertEquals((await Sandbox.get(NAME)).status, "stopped");
      assertEquals((await Sandbox.list()).find((h) => h.name === NAME)?.stopReason !== "FORGED", true);
      // logs: a linked log is not read (its canary's text never printed): refused, typed, naming the link.
      const linked = await cliLogs();
      assert(!linked.stdout.includes("CANARY") && !linked.stderr.includes("CANARY"), "logs reads no link's target");
      assert(linked.code !== 0 && linked.stderr.includes("without following a link"), linked.stderr);

      const again = await Sandbox.start(NAME);
      try {
        assertEquals((await again.exec("echo", ["again"])).stdout, "again\n");
        // Positive controls: the host's writes landed on plain files in the directory.
        const spec = JSON.parse(await Deno.readTextFile(join(dir, "vm.json")));
        assertEquals(spec.name, NAME);
        for (const n of names) {
          const st = await Deno.lstat(join(dir, n));
          if (n === "status.json" && !st.isSymlink) assert(st.isFile, n);
          else assert(!st.isSymlink && st.isFile, `${n} is a plain file again`);
        }
        assert((await Deno.readTextFile(join(dir, "runner.log"))).includes("ready:"), "the runner's log landed");
        assertEquals((await Sandbox.get(NAME)).status, "running");
      } finally {
        await again.stopAndWait();
      }
      assertEquals((await Sandbox.get(NAME)).status, "stopped");
      for (const n of names) {
        assertEquals(await Deno.readTextFile(canary(n)), canaryText(n), `canary of ${n} unchanged`);
        assertEquals((await Deno.stat(canary(n))).mode! & 0o7777, 0o644, `canary of ${n} keeps its mode`);
      }

      // The upper disk as a link: refused before any VMM opens it (as the host, read-write, as a disk).
      const upper = join(dir, "upper.ext4");
      assert((await Deno.lstat(upper)).isFile, "a read-only directory root has its own upper disk");
      const disk = canary("upper.ext4");
      await Deno.writeTextFile(disk, "CANARY DISK");
      await Deno.rename(upper, join(outside, "real-upper.ext4"));
      await Deno.symlink(disk, upper);
      await assertRejects(() => Sandbox.start(NAME), StateError);
      assertEquals(await Deno.readTextFile(disk), "CANARY DISK");
      // Positive control: the real disk back, it starts.
      await Deno.remove(upper);
      await Deno.rename(join(outside, "real-upper.ext4"), upper);
      const third = await Sandbox.start(NAME);
      assertEquals((await third.exec("echo", ["third"])).stdout, "third\n");
      await third.stopAndWait();
      assertEquals(await leftovers(NAME), []);
    } finally {
      await Sandbox.remove(NAME).catch(() => {});
      await Deno.remove(outside, { recursive: true });
    }
  },
);
