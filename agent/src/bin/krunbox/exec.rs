//! One non-interactive exec over a sandbox's `agent.sock` (the runner's relay,
//! agent/PROTOCOL.md): the agent's `ready`, `exec.start`, then `exec.out`
//! frames written to fd 1 and 2 and acknowledged, until `exec.exit`.
//!
//! The peer is the guest's agent behind the relay: everything it sends is
//! untrusted. Frames are bounded by the codec's limits, output is written and
//! acknowledged one frame at a time (so the agent's window bounds what is in
//! flight), broken frames end the session after a fixed count, and strings
//! from the guest are printed with their control characters escaped.

use krunbox_agent::frame;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The protocol major this client speaks (PROTOCOL.md's version).
const PROTOCOL: i64 = 1;
/// How long the agent may take to send `ready` (src/settings.ts `agentReadyTimeoutMs`).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of `exec.start` (src/settings.ts `agentTimeoutMs`).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Broken frames a session survives (src/settings.ts `agentMaxBrokenFrames`).
const MAX_BROKEN_FRAMES: u32 = 256;
/// JSON-RPC error codes of PROTOCOL.md.
const SPAWN_FAILED: i64 = -32010;
const INVALID_PARAMS: i64 = -32602;
/// The id of our `exec.start`, and so the `ref` of its notifications.
const START_ID: u64 = 1;

/// Docker's exit codes for krunbox's own failures and a command that cannot start.
pub const EXIT_KRUNBOX: i32 = 125;
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

/// What to run (the params of `exec.start`).
pub struct Request {
    pub cmd: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// A user name or a uid.
    pub user: Option<Value>,
}

/// How a session ended: the exit code to leave with, and a line for stderr.
pub struct Outcome {
    pub code: i32,
    pub message: Option<String>,
}

impl Outcome {
    fn exited(code: i32) -> Self {
        Outcome { code, message: None }
    }
    fn failed(code: i32, message: String) -> Self {
        Outcome { code, message: Some(message) }
    }
}

/// Frames to the agent; shared by the session and the signal forwarder.
#[derive(Clone)]
struct Sender {
    stream: Arc<Mutex<UnixStream>>,
    next_id: Arc<AtomicU64>,
}

impl Sender {
    fn send(&self, header: &Value) -> io::Result<()> {
        let bytes =
            frame::encode(header, &[]).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        s.write_all(&bytes)
    }

    fn request(&self, method: &str, params: Value) -> io::Result<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        Ok(id)
    }

    fn notify(&self, method: &str, params: Value) -> io::Result<()> {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
    }
}

/// A local output fd (1 or 2) written without buffering; after a write fails
/// (a closed pipe) its bytes are dropped and the guest's output still drained.
struct Output {
    file: ManuallyDrop<File>,
    open: bool,
}

impl Output {
    fn fd(fd: i32) -> Self {
        // SAFETY: fds 1 and 2 belong to the process for its whole life; ManuallyDrop never closes them.
        Output { file: ManuallyDrop::new(unsafe { File::from_raw_fd(fd) }), open: true }
    }
    fn write(&mut self, bytes: &[u8]) {
        if self.open && self.file.write_all(bytes).is_err() {
            self.open = false;
        }
    }
}

/// Runs `req` on an open connection to a sandbox's agent socket.
pub fn run(stream: UnixStream, req: &Request) -> Outcome {
    match session(stream, req) {
        Ok(outcome) => outcome,
        Err(message) => Outcome::failed(EXIT_KRUNBOX, message),
    }
}

