//! End-to-end tests against `krunbox-agent serve --listen` (host mode).

mod common;

use common::{wait_gone, Agent, Client};
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn ready_and_ping() {
    let agent = Agent::start();
    let mut c = agent.connect();
    assert_eq!(c.ready["protocol"], 1);
    assert_eq!(c.ready["mode"], "host");
    assert_eq!(c.ready["window"], 1048576);
    assert_eq!(c.ready["boot"]["kernelMs"], 0.0);
    assert!(c.call("ping", json!({}))["uptimeMs"].as_f64().unwrap() >= 0.0);
    // Connections are independent: a second one gets its own ready.
    let mut d = agent.connect();
    assert!(d.call("ping", json!({}))["uptimeMs"].is_number());
    let e = c.call_err("no.such.method", json!({}));
    assert_eq!(e["code"], -32601);
}

#[test]
fn echo_exec() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let (r, pid) =
        c.start(json!({"cmd": "sh", "args": ["-c", "echo hello; echo oops >&2; exit 3"], "env": {"A": "1"}}));
    assert!(pid > 1);
    let (out, err, exit) = c.exec_output(r);
    assert_eq!(out, b"hello\n");
    assert_eq!(err, b"oops\n");
    assert_eq!(exit, json!({"ref": r, "code": 3, "signal": null, "timedOut": false}));
    // After exit the ref is gone.
    assert_eq!(c.call_err("exec.signal", json!({"ref": r, "signal": 15}))["code"], -32011);
}

#[test]
fn env_cwd_and_stdin() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let (r, _) = c.start(json!({"cmd": "sh", "args": ["-c", "echo $A $HOME; pwd; cat"], "env": {"A": "x"},
        "cwd": agent.dir.0.to_str().unwrap(), "stdin": "pipe"}));
    let id = c.request("exec.stdin", json!({"ref": r}), b"from stdin\n");
    assert_eq!(c.response(id).header["result"], json!({}));
    let id = c.request("exec.stdin", json!({"ref": r, "eof": true}), &[]);
    assert_eq!(c.response(id).header["result"], json!({}));
    let (out, _, exit) = c.exec_output(r);
    let want = format!("x\n{}\nfrom stdin\n", agent.dir.0.display());
    assert_eq!(String::from_utf8_lossy(&out), want, "HOME is not leaked from the agent");
    assert_eq!(exit["code"], 0);
}

#[test]
fn spawn_failures() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let e = c.call_err("exec.start", json!({"cmd": "definitely-not-a-program-krunbox"}));
    assert_eq!(e["code"], -32010);
    assert_eq!(e["message"], "spawn failed: ENOENT");
    assert_eq!(e["data"]["kind"], "not_found");
    assert_eq!(e["data"]["errno"], "ENOENT");
    assert_eq!(e["data"]["errnoNum"], 2);
    let kind = |c: &mut Client, p| c.call_err("exec.start", p)["data"]["kind"].clone();
    assert_eq!(kind(&mut c, json!({"cmd": "/nonexistent/x"})), "not_found");
    assert_eq!(kind(&mut c, json!({"cmd": "/"})), "not_executable");
    assert_eq!(kind(&mut c, json!({"cmd": ""})), "invalid_argument");
    assert_eq!(kind(&mut c, json!({"cmd": "sh", "args": ["a\u{0}b"]})), "invalid_argument");
    assert_eq!(kind(&mut c, json!({"cmd": "sh", "cwd": "/nonexistent-dir"})), "bad_cwd");
    assert_eq!(kind(&mut c, json!({"cmd": "sh", "user": "no-such-user-krunbox"})), "unknown_user");
    let f = agent.dir.path("script.txt");
    std::fs::write(&f, "not executable").unwrap();
    assert_eq!(kind(&mut c, json!({"cmd": f})), "permission_denied");
    assert_eq!(c.call_err("exec.start", json!({"args": []}))["code"], -32602);
}

#[test]
fn timeout_and_cancel_kill_the_group() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let t0 = Instant::now();
    let (r, _) = c.start(json!({"cmd": "sleep", "args": ["30"], "timeoutMs": 200}));
    let (_, _, exit) = c.exec_output(r);
    assert_eq!(exit["signal"], 9);
    assert_eq!(exit["timedOut"], true);
    assert!(t0.elapsed() < Duration::from_secs(5));
    let (r, _) = c.start(json!({"cmd": "sleep", "args": ["30"]}));
    c.notify("$/cancel", json!({"id": r}));
    let (_, _, exit) = c.exec_output(r);
    assert_eq!((exit["signal"].clone(), exit["timedOut"].clone()), (json!(9), json!(false)));
}

