/**
 * Caps per pull: whatever a layer says (pax headers, long names, xattrs,
 * sparse or huge sizes, millions of entries), building one image holds a
 * bounded amount of memory and writes a bounded amount to disk. Layers are
 * parsed before their digest is known to be right (a pinned digest on a
 * hostile mirror still streams hostile bytes), so the caps apply while
 * they stream. Each cap is a setting (`src/settings.ts`); going over one is
 * `ImageError("IMAGE_INVALID")` naming the limit and the variable that
 * raises it.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { settings } from "../settings.ts";

/**
 * The caps of one image build.
 *
 * @example
 * ```ts
 * import { pullCaps } from "./limits.ts";
 * console.log(pullCaps().maxEntries); // 1000000 unless KRUNBOX_PULL_MAX_ENTRIES says otherwise
 * ```
 */
export interface PullCaps {
  /** Uncompressed bytes of every layer's tar stream together (`KRUNBOX_PULL_MAX_BYTES`). */
  readonly maxBytes: number;
  /** Tar entries of every layer together (`KRUNBOX_PULL_MAX_ENTRIES`). */
  readonly maxEntries: number;
  /** Characters of entry names and link targets held while the image is built (`KRUNBOX_PULL_MAX_NAME_BYTES`). */
  readonly maxNameBytes: number;
  /** xattr bytes, names and values, of every entry together (`KRUNBOX_PULL_MAX_XATTR_BYTES`). */
  readonly maxXattrBytes: number;
  /** xattr bytes of one entry (`KRUNBOX_PULL_MAX_ENTRY_XATTR_BYTES`). */
  readonly maxEntryXattrBytes: number;
  /** One pax header or GNU long name, and the pax records in force at once (`KRUNBOX_PULL_MAX_PAX_BYTES`). */
  readonly maxPaxBytes: number;
  /** Small-file bytes held in memory; past it they go to disk (`KRUNBOX_PULL_MEMORY_BYTES`). */
  readonly memoryBytes: number;
}

/**
 * The most bytes an image can address: EROFS block numbers are 32 bits.
 * A larger `KRUNBOX_PULL_MAX_BYTES` is cut to this, so no layer can make
 * a block number wrap.
 */
const EROFS_MAX_BYTES = 2 ** 32 * 4096 - 2 ** 30;

/**
 * The caps as the settings say now.
 *
 * @example
 * ```ts
 * import { pullCaps } from "./limits.ts";
 * Deno.env.set("KRUNBOX_PULL_MAX_ENTRIES", "5000");
 * console.log(pullCaps().maxEntries); // 5000
 * ```
 */
export function pullCaps(): PullCaps {
  return {
    maxBytes: Math.min(settings.pullMaxBytes(), EROFS_MAX_BYTES),
    maxEntries: settings.pullMaxEntries(),
    maxNameBytes: settings.pullMaxNameBytes(),
    maxXattrBytes: settings.pullMaxXattrBytes(),
    maxEntryXattrBytes: settings.pullMaxEntryXattrBytes(),
    maxPaxBytes: settings.pullMaxPaxBytes(),
    memoryBytes: settings.pullMemoryBytes(),
  };
}

/**
 * The variable behind each cap.
 *
 * @example
 * ```ts
 * import { CAP_VARIABLES } from "./limits.ts";
 * console.log(CAP_VARIABLES.maxEntries); // KRUNBOX_PULL_MAX_ENTRIES
 * ```
 */
export const CAP_VARIABLES: Readonly<Record<keyof PullCaps, string>> = {
  maxBytes: "KRUNBOX_PULL_MAX_BYTES",
  maxEntries: "KRUNBOX_PULL_MAX_ENTRIES",
  maxNameBytes: "KRUNBOX_PULL_MAX_NAME_BYTES",
  maxXattrBytes: "KRUNBOX_PULL_MAX_XATTR_BYTES",
  maxEntryXattrBytes: "KRUNBOX_PULL_MAX_ENTRY_XATTR_BYTES",
  maxPaxBytes: "KRUNBOX_PULL_MAX_PAX_BYTES",
  memoryBytes: "KRUNBOX_PULL_MEMORY_BYTES",
};

