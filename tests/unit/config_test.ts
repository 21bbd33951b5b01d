import { assertEquals, assertThrows } from "../util/assert.ts";
import { parseConfig } from "../../src/sandbox/config.ts";
import { SandboxBuilder } from "../../src/sandbox/builder.ts";
import { InvalidConfigError } from "../../src/errors.ts";

Deno.test("config: defaults and an exact JSON round trip", () => {
  const cfg = new SandboxBuilder("job-1").image("/srv/root").cpus(2).memory(1024).env("A", "1")
    .script("s", "echo").port(8080, 80).volume("/data", (v) => v.bind("/tmp", { readonly: true })).build();
  assertEquals([cfg.cpus, cfg.memoryMib, cfg.shell, cfg.backend], [2, 1024, "/bin/sh", "auto"]);
  assertEquals(cfg.image, { kind: "dir", path: "/srv/root" });
  assertEquals(parseConfig(JSON.parse(JSON.stringify(cfg))), cfg);
});

Deno.test("config: image strings pick OCI, directory or disk", () => {
  const b = new SandboxBuilder("x");
  assertEquals(b.image("python:3.12").build().image, { kind: "oci", reference: "python:3.12" });
  assertEquals(b.image("/img/root.qcow2").build().image, {
    kind: "disk",
    path: "/img/root.qcow2",
    format: "qcow2",
    fstype: "ext4",
  });
});

Deno.test("builder: immutable — a derived builder leaves its base unchanged", () => {
  const base = new SandboxBuilder("x").image("/r");
  const big = base.cpus(4);
  assertEquals(base.build().cpus, 1);
  assertEquals(big.build().cpus, 4);
});

Deno.test("config: bad input is an InvalidConfigError naming the field", () => {
  const cases: [() => unknown, string][] = [
    [() => new SandboxBuilder("bad name!"), "name"],
    [() => new SandboxBuilder("x").image("/r").cpus(0).build(), "cpus"],
    [() => new SandboxBuilder("x").image("/r").memory(1.5).build(), "memoryMib"],
    [() => new SandboxBuilder("x").build(), "image"],
    [() => new SandboxBuilder("x").image("/r").workdir("rel").build(), "workdir"],
    [() => new SandboxBuilder("x").image("/r").port(0, 80).build(), "ports.host"],
    [() => new SandboxBuilder("x").image("/r").script("../evil", "").build(), "scripts"],
    [() => new SandboxBuilder("x").image("/r").env("A", "a\0b").build(), "env"],
    [() => new SandboxBuilder("x").image("/r").idleTimeout(-1).build(), "idleTimeoutSecs"],
    [() => new SandboxBuilder("x").image("/r").patch((p) => p.text("relative", "")).build(), "patches.path"],
  ];
  for (const [fn, field] of cases) assertEquals(assertThrows(fn, InvalidConfigError).field, field);
});

Deno.test("config: volumes — bind, named and tmpfs round-trip; bad ones are INVALID_CONFIG naming the field", () => {
  const cfg = new SandboxBuilder("v").image("/r")
    .volume("/data", (v) => v.bind("/srv/data"))
    .volume("/cache", (v) => v.named("pip-cache", { readonly: true }))
    .volume("/scratch", (v) => v.tmpfs(64)).build();
  assertEquals(cfg.volumes.map((v) => v.kind), ["bind", "named", "tmpfs"]);
  assertEquals(parseConfig(JSON.parse(JSON.stringify(cfg))), cfg);
  const bad: [string, (b: SandboxBuilder) => SandboxBuilder][] = [
    ["volumes.name", (b) => b.volume("/x", (v) => v.named("../escape"))],
    ["volumes.name", (b) => b.volume("/x", (v) => v.named(""))],
    ["volumes.hostPath", (b) => b.volume("/x", (v) => v.bind("relative/dir"))],
    ["volumes.guestPath", (b) => b.volume("relative", (v) => v.tmpfs(1))],
    ["volumes.guestPath", (b) => b.volume("/a/../etc", (v) => v.tmpfs(1))],
    ["volumes.sizeMib", (b) => b.volume("/x", (v) => v.tmpfs(0))],
  ];
  for (const [field, edit] of bad) {
    const e = assertThrows(() => edit(new SandboxBuilder("v").image("/r")).build(), InvalidConfigError);
    assertEquals((e as InvalidConfigError).field, field, e.message);
  }
  const e = assertThrows(
    () =>
      parseConfig({
        name: "v",
        image: { kind: "dir", path: "/r" },
        volumes: [{ kind: "nfs", guestPath: "/x", readonly: false }],
      }),
    InvalidConfigError,
  );
  assertEquals((e as InvalidConfigError).field, "volumes.kind");
});

Deno.test("config: a directory root is private unless a shared writable root is asked for", () => {
  const b = new SandboxBuilder("x");
  assertEquals(b.image("/srv/root").build().image, { kind: "dir", path: "/srv/root" });
  const shared = b.imageWith((i) => i.dir("/srv/root", { writable: true })).build();
  assertEquals(shared.image, { kind: "dir", path: "/srv/root", writable: true });
  assertEquals(parseConfig(JSON.parse(JSON.stringify(shared))), shared);
  assertEquals(b.imageWith((i) => i.dir("/srv/root", { writable: false })).build().image, {
    kind: "dir",
    path: "/srv/root",
  });
  const e = assertThrows(
    () => parseConfig({ name: "x", image: { kind: "dir", path: "/r", writable: "yes" } }),
    InvalidConfigError,
  );
  assertEquals(e.message.includes("image.writable"), true, e.message);
});
