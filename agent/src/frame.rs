//! Frame codec of PROTOCOL.md: `u32 BE H`, `u32 BE B`, H bytes of JSON-RPC
//! header, B bytes of raw attachment.
//!
//! Two decoders share the checks: [`decode`] works on a complete buffer (tests,
//! vectors), [`FrameReader`] on a byte stream (the server). The stream reader
//! recovers from every error but a truncated stream or an I/O error: an
//! oversized frame is read and dropped, a bad header is dropped, and the caller
//! answers with the error and goes on.

use serde_json::Value;
use std::fmt;
use std::io::{self, Read};

/// Largest header H (1 MiB).
pub const MAX_HEADER: usize = 1 << 20;
/// Largest attachment B (4 MiB).
pub const MAX_ATTACHMENT: usize = 4 << 20;
/// Length of the two length words.
pub const PREFIX_LEN: usize = 8;

/// One decoded frame: a JSON-RPC header object and its attachment.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub header: Value,
    pub attachment: Vec<u8>,
}

/// Why a frame could not be decoded.
#[derive(Debug)]
pub enum FrameError {
    /// H or B above the limit (the stream reader has skipped the frame).
    TooLarge { header_len: u64, attachment_len: u64 },
    /// The header is not UTF-8 JSON (answered with -32700).
    Parse(String),
    /// JSON that is not a JSON-RPC message (-32600); `id` is the message's id
    /// when it has one, else null.
    Invalid { id: Value, reason: String },
    /// The bytes end inside a frame: the connection is over.
    Truncated,
    /// The stream failed: the connection is over.
    Io(io::Error),
}

impl FrameError {
    /// Short name used by the shared test vectors.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "frame_too_large",
            FrameError::Parse(_) => "parse_error",
            FrameError::Invalid { .. } => "invalid_request",
            FrameError::Truncated => "truncated",
            FrameError::Io(_) => "io",
        }
    }

    /// True when the connection cannot go on after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, FrameError::Truncated | FrameError::Io(_))
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { header_len, attachment_len } => {
                write!(f, "frame too large (header {header_len} bytes, attachment {attachment_len} bytes)")
            }
            FrameError::Parse(m) => write!(f, "parse error: {m}"),
            FrameError::Invalid { reason, .. } => write!(f, "invalid request: {reason}"),
            FrameError::Truncated => write!(f, "truncated frame"),
            FrameError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

/// Encodes one frame. Fails with `TooLarge` when the header or the attachment
/// is above the limits (the peer would refuse it).
pub fn encode(header: &Value, attachment: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = encode_head(header, attachment.len())?;
    out.extend_from_slice(attachment);
    Ok(out)
}

/// Encodes the prefix and header of a frame whose attachment (of
/// `attachment_len` bytes) the caller writes right after, without copying it.
pub fn encode_head(header: &Value, attachment_len: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; PREFIX_LEN];
    serde_json::to_writer(&mut out, header).map_err(|e| FrameError::Parse(e.to_string()))?;
    let h = out.len() - PREFIX_LEN;
    if h > MAX_HEADER || attachment_len > MAX_ATTACHMENT {
        return Err(FrameError::TooLarge { header_len: h as u64, attachment_len: attachment_len as u64 });
    }
    out[..4].copy_from_slice(&(h as u32).to_be_bytes());
    out[4..8].copy_from_slice(&(attachment_len as u32).to_be_bytes());
    Ok(out)
}

/// Reads the two lengths; `TooLarge` when one is above its limit.
pub fn parse_prefix(prefix: &[u8; PREFIX_LEN]) -> Result<(usize, usize), FrameError> {
    let h = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let b = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
    if h > MAX_HEADER || b > MAX_ATTACHMENT {
        return Err(FrameError::TooLarge { header_len: h as u64, attachment_len: b as u64 });
    }
    Ok((h, b))
}

/// Parses and checks a header: UTF-8 JSON (else `Parse`), a JSON-RPC 2.0
/// request, notification or response (else `Invalid`).
pub fn parse_header(bytes: &[u8]) -> Result<Value, FrameError> {
    if bytes.is_empty() {
        return Err(FrameError::Invalid { id: Value::Null, reason: "empty header".into() });
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| FrameError::Parse(e.to_string()))?;
    let obj = match v.as_object() {
        Some(o) => o,
        None => return Err(FrameError::Invalid { id: Value::Null, reason: "header is not an object".into() }),
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    let invalid = |reason: &str| FrameError::Invalid { id: id.clone(), reason: reason.into() };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("jsonrpc must be \"2.0\""));
    }
    match obj.get("method") {
        Some(Value::String(_)) => {}
        Some(_) => return Err(invalid("method must be a string")),
        None => {
            let is_response = obj.contains_key("id") && (obj.contains_key("result") || obj.contains_key("error"));
            if !is_response {
                return Err(invalid("neither a request nor a response"));
            }
        }
    }
    Ok(v)
}

/// Decodes the first frame of `buf`; returns it with the number of bytes it
/// used. `Truncated` when `buf` ends inside the frame.
pub fn decode(buf: &[u8]) -> Result<(Frame, usize), FrameError> {
    if buf.len() < PREFIX_LEN {
        return Err(FrameError::Truncated);
    }
    let mut prefix = [0u8; PREFIX_LEN];
    prefix.copy_from_slice(&buf[..PREFIX_LEN]);
    let (h, b) = parse_prefix(&prefix)?;
    let total = PREFIX_LEN + h + b;
    if buf.len() < total {
        return Err(FrameError::Truncated);
    }
    let header = parse_header(&buf[PREFIX_LEN..PREFIX_LEN + h])?;
    let attachment = buf[PREFIX_LEN + h..total].to_vec();
    Ok((Frame { header, attachment }, total))
}

/// Reads frames from a byte stream.
pub struct FrameReader<R> {
    inner: R,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader { inner }
    }

    /// Next frame; `Ok(None)` on a clean end of stream (between frames).
    /// After a non-fatal error ([`FrameError::is_fatal`] false) the frame's
    /// bytes have been consumed and the caller can read on.
    pub fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let mut prefix = [0u8; PREFIX_LEN];
        match read_full(&mut self.inner, &mut prefix)? {
            0 => return Ok(None),
            PREFIX_LEN => {}
            _ => return Err(FrameError::Truncated),
        }
        let (h, b) = match parse_prefix(&prefix) {
            Ok(lens) => lens,
            Err(e) => {
                let (h, b) = (
                    u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as u64,
                    u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as u64,
                );
                self.skip(h + b)?;
                return Err(e);
            }
        };
        let mut header = vec![0u8; h];
        if read_full(&mut self.inner, &mut header)? < h {
            return Err(FrameError::Truncated);
        }
        let mut attachment = vec![0u8; b];
        if read_full(&mut self.inner, &mut attachment)? < b {
            return Err(FrameError::Truncated);
        }
        let header = parse_header(&header)?;
        Ok(Some(Frame { header, attachment }))
    }

    /// Reads and drops `n` bytes.
    fn skip(&mut self, n: u64) -> Result<(), FrameError> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(FrameError::Io)?;
        if copied < n {
            return Err(FrameError::Truncated);
        }
        Ok(())
    }
}

/// Fills `buf` unless the stream ends first; returns the bytes read.
pub fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(got)
}
