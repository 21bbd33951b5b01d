//! `krunbox-agent`: the krunbox guest agent.
//!
//! * PID 1 (a VM): init mode, see `init.rs`.
//! * `krunbox-agent serve --listen PATH`: host mode on a unix socket (tests).
//! * `krunbox-agent init [--config FILE]`: check a boot config without
//!   booting anything.
//! * `krunbox-agent --version`.
//!
//! Panics: the release profile keeps `panic = "unwind"`. With "abort" any
//! bug reachable from a request would kill PID 1 and so panic the guest
//! kernel. With unwinding, request handlers run under `catch_unwind`, a
//! panic in another thread ends only that thread, mutexes ignore poisoning
//! (`sys::lock`), and PID 1's main loop is restarted on a panic.

use krunbox_agent::{agent, init, sys, transport};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: krunbox-agent serve --listen PATH | init [--config FILE] | --version";

fn main() {
    let started = Instant::now();
    sys::tune_malloc();
    // The conventional umask, inherited by execs (the fast spawn path cannot
    // set one); fs.open/fs.mkdir apply requested modes exactly with fchmod.
    unsafe { libc::umask(0o022) };
    if std::process::id() == 1 {
        pid1(started);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let code = match args.as_slice() {
        ["--version"] | ["-V"] | ["version"] => {
            println!("krunbox-agent {} (protocol {})", agent::VERSION, agent::PROTOCOL);
            0
        }
        ["serve", "--listen", path] => serve(path, started),
        ["init"] => init::check_config(None),
        ["init", "--config", file] => init::check_config(Some(file)),
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

/// Host mode: exec env is the agent's PATH only (or the default PATH).
fn serve(path: &str, started: Instant) -> i32 {
    let path_var = std::env::var("PATH").unwrap_or_else(|_| agent::DEFAULT_PATH.into());
    let env = BTreeMap::from([("PATH".to_string(), path_var)]);
    agent::init(agent::Mode::Host, env, BTreeMap::new(), "/".into(), started);
    krunbox_agent::reaper::start();
    match transport::serve_unix(path) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("krunbox-agent: listen on {path}: {e}");
            1
        }
    }
}

/// PID 1 must never return: a panic restarts the boot-and-serve loop (each
/// boot step is idempotent), and if that keeps failing the agent sleeps.
fn pid1(started: Instant) -> ! {
    for _ in 0..3 {
        let r = std::panic::catch_unwind(|| init::run_pid1(started));
        if r.is_err() {
            sys::log("init panicked; restarting");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    sys::log("init failed repeatedly; idling");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
