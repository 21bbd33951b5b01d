#!/usr/bin/env python3
"""Boots the agent as PID 1 in a qemu/KVM VM and talks to it (init mode).

Not part of `cargo test` (it needs root, qemu and a Debian kernel package).
Usage:
    python3 scripts/vm_smoke.py AGENT_BINARY [WORKDIR]

WORKDIR (default /tmp/krunbox-vm-smoke) receives the Debian packages
linux-image-*-cloud-amd64 and busybox-static (fetched with `apt-get download`
when missing), the initramfs and the disk images. Two boots are checked:
  1. initramfs root, virtio-serial transport, user-mode network config;
  2. overlay root (erofs lower disk + ext4 upper disk) with switch_root.
"""
import glob, json, os, shutil, socket, struct, subprocess, sys, time

AGENT = os.path.abspath(sys.argv[1])
WORK = sys.argv[2] if len(sys.argv) > 2 else "/tmp/krunbox-vm-smoke"
os.makedirs(WORK, exist_ok=True)
MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
           "virtio_console", "virtio_blk", "overlay", "libcrc32c", "erofs", "failover", "net_failover", "virtio_net"]


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def prepare():
    pkgs = os.path.join(WORK, "pkgs")
    if not os.path.isdir(pkgs):
        os.makedirs(pkgs)
        dep = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"], capture_output=True, text=True).stdout
        image = [l.split(":")[1].strip() for l in dep.splitlines() if "Depends: linux-image-" in l][0]
        sh("apt-get", "download", image, "busybox-static", cwd=WORK)
        for deb in glob.glob(os.path.join(WORK, "*.deb")):
            sh("dpkg-deb", "-x", deb, pkgs)
    kernel = glob.glob(os.path.join(pkgs, "boot/vmlinuz-*"))[0]
    moddir = glob.glob(os.path.join(pkgs, "lib/modules/*"))[0]
    mods = {}
    for path in glob.glob(os.path.join(moddir, "kernel/**/*.ko"), recursive=True):
        mods[os.path.basename(path)[:-3]] = path
    return kernel, [mods[m] for m in MODULES if m in mods], os.path.join(pkgs, "bin/busybox")


def newc(entries):
    """A cpio newc archive from (name, mode, data-or-None-for-dir)."""
    out = bytearray()
    for i, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")]):
        data = data or b""
        nm = name.encode() + b"\0"
        hdr = "070701" + "".join("%08x" % v for v in
                                 [i + 1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nm), 0])
        out += hdr.encode() + nm
        out += b"\0" * ((4 - len(out) % 4) % 4)
        out += data
        out += b"\0" * ((4 - len(out) % 4) % 4)
    return bytes(out)


