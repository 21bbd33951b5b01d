import { assertEquals, assertThrows } from "../util/assert.ts";
import { loadOrder, parseModulesDep } from "../../src/vmm/modules.ts";

const DEP = `kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
`;

Deno.test("modules.dep parses into names with dependencies", () => {
  const idx = parseModulesDep(DEP);
  assertEquals(idx.virtio_blk.deps, ["virtio", "virtio_ring"]);
  assertEquals(idx["kvm-amd"].file, "kernel/arch/x86/kvm/kvm-amd.ko");
});

Deno.test("load order puts every dependency first, each module once", () => {
  const idx = parseModulesDep(DEP);
  assertEquals(loadOrder(idx, ["virtio_blk", "overlay", "virtio"]), ["virtio_ring", "virtio", "virtio_blk", "overlay"]);
  assertEquals(loadOrder(idx, ["kvm-amd"]), ["irqbypass", "kvm", "kvm-amd"]);
});

Deno.test("a module missing from the kernel is a clear error", () => {
  const e = assertThrows(() => loadOrder(parseModulesDep(DEP), ["nope"]), Error);
  assertEquals(e.message.includes("nope"), true);
});
