//! Init mode: the agent as PID 1 of a VM. Boots the guest per the boot
//! config (PROTOCOL.md, "Boot config"), then serves the transport forever.
//!
//! Every boot step logs its failure to the console and goes on: a VM whose
//! extra mount failed is still more useful with a reachable agent than
//! without. If the root cannot be assembled the agent stays in the initramfs.
//! PID 1 never returns or exits (the kernel would panic): see `main.rs` for
//! how panics are contained.

use crate::agent::{self, Mode};
use crate::boot_config::{self, BootConfig, Disk, Mount, Root, Transport};
use crate::frame::{self, FrameReader};
use crate::sys::{self, check, cstr, log, mount};
use crate::transport::{ConnIo, Stream};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// Runs PID 1. Never returns.
pub fn run_pid1(started: Instant) -> ! {
    let (cfg, opened) = boot(started);
    serve_forever(&cfg.transport, opened)
}

/// How long the agent waits for the host's answer to `boot.config`.
const HOST_CONFIG_PATIENCE: Duration = Duration::from_secs(10);

/// All boot steps up to (not including) serving the transport; the
/// transport's stream when it was opened to ask the host for the config.
fn boot(started: Instant) -> (BootConfig, Option<Arc<Stream>>) {
    mount_once("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, "");
    mount_once("sysfs", "/sys", "sysfs", NOSUID | NODEV | NOEXEC, "");
    mount_once("devtmpfs", "/dev", "devtmpfs", NOSUID, "mode=0755");
    ensure_std_fds();
    let mut cfg = match boot_config::load(boot_config::FILE) {
        Ok((c, from)) => {
            log(&format!("boot config from {from}"));
            c
        }
        Err(e) => {
            log(&format!("{e}; using defaults"));
            BootConfig::default()
        }
    };
    let mut loaded = HashSet::new();
    load_modules(&cfg.modules, &mut loaded);
    agent::mark_boot("transport");
    let mut opened = None;
    if cfg.from_host {
        match ask_host(&cfg.transport) {
            Ok((c, stream)) => {
                cfg = c;
                opened = Some(stream);
                agent::mark_boot("config");
                load_modules(&cfg.modules, &mut loaded);
            }
            Err(e) => log(&format!("boot config from the host: {e}; using the base config")),
        }
    }
    agent::mark_boot("modules");
    match assemble_root(&cfg.root) {
        Ok(true) => {
            if let Err(e) = switch_root() {
                log(&format!("switch root: {e}"));
            }
        }
        Ok(false) => {}
        Err(e) => log(&format!("root: {e}; staying in the initramfs")),
    }
    agent::mark_boot("root");
    system_mounts();
    for m in &cfg.mounts {
        if let Err(e) = user_mount(m) {
            log(&format!("mount {m:?}: {e}"));
        }
    }
    if let Some(h) = &cfg.hostname {
        if let Err(e) = set_hostname(h) {
            log(&format!("sethostname {h}: {e}"));
        }
    }
    network(&cfg);
    if let Some(n) = cfg.rlimits.nofile {
        if let Err(e) = set_nofile(n) {
            log(&format!("rlimit nofile {n}: {e}"));
        }
    }
    let mut base = BTreeMap::from([
        ("PATH".to_string(), agent::DEFAULT_PATH.to_string()),
        ("HOME".to_string(), "/root".to_string()),
    ]);
    if let Some(pem) = &cfg.ca_pem {
        // A shared writable directory root is the host's own directory: its trust store is not edited.
        let host_dir = matches!(cfg.root, Root::Virtiofs { upper: None, .. });
        for e in crate::trust::install(Path::new("/"), pem, !host_dir) {
            log(&format!("sandbox CA: {e}"));
        }
        base.extend(crate::trust::env());
    }
    agent::mark_boot("setup");
    agent::init(Mode::Init, base, cfg.env.clone(), cfg.workdir.clone().unwrap_or_else(|| "/".into()), started);
    crate::reaper::start();
    (cfg, opened)
}

/// Loads each module not loaded yet, in order; failures are logged.
fn load_modules(modules: &[String], loaded: &mut HashSet<String>) {
    for m in modules {
        if !loaded.insert(m.clone()) {
            continue;
        }
        if let Err(e) = load_module(m) {
            log(&format!("module {m}: {e}"));
        }
    }
}

/// Opens the transport of a base config and asks the host for this boot's
/// config (`boot.config`, id 0; the host answers before anything else is
/// sent on the stream). Only a virtio port can be asked this way.
fn ask_host(t: &Transport) -> Result<(BootConfig, Arc<Stream>), String> {
    let Transport::VirtioPort { name } = t else { return Err(format!("cannot ask over {t:?}")) };
    let stream = crate::transport::open_port(name, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let io = ConnIo::new(stream.clone());
    let request = json!({"jsonrpc": "2.0", "id": 0, "method": "boot.config", "params": {}});
    io.write_all(&frame::encode(&request, &[]).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + HOST_CONFIG_PATIENCE;
    let mut reader = FrameReader::new(&io);
    while Instant::now() < deadline {
        match reader.read_frame() {
            Ok(Some(f)) if f.header.get("id") == Some(&json!(0)) => {
                if let Some(err) = f.header.get("error") {
                    return Err(format!("the host refused: {err}"));
                }
                let result = f.header.get("result").cloned().unwrap_or(Value::Null);
                let c: BootConfig = serde_json::from_value(result).map_err(|e| format!("bad boot config: {e}"))?;
                log("boot config from the host");
                return Ok((c, stream));
            }
            Ok(Some(_)) => {}
            // The host side is not connected (yet): a port reads 0 then.
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("no answer".into())
}

fn serve_forever(t: &Transport, mut opened: Option<Arc<Stream>>) -> ! {
    loop {
        let err = match t {
            Transport::VirtioPort { name } => {
                match opened.take().map(Ok).unwrap_or_else(|| crate::transport::open_port(name, Duration::from_secs(5)))
                {
                    Ok(s) => crate::transport::serve_port(s),
                    Err(e) => e,
                }
            }
            Transport::Vsock { port } => match crate::transport::serve_vsock(*port) {
                Ok(()) => continue,
                Err(e) => e,
            },
            Transport::VsockConnect { port } => crate::transport::serve_vsock_connect(*port),
        };
        log(&format!("transport {t:?}: {err}; retrying"));
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Without /dev/console in the initramfs the kernel starts init with fds
/// 0-2 closed; the first files opened would become stdout/stderr (logs
/// would then go into the transport). Fill them with the console.
fn ensure_std_fds() {
    for fd in 0..3 {
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        let f =
            sys::open("/dev/console", libc::O_RDWR | libc::O_NOCTTY).or_else(|_| sys::open("/dev/null", libc::O_RDWR));
        if let Ok(f) = f {
            let raw = f.into_raw_fd();
            if raw != fd {
                unsafe {
                    libc::dup2(raw, fd);
                    libc::close(raw);
                }
            } else {
                // The kernel gave us exactly `fd`; keep it but inheritable.
                unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
            }
        }
    }
}

fn is_mounted(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(target)))
        .unwrap_or(false)
}

/// Mounts unless something is mounted there already; creates the mount
/// point; logs failures (a read-only root may lack some mount points).
fn mount_once(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    if (target == "/proc" && Path::new("/proc/self").exists()) || is_mounted(target) {
        return;
    }
    let _ = std::fs::create_dir_all(target);
    match mount(src, target, fstype, flags, data) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        Err(e) => log(&format!("mount {fstype} on {target}: {e}")),
    }
}

fn load_module(path: &str) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    let empty = cstr("")?;
    let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), empty.as_ptr(), 0) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// `/dev/vdX` whose /sys/block/vdX/serial is `serial` (waits up to 5 s for
/// the disk to be probed).
fn find_disk(serial: &str) -> io::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(dir) = std::fs::read_dir("/sys/block") {
            for e in dir.flatten() {
                let s = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                if s.trim() == serial {
                    return Ok(format!("/dev/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no disk with serial {serial}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mount_at(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    mount(src, target, fstype, flags, data)
        .map_err(|e| io::Error::new(e.kind(), format!("mount {src} ({fstype}) on {target}: {e}")))
}

/// Mounts the new root at /newroot; false when the initramfs stays the root.
fn assemble_root(root: &Root) -> io::Result<bool> {
    match root {
        Root::Initramfs => return Ok(false),
        Root::Virtiofs { tag, upper: None } => mount_at(tag, "/newroot", "virtiofs", 0, "")?,
        Root::Virtiofs { tag, upper: Some(upper) } => {
            mount_at(tag, "/lower", "virtiofs", libc::MS_RDONLY, "")?;
            overlay_on(upper)?;
        }
        Root::Block { serial, fstype } => mount_at(&find_disk(serial)?, "/newroot", fstype, 0, "")?,
        Root::Overlay { lower, upper } => {
            mount_at(&find_disk(&lower.serial)?, "/lower", &lower.fstype, libc::MS_RDONLY, "")?;
            overlay_on(upper)?;
        }
    }
    Ok(true)
}

/// /newroot: an overlay of what is mounted at /lower under the upper disk.
fn overlay_on(upper: &Disk) -> io::Result<()> {
    mount_at(&find_disk(&upper.serial)?, "/upper", &upper.fstype, 0, "")?;
    std::fs::create_dir_all("/upper/data")?;
    std::fs::create_dir_all("/upper/work")?;
    mount_at("overlay", "/newroot", "overlay", 0, &overlay_options("/lower", "/upper"))
}

/// The overlay's mount options over `lower`, with its upper and work
/// directories on the disk mounted at `upper`.
fn overlay_options(lower: &str, upper: &str) -> String {
    format!("lowerdir={lower},upperdir={upper}/data,workdir={upper}/work")
}

/// switch_root: the initramfs is rootfs, which cannot be pivoted away, so
/// the new root is moved over / and chrooted into. /dev, /proc and /sys are
/// moved along (or detached when the new root lacks the directory; they are
/// mounted again afterwards). The initramfs files are not deleted: they are
/// small (the agent and a few modules).
fn switch_root() -> io::Result<()> {
    for d in ["/dev", "/proc", "/sys"] {
        let target = format!("/newroot{d}");
        let moved = Path::new(&target).is_dir() && mount(d, &target, "", libc::MS_MOVE, "").is_ok();
        if !moved {
            let c = cstr(d)?;
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    std::env::set_current_dir("/newroot")?;
    mount(".", "/", "", libc::MS_MOVE, "")?;
    let dot = cstr(".")?;
    check(unsafe { libc::chroot(dot.as_ptr()) })?;
    std::env::set_current_dir("/")?;
    Ok(())
}

/// The standard mounts inside the final root.
fn system_mounts() {
    mount_once("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, "");
    mount_once("sysfs", "/sys", "sysfs", NOSUID | NODEV | NOEXEC, "");
    mount_once("devtmpfs", "/dev", "devtmpfs", NOSUID, "mode=0755");
    mount_once("devpts", "/dev/pts", "devpts", NOSUID | NOEXEC, "gid=5,mode=0620,ptmxmode=0666");
    mount_once("shm", "/dev/shm", "tmpfs", NOSUID | NODEV, "mode=1777");
    mount_once("tmpfs", "/tmp", "tmpfs", NOSUID | NODEV, "mode=1777");
    mount_once("tmpfs", "/run", "tmpfs", NOSUID | NODEV, "mode=0755");
    mount_once("cgroup2", "/sys/fs/cgroup", "cgroup2", NOSUID | NODEV | NOEXEC, "");
    // devtmpfs has no /dev/fd & co.; /dev/ptmx must reach the devpts instance.
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
}

fn user_mount(m: &Mount) -> io::Result<()> {
    match m {
        Mount::Virtiofs { tag, target, readonly } => {
            let flags = if *readonly { libc::MS_RDONLY } else { 0 };
            mount_at(tag, target, "virtiofs", flags, "")
        }
        Mount::Tmpfs { target, size_mib } => {
            let data = size_mib.map(|s| format!("size={s}m")).unwrap_or_default();
            mount_at("tmpfs", target, "tmpfs", NOSUID | NODEV, &data)
        }
    }
}

/// sethostname(2), then /etc/hostname where /etc is writable (a read-only
/// image keeps its own file).
pub fn set_hostname(name: &str) -> io::Result<()> {
    apply_hostname(name)?;
    write_hostname_file(name);
    Ok(())
}

/// The kernel's hostname (what `hostname` and `uname -n` say).
pub fn apply_hostname(name: &str) -> io::Result<()> {
    crate::sys::check(unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) }).map(|_| ())
}

/// `/etc/hostname`, for programs that read the file; best effort (a
/// read-only root keeps the image's).
pub fn write_hostname_file(name: &str) {
    let _ = std::fs::write("/etc/hostname", format!("{name}\n"));
}

fn network(cfg: &BootConfig) {
    if let Err(e) = crate::net::link_up("lo") {
        log(&format!("lo: {e}"));
    }
    let Some(n) = &cfg.network else { return };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !Path::new("/sys/class/net").join(&n.iface).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = crate::net::configure(&n.iface, &n.address, n.gateway.as_deref()) {
        log(&format!("network {}: {e}", n.iface));
    }
    if !n.dns.is_empty() {
        let text: String = n.dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        if let Err(e) = std::fs::write("/etc/resolv.conf", text) {
            log(&format!("/etc/resolv.conf: {e}"));
        }
    }
}

fn set_nofile(n: u64) -> io::Result<()> {
    let nr_open: u64 =
        std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    if n > nr_open {
        std::fs::write("/proc/sys/fs/nr_open", n.to_string())?;
    }
    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }).map(|_| ())
}

/// Syncs, unmounts what it can and powers the VM off. Never returns.
pub fn power_off() -> ! {
    unsafe { libc::sync() };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let targets: Vec<String> = mounts.lines().filter_map(|l| l.split_whitespace().nth(1).map(String::from)).collect();
    for t in targets.iter().rev() {
        if t == "/" {
            continue;
        }
        if let Ok(c) = cstr(t) {
            if unsafe { libc::umount2(c.as_ptr(), 0) } < 0 {
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
    let _ = mount("", "/", "", libc::MS_REMOUNT | libc::MS_RDONLY, "");
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    log("power off failed");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `krunbox-agent init` outside PID 1: parses the boot config (from
/// `--config FILE`, `$KRUNBOX_BOOT_JSON` or /krunbox/boot.json) and prints it
/// as the agent understood it, without touching the machine.
pub fn check_config(file: Option<&str>) -> i32 {
    let loaded = match file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read {f}: {e}"))
            .and_then(|t| boot_config::parse(&t))
            .map(|c| (c, f.to_string())),
        None => boot_config::load(boot_config::FILE),
    };
    match loaded {
        Ok((c, from)) => {
            println!("{}", serde_json::json!({"source": from, "config": c}));
            0
        }
        Err(e) => {
            eprintln!("krunbox-agent: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_keeps_upper_and_work_on_the_upper_disk() {
        assert_eq!(overlay_options("/lower", "/upper"), "lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work");
    }

    #[test]
    fn a_virtiofs_root_with_an_upper_is_an_overlay_of_a_read_only_share() {
        let c = boot_config::parse(
            r#"{"root":{"kind":"virtiofs","tag":"root","upper":{"serial":"upper","fstype":"ext4"}}}"#,
        )
        .unwrap();
        let Root::Virtiofs { tag, upper: Some(upper) } = c.root else { panic!("an overlay root") };
        assert_eq!((tag.as_str(), upper.serial.as_str(), upper.fstype.as_str()), ("root", "upper", "ext4"));
    }
}
