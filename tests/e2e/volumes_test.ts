/**
 * Volumes in a real VM: a host directory read-write and read-only, a tmpfs,
 * and a named volume that outlives its sandbox and is seen by the next one.
 */

import { join } from "node:path";
import { leftovers, skipVmReason, testHome } from "../util/e2e.ts";
import { assert, assertEquals } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { Sandbox } from "../../mod.ts";

const ignore = skipVmReason !== undefined;

Deno.test({ name: "volumes: bind (rw, ro), tmpfs, and a named volume shared across sandboxes", ignore }, async () => {
  const root = await Deno.makeTempDir({ prefix: "krunbox-vol-root-" });
  const host = await Deno.makeTempDir({ prefix: "krunbox-vol-host-" });
  const volume = `vol-test-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await new Deno.Command("cp", { args: ["-a", `${await busyboxRoot()}/.`, root] }).output();
    await Deno.mkdir(`${host}/rw`);
    await Deno.mkdir(`${host}/ro`);
    await Deno.writeTextFile(`${host}/rw/in.txt`, "from the host\n");
    await Deno.writeTextFile(`${host}/ro/fixed.txt`, "read-only\n");
    const base = Sandbox.builder("vol-a").image(root).memory(256).replace()
      .volume("/shared", (v) => v.named(volume));
    {
      await using sb = await base
        .volume("/data", (v) => v.bind(`${host}/rw`))
        .volume("/ro", (v) => v.bind(`${host}/ro`, { readonly: true }))
        .volume("/scratch", (v) => v.tmpfs(16))
        .create();
      assertEquals((await sb.exec("cat", ["/data/in.txt"])).stdout, "from the host\n");
      assertEquals((await sb.shell("echo from the guest > /data/out.txt")).code, 0);
      assertEquals(await Deno.readTextFile(`${host}/rw/out.txt`), "from the guest\n");
      assertEquals((await sb.exec("cat", ["/ro/fixed.txt"])).stdout, "read-only\n");
      const denied = await sb.shell("echo x > /ro/new.txt");
      assert(!denied.success && /read-only/i.test(denied.stderr), denied.stderr);
      assertEquals(await Deno.stat(`${host}/ro/new.txt`).then(() => true, () => false), false);
      const fs = await sb.shell("grep ' /scratch ' /proc/mounts");
      assert(fs.stdout.startsWith("tmpfs /scratch tmpfs"), fs.stdout);
      assertEquals((await sb.shell("echo kept > /shared/note")).code, 0);
    }
    assertEquals(await Deno.readTextFile(join(testHome, "volumes", volume, "note")), "kept\n");
    await using next = await base.create();
    assertEquals((await next.exec("cat", ["/shared/note"])).stdout, "kept\n", "the named volume outlived vol-a");
    await next.stopAndWait();
    await Sandbox.remove("vol-a");
    assertEquals(await leftovers("vol-a"), []);
    assert(
      await Deno.stat(join(testHome, "volumes", volume, "note")).then(() => true),
      "removing the sandbox keeps it",
    );
  } finally {
    await Deno.remove(root, { recursive: true }).catch(() => {});
    await Deno.remove(host, { recursive: true }).catch(() => {});
    await Deno.remove(join(testHome, "volumes", volume), { recursive: true }).catch(() => {});
  }
});
