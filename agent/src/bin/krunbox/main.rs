//! `krunbox`: the host's native front door to the krunbox command line.
//!
//! A Deno process takes seconds to start on a slow host (about 8 s in the
//! emulated nested test host), which is most of a short `krunbox exec`. This
//! binary answers the hot path itself: a non-interactive `krunbox exec [-e
//! K=V] [-w DIR] [-u USER] NAME CMD [ARG…]` to a running sandbox, and
//! `--version`. Everything else (every other command, `-i`/`-t`, `--help`, a
//! sandbox that is not running, a flag it does not know) is handed to the Deno
//! CLI unchanged with `execv`, so the Deno CLI stays the one place that
//! explains errors, and both give the same output and exit codes
//! (tests/e2e/front_door_test.ts runs both).
//!
//! Setup installs it as `$KRUNBOX_HOME/bin/krunbox`, next to `krunbox.json`
//! (`{"deno", "cli", "version"}`: the Deno binary, the CLI module and the
//! package version it hands over to).

mod exec;

use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The largest `vm.json` or `krunbox.json` read (src/sandbox/launch.ts `VM_SPEC_MAX_BYTES` is the same order).
const MAX_JSON_BYTES: u64 = 4 << 20;

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let strings: Option<Vec<String>> = args.iter().map(|a| a.clone().into_string().ok()).collect();
    let code = match strings.as_deref() {
        Some([v]) if v == "--version" || v == "-V" || v == "version" => match sidecar().and_then(|s| version(&s)) {
            Some(v) => {
                println!("krunbox {v}");
                0
            }
            None => hand_over(&args),
        },
        Some([first, rest @ ..]) if first == "exec" => {
            match parse_exec(rest).and_then(|(name, req)| connect(&name, req)) {
                Some((stream, req)) => {
                    let outcome = exec::run(stream, &req);
                    if let Some(m) = outcome.message {
                        eprintln!("krunbox: {m}");
                    }
                    outcome.code
                }
                None => hand_over(&args),
            }
        }
        _ => hand_over(&args),
    };
    std::process::exit(code);
}

/// `exec`'s arguments when they are the non-interactive form this binary runs
/// itself; `None` for anything else (the Deno CLI parses it, and explains).
fn parse_exec(args: &[String]) -> Option<(String, exec::Request)> {
    let mut env = BTreeMap::new();
    let (mut cwd, mut user) = (None, None);
    let mut i = 0;
    let name = loop {
        let a = args.get(i)?;
        i += 1;
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ if a.len() > 2 && a.starts_with('-') && !a.starts_with("--") => (&a[..2], Some(a[2..].to_string())),
            _ => (a.as_str(), None),
        };
        if !flag.starts_with('-') {
            break a.clone();
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i - 1)?.clone()
            }
        };
        match flag {
            "-e" | "--env" => {
                let (k, v) = value.split_once('=').filter(|(k, _)| !k.is_empty())?;
                env.insert(k.to_string(), v.to_string());
            }
            "-w" | "--workdir" => cwd = Some(value),
            "-u" | "--user" => user = Some(value),
            _ => return None, // -i, -t, --help, or a flag the Deno CLI will name
        }
    };
    if !valid_name(&name) {
        return None;
    }
    let mut rest = &args[i..];
    if rest.first().map(String::as_str) == Some("--") {
        rest = &rest[1..];
    }
    let (cmd, cmd_args) = rest.split_first()?;
    let user = user.map(|u| match u.parse::<u64>() {
        Ok(n) if u.bytes().all(|b| b.is_ascii_digit()) => Value::from(n),
        _ => Value::from(u),
    });
    Some((name, exec::Request { cmd: cmd.clone(), args: cmd_args.to_vec(), env, cwd, user }))
}

/// A sandbox name as src/sandbox/config.ts accepts it (pool names never reach the CLI).
fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The state home as src/store/home.ts finds it.
fn home() -> Option<PathBuf> {
    match std::env::var_os("KRUNBOX_HOME").filter(|h| !h.is_empty()) {
        Some(h) => Some(PathBuf::from(h)),
        None => std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| Path::new(&h).join(".krunbox")),
    }
}

/// The sandbox's exec defaults from its `vm.json` and a connection to its
/// agent socket; `None` when it is not running (the Deno CLI says why).
fn connect(name: &str, mut req: exec::Request) -> Option<(UnixStream, exec::Request)> {
    let dir = home()?.join("sandboxes").join(name);
    let spec = read_json(&dir.join("vm.json"))?;
    // A vm.json without them (a sandbox made before they were written) goes to the Deno CLI, which reads the store.
    let defaults = spec.get("execDefaults").filter(|d| d.is_object())?;
    if req.cwd.is_none() {
        req.cwd = defaults.get("workdir").and_then(Value::as_str).map(str::to_string);
    }
    if req.user.is_none() {
        req.user = defaults.get("user").filter(|u| u.is_string() || u.is_u64()).cloned();
    }
    let stream = UnixStream::connect(dir.join("agent.sock")).ok()?;
    Some((stream, req))
}

fn read_json(path: &Path) -> Option<Value> {
    let mut bytes = Vec::new();
    std::fs::File::open(path).ok()?.take(MAX_JSON_BYTES).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `krunbox.json` beside this binary (its real path: a link to it on PATH works).
fn sidecar() -> Option<Value> {
    let exe = std::env::current_exe().ok()?;
    read_json(&exe.parent()?.join("krunbox.json"))
}

fn version(s: &Value) -> Option<String> {
    s.get("version").and_then(Value::as_str).map(exec::printable)
}

/// Replaces this process with the Deno CLI, the same arguments given.
fn hand_over(args: &[OsString]) -> i32 {
    let Some(s) = sidecar() else {
        eprintln!(
            "krunbox: this front door has no Deno CLI to hand over to (krunbox.json beside it is missing or broken); \
             run `deno run -A jsr:@krunbox/krunbox/setup` (or `./dev setup` in a checkout) again"
        );
        return exec::EXIT_KRUNBOX;
    };
    let (Some(deno), Some(cli)) = (s["deno"].as_str(), s["cli"].as_str()) else {
        eprintln!("krunbox: krunbox.json beside this binary names no deno and cli; run setup again");
        return exec::EXIT_KRUNBOX;
    };
    // Rust ignores SIGPIPE; the Deno CLI gets the default disposition back.
    // SAFETY: resetting one signal disposition before execv.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let err = std::process::Command::new(deno).arg("run").arg("-A").arg(cli).args(args).exec();
    eprintln!("krunbox: cannot start the Deno CLI ({deno}): {err}; run setup again");
    exec::EXIT_KRUNBOX
}
