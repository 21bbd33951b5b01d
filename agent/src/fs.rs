//! fs.* methods. Every failure is a -32020 error naming the errno and the
//! path the failing call was about.

use crate::errno;
use crate::rpc::{self, RpcError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Largest fs.read (longer requests are cut to this).
pub const MAX_READ: usize = crate::frame::MAX_ATTACHMENT;

/// A connection's open files.
#[derive(Default)]
pub struct Handles {
    files: HashMap<u64, File>,
    next: u64,
}

pub fn is_method(m: &str) -> bool {
    matches!(
        m,
        "fs.open"
            | "fs.read"
            | "fs.write"
            | "fs.close"
            | "fs.stat"
            | "fs.list"
            | "fs.exists"
            | "fs.mkdir"
            | "fs.remove"
            | "fs.removeDir"
            | "fs.rename"
            | "fs.copy"
            | "fs.symlink"
    )
}

/// A failed call on `path`.
struct FsError {
    errno: i32,
    path: PathBuf,
}

impl From<FsError> for RpcError {
    fn from(e: FsError) -> RpcError {
        let name = errno::name(e.errno);
        let path = e.path.to_string_lossy().into_owned();
        RpcError::new(rpc::FS_ERROR, format!("{name}: {path}"))
            .with_data(json!({"errno": name, "errnoNum": e.errno, "path": path}))
    }
}

/// `map_err` helper: attributes an I/O error to `path`.
fn at(path: &Path) -> impl Fn(io::Error) -> FsError + '_ {
    move |e| FsError { errno: errno::of(&e), path: path.to_path_buf() }
}

fn fail(errno: i32, path: &Path) -> FsError {
    FsError { errno, path: path.to_path_buf() }
}

/// Checks a path parameter: absolute, no NUL.
fn path_param(p: &str) -> Result<PathBuf, RpcError> {
    if p.contains('\0') {
        return Err(RpcError::invalid_params("NUL in path"));
    }
    if !p.starts_with('/') {
        return Err(RpcError::invalid_params(format!("path must be absolute: {p}")));
    }
    Ok(PathBuf::from(p))
}

type Out = Result<(Value, Vec<u8>), RpcError>;

fn ok(v: Value) -> Out {
    Ok((v, Vec::new()))
}

