//! Frame parsing and validation (`Frame::parse`) on arbitrary input.
//!
//! Input: `#<session_id>\n<frame>`, or the whole input as the frame of the
//! design's example session (docs/design.md §2.1). Invalid UTF-8 is replaced, as ingest never sees
//! it in a text frame.
//!
//! Invariants, under the default limits, small limits the fuzzer crosses
//! easily, and no limits (how the processor re-reads stored frames):
//! - no panic, and the same input always gives the same result;
//! - an accepted frame fits the limits, and each event has a known `type`, a
//!   finite timestamp ≥ 0 equal to its `timestamp` field, string `name` and
//!   `id` when present, and no `session_id` but the connection's;
//! - its events written back as JSON (what the processor hands RedisJSON)
//!   parse to the same events, except that a number may move by one ulp:
//!   serde_json's default float parsing is not correctly rounded, so the
//!   shortest text of a parsed number can read back as its neighbour
//!   (e.g. `1111111111111111115699.720E6`). Known, reported; exact
//!   otherwise;
//! - a rejection has a frame-level code, an index exactly for event errors
//!   (within the frame), a message, and a reply that parses back;
//! - limits only ever add rejections: what small limits accept, the default
//!   accepts unchanged, and so does the processor's re-read.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serde_json::value::RawValue;
use sessionfold_core::{ErrorCode, EventKind, Frame, FrameError, Limits, Reply, SessionId};

const DEFAULT_SESSION: &str = "e6fa79ca-d142-4046-a134-5134f16a0b5e";

const SMALL: Limits = Limits {
    max_frame_bytes: 512,
    max_events_per_frame: 4,
    max_event_bytes: 128,
};

const UNLIMITED: Limits = Limits {
    max_frame_bytes: usize::MAX,
    max_events_per_frame: usize::MAX,
    max_event_bytes: usize::MAX,
};

fuzz_target!(|data: &[u8]| {
    let (raw_id, frame) = split(data);
    let Ok(session) = SessionId::parse(&raw_id) else {
        // Refused before the upgrade: no frame is ever parsed for it.
        return;
    };
    assert_eq!(
        SessionId::from_token(&session.token()).as_ref(),
        Some(&session)
    );
    check_frame(&frame, &session);
});

fn split(data: &[u8]) -> (String, String) {
    if let Some(rest) = data.strip_prefix(b"#") {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let frame = rest.get(end + 1..).unwrap_or_default();
        return (
            String::from_utf8_lossy(&rest[..end]).into_owned(),
            String::from_utf8_lossy(frame).into_owned(),
        );
    }
    (
        DEFAULT_SESSION.to_owned(),
        String::from_utf8_lossy(data).into_owned(),
    )
}

fn check_frame(text: &str, session: &SessionId) {
    let small = parse(text, session, &SMALL);
    let default = parse(text, session, &Limits::default());
    let unlimited = parse(text, session, &UNLIMITED);

    if let Ok(frame) = &small {
        assert_eq!(
            default.as_ref(),
            Ok(frame),
            "the default limits refuse what small ones accept"
        );
    }
    if let Ok(frame) = &default {
        assert_eq!(
            unlimited.as_ref(),
            Ok(frame),
            "the processor refuses what ingest accepts"
        );
        assert!(
            serde_json::from_str::<&RawValue>(text).is_ok(),
            "an accepted frame is JSON"
        );
    }
    if let Err(error) = &unlimited {
        assert!(
            !matches!(
                error.code,
                ErrorCode::FrameTooLarge | ErrorCode::TooManyEvents | ErrorCode::EventTooLarge
            ),
            "a limit error without limits: {error:?}"
        );
        assert!(
            default.is_err() && small.is_err(),
            "limits turned a rejection into an acceptance"
        );
    }
}

/// Parses twice (the result must not change) and checks the invariants of
/// whatever comes out.
fn parse(text: &str, session: &SessionId, limits: &Limits) -> Result<Frame, FrameError> {
    let result = Frame::parse(text, session, limits);
    assert_eq!(
        result,
        Frame::parse(text, session, limits),
        "not deterministic"
    );
    match &result {
        Ok(frame) => check_accepted(text, frame, session, limits),
        Err(error) => check_rejected(text, error, limits),
    }
    result
}

