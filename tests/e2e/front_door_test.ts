/**
 * The native `krunbox` front door (agent/src/bin/krunbox/) against a real
 * qemu VM, side by side with the Deno CLI: every case runs both as processes
 * and checks that they give the same exit code, stdout and stderr (output
 * and codes of the exec path, the errors of a handed-over command). A copy
 * whose `krunbox.json` names `false` as its Deno proves which cases the
 * front door runs itself (they still work) and which it hands over (they
 * fail as `false` does). Signals reach the guest process; output far past
 * the agent's window arrives whole.
 */

import { join } from "node:path";
import { skipVmReason, testHome } from "../util/e2e.ts";
import { assert, assertEquals } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { Sandbox } from "../../mod.ts";
import { installFrontDoor } from "../../src/host/provision/front_door.ts";

const ignore = skipVmReason !== undefined;
const cli = new URL("../../cli.ts", import.meta.url).pathname;
const NAME = "front-door";
const env = { KRUNBOX_HOME: testHome, KRUNBOX_BACKEND: "qemu", NO_COLOR: "1" };

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: string[], before: string[] = []): Promise<Run> {
  const out = await new Deno.Command(cmd, {
    args: [...before, ...args],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

const deno = (args: string[]) => run(Deno.execPath(), args, ["run", "-A", cli]);

Deno.test({
  name: "front door: exec runs natively with the Deno CLI's output and codes; the rest is handed over",
  ignore,
}, async (t) => {
  const door = await installFrontDoor(testHome);
  // A second copy whose Deno is `false`: what it hands over fails with 1, what it runs itself still works.
  const cut = await Deno.makeTempDir({ prefix: "krunbox-front-door-" });
  const cutDoor = join(cut, "krunbox");
  await Deno.copyFile(door, cutDoor);
  await Deno.chmod(cutDoor, 0o755);
  await Deno.writeTextFile(join(cut, "krunbox.json"), JSON.stringify({ deno: "/bin/false", cli, version: "9.9.9" }));
  await using _sb = await Sandbox.builder(NAME).image(await busyboxRoot()).memory(256).workdir("/tmp").user(65534)
    .env("GREETING", "hello").replace().create();

  const same = async (args: string[], want?: Partial<Run>) => {
    const [native, reference] = await Promise.all([run(door, args), deno(args)]);
    assertEquals(native, reference, `krunbox ${args.join(" ")}: front door vs Deno CLI`);
    if (want?.code !== undefined) assertEquals(native.code, want.code, native.stderr);
    if (want?.stdout !== undefined) assertEquals(native.stdout, want.stdout);
    if (want?.stderr !== undefined) assertEquals(native.stderr, want.stderr);
    return native;
  };

  await t.step("exit code, stdout and stderr apart, the sandbox's env", async () => {
    await same(["exec", NAME, "sh", "-c", 'echo "$GREETING out"; echo err >&2; exit 3'], {
      code: 3,
      stdout: "hello out\n",
      stderr: "err\n",
    });
  });
  await t.step("the sandbox's workdir and user are the defaults; -w, -u and -e override them", async () => {
    await same(["exec", NAME, "sh", "-c", "pwd; id -u"], { code: 0, stdout: "/tmp\n65534\n" });
    await same(
      ["exec", "-e", "A=1", "--env=B=2", "-w", "/", "-u", "0", NAME, "sh", "-c", "echo $A $B $(pwd) $(id -u)"],
      {
        code: 0,
        stdout: "1 2 / 0\n",
      },
    );
    await same(["exec", "-uroot", NAME, "--", "id", "-u"], { code: 0, stdout: "0\n" });
  });
  await t.step("a missing program is 127, a non-executable one 126, a signal 128+n", async () => {
    const nf = await same(["exec", NAME, "no-such-program"], { code: 127 });
    assertEquals(nf.stderr, 'krunbox: cannot start "no-such-program": not found (ENOENT)\n');
    await same(["exec", "-u", "0", NAME, "/etc/hostname"], { code: 126 });
    await same(["exec", NAME, "sh", "-c", "kill -9 $$"], { code: 137, stdout: "" });
  });
  await t.step("output far past the agent's window arrives whole", async () => {
    const r = await run(door, ["exec", NAME, "sh", "-c", "head -c 9000000 /dev/zero; echo done >&2"]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.stdout.length, 9_000_000);
    assertEquals(r.stderr, "done\n");
  });
  await t.step("handed over: errors, usage, --help and a sandbox that is not there", async () => {
    await same(["exec", "no-such-sandbox", "true"], { code: 125 });
    await same(["exec", NAME], { code: 125 });
    await same(["exec", "--bogus", NAME, "true"], { code: 125 });
    await same(["exec", "--help"], { code: 0 });
    await same(["ls", "--json"], { code: 0 });
    await same(["--version"], { code: 0 });
  });
  await t.step("which cases the front door runs itself: a copy that cannot hand over", async () => {
    const own = await run(cutDoor, ["exec", NAME, "sh", "-c", "echo native; exit 4"]);
    assertEquals([own.code, own.stdout], [4, "native\n"], own.stderr);
    assertEquals((await run(cutDoor, ["--version"])).stdout, "krunbox 9.9.9\n");
    for (const args of [["ls"], ["exec", "-it", NAME, "true"], ["exec", "no-such-sandbox", "true"]]) {
      const r = await run(cutDoor, args);
      assertEquals(r.code, 1, `${args.join(" ")} is handed over (to false): ${r.stderr}`);
    }
    await Deno.remove(join(cut, "krunbox.json"));
    const none = await run(cutDoor, ["ls"]);
    assertEquals(none.code, 125);
    assert(none.stderr.includes("run `deno run -A jsr:@krunbox/krunbox/setup`"), none.stderr);
    await Deno.remove(cut, { recursive: true });
  });
  await t.step("SIGTERM to the front door reaches the guest process, whose exit code comes back", async () => {
    const child = new Deno.Command(door, {
      args: ["exec", NAME, "sh", "-c", 'trap "echo got TERM; exit 7" TERM; echo ready; while :; do sleep 0.1; done'],
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    while (!seen.includes("ready\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += value;
    }
    assertEquals(seen, "ready\n");
    child.kill("SIGTERM");
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += value;
    }
    const status = await child.status;
    await child.stderr.cancel();
    assertEquals([status.code, seen], [7, "ready\ngot TERM\n"]);
  });
});
