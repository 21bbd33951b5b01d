/**
 * The whole protocol against the real agent binary in host mode.
 */

import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { HostAgent, processAlive, waitFor } from "../util/agent_host.ts";
import { ExecProcess, runToCompletion } from "../../src/agent/exec.ts";
import { GuestFs } from "../../src/agent/fs.ts";
import { encodeFrame, FrameDecoder, isDecodeError, type RpcMessage } from "../../src/agent/frame.ts";
import { AgentError, ExecAbortedError, ExecSpawnError, ExecTimeoutError, FsError } from "../../src/errors.ts";
import { statFields } from "../../src/util/proc.ts";

const agent = await HostAgent.start();
const client = await agent.connect();
const fs = new GuestFs(client);
let tmp = "";

Deno.test.beforeAll(async () => {
  tmp = await Deno.makeTempDir({ prefix: "krunbox-agent-fs-" });
});

Deno.test.afterAll(async () => {
  await client.close();
  await agent[Symbol.asyncDispose]();
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
});

Deno.test("ready announces protocol 1, host mode and boot timings", () => {
  assertEquals(client.ready.protocol, 1);
  assertEquals(client.ready.mode, "host");
  assert(client.ready.window > 0);
  assert(client.ready.boot.readyMs >= client.ready.boot.agentStartMs);
});

Deno.test("ping answers with the uptime", async () => {
  const r = await client.request("ping", {});
  assert(r.result.uptimeMs >= 0);
});

Deno.test("exec returns stdout, stderr and the exit code", async () => {
  const out = await runToCompletion(client, { cmd: "sh", args: ["-c", "echo out; echo err >&2; exit 3"] });
  assertEquals(out.stdout, "out\n");
  assertEquals(out.stderr, "err\n");
  assertEquals(out.code, 3);
  assertEquals(out.success, false);
});

Deno.test("exec passes env, cwd and stdin", async () => {
  const out = await runToCompletion(
    client,
    { cmd: "sh", args: ["-c", 'printf "%s|" "$FOO" "$(pwd)"; cat'], env: { FOO: "bar" }, cwd: tmp },
    "from stdin",
  );
  assertEquals(out.stdout, `bar|${await Deno.realPath(tmp)}|from stdin`);
});

Deno.test("binary output is byte-exact", async () => {
  const out = await runToCompletion(client, { cmd: "sh", args: ["-c", "printf '\\000\\001\\377\\376'"] });
  assertEquals(out.stdoutBytes, new Uint8Array([0, 1, 255, 254]));
});

Deno.test("a missing binary is a typed spawn error, not exit 127", async () => {
  const e = await assertRejects(() => runToCompletion(client, { cmd: "definitely-not-here" }), ExecSpawnError);
  assertEquals(e.kind, "not_found");
  assertEquals(e.errno, "ENOENT");
});

Deno.test("a bad cwd, a non-executable file and an empty command are typed spawn errors", async () => {
  const cwd = await assertRejects(
    () => runToCompletion(client, { cmd: "true", cwd: "/nonexistent/x" }),
    ExecSpawnError,
  );
  assertEquals(cwd.kind, "bad_cwd");
  await Deno.writeTextFile(`${tmp}/noexec`, "#!/bin/sh\n");
  const perm = await assertRejects(() => runToCompletion(client, { cmd: `${tmp}/noexec` }), ExecSpawnError);
  assertEquals(perm.kind, "permission_denied");
  const empty = await assertRejects(() => runToCompletion(client, { cmd: "" }), ExecSpawnError);
  assertEquals(empty.kind, "invalid_argument");
});

Deno.test("50 concurrent execs each get their own output", async () => {
  const runs = Array.from(
    { length: 50 },
    (_, i) =>
      runToCompletion(client, { cmd: "sh", args: ["-c", `for j in 1 2 3; do echo ${i}-$j; done; exit ${i % 7}`] }),
  );
  const outs = await Promise.all(runs);
  outs.forEach((o, i) => {
    assertEquals(o.stdout, `${i}-1\n${i}-2\n${i}-3\n`);
    assertEquals(o.code, i % 7);
  });
});

/** Pids whose parent is `pid` (from each process's /proc stat). */
function childrenOf(pid: number): number[] {
  const kids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      if (Number(statFields(stat)[1]) === pid) kids.push(Number(e.name));
    } catch {
      // gone meanwhile
    }
  }
  return kids;
}

