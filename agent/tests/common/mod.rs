//! Test helpers: hex, the shared vectors, and a host-mode agent with a client.
#![allow(dead_code)]

use krunbox_agent::frame::{self, Frame, FrameReader};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

pub fn vectors() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/frames.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("kba-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `krunbox-agent serve --listen` in a temp dir; killed on drop.
pub struct Agent {
    pub child: Child,
    pub dir: TempDir,
    pub sock: String,
}

impl Agent {
    pub fn start() -> Agent {
        let dir = TempDir::new("agent");
        let sock = dir.path("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_krunbox-agent"))
            .args(["serve", "--listen", &sock])
            .stdin(Stdio::null())
            .spawn()
            .expect("start agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "agent did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent { child, dir, sock }
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.sock)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A protocol client that keeps frames it was not waiting for.
pub struct Client {
    pub stream: UnixStream,
    reader: FrameReader<UnixStream>,
    next_id: u64,
    backlog: VecDeque<Frame>,
    pub ready: Value,
}

impl Client {
    pub fn connect(sock: &str) -> Client {
        let stream = UnixStream::connect(sock).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let reader = FrameReader::new(stream.try_clone().unwrap());
        let mut c = Client { stream, reader, next_id: 1, backlog: VecDeque::new(), ready: Value::Null };
        let ready = c.read();
        assert_eq!(ready.header["method"], "ready", "first frame must be ready");
        c.ready = ready.header["params"].clone();
        c
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, header: &Value, attachment: &[u8]) {
        let bytes = frame::encode(header, attachment).unwrap();
        self.send_raw(&bytes);
    }

    pub fn request(&mut self, method: &str, params: Value, attachment: &[u8]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}), attachment);
        id
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}), &[]);
    }

    fn read(&mut self) -> Frame {
        self.reader.read_frame().expect("read frame").expect("agent closed the stream")
    }

    /// Next frame, from the backlog first.
    pub fn next(&mut self) -> Frame {
        self.backlog.pop_front().unwrap_or_else(|| self.read())
    }

    /// Waits for the response to `id`; other frames go to the backlog.
    pub fn response(&mut self, id: u64) -> Frame {
        if let Some(i) = self.backlog.iter().position(|f| f.header["id"] == json!(id)) {
            return self.backlog.remove(i).unwrap();
        }
        loop {
            let f = self.read();
            if f.header["id"] == json!(id) && f.header.get("method").is_none() {
                return f;
            }
            self.backlog.push_back(f);
        }
    }

    /// Request and response; returns `result` or panics on an error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params, &[]);
        let r = self.response(id);
        assert!(r.header.get("error").is_none(), "{method} failed: {}", r.header);
        r.header["result"].clone()
    }

    /// Request and response; returns the `error` object.
    pub fn call_err(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params, &[]);
        let r = self.response(id);
        r.header.get("error").cloned().unwrap_or_else(|| panic!("{method} should fail: {}", r.header))
    }

    /// Collects exec.out of `r` (acknowledging it) until exec.exit.
    pub fn exec_output(&mut self, r: u64) -> (Vec<u8>, Vec<u8>, Value) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut kept = VecDeque::new();
        loop {
            let f = self.next();
            let p = &f.header["params"];
            if p["ref"] != json!(r) {
                kept.push_back(f);
                continue;
            }
            match f.header["method"].as_str() {
                Some("exec.out") => {
                    if p["fd"] == 1 { &mut out } else { &mut err }.extend_from_slice(&f.attachment);
                    self.notify("exec.ack", json!({"ref": r, "bytes": f.attachment.len()}));
                }
                Some("exec.exit") => {
                    kept.extend(self.backlog.drain(..));
                    self.backlog = kept;
                    return (out, err, p.clone());
                }
                _ => kept.push_back(f),
            }
        }
    }

    /// exec.start; returns (ref, pid).
    pub fn start(&mut self, params: Value) -> (u64, i64) {
        let id = self.request("exec.start", params, &[]);
        let r = self.response(id);
        assert!(r.header.get("error").is_none(), "exec.start failed: {}", r.header);
        (id, r.header["result"]["pid"].as_i64().unwrap())
    }
}

/// True once `pid` no longer exists (reaped) or is a zombie.
pub fn gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit(')').next().map(|r| r.trim_start().starts_with('Z')).unwrap_or(true),
    }
}

pub fn wait_gone(pid: i64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    gone(pid)
}