def initramfs(path, boot, modules, busybox):
    entries = [("dev", 0o40755, None), ("proc", 0o40755, None), ("sys", 0o40755, None), ("krunbox", 0o40755, None),
               ("lib", 0o40755, None), ("lib/modules", 0o40755, None), ("bin", 0o40755, None),
               ("etc", 0o40755, None), ("root", 0o40700, None), ("tmp", 0o41777, None),
               ("init", 0o100755, open(AGENT, "rb").read()),
               ("bin/busybox", 0o100755, open(busybox, "rb").read()),
               ("etc/passwd", 0o100644, b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"),
               ("etc/group", 0o100644, b"root:x:0:\nnogroup:x:65534:\n"),
               ("krunbox/boot.json", 0o100644, json.dumps(boot).encode())]
    for m in modules:
        entries.append(("lib/modules/" + os.path.basename(m), 0o100644, open(m, "rb").read()))
    for tool in ["sh", "ls", "cat", "echo", "sleep", "uname", "hostname", "ip", "stty", "id", "mount", "true"]:
        entries.append(("bin/" + tool, 0o120777, b"busybox"))
    open(path, "wb").write(newc(entries))


class Client:
    def __init__(self, path, timeout=60):
        deadline = time.time() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        self.s.settimeout(timeout)
        self.next_id, self.backlog = 1, []
        self.ready = self.read()[0]
        assert self.ready["method"] == "ready", self.ready

    def recvn(self, n):
        buf = b""
        while len(buf) < n:
            c = self.s.recv(n - len(buf))
            if not c:
                raise EOFError
            buf += c
        return buf

    def read(self):
        h, b = struct.unpack(">II", self.recvn(8))
        return json.loads(self.recvn(h)), self.recvn(b) if b else b""

    def send(self, obj, att=b""):
        j = json.dumps(obj).encode()
        self.s.sendall(struct.pack(">II", len(j), len(att)) + j + att)

    def call(self, method, params, att=b"", want_error=False):
        i = self.next_id
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": i, "method": method, "params": params}, att)
        while True:
            h, a = self.read()
            if h.get("id") == i and "method" not in h:
                if want_error:
                    assert "error" in h, h
                    return h["error"], a
                assert "error" not in h, (method, h)
                return h["result"], a
            self.backlog.append((h, a))

    def run(self, cmd, *args, **extra):
        res, _ = self.call("exec.start", dict(cmd=cmd, args=list(args), **extra))
        ref, out = self.next_id - 1, b""
        frames, self.backlog = self.backlog, []
        while True:
            h, a = frames.pop(0) if frames else self.read()
            p = h.get("params", {})
            if p.get("ref") != ref:
                continue
            if h["method"] == "exec.out":
                out += a
                self.send({"jsonrpc": "2.0", "method": "exec.ack", "params": {"ref": ref, "bytes": len(a)}})
            elif h["method"] == "exec.exit":
                return out.decode(errors="replace"), p


def boot_vm(name, boot, modules, busybox, kernel, disks=(), net=False):
    d = os.path.join(WORK, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    initramfs(os.path.join(d, "initrd"), boot, modules, busybox)
    sock = os.path.join(d, "agent.sock")
    # KVM when asked (KRUNBOX_SMOKE_ACCEL=kvm); TCG by default, which also
    # works where nested KVM does not boot.
    accel = os.environ.get("KRUNBOX_SMOKE_ACCEL", "tcg")
    cpu = "host" if accel == "kvm" else "max"
    cmd = ["qemu-system-x86_64", "-accel", accel, "-cpu", cpu, "-m", "512", "-smp", "2", "-nographic", "-no-reboot",
           "-kernel", kernel, "-initrd", os.path.join(d, "initrd"), "-append", "console=ttyS0 panic=-1 " + os.environ.get("KRUNBOX_SMOKE_APPEND", ""),
           "-device", "virtio-serial-pci", "-chardev", f"socket,id=agent,path={sock},server=on,wait=off",
           "-device", "virtserialport,chardev=agent,name=agent"]
    for i, (serial, img) in enumerate(disks):
        cmd += ["-drive", f"file={img},if=none,id=d{i},format=raw", "-device", f"virtio-blk-pci,drive=d{i},serial={serial}"]
    if net:
        cmd += ["-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0"]
    else:
        cmd += ["-nic", "none"]
    log = open(os.path.join(d, "console.log"), "wb")
    vm = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return vm, sock, os.path.join(d, "console.log")


def check_common(c):
    assert c.ready["params"]["mode"] == "init" and c.ready["params"]["pid"] == 1, c.ready
    boot = c.ready["params"]["boot"]
    assert 0 < boot["agentStartMs"] <= boot["readyMs"], boot
    assert c.call("ping", {})[0]["uptimeMs"] > 0
    out, ex = c.run("sh", "-c", "echo hi; id -u; echo $PATH; echo $HOME")
    assert ex["code"] == 0 and out == "hi\n0\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/root\n", (out, ex)
    out, ex = c.run("id", user="nobody")
    assert out.startswith("uid=65534"), out
    out, ex = c.run("stty", "size", tty={"rows": 30, "cols": 90})
    assert out.strip() == "30 90", out
    err, _ = c.call("exec.start", {"cmd": "nope"}, want_error=True)
    assert err["data"]["kind"] == "not_found", err
    h, _ = c.call("fs.open", {"path": "/tmp/x", "mode": "w"})
    c.call("fs.write", {"handle": h["handle"]}, b"data")
    c.call("fs.close", {"handle": h["handle"]})
    h, _ = c.call("fs.open", {"path": "/tmp/x", "mode": "r"})
    assert c.call("fs.read", {"handle": h["handle"], "length": 100})[1] == b"data"
    m, _ = c.call("metrics", {})
    assert m["cpus"] == 2 and m["memTotalBytes"] > 0 and m["processes"] > 0, m
    mounts, _ = c.run("cat", "/proc/mounts")
    for t in ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/tmp", "/run", "/sys/fs/cgroup"]:
        assert f" {t} " in mounts, (t, mounts)
    # Orphans are reaped by PID 1: no zombie remains.
    c.run("sh", "-c", "(sleep 0.2 &) ; true")
    time.sleep(0.5)
    ps, _ = c.run("sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ' || true")
    assert ps.strip() == "0", ps
    return mounts


def main():
    kernel, modules, busybox = prepare()
    mods = ["/lib/modules/" + os.path.basename(m) for m in modules]

    # 1. initramfs root.
    boot = {"hostname": "sb-1", "modules": mods, "root": {"kind": "initramfs"},
            "mounts": [{"kind": "tmpfs", "target": "/scratch", "sizeMib": 16}],
            "transport": {"kind": "virtio-port", "name": "agent"},
            "network": {"iface": "eth0", "address": "10.0.2.15/24", "gateway": "10.0.2.2", "dns": ["10.0.2.3"]},
            "rlimits": {"nofile": 65536}}
    vm, sock, log = boot_vm("initramfs", boot, modules, busybox, kernel, net=True)
    try:
        c = Client(sock)
        mounts = check_common(c)
        assert " /scratch tmpfs " in mounts, mounts
        out, _ = c.run("sh", "-c", "hostname; ulimit -n; cat /etc/resolv.conf; ip -4 addr show eth0; ip route")
        assert "sb-1\n65536\nnameserver 10.0.2.3\n" in out and "10.0.2.15/24" in out and "default via 10.0.2.2" in out, out
        # Disconnect: the agent kills that connection's processes, then serves again.
        pid = c.call("exec.start", {"cmd": "sleep", "args": ["1000"]})[0]["pid"]
        c.s.close()
        # The guest only sees a disconnect that lasts (see PROTOCOL.md, Transport).
        time.sleep(1)
        c = Client(sock)
        time.sleep(0.3)
        out, _ = c.run("sh", "-c", f"test -e /proc/{pid} && echo alive || echo gone")
        assert out == "gone\n", out
        c.call("shutdown", {"graceMs": 500})
        assert vm.wait(timeout=30) == 0
        print("initramfs boot: ok")
    finally:
        if vm.poll() is None:
            vm.kill()
            print(open(log, errors="replace").read()[-3000:])

    # 2. overlay root: erofs lower with busybox, empty ext4 upper.
    d = os.path.join(WORK, "images")
    shutil.rmtree(d, ignore_errors=True)
    tree = os.path.join(d, "tree")
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "root"]:
        os.makedirs(os.path.join(tree, sub))
    shutil.copy(busybox, os.path.join(tree, "bin/busybox"))
    for tool in ["sh", "ls", "cat", "echo", "sleep", "id", "stty", "true", "grep"]:
        os.symlink("busybox", os.path.join(tree, "bin", tool))
    open(os.path.join(tree, "etc/passwd"), "w").write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    open(os.path.join(tree, "etc/group"), "w").write("root:x:0:\n")
    open(os.path.join(tree, "etc/lower-marker"), "w").write("from lower\n")
    lower, upper = os.path.join(d, "lower.img"), os.path.join(d, "upper.img")
    sh("mkfs.erofs", "--quiet", lower, tree)
    sh("truncate", "-s", "64M", upper)
    sh("mkfs.ext4", "-q", "-F", upper)
    boot = {"modules": mods, "root": {"kind": "overlay", "lower": {"serial": "lower", "fstype": "erofs"},
                                      "upper": {"serial": "upper", "fstype": "ext4"}},
            "transport": {"kind": "virtio-port", "name": "agent"}, "workdir": "/root"}
    vm, sock, log = boot_vm("overlay", boot, modules, busybox, kernel, disks=[("lower", lower), ("upper", upper)])
    try:
        c = Client(sock)
        mounts = check_common(c)
        assert "overlay / overlay" in mounts, mounts
        out, _ = c.run("sh", "-c", "pwd; cat /etc/lower-marker; echo new > /etc/upper-marker; ls /krunbox 2>&1 || true")
        assert out.startswith("/root\nfrom lower\n") and "No such file" in out, out
        c.call("shutdown", {"graceMs": 500})
        assert vm.wait(timeout=30) == 0
        # The write went to the upper disk (synced before power off).
        got = sh("debugfs", "-R", "cat /data/etc/upper-marker", upper, capture_output=True, text=True).stdout
        assert got == "new\n", got
        print("overlay boot: ok")
    finally:
        if vm.poll() is None:
            vm.kill()
            print(open(log, errors="replace").read()[-3000:])


if __name__ == "__main__":
    main()