Deno.test("a timeout kills the process group: the leader that ignores SIGTERM and its child", async () => {
  const p = await ExecProcess.start(client, { cmd: "sh", args: ["-c", "trap '' TERM; sleep 30; :"], timeoutMs: 300 });
  const started = Date.now();
  assert(await waitFor(() => childrenOf(p.pid).length > 0, 2000), "the shell's sleep runs");
  const [child] = childrenOf(p.pid);
  await assertRejects(() => p.exited, ExecTimeoutError);
  // A bound far from the 300 ms asked for (the host's own timer backs the agent's).
  assert(Date.now() - started < 10_000, "rejected well within its bound");
  assert(await waitFor(() => !processAlive(p.pid), 2000), "the leader is gone");
  assert(await waitFor(() => !processAlive(child), 2000), "its child (same group) is gone too");
});

Deno.test("aborting an exec kills it and rejects with ExecAbortedError", async () => {
  const ac = new AbortController();
  const p = await ExecProcess.start(client, { cmd: "sleep", args: ["30"], signal: ac.signal });
  ac.abort();
  await assertRejects(() => p.exited, ExecAbortedError);
  assert(await waitFor(() => !processAlive(p.pid), 1000));
});

Deno.test("signal delivers to the process; kill ends it", async () => {
  const p = await ExecProcess.start(client, {
    cmd: "sh",
    args: ["-c", "trap 'echo got; exit 5' USR1; sleep 30 & wait"],
  });
  await new Promise((r) => setTimeout(r, 200));
  await p.signal(10);
  const text = new TextDecoder().decode(await new Response(p.stdout).arrayBuffer());
  assertEquals(text, "got\n");
  assertEquals((await p.exited).code, 5);
  const q = await ExecProcess.start(client, { cmd: "sleep", args: ["30"] });
  q.kill();
  assertEquals((await q.exited).signal, 9);
});

Deno.test("tty exec sees a terminal and can be resized", async () => {
  const p = await ExecProcess.start(client, {
    cmd: "sh",
    args: ["-c", "test -t 0 && echo tty; sleep 0.3; stty size"],
    tty: { rows: 24, cols: 80 },
  });
  await new Promise((r) => setTimeout(r, 100));
  await p.resize(40, 100);
  const text = new TextDecoder().decode(await new Response(p.stdout).arrayBuffer());
  await p.stderr.cancel();
  assert(text.includes("tty"), text);
  assert(text.includes("40 100"), text);
  assertEquals((await p.exited).code, 0);
});

Deno.test("large output streams with flow control and arrives complete", async () => {
  const out = await runToCompletion(client, { cmd: "head", args: ["-c", String(20 << 20), "/dev/zero"] });
  assertEquals(out.stdoutBytes.length, 20 << 20);
});

Deno.test("a disconnect kills that client's processes only", async () => {
  const other = await agent.connect();
  const mine = await ExecProcess.start(client, { cmd: "sleep", args: ["30"] });
  const theirs = await ExecProcess.start(other, { cmd: "sleep", args: ["30"] });
  await other.close();
  assert(await waitFor(() => !processAlive(theirs.pid), 2000), "the disconnected client's process is killed");
  assert(processAlive(mine.pid), "the other client's process lives");
  mine.kill();
  await mine.exited;
});

Deno.test("a 100 MiB file round-trips byte-exact", async () => {
  const size = 100 << 20;
  const chunk = new Uint8Array(1 << 20);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31 + 7) & 0xff;
  let written = 0;
  const src = new ReadableStream<Uint8Array>({
    pull(c) {
      if (written >= size) return c.close();
      const part = chunk.slice();
      part[0] = written >> 20; // make every MiB differ
      c.enqueue(part);
      written += part.length;
    },
  });
  await src.pipeTo(fs.writeStream(`${tmp}/big`));
  assertEquals((await Deno.stat(`${tmp}/big`)).size, size);
  let read = 0;
  for await (const c of fs.readStream(`${tmp}/big`)) {
    for (let i = 0; i < c.length; i += 4099) {
      const pos = read + i;
      const expected = pos % (1 << 20) === 0 ? (pos >> 20) & 0xff : ((pos % (1 << 20)) * 31 + 7) & 0xff;
      if (c[i] !== expected) throw new Error(`byte ${pos} differs`);
    }
    read += c.length;
  }
  assertEquals(read, size);
});

