import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertThrows } from "../util/assert.ts";
import { SecretBuilder, secretEnv, secretSpec, secretValues } from "../../src/net/secrets.ts";
import { SandboxBuilder } from "../../src/sandbox/builder.ts";
import { parseConfig, type SandboxConfig } from "../../src/sandbox/config.ts";
import { openStore } from "../../src/store/open.ts";
import { pathsOf } from "../../src/sandbox/state.ts";
import { vmSpecOf } from "../../src/sandbox/spec.ts";
import { Sandbox } from "../../src/sandbox/sandbox.ts";
import { homeLayout } from "../../src/store/home.ts";
import { BackendUnavailableError, InvalidConfigError, SecretUnavailableError } from "../../src/errors.ts";

const VALUE = "sk-live-9d3c1f0b7a6e4d2c8b5a-do-not-leak";
const OTHER = "ghp_second_value_7Qx2Lm";
const PLACEHOLDER_RE = /^krunbox-secret-[0-9a-f]{32}$/;

function withSecrets(name: string): SandboxBuilder {
  return new SandboxBuilder(name).image("/nonexistent-root").backend("qemu")
    .secret((s) =>
      s.env("OPENAI_API_KEY").value(VALUE).allowHost("api.openai.com").allowHostPattern("*.openai.com").inBody()
    )
    .secretEnv("GITHUB_TOKEN", OTHER, "api.github.com");
}

Deno.test("secrets: the config holds a random placeholder per secret and per build, in env too, never the value", () => {
  const b = withSecrets("s1");
  const cfg = b.build();
  assertEquals(cfg.secrets.map((s) => [s.env, s.hosts, s.patterns, s.inBody, s.inQuery]), [
    ["OPENAI_API_KEY", ["api.openai.com"], ["*.openai.com"], true, false],
    ["GITHUB_TOKEN", ["api.github.com"], [], false, false],
  ]);
  for (const s of cfg.secrets) {
    assert(PLACEHOLDER_RE.test(s.placeholder), s.placeholder);
    assertEquals(cfg.env[s.env], s.placeholder, "the guest's env holds the placeholder");
  }
  assert(cfg.secrets[0].placeholder !== cfg.secrets[1].placeholder);
  assert(b.build().secrets[0].placeholder !== cfg.secrets[0].placeholder, "another build, another placeholder");
  const json = JSON.stringify(cfg);
  assert(!json.includes(VALUE) && !json.includes(OTHER), "no value in the config's JSON");
  assert(json.includes(cfg.secrets[0].placeholder), "positive control: the placeholder is in it");
  assertEquals(parseConfig(JSON.parse(json)), cfg, "exact round trip");
  // Nothing that prints or serialises a builder shows the value either.
  const s = new SecretBuilder().env("K").value(VALUE).allowHost("a.example");
  for (const text of [JSON.stringify(s), Deno.inspect(s), Deno.inspect(b), JSON.stringify(b), String(s)]) {
    assert(!text.includes(VALUE), text);
  }
  assertEquals(secretSpec(s).value, VALUE, "positive control: the value is there, in memory");
});

