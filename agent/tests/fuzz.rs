//! Fuzz-style decoder test: random bytes, mutated and truncated valid frames
//! (deterministic PRNG). The decoders must never panic, must always end, and
//! must report sensible errors.

mod common;

use common::{hex, vectors};
use krunbox_agent::frame::{self, FrameError, FrameReader};
use std::io::Cursor;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn valid_frames() -> Vec<Vec<u8>> {
    vectors()["valid"].as_array().unwrap().iter().map(|c| hex(c["hex"].as_str().unwrap())).collect()
}

/// Reads a whole stream; returns how many frames and errors it saw.
fn drain(bytes: Vec<u8>) -> (usize, usize) {
    let len = bytes.len();
    let mut r = FrameReader::new(Cursor::new(bytes));
    let (mut frames, mut errors) = (0, 0);
    // Every iteration consumes at least the 8-byte prefix: this bounds it.
    for _ in 0..=len / 8 + 1 {
        match r.read_frame() {
            Ok(Some(_)) => frames += 1,
            Ok(None) => return (frames, errors),
            Err(e) => {
                errors += 1;
                if e.is_fatal() {
                    assert!(matches!(e, FrameError::Truncated), "only truncation ends a byte buffer: {e}");
                    return (frames, errors);
                }
            }
        }
    }
    panic!("reader did not terminate");
}

fn check_kind(e: &FrameError) {
    assert!(matches!(e.kind(), "frame_too_large" | "parse_error" | "invalid_request" | "truncated"), "unexpected {e}");
}

#[test]
fn random_bytes() {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for _ in 0..5000 {
        let n = rng.below(96);
        let mut b = rng.bytes(n);
        // Half the cases get a small plausible prefix to reach the JSON parser.
        if n >= 8 && rng.below(2) == 0 {
            let h = rng.below(n - 7) as u32;
            let a = rng.below(n - 7 - h as usize + 1) as u32;
            b[..4].copy_from_slice(&h.to_be_bytes());
            b[4..8].copy_from_slice(&a.to_be_bytes());
        }
        if let Err(e) = frame::decode(&b) {
            check_kind(&e);
        }
        drain(b);
    }
}

#[test]
fn json_like_headers() {
    let alphabet: &[u8] = br#"{}[]":,0123456789.-+eE truefalsnul\u"jsonrpc2.0idmethodparamsresulterror"#;
    let mut rng = Rng(42);
    for _ in 0..5000 {
        let n = 1 + rng.below(60);
        let mut h: Vec<u8> = (0..n).map(|_| alphabet[rng.below(alphabet.len())]).collect();
        if rng.below(3) == 0 {
            h = format!(r#"{{"jsonrpc":"2.0","id":{},"method":{}}}"#, rng.below(5), String::from_utf8_lossy(&h))
                .into_bytes();
        }
        let f = [&(h.len() as u32).to_be_bytes()[..], &0u32.to_be_bytes(), &h].concat();
        match frame::decode(&f) {
            Ok((fr, used)) => {
                assert_eq!(used, f.len());
                assert!(fr.header.is_object());
            }
            Err(e) => {
                check_kind(&e);
                assert!(!matches!(e, FrameError::Truncated | FrameError::TooLarge { .. }), "{e}");
            }
        }
    }
}

#[test]
fn truncated_valid_frames() {
    let frames = valid_frames();
    let mut rng = Rng(7);
    for _ in 0..3000 {
        let f = &frames[rng.below(frames.len())];
        let cut = rng.below(f.len());
        let e = frame::decode(&f[..cut]).unwrap_err();
        assert_eq!(e.kind(), "truncated", "cut at {cut}");
        let got = FrameReader::new(Cursor::new(f[..cut].to_vec())).read_frame();
        match got {
            Ok(None) => assert_eq!(cut, 0),
            Err(FrameError::Truncated) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn mutated_streams() {
    let frames = valid_frames();
    let mut rng = Rng(1234567);
    for _ in 0..3000 {
        let mut s: Vec<u8> = (0..1 + rng.below(4)).flat_map(|_| frames[rng.below(frames.len())].clone()).collect();
        let total = s.len();
        for _ in 0..rng.below(4) {
            let i = rng.below(s.len());
            s[i] = rng.next() as u8;
        }
        if rng.below(2) == 0 {
            s.truncate(rng.below(total + 1));
        }
        if let Err(e) = frame::decode(&s) {
            check_kind(&e);
        }
        drain(s);
    }
}

#[test]
fn unmutated_streams_decode_fully() {
    let frames = valid_frames();
    let all: Vec<u8> = frames.concat();
    assert_eq!(drain(all), (frames.len(), 0));
}
