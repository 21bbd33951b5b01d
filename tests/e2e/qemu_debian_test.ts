/**
 * A Debian root (mmdebstrap minbase with python3, cached) in a real VM:
 * a glibc userland with its own /etc/passwd and dynamic binaries.
 */

import { leftovers, skipVmReason } from "../util/e2e.ts";
import { assertEquals } from "../util/assert.ts";
import { debianRoot } from "../../scripts/roots.ts";
import { Sandbox } from "../../mod.ts";

Deno.test({ name: "a Debian root runs python3 and dynamic binaries", ignore: skipVmReason !== undefined }, async () => {
  const root = await debianRoot(["python3"], "debian-python");
  {
    await using sb = await Sandbox.builder("debian").image(root).memory(512).create();
    assertEquals((await sb.exec("python3", ["-c", "print(6*7)"])).stdout, "42\n");
    assertEquals((await sb.shell(". /etc/os-release; echo $ID")).stdout, "debian\n");
    const who = await sb.execWith("id", { args: ["-un"], user: "nobody" });
    assertEquals(who.stdout, "nobody\n");
  }
  assertEquals(await leftovers("debian"), []);
  await Sandbox.remove("debian");
});
