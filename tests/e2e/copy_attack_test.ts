/**
 * copyToHost/copyFromHost against a hostile guest, in a real qemu VM (one
 * sandbox for every case). The guest is the attacker: it swaps directories
 * for symlinks while a copy runs (in its own tree and in a host directory it
 * shares through a bind volume), plants links to /etc/passwd and `../../..`,
 * answers with names "" and ".", and sends more than the caps allow. Every
 * check looks at the host; each negative check has a positive control.
 */

import { leftovers, skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { FsError, Sandbox } from "../../mod.ts";
import { linkStaysInside, SandboxFs } from "../../src/sandbox/fs.ts";
import type { AgentClient } from "../../src/agent/client.ts";

const ignore = skipVmReason !== undefined;
const NAME = "copyattack";
let sb: Sandbox | undefined;
let share = "";
const temps: string[] = [];

async function temp(prefix: string): Promise<string> {
  const d = await Deno.makeTempDir({ prefix: `krunbox-copy-${prefix}-` });
  temps.push(d);
  return d;
}

/** The shared sandbox; the host directory `share` is bind-mounted at /share, writable by the guest. */
async function sandbox(): Promise<Sandbox> {
  if (sb) return sb;
  share = await temp("share");
  sb = await Sandbox.builder(NAME).image(await busyboxRoot()).memory(256).shell("/bin/ash").workdir("/tmp")
    .volume("/share", (v) => v.bind(share)).create();
  return sb;
}

Deno.test.afterAll(async () => {
  await sb?.[Symbol.asyncDispose]();
  if (sb) {
    assertEquals(await leftovers(NAME), []);
    await Sandbox.remove(NAME);
  }
  for (const d of temps) await Deno.remove(d, { recursive: true }).catch(() => {});
});

function names(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

Deno.test("linkStaysInside: only leading ../ no deeper than the link, then names without ..", () => {
  assert(linkStaysInside("f", 0));
  assert(linkStaysInside("./sub/f", 0));
  assert(linkStaysInside("../f", 1));
  assert(linkStaysInside("../../a/b", 2));
  assert(!linkStaysInside("../f", 0));
  assert(!linkStaysInside("../../..", 2));
  assert(!linkStaysInside("/etc/passwd", 5));
  assert(!linkStaysInside("a/../../x", 3)); // a may be a link: a/.. need not be the link's directory
  assert(!linkStaysInside("f", -1)); // the copied path itself
  assert(!linkStaysInside("", 0));
});

/**
 * Runs `copy` `iterations` times while `script` loops in the guest (a live exec: the agent ends what an exec
 * leaves behind; `$SWAPPED` in it counts a swap); typed FsErrors count as refusals. Answers what happened and how often the racer swapped.
 */
async function race(
  s: Sandbox,
  script: string,
  iterations: number,
  copy: (i: number) => Promise<unknown>,
  check: (i: number) => void,
): Promise<{ completed: number; refused: number; errnos: string[]; swaps: number }> {
  await s.shell("rm -f /tmp/swaps");
  script = script.replaceAll("$SWAPPED", "i=$((i+1)); echo $i > /tmp/swaps");
  const racer = await s.execStream("sh", {
    args: ["-c", `i=0; while :; do ${script}; done`],
  });
  let completed = 0;
  let refused = 0;
  const errnos = new Set<string>();
  // The attack must really happen: past `iterations`, go on (up to 5x) until the racer has swapped at least once.
  const swapped = async () => Number((await s.shell("cat /tmp/swaps 2>/dev/null || echo 0")).stdout.trim()) > 0;
  try {
    for (let i = 0; i < iterations || (i < iterations * 5 && !(await swapped())); i++) {
      try {
        await copy(i);
        completed++;
      } catch (e) {
        if (!(e instanceof FsError)) throw e;
        errnos.add(e.errno);
        refused++;
      }
      check(i);
    }
  } finally {
    racer.kill();
    await racer.exited.catch(() => {});
  }
  const swaps = Number((await s.shell("cat /tmp/swaps 2>/dev/null || echo 0")).stdout.trim());
  return { completed, refused, errnos: [...errnos], swaps };
}

const FILES = Array.from({ length: 20 }, (_, i) => `f${String(i).padStart(2, "0")}`);

Deno.test(
  { name: "a guest swapping directories for symlinks during copyToHost writes nothing outside", ignore },
  async () => {
    const s = await sandbox();
    const outside = await temp("outside");
    const dest = await temp("dest");
    // The guest's tree (20 files in d: a long window); the link's text is the host's outside dir, and that
    // path also exists in the guest (with files) so the guest side of the copy follows it.
    await s.shell(
      `mkdir -p /tmp/src/d/sub ${outside} && cd /tmp/src/d && for f in ${FILES.join(" ")}; do echo $f > $f; done && ` +
        `echo two > sub/g && echo planted > ${outside}/planted`,
    );
    // Positive control, before any racer: the honest copy lands in the target (on the shared dir).
    const first = await s.fs().copyToHost("/tmp/src", `${share}/first`);
    assertEquals(await Deno.readTextFile(`${share}/first/d/sub/g`), "two\n");
    assertEquals([first.files, first.dirs], [21, 3]);
    await Deno.remove(`${share}/first`, { recursive: true });
    const nothingOutside = (i: number) => assertEquals(names(outside), [], `iteration ${i}: nothing written outside`);

    // 1. The guest swaps its own d for a link to the host's outside dir (as text) and back (with pauses, so
    //    that some copies also run whole: the positive control in the same run).
    const own = await race(
      s,
      `mv /tmp/src/d /tmp/src/d.x; ln -s ${outside} /tmp/src/d; $SWAPPED; rm /tmp/src/d; mv /tmp/src/d.x /tmp/src/d; sleep 0.2`,
      30,
      (i) => s.fs().copyToHost("/tmp/src", `${dest}/${i}`),
      nothingOutside,
    );
    console.log(`guest tree: ${JSON.stringify(own)}`);
    assert(own.swaps > 0 && own.completed > 0, "the racer swapped, and honest copies still landed");

    // 2. The guest shares the host target: /share/t/d becomes a host symlink to the outside dir meanwhile.
    await Deno.mkdir(`${share}/t`);
    const shared = await race(
      s,
      `for x in /share/t/*/d; do if mv $x $x.x 2>/dev/null; then ln -s ${outside} $x; $SWAPPED; ` +
        `rm -f $x; mv $x.x $x; fi; done`,
      30,
      (i) => s.fs().copyToHost("/tmp/src", `${share}/t/${i}`),
      nothingOutside,
    );
    console.log(`shared host target: ${JSON.stringify(shared)}`);
    assert(shared.swaps > 0, "the racer really swapped host directories for symlinks meanwhile");
    assertEquals(names(outside), []);
    await Deno.remove(`${share}/t`, { recursive: true }).catch(() => {});
    await s.shell(`rm -rf ${outside} /tmp/src`);
  },
);

/**
 * The agent as the attacker times its answers: when the host asks about `trigger` it first swaps a host dir it
 * shares for a symlink (through the real guest), waits until the host sees the link, then answers.
 */
function swapping(s: Sandbox, trigger: string, swap: string, seen: string): SandboxFs {
  const real = s.fs().agent;
  let done = false;
  return new SandboxFs(
    {
      request: async (method: string, params: { path?: string }, options: unknown) => {
        if (!done && (method === "fs.stat" || method === "fs.open") && params.path === trigger) {
          done = true;
          await s.shell(swap);
          for (let i = 0; i < 100 && !Deno.lstatSync(seen).isSymlink; i++) await new Promise((r) => setTimeout(r, 20));
          assert(Deno.lstatSync(seen).isSymlink, "the host sees the guest's link");
        }
        // deno-lint-ignore no-explicit-any
        return await (real.request as any)(method, params, options);
      },
    } as unknown as AgentClient,
  );
}

Deno.test({ name: "a guest that swaps a shared dir while it holds back an answer gains nothing", ignore }, async () => {
  const s = await sandbox();
  const outside = await temp("held-outside");
  const secret = await temp("held-secret");
  await s.shell(`mkdir -p /tmp/held/d && cd /tmp/held/d && for f in ${FILES.join(" ")}; do echo $f > $f; done`);
  // copyToHost into a shared target: at f05 the guest turns the host's t/d into a link to the outside dir.
  await Deno.mkdir(`${share}/held`);
  const out = await swapping(
    s,
    "/tmp/held/d/f05",
    `mv /share/held/t/d /share/held/t/d.x && ln -s ${outside} /share/held/t/d`,
    `${share}/held/t/d`,
  ).copyToHost("/tmp/held", `${share}/held/t`).catch((e) => e);
  assertEquals(names(outside), [], "nothing was written through the swapped-in link");
  // Positive control: the copy went on into the directory it had opened (now d.x), whole.
  assert(!(out instanceof Error), String(out));
  assertEquals(names(`${share}/held/t/d.x`), FILES);

  // copyFromHost of a shared source: at f05 the guest turns the host's src/d into a link to the secret dir.
  await Deno.mkdir(`${share}/held/src/d`, { recursive: true });
  for (const f of FILES) {
    await Deno.writeTextFile(`${secret}/${f}`, "SECRET-HELD-55e1");
    await Deno.writeTextFile(`${share}/held/src/d/${f}`, "public");
  }
  const inn = await swapping(
    s,
    "/tmp/held-in/d/f05",
    `mv /share/held/src/d /share/held/src/d.x && ln -s ${secret} /share/held/src/d`,
    `${share}/held/src/d`,
  ).copyFromHost(`${share}/held/src`, "/tmp/held-in").catch((e) => e);
  assert(!(inn instanceof Error), String(inn));
  const got = await s.shell("grep -rh SECRET-HELD /tmp/held-in; grep -l public /tmp/held-in/d/* | wc -l");
  assert(!got.stdout.includes("SECRET-HELD"), got.stdout);
  assertEquals(got.stdout.trim(), String(FILES.length), "positive control: every file came from the real dir");
  await Deno.remove(`${share}/held`, { recursive: true });
  await s.shell("rm -rf /tmp/held /tmp/held-in");
});

Deno.test({ name: "guest symlinks to /etc/passwd or ../../.. are not recreated or followed", ignore }, async () => {
  const s = await sandbox();
  const dest = await temp("links");
  const passwd = await Deno.readFile("/etc/passwd");
  await s.shell(
    "mkdir -p /tmp/links/sub && echo in > /tmp/links/f && ln -s /etc/passwd /tmp/links/p && " +
      "ln -s ../../.. /tmp/links/sub/up && ln -s f /tmp/links/ok && ln -s ../f /tmp/links/sub/back && " +
      "ln -s sub/../../x /tmp/links/tricky",
  );
  const r = await s.fs().copyToHost("/tmp/links", `${dest}/l`);
  // Links that stay inside are copied as links (positive control) ...
  assertEquals(await Deno.readLink(`${dest}/l/ok`), "f");
  assertEquals(await Deno.readTextFile(`${dest}/l/sub/back`), "in\n");
  // ... the others are skipped, reported, and nothing of the host was read or written through them.
  assertEquals(names(`${dest}/l`), ["f", "ok", "sub"]);
  assertEquals(names(`${dest}/l/sub`), ["back"]);
  assertEquals(r.skipped.map((e) => `${e.path} -> ${e.target}`).sort(), [
    "/tmp/links/p -> /etc/passwd",
    "/tmp/links/sub/up -> ../../..",
    "/tmp/links/tricky -> sub/../../x",
  ]);
  assertEquals(await Deno.readFile("/etc/passwd"), passwd);
  // The copied path being a link: skipped (it would point wherever its text says, next to the target).
  await s.shell("ln -sf /etc/passwd /tmp/plink");
  const top = await s.fs().copyToHost("/tmp/plink", `${dest}/plink`);
  assertEquals([top.skipped.length, names(dest)], [1, ["l"]]);
  // An existing host file is never replaced or written through (O_EXCL|O_NOFOLLOW).
  await Deno.symlink("/etc/passwd", `${dest}/hostlink`);
  const e = await assertRejects(() => s.fs().copyToHost("/tmp/links/f", `${dest}/hostlink`), FsError);
  assertEquals(e.errno, "EEXIST");
  assertEquals(await Deno.readFile("/etc/passwd"), passwd);
});

Deno.test({ name: "copyFromHost of a tree with a link to a secret dir never reads the secret", ignore }, async () => {
  const s = await sandbox();
  const secret = await temp("ssh");
  await Deno.writeTextFile(`${secret}/id_ed25519`, "SECRET-KEY-7f3a");
  const src = await temp("from");
  await Deno.mkdir(`${src}/t/sub`, { recursive: true });
  await Deno.writeTextFile(`${src}/t/sub/f.txt`, "public");
  await Deno.symlink(secret, `${src}/t/keys`);
  await Deno.symlink(`${secret}/id_ed25519`, `${src}/t/sub/key`);
  const r = await s.fs().copyFromHost(`${src}/t`, "/tmp/in");
  assertEquals([r.files, r.dirs, r.symlinks], [1, 2, 2]);
  // Positive control: the honest file arrived; the links arrived as links (their text only).
  assertEquals(await s.fs().readText("/tmp/in/sub/f.txt"), "public");
  assertEquals((await s.fs().stat("/tmp/in/keys")).target, secret);
  const seen = await s.shell("grep -rs SECRET-KEY /tmp/in; find /tmp/in -type f; cat /tmp/in/keys/* 2>&1 | head -1");
  assert(!seen.stdout.includes("SECRET-KEY"), seen.stdout);
  assert(seen.stdout.includes("/tmp/in/sub/f.txt"), seen.stdout);
  // The secret's directory itself through the link, as the top path: a link, not its contents.
  await Deno.symlink(secret, `${src}/topkeys`);
  await s.fs().copyFromHost(`${src}/topkeys`, "/tmp/topkeys");
  assertEquals((await s.fs().stat("/tmp/topkeys")).kind, "symlink");
  assertEquals((await s.shell("cat /tmp/topkeys/* 2>/dev/null; true")).stdout, "");
});

Deno.test({
  name: "a guest swapping a shared host dir for a link to a secret during copyFromHost reads nothing of it",
  ignore,
}, async () => {
  const s = await sandbox();
  const secret = await temp("secret");
  await Deno.mkdir(`${share}/src/d`, { recursive: true });
  for (const f of FILES) {
    await Deno.writeTextFile(`${secret}/${f}`, "SECRET-RACE-91c2");
    await Deno.writeTextFile(`${share}/src/d/${f}`, "public");
  }
  // The guest shares the host tree being copied in: it swaps src/d for a host link to the secret dir.
  const r = await race(
    s,
    `if mv /share/src/d /share/src/d.x 2>/dev/null; then ln -s ${secret} /share/src/d; $SWAPPED; ` +
      `rm -f /share/src/d; mv /share/src/d.x /share/src/d; fi`,
    30,
    (i) => s.fs().copyFromHost(`${share}/src`, `/tmp/race-in/${i}`),
    () => {},
  );
  const got = await s.shell("grep -rh SECRET-RACE /tmp/race-in; grep -rl public /tmp/race-in | head -1");
  console.log(`copyFromHost: ${JSON.stringify(r)}`);
  assert(r.swaps > 0, "the racer really swapped the host dir for a link meanwhile");
  assert(!got.stdout.includes("SECRET-RACE"), got.stdout);
  assert(got.stdout.includes("/tmp/race-in/"), "positive control: honest copies landed");
  await Deno.remove(`${share}/src`, { recursive: true });
  await s.shell("rm -rf /tmp/race-in");
});

Deno.test({ name: 'guest names "", ".", "..", "a/b" are refused with EINVAL naming the entry', ignore }, async () => {
  const s = await sandbox();
  await s.shell("mkdir -p /tmp/named && echo x > /tmp/named/real");
  const real = s.fs().agent;
  // The attacker owns the agent: its listing of /tmp/named adds a name that is not one component.
  const lying = (extra: string) =>
    new SandboxFs(
      {
        request: async (method: string, params: unknown, options: unknown) => {
          // deno-lint-ignore no-explicit-any
          const reply = await (real.request as any)(method, params, options);
          if (method !== "fs.list") return reply;
          const entries = reply.result.entries as { name: string; path: string }[];
          const fake = { ...entries[0], name: extra, path: `/tmp/named/${extra}` };
          return { ...reply, result: { entries: [fake, ...entries] } };
        },
      } as unknown as AgentClient,
    );
  // Positive control: the honest listing copies.
  const dest = await temp("names");
  await s.fs().copyToHost("/tmp/named", `${dest}/ok`);
  assertEquals(names(`${dest}/ok`), ["real"]);
  for (const bad of ["", ".", "..", "a/b", "x\0y"]) {
    const e = await assertRejects(() => lying(bad).copyToHost("/tmp/named", `${dest}/n`), FsError);
    assertEquals(e.errno, "EINVAL");
    assert(e.path.endsWith(`/tmp/named/${bad}`), e.path);
    await Deno.remove(`${dest}/n`, { recursive: true });
  }
  assertEquals(names(dest), ["ok"]);
});

Deno.test({ name: "byte and entry caps and an abort end a copy with a typed error", ignore }, async () => {
  const s = await sandbox();
  await s.shell("mkdir -p /tmp/big/d && head -c 3000000 /dev/zero > /tmp/big/d/blob && touch /tmp/big/a /tmp/big/b");
  const dest = await temp("caps");
  // Positive control: within the caps it copies.
  const ok = await s.fs().copyToHost("/tmp/big", `${dest}/ok`, { maxBytes: 3_000_000, maxEntries: 5 });
  assertEquals([ok.bytes, ok.files], [3_000_000, 3]);
  const big = await assertRejects(() => s.fs().copyToHost("/tmp/big", `${dest}/b`, { maxBytes: 2_000_000 }), FsError);
  assertEquals(big.errno, "EFBIG");
  assert(String((big.cause as Error).message).includes("KRUNBOX_COPY_MAX_BYTES"));
  assertEquals(names(`${dest}/b/d`), [], "the half-written file was removed");
  const many = await assertRejects(() => s.fs().copyToHost("/tmp/big", `${dest}/e`, { maxEntries: 4 }), FsError);
  assertEquals(many.errno, "E2BIG");
  const ac = new AbortController();
  ac.abort(new Error("stop"));
  const aborted = await assertRejects(() => s.fs().copyToHost("/tmp/big", `${dest}/a`, { signal: ac.signal }), Error);
  assertEquals(aborted.message, "stop");
  // The same caps on the way in.
  const from = await temp("capsin");
  await Deno.writeFile(`${from}/blob`, new Uint8Array(3_000_000));
  await Deno.writeFile(`${from}/small`, new Uint8Array(1));
  const inBig = await assertRejects(() => s.fs().copyFromHost(from, "/tmp/capin1", { maxBytes: 1_000_000 }), FsError);
  assertEquals(inBig.errno, "EFBIG");
  const inMany = await assertRejects(() => s.fs().copyFromHost(from, "/tmp/capin2", { maxEntries: 2 }), FsError);
  assertEquals(inMany.errno, "E2BIG");
  const inOk = await s.fs().copyFromHost(from, "/tmp/capin3", { maxBytes: 3_000_001, maxEntries: 3 });
  assertEquals(inOk.bytes, 3_000_001);
});
