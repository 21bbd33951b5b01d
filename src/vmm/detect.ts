/**
 * Which backend can run here. libkrun needs hardware virtualization: the CPU
 * must advertise `vmx` or `svm` and `/dev/kvm` must open read-write. Without
 * both, KVM on these machines accepts VMs but cannot run a Linux guest (see
 * DESIGN.md, "Facts"), so `auto` picks qemu (TCG) there.
 *
 * @module
 */

import { InvalidConfigError } from "../errors.ts";
import { settings } from "../settings.ts";

/** The backends krunbox has. */
export type BackendKind = "libkrun" | "qemu";

/** What the caller asked for: a backend or `auto`. */
export type BackendChoice = BackendKind | "auto";

/** What the host offers for virtualization. */
export interface HostVirtualization {
  /** The CPU advertises `vmx` (Intel) or `svm` (AMD). */
  readonly hardwareFlag: "vmx" | "svm" | undefined;
  /** `/dev/kvm` opens read-write. */
  readonly kvmUsable: boolean;
  /** Why /dev/kvm is not usable, when it is not. */
  readonly kvmProblem: string | undefined;
  /** The CPU clock in kHz ("cpu MHz"), for guests that should skip TSC calibration. */
  readonly tscKhz?: number;
}

/**
 * Probes the CPU flags and /dev/kvm.
 *
 * @example
 * ```ts
 * import { probeHost } from "./detect.ts";
 * const host = await probeHost();
 * console.log(host.hardwareFlag ?? "no hardware virtualization");
 * ```
 */
export async function probeHost(): Promise<HostVirtualization> {
  let hardwareFlag: "vmx" | "svm" | undefined;
  let tscKhz: number | undefined;
  try {
    const cpuinfo = await Deno.readTextFile("/proc/cpuinfo");
    const flags = cpuinfo.match(/^flags\s*:(.*)$/m)?.[1].split(/\s+/) ?? [];
    hardwareFlag = flags.includes("vmx") ? "vmx" : flags.includes("svm") ? "svm" : undefined;
    const mhz = cpuinfo.match(/^cpu MHz\s*:\s*([\d.]+)/m)?.[1];
    tscKhz = mhz ? Math.round(Number(mhz) * 1000) : undefined;
  } catch {
    hardwareFlag = undefined;
  }
  let kvmUsable = false;
  let kvmProblem: string | undefined;
  try {
    (await Deno.open("/dev/kvm", { read: true, write: true })).close();
    kvmUsable = true;
  } catch (e) {
    kvmProblem = e instanceof Deno.errors.NotFound
      ? "/dev/kvm does not exist (load kvm_intel or kvm_amd)"
      : e instanceof Deno.errors.PermissionDenied
      ? "/dev/kvm is not read-write for this user (add the user to the kvm group)"
      : `/dev/kvm cannot be opened: ${(e as Error).message}`;
  }
  return { hardwareFlag, kvmUsable, kvmProblem, tscKhz };
}

/** The backend `auto` resolves to, with the reason in words. */
export interface BackendDecision {
  readonly backend: BackendKind;
  readonly reason: string;
}

/**
 * Resolves a backend choice: an explicit `libkrun`/`qemu` wins, then
 * `KRUNBOX_BACKEND`, then `auto` (libkrun exactly where it can work).
 *
 * @example
 * ```ts
 * import { chooseBackend, probeHost } from "./detect.ts";
 * const { backend, reason } = chooseBackend("auto", await probeHost());
 * console.log(backend, reason);
 * ```
 */
export function chooseBackend(
  requested: BackendChoice,
  host: HostVirtualization,
  env: string | undefined = settings.backend(),
): BackendDecision {
  if (requested !== "auto") return { backend: requested, reason: "requested explicitly" };
  if (env !== undefined && env !== "" && env !== "auto") {
    if (env !== "libkrun" && env !== "qemu") {
      throw new InvalidConfigError("KRUNBOX_BACKEND", `must be auto, libkrun or qemu, got "${env}"`);
    }
    return { backend: env, reason: "KRUNBOX_BACKEND is set" };
  }
  if (host.hardwareFlag && host.kvmUsable) {
    return { backend: "libkrun", reason: `CPU has ${host.hardwareFlag} and /dev/kvm is usable` };
  }
  const why = !host.hardwareFlag
    ? "the CPU advertises no vmx/svm (KVM cannot run Linux guests here)"
    : host.kvmProblem ?? "/dev/kvm is not usable";
  return { backend: "qemu", reason: why };
}
