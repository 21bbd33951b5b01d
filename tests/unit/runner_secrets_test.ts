/**
 * The secrets line a starter writes on its runner's stdin: the values round
 * trip, it is read to its newline only, and its errors never show it.
 */

import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { readRunnerSecrets, runnerSecretsLine } from "../../src/vmm/runner_secrets.ts";

const SECRET = { env: "K", placeholder: "p", hosts: ["a.example"], patterns: [], inBody: false, inQuery: false };

/** A reader over `chunks`, one a read, then EOF. */
function reader(chunks: Uint8Array[]) {
  return {
    read(b: Uint8Array): Promise<number | null> {
      const c = chunks.shift();
      if (!c) return Promise.resolve(null);
      b.set(c);
      return Promise.resolve(c.length);
    },
  };
}

Deno.test("runner secrets: the values round trip, split across reads; a bad line fails without echoing it", async () => {
  const line = new TextEncoder().encode(
    runnerSecretsLine([{ secret: SECRET, value: 'sk-"quoted"\\x' }, { secret: { ...SECRET, env: "L" }, value: "v2" }]),
  );
  const got = await readRunnerSecrets(reader([line.subarray(0, 7), line.subarray(7)]));
  assertEquals([...got], [["K", 'sk-"quoted"\\x'], ["L", "v2"]]);
  const e = await assertRejects(
    () => readRunnerSecrets(reader([new TextEncoder().encode("sk-leak not json\n")])),
    Error,
  );
  assert(!e.message.includes("sk-leak"), e.message);
  await assertRejects(() => readRunnerSecrets(reader([])), Error, "ended before");
  await assertRejects(
    () => readRunnerSecrets(reader([new TextEncoder().encode('{"secrets":[{"env":"K"}]}\n')])),
    Error,
  );
});
