//! The shared frame vectors of agent/vectors/frames.json.

mod common;

use common::{hex, vectors};
use krunbox_agent::frame::{self, FrameReader, MAX_ATTACHMENT, MAX_HEADER};
use std::io::Cursor;

#[test]
fn limits_match() {
    let v = vectors();
    assert_eq!(v["maxHeader"], MAX_HEADER as u64);
    assert_eq!(v["maxAttachment"], MAX_ATTACHMENT as u64);
}

#[test]
fn valid_vectors_decode_and_roundtrip() {
    let v = vectors();
    let valid = v["valid"].as_array().unwrap();
    assert!(!valid.is_empty());
    for case in valid {
        let name = case["name"].as_str().unwrap();
        let bytes = hex(case["hex"].as_str().unwrap());
        let (f, used) = frame::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(used, bytes.len(), "{name}: one frame uses all bytes");
        assert_eq!(f.header, case["header"], "{name}: header");
        assert_eq!(f.attachment, hex(case["attachmentHex"].as_str().unwrap()), "{name}: attachment");
        let again = frame::encode(&f.header, &f.attachment).unwrap();
        let (g, _) = frame::decode(&again).unwrap();
        assert_eq!(g, f, "{name}: re-encoded frame decodes equal");
        let mut r = FrameReader::new(Cursor::new(bytes));
        assert_eq!(r.read_frame().unwrap().as_ref(), Some(&f), "{name}: stream reader");
        assert!(r.read_frame().unwrap().is_none(), "{name}: clean end");
    }
}

#[test]
fn invalid_vectors_give_their_error() {
    let v = vectors();
    let invalid = v["invalid"].as_array().unwrap();
    assert!(!invalid.is_empty());
    for case in invalid {
        let name = case["name"].as_str().unwrap();
        let want = case["error"].as_str().unwrap();
        let bytes = hex(case["hex"].as_str().unwrap());
        let e = frame::decode(&bytes).err().unwrap_or_else(|| panic!("{name}: decoded"));
        assert_eq!(e.kind(), want, "{name}: {e}");
        // The stream reader agrees, except that an oversized frame whose
        // bytes are missing is also a truncated stream once it is skipped.
        let got = FrameReader::new(Cursor::new(bytes)).read_frame().err().map(|e| e.kind());
        let ok = got == Some(want) || (want == "frame_too_large" && got == Some("truncated"));
        assert!(ok, "{name}: stream reader gave {got:?}");
    }
}

#[test]
fn stream_vector_has_three_frames() {
    let v = vectors();
    let s = &v["stream"];
    let bytes = hex(s["hex"].as_str().unwrap());
    let headers = s["headers"].as_array().unwrap();
    let atts = s["attachmentsHex"].as_array().unwrap();
    assert_eq!(headers.len(), 3);
    let mut rest = &bytes[..];
    let mut r = FrameReader::new(Cursor::new(bytes.clone()));
    for (h, a) in headers.iter().zip(atts) {
        let (f, used) = frame::decode(rest).unwrap();
        rest = &rest[used..];
        assert_eq!(&f.header, h);
        assert_eq!(f.attachment, hex(a.as_str().unwrap()));
        assert_eq!(r.read_frame().unwrap().unwrap(), f);
    }
    assert!(rest.is_empty());
    assert!(r.read_frame().unwrap().is_none());
}

#[test]
fn oversized_frame_is_skipped_and_reading_goes_on() {
    // H just above the limit, followed by its bytes, then a good frame.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&((MAX_HEADER + 1) as u32).to_be_bytes());
    bytes.extend_from_slice(&3u32.to_be_bytes());
    bytes.extend(std::iter::repeat_n(b'x', MAX_HEADER + 4));
    let ping = hex(vectors()["valid"][0]["hex"].as_str().unwrap());
    bytes.extend_from_slice(&ping);
    let mut r = FrameReader::new(Cursor::new(bytes));
    assert_eq!(r.read_frame().unwrap_err().kind(), "frame_too_large");
    assert_eq!(r.read_frame().unwrap().unwrap().header["method"], "ping");
    assert!(r.read_frame().unwrap().is_none());
}

#[test]
fn encode_refuses_oversized() {
    let big = vec![0u8; MAX_ATTACHMENT + 1];
    let h = serde_json::json!({"jsonrpc": "2.0", "method": "x"});
    assert_eq!(frame::encode(&h, &big).unwrap_err().kind(), "frame_too_large");
}
