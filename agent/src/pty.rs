//! Pseudo-terminals via /dev/ptmx (no libutil needed).

use crate::sys::{self, check};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Opens a new pty; returns (master, slave), both close-on-exec.
pub fn open(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let master = sys::open("/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY)?;
    let unlock: libc::c_int = 0;
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    let peer =
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    let slave = if peer >= 0 {
        unsafe { OwnedFd::from_raw_fd(peer) }
    } else {
        // Kernels before 4.13: open the slave by name.
        let mut n: libc::c_uint = 0;
        check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) })?;
        sys::open(&format!("/dev/pts/{n}"), libc::O_RDWR | libc::O_NOCTTY)?
    };
    set_size(&master, rows, cols)?;
    Ok((master, slave))
}

/// Sets the window size (TIOCSWINSZ); the kernel sends SIGWINCH.
pub fn set_size(fd: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(|_| ())
}
