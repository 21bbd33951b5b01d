/**
 * The published package on its own, as a new user meets it: exactly the files
 * `deno publish --dry-run` lists, copied into an empty directory, with a fresh
 * state home. From there its own setup entry point (`src/host/setup.ts`, the
 * package's `./setup` export) provisions what the package's own sources make
 * (the guest agent, the network engine, the initramfs), a program importing
 * the copied `mod.ts` creates a sandbox and runs a command in it, and the
 * copied CLI answers `--version` and `doctor`.
 *
 * The assets that come from elsewhere and take minutes to build (the Debian
 * kernel, libkrun from crates.io, libkrunfw, virtiofsd) are seeded from the
 * real state home: they do not depend on the package's files, and their
 * version stamps make setup keep them.
 */

import { join } from "node:path";
import { skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals, assertMatch } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { homeLayout } from "../../src/store/home.ts";

const ignore = skipVmReason !== undefined;
const repo = new URL("../..", import.meta.url).pathname;
/** Assets whose inputs are outside the package (Debian, crates.io): seeded, not rebuilt. */
const SEEDED = ["kernel", "libkrun", "libkrunfw", "virtiofsd"];

async function publishedFiles(): Promise<string[]> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["publish", "--dry-run", "--allow-dirty"],
    cwd: repo,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert(out.success, `deno publish --dry-run failed:\n${text}`);
  const prefix = `file://${repo}`;
  return [...text.matchAll(/^\s+(file:\/\/\S+) \(/gm)].map((m) => m[1]).filter((u) => u.startsWith(prefix))
    .map((u) => decodeURIComponent(u.slice(prefix.length)));
}

async function run(cmd: string, args: string[], cwd: string, env: Record<string, string>) {
  const out = await new Deno.Command(cmd, { args, cwd, env, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test(
  { name: "package: the published files alone provision, create a sandbox and exec in it", ignore },
  async () => {
    const files = await publishedFiles();
    assert(files.includes("mod.ts") && files.includes("src/host/setup.ts"), "the package has mod.ts and its setup");
    assert(files.includes("agent/Cargo.lock") && files.includes("netd/go.mod"), "the package carries its sources");
    assert(
      !files.some((f) => f.startsWith("tests/") || f.startsWith("scripts/")),
      "no test or dev script is published",
    );

    const pkg = await Deno.makeTempDir({ prefix: "krunbox-package-" });
    const home = await Deno.makeTempDir({ prefix: "krunbox-package-home-" });
    try {
      for (const f of files) {
        await Deno.mkdir(join(pkg, f, ".."), { recursive: true });
        await Deno.copyFile(join(repo, f), join(pkg, f));
      }
      const real = homeLayout();
      const assets = homeLayout(home).assets;
      await Deno.mkdir(assets, { recursive: true });
      const seeded: string[] = [];
      for (const a of SEEDED) {
        if (!(await Deno.stat(join(real.assets, a)).then(() => true, () => false))) continue;
        assertEquals((await run("cp", ["-a", join(real.assets, a), join(assets, a)], repo, {})).code, 0);
        seeded.push(a);
      }
      const env = {
        KRUNBOX_HOME: home,
        KRUNBOX_BACKEND: "qemu",
        PATH: Deno.env.get("PATH") ?? "",
        HOME: Deno.env.get("HOME") ?? "",
        NO_COLOR: "1",
      };

      const program = join(pkg, "job.ts");
      await Deno.writeTextFile(
        program,
        `import { Sandbox } from "./mod.ts";\n` +
          `await using sb = await Sandbox.builder("pkg-1").image(${JSON.stringify(await busyboxRoot())})` +
          `.memory(256).create();\n` +
          `const out = await sb.exec("sh", ["-c", "echo from-the-package $((6*7))"]);\n` +
          `console.log(out.stdout.trim());\n`,
      );
      // Before setup: the error's fix names the setup that exists here (the package's own), never a checkout's ./dev.
      const before = await run(Deno.execPath(), ["run", "-A", program], pkg, env);
      assert(before.code !== 0, "nothing is provisioned yet");
      const fix = before.stderr.match(/Fix: run `deno run -A (\S+)`/);
      assert(fix, `the error names a setup command:\n${before.stderr}`);
      assertEquals(await Deno.realPath(fix[1]), await Deno.realPath(join(pkg, "src", "host", "setup.ts")));
      assert(!before.stderr.includes("./dev"), before.stderr);

      const setup = await run(Deno.execPath(), ["run", "-A", "src/host/setup.ts"], pkg, env);
      assertEquals(setup.code, 0, `setup from the package failed:\n${setup.stdout}\n${setup.stderr}`);
      for (const built of ["agent", "netd", "initramfs"]) {
        assertMatch(setup.stdout, new RegExp(`\\[setup\\] ${built}: done`), `setup built ${built} from the package`);
      }
      for (const a of seeded) assertMatch(setup.stdout, new RegExp(`\\[setup\\] ${a}: cached`));

      const version = await run(Deno.execPath(), ["run", "-A", "cli.ts", "--version"], pkg, env);
      assertEquals(version.code, 0);
      assertMatch(version.stdout, /^krunbox \d+\.\d+\.\d+/);
      // The native front door setup installed hands over to the package's own CLI.
      const door = join(home, "bin", "krunbox");
      const sidecar = JSON.parse(await Deno.readTextFile(join(home, "bin", "krunbox.json")));
      assertEquals(sidecar.cli, join(await Deno.realPath(pkg), "cli.ts"));
      assertEquals((await run(door, ["--version"], pkg, env)).stdout, version.stdout);
      const ls = await run(door, ["ls", "--json"], pkg, env);
      assertEquals([ls.code, ls.stdout.trim()], [0, "[]"], ls.stderr);
      const doctor = await run(Deno.execPath(), ["run", "-A", "cli.ts", "doctor"], pkg, env);
      assertEquals(doctor.code, 0, `doctor from the package:\n${doctor.stdout}\n${doctor.stderr}`);
      assertMatch(doctor.stdout, /backend auto → /);

      const job = await run(Deno.execPath(), ["run", "-A", program], pkg, env);
      assertEquals(job.code, 0, `a program on the package alone:\n${job.stdout}\n${job.stderr}`);
      assertEquals(job.stdout.trim(), "from-the-package 42");
    } finally {
      await Deno.remove(pkg, { recursive: true }).catch(() => {});
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
);