fn session(stream: UnixStream, req: &Request) -> Result<Outcome, String> {
    let io_err = |e: io::Error| format!("the agent connection failed: {e}");
    let writer = stream.try_clone().map_err(io_err)?;
    let sender = Sender { stream: Arc::new(Mutex::new(writer)), next_id: Arc::new(AtomicU64::new(START_ID)) };
    // SO_RCVTIMEO belongs to the socket, so a clone of the fd sets it for the reader.
    let socket = stream.try_clone().map_err(io_err)?;
    let mut frames = Frames { reader: BufReader::with_capacity(64 << 10, stream), socket, broken: 0, waiting: None };
    frames.deadline(Some(("the agent sent no ready", READY_TIMEOUT)))?;

    let ready = frames.next()?;
    if method(&ready) != Some("ready") {
        return Err("the agent's first message is not ready".into());
    }
    check_ready(&ready["params"])?;

    let mut params = json!({"cmd": req.cmd, "args": req.args, "env": req.env, "stdin": "null", "tty": null});
    if let Some(cwd) = &req.cwd {
        params["cwd"] = json!(cwd);
    }
    if let Some(user) = &req.user {
        params["user"] = user.clone();
    }
    frames.deadline(Some(("exec.start got no answer", START_TIMEOUT)))?;
    sender.request("exec.start", params).map_err(io_err)?;
    loop {
        let f = frames.next()?;
        if f.get("method").is_some() || f.get("id").and_then(Value::as_u64) != Some(START_ID) {
            continue; // nothing else is ours before the answer
        }
        if let Some(err) = f.get("error") {
            return Ok(spawn_failure(&req.cmd, err));
        }
        break;
    }
    frames.deadline(None)?;
    let forwarder = forward_signals(sender.clone());

    let (mut out, mut err) = (Output::fd(1), Output::fd(2));
    loop {
        let (header, attachment) = frames.next_with_attachment()?;
        let p = &header["params"];
        if p.get("ref").and_then(Value::as_u64) != Some(START_ID) {
            continue;
        }
        match method(&header) {
            Some("exec.out") => {
                match p.get("fd").and_then(Value::as_u64) {
                    Some(2) => err.write(&attachment),
                    _ => out.write(&attachment),
                }
                if !attachment.is_empty() {
                    let _ = sender.notify("exec.ack", json!({"ref": START_ID, "bytes": attachment.len()}));
                }
            }
            Some("exec.exit") => {
                drop(forwarder);
                return Ok(Outcome::exited(exit_code(p)));
            }
            _ => {}
        }
    }
}

/// A guest process's exit code: its own, or 128 + the signal that killed it (src/cli/exit.ts).
fn exit_code(p: &Value) -> i32 {
    let num = |k: &str| p.get(k).and_then(Value::as_i64).filter(|n| (0..=255).contains(n));
    match (num("code"), num("signal")) {
        (Some(code), _) => code as i32,
        (None, Some(sig)) => 128 + sig as i32,
        (None, None) => 128,
    }
}

/// The refusal of `exec.start` as src/agent/exec.ts `spawnError` and src/cli/exit.ts map it.
fn spawn_failure(cmd: &str, err: &Value) -> Outcome {
    let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
    let word = |v: Option<&Value>, default: &str| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() < 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or(default)
            .to_string()
    };
    let (kind, errno) = match code {
        SPAWN_FAILED => (word(err["data"].get("kind"), "other"), word(err["data"].get("errno"), "EUNKNOWN")),
        INVALID_PARAMS => ("invalid_argument".into(), "EINVAL".into()),
        _ => {
            let msg = err.get("message").and_then(Value::as_str).unwrap_or("");
            return Outcome::failed(EXIT_KRUNBOX, format!("agent error {code}: {}", printable(msg)));
        }
    };
    let exit = match kind.as_str() {
        "not_found" => EXIT_NOT_FOUND,
        "not_executable" | "permission_denied" => EXIT_NOT_EXECUTABLE,
        _ => EXIT_KRUNBOX,
    };
    Outcome::failed(exit, format!("cannot start \"{}\": {} ({errno})", printable(cmd), kind.replace('_', " ")))
}

fn check_ready(p: &Value) -> Result<(), String> {
    let protocol = p.get("protocol").and_then(Value::as_f64).map(f64::trunc);
    if protocol != Some(PROTOCOL as f64) {
        return Err(format!(
            "the agent speaks protocol {}, this client {PROTOCOL}",
            printable(&p["protocol"].to_string())
        ));
    }
    Ok(())
}

fn method(v: &Value) -> Option<&str> {
    v.get("method").and_then(Value::as_str)
}

/// A guest string for a terminal: control characters escaped, length capped.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(512)
        .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect()
}

