//! Byte streams the agent serves: unix sockets (host mode), vsock and the
//! virtio-serial port (VM).
//!
//! A virtio-serial port is not a socket: it cannot be shut down, a read
//! returns 0 while the host side is disconnected, and a write blocks until the
//! host connects. The port fd is therefore non-blocking and reads and writes
//! poll in short ticks, checking the connection's `closed` flag, so that a
//! connection that ended never leaves a thread stuck on the fd (and never
//! writes a stale frame into the next connection).

use crate::sys::{self, check, poll_one};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(200);

/// An open transport fd.
pub struct Stream {
    fd: OwnedFd,
    port: bool,
}

impl Stream {
    /// A connected stream socket (unix or vsock), used blocking.
    pub fn socket(fd: OwnedFd) -> Arc<Stream> {
        Arc::new(Stream { fd, port: false })
    }

    /// A virtio-serial port, used non-blocking with polling.
    pub fn port(fd: OwnedFd) -> io::Result<Arc<Stream>> {
        sys::set_nonblocking(&fd, true)?;
        Ok(Arc::new(Stream { fd, port: true }))
    }
}

/// One connection's view of a stream: the stream plus its `closed` flag.
pub struct ConnIo {
    stream: Arc<Stream>,
    closed: AtomicBool,
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed")
}

impl ConnIo {
    pub fn new(stream: Arc<Stream>) -> ConnIo {
        ConnIo { stream, closed: AtomicBool::new(false) }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Ends the connection: later reads and writes fail; a socket is shut down
    /// so that threads blocked on it return.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if !self.stream.port {
            unsafe { libc::shutdown(self.stream.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    pub fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        let fd = self.stream.fd.as_raw_fd();
        while !buf.is_empty() {
            if self.is_closed() {
                return Err(aborted());
            }
            let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
            if n > 0 {
                buf = &buf[n as usize..];
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    let rev = poll_one(&self.stream.fd, libc::POLLOUT, TICK)?;
                    if rev & libc::POLLOUT == 0 && rev & libc::POLLHUP != 0 {
                        // Host side not connected: poll does not block then.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                _ => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for &ConnIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.stream.fd.as_raw_fd();
        loop {
            if self.is_closed() {
                return Err(aborted());
            }
            let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    poll_one(&self.stream.fd, libc::POLLIN, TICK)?;
                }
                _ => return Err(e),
            }
        }
    }
}

/// Serves each connection to a unix socket at `path` on its own thread.
/// A stale socket file is removed first. Returns only on a listener error.
pub fn serve_unix(path: &str) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if md.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{path} exists and is not a socket")));
        }
    }
    let listener = UnixListener::bind(path)?;
    *sys::lock(&crate::agent::get().socket_path) = Some(path.to_string());
    crate::agent::get().mark_ready();
    for conn in listener.incoming() {
        match conn {
            Ok(s) => spawn_conn(Stream::socket(OwnedFd::from(s))),
            Err(e) => sys::log(&format!("accept: {e}")),
        }
    }
    Ok(())
}

fn spawn_conn(stream: Arc<Stream>) {
    sys::spawn_thread("conn", sys::LARGE_STACK, move || crate::server::serve(stream));
}

/// Listens on vsock `port` (any CID) and serves each connection on its own
/// thread. Returns only on a listener error.
pub fn serve_vsock(port: u32) -> io::Result<()> {
    let fd = check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    check(unsafe { libc::listen(fd.as_raw_fd(), 16) })?;
    crate::agent::get().mark_ready();
    loop {
        let c =
            unsafe { libc::accept4(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if c < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                sys::log(&format!("vsock accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        spawn_conn(Stream::socket(unsafe { OwnedFd::from_raw_fd(c) }));
    }
}

/// Connects to the host (CID 2) on vsock `port` and serves that stream; when
/// it ends, connects again (the runner may come back). Returns only the
/// error of a connect that keeps failing.
pub fn serve_vsock_connect(port: u32) -> io::Error {
    const VMADDR_CID_HOST: u32 = 2;
    crate::agent::get().mark_ready();
    let mut failures = 0;
    loop {
        let fd = match check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }) {
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(e) => return e,
        };
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = VMADDR_CID_HOST;
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            failures += 1;
            if failures > 100 {
                return io::Error::last_os_error();
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        failures = 0;
        crate::server::serve(Stream::socket(fd));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/dev/vportNpM` whose sysfs name is `name`.
pub fn find_port(name: &str) -> Option<String> {
    let dir = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for e in dir.flatten() {
        let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if n.trim() == name {
            return Some(format!("/dev/{}", e.file_name().to_string_lossy()));
        }
    }
    None
}

/// How often [`open_port`] looks for a port that is not there yet: the agent
/// opens it right after loading virtio_console, whose ports appear a few
/// milliseconds later (sysfs has no change notification to wait on).
const PORT_RETRY: Duration = Duration::from_millis(2);

/// Opens the port named `name`, retrying while it does not exist yet
/// (drivers probe asynchronously); gives up after `patience`.
pub fn open_port(name: &str, patience: Duration) -> io::Result<Arc<Stream>> {
    let deadline = Instant::now() + patience;
    loop {
        let err = match find_port(name) {
            Some(dev) => match sys::open(&dev, libc::O_RDWR | libc::O_NOCTTY) {
                Ok(fd) => {
                    sys::log(&format!("serving {dev}"));
                    return Stream::port(fd);
                }
                Err(e) => e,
            },
            None => io::Error::new(io::ErrorKind::NotFound, format!("no virtio port named {name}")),
        };
        if Instant::now() >= deadline {
            return Err(err);
        }
        std::thread::sleep(PORT_RETRY);
    }
}

/// Serves the single stream of a virtio-serial port forever. When the host
/// side goes away (read returns 0), that connection ends like any disconnect
/// (its processes are killed, its handles closed) and the port is served
/// again: the runner may reconnect. The `ready` of the next connection waits
/// in its write until the host is back.
pub fn serve_port(stream: Arc<Stream>) -> ! {
    crate::agent::get().mark_ready();
    loop {
        crate::server::serve(stream.clone());
        std::thread::sleep(Duration::from_millis(100));
    }
}
