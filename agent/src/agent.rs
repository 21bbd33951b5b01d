//! Process-wide agent state: mode, clocks, default exec environment, the set
//! of live process groups (for shutdown) and the shutdown flag.

use crate::sys::{boottime_ms, lock};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const PROTOCOL: u32 = 1;
/// Exec output flow-control window in bytes.
pub const WINDOW: u64 = 1 << 20;
/// Default PATH of init mode (and of host mode when the agent has none).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Host,
    Init,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Host => "host",
            Mode::Init => "init",
        }
    }
}

pub struct Agent {
    pub mode: Mode,
    started: Instant,
    /// CLOCK_BOOTTIME at start (init mode) or 0 (host mode).
    pub agent_start_ms: f64,
    ready_ms: Mutex<f64>,
    /// Environment every exec starts from (never the agent's own in init mode).
    pub default_env: BTreeMap<String, String>,
    /// Default exec working directory.
    pub workdir: String,
    shutting_down: AtomicBool,
    live_groups: Mutex<HashSet<i32>>,
    /// Unix socket to remove on exit (host mode).
    pub socket_path: Mutex<Option<String>>,
}

static AGENT: OnceLock<Agent> = OnceLock::new();

/// Init mode's boot steps: each step's name and the uptime at its end.
static BOOT_MARKS: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

/// Records the end of boot step `name` (init mode), for the `boot.steps` of `ready`.
pub fn mark_boot(name: &'static str) {
    lock(&BOOT_MARKS).push((name, boottime_ms()));
}

/// Sets up the global state; call once before serving.
pub fn init(mode: Mode, default_env: BTreeMap<String, String>, workdir: String, started: Instant) {
    let agent_start_ms = match mode {
        Mode::Init => boottime_ms() - started.elapsed().as_secs_f64() * 1000.0,
        Mode::Host => 0.0,
    };
    let _ = AGENT.set(Agent {
        mode,
        started,
        agent_start_ms,
        ready_ms: Mutex::new(0.0),
        default_env,
        workdir,
        shutting_down: AtomicBool::new(false),
        live_groups: Mutex::new(HashSet::new()),
        socket_path: Mutex::new(None),
    });
}

/// The global state. Host-mode defaults when `init` was not called (tests).
pub fn get() -> &'static Agent {
    AGENT.get_or_init(|| Agent {
        mode: Mode::Host,
        started: Instant::now(),
        agent_start_ms: 0.0,
        ready_ms: Mutex::new(0.0),
        default_env: BTreeMap::new(),
        workdir: "/".into(),
        shutting_down: AtomicBool::new(false),
        live_groups: Mutex::new(HashSet::new()),
        socket_path: Mutex::new(None),
    })
}

impl Agent {
    /// Milliseconds since boot (init) or since the agent started (host).
    pub fn uptime_ms(&self) -> f64 {
        match self.mode {
            Mode::Init => boottime_ms(),
            Mode::Host => self.started.elapsed().as_secs_f64() * 1000.0,
        }
    }

    pub fn mark_ready(&self) {
        *lock(&self.ready_ms) = self.uptime_ms();
    }

    /// The `boot` object of `ready`.
    pub fn boot_json(&self) -> serde_json::Value {
        let steps: Vec<_> =
            lock(&BOOT_MARKS).iter().map(|(name, ms)| serde_json::json!({"name": name, "endMs": ms})).collect();
        serde_json::json!({
            "kernelMs": self.agent_start_ms,
            "agentStartMs": self.agent_start_ms,
            "readyMs": *lock(&self.ready_ms),
            "steps": steps,
        })
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Sets the flag; false when it was already set.
    pub fn begin_shutdown(&self) -> bool {
        !self.shutting_down.swap(true, Ordering::SeqCst)
    }

    pub fn add_group(&self, pgid: i32) {
        lock(&self.live_groups).insert(pgid);
    }

    pub fn remove_group(&self, pgid: i32) {
        lock(&self.live_groups).remove(&pgid);
    }

    pub fn live_groups(&self) -> Vec<i32> {
        lock(&self.live_groups).iter().copied().collect()
    }
}
