/**
 * The nested test host: an L1 VM where libkrun can run on these machines.
 * The machines here have KVM without hardware virtualization, but QEMU's
 * TCG emulates AMD SVM (`-cpu max`): inside an L1 booted by krunbox's own
 * qemu backend with `kvm-amd` loaded, /dev/kvm works with nested paging.
 *
 * The L1 is an ordinary krunbox sandbox: a Debian root (mmdebstrap, cached)
 * as an ext4 disk image (a real filesystem with xattrs for the L1's state
 * home). The project, the provisioned assets, Deno and any extra share come
 * in read-only over virtiofs and are copied to that disk at boot, so the L1
 * runs them from a disk of its own as a real host would: a virtiofs share
 * that may change on the host (cache=auto) drops a file's cached pages at
 * each open, and every Deno process started from the share read its binary
 * again (its bare start: 0.84–1.48 s from the share, 0.63–0.87 s from the
 * L1's disk).
 *
 * @module
 */

import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { debianRoot } from "../../scripts/roots.ts";
import { homeLayout } from "../../src/store/home.ts";
import { runCommand } from "../../src/util/command.ts";
import { Sandbox } from "../../mod.ts";

/** Where the L1 sees the project, the assets and Deno. */
export const L1 = {
  project: "/work/krunbox",
  assets: "/opt/krunbox-assets",
  denoDir: "/opt/deno",
  home: "/var/lib/krunbox",
} as const;

/**
 * Packages of the L1's Debian root besides minbase (bubblewrap: the libkrun
 * runner runs only under it). The cached root is keyed by this list
 * (scripts/roots.ts): changing it rebuilds the root.
 */
const L1_PACKAGES = ["busybox-static", "libisal2", "e2fsprogs", "ca-certificates", "bubblewrap"];

/**
 * Boots an L1 with kvm-amd loaded. The caller owns the returned sandbox.
 *
 * @example
 * ```ts
 * import { bootNestedHost } from "./host.ts";
 * await using l1 = await bootNestedHost("l1");
 * console.log((await l1.exec("ls", ["-l", "/dev/kvm"])).stdout);
 * ```
 */
export async function bootNestedHost(
  name: string,
  extraShares: readonly { guestPath: string; hostPath: string }[] = [],
): Promise<Sandbox> {
  const root = await debianRoot(L1_PACKAGES, "nested-host");
  const work = await Deno.makeTempDir({ prefix: "krunbox-l1-" });
  const disk = join(work, "root.ext4");
  await runCommand("mkfs.ext4", ["-q", "-F", "-d", root, "-E", "lazy_itable_init=1,lazy_journal_init=1", disk, "4G"]);
  const previous = Deno.env.get("KRUNBOX_GUEST_MODULES");
  Deno.env.set("KRUNBOX_GUEST_MODULES", "kvm-amd");
  try {
    const project = fileURLToPath(new URL("../..", import.meta.url));
    let builder = Sandbox.builder(name).image(disk).cpus(2).memory(3072).backend("qemu").replace()
      // The host profile: the L1 reaches the outer host's loopback services (a test registry) as host.krunbox.internal.
      .network((n) => n.policy("public", "host"));
    const shares = [
      { guestPath: L1.project, hostPath: project },
      { guestPath: L1.assets, hostPath: homeLayout().assets },
      { guestPath: L1.denoDir, hostPath: dirname(Deno.execPath()) },
      ...extraShares,
    ];
    // Each share is mounted under /mnt/share-N and copied to its path on the L1's disk (the project without the
    // agent's build tree and git's objects).
    const copies = shares.map((s, i) => {
      builder = builder.volume(`/mnt/share-${i}`, (v) => v.bind(s.hostPath, { readonly: true }));
      return `mkdir -p ${s.guestPath} && tar -C /mnt/share-${i} --exclude=./agent/target --exclude=./.git -cf - . | ` +
        `tar -C ${s.guestPath} -xf -`;
    });
    const sb = await builder.create();
    const setup = await sb.shell(
      `set -e; ${copies.join("; ")}; mkdir -p ${L1.home} && ln -sfn ${L1.assets} ${L1.home}/assets && ` +
        `test -c /dev/kvm && grep -qw svm /proc/cpuinfo`,
    );
    if (!setup.success) {
      await sb.kill();
      throw new Error(`the L1 has no usable /dev/kvm or svm flag: ${setup.stderr}`);
    }
    return sb;
  } finally {
    if (previous === undefined) Deno.env.delete("KRUNBOX_GUEST_MODULES");
    else Deno.env.set("KRUNBOX_GUEST_MODULES", previous);
    // The disk is open by qemu; removing its directory entry is fine.
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}