/**
 * The error for going over a cap: `what` (the entry and the amount), the
 * limit, and the variable that raises it.
 *
 * @example
 * ```ts
 * import { overCap, pullCaps } from "./limits.ts";
 * const e = overCap(pullCaps(), "maxPaxBytes", 'pax header "x" (offset 0) is 2000000 bytes');
 * console.log(e.message); // …over the limit of 1048576 bytes (KRUNBOX_PULL_MAX_PAX_BYTES raises it)
 * ```
 */
export function overCap(caps: PullCaps, cap: Exclude<keyof PullCaps, "memoryBytes">, what: string): ImageError {
  const unit = cap === "maxEntries" ? "entries" : cap === "maxNameBytes" ? "characters" : "bytes";
  const scope = cap === "maxEntryXattrBytes" || cap === "maxPaxBytes" ? "" : " per image";
  return new ImageError(
    "IMAGE_INVALID",
    `invalid layer: ${what}, over the limit of ${caps[cap]} ${unit}${scope} (${CAP_VARIABLES[cap]} raises it)`,
  );
}

/**
 * What one image build has used of its caps, shared by the layers it reads
 * at once. Each `charge…` throws {@link overCap}'s error when it would go
 * over, and counts nothing then; `where` (called only then) names the
 * entry for the message.
 *
 * @example
 * ```ts
 * import { PullUsage } from "./limits.ts";
 * const usage = new PullUsage();
 * usage.chargeEntry(() => '"etc/passwd" (offset 0)');
 * console.log(usage.entries); // 1
 * ```
 */
export class PullUsage {
  /** The caps in force. */
  readonly caps: PullCaps;
  /** Uncompressed tar bytes read so far. */
  bytes = 0;
  /** Entries read so far. */
  entries = 0;
  /** Name and link-target characters held. */
  nameBytes = 0;
  /** xattr bytes held. */
  xattrBytes = 0;

  /** Usage against `caps` (default: the settings now). */
  constructor(caps: PullCaps = pullCaps()) {
    this.caps = caps;
  }

  /** Counts `n` bytes of a tar stream as they are read. */
  chargeBytes(n: number): void {
    if (this.bytes + n > this.caps.maxBytes) {
      throw overCap(this.caps, "maxBytes", `the layers' tar streams reach ${this.bytes + n} bytes`);
    }
    this.bytes += n;
  }

  /**
   * Fails at once when a file's declared size cannot fit what is left, so a
   * huge (or sparse-looking) entry is refused at its header, before its
   * bytes are written out.
   */
  expectBytes(size: number, where: () => string): void {
    if (this.bytes + size > this.caps.maxBytes) {
      throw overCap(this.caps, "maxBytes", `${where()} says it has ${size} bytes, with ${this.bytes} already read`);
    }
  }

  /** Counts one entry. */
  chargeEntry(where: () => string): void {
    if (this.entries + 1 > this.caps.maxEntries) {
      throw overCap(this.caps, "maxEntries", `${where()} is entry number ${this.entries + 1}`);
    }
    this.entries++;
  }

  /** Counts the name and link-target characters an entry's record holds. */
  chargeNames(chars: number, where: () => string): void {
    if (this.nameBytes + chars > this.caps.maxNameBytes) {
      throw overCap(this.caps, "maxNameBytes", `${where()} takes the names to ${this.nameBytes + chars} characters`);
    }
    this.nameBytes += chars;
  }

  /** Counts an entry's xattrs (names and values), against the per-entry and the per-image cap. */
  chargeXattrs(xattrs: ReadonlyMap<string, Uint8Array>, where: () => string): void {
    if (xattrs.size === 0) return;
    let bytes = 0;
    for (const [name, value] of xattrs) bytes += name.length + value.length;
    if (bytes > this.caps.maxEntryXattrBytes) {
      throw overCap(this.caps, "maxEntryXattrBytes", `${where()} has ${bytes} bytes of xattrs`);
    }
    if (this.xattrBytes + bytes > this.caps.maxXattrBytes) {
      throw overCap(this.caps, "maxXattrBytes", `${where()} takes the xattrs to ${this.xattrBytes + bytes} bytes`);
    }
    this.xattrBytes += bytes;
  }
}