#[test]
fn background_child_does_not_hold_exit() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let t0 = Instant::now();
    let (r, _) = c.start(json!({"cmd": "sh", "args": ["-c", "sleep 30 & echo started"]}));
    let (out, _, exit) = c.exec_output(r);
    assert_eq!(out, b"started\n");
    assert_eq!(exit["code"], 0);
    assert!(t0.elapsed() < Duration::from_secs(5), "exit waited for the background child");
}

#[test]
fn flow_control_pauses_output() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // 4 MiB of output; never acknowledge: the agent must stop near the window.
    let (r, _) = c.start(json!({"cmd": "head", "args": ["-c", "4194304", "/dev/zero"]}));
    let mut got = 0usize;
    // Up to the window the output must come; past it, it must stop.
    while got < 1 << 20 {
        let f = c.next();
        assert_eq!(f.header["method"], "exec.out");
        assert!(f.attachment.len() <= 64 * 1024);
        got += f.attachment.len();
    }
    c.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    while let Ok(Some(f)) = krunbox_agent::frame::FrameReader::new(&c.stream).read_frame() {
        got += f.attachment.len();
    }
    assert!(((1 << 20)..=(1 << 20) + 3 * 64 * 1024).contains(&got), "sent {got} bytes without acks");
    c.stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.notify("exec.ack", json!({"ref": r, "bytes": got}));
    let (out, _, exit) = c.exec_output(r);
    assert_eq!(got + out.len(), 4 << 20);
    assert_eq!(exit["code"], 0);
}

#[test]
fn tty_exec() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let (r, _) = c.start(
        json!({"cmd": "sh", "args": ["-c", "test -t 1 && stty size && echo $TERM"], "tty": {"rows": 24, "cols": 100}}),
    );
    let (out, err, exit) = c.exec_output(r);
    assert_eq!(String::from_utf8_lossy(&out).replace('\r', ""), "24 100\nxterm-256color\n");
    assert!(err.is_empty());
    assert_eq!(exit["code"], 0);
}

#[test]
fn fs_roundtrip() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let path = agent.dir.path("data.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let h = c.call("fs.open", json!({"path": path, "mode": "w", "perm": 0o600}))["handle"].clone();
    let id = c.request("fs.write", json!({"handle": h}), &data);
    assert_eq!(c.response(id).header["result"]["written"], data.len());
    c.call("fs.close", json!({"handle": h}));
    let opened = c.call("fs.open", json!({"path": path, "mode": "r"}));
    assert_eq!(opened["size"], data.len());
    let id = c.request("fs.read", json!({"handle": opened["handle"], "length": 1 << 20}), &[]);
    let f = c.response(id);
    assert_eq!(f.header["result"]["eof"], true);
    assert_eq!(f.attachment, data);
    // Modes are exact (no umask) for fs calls; execs still get umask 022.
    let h =
        c.call("fs.open", json!({"path": agent.dir.path("open.txt"), "mode": "w", "perm": 0o666}))["handle"].clone();
    c.call("fs.close", json!({"handle": h}));
    assert_eq!(c.call("fs.stat", json!({"path": agent.dir.path("open.txt")}))["mode"], 0o666);
    let (r, _) = c.start(json!({"cmd": "sh", "args": ["-c", "umask"]}));
    assert_eq!(c.exec_output(r).0, b"0022\n");
    let st = c.call("fs.stat", json!({"path": path}));
    assert_eq!(
        (st["kind"].clone(), st["mode"].clone(), st["name"].clone()),
        (json!("file"), json!(0o600), json!("data.bin"))
    );
    assert_eq!(c.call_err("fs.read", json!({"handle": 999, "length": 1}))["code"], -32011);
}

