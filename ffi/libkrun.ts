/**
 * The libkrun C API (header of libkrun 1.19) as one Deno FFI symbols table.
 * Each parameter carries its C declaration; every function returns `int32_t`,
 * >= 0 on success and a negative errno on failure (see `checkKrun`).
 * Functions that appeared after libkrun 1.0 are `optional: true`: they load
 * as `null` from an older library, so callers must check before calling.
 * GPU, sound, display, input and TEE calls are left out: krunbox uses none.
 *
 * @module
 */

import { LibkrunError } from "../src/errors.ts";

/** Log levels of `krun_set_log_level` / `krun_init_log`. */
export const KRUN_LOG_LEVEL = { off: 0, error: 1, warn: 2, info: 3, debug: 4, trace: 5 } as const;
/** `krun_add_disk2` formats. */
export const KRUN_DISK_FORMAT = { raw: 0, qcow2: 1, vmdk: 2 } as const;
/** `krun_set_kernel` formats. */
export const KRUN_KERNEL_FORMAT = { raw: 0, elf: 1, peGz: 2, imageBz2: 3, imageGz: 4, imageZstd: 5 } as const;
/** `krun_has_feature` feature numbers. */
export const KRUN_FEATURE = { net: 0n, blk: 1n, gpu: 2n, snd: 3n, input: 4n, efi: 5n, tee: 6n, initBlob: 11n } as const;
/** `krun_add_vsock` TSI hijack flags. */
export const KRUN_TSI = { hijackInet: 1, hijackUnix: 2 } as const;
/**
 * `krun_add_net_*` virtio-net feature bits (`KRUN_NET_FEATURE_*`). krunbox
 * passes none: netd's stack takes plain, checksummed frames.
 */
export const KRUN_NET_FEATURE = {
  csum: 1 << 0,
  guestCsum: 1 << 1,
  guestTso4: 1 << 7,
  guestUfo: 1 << 10,
  hostTso4: 1 << 11,
  hostUfo: 1 << 14,
} as const;
/** The length of the MAC address `krun_add_net_*` reads from `c_mac`. */
export const KRUN_MAC_BYTES = 6;
/** The tag of the root virtiofs device (`KRUN_FS_ROOT_TAG`). */
export const KRUN_FS_ROOT_TAG = "/dev/root";

