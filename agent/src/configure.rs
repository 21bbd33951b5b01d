//! `guest.configure`: a sandbox's per-instance identity applied in one call
//! to a guest that is already booted (a warm pool's sandbox handed out under
//! its new name, a VM restored from a snapshot): hostname, default exec env,
//! wall clock and the kernel's random state.
//!
//! Every field is checked before anything is applied, so malformed params
//! change nothing (-32602 with `data.field`). Then, in order: env, hostname,
//! clock, entropy. In host mode (the agent is not the machine's init) only
//! `env` is applied; the other fields are checked and left alone, so a test
//! never changes the host's name, clock or random pool.

use crate::agent::{self, Mode};
use crate::rpc::{RpcError, RpcResult};
use crate::sys::{check, open};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;

/// Smallest and largest seed, in bytes after base64 decoding.
pub const MIN_SEED: usize = 32;
pub const MAX_SEED: usize = 4096;
/// HOST_NAME_MAX.
pub const MAX_HOSTNAME: usize = 64;
/// Past this instant (year 2500, in ns since the epoch) a clock is malformed.
const MAX_TIME_NS: f64 = 16_725_225_600e9;

/// `_IOW('R', 0x03, int[2])`: add bytes to the input pool, crediting entropy.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigureParams {
    hostname: Option<String>,
    env: Option<BTreeMap<String, String>>,
    time_ns: Option<f64>,
    seed: Option<String>,
}

/// Checked params, ready to apply.
#[derive(Debug, Default, PartialEq)]
pub struct Configure {
    pub hostname: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub time_ns: Option<u128>,
    pub seed: Option<Vec<u8>>,
}

fn bad(field: &str, detail: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(format!("{field}: {detail}")).with_data(json!({"field": field}))
}

/// A hostname: 1 to 64 of `[A-Za-z0-9._-]`, starting with a letter or digit.
fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= MAX_HOSTNAME
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && h.as_bytes()[0].is_ascii_alphanumeric()
}

/// Checks the params; nothing is applied.
pub fn parse(params: Value) -> Result<Configure, RpcError> {
    // Field by field, so a wrong type names its field.
    let obj = params.as_object().cloned().unwrap_or_default();
    let mut p = ConfigureParams::default();
    for (k, v) in obj {
        let null = v.is_null();
        match k.as_str() {
            "hostname" if !null => p.hostname = Some(serde_json::from_value(v).map_err(|e| bad("hostname", e))?),
            "env" if !null => p.env = Some(serde_json::from_value(v).map_err(|e| bad("env", e))?),
            "timeNs" if !null => p.time_ns = Some(serde_json::from_value(v).map_err(|e| bad("timeNs", e))?),
            "seed" if !null => p.seed = Some(serde_json::from_value(v).map_err(|e| bad("seed", e))?),
            _ => {}
        }
    }
    if let Some(h) = &p.hostname {
        if !valid_hostname(h) {
            return Err(bad("hostname", "1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit"));
        }
    }
    if let Some(env) = &p.env {
        if !crate::spawn::valid_env(env) {
            return Err(bad("env", "a name is empty or holds '=' or NUL, or a value holds NUL"));
        }
    }
    let time_ns = match p.time_ns {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 && t < MAX_TIME_NS => Some(t as u128),
        Some(t) => return Err(bad("timeNs", format!("{t} is not a time in ns since the epoch"))),
    };
    let seed = match &p.seed {
        None => None,
        Some(s) => {
            let b = base64_decode(s).ok_or_else(|| bad("seed", "not base64"))?;
            if b.len() < MIN_SEED || b.len() > MAX_SEED {
                return Err(bad("seed", format!("{} bytes; {MIN_SEED} to {MAX_SEED} required", b.len())));
            }
            Some(b)
        }
    };
    Ok(Configure { hostname: p.hostname, env: p.env, time_ns, seed })
}

/// What is left of a `guest.configure` once its reply is sent.
#[derive(Debug, Default)]
pub struct AfterReply {
    /// The name for `/etc/hostname`: the kernel's hostname is set before the
    /// reply; the file (an ext4 write on the root, the slowest step, ~45 ms on
    /// a restored guest whose code is not yet translated under TCG) is
    /// written after it, by the same thread before it reads the next request,
    /// so every later request of the host (all of them come through this one
    /// stream) sees it. A guest process already running may read the old file
    /// for those few ms. Its result was never reported.
    hostname_file: Option<String>,
}

