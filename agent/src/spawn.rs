//! exec.start up to the running process: parameter checks, environment,
//! user, working directory and program lookup, then fork/exec.
//!
//! Everything that can be checked is checked before forking, so failures come
//! back as spawn errors with a precise `kind` (never as exit code 127). What
//! only the child can see (chdir or setuid as the target user, execve itself)
//! travels back through std's exec-error pipe, which carries a single errno:
//! our `pre_exec` steps add `STAGE_* × 10000` to it so the kind is still known.

use crate::agent;
use crate::errno;
use crate::reaper::{self, ExitSlot};
use crate::rpc::{self, RpcError};
use crate::users::{self, User, UserSpec};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct StartParams {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<UserSpec>,
    pub tty: Option<TtySize>,
    #[serde(default)]
    pub stdin: StdinMode,
    pub timeout_ms: Option<f64>,
}

#[derive(Deserialize, Debug, Clone, Copy)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StdinMode {
    Pipe,
    #[default]
    Null,
}

/// A failed spawn: the -32010 error.
#[derive(Debug)]
pub struct SpawnError {
    pub kind: &'static str,
    pub errno: i32,
    pub detail: String,
}

impl SpawnError {
    fn new(kind: &'static str, errno: i32, detail: impl Into<String>) -> Self {
        SpawnError { kind, errno, detail: detail.into() }
    }

    pub fn to_rpc(&self) -> RpcError {
        let name = errno::name(self.errno);
        RpcError::new(rpc::SPAWN_FAILED, format!("spawn failed: {name}")).with_data(json!({
            "kind": self.kind, "errno": name, "errnoNum": self.errno, "detail": self.detail,
        }))
    }
}

/// A started process and the agent's ends of its stdio.
pub struct Spawned {
    pub pid: i32,
    pub exit: Arc<ExitSlot>,
    /// Where exec.stdin writes go (pipe, or a dup of the pty master).
    pub stdin: Option<OwnedFd>,
    /// Output fds with their protocol fd number (1 or 2).
    pub outputs: Vec<(OwnedFd, u8)>,
    /// The pty master, for resize.
    pub pty: Option<OwnedFd>,
}

const STAGE_SETSID: i32 = 1;
const STAGE_TTY: i32 = 2;
const STAGE_USER: i32 = 3;
const STAGE_CWD: i32 = 4;
const STAGE_MUL: i32 = 10000;

fn staged(stage: i32) -> io::Error {
    io::Error::from_raw_os_error(stage * STAGE_MUL + errno::last())
}

fn invalid(detail: &str) -> SpawnError {
    SpawnError::new("invalid_argument", libc::EINVAL, detail)
}

fn check_strings(p: &StartParams) -> Result<(), SpawnError> {
    if p.cmd.is_empty() {
        return Err(invalid("empty cmd"));
    }
    let nul = |s: &str| s.contains('\0');
    if nul(&p.cmd) || p.args.iter().any(|a| nul(a)) || p.cwd.as_deref().is_some_and(nul) {
        return Err(invalid("NUL byte in cmd, args or cwd"));
    }
    if let Some(UserSpec::Name(n)) = &p.user {
        if nul(n) || n.is_empty() {
            return Err(invalid("bad user name"));
        }
    }
    if !valid_env(&p.env) {
        return Err(invalid("bad environment variable name or value"));
    }
    Ok(())
}

/// Whether every name is non-empty without `=` or NUL and no value has a NUL
/// (what execve can carry).
pub fn valid_env(env: &BTreeMap<String, String>) -> bool {
    env.iter().all(|(k, v)| !k.is_empty() && !k.contains('=') && !k.contains('\0') && !v.contains('\0'))
}

