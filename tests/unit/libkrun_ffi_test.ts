/**
 * The real libkrun through Deno FFI: it loads, and every configuration call
 * krunbox uses answers as the header promises, for good and bad arguments.
 * (krun_start_enter is not called: this host cannot boot a libkrun VM.)
 * Skipped, with the reason printed, where provisioning could not build it;
 * under CI a missing or unloadable libkrun or libkrunfw fails the run
 * (tests/util/require.ts).
 */

import { macBytes } from "../../src/vmm/libkrun.ts";
import { assert, assertEquals, assertThrows } from "../util/assert.ts";
import { libkrunCandidates, LIBKRUNFW_SONAME, loadLibkrun, loadLibkrunfw } from "../../ffi/load.ts";
import { cstr, CStrings } from "../../ffi/cstring.ts";
import { checkKrun, KRUN_DISK_FORMAT, KRUN_FEATURE, KRUN_FS_ROOT_TAG } from "../../ffi/libkrun.ts";
import { assetPath } from "../../src/store/assets.ts";
import { BackendUnavailableError, LibkrunError } from "../../src/errors.ts";
import { missingLibkrun, missingLibkrunfw, need } from "../util/require.ts";

const EINVAL = -22;
const ENOENT = -2;
const noKrun = need("libkrun", await missingLibkrun(), "libkrun FFI tests");
const noKrunfw = need("libkrunfw", await missingLibkrunfw(), "libkrun FFI tests");
const ignore = noKrun !== undefined || noKrunfw !== undefined;

Deno.test("libkrun: the search order is the explicit path, KRUNBOX_LIBKRUN_PATH, the provisioned copy, the soname", () => {
  const saved = Deno.env.get("KRUNBOX_LIBKRUN_PATH");
  Deno.env.set("KRUNBOX_LIBKRUN_PATH", "/env/libkrun.so.1");
  try {
    assertEquals(libkrunCandidates({ path: "/x/libkrun.so.1", provisioned: "/p/libkrun.so.1" }), [
      "/x/libkrun.so.1",
      "/env/libkrun.so.1",
      "/p/libkrun.so.1",
      "libkrun.so.1",
    ]);
    Deno.env.delete("KRUNBOX_LIBKRUN_PATH");
    assertEquals(libkrunCandidates({ provisioned: "/p/libkrun.so.1" }), ["/p/libkrun.so.1", "libkrun.so.1"]);
  } finally {
    if (saved) Deno.env.set("KRUNBOX_LIBKRUN_PATH", saved);
    else Deno.env.delete("KRUNBOX_LIBKRUN_PATH");
  }
});

Deno.test({ name: "libkrun: a bad explicit path falls through to the next candidate", ignore }, () => {
  using lib = loadLibkrun({ path: "/nonexistent/libkrun.so.1", provisioned: assetPath("libkrun") });
  assert(lib.symbols.krun_create_ctx);
});

Deno.test("libkrun: when nothing loads, the error lists every path tried and the variable to set", () => {
  const saved = Deno.env.get("KRUNBOX_HOME");
  Deno.env.set("KRUNBOX_HOME", "/nonexistent-home");
  try {
    let lib: ReturnType<typeof loadLibkrun> | undefined;
    try {
      lib = loadLibkrun({ path: "/nope/libkrun.so.1", provisioned: assetPath("libkrun") });
    } catch (e) {
      assert(e instanceof BackendUnavailableError);
      for (const p of ["/nope/libkrun.so.1", "/nonexistent-home/assets/libkrun/libkrun.so.1", "KRUNBOX_LIBKRUN_PATH"]) {
        assert(e.message.includes(p), `${p} missing from: ${e.message}`);
      }
    }
    lib?.close(); // a system-wide libkrun.so.1 exists: nothing to assert
  } finally {
    if (saved) Deno.env.set("KRUNBOX_HOME", saved);
    else Deno.env.delete("KRUNBOX_HOME");
  }
});

Deno.test("libkrunfw: when nothing loads, the error lists every path tried", () => {
  let fw: ReturnType<typeof loadLibkrunfw> | undefined;
  try {
    fw = loadLibkrunfw("/nonexistent/libkrunfw.so.5");
  } catch (e) {
    assert(e instanceof BackendUnavailableError);
    assertEquals(e.backend, "libkrun");
    for (const p of ["/nonexistent/libkrunfw.so.5", `${LIBKRUNFW_SONAME}:`, "./dev setup"]) {
      assert(e.message.includes(p), `${p} missing from: ${e.message}`);
    }
  }
  fw?.close(); // a system-wide libkrunfw.so.5 exists: nothing to assert
});