/// Runs one fs method.
pub fn call(h: &mut Handles, method: &str, params: Value, attachment: Vec<u8>) -> Out {
    match method {
        "fs.open" => open(h, rpc::params(params)?),
        "fs.read" => read(h, rpc::params(params)?),
        "fs.write" => write(h, rpc::params(params)?, &attachment),
        "fs.close" => {
            let p: HandleParams = rpc::params(params)?;
            h.files.remove(&p.handle).ok_or_else(|| no_handle(p.handle))?;
            ok(json!({}))
        }
        "fs.stat" => {
            let p: StatParams = rpc::params(params)?;
            let path = path_param(&p.path)?;
            let md = if p.follow { fs::metadata(&path) } else { fs::symlink_metadata(&path) };
            ok(entry(&path, &md.map_err(at(&path))?))
        }
        "fs.list" => list(rpc::params(params)?),
        "fs.exists" => {
            let p: PathParams = rpc::params(params)?;
            let path = path_param(&p.path)?;
            match fs::symlink_metadata(&path) {
                Ok(_) => ok(json!({"exists": true})),
                Err(e) if matches!(errno::of(&e), libc::ENOENT | libc::ENOTDIR) => ok(json!({"exists": false})),
                Err(e) => Err(at(&path)(e).into()),
            }
        }
        "fs.mkdir" => {
            let p: MkdirParams = rpc::params(params)?;
            let path = path_param(&p.path)?;
            let existed = path.is_dir();
            fs::DirBuilder::new().recursive(p.parents).mode(p.mode).create(&path).map_err(at(&path))?;
            if !existed {
                fs::set_permissions(&path, fs::Permissions::from_mode(p.mode)).map_err(at(&path))?;
            }
            ok(json!({}))
        }
        "fs.remove" => {
            let p: PathParams = rpc::params(params)?;
            let path = path_param(&p.path)?;
            fs::remove_file(&path).map_err(at(&path))?;
            ok(json!({}))
        }
        "fs.removeDir" => {
            let p: RemoveDirParams = rpc::params(params)?;
            let path = path_param(&p.path)?;
            let md = fs::symlink_metadata(&path).map_err(at(&path))?;
            if !md.is_dir() {
                return Err(fail(libc::ENOTDIR, &path).into());
            }
            // std's remove_dir_all does not follow symlinks inside the tree.
            let r = if p.recursive { fs::remove_dir_all(&path) } else { fs::remove_dir(&path) };
            r.map_err(at(&path))?;
            ok(json!({}))
        }
        "fs.rename" => {
            let p: FromTo = rpc::params(params)?;
            let (from, to) = (path_param(&p.from)?, path_param(&p.to)?);
            fs::rename(&from, &to).map_err(at(&from))?;
            ok(json!({}))
        }
        "fs.copy" => {
            let p: FromTo = rpc::params(params)?;
            let (from, to) = (path_param(&p.from)?, path_param(&p.to)?);
            if to.starts_with(&from) && fs::symlink_metadata(&from).map(|m| m.is_dir()).unwrap_or(false) {
                return Err(fail(libc::EINVAL, &to).into());
            }
            copy(&from, &to)?;
            ok(json!({}))
        }
        "fs.symlink" => {
            let p: SymlinkParams = rpc::params(params)?;
            let path = path_param(&p.path)?;
            if p.target.contains('\0') {
                return Err(RpcError::invalid_params("NUL in target"));
            }
            std::os::unix::fs::symlink(&p.target, &path).map_err(at(&path))?;
            ok(json!({}))
        }
        _ => Err(RpcError::new(rpc::METHOD_NOT_FOUND, format!("method not found: {method}"))),
    }
}

#[derive(Deserialize)]
struct PathParams {
    path: String,
}

#[derive(Deserialize)]
struct StatParams {
    path: String,
    #[serde(default)]
    follow: bool,
}

#[derive(Deserialize)]
struct MkdirParams {
    path: String,
    #[serde(default)]
    parents: bool,
    #[serde(default = "default_dir_mode")]
    mode: u32,
}

fn default_dir_mode() -> u32 {
    0o755
}

#[derive(Deserialize)]
struct RemoveDirParams {
    path: String,
    #[serde(default)]
    recursive: bool,
}

#[derive(Deserialize)]
struct FromTo {
    from: String,
    to: String,
}

#[derive(Deserialize)]
struct SymlinkParams {
    target: String,
    path: String,
}

#[derive(Deserialize)]
struct OpenParams {
    path: String,
    #[serde(default = "default_open_mode")]
    mode: String,
    #[serde(default = "default_perm")]
    perm: u32,
}

fn default_open_mode() -> String {
    "r".into()
}

fn default_perm() -> u32 {
    0o644
}

#[derive(Deserialize)]
struct HandleParams {
    handle: u64,
}

#[derive(Deserialize)]
struct ReadParams {
    handle: u64,
    length: u64,
}

fn no_handle(h: u64) -> RpcError {
    RpcError::no_such_process(format!("handle {h}"))
}

fn open(h: &mut Handles, p: OpenParams) -> Out {
    let path = path_param(&p.path)?;
    let mut o = OpenOptions::new();
    match p.mode.as_str() {
        "r" => o.read(true),
        "w" => o.write(true).create(true).truncate(true).mode(p.perm),
        "a" => o.append(true).create(true).mode(p.perm),
        m => return Err(RpcError::invalid_params(format!("bad mode {m:?}"))),
    };
    // Modes apply on creation only, exactly (the umask is 022): find out whether this open creates.
    let creates = p.mode != "r" && fs::symlink_metadata(&path).is_err();
    let f = o.open(&path).map_err(at(&path))?;
    if creates {
        f.set_permissions(fs::Permissions::from_mode(p.perm)).map_err(at(&path))?;
    }
    let size = f.metadata().map_err(at(&path))?.len();
    h.next += 1;
    h.files.insert(h.next, f);
    ok(json!({"handle": h.next, "size": size}))
}

