/** The CLI's parts without a VM: argument parsing, flag forms, tables, sizes, progress lines, exit codes. */

import { assert, assertEquals, assertThrows } from "../util/assert.ts";
import { parseCommand, UsageError } from "../../src/cli/command.ts";
import { parseMemory, parsePublish, parseSecretEnv, parseTmpfs, parseVolume } from "../../src/cli/sandbox_flags.ts";
import { humanBytes, humanDuration, table } from "../../src/cli/format.ts";
import { exitCodeOf, exitCodeOfStatus } from "../../src/cli/exit.ts";
import { PullProgress } from "../../src/cli/progress.ts";
import { VERSION } from "../../src/version.ts";
import { ExecSpawnError, InvalidConfigError, NotFoundError } from "../../src/errors.ts";

Deno.test("cli: the version is deno.json's", async () => {
  const { version } = JSON.parse(await Deno.readTextFile(new URL("../../deno.json", import.meta.url)));
  assertEquals(VERSION, version);
});

const runLike = {
  name: "run",
  usage: "run IMAGE [CMD...]",
  options: {
    env: { type: "string", short: "e", multiple: true },
    interactive: { type: "boolean", short: "i" },
    tty: { type: "boolean", short: "t" },
    name: { type: "string" },
  },
  commandAfter: 1,
} as const;

Deno.test("cli: flags stop at the image; the rest is the guest command's, flags included", () => {
  const p = parseCommand(runLike, ["-it", "-e", "A=1", "--name", "x", "busybox", "ls", "-la", "--name", "y"]);
  assertEquals(p.values.interactive, true);
  assertEquals(p.values.tty, true);
  assertEquals(p.values.env, ["A=1"]);
  assertEquals(p.values.name, "x");
  assertEquals(p.positionals, ["busybox"]);
  assertEquals(p.rest, ["ls", "-la", "--name", "y"]);
  const dashdash = parseCommand(runLike, ["busybox", "--", "-x"]);
  assertEquals(dashdash.rest, ["-x"]);
  const none = parseCommand(runLike, ["-i", "busybox"]);
  assertEquals(none.rest, []);
  assertEquals(parseCommand(runLike, ["--help"]).values.help, true);
});

Deno.test("cli: unknown flags, missing values and stray arguments are usage errors naming the command", () => {
  const e = assertThrows(() => parseCommand(runLike, ["--bogus", "img"]), UsageError);
  assertEquals(e.code, "INVALID_CONFIG");
  assert(e.message.startsWith("run: unknown option '--bogus'"), e.message);
  assertThrows(() => parseCommand(runLike, ["--name"]), UsageError);
  const ls = { name: "ls", usage: "ls", options: {}, maxPositionals: 0 };
  assertThrows(() => parseCommand(ls, ["extra"]), UsageError);
});

Deno.test("cli: docker's flag forms", () => {
  assertEquals(parseMemory("512"), 512);
  assertEquals(parseMemory("512m"), 512);
  assertEquals(parseMemory("2g"), 2048);
  assertThrows(() => parseMemory("lots"), InvalidConfigError);
  assertThrows(() => parseMemory("0"), InvalidConfigError);
  assertEquals(parsePublish("8080:80"), { bind: undefined, host: 8080, guest: 80, udp: false });
  assertEquals(parsePublish("127.0.0.2:53:53/udp"), { bind: "127.0.0.2", host: 53, guest: 53, udp: true });
  assertEquals(parsePublish("[::1]:8080:80"), { bind: "::1", host: 8080, guest: 80, udp: false });
  assertThrows(() => parsePublish("8080"), InvalidConfigError);
  assertThrows(() => parsePublish("0:80"), InvalidConfigError);
  assertThrows(() => parsePublish("8080:70000"), InvalidConfigError);
  assertEquals(parseVolume("/srv/data:/data:ro"), {
    source: "/srv/data",
    named: false,
    guest: "/data",
    readonly: true,
  });
  assertEquals(parseVolume("cache:/cache"), { source: "cache", named: true, guest: "/cache", readonly: false });
  assertEquals(parseVolume("./rel:/x:rw"), { source: "./rel", named: false, guest: "/x", readonly: false });
  assertThrows(() => parseVolume("/a:relative"), InvalidConfigError);
  assertThrows(() => parseVolume("/a"), InvalidConfigError);
  assertEquals(parseTmpfs("/scratch:128m"), { guest: "/scratch", sizeMib: 128 });
  assertEquals(parseTmpfs("/scratch"), { guest: "/scratch", sizeMib: 64 });
  assertEquals(parseSecretEnv("TOKEN=a=b@c@api.example.com"), {
    env: "TOKEN",
    value: "a=b@c",
    host: "api.example.com",
  });
  assertThrows(() => parseSecretEnv("TOKEN=value"), InvalidConfigError);
  // ENV@HOST: the value from krunbox's own environment, never on the command line.
  Deno.env.set("KRUNBOX_TEST_SECRET", "s3cret");
  try {
    assertEquals(parseSecretEnv("KRUNBOX_TEST_SECRET@api.example.com"), {
      env: "KRUNBOX_TEST_SECRET",
      value: "s3cret",
      host: "api.example.com",
    });
  } finally {
    Deno.env.delete("KRUNBOX_TEST_SECRET");
  }
  assertThrows(() => parseSecretEnv("KRUNBOX_TEST_SECRET@api.example.com"), InvalidConfigError);
  assertThrows(() => parseSecretEnv("=v@h"), InvalidConfigError);
});