#[test]
fn fs_tree_operations() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let p = |n: &str| agent.dir.path(n);
    c.call("fs.mkdir", json!({"path": p("a/b/c"), "parents": true}));
    c.call("fs.mkdir", json!({"path": p("a/b"), "parents": true}));
    let e = c.call_err("fs.mkdir", json!({"path": p("a/b")}));
    assert_eq!((e["code"].clone(), e["data"]["errno"].clone()), (json!(-32020), json!("EEXIST")));
    assert_eq!(e["data"]["path"], p("a/b"));
    std::fs::write(p("a/b/f.txt"), "hi").unwrap();
    c.call("fs.symlink", json!({"target": "f.txt", "path": p("a/b/link")}));
    let names: Vec<_> = c.call("fs.list", json!({"path": p("a/b")}))["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["kind"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(names, [("c".into(), "dir".into()), ("f.txt".into(), "file".into()), ("link".into(), "symlink".into())]);
    assert_eq!(c.call("fs.stat", json!({"path": p("a/b/link")}))["target"], "f.txt");
    assert_eq!(c.call("fs.stat", json!({"path": p("a/b/link"), "follow": true}))["kind"], "file");
    c.call("fs.copy", json!({"from": p("a"), "to": p("copy")}));
    assert_eq!(std::fs::read_link(p("copy/b/link")).unwrap().to_str(), Some("f.txt"));
    assert_eq!(std::fs::read_to_string(p("copy/b/f.txt")).unwrap(), "hi");
    c.call("fs.rename", json!({"from": p("copy"), "to": p("moved")}));
    assert_eq!(c.call("fs.exists", json!({"path": p("copy")}))["exists"], false);
    assert_eq!(c.call_err("fs.remove", json!({"path": p("moved")}))["data"]["errno"], "EISDIR");
    assert_eq!(c.call_err("fs.removeDir", json!({"path": p("moved")}))["data"]["errno"], "ENOTEMPTY");
    c.call("fs.removeDir", json!({"path": p("moved"), "recursive": true}));
    c.call("fs.remove", json!({"path": p("a/b/link")}));
    assert_eq!(c.call("fs.exists", json!({"path": p("moved")}))["exists"], false);
    assert_eq!(c.call_err("fs.stat", json!({"path": "/x\u{0}y"}))["code"], -32602);
    assert_eq!(c.call_err("fs.stat", json!({"path": "relative"}))["code"], -32602);
}

#[test]
fn bad_frames_are_answered_and_skipped() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // Oversized header: announced, sent, skipped.
    let h = (1u32 << 20) + 1;
    let mut bytes = [h.to_be_bytes(), 0u32.to_be_bytes()].concat();
    bytes.resize(8 + h as usize, b' ');
    c.send_raw(&bytes);
    let f = c.next();
    assert_eq!(f.header["error"]["code"], -32600);
    assert_eq!(f.header["error"]["data"]["reason"], "frame_too_large");
    assert_eq!(f.header["id"], json!(null));
    c.send_raw(&[&5u32.to_be_bytes()[..], &0u32.to_be_bytes(), b"{nope"].concat());
    assert_eq!(c.next().header["error"]["code"], -32700);
    let not_rpc = br#"{"id":5,"x":1}"#;
    c.send_raw(&[&(not_rpc.len() as u32).to_be_bytes()[..], &0u32.to_be_bytes(), not_rpc].concat());
    let f = c.next();
    assert_eq!((f.header["error"]["code"].clone(), f.header["id"].clone()), (json!(-32600), json!(5)));
    assert!(c.call("ping", json!({}))["uptimeMs"].is_number());
}

#[test]
fn metrics_has_every_field() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let m = c.call("metrics", json!({}));
    for k in [
        "uptimeMs",
        "cpus",
        "cpuBusyMs",
        "cpuIdleMs",
        "memTotalBytes",
        "memUsedBytes",
        "memAvailableBytes",
        "diskReadBytes",
        "diskWriteBytes",
        "netRxBytes",
        "netTxBytes",
        "processes",
    ] {
        assert!(m[k].is_number(), "{k} in {m}");
    }
    assert!(m["cpus"].as_u64().unwrap() >= 1 && m["memTotalBytes"].as_u64().unwrap() > 0);
}

#[test]
fn disconnect_kills_processes() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let (_, pid) = c.start(json!({"cmd": "sleep", "args": ["1000"]}));
    let (_, pid2) = c.start(json!({"cmd": "sh", "args": ["-c", "sleep 1000 & wait"]}));
    assert!(!common::gone(pid));
    drop(c);
    assert!(wait_gone(pid, Duration::from_secs(5)), "sleep 1000 survived the disconnect");
    assert!(wait_gone(pid2, Duration::from_secs(5)));
    // The agent still serves new connections.
    assert!(agent.connect().call("ping", json!({}))["uptimeMs"].is_number());
}

#[test]
fn shutdown_exits_zero() {
    let mut agent = Agent::start();
    let mut c = agent.connect();
    let (_, pid) = c.start(json!({"cmd": "sleep", "args": ["1000"]}));
    assert_eq!(c.call("shutdown", json!({"graceMs": 500})), json!({}));
    let status = agent.child.wait().unwrap();
    assert!(status.success());
    assert!(wait_gone(pid, Duration::from_secs(2)));
    assert!(!std::path::Path::new(&agent.sock).exists());
}

