//! One connection: the reader loop that decodes frames and dispatches
//! requests, the single (mutex-guarded) writer, and what the connection owns
//! (its execs and, through its fs worker, its file handles).
//!
//! Threads per connection: the reader (this module), one per running exec
//! (exec.rs) plus one per exec with a stdin, and a lazily started fs worker.
//! fs requests run in order on the worker so that pipelined `fs.read`s of one
//! handle stay ordered and a slow filesystem call never stalls the reader
//! (which must stay free for `$/cancel`, `exec.ack` and `exec.signal`).

use crate::agent;
use crate::exec::{self, Exec};
use crate::frame::{self, Frame, FrameError, FrameReader};
use crate::rpc::{self, RpcError, RpcResult};
use crate::sys::{self, lock};
use crate::transport::{ConnIo, Stream};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};

pub struct Conn {
    pub io: ConnIo,
    write_lock: Mutex<()>,
    /// Running execs of this connection by request id.
    pub execs: Mutex<HashMap<u64, Arc<Exec>>>,
    fs_tx: Mutex<Option<mpsc::Sender<FsJob>>>,
    /// Queued fs requests: id → cancelled.
    fs_pending: Mutex<HashMap<u64, bool>>,
}

struct FsJob {
    id: u64,
    method: String,
    params: Value,
    attachment: Vec<u8>,
}

impl Conn {
    fn new(stream: Arc<Stream>) -> Conn {
        Conn {
            io: ConnIo::new(stream),
            write_lock: Mutex::new(()),
            execs: Mutex::new(HashMap::new()),
            fs_tx: Mutex::new(None),
            fs_pending: Mutex::new(HashMap::new()),
        }
    }

    /// Writes one frame; false when the connection is gone. A header too
    /// large for the peer is replaced by an internal error for the same id.
    pub fn send(&self, header: &Value, attachment: &[u8]) -> bool {
        let (head, attachment) = match frame::encode_head(header, attachment.len()) {
            Ok(h) => (h, attachment),
            Err(e) => {
                let id = header.get("id").and_then(rpc::valid_id);
                let err = RpcError::internal(format!("response not sent: {e}"));
                match frame::encode_head(&rpc::response(id, &Err(err)), 0) {
                    Ok(h) => (h, &[][..]),
                    Err(_) => return false,
                }
            }
        };
        let _g = lock(&self.write_lock);
        // Small attachments go in the same write as the header.
        let ok = if attachment.len() <= 4096 {
            let mut b = head;
            b.extend_from_slice(attachment);
            self.io.write_all(&b).is_ok()
        } else {
            self.io.write_all(&head).is_ok() && self.io.write_all(attachment).is_ok()
        };
        if !ok {
            self.io.close();
        }
        ok
    }

    pub fn reply(&self, id: u64, result: RpcResult) {
        self.send(&rpc::response(Some(id), &result), &[]);
    }

    /// Reply carrying an attachment (fs.read).
    pub fn reply_with(&self, id: u64, result: Result<(Value, Vec<u8>), RpcError>) {
        match result {
            Ok((v, att)) => self.send(&rpc::response(Some(id), &Ok(v)), &att),
            Err(e) => self.send(&rpc::response(Some(id), &Err(e)), &[]),
        };
    }

    pub fn notify(&self, method: &str, params: Value, attachment: &[u8]) -> bool {
        self.send(&rpc::notification(method, params), attachment)
    }

    fn frame_error(&self, id: Option<u64>, err: RpcError) {
        self.send(&rpc::response(id, &Err(err)), &[]);
    }

    /// Releases everything the connection owns: kills the process groups of
    /// its execs and stops its fs worker (which closes its handles).
    fn close(&self) {
        self.io.close();
        for e in lock(&self.execs).values() {
            e.kill();
        }
        lock(&self.fs_tx).take();
    }
}

/// The `ready` notification's params.
fn ready_params() -> Value {
    let a = agent::get();
    json!({
        "protocol": agent::PROTOCOL,
        "agent": agent::VERSION,
        "mode": a.mode.as_str(),
        "pid": std::process::id(),
        "window": agent::WINDOW,
        "boot": a.boot_json(),
    })
}

/// Serves one connection until its stream ends.
pub fn serve(stream: Arc<Stream>) {
    let conn = Arc::new(Conn::new(stream));
    if conn.notify("ready", ready_params(), &[]) {
        read_loop(&conn);
    }
    conn.close();
}

fn read_loop(conn: &Arc<Conn>) {
    let mut reader = FrameReader::new(&conn.io);
    loop {
        match reader.read_frame() {
            Ok(None) => return,
            Ok(Some(f)) => {
                if catch_unwind(AssertUnwindSafe(|| handle(conn, f))).is_err() {
                    sys::log("request handler panicked");
                }
            }
            Err(e) if e.is_fatal() => return,
            Err(e @ FrameError::TooLarge { .. }) => conn.frame_error(
                None,
                RpcError::new(rpc::INVALID_REQUEST, e.to_string()).with_data(json!({"reason": "frame_too_large"})),
            ),
            Err(e @ FrameError::Parse(_)) => conn.frame_error(None, RpcError::new(rpc::PARSE_ERROR, e.to_string())),
            Err(FrameError::Invalid { id, reason }) => conn.frame_error(
                rpc::valid_id(&id),
                RpcError::new(rpc::INVALID_REQUEST, format!("invalid request: {reason}")),
            ),
            Err(_) => return,
        }
    }
}

