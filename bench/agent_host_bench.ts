/**
 * The agent protocol in host mode (no VM): exec round-trip of `true`, and
 * streamed fs write/read of 64 MiB. Targets (issue 3): exec p50 < 1 ms,
 * fs read and write >= 300 MB/s each (64 MiB per iteration: MB/s = 67.1 / seconds).
 *
 *   deno bench -A bench/agent_host_bench.ts
 */

import { HostAgent } from "../tests/util/agent_host.ts";
import { runToCompletion } from "../src/agent/exec.ts";
import { GuestFs } from "../src/agent/fs.ts";

const agent = await HostAgent.start();
const client = await agent.connect();
const fs = new GuestFs(client);
const dir = await Deno.makeTempDir();
const SIZE = 64 << 20;
const chunk = new Uint8Array(1 << 20).fill(7);

async function writeFile(path: string) {
  const w = fs.writeStream(path).getWriter();
  for (let n = 0; n < SIZE; n += chunk.length) await w.write(chunk);
  await w.close();
}
await writeFile(`${dir}/read-me`);

Deno.bench("exec round-trip of `true` (host mode)", { group: "exec", baseline: true }, async () => {
  await runToCompletion(client, { cmd: "/bin/true" });
});

Deno.bench("ping round-trip (host mode)", { group: "exec" }, async () => {
  await client.request("ping", {});
});

Deno.bench("fs write 64 MiB (host mode)", { group: "fs", n: 10 }, async () => {
  await writeFile(`${dir}/written`);
});

Deno.bench("fs read 64 MiB (host mode)", { group: "fs", n: 10 }, async () => {
  let n = 0;
  for await (const c of fs.readStream(`${dir}/read-me`)) n += c.length;
  if (n !== SIZE) throw new Error("short read");
});

globalThis.addEventListener("unload", () => {
  Deno.removeSync(dir, { recursive: true });
  agent.process.kill("SIGKILL");
});
