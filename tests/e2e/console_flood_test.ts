/**
 * A guest that floods its console cannot fill the host's disk: the runner
 * keeps at most two parts of `KRUNBOX_CONSOLE_MAX_BYTES` (console.log and
 * console.log.1), the newest bytes last, while the flood really reaches the
 * host (the positive control: the older part exists, holding the guest's
 * bytes). The attacker is the guest's root: `cat /dev/zero > /dev/console`.
 */

import { sandboxDir, skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { ExecTimeoutError, Sandbox } from "../../mod.ts";
import { logTail } from "../../src/util/logs.ts";

const ignore = skipVmReason !== undefined;
const CAP = 1 << 20;

Deno.test({ name: "console flood: the host keeps two capped parts, the newest last", ignore }, async () => {
  Deno.env.set("KRUNBOX_CONSOLE_MAX_BYTES", String(CAP));
  try {
    await using sb = await Sandbox.builder("flood").image(await busyboxRoot()).memory(256).create();
    const log = `${sandboxDir("flood")}/console.log`;
    // As much as the guest can write in 8 s, then a marker after the flood.
    await assertRejects(
      () => sb.execWith("sh", { args: ["-c", "cat /dev/zero > /dev/console"], timeout: 8000 }),
      ExecTimeoutError,
    );
    await sb.shell("for i in 1 2 3; do echo flood-over-$i > /dev/console; done");
    let tail = "";
    for (let i = 0; i < 50 && !tail.includes("flood-over-3"); i++) {
      await new Promise((r) => setTimeout(r, 100));
      tail = await logTail(log, 3);
    }
    assert(tail.includes("flood-over-3"), `the newest console bytes are kept last: ${JSON.stringify(tail)}`);
    const current = (await Deno.stat(log)).size;
    const older = await Deno.stat(`${log}.1`);
    assert(older.size > CAP / 2, `the flood reached the host and was rotated (older part ${older.size} bytes)`);
    assert(current <= CAP + 64 * 1024, `console.log holds ${current} bytes, over its cap`);
    assert(older.size <= CAP + 64 * 1024, `console.log.1 holds ${older.size} bytes, over its cap`);
    const zeros = await Deno.open(`${log}.1`).then(async (f) => {
      const b = new Uint8Array(4096);
      await f.read(b);
      f.close();
      return b.every((x) => x === 0);
    });
    assertEquals(zeros, true, "the older part holds the guest's flood");
    assertEquals((await sb.exec("echo", ["still-up"])).stdout, "still-up\n", "the sandbox is unharmed");
  } finally {
    Deno.env.delete("KRUNBOX_CONSOLE_MAX_BYTES");
    await Sandbox.remove("flood").catch(() => {});
  }
});

Deno.test("logTail reads only the end of a long log", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/big.log`;
    const line = "y".repeat(99) + "\n";
    await Deno.writeTextFile(path, line.repeat(200_000) + "last-1\nlast-2\n");
    assertEquals(await logTail(path, 2), "last-1\nlast-2");
    assertEquals((await logTail(path, 3)).split("\n")[0], "y".repeat(99), "whole lines only");
    assertEquals(await logTail(`${dir}/missing.log`), "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
