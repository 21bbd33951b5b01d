//! Thin wrappers over libc calls used in several places.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// A C string; fails with EINVAL on an interior NUL.
pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Turns a -1 libc result into the last OS error.
pub fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Milliseconds on CLOCK_BOOTTIME (time since the kernel started).
pub fn boottime_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

/// Locks a mutex, ignoring poisoning: a panicking handler must not take the
/// whole agent down with it (see main.rs on panics).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// mount(2).
pub fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    let (s, t, f, d) = (cstr(src)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    let data_ptr = if data.is_empty() { std::ptr::null() } else { d.as_ptr() as *const libc::c_void };
    let fs_ptr = if fstype.is_empty() { std::ptr::null() } else { f.as_ptr() };
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), fs_ptr, flags, data_ptr) }).map(|_| ())
}

/// poll(2) on one fd; returns revents (0 on timeout).
pub fn poll_one(fd: &impl AsRawFd, events: libc::c_short, timeout: Duration) -> io::Result<libc::c_short> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    match unsafe { libc::poll(&mut p, 1, ms) } {
        r if r < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            }
        }
        0 => Ok(0),
        _ => Ok(p.revents),
    }
}

/// Sets or clears O_NONBLOCK.
pub fn set_nonblocking(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(|_| ())
}

/// open(2) with O_CLOEXEC.
pub fn open(path: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    let fd = check(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `sig` to process group `pgid` (ignores a group that is gone).
pub fn kill_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// Writes a line to stderr (the console in a VM); never fails.
pub fn log(msg: &str) {
    use std::io::Write;
    let _ = writeln!(io::stderr(), "krunbox-agent: {msg}");
}

/// Starts a named thread with an explicit stack size; logs when it cannot.
pub fn spawn_thread<F>(name: &str, stack: usize, f: F) -> Option<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    match std::thread::Builder::new().name(name.into()).stack_size(stack).spawn(f) {
        Ok(h) => Some(h),
        Err(e) => {
            log(&format!("cannot start thread {name}: {e}"));
            None
        }
    }
}

/// Small stacks keep the idle footprint low; threads that recurse (fs copy
/// and removal, JSON parsing) get more. Only touched pages count in RSS.
pub const SMALL_STACK: usize = 128 * 1024;
pub const LARGE_STACK: usize = 2 * 1024 * 1024;

/// Keeps glibc malloc from holding on to memory: buffers of 64 KiB and more
/// (exec output chunks, fs reads and writes of up to 4 MiB) are mmapped and
/// returned to the kernel when freed (a fixed threshold also turns off
/// glibc's dynamic threshold, which would otherwise move large buffers onto
/// the heap after the first free), and the many short-lived threads share
/// two arenas instead of getting one each.
pub fn tune_malloc() {
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// `PF_KTHREAD` in the flags field of `/proc/<pid>/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether any user-space process other than this one (PID 1) is left.
/// `kill(-1, 0)` cannot tell: it also "reaches" kernel threads, so it would
/// report survivors forever and every shutdown would wait its whole grace.
pub fn user_processes_left() -> bool {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { return false };
        if pid == me || pid == 1 {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        // Fields after the command name, which may contain spaces: state is the first, flags the seventh.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return false };
        let fields: Vec<&str> = rest.split(' ').collect();
        let zombie = fields.first() == Some(&"Z");
        let kthread = fields.get(6).and_then(|f| f.parse::<u64>().ok()).is_some_and(|f| f & PF_KTHREAD != 0);
        !zombie && !kthread
    })
}