/// The environment of the new process.
fn build_env(p: &StartParams, user: Option<&User>) -> BTreeMap<String, String> {
    let mut env = agent::get().default_env();
    if let Some(u) = user {
        env.insert("HOME".into(), u.home.clone());
        if let Some(n) = &u.name {
            env.insert("USER".into(), n.clone());
            env.insert("LOGNAME".into(), n.clone());
        }
    }
    if p.tty.is_some() {
        env.entry("TERM".into()).or_insert_with(|| "xterm-256color".into());
    }
    for (k, v) in &p.env {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// The absolute working directory, checked to be an accessible directory.
fn check_cwd(p: &StartParams) -> Result<PathBuf, SpawnError> {
    let a = agent::get();
    let cwd = Path::new("/").join(p.cwd.as_deref().unwrap_or(&a.workdir));
    let bad = |e: i32| SpawnError::new("bad_cwd", e, format!("cwd {}", cwd.display()));
    match std::fs::metadata(&cwd) {
        Err(e) => Err(bad(errno::of(&e))),
        Ok(md) if !md.is_dir() => Err(bad(libc::ENOTDIR)),
        Ok(_) => {
            let c = CString::new(cwd.as_os_str().as_bytes()).map_err(|_| invalid("cwd"))?;
            if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
                return Err(bad(errno::last()));
            }
            Ok(cwd)
        }
    }
}

/// Checks that `p` is something execve can run.
fn check_program(p: &Path) -> Result<(), SpawnError> {
    let shown = p.display().to_string();
    let md = std::fs::metadata(p).map_err(|e| match errno::of(&e) {
        libc::ENOENT | libc::ENOTDIR => SpawnError::new("not_found", libc::ENOENT, format!("no such program: {shown}")),
        libc::EACCES => SpawnError::new("permission_denied", libc::EACCES, shown.clone()),
        n => SpawnError::new("other", n, shown.clone()),
    })?;
    if md.is_dir() {
        return Err(SpawnError::new("not_executable", libc::EACCES, format!("{shown} is a directory")));
    }
    if !md.is_file() {
        return Err(SpawnError::new("not_executable", libc::EACCES, format!("{shown} is not a regular file")));
    }
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| invalid("cmd"))?;
    if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
        return Err(SpawnError::new("permission_denied", errno::last(), format!("{shown} is not executable")));
    }
    Ok(())
}

/// Finds `cmd` like execvp would, on `path_var` (relative entries and a cmd
/// with a `/` are taken relative to the exec's cwd). Empty PATH entries are
/// skipped rather than meaning ".".
pub fn resolve(cmd: &str, path_var: &str, cwd: &Path) -> Result<PathBuf, SpawnError> {
    if cmd.contains('/') {
        let p = cwd.join(cmd);
        check_program(&p)?;
        return Ok(p);
    }
    let mut first_err = None;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let cand = cwd.join(dir).join(cmd);
        match check_program(&cand) {
            Ok(()) => return Ok(cand),
            Err(e) if e.kind == "not_found" => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| SpawnError::new("not_found", libc::ENOENT, format!("{cmd} not found on PATH"))))
}

/// Maps an error of `Command::spawn` (maybe carrying a stage) to a kind.
fn spawn_error(e: io::Error, program: &Path) -> SpawnError {
    let raw = match e.raw_os_error() {
        Some(n) => n,
        None => return SpawnError::new("other", libc::EIO, e.to_string()),
    };
    let (stage, n) = (raw / STAGE_MUL, raw % STAGE_MUL);
    let shown = program.display().to_string();
    match stage {
        STAGE_CWD => SpawnError::new("bad_cwd", n, "chdir failed as the target user"),
        STAGE_USER => {
            let kind = if n == libc::EPERM { "permission_denied" } else { "other" };
            SpawnError::new(kind, n, "cannot switch user")
        }
        STAGE_SETSID | STAGE_TTY => SpawnError::new("other", n, "cannot set up session or terminal"),
        _ => match n {
            libc::ENOENT => SpawnError::new("not_found", n, format!("{shown} or its interpreter not found")),
            libc::EACCES | libc::EPERM => SpawnError::new("permission_denied", n, shown),
            libc::ENOEXEC | libc::EISDIR | libc::ELIBBAD | libc::ETXTBSY => SpawnError::new("not_executable", n, shown),
            _ => SpawnError::new("other", n, shown),
        },
    }
}

