//! Child reaping, one loop for the whole agent.
//!
//! As PID 1 the agent must reap every orphan that the kernel reparents to it,
//! while each exec still needs its own child's exit status. Both are served by
//! a single reaper thread that is the only caller of `waitpid(-1)`:
//!
//! * it blocks in `waitid(P_ALL, WEXITED | WNOWAIT)` until some child is a
//!   zombie (without reaping it), then reaps all zombies with
//!   `waitpid(-1, WNOHANG)` and hands each status to the [`ExitSlot`]
//!   registered for that pid; statuses of unregistered pids (orphans) are
//!   dropped.
//! * `std::process::Command::spawn` reaps its child itself when exec fails. To
//!   keep the reaper from stealing that child (std would then panic on
//!   ECHILD), spawning and reaping are serialized by `spawn_lock`, and a child
//!   is registered before the lock is released, so no status can be missed.
//!
//! The same mechanism runs in host mode, where only our own children exist.
//! Exec code never calls `Child::wait`.

use crate::sys::lock;
use std::collections::BTreeMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::Duration;

/// Where the reaper puts one child's raw wait status.
#[derive(Default)]
pub struct ExitSlot {
    status: Mutex<Option<i32>>,
    cv: Condvar,
}

impl ExitSlot {
    /// The wait status, once the child has been reaped.
    pub fn get(&self) -> Option<i32> {
        *lock(&self.status)
    }

    /// Waits up to `timeout` for the status.
    pub fn wait(&self, timeout: Duration) -> Option<i32> {
        let g = lock(&self.status);
        let (g, _) = self.cv.wait_timeout_while(g, timeout, |s| s.is_none()).unwrap_or_else(|e| e.into_inner());
        *g
    }

    fn set(&self, status: i32) {
        *lock(&self.status) = Some(status);
        self.cv.notify_all();
    }
}

struct Registry {
    children: BTreeMap<i32, Arc<ExitSlot>>,
    /// Bumped on every spawn, so the reaper can sleep while it has no child.
    generation: u64,
}

struct Reaper {
    spawn_lock: Mutex<()>,
    registry: Mutex<Registry>,
    spawned: Condvar,
}

static REAPER: Reaper = Reaper {
    spawn_lock: Mutex::new(()),
    registry: Mutex::new(Registry { children: BTreeMap::new(), generation: 0 }),
    spawned: Condvar::new(),
};

/// Starts the reaper thread (idempotent).
pub fn start() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        crate::sys::spawn_thread("reaper", crate::sys::SMALL_STACK, run);
    });
}

/// Spawns `cmd` and registers the child; its status lands in the slot.
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, Arc<ExitSlot>)> {
    start();
    let r = &REAPER;
    let _g = lock(&r.spawn_lock);
    let child = cmd.spawn()?;
    let slot = Arc::new(ExitSlot::default());
    {
        let mut reg = lock(&r.registry);
        reg.children.insert(child.id() as i32, slot.clone());
        reg.generation += 1;
    }
    r.spawned.notify_all();
    Ok((child, slot))
}

fn run() {
    let r = &REAPER;
    loop {
        let generation = lock(&r.registry).generation;
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc < 0 {
            match crate::errno::last() {
                libc::EINTR => continue,
                libc::ECHILD => {
                    // No child at all: sleep until the next spawn.
                    let g = lock(&r.registry);
                    let _ = r.spawned.wait_timeout_while(g, Duration::from_secs(5), |reg| reg.generation == generation);
                    continue;
                }
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        let _g = lock(&r.spawn_lock);
        loop {
            let mut status = 0;
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let slot = lock(&r.registry).children.remove(&pid);
            if let Some(slot) = slot {
                slot.set(status);
            }
        }
    }
}
