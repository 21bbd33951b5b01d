/**
 * `deno task doctor`: checks every prerequisite, one line each, with the fix
 * for each failure, and says which backend `auto` picks here and why.
 * Exits 0 when at least one backend can run.
 *
 * @module
 */

import { zstdLibrary } from "../../ffi/zstd.ts";
import { isalLibrary } from "../../ffi/isal.ts";
import type { OptionalLibrary } from "../../ffi/load.ts";
import { loadLibkrun } from "../../ffi/load.ts";
import { assetPath } from "../store/assets.ts";
import { homeLayout } from "../store/home.ts";
import { chooseBackend, probeHost } from "../vmm/detect.ts";
import { type Check, checkAsset, qemuChecks } from "../vmm/prereqs.ts";

const MIN_DENO = [2, 9, 0];

function denoCheck(): Check {
  const v = Deno.version.deno.split(".").map(Number);
  const ok = v[0] > MIN_DENO[0] ||
    (v[0] === MIN_DENO[0] && (v[1] > MIN_DENO[1] || (v[1] === MIN_DENO[1] && v[2] >= MIN_DENO[2])));
  return {
    name: "deno",
    ok,
    detail: Deno.version.deno,
    fix: ok ? undefined : `use deno >= ${MIN_DENO.join(".")} (./dev installs it from npm)`,
  };
}

async function homeCheck(): Promise<Check> {
  const { root } = homeLayout();
  try {
    await Deno.mkdir(root, { recursive: true });
    const probe = `${root}/.doctor-${Deno.pid}`;
    await Deno.writeTextFile(probe, "ok");
    await Deno.remove(probe);
    return { name: "state home", ok: true, detail: `${root} (writable)` };
  } catch (e) {
    return {
      name: "state home",
      ok: false,
      detail: `${root}: ${(e as Error).message}`,
      fix: "set KRUNBOX_HOME to a writable directory",
    };
  }
}

/** libkrunfw is loaded by libkrun by soname; check it opens on its own. */
function libkrunfwLoadable(): Check {
  const path = assetPath("libkrunfw");
  try {
    Deno.dlopen(path, {}).close();
    return { name: "libkrunfw loads", ok: true, detail: path };
  } catch (e) {
    return {
      name: "libkrunfw loads",
      ok: false,
      detail: (e as Error).message.split("\n")[0],
      fix: "run `./dev setup`",
    };
  }
}

function libkrunLoadable(): Check {
  try {
    using lib = loadLibkrun({ provisioned: assetPath("libkrun") });
    const ctx = lib.symbols.krun_create_ctx();
    if (ctx < 0) {
      return {
        name: "libkrun loads",
        ok: false,
        detail: `krun_create_ctx returned ${ctx}`,
        fix: "rebuild with `./dev setup`",
      };
    }
    lib.symbols.krun_free_ctx(ctx);
    const blk = lib.symbols.krun_has_feature?.(1n) ?? -1;
    return { name: "libkrun loads", ok: true, detail: `krun_create_ctx ok, blk feature ${blk === 1 ? "on" : "off"}` };
  } catch (e) {
    return {
      name: "libkrun loads",
      ok: false,
      detail: (e as Error).message.split("\n")[0],
      fix: "run `./dev setup`, or set KRUNBOX_LIBKRUN_PATH",
    };
  }
}

/** An optional library: without it krunbox works, with `without` as the consequence. */
function libraryCheck(
  name: string,
  library: OptionalLibrary<Deno.ForeignLibraryInterface>,
  use: string,
  without: string,
  debianPackage: string,
): Check {
  if (library.load()) return { name, ok: true, detail: `${library.path} (${use})` };
  return {
    name,
    ok: false,
    detail: `not loadable (${library.errors().join("; ")}); ${without}`,
    fix: `apt-get install ${debianPackage}, or set ${library.envVar} to a ${library.soname}`,
  };
}

/** Runs the doctor: prints every check; resolves 0 when a backend can run. */
export async function main(): Promise<number> {
  const host = await probeHost();
  const qemu = await qemuChecks();
  const checks: Check[] = [
    denoCheck(),
    await homeCheck(),
    {
      name: "hardware virtualization",
      ok: host.hardwareFlag !== undefined,
      detail: host.hardwareFlag ? `CPU flag ${host.hardwareFlag}` : "the CPU advertises neither vmx nor svm",
      fix: host.hardwareFlag
        ? undefined
        : "libkrun needs a host with VT-x/AMD-V (or nested virtualization enabled); qemu works without",
    },
    {
      name: "/dev/kvm",
      ok: host.kvmUsable,
      detail: host.kvmUsable ? "opens read-write" : host.kvmProblem ?? "unusable",
      fix: host.kvmUsable ? undefined : "load kvm_intel/kvm_amd and give this user read-write access (kvm group)",
    },
    await checkAsset("libkrun"),
    await checkAsset("libkrunfw"),
    libkrunfwLoadable(),
    libkrunLoadable(),
    ...qemu,
    libraryCheck("ISA-L inflate", isalLibrary, "image pulls", "pulls use the slower built-in gunzip", "libisal2"),
    libraryCheck("libzstd", zstdLibrary, "tar+zstd layers", "images with zstd layers cannot be pulled", "libzstd1"),
  ];
  const width = Math.max(...checks.map((c) => c.name.length));
  for (const c of checks) {
    console.log(
      `${c.ok ? " ok " : "FAIL"}  ${c.name.padEnd(width)}  ${c.detail}${
        c.ok || !c.fix ? "" : `\n      ${"".padEnd(width)}  fix: ${c.fix}`
      }`,
    );
  }
  const decision = chooseBackend("auto", host);
  console.log(`\nbackend auto → ${decision.backend}: ${decision.reason}`);
  const qemuOk = qemu.every((c) => c.ok);
  const libkrunOk = checks.find((c) => c.name === "libkrun loads")?.ok && host.hardwareFlag && host.kvmUsable;
  return qemuOk || libkrunOk ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());