Deno.test("secrets: SecretBuilder is immutable and every mistake is an InvalidConfigError", () => {
  const base = new SecretBuilder().env("TOKEN");
  const a = base.value("v").allowHost("a.example");
  assertThrows(() => secretSpec(base), InvalidConfigError);
  assertEquals(secretSpec(a).hosts, ["a.example"]);
  assertEquals(secretSpec(a.allowHost("A.Example.")).hosts, ["a.example"], "names are canonical, once each");
  const cases: [() => unknown, string][] = [
    [() => base.env("1BAD"), "secrets.env"],
    [() => base.env("A-B"), "secrets.env"],
    [() => base.value(""), "secrets.value"],
    [() => base.value("line\r\nX-Evil: 1"), "secrets.value"],
    [() => base.value("a\0b"), "secrets.value"],
    [() => base.value("x".repeat(16 * 1024 + 1)), "secrets.value"],
    [() => base.allowHost("bad..host"), "secrets.hosts"],
    [() => base.allowHost("10.0.0.1"), "secrets.hosts"],
    [() => base.allowHostPattern("openai.com"), "secrets.patterns"],
    [() => base.allowHostPattern("*.com"), "secrets.patterns"],
    [() => base.allowHostPattern("*.*.openai.com"), "secrets.patterns"],
    [() => secretSpec(base.value("v")), "secrets.hosts"],
    [() => secretSpec(new SecretBuilder().value("v").allowHost("a.example")), "secrets.env"],
    [() => new SandboxBuilder("x").image("/r").secret(() => ({}) as SecretBuilder), "secrets"],
    [
      () => new SandboxBuilder("x").image("/r").secretEnv("K", "v", "a.example").secretEnv("K", "w", "b.example"),
      "secrets.env",
    ],
    [() => new SandboxBuilder("x").image("/r").env("K", "plain").secretEnv("K", "v", "a.example").build(), "env"],
    [() => new SandboxBuilder("x").image("/r").secretEnv("K", "v", "a.example").disableNetwork().build(), "secrets"],
  ];
  for (const [fn, field] of cases) assertEquals(assertThrows(fn, InvalidConfigError).field, field);
  // A stored config carrying a value, or a bad placeholder, is refused.
  const cfg = withSecrets("s2").build();
  const stored = JSON.parse(JSON.stringify(cfg));
  stored.secrets[0].value = VALUE;
  assertEquals(assertThrows(() => parseConfig(stored), InvalidConfigError).field, "secrets");
  stored.secrets[0] = { ...cfg.secrets[0], placeholder: "krunbox-secret-xyz" };
  assertEquals(assertThrows(() => parseConfig(stored), InvalidConfigError).field, "secrets.placeholder");
});

Deno.test("secrets: arguments in the wrong place are refused, and no error shows the string it refuses", () => {
  const refused: [() => unknown, string, string][] = [
    // secretEnv(value, env, host): the value in the env's place.
    [() => secretEnv(VALUE, "OPENAI_API_KEY", "api.openai.com"), "secrets.env", VALUE],
    // secretEnv(env, host, value): the value in the host's place (sk-… parses as a one-label name).
    [() => secretEnv("OPENAI_API_KEY", "api.openai.com", VALUE), "secrets.hosts", VALUE],
    [() => secretEnv("GITHUB_TOKEN", "api.github.com", OTHER), "secrets.hosts", OTHER],
    // The host is the value.
    [() => secretEnv("K", "api.openai.com", "API.openai.com."), "secrets.hosts", "api.openai.com"],
    [() => new SecretBuilder().env("K").value(VALUE).allowHost(VALUE), "secrets.hosts", VALUE],
    [() => new SecretBuilder().env("K").allowHost("a.example").value("a.example"), "secrets.hosts", "a.example"],
    [() => new SecretBuilder().env("K").allowHost(VALUE), "secrets.hosts", VALUE],
    [() => new SecretBuilder().env("K").allowHostPattern(`*.${VALUE}`), "secrets.patterns", VALUE],
    [() => new SecretBuilder().env(VALUE), "secrets.env", VALUE],
    [() => new SecretBuilder().env("K").allowHost("bad..host-" + OTHER), "secrets.hosts", OTHER],
  ];
  for (const [fn, field, secret] of refused) {
    const e = assertThrows(fn, InvalidConfigError);
    assertEquals(e.field, field, e.message);
    assert(!e.message.includes(secret) && !e.message.toLowerCase().includes(secret.toLowerCase()), e.message);
  }
  assert(
    assertThrows(() => secretEnv("K", "api.openai.com", VALUE), InvalidConfigError).message.includes("swapped"),
    "the message says the arguments look swapped",
  );
  // Controls: the right order works, a one-label value with a real host too.
  assertEquals(secretEnv("OPENAI_API_KEY", VALUE, "api.openai.com").hosts, ["api.openai.com"]);
  assertEquals(secretEnv("K", "a.b", "api.example.com").value, "a.b");
});

Deno.test("secrets: values are paired by env name; a missing one is SECRET_UNAVAILABLE naming it", () => {
  const cfg = withSecrets("s3").build();
  const all = new Map([["OPENAI_API_KEY", VALUE], ["GITHUB_TOKEN", OTHER]]);
  assertEquals(secretValues("s3", cfg.secrets, all).map((v) => v.value), [VALUE, OTHER]);
  const e = assertThrows(
    () => secretValues("s3", cfg.secrets, new Map([["GITHUB_TOKEN", OTHER]])),
    SecretUnavailableError,
  );
  assertEquals([e.code, e.envs], ["SECRET_UNAVAILABLE", ["OPENAI_API_KEY"]]);
  assert(e.message.includes("replace()"), "the message says what to do");
  assertEquals(secretValues("none", [], undefined), []);
});

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) out.push(...await filesUnder(p));
    else if (e.isFile) out.push(p); // symlinks (the shared assets) are not the test's state
  }
  return out;
}

