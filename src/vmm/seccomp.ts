/**
 * The share filter: a seccomp filter the qemu runner installs on itself
 * before it starts any file server, so that every `virtiofsd` (and qemu)
 * inherits it. Whatever a guest asks its file server for, the host kernel
 * then refuses to
 *
 * - make a set-user-ID or set-group-ID file: `chmod`, `fchmod`, `fchmodat`,
 *   `fchmodat2` with a mode holding `S_ISUID`/`S_ISGID`, and `open`,
 *   `openat`, `creat`, `mknod`, `mknodat` creating with one → `EPERM`;
 * - make a device node: `mknod`/`mknodat` of `S_IFCHR` or `S_IFBLK` →
 *   `EPERM` (this includes the 0:0 "whiteout" character device, which the
 *   kernel lets even an unprivileged user namespace create);
 * - use calls whose arguments a filter cannot see: `openat2` (its mode is
 *   behind a pointer; virtiofsd falls back to `openat` on `ENOSYS`) and
 *   `io_uring_setup` (io_uring operations bypass seccomp) → `ENOSYS`;
 * - use another system call ABI (i386, x32), which would skip these checks
 *   → `ENOSYS`.
 *
 * Why a filter and not only capabilities: the owner of a file may set its
 * set-user-ID bit with no capability at all, and virtiofsd applies a guest's
 * `chmod` as the owner (root, or the caller's uid in its user namespace), so
 * `--modcaps` cannot forbid `chmod 4755`; see `virtiofsdArgs` in qemu.ts for
 * the rest of the share policy. Nothing the runner itself, qemu or netd does
 * needs these calls. `no_new_privs` comes with the filter (the kernel
 * requires one of the two for an unprivileged caller).
 *
 * @module
 */

import { errnoName, loadLibc } from "../../ffi/libc.ts";
import { BackendUnavailableError } from "../errors.ts";

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS = 0x20;
const JEQ_K = 0x15;
const JGE_K = 0x35;
const JSET_K = 0x45;
const AND_K = 0x54;
const RET_K = 0x06;

// linux/seccomp.h
const RET_ALLOW = 0x7fff0000;
const RET_ERRNO = 0x00050000;
const EPERM = 1;
const ENOSYS = 38;
const AUDIT_ARCH_X86_64 = 0xc000003e;
const X32_SYSCALL_BIT = 0x40000000;

// struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
const NR = 0;
const ARCH = 4;
/** The low 32 bits of argument `i` (little-endian); mode_t is 32 bits, the kernel reads 16. */
const arg = (i: number) => 16 + 8 * i;

const S_IFMT = 0o170000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const SETID = 0o6000;

/** x86_64 system call numbers and which argument is the mode. */
const MODE_ARG: Readonly<Record<string, readonly [nr: number, arg: number]>> = {
  open: [2, 2],
  creat: [85, 1],
  chmod: [90, 1],
  fchmod: [91, 1],
  openat: [257, 3],
  fchmodat: [268, 2],
  fchmodat2: [452, 2],
};
const MKNOD_ARG: Readonly<Record<string, readonly [nr: number, arg: number]>> = {
  mknod: [133, 1],
  mknodat: [259, 2],
};
const UNSUPPORTED = { openat2: 437, io_uring_setup: 425 } as const;

type Insn = readonly [code: number, jt: number, jf: number, k: number];

/**
 * One system call's checks: when `nr` matches, `body` runs and must end in
 * a return; otherwise the jump skips `body` to the next block.
 */
const forSyscall = (nr: number, body: Insn[]): Insn[] => [
  [LD_W_ABS, 0, 0, NR],
  [JEQ_K, 0, body.length, nr],
  ...body,
];

/**
 * The share filter's program: `struct sock_filter` entries, 8 bytes each.
 *
 * @example
 * ```ts
 * import { shareFilter } from "./seccomp.ts";
 * console.log(shareFilter().length / 8, "instructions");
 * ```
 */
export function shareFilter(): Uint8Array {
  const deny = (errno: number): Insn => [RET_K, 0, 0, RET_ERRNO | errno];
  const allow: Insn = [RET_K, 0, 0, RET_ALLOW];
  const insns: Insn[] = [
    [LD_W_ABS, 0, 0, ARCH],
    [JEQ_K, 1, 0, AUDIT_ARCH_X86_64],
    deny(ENOSYS),
    [LD_W_ABS, 0, 0, NR],
    [JGE_K, 0, 1, X32_SYSCALL_BIT],
    deny(ENOSYS),
  ];
  for (const [nr, i] of Object.values(MODE_ARG)) {
    insns.push(...forSyscall(nr, [
      [LD_W_ABS, 0, 0, arg(i)],
      [JSET_K, 0, 1, SETID],
      deny(EPERM),
      allow,
    ]));
  }
  for (const [nr, i] of Object.values(MKNOD_ARG)) {
    insns.push(...forSyscall(nr, [
      [LD_W_ABS, 0, 0, arg(i)],
      [JSET_K, 3, 0, SETID], // → deny
      [AND_K, 0, 0, S_IFMT],
      [JEQ_K, 1, 0, S_IFCHR], // → deny
      [JEQ_K, 0, 1, S_IFBLK], // → deny, else allow
      deny(EPERM),
      allow,
    ]));
  }
  for (const nr of Object.values(UNSUPPORTED)) insns.push(...forSyscall(nr, [deny(ENOSYS)]));
  insns.push(allow);

  const out = new Uint8Array(insns.length * 8);
  const view = new DataView(out.buffer);
  insns.forEach(([code, jt, jf, k], n) => {
    view.setUint16(n * 8, code, true);
    view.setUint8(n * 8 + 2, jt);
    view.setUint8(n * 8 + 3, jf);
    view.setUint32(n * 8 + 4, k >>> 0, true);
  });
  return out;
}

let installed = false;

/**
 * Installs the share filter on this process (once; it cannot be removed).
 * Fails closed: where it cannot be installed no share may be served, so this
 * throws {@link BackendUnavailableError}.
 *
 * @example
 * ```ts
 * import { installShareFilter } from "./seccomp.ts";
 * // In the qemu runner, before the first virtiofsd starts:
 * installShareFilter();
 * ```
 */
export function installShareFilter(): void {
  if (installed) return;
  if (Deno.build.arch !== "x86_64") {
    throw new BackendUnavailableError(
      "qemu",
      `the share filter is written for x86_64, not ${Deno.build.arch}`,
      "run krunbox on an x86_64 host",
    );
  }
  const libc = loadLibc();
  const rc = libc ? libc.installSeccompFilter(shareFilter()) : -1;
  if (rc !== 0) {
    throw new BackendUnavailableError(
      "qemu",
      `cannot install the seccomp filter that keeps guests from creating device nodes and setuid files on shared host directories (${
        rc < 0 ? "libc could not be loaded through FFI" : errnoName(rc)
      })`,
      "run the runner with --allow-ffi on a kernel with seccomp filters (CONFIG_SECCOMP_FILTER)",
    );
  }
  installed = true;
}