fn handle(conn: &Arc<Conn>, frame: Frame) {
    let Frame { header, attachment } = frame;
    let Value::Object(mut obj) = header else { return };
    let id = match obj.get("id") {
        None => None,
        Some(v) => match rpc::valid_id(v) {
            Some(n) => Some(n),
            None => return conn.frame_error(None, RpcError::new(rpc::INVALID_REQUEST, "invalid request: bad id")),
        },
    };
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        // A response: the agent never sends requests.
        _ => {
            return conn.frame_error(None, RpcError::new(rpc::INVALID_REQUEST, "invalid request: unexpected response"))
        }
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            if let Some(id) = id {
                conn.reply(id, Err(RpcError::invalid_params("params must be an object")));
            }
            return;
        }
    };
    dispatch(conn, id, &method, params, attachment);
}

/// Methods still served while shutting down.
fn allowed_during_shutdown(m: &str) -> bool {
    matches!(m, "ping" | "metrics" | "exec.signal" | "exec.resize" | "exec.ack" | "$/cancel" | "fs.close")
}

fn dispatch(conn: &Arc<Conn>, id: Option<u64>, method: &str, params: Value, attachment: Vec<u8>) {
    // The notifications (answered with {} should they come as requests).
    if method == "$/cancel" || method == "exec.ack" {
        if method == "$/cancel" {
            cancel(conn, params);
        } else {
            exec::ack(conn, params);
        }
        if let Some(id) = id {
            conn.reply(id, Ok(json!({})));
        }
        return;
    }
    // Notifications of request methods cannot be answered: ignored.
    let Some(id) = id else { return };
    let a = agent::get();
    if a.is_shutting_down() && !allowed_during_shutdown(method) {
        return conn.reply(id, Err(RpcError::new(rpc::SHUTTING_DOWN, "shutting down")));
    }
    match method {
        "ping" => conn.reply(id, Ok(json!({"uptimeMs": a.uptime_ms()}))),
        "metrics" => conn.reply(id, Ok(crate::metrics::collect())),
        "exec.start" => exec::start(conn, id, params),
        "exec.stdin" => exec::stdin(conn, id, params, attachment),
        "exec.signal" => conn.reply(id, exec::signal(conn, params)),
        "exec.resize" => conn.reply(id, exec::resize(conn, params)),
        "shutdown" => crate::shutdown::start(conn, id, params),
        "guest.configure" => {
            let (reply, after) = crate::configure::call(params);
            conn.reply(id, reply);
            after.run();
        }
        m if crate::fs::is_method(m) => queue_fs(conn, FsJob { id, method: m.to_string(), params, attachment }),
        _ => conn.reply(id, Err(RpcError::new(rpc::METHOD_NOT_FOUND, format!("method not found: {method}")))),
    }
}

#[derive(serde::Deserialize)]
struct CancelParams {
    id: u64,
}

/// `$/cancel`: SIGKILL an exec's group, or mark a queued fs request as
/// abandoned. An fs call already running completes.
fn cancel(conn: &Arc<Conn>, params: Value) {
    let Ok(p) = rpc::params::<CancelParams>(params) else { return };
    if let Some(e) = lock(&conn.execs).get(&p.id) {
        e.kill();
        return;
    }
    if let Some(c) = lock(&conn.fs_pending).get_mut(&p.id) {
        *c = true;
    }
}

fn queue_fs(conn: &Arc<Conn>, job: FsJob) {
    let id = job.id;
    lock(&conn.fs_pending).insert(id, false);
    let mut tx = lock(&conn.fs_tx);
    if tx.is_none() {
        let (t, rx) = mpsc::channel();
        let c = conn.clone();
        if sys::spawn_thread("fs", sys::LARGE_STACK, move || fs_worker(c, rx)).is_none() {
            drop(tx);
            lock(&conn.fs_pending).remove(&id);
            return conn.reply(id, Err(RpcError::internal("cannot start fs worker")));
        }
        *tx = Some(t);
    }
    if let Some(t) = tx.as_ref() {
        let _ = t.send(job);
    }
}

/// Runs fs requests in order. It owns the connection's handle table, so the
/// handles close when the worker ends (at connection close).
fn fs_worker(conn: Arc<Conn>, rx: mpsc::Receiver<FsJob>) {
    let mut handles = crate::fs::Handles::default();
    while let Ok(job) = rx.recv() {
        if conn.io.is_closed() {
            break;
        }
        let cancelled = lock(&conn.fs_pending).remove(&job.id).unwrap_or(false);
        if cancelled {
            conn.reply(job.id, Err(RpcError::internal("request cancelled").with_data(json!({"reason": "cancelled"}))));
            continue;
        }
        let FsJob { id, method, params, attachment } = job;
        let result = catch_unwind(AssertUnwindSafe(|| crate::fs::call(&mut handles, &method, params, attachment)))
            .unwrap_or_else(|_| Err(RpcError::internal("fs handler panicked")));
        conn.reply_with(id, result);
    }
}
