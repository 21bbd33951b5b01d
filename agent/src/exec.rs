//! Running execs: output pumping with flow control, exit reporting, stdin,
//! signals, resize, ack and cancel.
//!
//! One thread per exec polls its stdout and stderr (or pty master), sends
//! `exec.out` chunks of up to 64 KiB, enforces the timeout and finally sends
//! `exec.exit`. A second thread, when the exec has a stdin, performs
//! `exec.stdin` writes in order and answers each once written.
//!
//! When exec.exit is sent: after both outputs reached EOF *and* the leader was
//! reaped. A background process that inherited the pipes can keep them open
//! long after the leader exited (`sh -c 'sleep 100 &'`); waiting for EOF
//! would hang the exec. So once the leader has exited, the outputs are only
//! drained: reading goes on while data keeps coming, and stops once they have
//! been quiet for `DRAIN_QUIET` (or after `DRAIN_MAX` in all). The background
//! processes are not killed (they may be daemons the caller wanted); they lose
//! their output pipes (EPIPE/SIGPIPE on their next write).

use crate::agent;
use crate::reaper::ExitSlot;
use crate::rpc::{self, RpcError, RpcResult};
use crate::server::Conn;
use crate::spawn::{self, StartParams};
use crate::sys::{self, lock};
use serde::Deserialize;
use serde_json::{json, Value};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Largest exec.out attachment.
pub const CHUNK: usize = 64 * 1024;
const TICK: Duration = Duration::from_millis(100);
const DRAIN_QUIET: Duration = Duration::from_millis(100);
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// A running exec, shared by its threads and the connection's table.
pub struct Exec {
    pub pid: i32,
    unacked: Mutex<u64>,
    flow: Condvar,
    stdin: Mutex<Option<mpsc::Sender<StdinJob>>>,
    pty: Option<OwnedFd>,
    timed_out: AtomicBool,
}

struct StdinJob {
    id: u64,
    data: Vec<u8>,
    eof: bool,
}

impl Exec {
    /// SIGKILLs the process group.
    pub fn kill(&self) {
        sys::kill_group(self.pid, libc::SIGKILL);
    }

    /// Waits (up to one tick) until the unacked bytes are within the window.
    fn window_open(&self) -> bool {
        let g = lock(&self.unacked);
        let (g, _) = self.flow.wait_timeout_while(g, TICK, |u| *u > agent::WINDOW).unwrap_or_else(|e| e.into_inner());
        *g <= agent::WINDOW
    }

    fn check_deadline(&self, deadline: Option<Instant>) {
        if let Some(d) = deadline {
            if Instant::now() >= d && !self.timed_out.swap(true, Ordering::SeqCst) {
                self.kill();
            }
        }
    }
}

fn conn_execs(conn: &Conn, r: u64) -> Result<Arc<Exec>, RpcError> {
    lock(&conn.execs).get(&r).cloned().ok_or_else(|| RpcError::no_such_process(format!("exec {r}")))
}

