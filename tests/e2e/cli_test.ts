/**
 * The CLI as a person meets it: every command spawned as a process (`deno
 * run -A cli.ts …`) with its exit code and output checked (`--json` parsed),
 * against real qemu VMs and a real registry (pull, images, rmi, prune), the
 * streaming commands (`logs -f`, `metrics --watch`) read while they run and
 * seen to end with the sandbox; and the interactive path driven through a real
 * terminal (tmux): typing, a resize seen by `stty size` in the guest, Ctrl-C
 * of a `sleep`, the guest shell's exit code, and the local terminal restored.
 */

import { join } from "node:path";
import { skipVmReason, testHome } from "../util/e2e.ts";
import { assert, assertEquals, assertMatch } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { LocalRegistry, missingRegistryTools, pushImage } from "../util/registry.ts";
import { skipped } from "../util/require.ts";

const ignore = skipVmReason !== undefined;
const root = ignore ? "" : await busyboxRoot();
const cli = new URL("../../cli.ts", import.meta.url).pathname;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** `krunbox ARGS…` as a process of the Deno CLI, on the test home. */
function krunboxCommand(args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, ...args],
    env: { KRUNBOX_HOME: testHome, KRUNBOX_BACKEND: "qemu", NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

async function krunbox(...args: string[]): Promise<Run> {
  const out = await krunboxCommand(args).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("cli: --help lists every command, --version, help on each command, usage errors exit 125", async () => {
  const help = await krunbox("--help");
  assertEquals(help.code, 0);
  const commands = [
    "run",
    "create",
    "start",
    "stop",
    "rm",
    "ls",
    "exec",
    "shell",
    "logs",
    "inspect",
    "metrics",
    "pull",
    "images",
    "rmi",
    "prune",
    "doctor",
    "setup",
  ];
  for (const c of commands) assertMatch(help.stdout, new RegExp(`^  ${c} `, "m"));
  const version = await krunbox("--version");
  assertEquals(version.code, 0);
  const { version: v } = JSON.parse(await Deno.readTextFile(new URL("../../deno.json", import.meta.url)));
  assertEquals(version.stdout.trim(), `krunbox ${v}`);
  for (const c of [...commands, "ps"]) {
    const r = await krunbox(c, "--help");
    assertEquals(r.code, 0, `${c} --help: ${r.stderr}`);
    assertMatch(r.stdout, /^usage: krunbox /);
  }
  const bogus = await krunbox("ls", "--bogus");
  assertEquals(bogus.code, 125);
  assertEquals(bogus.stderr.trim().split("\n").length, 1, bogus.stderr);
  assertMatch(bogus.stderr, /^krunbox: ls: unknown option '--bogus'/);
  const unknown = await krunbox("frobnicate");
  assertEquals(unknown.code, 125);
  assertMatch(unknown.stderr, /unknown command "frobnicate"/);
  const missing = await krunbox("exec");
  assertEquals(missing.code, 125);
  assertMatch(missing.stderr, /missing NAME/);
  const badMemory = await krunbox("run", "--memory", "lots", "/nonexistent");
  assertEquals(badMemory.code, 125);
  assertMatch(badMemory.stderr, /--memory/);
});

Deno.test("cli: ls, images and inspect on an empty home print headers, [] and a not-found error", async () => {
  const ls = await krunbox("ls", "-a");
  assertEquals(ls.code, 0);
  assertMatch(ls.stdout, /^NAME\s+IMAGE\s+CPUS\s+MEMORY\s+CREATED\s+STATUS$/m);
  const json = await krunbox("ps", "-a", "--json");
  assertEquals(json.code, 0);
  assert(Array.isArray(JSON.parse(json.stdout)));
  const images = await krunbox("images");
  assertEquals(images.code, 0);
  assertMatch(images.stdout, /^REFERENCE\s+DIGEST\s+SIZE\s+PULLED$/m);
  const inspect = await krunbox("inspect", "no-such-sandbox");
  assertEquals(inspect.code, 125);
  assertMatch(inspect.stderr, /^krunbox: .*no-such-sandbox.*not found/m);
});

Deno.test({ name: "cli: run --rm passes the command's exit code, 127 for a missing one", ignore }, async () => {
  const r = await krunbox("run", "--rm", "--name", "cli-run", "--memory", "256", root, "sh", "-c", "echo out; exit 7");
  assertEquals(r.code, 7, r.stderr);
  assertEquals(r.stdout, "out\n");
  const gone = await krunbox("inspect", "cli-run");
  assertEquals(gone.code, 125, "--rm removed the sandbox");
  const nf = await krunbox("run", "--rm", "--memory", "256", root, "no-such-program");
  assertEquals(nf.code, 127, nf.stderr);
  assertMatch(nf.stderr, /not found/);
});

Deno.test({ name: "cli: create, ls, exec, inspect, metrics, logs, stop, start, rm -f", ignore }, async () => {
  const created = await krunbox("create", "--name", "cli-c", "--memory", "256", "-e", "GREETING=hello", root);
  assertEquals(created.code, 0, created.stderr);
  assertEquals(created.stdout.trim(), "cli-c");
  try {
    const ls = await krunbox("ls", "--json");
    const rows = JSON.parse(ls.stdout) as { name: string; status: string; config: { memoryMib: number } }[];
    const row = rows.find((r) => r.name === "cli-c");
    assertEquals(row?.status, "running");
    assertEquals(row?.config.memoryMib, 256);

    const exec = await krunbox("exec", "-e", "X=1", "-w", "/tmp", "cli-c", "sh", "-c", 'echo "$GREETING $X $(pwd)"');
    assertEquals(exec.code, 0, exec.stderr);
    assertEquals(exec.stdout, "hello 1 /tmp\n");
    const code = await krunbox("exec", "cli-c", "sh", "-c", "exit 42");
    assertEquals(code.code, 42);
    // Flags after the command belong to the command.
    const ls2 = await krunbox("exec", "cli-c", "ls", "-d", "/tmp");
    assertEquals(ls2.stdout, "/tmp\n");
    const notExec = await krunbox("exec", "cli-c", "/etc/hostname");
    assertEquals(notExec.code, 126, notExec.stderr);

    const inspect = await krunbox("inspect", "cli-c");
    assertEquals(inspect.code, 0);
    const [info] = JSON.parse(inspect.stdout);
    assertEquals(info.config.env.GREETING, "hello");

    const metrics = await krunbox("metrics", "--json", "cli-c");
    assertEquals(metrics.code, 0, metrics.stderr);
    const m = JSON.parse(metrics.stdout);
    assert(m.memoryBytes > 0 && m.uptimeMs > 0, metrics.stdout);
    const table = await krunbox("metrics", "cli-c");
    assertMatch(table.stdout, /^CPU\s+MEMORY\s+LIMIT/m);

    const logs = await krunbox("logs", "cli-c");
    assertEquals(logs.code, 0);
    assertMatch(logs.stdout, /krunbox-agent: serving/m, "the console log holds the guest agent's start");
    assertMatch(logs.stdout, / ready: kernel /m, "the runner log follows it");

    const stop = await krunbox("stop", "cli-c");
    assertEquals(stop.code, 0, stop.stderr);
    const stopped = JSON.parse((await krunbox("ls", "-a", "--json")).stdout) as { name: string; status: string }[];
    assertEquals(stopped.find((r) => r.name === "cli-c")?.status, "stopped");
    const running = JSON.parse((await krunbox("ls", "--json")).stdout) as { name: string }[];
    assert(!running.some((r) => r.name === "cli-c"), "ls without -a shows running sandboxes only");

    const start = await krunbox("start", "cli-c");
    assertEquals(start.code, 0, start.stderr);
    const again = await krunbox("exec", "cli-c", "cat", "/proc/uptime");
    assertEquals(again.code, 0);
    const rmRunning = await krunbox("rm", "cli-c");
    assertEquals(rmRunning.code, 125, "rm of a running sandbox needs -f");
    assertMatch(rmRunning.stderr, /running/);
  } finally {
    const rm = await krunbox("rm", "-f", "cli-c");
    assertEquals(rm.code, 0, rm.stderr);
  }
  assertEquals((await krunbox("inspect", "cli-c")).code, 125);
});

// ---- the interactive path, through a real terminal ----

async function tmux(...args: string[]): Promise<string> {
  const out = await new Deno.Command("tmux", { args: ["-L", "krunbox-test", ...args], stderr: "piped" }).output();
  if (!out.success) throw new Error(`tmux ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

/** A new detached session "kb" running `script`; a server still exiting from the last kill-server is waited out. */
async function newSession(script: string): Promise<void> {
  for (let attempt = 1;; attempt++) {
    try {
      await tmux("-f", "/dev/null", "new-session", "-d", "-s", "kb", "-x", "100", "-y", "30", `sh '${script}'`);
      return;
    } catch (e) {
      if (attempt === 10) throw e;
      await new Promise((r) => setTimeout(r, 300));
    }
  }
}

async function screen(): Promise<string> {
  return await tmux("capture-pane", "-p", "-t", "kb");
}

/** Waits until the pane shows `re` (the guest is slow under TCG); returns the screen. */
async function waitFor(re: RegExp, ms = 60_000): Promise<string> {
  const end = Date.now() + ms;
  let s = "";
  while (Date.now() < end) {
    s = await screen();
    if (re.test(s)) return s;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${re} on the screen:\n${s}`);
}

Deno.test({ name: "cli: run -it in tmux — typing, resize, Ctrl-C, exit code, terminal restored", ignore }, async () => {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-tty-" });
  const done = join(dir, "done");
  const script = join(dir, "session.sh");
  // The pane runs krunbox, then records its exit code and the terminal's modes after it.
  await Deno.writeTextFile(
    script,
    `export KRUNBOX_HOME='${testHome}' KRUNBOX_BACKEND=qemu\n` +
      `'${Deno.execPath()}' run -A '${cli}' run -it --rm --memory 256 '${root}' sh\n` +
      `code=$?\nstty -a > '${dir}/stty'\necho "$code" > '${done}'\nsleep 600\n`,
  );
  await newSession(script);
  try {
    await tmux("set-option", "-g", "status", "off");
    await waitFor(/^\/ # *$/m); // busybox ash's prompt (tmux trims trailing blanks)
    await tmux("send-keys", "-t", "kb", "echo hi-from-$((6*7))", "Enter");
    await waitFor(/^hi-from-42$/m);

    await tmux("resize-window", "-t", "kb", "-x", "120", "-y", "40");
    await new Promise((r) => setTimeout(r, 500));
    await tmux("send-keys", "-t", "kb", "stty size", "Enter");
    await waitFor(/^40 120$/m);

    await tmux("send-keys", "-t", "kb", "sleep 300; echo slept", "Enter");
    await new Promise((r) => setTimeout(r, 1000));
    await tmux("send-keys", "-t", "kb", "C-c");
    await tmux("send-keys", "-t", "kb", "echo after-$((1+1))", "Enter");
    const s = await waitFor(/^after-2$/m, 20_000);
    assert(!/^slept$/m.test(s), "Ctrl-C ended the sleep in the guest");

    await tmux("send-keys", "-t", "kb", "exit 3", "Enter");
    const end = Date.now() + 60_000;
    while (Date.now() < end) {
      try {
        const code = (await Deno.readTextFile(done)).trim();
        if (code) {
          assertEquals(code, "3");
          break;
        }
      } catch {
        // not yet
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    const stty = await Deno.readTextFile(join(dir, "stty"));
    assertMatch(stty, /(^|\s)icanon(\s|$)/, "canonical mode is back");
    assertMatch(stty, /(^|\s)echo(\s|$)/, "echo is back");
    assertMatch(stty, /(^|\s)isig(\s|$)/, "signals are back");
  } finally {
    await tmux("kill-server").catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- images, and the streaming commands ----

/** A `krunbox …` process whose stdout is read line by line while it runs. */
function spawnKrunbox(...args: string[]) {
  const child = krunboxCommand(args).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  /** The next line, or undefined at the end of stdout (bounded by `ms`). */
  const line = async (ms = 60_000): Promise<string | undefined> => {
    const end = Date.now() + ms;
    for (;;) {
      const nl = buf.indexOf("\n");
      if (nl >= 0) {
        const l = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        return l;
      }
      const left = end - Date.now();
      if (left <= 0) throw new Error(`krunbox ${args.join(" ")}: no line in ${ms} ms (so far: ${buf})`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const r = await Promise.race([
        reader.read(),
        new Promise<"late">((res) => (timer = setTimeout(() => res("late"), left))),
      ]).finally(() => clearTimeout(timer));
      if (r === "late") continue;
      if (r.done) {
        const rest = buf;
        buf = "";
        return rest === "" ? undefined : rest;
      }
      buf += r.value;
    }
  };
  return { child, line };
}

Deno.test(
  { name: "cli: pull, images (table and --json), rmi and prune against a local registry", ignore },
  async () => {
    const missing = await missingRegistryTools();
    if (skipped("registry", missing)) return;
    await using registry = await LocalRegistry.start();
    await pushImage(registry.host, "cli/tools:1", [root], { cmd: ["sh"] });
    const ref = `${registry.host}/cli/tools:1`;
    const pulled = await krunbox("pull", "-q", "--insecure", ref);
    assertEquals(pulled.code, 0, pulled.stderr);
    assertMatch(pulled.stdout.trim(), /^sha256:[0-9a-f]{64}$/);
    const list = JSON.parse((await krunbox("images", "--json")).stdout) as { reference: string; size: number }[];
    const mine = list.find((i) => i.reference === ref);
    assert(mine && mine.size > 0, JSON.stringify(list));
    const tableOut = await krunbox("images");
    assertMatch(tableOut.stdout, /^REFERENCE\s+DIGEST\s+SIZE\s+PULLED$/m);
    assert(tableOut.stdout.split("\n").some((l) => l.startsWith(ref)), tableOut.stdout);
    const rmi = await krunbox("rmi", ref);
    assertEquals([rmi.code, rmi.stdout.trim()], [0, ref], rmi.stderr);
    const after = JSON.parse((await krunbox("images", "--json")).stdout) as { reference: string }[];
    assert(!after.some((i) => i.reference === ref), "rmi removed it");
    const again = await krunbox("rmi", ref);
    assertEquals(again.code, 125, "a second rmi is an error");
    const prune = await krunbox("prune");
    assertEquals(prune.code, 0, prune.stderr);
    const m = prune.stdout.match(/^removed \d+ images, (\d+) blobs, .+ freed$/m);
    assert(m && Number(m[1]) > 0, `prune freed the removed image's blobs: ${prune.stdout}`);
    const nothing = await krunbox("prune");
    assertMatch(nothing.stdout, /^removed 0 images, 0 blobs/m, "a second prune finds nothing");
  },
);

Deno.test(
  { name: "cli: logs -f and metrics --watch stream while the sandbox runs and end when it stops", ignore },
  async () => {
    const created = await krunbox("create", "--name", "cli-follow", "--memory", "256", root);
    assertEquals(created.code, 0, created.stderr);
    try {
      const logs = spawnKrunbox("logs", "-f", "cli-follow");
      const watch = spawnKrunbox("metrics", "--watch", "--json", "--interval", "200", "cli-follow");
      // metrics --watch: a sample per interval, the guest's uptime moving on.
      const samples: { uptimeMs: number }[] = [];
      for (let i = 0; i < 3; i++) samples.push(JSON.parse((await watch.line()) ?? "null"));
      assert(samples[2].uptimeMs > samples[0].uptimeMs, JSON.stringify(samples));
      // logs -f: a line the guest writes to its console after the follow printed what was there reaches it.
      for (let l = await logs.line(); l !== undefined && !/ ready: kernel /.test(l); l = await logs.line()) {
        // the logs so far
      }
      const marker = `follow-marker-${crypto.randomUUID()}`;
      const wrote = await krunbox("exec", "cli-follow", "sh", "-c", `echo ${marker} > /dev/console`);
      assertEquals(wrote.code, 0, wrote.stderr);
      let seen = false;
      for (let l = await logs.line(); l !== undefined; l = await logs.line()) {
        if (l.includes(marker)) {
          seen = true;
          break;
        }
      }
      assert(seen, "logs -f printed the line written after it started");
      // Both end on their own when the sandbox stops, with code 0.
      assertEquals((await krunbox("stop", "cli-follow")).code, 0);
      for (const p of [logs, watch]) {
        while ((await p.line()) !== undefined) { /* drain to the end */ }
        const status = await p.child.status;
        assertEquals(status.code, 0, new TextDecoder().decode((await p.child.stderr.getReader().read()).value));
      }
    } finally {
      await krunbox("rm", "-f", "cli-follow");
    }
  },
);

Deno.test(
  {
    name: "cli: shell and exec -it in tmux — typing, the exit code back, the terminal restored after an error too",
    ignore,
  },
  async () => {
    const created = await krunbox("create", "--name", "cli-tty", "--memory", "256", root);
    assertEquals(created.code, 0, created.stderr);
    const dir = await Deno.makeTempDir({ prefix: "krunbox-tty-" });
    try {
      for (const [i, command] of [["shell", "cli-tty"], ["exec", "-it", "cli-tty", "sh"]].entries()) {
        const done = join(dir, `done-${i}`);
        const script = join(dir, `session-${i}.sh`);
        await Deno.writeTextFile(
          script,
          `export KRUNBOX_HOME='${testHome}' KRUNBOX_BACKEND=qemu\n` +
            `'${Deno.execPath()}' run -A '${cli}' ${command.join(" ")}\n` +
            `code=$?\nstty -a > '${dir}/stty-${i}'\necho "$code" > '${done}'\nsleep 600\n`,
        );
        await newSession(script);
        try {
          await tmux("set-option", "-g", "status", "off");
          await waitFor(/^\/ # *$/m);
          await tmux("send-keys", "-t", "kb", `echo typed-${i}-$((2+3))`, "Enter");
          await waitFor(new RegExp(`^typed-${i}-5$`, "m"));
          await tmux("send-keys", "-t", "kb", `exit ${4 + i}`, "Enter");
          const end = Date.now() + 60_000;
          let code = "";
          while (Date.now() < end && !code) {
            code = await Deno.readTextFile(done).then((t) => t.trim(), () => "");
            if (!code) await new Promise((r) => setTimeout(r, 200));
          }
          assertEquals(code, String(4 + i), `${command[0]}: the guest shell's exit code`);
          assertMatch(await Deno.readTextFile(join(dir, `stty-${i}`)), /(^|\s)icanon(\s|$)/, "canonical mode is back");
        } finally {
          await tmux("kill-server").catch(() => {});
        }
      }
      // An error path: the sandbox is removed under a running `exec -it`; krunbox fails, and the terminal is back.
      const done = join(dir, "done-err");
      const script = join(dir, "session-err.sh");
      await Deno.writeTextFile(
        script,
        `export KRUNBOX_HOME='${testHome}' KRUNBOX_BACKEND=qemu\n` +
          `'${Deno.execPath()}' run -A '${cli}' exec -it cli-tty sh\n` +
          `code=$?\nstty -a > '${dir}/stty-err'\necho "$code" > '${done}'\nsleep 600\n`,
      );
      await newSession(script);
      try {
        await tmux("set-option", "-g", "status", "off");
        await waitFor(/^\/ # *$/m);
        assertEquals((await krunbox("rm", "-f", "cli-tty")).code, 0);
        const end = Date.now() + 60_000;
        let code = "";
        while (Date.now() < end && !code) {
          code = await Deno.readTextFile(done).then((t) => t.trim(), () => "");
          if (!code) await new Promise((r) => setTimeout(r, 200));
        }
        assert(code !== "" && code !== "0", `exec -it of a removed sandbox fails (code ${code})`);
        const stty = await Deno.readTextFile(join(dir, "stty-err"));
        assertMatch(stty, /(^|\s)icanon(\s|$)/, "canonical mode is back after the error");
        assertMatch(stty, /(^|\s)echo(\s|$)/, "echo is back after the error");
      } finally {
        await tmux("kill-server").catch(() => {});
      }
    } finally {
      await krunbox("rm", "-f", "cli-tty");
      await Deno.remove(dir, { recursive: true });
    }
  },
);