impl AfterReply {
    /// Does it.
    pub fn run(self) {
        if let Some(h) = self.hostname_file {
            crate::init::write_hostname_file(&h);
        }
    }
}

/// The `guest.configure` method: its reply, and what to do once the reply is sent.
pub fn call(params: Value) -> (RpcResult, AfterReply) {
    let mut after = AfterReply::default();
    // A later step's failure leaves the hostname applied, file and all, as before.
    let reply = apply(params, &mut after);
    (reply, after)
}

fn apply(params: Value, after: &mut AfterReply) -> RpcResult {
    let c = parse(params)?;
    let a = agent::get();
    if let Some(env) = c.env {
        a.set_env(env);
    }
    if a.mode != Mode::Init {
        return Ok(json!({}));
    }
    let failed = |what: &str, e: io::Error| {
        RpcError::internal(format!("{what}: {e}"))
            .with_data(json!({"field": what, "errno": crate::errno::name(crate::errno::of(&e))}))
    };
    if let Some(h) = &c.hostname {
        crate::init::apply_hostname(h).map_err(|e| failed("hostname", e))?;
        after.hostname_file = Some(h.clone());
    }
    if let Some(t) = c.time_ns {
        set_realtime(t).map_err(|e| failed("timeNs", e))?;
    }
    if let Some(seed) = &c.seed {
        reseed(seed).map_err(|e| failed("seed", e))?;
    }
    Ok(json!({}))
}

/// clock_settime(CLOCK_REALTIME).
fn set_realtime(ns: u128) -> io::Result<()> {
    let ts =
        libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long };
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(|_| ())
}

/// Mixes `seed` into the input pool (credited as entropy) and reseeds the
/// CRNG, so every later getrandom and /dev/urandom read depends on it.
fn reseed(seed: &[u8]) -> io::Result<()> {
    let fd = open("/dev/urandom", libc::O_WRONLY)?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<u8> = Vec::with_capacity(8 + seed.len() + 3);
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    // Rounded up to whole u32 words (buf is __u32[]); the kernel reads buf_size bytes.
    info.resize(8 + seed.len().div_ceil(4) * 4, 0);
    let words: Vec<u32> = info.chunks(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
    check(unsafe { libc::ioctl(fd.as_raw_fd(), RNDADDENTROPY as _, words.as_ptr()) })?;
    check(unsafe { libc::ioctl(fd.as_raw_fd(), RNDRESEEDCRNG as _) }).map(|_| ())
}

/// Standard base64 (RFC 4648, padding optional); None when malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone trailing sextet (length ≡ 1 mod 4) cannot end valid base64.
    if s.len() % 4 == 1 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc;

    #[test]
    fn base64_roundtrip_vectors() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("Zm9vYg").unwrap(), b"foob");
        assert!(base64_decode("Zm9v!").is_none());
        assert!(base64_decode("Z").is_none());
    }

    #[test]
    fn parse_checks_every_field() {
        let ok = parse(json!({"hostname":"job-1","env":{"A":"1"},"timeNs":1.7e18,
            "seed":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}))
        .unwrap();
        assert_eq!(ok.hostname.as_deref(), Some("job-1"));
        assert_eq!(ok.seed.as_ref().map(Vec::len), Some(32));
        assert_eq!(parse(json!({})).unwrap(), Configure::default());
        let field = |v: Value| parse(v).unwrap_err().data.unwrap()["field"].as_str().unwrap().to_string();
        assert_eq!(field(json!({"hostname": ""})), "hostname");
        assert_eq!(field(json!({"hostname": "a/b"})), "hostname");
        assert_eq!(field(json!({"hostname": "x".repeat(65)})), "hostname");
        assert_eq!(field(json!({"hostname": 3})), "hostname");
        assert_eq!(field(json!({"env": {"A=B": "1"}})), "env");
        assert_eq!(field(json!({"env": {"A": 1}})), "env");
        assert_eq!(field(json!({"timeNs": -1})), "timeNs");
        assert_eq!(field(json!({"timeNs": "now"})), "timeNs");
        assert_eq!(field(json!({"seed": "AAAA"})), "seed");
        assert_eq!(field(json!({"seed": "not base64!"})), "seed");
        assert_eq!(parse(json!({"hostname": 3})).unwrap_err().code, rpc::INVALID_PARAMS);
    }
}
