/**
 * The share filter (src/vmm/seccomp.ts) in a real kernel: a child process
 * installs it and then tries what a hostile guest would ask its file server
 * for; the same attempts made by this (unfiltered) test process are the
 * positive control — they succeed, so a refusal is the filter's doing.
 */

import { join } from "node:path";
import { assert, assertEquals } from "../util/assert.ts";
import { shareFilter } from "../../src/vmm/seccomp.ts";

/** Each attempt as `name mode-or-kind`, run through coreutils so a child inherits the filter. */
const ATTEMPTS = [
  ["chmod 4755 f", ["chmod", "4755", "f"]],
  ["chmod 2755 f", ["chmod", "2755", "f"]],
  ["chmod u+s f", ["chmod", "u+s", "f"]],
  ["mknod c 1 3", ["mknod", "chr", "c", "1", "3"]],
  ["mknod c 0 0 (whiteout)", ["mknod", "wh", "c", "0", "0"]],
  ["mknod b 7 0", ["mknod", "blk", "b", "7", "0"]],
  ["install -m 4755 (create with setuid)", ["install", "-m", "4755", "/dev/null", "suid"]],
  ["chmod 0755 f", ["chmod", "0755", "f"]],
  ["chmod 1777 f (sticky)", ["chmod", "1777", "f"]],
  ["mkfifo", ["mknod", "fifo", "p"]],
  ["touch", ["touch", "plain"]],
] as const;
const MUST_WORK = new Set(["chmod 0755 f", "chmod 1777 f (sticky)", "mkfifo", "touch"]);

const CHILD = `
import { installShareFilter } from ${JSON.stringify(new URL("../../src/vmm/seccomp.ts", import.meta.url).href)};
installShareFilter();
const [dir, ...argv] = Deno.args;
const out = await new Deno.Command(argv[0], { args: argv.slice(1), cwd: dir, stderr: "piped" }).output();
console.log(JSON.stringify({ code: out.code, stderr: new TextDecoder().decode(out.stderr) }));
`;

async function attempt(dir: string, argv: readonly string[], filtered: boolean): Promise<number> {
  await Deno.writeTextFile(join(dir, "f"), "x");
  await Deno.chmod(join(dir, "f"), 0o644);
  if (!filtered) {
    return (await new Deno.Command(argv[0], { args: argv.slice(1), cwd: dir, stderr: "null" }).output()).code;
  }
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", CHILD, dir, ...argv],
    stderr: "inherit",
  }).output();
  assert(out.success, "the filtered child ran");
  return JSON.parse(new TextDecoder().decode(out.stdout)).code;
}

Deno.test("share filter: no setuid/setgid modes, no device nodes; ordinary modes, fifos and files still work", async () => {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-seccomp-" });
  try {
    for (const [name, argv] of ATTEMPTS) {
      // Only root can make a device node at all: elsewhere there is no positive control.
      if (argv[0] === "mknod" && argv[2] !== "p" && Deno.uid() !== 0) continue;
      const control = await Deno.makeTempDir({ dir });
      assertEquals(await attempt(control, argv, false), 0, `${name}: works without the filter (positive control)`);
      const filtered = await Deno.makeTempDir({ dir });
      const code = await attempt(filtered, argv, true);
      if (MUST_WORK.has(name)) {
        assertEquals(code, 0, `${name}: still works under the filter`);
      } else {
        assert(code !== 0, `${name}: refused under the filter`);
        for (const e of Deno.readDirSync(filtered)) {
          const st = Deno.lstatSync(join(filtered, e.name));
          assert(!st.isCharDevice && !st.isBlockDevice, `${name}: no device node ${e.name}`);
          assertEquals((st.mode ?? 0) & 0o6000, 0, `${name}: ${e.name} has no setuid/setgid bit`);
        }
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("share filter: a well-formed program (every jump inside it, ends in a return)", () => {
  const prog = shareFilter();
  const view = new DataView(prog.buffer);
  const n = prog.length / 8;
  assert(prog.length % 8 === 0 && n > 10 && n < 4096);
  for (let i = 0; i < n; i++) {
    const code = view.getUint16(i * 8, true);
    if ((code & 0x07) === 0x05) {
      assert(i + 1 + view.getUint8(i * 8 + 2) < n && i + 1 + view.getUint8(i * 8 + 3) < n, `jump ${i} stays inside`);
    }
  }
  assertEquals(view.getUint16((n - 1) * 8, true), 0x06, "ends in a return");
});