async function grep(files: string[], needle: string): Promise<string[]> {
  const bytes = new TextEncoder().encode(needle);
  const hits: string[] = [];
  for (const f of files) {
    const data = await Deno.readFile(f);
    outer: for (
      let i = data.indexOf(bytes[0]);
      i >= 0 && i <= data.length - bytes.length;
      i = data.indexOf(bytes[0], i + 1)
    ) {
      for (let j = 1; j < bytes.length; j++) if (data[i + j] !== bytes[j]) continue outer;
      hits.push(f);
      break;
    }
  }
  return hits;
}

Deno.test("secrets: nothing the store writes (SQLite, its WAL, vm.json) holds a value; start() of a stopped sandbox with secrets is SECRET_UNAVAILABLE", async () => {
  const before = Deno.env.get("KRUNBOX_HOME");
  const home = await Deno.makeTempDir({ prefix: "krunbox-secrets-home-" });
  Deno.env.set("KRUNBOX_HOME", home);
  try {
    await Deno.symlink(join(before ?? join(Deno.env.get("HOME")!, ".krunbox"), "assets"), join(home, "assets"));
    const cfg: SandboxConfig = withSecrets("sec").build();
    let specWritten = false;
    const plain: SandboxConfig = new SandboxBuilder("plain").image("/nonexistent-root").backend("qemu").build();
    {
      using store = await openStore();
      for (const c of [cfg, plain]) {
        assert(store.insert(c.name, JSON.stringify(c), "stopped", false));
        await Deno.mkdir(pathsOf(c.name).dir, { recursive: true });
      }
      try {
        const spec = await vmSpecOf(cfg, { kind: "dir", path: "/" });
        await Deno.writeTextFile(pathsOf(cfg.name).vmSpec, JSON.stringify(spec, null, 1));
        specWritten = true;
      } catch (e) {
        if (!(e instanceof BackendUnavailableError)) throw e;
        console.log(`SKIPPING the vm.json part: ${e.message}`);
      }
    }
    const files = await filesUnder(home);
    assert(files.some((f) => f === homeLayout().db), "the database is among the files searched");
    assertEquals(await grep(files, VALUE), [], "no file holds the first value");
    assertEquals(await grep(files, OTHER), [], "no file holds the second value");
    // Positive control: the same search finds the placeholder where the config went.
    const found = await grep(files, cfg.secrets[0].placeholder);
    assert(found.includes(homeLayout().db) || found.includes(`${homeLayout().db}-wal`), "…in the database");
    if (specWritten) {
      assert(found.includes(pathsOf("sec").vmSpec), "…and in vm.json (the guest's env)");
      // vm.json pairs nothing with a value: netd's secrets are filled in by the runner, in memory, from its stdin;
      // the secrets it lists are the stored ones (placeholders), and netd's CA is never there either.
      const spec = JSON.parse(await Deno.readTextFile(pathsOf("sec").vmSpec));
      assertEquals(spec.netd.secrets, []);
      assertEquals(spec.secrets.map((s: { env: string }) => s.env), ["OPENAI_API_KEY", "GITHUB_TOKEN"]);
      assert(spec.secrets.every((s: Record<string, unknown>) => !("value" in s)), "no value member in vm.json");
      assertEquals(spec.caPem, undefined);
    }

    // start(): the values are gone, so it refuses at once, naming them, and leaves the sandbox stopped.
    const e = await assertRejects(() => Sandbox.start("sec"), SecretUnavailableError, "OPENAI_API_KEY, GITHUB_TOKEN");
    assertEquals(e.sandbox, "sec");
    await assertRejects(async () => await (await Sandbox.get("sec")).start(), SecretUnavailableError);
    assertEquals((await Sandbox.get("sec")).status, "stopped");
    // Positive control: without secrets, start() gets past that check (and fails later, on the missing root).
    await assertRejects(() => Sandbox.start("plain"), InvalidConfigError, "/nonexistent-root does not exist");
  } finally {
    if (before === undefined) Deno.env.delete("KRUNBOX_HOME");
    else Deno.env.set("KRUNBOX_HOME", before);
    await Deno.remove(home, { recursive: true });
  }
});