#[test]
fn signals_and_stdin_errors() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let (r, _) = c.start(json!({"cmd": "sleep", "args": ["30"]}));
    assert_eq!(c.call("exec.signal", json!({"ref": r, "signal": 15})), json!({}));
    assert_eq!(c.exec_output(r).2["signal"], 15);
    // A process that closed its stdin: the write fails with EPIPE.
    let (r, _) = c.start(json!({"cmd": "sh", "args": ["-c", "exec 0<&-; sleep 2"], "stdin": "pipe"}));
    std::thread::sleep(Duration::from_millis(200));
    let id = c.request("exec.stdin", json!({"ref": r}), b"lost\n");
    let e = c.response(id).header["error"].clone();
    assert_eq!((e["code"].clone(), e["data"]["errno"].clone()), (json!(-32011), json!("EPIPE")));
    c.call("exec.signal", json!({"ref": r, "signal": 9}));
    c.exec_output(r);
    assert_eq!(c.call_err("exec.stdin", json!({"ref": r}))["code"], -32011);
    let (r, _) = c.start(json!({"cmd": "sleep", "args": ["5"]}));
    assert_eq!(c.call_err("exec.stdin", json!({"ref": r}))["code"], -32602, "stdin was not a pipe");
    c.notify("$/cancel", json!({"id": r}));
    assert_eq!(c.exec_output(r).2["signal"], 9);
}

#[test]
fn concurrent_execs() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let refs: Vec<u64> = (0..24)
        .map(|i| c.request("exec.start", json!({"cmd": "sh", "args": ["-c", format!("echo {i}")]}), &[]))
        .collect();
    for r in &refs {
        assert!(c.response(*r).header["result"]["pid"].is_number());
    }
    for (i, r) in refs.iter().enumerate() {
        let (out, _, exit) = c.exec_output(*r);
        assert_eq!(String::from_utf8_lossy(&out), format!("{i}\n"));
        assert_eq!(exit["code"], 0);
    }
}

#[test]
fn odd_params_do_not_break_the_agent() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let (r, _) = c.start(json!({"cmd": "true", "timeoutMs": 1e300}));
    assert_eq!(c.exec_output(r).2["code"], 0);
    let (r, _) = c.start(json!({"cmd": "true", "timeoutMs": -5}));
    assert_eq!(c.exec_output(r).2["code"], 0);
    assert_eq!(c.call_err("exec.start", json!({"cmd": "true", "tty": {"rows": 70000, "cols": 1}}))["code"], -32602);
    assert_eq!(c.call_err("exec.signal", json!({"ref": 1, "signal": 0}))["code"], -32602);
    assert_eq!(c.call_err("fs.read", json!({"handle": -1, "length": 1}))["code"], -32602);
    let id = c.request("ping", json!([1, 2]), &[]);
    assert_eq!(c.response(id).header["error"]["code"], -32602);
    assert!(c.call("ping", json!({}))["uptimeMs"].is_number());
}

#[test]
fn guest_configure_sets_the_exec_env_and_checks_its_params() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // Host mode applies env only: hostname, clock and seed are checked, not applied to the host.
    let r = c.call(
        "guest.configure",
        json!({"env": {"POOLED": "yes"}, "hostname": "job-1", "timeNs": 1.7e18,
               "seed": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}),
    );
    assert_eq!(r, json!({}));
    let (r, _) = c.start(json!({"cmd": "sh", "args": ["-c", "echo $POOLED; echo ${PATH:+has-path}"]}));
    let (out, _, _) = c.exec_output(r);
    assert_eq!(String::from_utf8_lossy(&out), "yes\nhas-path\n", "env merged over the base env");
    // A second configure replaces the first env (not merged over it).
    assert_eq!(c.call("guest.configure", json!({"env": {"OTHER": "1"}})), json!({}));
    let (r, _) = c.start(json!({"cmd": "sh", "args": ["-c", "echo ${POOLED:-gone} $OTHER"]}));
    assert_eq!(String::from_utf8_lossy(&c.exec_output(r).0), "gone 1\n");
    // Malformed params: -32602 naming the field, and nothing applied.
    let e = c.call_err("guest.configure", json!({"env": {"NEW": "1"}, "seed": "AAAA"}));
    assert_eq!(e["code"], -32602);
    assert_eq!(e["data"]["field"], "seed");
    let (r, _) = c.start(json!({"cmd": "sh", "args": ["-c", "echo ${NEW:-unset}"]}));
    assert_eq!(String::from_utf8_lossy(&c.exec_output(r).0), "unset\n");
    assert_eq!(c.call_err("guest.configure", json!({"hostname": "a b"}))["data"]["field"], "hostname");
}