/// The frame stream from the agent, counting broken frames. A frame above
/// the codec's limits ends the session at its 8-byte prefix (PROTOCOL.md lets
/// a host do so with an untrusted agent): nothing is read or allocated for it.
struct Frames {
    reader: BufReader<UnixStream>,
    socket: UnixStream,
    broken: u32,
    /// What a read is waiting for and how long it may take (None: no deadline).
    waiting: Option<(&'static str, Duration)>,
}

impl Frames {
    /// Sets the deadline of the reads that follow, named for the error it gives.
    fn deadline(&mut self, waiting: Option<(&'static str, Duration)>) -> Result<(), String> {
        self.waiting = waiting;
        self.socket.set_read_timeout(waiting.map(|(_, t)| t)).map_err(|e| format!("the agent connection failed: {e}"))
    }

    fn next(&mut self) -> Result<Value, String> {
        self.next_with_attachment().map(|(h, _)| h)
    }

    /// The codec's `read_full`; a read past the deadline says what it waited for.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        frame::read_full(&mut self.reader, buf).map_err(|e| match (&e, self.waiting) {
            (frame::FrameError::Io(io), Some((what, t)))
                if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                format!("{what} within {} ms", t.as_millis())
            }
            _ => format!("the agent connection failed: {e}"),
        })
    }

    fn next_with_attachment(&mut self) -> Result<(Value, Vec<u8>), String> {
        loop {
            let mut prefix = [0u8; frame::PREFIX_LEN];
            match self.read_full(&mut prefix)? {
                0 => return Err("the agent connection closed".into()),
                frame::PREFIX_LEN => {}
                _ => return Err("the agent connection closed inside a frame".into()),
            }
            let (h, b) = frame::parse_prefix(&prefix).map_err(|e| format!("the agent sent a {e}"))?;
            let mut bytes = vec![0u8; h + b];
            if self.read_full(&mut bytes)? < bytes.len() {
                return Err("the agent connection closed inside a frame".into());
            }
            match frame::parse_header(&bytes[..h]) {
                Ok(header) => return Ok((header, bytes.split_off(h))),
                Err(e) => {
                    self.broken += 1;
                    if self.broken > MAX_BROKEN_FRAMES {
                        return Err(format!("the agent sent more than {MAX_BROKEN_FRAMES} broken frames (last: {e})"));
                    }
                }
            }
        }
    }
}

/// Forwards SIGINT, SIGTERM and SIGHUP to the guest process group as
/// `exec.signal` (as src/cli/session.ts does); the exit follows from the guest.
/// The signals are blocked in every thread and taken with `sigwait` by one.
fn forward_signals(sender: Sender) -> Option<std::thread::JoinHandle<()>> {
    // SAFETY: plain libc signal-set calls on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return None;
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` lives in this closure; sigwait writes one int.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            if sender.request("exec.signal", json!({"ref": START_ID, "signal": sig})).is_err() {
                return;
            }
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_docker() {
        assert_eq!(exit_code(&json!({"code": 3, "signal": null})), 3);
        assert_eq!(exit_code(&json!({"code": null, "signal": 9})), 137);
        assert_eq!(exit_code(&json!({"code": 7000})), 128);
    }

    #[test]
    fn spawn_failures_map_to_126_and_127() {
        let e = json!({"code": -32010, "message": "spawn failed: ENOENT", "data": {"kind": "not_found", "errno": "ENOENT"}});
        let o = spawn_failure("nope", &e);
        assert_eq!((o.code, o.message.as_deref()), (127, Some("cannot start \"nope\": not found (ENOENT)")));
        let e = json!({"code": -32010, "data": {"kind": "permission_denied", "errno": "EACCES"}});
        assert_eq!(spawn_failure("x", &e).code, 126);
        let e = json!({"code": -32602, "message": "bad"});
        assert_eq!(spawn_failure("x", &e).code, 125);
        // A hostile kind or errno is not printed.
        let e = json!({"code": -32010, "data": {"kind": "\u{1b}[2J", "errno": "E\nX"}});
        assert_eq!(spawn_failure("x", &e).message.unwrap(), "cannot start \"x\": other (EUNKNOWN)");
    }

    #[test]
    fn guest_strings_lose_their_control_characters() {
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
