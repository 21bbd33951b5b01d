import { assertEquals, assertThrows } from "../util/assert.ts";
import { chooseBackend, probeHost } from "../../src/vmm/detect.ts";
import { InvalidConfigError } from "../../src/errors.ts";

const withHw = { hardwareFlag: "svm" as const, kvmUsable: true, kvmProblem: undefined };
const noHw = { hardwareFlag: undefined, kvmUsable: true, kvmProblem: undefined };

Deno.test("auto picks libkrun only with vmx/svm and a usable /dev/kvm", () => {
  assertEquals(chooseBackend("auto", withHw, "").backend, "libkrun");
  assertEquals(chooseBackend("auto", noHw, "").backend, "qemu");
  assertEquals(chooseBackend("auto", { ...withHw, kvmUsable: false, kvmProblem: "x" }, "").backend, "qemu");
});

Deno.test("explicit choice and KRUNBOX_BACKEND override auto", () => {
  assertEquals(chooseBackend("libkrun", noHw, "qemu").backend, "libkrun");
  assertEquals(chooseBackend("auto", withHw, "qemu").backend, "qemu");
  assertThrows(() => chooseBackend("auto", withHw, "vmware"), InvalidConfigError);
});

Deno.test("this host is probed truthfully", async () => {
  const host = await probeHost();
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo");
  const hasFlag = /^flags\s*:.*\b(vmx|svm)\b/m.test(cpuinfo);
  assertEquals(host.hardwareFlag !== undefined, hasFlag);
});
