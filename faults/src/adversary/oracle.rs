//! The adversarial test's own reference fold, written from the contract
//! text (docs/design.md §2, §3) and not from `sessionfold_core`: what the
//! served document of a session must be, byte for byte, given the frames the
//! stream stores for it.
//!
//! - `start` is the smallest `SESSION_START` timestamp and `end` the largest
//!   `SESSION_END` timestamp, `null` while there is none, written as
//!   normalized numbers (integral values as integers, §2.2);
//! - `children` are the `EVENT`s, each as sent, ordered by timestamp, equal
//!   timestamps by (stream sequence, index in the frame);
//! - an `EVENT` whose identity (its `id` when present, else its canonical
//!   content: keys sorted, no white space) was already seen is left out: the
//!   first stream position wins.
//!
//! The document's bytes are compact JSON with the keys `session_id`, `type`,
//! `start`, `end`, `children` in that order, children keeping the order of
//! their keys as sent and their numbers as the JSON parser reads them.

use std::collections::HashSet;
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// One message of the event stream: the frame's bytes as ingest received
/// them, at their stream sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFrame {
    pub sequence: u64,
    pub payload: Vec<u8>,
}

/// A session's subject token (§3): ASCII letters, digits and `-` stay, every
/// other byte of the id becomes `_XX` (two lowercase hex digits).
pub fn token(session_id: &str) -> String {
    let mut out = String::with_capacity(session_id.len());
    for byte in session_id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "_{byte:02x}");
        }
    }
    out
}

/// The subject a session's frames are stored on, under `prefix`.
pub fn subject(prefix: &str, session_id: &str) -> String {
    format!("{prefix}.{}", token(session_id))
}

/// The events of a frame: a JSON array of objects, or one object standing
/// for an array of one (§1.1). `Err` says why the payload is not a frame.
pub fn events_of(payload: &[u8]) -> Result<Vec<Map<String, Value>>, String> {
    let value: Value = serde_json::from_slice(payload).map_err(|err| format!("not JSON: {err}"))?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        other => return Err(format!("neither an array nor an object: {other}")),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::Object(event) => Ok(event),
            other => Err(format!("event {index} is not an object: {other}")),
        })
        .collect()
}

/// An event's identity for de-duplication (§2.1 rule 3). The two kinds are
/// kept apart so that an `id` can never equal a content.
pub fn identity(event: &Map<String, Value>) -> String {
    match event.get("id") {
        Some(Value::String(id)) => format!("id {id}"),
        _ => {
            let mut out = String::from("content ");
            write_canonical(&mut out, &Value::Object(event.clone()));
            out
        }
    }
}

/// Canonical JSON: object keys sorted (by their UTF-8 bytes), no white space.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(&mut out, value);
    out
}

fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json_string(key));
                out.push(':');
                write_canonical(out, &map[key]);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A `start`/`end` value as the document writes it (§2.2): integral values
/// as integers, others as the shortest text that reads back as the same
/// double.
pub fn normalized_number(value: f64) -> String {
    // Within ±2^53 every integral double is an exact integer.
    if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
        format!("{}", value as i64)
    } else {
        serde_json::Number::from_f64(value)
            .map(|n| n.to_string())
            .unwrap_or_else(|| "null".to_owned())
    }
}

fn timestamp(event: &Map<String, Value>) -> Result<f64, String> {
    event
        .get("timestamp")
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("an event without a numeric timestamp: {event:?}"))
}