/// exec.start: spawns, answers `{pid}`, then starts the exec's threads.
pub fn start(conn: &Arc<Conn>, id: u64, params: Value) {
    let p: StartParams = match rpc::params(params) {
        Ok(p) => p,
        Err(e) => return conn.reply(id, Err(e)),
    };
    if lock(&conn.execs).contains_key(&id) {
        return conn.reply(id, Err(RpcError::invalid_params("an exec with this id is running")));
    }
    // A timeout too large to represent means no deadline.
    let deadline = p
        .timeout_ms
        .and_then(|t| Duration::try_from_secs_f64(t / 1000.0).ok())
        .and_then(|d| Instant::now().checked_add(d));
    let s = match spawn::spawn(&p) {
        Ok(s) => s,
        Err(e) => return conn.reply(id, Err(e.to_rpc())),
    };
    let exec = Arc::new(Exec {
        pid: s.pid,
        unacked: Mutex::new(0),
        flow: Condvar::new(),
        stdin: Mutex::new(None),
        pty: s.pty,
        timed_out: AtomicBool::new(false),
    });
    agent::get().add_group(s.pid);
    lock(&conn.execs).insert(id, exec.clone());
    if let Some(fd) = s.stdin {
        let (tx, rx) = mpsc::channel();
        let (c, tty) = (conn.clone(), exec.pty.is_some());
        if sys::spawn_thread("stdin", sys::SMALL_STACK, move || stdin_loop(c, File::from(fd), rx, tty)).is_some() {
            *lock(&exec.stdin) = Some(tx);
        }
    }
    conn.reply(id, Ok(json!({"pid": s.pid})));
    let (c, e, exit, outputs) = (conn.clone(), exec.clone(), s.exit, s.outputs);
    let pumped = sys::spawn_thread("exec", sys::SMALL_STACK, move || pump(c, id, e, outputs, exit, deadline));
    if pumped.is_none() {
        // Without its thread the exec can never report: end it now.
        exec.kill();
        lock(&conn.execs).remove(&id);
        agent::get().remove_group(exec.pid);
        conn.notify("exec.exit", json!({"ref": id, "code": null, "signal": 9, "timedOut": false}), &[]);
    }
}

