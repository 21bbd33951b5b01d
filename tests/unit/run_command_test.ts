/**
 * runCommand with input on stdin: the output is read while the input is
 * written, and a child that rejects its input fails as itself.
 */

import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { CommandError, runCommand } from "../../src/util/command.ts";

Deno.test("a child that writes more than a pipe holds before reading its 14 MiB of input does not deadlock", async () => {
  const input = new Uint8Array(14 << 20);
  const out = await runCommand("sh", ["-c", "head -c 300000 /dev/zero >&2; wc -c"], { stdin: input });
  assertEquals([out.stdout.trim(), out.stderr.length], [String(input.length), 300000]);
});

Deno.test("a child that exits on bad input is a CommandError with its own exit code and words", async () => {
  const e = await assertRejects(
    () =>
      runCommand("sh", ["-c", "head -c 1 >/dev/null; echo 'bad header' >&2; exit 44"], {
        stdin: new Uint8Array(8 << 20),
      }),
    CommandError,
  );
  assert(e.exitCode === 44 && e.message.includes("bad header"), e.message);
  // A child that exits 0 without reading all its input did not do what it was given.
  const short = await assertRejects(
    () => runCommand("sh", ["-c", "head -c 1 >/dev/null"], { stdin: new Uint8Array(8 << 20) }),
    CommandError,
  );
  assert(short.message.includes("did not read all of its input"), short.message);
});