Deno.test({ name: "libkrunfw: the provisioned copy loads", ignore }, () => {
  using fw = loadLibkrunfw(assetPath("libkrunfw"));
  assert(fw);
});

Deno.test({ name: "libkrun: configuration calls return what the header promises", ignore }, () => {
  // libkrun dlopens libkrunfw by soname at the first context: preload our copy.
  using _fw = loadLibkrunfw(assetPath("libkrunfw"));
  using lib = loadLibkrun({ provisioned: assetPath("libkrun") });
  const k = lib.symbols;
  const a = new CStrings();
  const ctx = checkKrun("krun_create_ctx", k.krun_create_ctx());
  assertEquals(k.krun_set_vm_config(ctx, 2, 512), 0);
  assertEquals(k.krun_set_vm_config(ctx, 0, 512), EINVAL);
  assertEquals(k.krun_set_vm_config(ctx, 1, 0), EINVAL);
  assertEquals(k.krun_set_vm_config(ctx + 1000, 1, 512), ENOENT);
  assertEquals(k.krun_set_root(ctx, a.str("/tmp")), 0);
  assertEquals(k.krun_add_disk2!(ctx, a.str("lower"), a.str("/etc/hostname"), KRUN_DISK_FORMAT.raw, true), 0);
  assertEquals(k.krun_add_disk2!(ctx, a.str("bad"), a.str("/etc/hostname"), 99, true), EINVAL);
  assertEquals(k.krun_set_port_map(ctx, a.array(["8080:80"])), 0);
  assertEquals(k.krun_set_port_map(ctx, a.array(["not-a-port"])), EINVAL);
  assertEquals(k.krun_set_rlimits(ctx, a.array(["7=1024:2048"])), 0);
  assertEquals(k.krun_set_workdir(ctx, a.str("/")), 0);
  assertEquals(k.krun_set_exec(ctx, a.str("/init.krun"), a.array(["agent"]), a.array(["A=1"])), 0);
  assertEquals(k.krun_set_env!(ctx, a.array(["B=2"])), 0);
  assertEquals(k.krun_set_console_output!(ctx, a.str("/dev/null")), 0);
  const init = a.bytes(new Uint8Array([0x7f, 0x45, 0x4c, 0x46]));
  assertEquals(
    k.krun_fs_add_overlay_file!(ctx, a.str(KRUN_FS_ROOT_TAG), a.str("/init.krun"), init, 4n, 0o755, false),
    0,
  );
  assertEquals(k.krun_disable_implicit_vsock!(ctx), 0);
  assertEquals(k.krun_add_vsock!(ctx, 0), 0);
  assertEquals(k.krun_add_vsock_port2!(ctx, 1024, a.str("/tmp/krunbox-test.sock"), false), 0);
  assertEquals(k.krun_add_virtiofs3!(ctx, a.str("vol0"), a.str("/tmp"), 0n, true), 0);
  assertEquals(k.krun_has_feature!(KRUN_FEATURE.blk), 1);
  assertEquals(k.krun_has_feature!(99n), EINVAL);
  assert(k.krun_get_max_vcpus!() >= 1);
  assertEquals(k.krun_has_feature!(KRUN_FEATURE.net), 1);
  assertEquals(k.krun_free_ctx(ctx), 0);
  assertEquals(k.krun_free_ctx(ctx), ENOENT);
  // A unix-stream virtio-net device (netd's framing): accepted, and TSI's port map refused after it.
  const net = checkKrun("krun_create_ctx", k.krun_create_ctx());
  const mac = a.bytes(macBytes("5a:94:ef:e4:0c:ee"));
  assertEquals(k.krun_add_net_unixstream!(net, a.str("/tmp/krunbox-test-net.sock"), -1, mac, 0, 0), 0);
  assertEquals(k.krun_set_port_map(net, a.array(["8080:80"])), EINVAL);
  assertEquals(k.krun_free_ctx(net), 0);
  const err = assertThrows(() => checkKrun("krun_set_vm_config", k.krun_set_vm_config(ctx, 1, 512)), LibkrunError);
  assert(err.message.includes("krun_set_vm_config"), err.message);
});

Deno.test({ name: "C strings refuse embedded NUL bytes", ignore: false }, () => {
  assertThrows(() => new CStrings().str("a\0b"), TypeError);
  assertThrows(() => cstr("/tmp/x\0/etc/passwd"), TypeError);
  assertEquals([...cstr("ab")], [0x61, 0x62, 0]);
  const arr = new CStrings().array(["x", "yy"]);
  assertEquals(arr.length, 3 * 8);
  assertEquals(new BigUint64Array(arr.buffer)[2], 0n);
});
