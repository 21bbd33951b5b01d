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
    /// What a configured env is merged over (init mode: PATH and HOME; host
    /// mode: the agent's PATH).
    base_env: BTreeMap<String, String>,
    /// Environment every exec starts from (never the agent's own in init
    /// mode): `base_env` with the boot config's env, or with the env of the
    /// last `guest.configure`.
    default_env: Mutex<BTreeMap<String, String>>,
    /// Default exec working directory.
    pub workdir: String,
    shutting_down: AtomicBool,
    live_groups: Mutex<HashSet<i32>>,
    /// Unix socket to remove on exit (host mode).
    pub socket_path: Mutex<Option<String>>,
}

static AGENT: OnceLock<Agent> = OnceLock::new();

/// Sets up the global state; call once before serving. The default exec env
/// is `base_env` with `env` merged over it.
pub fn init(
    mode: Mode,
    base_env: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    workdir: String,
    started: Instant,
) {
    let mut default_env = base_env.clone();
    default_env.extend(env);
    let agent_start_ms = match mode {
        Mode::Init => boottime_ms() - started.elapsed().as_secs_f64() * 1000.0,
        Mode::Host => 0.0,
    };
    let _ = AGENT.set(Agent {
        mode,
        started,
        agent_start_ms,
        ready_ms: Mutex::new(0.0),
        base_env,
        default_env: Mutex::new(default_env),
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
        base_env: BTreeMap::new(),
        default_env: Mutex::new(BTreeMap::new()),
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
        serde_json::json!({
            "kernelMs": self.agent_start_ms,
            "agentStartMs": self.agent_start_ms,
            "readyMs": *lock(&self.ready_ms),
        })
    }

    /// The environment a new exec starts from.
    pub fn default_env(&self) -> BTreeMap<String, String> {
        lock(&self.default_env).clone()
    }

    /// Replaces the default exec env: the base env with `env` merged over it
    /// (as the boot config's env is).
    pub fn set_env(&self, env: BTreeMap<String, String>) {
        let mut merged = self.base_env.clone();
        merged.extend(env);
        *lock(&self.default_env) = merged;
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