Deno.test("cli: tables align and keep their headers when empty; sizes and durations read as people write them", () => {
  assertEquals(table(["NAME", "STATUS"], []), "NAME  STATUS");
  assertEquals(table(["A", "B"], [["long-name", "x"], ["s", "yy"]]), "A          B\nlong-name  x\ns          yy");
  assertEquals(humanBytes(0), "0 B");
  assertEquals(humanBytes(1536), "1.5 KiB");
  assertEquals(humanBytes(256 * 1024 * 1024), "256 MiB");
  assertEquals(humanDuration(1500), "1.5s");
  assertEquals(humanDuration(90_000), "1m30s");
  assertEquals(humanDuration(3 * 3600_000 + 60_000), "3h01m");
});

Deno.test("cli: exit codes are docker's", () => {
  assertEquals(exitCodeOf(new ExecSpawnError("x", "not_found", "ENOENT")), 127);
  assertEquals(exitCodeOf(new ExecSpawnError("x", "not_executable", "ENOEXEC")), 126);
  assertEquals(exitCodeOf(new ExecSpawnError("x", "permission_denied", "EACCES")), 126);
  assertEquals(exitCodeOf(new NotFoundError("sandbox", "x")), 125);
  assertEquals(exitCodeOf(new Error("boom")), 125);
  assertEquals(exitCodeOfStatus({ code: 3, signal: null }), 3);
  assertEquals(exitCodeOfStatus({ code: null, signal: 9 }), 137);
});

Deno.test("cli: pull progress off a terminal is one line per finished layer, never one per chunk", () => {
  const out: string[] = [];
  const p = new PullProgress({ live: false, write: (s) => out.push(s) });
  const digest = `sha256:${"a".repeat(64)}`;
  p.event({ phase: "resolved", reference: "r/x:1", manifestDigest: "sha256:m", layers: 2, totalBytes: 3 << 20 });
  for (let i = 1; i <= 100; i++) {
    p.event({ phase: "layer", digest, downloadedBytes: i * 20_000, totalBytes: 2_000_000, cached: false });
  }
  p.event({ phase: "layer", digest: `sha256:${"b".repeat(64)}`, downloadedBytes: 0, totalBytes: 1, cached: true });
  p.event({ phase: "done", reference: "r/x:1", manifestDigest: "sha256:m", cached: false });
  const lines = out.join("").trimEnd().split("\n");
  assertEquals(lines.length, 4, lines.join("\n"));
  assert(lines[0].startsWith("pulling r/x:1: 2 layers"), lines[0]);
  assert(lines[1].startsWith("aaaaaaaaaaaa  1.9 MiB / 1.9 MiB  done"), lines[1]);
  assertEquals(lines[2], "bbbbbbbbbbbb  in the store");
  assert(lines[3].startsWith("pulled r/x:1"), lines[3]);
});

Deno.test("cli: pull progress on a terminal redraws one line per layer in place", () => {
  const out: string[] = [];
  const p = new PullProgress({ live: true, write: (s) => out.push(s) });
  const digest = `sha256:${"c".repeat(64)}`;
  p.event({ phase: "layer", digest, downloadedBytes: 10, totalBytes: 100, cached: false });
  p.event({ phase: "layer", digest, downloadedBytes: 100, totalBytes: 100, cached: false });
  const text = out.join("");
  assert(text.includes("\x1b[1A"), "the second draw moves the cursor back over the first");
  assert(text.endsWith("100 B / 100 B  done\n"), JSON.stringify(text));
});

Deno.test("cli: a slow start shows a live line on a terminal, erased when done; nothing off a terminal", async () => {
  const { withStartProgress } = await import("../../src/cli/progress.ts");
  const live: string[] = [];
  const slow = () => new Promise<string>((r) => setTimeout(() => r("up"), 1300));
  assertEquals(await withStartProgress("job-1", slow(), { live: true, write: (s) => live.push(s) }), "up");
  assert(live.some((l) => l.includes("starting job-1 …")), JSON.stringify(live));
  assertEquals(live.at(-1), "\r\x1b[2K");
  const quick: string[] = [];
  await withStartProgress("job-2", Promise.resolve(1), { live: true, write: (s) => quick.push(s) });
  assertEquals(quick, [], "a quick start says nothing");
  const plain: string[] = [];
  await withStartProgress("job-3", slow(), { live: false, write: (s) => plain.push(s) });
  assertEquals(plain, [], "off a terminal nothing is written");
});