fn other(e: io::Error, what: &str) -> SpawnError {
    SpawnError::new("other", errno::of(&e), format!("{what}: {e}"))
}

/// Starts the process described by `p`.
pub fn spawn(p: &StartParams) -> Result<Spawned, SpawnError> {
    check_strings(p)?;
    let user = match &p.user {
        None => None,
        Some(spec) => Some(
            users::lookup(spec, Path::new("/"))
                .ok_or_else(|| SpawnError::new("unknown_user", libc::ENOENT, format!("unknown user {spec:?}")))?,
        ),
    };
    let env = build_env(p, user.as_ref());
    let cwd = check_cwd(p)?;
    let path_var = env.get("PATH").map(String::as_str).unwrap_or(agent::DEFAULT_PATH);
    let program = resolve(&p.cmd, path_var, &cwd)?;

    let mut cmd = Command::new(&program);
    cmd.arg0(&p.cmd).args(&p.args).env_clear().envs(&env);
    let mut pty = None;
    let mut stdin_fd = None;
    let mut outputs = Vec::new();
    match p.tty {
        Some(size) => {
            let (master, slave) = crate::pty::open(size.rows, size.cols).map_err(|e| other(e, "openpty"))?;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| other(e, "dup"));
            cmd.stdin(Stdio::from(dup(&slave)?)).stdout(Stdio::from(dup(&slave)?)).stderr(Stdio::from(slave));
            stdin_fd = Some(dup(&master)?);
            outputs.push((dup(&master)?, 1));
            pty = Some(master);
        }
        None => {
            cmd.stdin(if p.stdin == StdinMode::Pipe { Stdio::piped() } else { Stdio::null() });
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }

    let tty = p.tty.is_some();
    if !tty && user.is_none() {
        // Fast path: no closure, so std spawns with posix_spawn (clone with
        // CLONE_VFORK) instead of fork — about half the cost of a `true`.
        // A new process group instead of a new session: group kills work the
        // same, and without a tty there is no controlling terminal to leave.
        // std cannot chdir in posix_spawn from a static binary (it looks the
        // glibc extension up with dlsym), so only change directory when needed.
        cmd.process_group(0);
        if std::env::current_dir().ok().as_deref() != Some(cwd.as_path()) {
            cmd.current_dir(&cwd);
        }
    } else {
        let ids = user.as_ref().map(|u| (u.uid, u.gid, u.groups.clone()));
        let cwd_c = CString::new(cwd.as_os_str().as_bytes()).map_err(|_| invalid("cwd"))?;
        // Runs in the forked child: async-signal-safe calls only, no allocation.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(staged(STAGE_SETSID));
                }
                if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(staged(STAGE_TTY));
                }
                if let Some((uid, gid, groups)) = &ids {
                    if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                        || libc::setgid(*gid) < 0
                        || libc::setuid(*uid) < 0
                    {
                        return Err(staged(STAGE_USER));
                    }
                }
                if libc::chdir(cwd_c.as_ptr()) < 0 {
                    return Err(staged(STAGE_CWD));
                }
                Ok(())
            });
        }
    }

    let (mut child, exit) = reaper::spawn(&mut cmd).map_err(|e| spawn_error(e, &program))?;
    // Drop our copies of the pty slave now: the master must see EIO once the
    // process side closes it.
    drop(cmd);
    let pid = child.id() as i32;
    if pty.is_none() {
        stdin_fd = child.stdin.take().map(OwnedFd::from);
        if let Some(o) = child.stdout.take() {
            outputs.push((OwnedFd::from(o), 1));
        }
        if let Some(o) = child.stderr.take() {
            outputs.push((OwnedFd::from(o), 2));
        }
    }
    Ok(Spawned { pid, exit, stdin: stdin_fd, outputs, pty })
}