fn read(h: &mut Handles, p: ReadParams) -> Out {
    let f = h.files.get_mut(&p.handle).ok_or_else(|| no_handle(p.handle))?;
    let want = (p.length as usize).min(MAX_READ);
    let mut buf = vec![0u8; want];
    let mut got = 0;
    let mut eof = false;
    while got < want {
        match f.read(&mut buf[got..]) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(errno::of(&e), Path::new(&format!("handle {}", p.handle))).into()),
        }
    }
    buf.truncate(got);
    Ok((json!({"eof": eof}), buf))
}

fn write(h: &mut Handles, p: HandleParams, data: &[u8]) -> Out {
    let f = h.files.get_mut(&p.handle).ok_or_else(|| no_handle(p.handle))?;
    f.write_all(data).map_err(|e| fail(errno::of(&e), Path::new(&format!("handle {}", p.handle))))?;
    ok(json!({"written": data.len()}))
}

fn kind_name(ft: fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "char"
    } else {
        "block"
    }
}

/// The Entry object of PROTOCOL.md.
fn entry(path: &Path, md: &fs::Metadata) -> Value {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into());
    let mtime_ms = md.mtime() as f64 * 1000.0 + md.mtime_nsec() as f64 / 1e6;
    let mut e = json!({
        "name": name,
        "path": path.to_string_lossy(),
        "kind": kind_name(md.file_type()),
        "size": md.size(),
        "mode": md.mode() & 0o7777,
        "uid": md.uid(),
        "gid": md.gid(),
        "mtimeMs": mtime_ms,
    });
    if md.file_type().is_symlink() {
        if let Ok(t) = fs::read_link(path) {
            e["target"] = Value::from(t.to_string_lossy().into_owned());
        }
    }
    e
}

fn list(p: PathParams) -> Out {
    let path = path_param(&p.path)?;
    let mut names: Vec<_> =
        fs::read_dir(&path).map_err(at(&path))?.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
    names.sort();
    let entries: Vec<Value> = names
        .iter()
        .filter_map(|n| {
            let child = path.join(n);
            // An entry removed since readdir is skipped.
            fs::symlink_metadata(&child).ok().map(|md| entry(&child, &md))
        })
        .collect();
    ok(json!({"entries": entries}))
}

/// Copies files (keeping their mode), directories (recursively) and symlinks
/// (as links). FIFOs are recreated; devices and sockets give EINVAL.
fn copy(from: &Path, to: &Path) -> Result<(), FsError> {
    let md = fs::symlink_metadata(from).map_err(at(from))?;
    let ft = md.file_type();
    let perm = md.mode() & 0o7777;
    if ft.is_symlink() {
        let target = fs::read_link(from).map_err(at(from))?;
        std::os::unix::fs::symlink(target, to).map_err(at(to))
    } else if ft.is_dir() {
        fs::DirBuilder::new().mode(0o700).create(to).map_err(at(to))?;
        let mut names: Vec<_> =
            fs::read_dir(from).map_err(at(from))?.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        names.sort();
        for n in names {
            copy(&from.join(&n), &to.join(&n))?;
        }
        fs::set_permissions(to, fs::Permissions::from_mode(perm)).map_err(at(to))
    } else if ft.is_file() {
        let mut src = File::open(from).map_err(at(from))?;
        let mut dst = OpenOptions::new().write(true).create(true).truncate(true).mode(perm).open(to).map_err(at(to))?;
        io::copy(&mut src, &mut dst).map_err(at(to))?;
        dst.set_permissions(fs::Permissions::from_mode(perm)).map_err(at(to))
    } else if ft.is_fifo() {
        let c = crate::sys::cstr(&to.to_string_lossy()).map_err(at(to))?;
        crate::sys::check(unsafe { libc::mkfifo(c.as_ptr(), perm) }).map_err(at(to))?;
        Ok(())
    } else {
        Err(fail(libc::EINVAL, from))
    }
}