/** The symbols table: pass to `Deno.dlopen` (see `load.ts`). */
export const LIBKRUN_SYMBOLS = {
  // int32_t krun_set_log_level(uint32_t level)
  krun_set_log_level: { parameters: ["u32" /* uint32_t level */], result: "i32" },
  // int32_t krun_init_log(int target_fd, uint32_t level, uint32_t style, uint32_t options)
  krun_init_log: {
    parameters: [
      "i32", /* int target_fd */
      "u32", /* uint32_t level */
      "u32", /* uint32_t style */
      "u32", /* uint32_t options */
    ],
    result: "i32",
    optional: true,
  },
  // int32_t krun_create_ctx(void)
  krun_create_ctx: { parameters: [], result: "i32" },
  // int32_t krun_free_ctx(uint32_t ctx_id)
  krun_free_ctx: { parameters: ["u32" /* uint32_t ctx_id */], result: "i32" },
  // int32_t krun_set_vm_config(uint32_t ctx_id, uint8_t num_vcpus, uint32_t ram_mib)
  krun_set_vm_config: {
    parameters: ["u32", /* uint32_t ctx_id */ "u8", /* uint8_t num_vcpus */ "u32" /* uint32_t ram_mib */],
    result: "i32",
  },
  // int32_t krun_set_root(uint32_t ctx_id, const char *root_path)
  krun_set_root: { parameters: ["u32", /* uint32_t ctx_id */ "buffer" /* const char *root_path */], result: "i32" },
  // int32_t krun_add_virtiofs(uint32_t ctx_id, const char *c_tag, const char *c_path)
  krun_add_virtiofs: {
    parameters: ["u32", /* uint32_t ctx_id */ "buffer", /* const char *c_tag */ "buffer" /* const char *c_path */],
    result: "i32",
    optional: true,
  },
  // int32_t krun_add_virtiofs3(uint32_t ctx_id, const char *c_tag, const char *c_path, uint64_t shm_size, bool read_only)
  krun_add_virtiofs3: {
    parameters: [
      "u32", /* uint32_t ctx_id */
      "buffer", /* const char *c_tag */
      "buffer", /* const char *c_path */
      "u64", /* uint64_t shm_size */
      "bool", /* bool read_only */
    ],
    result: "i32",
    optional: true,
  },
  // int32_t krun_add_disk2(uint32_t ctx_id, const char *block_id, const char *disk_path, uint32_t disk_format, bool read_only)
  krun_add_disk2: {
    parameters: [
      "u32", /* uint32_t ctx_id */
      "buffer", /* const char *block_id */
      "buffer", /* const char *disk_path */
      "u32", /* uint32_t disk_format */
      "bool", /* bool read_only */
    ],
    result: "i32",
    optional: true,
  },
  // int32_t krun_set_port_map(uint32_t ctx_id, const char *const port_map[])
  krun_set_port_map: {
    parameters: ["u32", /* uint32_t ctx_id */ "buffer" /* const char *const port_map[] */],
    result: "i32",
  },
  // int32_t krun_set_rlimits(uint32_t ctx_id, const char *const rlimits[])
  krun_set_rlimits: {
    parameters: ["u32", /* uint32_t ctx_id */ "buffer" /* const char *const rlimits[] */],
    result: "i32",
  },
  // int32_t krun_set_workdir(uint32_t ctx_id, const char *workdir_path)
  krun_set_workdir: {
    parameters: ["u32", /* uint32_t ctx_id */ "buffer" /* const char *workdir_path */],
    result: "i32",
  },
  // int32_t krun_set_exec(uint32_t ctx_id, const char *exec_path, const char *const argv[], const char *const envp[])
  krun_set_exec: {
    parameters: [
      "u32", /* uint32_t ctx_id */
      "buffer", /* const char *exec_path */
      "buffer", /* const char *const argv[] */
      "buffer", /* const char *const envp[] */
    ],
    result: "i32",
  },
  // int32_t krun_set_env(uint32_t ctx_id, const char *const envp[])
  krun_set_env: {
    parameters: ["u32", /* uint32_t ctx_id */ "buffer" /* const char *const envp[] */],
    result: "i32",
    optional: true,
  },
  // int32_t krun_set_kernel(uint32_t ctx_id, const char *kernel_path, uint32_t kernel_format, const char *initramfs, const char *cmdline)
  krun_set_kernel: {
    parameters: [
      "u32", /* uint32_t ctx_id */
      "buffer", /* const char *kernel_path */
      "u32", /* uint32_t kernel_format */
      "buffer", /* const char *initramfs (nullable) */
      "buffer", /* const char *cmdline (nullable) */
    ],
    result: "i32",
    optional: true,
  },
  // int32_t krun_add_vsock_port(uint32_t ctx_id, uint32_t port, const char *c_filepath)
  krun_add_vsock_port: {
    parameters: ["u32", /* uint32_t ctx_id */ "u32", /* uint32_t port */ "buffer" /* const char *c_filepath */],
    result: "i32",
    optional: true,
  },
  // int32_t krun_add_vsock_port2(uint32_t ctx_id, uint32_t port, const char *c_filepath, bool listen)
  krun_add_vsock_port2: {
    parameters: [
      "u32", /* uint32_t ctx_id */
      "u32", /* uint32_t port */
      "buffer", /* const char *c_filepath */
      "bool", /* bool listen */
    ],
    result: "i32",
    optional: true,
  },
  // int32_t krun_add_vsock(uint32_t ctx_id, uint32_t tsi_features)
  krun_add_vsock: {
    parameters: ["u32", /* uint32_t ctx_id */ "u32" /* uint32_t tsi_features */],
    result: "i32",
    optional: true,
  },
  // int32_t krun_add_net_unixstream(uint32_t ctx_id, const char *c_path, int fd, uint8_t *const c_mac,
  //                                 uint32_t features, uint32_t flags)
  // A virtio-net device whose backend is a unix stream of 4-byte big-endian length-prefixed frames
  // (QEMU's stream netdev framing). `c_path` and `fd` exclude each other (fd -1 to connect to c_path).
  // Adding one disables TSI; krun_set_port_map then fails with -ENOTSUP.
  krun_add_net_unixstream: {
    parameters: [
      "u32", /* uint32_t ctx_id */
      "buffer", /* const char *c_path (nullable) */
      "i32", /* int fd */
      "buffer", /* uint8_t *const c_mac (6 bytes) */
      "u32", /* uint32_t features (KRUN_NET_FEATURE_*) */
      "u32", /* uint32_t flags */
    ],
    result: "i32",
    optional: true,
  },
  // int32_t krun_disable_implicit_vsock(uint32_t ctx_id)
  krun_disable_implicit_vsock: { parameters: ["u32" /* uint32_t ctx_id */], result: "i32", optional: true },
  // int32_t krun_disable_implicit_console(uint32_t ctx_id)
  krun_disable_implicit_console: { parameters: ["u32" /* uint32_t ctx_id */], result: "i32", optional: true },
  // int32_t krun_disable_implicit_init(uint32_t ctx_id)
  krun_disable_implicit_init: { parameters: ["u32" /* uint32_t ctx_id */], result: "i32", optional: true },
  // int32_t krun_fs_add_overlay_file(uint32_t ctx_id, const char *fs_tag, const char *path, const uint8_t *data,
  //                                  size_t data_len, uint32_t mode, bool one_shot)
  krun_fs_add_overlay_file: {
    parameters: [
      "u32", /* uint32_t ctx_id */
      "buffer", /* const char *fs_tag */
      "buffer", /* const char *path */
      "buffer", /* const uint8_t *data */
      "usize", /* size_t data_len */
      "u32", /* uint32_t mode */
      "bool", /* bool one_shot */
    ],
    result: "i32",
    optional: true,
  },
  // int32_t krun_fs_add_overlay_dir(uint32_t ctx_id, const char *fs_tag, const char *path, uint32_t mode)
  krun_fs_add_overlay_dir: {
    parameters: [
      "u32", /* uint32_t ctx_id */
      "buffer", /* const char *fs_tag */
      "buffer", /* const char *path */
      "u32", /* uint32_t mode */
    ],
    result: "i32",
    optional: true,
  },
  // int32_t krun_set_console_output(uint32_t ctx_id, const char *c_filepath)
  krun_set_console_output: {
    parameters: ["u32", /* uint32_t ctx_id */ "buffer" /* const char *c_filepath */],
    result: "i32",
    optional: true,
  },
  // int32_t krun_set_nested_virt(uint32_t ctx_id, bool enabled)
  krun_set_nested_virt: {
    parameters: ["u32", /* uint32_t ctx_id */ "bool" /* bool enabled */],
    result: "i32",
    optional: true,
  },
  // int32_t krun_has_feature(uint64_t feature)
  krun_has_feature: { parameters: ["u64" /* uint64_t feature */], result: "i32", optional: true },
  // int32_t krun_get_max_vcpus(void)
  krun_get_max_vcpus: { parameters: [], result: "i32", optional: true },
  // int32_t krun_start_enter(uint32_t ctx_id) — never returns on success (the process _exits with the guest);
  // called nonblocking so the runner's event loop keeps running beside the VMM threads.
  krun_start_enter: { parameters: ["u32" /* uint32_t ctx_id */], result: "i32", nonblocking: true },
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded library's functions. */
export type LibkrunSymbols = Deno.DynamicLibrary<typeof LIBKRUN_SYMBOLS>["symbols"];

/**
 * Throws a {@link LibkrunError} naming the call when libkrun returned a
 * negative errno; returns the (non-negative) result otherwise.
 *
 * @example
 * ```ts
 * import { checkKrun } from "./libkrun.ts";
 * const ctx = checkKrun("krun_create_ctx", 0);
 * console.log(ctx); // 0 (a non-negative return is the value; a negative one throws LibkrunError)
 * if (ctx !== 0) throw new Error(String(ctx));
 * ```
 */
export function checkKrun(call: keyof typeof LIBKRUN_SYMBOLS, result: number): number {
  if (result < 0) throw new LibkrunError(call, result);
  return result;
}