Deno.test("fs calls: write, read, stat, list, exists, mkdir, rename, copy, symlink, remove", async () => {
  await fs.mkdir(`${tmp}/a/b/c`);
  await fs.write(`${tmp}/a/f.txt`, "hello", { mode: 0o600 });
  assertEquals(await fs.readText(`${tmp}/a/f.txt`), "hello");
  await fs.write(`${tmp}/a/f.txt`, " world", { append: true });
  assertEquals(await fs.readText(`${tmp}/a/f.txt`), "hello world");
  const st = await fs.stat(`${tmp}/a/f.txt`);
  assertEquals([st.kind, st.size, st.mode], ["file", 11, 0o600]);
  assertEquals(st.uid, Deno.uid());
  assert(Math.abs(st.mtime.getTime() - Date.now()) < 60_000);
  await fs.symlink("f.txt", `${tmp}/a/link`);
  assertEquals((await fs.stat(`${tmp}/a/link`)).target, "f.txt");
  assertEquals((await fs.stat(`${tmp}/a/link`, { follow: true })).kind, "file");
  assertEquals((await fs.list(`${tmp}/a`)).map((e) => [e.name, e.kind]), [["b", "dir"], ["f.txt", "file"], [
    "link",
    "symlink",
  ]]);
  await fs.copy(`${tmp}/a`, `${tmp}/copy`);
  assertEquals(await fs.readText(`${tmp}/copy/f.txt`), "hello world");
  assertEquals((await fs.stat(`${tmp}/copy/link`)).kind, "symlink");
  await fs.rename(`${tmp}/copy`, `${tmp}/moved`);
  assertEquals(await fs.exists(`${tmp}/copy`), false);
  assertEquals(await fs.exists(`${tmp}/moved/b/c`), true);
  await fs.remove(`${tmp}/moved/f.txt`);
  assertEquals(await fs.exists(`${tmp}/moved/f.txt`), false);
  await fs.removeDir(`${tmp}/moved`);
  assertEquals(await fs.exists(`${tmp}/moved`), false);
});

Deno.test("fs errors carry the errno name", async () => {
  const e = await assertRejects(() => fs.read(`${tmp}/missing`), FsError);
  assertEquals(e.errno, "ENOENT");
  await fs.mkdir(`${tmp}/dir`);
  assertEquals((await assertRejects(() => fs.remove(`${tmp}/dir`), FsError)).errno, "EISDIR");
  await fs.write(`${tmp}/dir/x`, "x");
  assertEquals(
    (await assertRejects(() => fs.removeDir(`${tmp}/dir`, { recursive: false }), FsError)).errno,
    "ENOTEMPTY",
  );
  assertEquals((await assertRejects(() => fs.stat("/tmp/a\0b"), FsError)).errno, "EINVAL");
});

Deno.test("metrics report memory, cpu and counters", async () => {
  const m = (await client.request("metrics", {})).result as Record<string, number>;
  assert(m.memTotalBytes > m.memUsedBytes && m.memUsedBytes > 0);
  assert(m.cpus >= 1 && m.cpuBusyMs > 0);
  for (const k of ["diskReadBytes", "diskWriteBytes", "netRxBytes", "netTxBytes", "uptimeMs"]) assert(m[k] >= 0, k);
});

Deno.test("an unknown method is answered with -32601 and the connection lives", async () => {
  // @ts-expect-error: "nope" is not in the method table; the agent must still answer.
  const e = await assertRejects(() => client.request("nope", {}), AgentError);
  assertEquals(e.rpcCode, -32601);
  await client.request("ping", {});
});

/** Speaks raw frames to the agent, bypassing the client. */
async function rawExchange(bytes: Uint8Array, expect: number): Promise<RpcMessage[]> {
  const conn = await Deno.connect({ transport: "unix", path: agent.socket });
  const dec = new FrameDecoder();
  const got: RpcMessage[] = [];
  const writing = (async () => {
    for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
  })();
  const reader = conn.readable.getReader();
  const deadline = setTimeout(() => conn.close(), 5000);
  try {
    while (got.length < expect + 1) {
      const { value, done } = await reader.read();
      if (done) break;
      dec.push(value);
      for (let f = dec.next(); f; f = dec.next()) if (!isDecodeError(f)) got.push(f.header);
    }
    await writing;
  } finally {
    clearTimeout(deadline);
    try {
      conn.close();
    } catch {
      // closed by the deadline
    }
  }
  return got.slice(1); // drop ready
}

Deno.test("broken frames get errors and the connection goes on", async () => {
  const json = new TextEncoder().encode("{nope");
  const notJson = new Uint8Array(8 + json.length);
  new DataView(notJson.buffer).setUint32(0, json.length);
  notJson.set(json, 8);
  const oversized = new Uint8Array(8 + 10);
  new DataView(oversized.buffer).setUint32(0, 2 << 20);
  const ping = encodeFrame({ jsonrpc: "2.0", id: 77, method: "ping", params: {} });
  // The oversized frame's 2 MiB are sent after it so the agent can skip them.
  const filler = new Uint8Array((2 << 20) - 10);
  const msgs = await rawExchange(new Uint8Array([...notJson, ...oversized, ...filler, ...ping]), 3);
  assertEquals(msgs.map((m) => m.error?.code ?? m.id), [-32700, -32600, 77]);
});
