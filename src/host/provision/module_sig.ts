/**
 * Kernel module signatures, taken off the modules guests load. Debian signs
 * every module (sha256 + RSA) and its kernel checks a signature on each
 * load (`CONFIG_MODULE_SIG`, not enforced): under TCG hashing a module and
 * verifying RSA was ~70–90 ms of a cold boot's module step (boot_phases
 * pairs, 21 modules). An unsigned module loads the same and taints the guest
 * kernel `E`. The modules come from the package apt verified, into the
 * guest's own initramfs; the guest is root in its VM anyway.
 *
 * @module
 */

import { BackendUnavailableError } from "../../errors.ts";

/** The trailer the kernel looks for (`MODULE_SIG_STRING` + newline). */
const MARKER = new TextEncoder().encode("~Module signature appended~\n");
/** `struct module_signature`: algo, hash, id_type, signer_len, key_id_len, pad[3], sig_len (be32). */
const INFO_BYTES = 12;
/** `id_type` of every signature `sign-file` writes. */
const PKEY_ID_PKCS7 = 2;

/**
 * A module's bytes without its appended signature (the same bytes when it
 * has none).
 *
 * @example
 * ```ts
 * import { stripModuleSignature } from "./module_sig.ts";
 * const ko = new TextEncoder().encode("\x7fELF...");
 * console.log(stripModuleSignature(ko) === ko); // true: unsigned already
 * ```
 */
export function stripModuleSignature(ko: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
  const tail = ko.length - MARKER.length;
  if (tail < 0 || !MARKER.every((b, i) => ko[tail + i] === b)) return ko;
  const infoAt = tail - INFO_BYTES;
  const sigLen = infoAt < 0 ? -1 : new DataView(ko.buffer, ko.byteOffset + infoAt + 8, 4).getUint32(0, false);
  // As the kernel's mod_check_sig: a PKCS#7 signature that leaves a module before it.
  if (sigLen < 0 || sigLen >= infoAt || ko[infoAt + 2] !== PKEY_ID_PKCS7) {
    throw new BackendUnavailableError(
      "qemu",
      "a guest kernel module with a readable signature trailer",
      "the Debian kernel package's modules are damaged: run setup again to fetch them afresh",
    );
  }
  return ko.subarray(0, infoAt - sigLen);
}