/// The exec thread: output until EOF (or drained), then the exit status.
fn pump(
    conn: Arc<Conn>,
    id: u64,
    exec: Arc<Exec>,
    mut outputs: Vec<(OwnedFd, u8)>,
    exit: Arc<ExitSlot>,
    deadline: Option<Instant>,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut exited_at: Option<Instant> = None;
    let mut last_data = Instant::now();
    while !outputs.is_empty() && !conn.io.is_closed() {
        exec.check_deadline(deadline);
        if exited_at.is_none() && exit.get().is_some() {
            exited_at = Some(Instant::now());
        }
        if exited_at.is_some_and(|t| t.elapsed() > DRAIN_MAX) {
            break;
        }
        if !exec.window_open() {
            continue;
        }
        let mut pfds: Vec<libc::pollfd> = outputs
            .iter()
            .map(|(fd, _)| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // After the leader exit, poll in short steps to see the quiet period.
        let timeout = if exited_at.is_some() { 20 } else { TICK.as_millis() as i32 };
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n <= 0 {
            // Nothing readable: after the leader exit, a quiet period ends it.
            if exited_at.is_some_and(|t| t.max(last_data).elapsed() >= DRAIN_QUIET) {
                break;
            }
            continue;
        }
        for i in (0..outputs.len()).rev() {
            if pfds[i].revents == 0 {
                continue;
            }
            let (fd, num) = (&outputs[i].0, outputs[i].1);
            let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if r > 0 {
                let r = r as usize;
                *lock(&exec.unacked) += r as u64;
                conn.notify("exec.out", json!({"ref": id, "fd": num}), &buf[..r]);
                last_data = Instant::now();
            } else if r == 0 || !matches!(crate::errno::last(), libc::EINTR | libc::EAGAIN) {
                // EOF; a pty master reports EIO once the terminal is gone.
                outputs.remove(i);
            }
        }
    }
    drop(outputs);
    let status = loop {
        exec.check_deadline(deadline);
        if let Some(s) = exit.wait(TICK) {
            break s;
        }
    };
    lock(&conn.execs).remove(&id);
    lock(&exec.stdin).take();
    agent::get().remove_group(exec.pid);
    let (code, signal) = if libc::WIFEXITED(status) {
        (json!(libc::WEXITSTATUS(status)), Value::Null)
    } else if libc::WIFSIGNALED(status) {
        (Value::Null, json!(libc::WTERMSIG(status)))
    } else {
        (Value::Null, Value::Null)
    };
    let timed_out = exec.timed_out.load(Ordering::SeqCst);
    conn.notify("exec.exit", json!({"ref": id, "code": code, "signal": signal, "timedOut": timed_out}), &[]);
}

/// Performs stdin writes in request order; each is answered once written.
/// On a tty, `eof` sends the terminal's EOF character (^D) instead of closing.
fn stdin_loop(conn: Arc<Conn>, file: File, rx: mpsc::Receiver<StdinJob>, tty: bool) {
    let mut file = Some(file);
    for job in rx {
        let result = match file.as_mut() {
            None => Err(RpcError::no_such_process("stdin is closed")),
            Some(f) => {
                let r = if job.eof && !tty {
                    file = None;
                    Ok(())
                } else if job.eof {
                    f.write_all(&[4])
                } else {
                    f.write_all(&job.data)
                };
                r.map(|_| json!({})).map_err(|e| {
                    let n = crate::errno::of(&e);
                    RpcError::no_such_process(format!("stdin write failed: {}", crate::errno::name(n)))
                        .with_data(json!({"errno": crate::errno::name(n), "errnoNum": n}))
                })
            }
        };
        conn.reply(job.id, result);
    }
}

#[derive(Deserialize)]
struct StdinParams {
    r#ref: u64,
    #[serde(default)]
    eof: bool,
}

/// exec.stdin: queues the write on the exec's stdin thread.
pub fn stdin(conn: &Arc<Conn>, id: u64, params: Value, data: Vec<u8>) {
    let p: StdinParams = match rpc::params(params) {
        Ok(p) => p,
        Err(e) => return conn.reply(id, Err(e)),
    };
    let exec = match conn_execs(conn, p.r#ref) {
        Ok(e) => e,
        Err(e) => return conn.reply(id, Err(e)),
    };
    let tx = lock(&exec.stdin).clone();
    match tx {
        Some(tx) => {
            if tx.send(StdinJob { id, data, eof: p.eof }).is_err() {
                conn.reply(id, Err(RpcError::no_such_process("stdin is closed")));
            }
        }
        None => conn.reply(id, Err(RpcError::invalid_params("exec has no stdin (start it with stdin: \"pipe\")"))),
    }
}

#[derive(Deserialize)]
struct SignalParams {
    r#ref: u64,
    signal: i32,
}

/// exec.signal: sends a signal number to the process group.
pub fn signal(conn: &Conn, params: Value) -> RpcResult {
    let p: SignalParams = rpc::params(params)?;
    if !(1..=64).contains(&p.signal) {
        return Err(RpcError::invalid_params(format!("bad signal {}", p.signal)));
    }
    let exec = conn_execs(conn, p.r#ref)?;
    if unsafe { libc::kill(-exec.pid, p.signal) } < 0 {
        return Err(RpcError::no_such_process(format!("exec {}", p.r#ref)));
    }
    Ok(json!({}))
}

#[derive(Deserialize)]
struct ResizeParams {
    r#ref: u64,
    rows: u16,
    cols: u16,
}

/// exec.resize: sets the tty size (no-op without a tty).
pub fn resize(conn: &Conn, params: Value) -> RpcResult {
    let p: ResizeParams = rpc::params(params)?;
    let exec = conn_execs(conn, p.r#ref)?;
    if let Some(m) = &exec.pty {
        crate::pty::set_size(m, p.rows, p.cols).map_err(RpcError::internal)?;
    }
    Ok(json!({}))
}

#[derive(Deserialize)]
struct AckParams {
    r#ref: u64,
    bytes: u64,
}

/// exec.ack: the host consumed `bytes` more output bytes of `ref`.
pub fn ack(conn: &Conn, params: Value) {
    let Ok(p) = rpc::params::<AckParams>(params) else { return };
    if let Some(e) = lock(&conn.execs).get(&p.r#ref) {
        let mut u = lock(&e.unacked);
        *u = u.saturating_sub(p.bytes);
        e.flow.notify_all();
    }
}