fn check_accepted(text: &str, frame: &Frame, session: &SessionId, limits: &Limits) {
    assert!(text.len() <= limits.max_frame_bytes);
    assert!(frame.events.len() <= limits.max_events_per_frame);
    for event in &frame.events {
        let kind = event
            .body
            .get("type")
            .and_then(Value::as_str)
            .and_then(EventKind::parse);
        assert_eq!(kind, Some(event.kind));
        assert!(event.timestamp.is_finite() && event.timestamp >= 0.0);
        assert!(event.timestamp.is_sign_positive(), "-0.0 must read as 0");
        let stated = event.body.get("timestamp").and_then(Value::as_f64);
        assert_eq!(stated, Some(event.timestamp));
        for field in ["name", "id"] {
            assert!(
                event.body.get(field).is_none_or(Value::is_string),
                "{field}"
            );
        }
        if let Some(id) = event.body.get("session_id") {
            assert_eq!(id.as_str(), Some(session.as_str()));
        }
        let identity = event.identity();
        assert!(!identity.is_empty());
        assert_eq!(identity, event.identity());
    }
    assert_eq!(
        frame.has_session_end(),
        frame.events.iter().any(|e| e.kind == EventKind::SessionEnd)
    );
    let written = format!(
        "[{}]",
        frame
            .events
            .iter()
            .map(|e| e.to_json())
            .collect::<Vec<_>>()
            .join(",")
    );
    let reread =
        Frame::parse(&written, session, &UNLIMITED).expect("accepted events written back parse");
    assert_eq!(reread.events.len(), frame.events.len());
    for (again, event) in reread.events.iter().zip(&frame.events) {
        assert_eq!(again.kind, event.kind);
        assert!(
            within_one_ulp(again.timestamp, event.timestamp),
            "{again:?} != {event:?}"
        );
        assert!(
            same_up_to_one_ulp(
                &Value::Object(again.body.clone()),
                &Value::Object(event.body.clone())
            ),
            "events change when written back: {again:?} != {event:?}"
        );
    }
    let reply = Reply::accepted(1, frame.events.len());
    assert_eq!(
        serde_json::from_str::<Reply>(&reply.to_json()).unwrap(),
        reply
    );
}

fn check_rejected(text: &str, error: &FrameError, limits: &Limits) {
    let frame_level = matches!(
        error.code,
        ErrorCode::InvalidJson
            | ErrorCode::InvalidFrame
            | ErrorCode::FrameTooLarge
            | ErrorCode::TooManyEvents
    );
    let event_level = matches!(
        error.code,
        ErrorCode::InvalidEvent | ErrorCode::SessionMismatch | ErrorCode::EventTooLarge
    );
    assert!(
        frame_level || event_level,
        "unexpected code {:?}",
        error.code
    );
    assert_eq!(error.index.is_some(), event_level, "{error:?}");
    if let Some(index) = error.index {
        assert!(index < limits.max_events_per_frame, "{error:?}");
    }
    assert!(!error.message.is_empty());
    assert_eq!(
        error.code == ErrorCode::FrameTooLarge,
        text.len() > limits.max_frame_bytes,
        "{error:?}"
    );
    let reply = Reply::rejected(1, error.clone());
    assert_eq!(
        serde_json::from_str::<Reply>(&reply.to_json()).unwrap(),
        reply
    );
}

fn within_one_ulp(a: f64, b: f64) -> bool {
    a == b || (a.to_bits().abs_diff(b.to_bits()) <= 1 && a.signum() == b.signum())
}

/// Equal JSON, numbers allowed one ulp apart (field order counts).
fn same_up_to_one_ulp(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(x), Some(y)) if within_one_ulp(x, y))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_up_to_one_ulp(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same_up_to_one_ulp(vx, vy))
        }
        _ => a == b,
    }
}
