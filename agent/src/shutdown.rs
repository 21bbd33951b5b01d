//! The `shutdown` method: stop everything and exit (host) or power off (VM).

use crate::agent::{self, Mode};
use crate::rpc;
use crate::server::Conn;
use crate::sys;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShutdownParams {
    #[serde(default = "default_grace")]
    grace_ms: u64,
}

fn default_grace() -> u64 {
    2000
}

/// Answers `{}` first, then shuts down on a thread of its own.
pub fn start(conn: &Arc<Conn>, id: u64, params: Value) {
    let p: ShutdownParams = match rpc::params(params) {
        Ok(p) => p,
        Err(e) => return conn.reply(id, Err(e)),
    };
    let first = agent::get().begin_shutdown();
    conn.reply(id, Ok(json!({})));
    if first {
        let grace = Duration::from_millis(p.grace_ms);
        if sys::spawn_thread("shutdown", sys::SMALL_STACK, move || run(grace)).is_none() {
            run(grace);
        }
    }
}

/// Waits until `done` or the deadline, in small steps.
fn wait_until(deadline: Instant, done: impl Fn() -> bool) {
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run(grace: Duration) {
    let a = agent::get();
    let deadline = Instant::now() + grace;
    match a.mode {
        Mode::Host => {
            for g in a.live_groups() {
                sys::kill_group(g, libc::SIGTERM);
            }
            wait_until(deadline, || a.live_groups().is_empty());
            for g in a.live_groups() {
                sys::kill_group(g, libc::SIGKILL);
            }
            // Let the exec threads send their exec.exit.
            wait_until(Instant::now() + Duration::from_secs(1), || a.live_groups().is_empty());
            if let Some(p) = sys::lock(&a.socket_path).take() {
                let _ = std::fs::remove_file(p);
            }
            std::process::exit(0);
        }
        Mode::Init => {
            // Every process of the VM but PID 1 itself.
            unsafe { libc::kill(-1, libc::SIGTERM) };
            wait_until(deadline, || !sys::user_processes_left());
            unsafe { libc::kill(-1, libc::SIGKILL) };
            wait_until(Instant::now() + Duration::from_millis(500), || a.live_groups().is_empty());
            crate::init::power_off();
        }
    }
}