/// The document of `session_id` folded from `frames` (any order; they are
/// taken in stream order), as the bytes the api must serve; `None` when the
/// frames hold no event (no document). `Err` when a stored frame is not a
/// frame of valid events, which the checks report separately.
pub fn fold(session_id: &str, frames: &[StoredFrame]) -> Result<Option<String>, String> {
    let mut ordered: Vec<&StoredFrame> = frames.iter().collect();
    ordered.sort_by_key(|frame| frame.sequence);
    let mut start: Option<f64> = None;
    let mut end: Option<f64> = None;
    let mut seen: HashSet<String> = HashSet::new();
    // In (sequence, index) order as they are pushed; a stable sort by
    // timestamp keeps that order among equal timestamps.
    let mut children: Vec<(f64, Map<String, Value>)> = Vec::new();
    let mut any_event = false;
    for frame in ordered {
        for event in events_of(&frame.payload)
            .map_err(|err| format!("stream sequence {}: {err}", frame.sequence))?
        {
            any_event = true;
            let at = timestamp(&event)?;
            match event.get("type").and_then(Value::as_str) {
                Some("SESSION_START") => start = Some(start.map_or(at, |s| s.min(at))),
                Some("SESSION_END") => end = Some(end.map_or(at, |e| e.max(at))),
                Some("EVENT") => {
                    if seen.insert(identity(&event)) {
                        children.push((at, event));
                    }
                }
                other => return Err(format!("an event of type {other:?}")),
            }
        }
    }
    if !any_event {
        return Ok(None);
    }
    children.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let bound = |b: Option<f64>| b.map_or_else(|| "null".to_owned(), normalized_number);
    let mut doc = format!(
        "{{\"session_id\":{},\"type\":\"SESSION\",\"start\":{},\"end\":{},\"children\":[",
        json_string(session_id),
        bound(start),
        bound(end)
    );
    for (i, (_, child)) in children.into_iter().enumerate() {
        if i > 0 {
            doc.push(',');
        }
        doc.push_str(&Value::Object(child).to_string());
    }
    doc.push_str("]}");
    Ok(Some(doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(sequence: u64, text: &str) -> StoredFrame {
        StoredFrame {
            sequence,
            payload: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_contract_example_folds_to_the_documented_document() {
        let a = r#"[{"type":"SESSION_START","timestamp":1569972082},{"type":"EVENT","timestamp":1569972085,"name":"last_event"}]"#;
        let b = r#"[{"type":"EVENT","timestamp":1569972083,"name":"middle_event"},{"type":"EVENT","timestamp":1569972083,"name":"first_event"},{"type":"SESSION_END","timestamp":1569972086}]"#;
        let doc = fold(
            "e6fa79ca-d142-4046-a134-5134f16a0b5e",
            &[frame(2, b), frame(1, a)],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            doc,
            concat!(
                r#"{"session_id":"e6fa79ca-d142-4046-a134-5134f16a0b5e","type":"SESSION","#,
                r#""start":1569972082,"end":1569972086,"children":["#,
                r#"{"type":"EVENT","timestamp":1569972083,"name":"middle_event"},"#,
                r#"{"type":"EVENT","timestamp":1569972083,"name":"first_event"},"#,
                r#"{"type":"EVENT","timestamp":1569972085,"name":"last_event"}]}"#
            )
        );
    }

    #[test]
    fn the_first_stream_position_of_an_identity_wins() {
        // Same id, other content; same content, keys in another order and an
        // escaped string; equal timestamps order by (sequence, index).
        let one = r#"[{"type":"EVENT","timestamp":5,"id":"x","v":1},{"name":"café","type":"EVENT","timestamp":5.0}]"#;
        let two = r#"{"type":"EVENT","id":"x","timestamp":1,"v":2}"#;
        let three = r#"[{"timestamp":5.0,"type":"EVENT","name":"caf\u00e9"},{"type":"EVENT","timestamp":5,"v":3}]"#;
        let doc = fold("s", &[frame(9, three), frame(3, one), frame(4, two)])
            .unwrap()
            .unwrap();
        assert_eq!(
            doc,
            concat!(
                r#"{"session_id":"s","type":"SESSION","start":null,"end":null,"children":["#,
                r#"{"type":"EVENT","timestamp":5,"id":"x","v":1},"#,
                r#"{"name":"café","type":"EVENT","timestamp":5.0},"#,
                r#"{"type":"EVENT","timestamp":5,"v":3}]}"#
            )
        );
    }

    #[test]
    fn start_and_end_are_normalized_extremes() {
        let text = r#"[{"type":"SESSION_END","timestamp":7.0},{"type":"SESSION_START","timestamp":3.5},{"type":"SESSION_START","timestamp":2e0},{"type":"SESSION_END","timestamp":6}]"#;
        let doc = fold("a b", &[frame(1, text)]).unwrap().unwrap();
        assert_eq!(
            doc,
            r#"{"session_id":"a b","type":"SESSION","start":2,"end":7,"children":[]}"#
        );
        assert_eq!(normalized_number(100.25), "100.25");
    }

    #[test]
    fn no_event_no_document_and_a_non_frame_is_an_error() {
        assert_eq!(fold("s", &[frame(1, "[]")]).unwrap(), None);
        assert_eq!(fold("s", &[]).unwrap(), None);
        assert!(fold("s", &[frame(1, "[1]")]).is_err());
        assert!(fold("s", &[frame(1, "{")]).is_err());
    }

    #[test]
    fn tokens_escape_every_byte_but_letters_digits_and_dash() {
        assert_eq!(token("Ab-9"), "Ab-9");
        assert_eq!(token("a.b *>{}_é"), "a_2eb_20_2a_3e_7b_7d_5f_c3_a9");
        assert_eq!(subject("events_1", "x y"), "events_1.x_20y");
    }

    /// Cross-check with the implementation the services share: both folds
    /// of generated frames must give the same document.
    #[test]
    fn agrees_with_the_core_fold_on_generated_frames() {
        use sessionfold_core::{Delivery, Frame, Limits, SeededRng, SessionId};
        let mut rng = SeededRng::new(0xad5e);
        for round in 0..200 {
            let mut frames = Vec::new();
            let mut texts = Vec::new();
            for sequence in 1..=rng.below(6) + 1 {
                let mut events = Vec::new();
                for _ in 0..rng.below(5) {
                    let ts = 10 + rng.below(4);
                    let ts = if rng.chance(30) {
                        format!("{ts}.5")
                    } else {
                        ts.to_string()
                    };
                    let kind = match rng.below(10) {
                        0 => "SESSION_START",
                        1 => "SESSION_END",
                        _ => "EVENT",
                    };
                    let mut event = format!(r#"{{"type":"{kind}","timestamp":{ts}"#);
                    if kind == "EVENT" {
                        if rng.chance(40) {
                            let _ = write!(event, r#","id":"i{}""#, rng.below(4));
                        }
                        let _ = write!(event, r#","n":{}"#, rng.below(5));
                    }
                    event.push('}');
                    events.push(event);
                }
                let text = format!("[{}]", events.join(","));
                frames.push(frame(sequence * 3, &text));
                texts.push((sequence * 3, text));
            }
            let ours = fold("s-1", &frames).unwrap();
            let session = SessionId::parse("s-1").unwrap();
            let deliveries: Vec<Delivery> = texts
                .iter()
                .map(|(sequence, text)| Delivery {
                    stream_sequence: *sequence,
                    events: Frame::parse(text, &session, &Limits::default())
                        .unwrap()
                        .events,
                })
                .collect();
            let theirs = sessionfold_core::fold("s-1", &deliveries);
            match ours {
                None => assert!(
                    texts.iter().all(|(_, t)| t == "[]"),
                    "round {round}: no document"
                ),
                Some(ours) => {
                    let ours: Value = serde_json::from_str(&ours).unwrap();
                    assert_eq!(ours, theirs, "round {round}: {texts:?}");
                }
            }
        }
    }
}
