//! One WebSocket text frame: a JSON array of events, or a single event object
//! treated as an array of one (docs/design.md §1.1). A frame is accepted or rejected
//! as a whole.

use serde_json::Value;
use serde_json::value::RawValue;

use crate::event::{Event, EventKind};
use crate::limits::Limits;
use crate::protocol::{ErrorCode, FrameError};
use crate::session::SessionId;

/// Deepest nesting of arrays and objects an event may have (the event object
/// counts as one). The stored document nests two levels deeper, and JSON
/// readers commonly stop at 128, so documents stay readable everywhere.
pub const MAX_EVENT_DEPTH: usize = 64;

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A validated frame of one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub events: Vec<Event>,
}

impl Frame {
    /// Parses and validates `text` as a frame of `session`.
    pub fn parse(text: &str, session: &SessionId, limits: &Limits) -> Result<Self, FrameError> {
        if text.len() > limits.max_frame_bytes {
            return Err(FrameError::new(
                ErrorCode::FrameTooLarge,
                format!(
                    "frame is {} bytes, the limit is {}",
                    text.len(),
                    limits.max_frame_bytes
                ),
            ));
        }
        let raw_events = split_events(text)?;
        if raw_events.len() > limits.max_events_per_frame {
            return Err(FrameError::new(
                ErrorCode::TooManyEvents,
                format!(
                    "frame has {} events, the limit is {}",
                    raw_events.len(),
                    limits.max_events_per_frame
                ),
            ));
        }
        let events = raw_events
            .iter()
            .enumerate()
            .map(|(index, raw)| parse_event(index, raw, session, limits))
            .collect::<Result<_, _>>()?;
        Ok(Self { events })
    }

    pub fn has_session_end(&self) -> bool {
        self.events
            .iter()
            .any(|event| event.kind == EventKind::SessionEnd)
    }
}

fn split_events(text: &str) -> Result<Vec<&RawValue>, FrameError> {
    let invalid_json = |err: serde_json::Error| {
        FrameError::new(ErrorCode::InvalidJson, format!("frame is not JSON: {err}"))
    };
    match text.trim_start().as_bytes().first() {
        Some(b'[') => serde_json::from_str::<Vec<&RawValue>>(text).map_err(invalid_json),
        Some(b'{') => serde_json::from_str::<&RawValue>(text)
            .map(|raw| vec![raw])
            .map_err(invalid_json),
        _ => match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => Err(FrameError::new(
                ErrorCode::InvalidFrame,
                "a frame must be a JSON array of events or one event object",
            )),
            Err(err) => Err(invalid_json(err)),
        },
    }
}

fn parse_event(
    index: usize,
    raw: &RawValue,
    session: &SessionId,
    limits: &Limits,
) -> Result<Event, FrameError> {
    let invalid = |message: &str| FrameError::at(ErrorCode::InvalidEvent, index, message);
    if raw.get().len() > limits.max_event_bytes {
        return Err(FrameError::at(
            ErrorCode::EventTooLarge,
            index,
            format!(
                "event is {} bytes, the limit is {}",
                raw.get().len(),
                limits.max_event_bytes
            ),
        ));
    }
    // Splitting the frame only checked the syntax: nesting deeper than
    // serde_json's recursion limit (128) and numbers beyond f64 fail here.
    let body = match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::Object(body)) => body,
        Ok(_) => return Err(invalid("an event must be a JSON object")),
        Err(err) => return Err(invalid(&format!("event cannot be read: {err}"))),
    };
    if body.values().map(depth).max().unwrap_or(0) + 1 > MAX_EVENT_DEPTH {
        return Err(invalid(&format!(
            "event nests deeper than {MAX_EVENT_DEPTH} levels"
        )));
    }
    let kind = match body.get("type") {
        None => return Err(invalid("type is required")),
        Some(Value::String(kind)) => EventKind::parse(kind)
            .ok_or_else(|| invalid("type must be one of SESSION_START, SESSION_END, EVENT"))?,
        Some(_) => return Err(invalid("type must be a string")),
    };
    let timestamp = match body.get("timestamp") {
        None => return Err(invalid("timestamp is required")),
        Some(Value::Number(number)) => number
            .as_f64()
            .filter(|t| t.is_finite() && *t >= 0.0)
            // -0.0 orders as 0: Redis sorted-set scores do not tell them
            // apart, so the fold must not either.
            .map(|t| if t == 0.0 { 0.0 } else { t })
            .ok_or_else(|| invalid("timestamp must be a finite number >= 0"))?,
        Some(_) => return Err(invalid("timestamp must be a number")),
    };
    for field in ["name", "id"] {
        if body.get(field).is_some_and(|value| !value.is_string()) {
            return Err(invalid(&format!("{field} must be a string")));
        }
    }
    match body.get("session_id") {
        None => {}
        Some(Value::String(id)) if id == session.as_str() => {}
        Some(Value::String(_)) => {
            return Err(FrameError::at(
                ErrorCode::SessionMismatch,
                index,
                "session_id differs from the connection's session_id",
            ));
        }
        Some(_) => return Err(invalid("session_id must be a string")),
    }
    Ok(Event {
        kind,
        timestamp,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionId {
        SessionId::parse("s1").unwrap()
    }

    fn parse(text: &str) -> Result<Frame, FrameError> {
        Frame::parse(text, &session(), &Limits::default())
    }

    fn code_and_index(text: &str) -> (ErrorCode, Option<usize>) {
        let err = parse(text).unwrap_err();
        (err.code, err.index)
    }

    #[test]
    fn an_array_of_events_is_accepted_with_every_field() {
        let frame = parse(
            r#"[{"type":"SESSION_START","timestamp":1},
                {"type":"EVENT","timestamp":2.5,"name":"x","extra":{"k":[1,2]},"session_id":"s1"},
                {"type":"SESSION_END","timestamp":3}]"#,
        )
        .unwrap();
        assert_eq!(frame.events.len(), 3);
        assert_eq!(frame.events[1].kind, EventKind::Event);
        assert_eq!(frame.events[1].timestamp, 2.5);
        assert_eq!(
            frame.events[1].to_json(),
            r#"{"type":"EVENT","timestamp":2.5,"name":"x","extra":{"k":[1,2]},"session_id":"s1"}"#
        );
        assert!(frame.has_session_end());
    }

    #[test]
    fn a_single_object_is_an_array_of_one() {
        let frame = parse(r#" {"type":"EVENT","timestamp":7}"#).unwrap();
        assert_eq!(frame.events.len(), 1);
        assert!(!frame.has_session_end());
    }

    #[test]
    fn an_empty_array_is_an_empty_frame() {
        assert_eq!(parse("[]").unwrap().events.len(), 0);
    }

    #[test]
    fn malformed_json_is_invalid_json() {
        assert_eq!(code_and_index("[{"), (ErrorCode::InvalidJson, None));
        assert_eq!(code_and_index("hello"), (ErrorCode::InvalidJson, None));
        assert_eq!(code_and_index(""), (ErrorCode::InvalidJson, None));
        assert_eq!(code_and_index("[] []"), (ErrorCode::InvalidJson, None));
    }

    #[test]
    fn other_json_is_invalid_frame() {
        assert_eq!(code_and_index("42"), (ErrorCode::InvalidFrame, None));
        assert_eq!(code_and_index(r#""text""#), (ErrorCode::InvalidFrame, None));
    }

    #[test]
    fn field_rules_name_the_offending_event() {
        let ok = r#"{"type":"EVENT","timestamp":1}"#;
        for bad in [
            r#"5"#,
            r#"{"timestamp":1}"#,
            r#"{"type":"CLICK","timestamp":1}"#,
            r#"{"type":1,"timestamp":1}"#,
            r#"{"type":"EVENT"}"#,
            r#"{"type":"EVENT","timestamp":"1"}"#,
            r#"{"type":"EVENT","timestamp":-1}"#,
            r#"{"type":"EVENT","timestamp":1,"name":3}"#,
            r#"{"type":"EVENT","timestamp":1,"id":{}}"#,
            r#"{"type":"EVENT","timestamp":1,"session_id":7}"#,
        ] {
            assert_eq!(
                code_and_index(&format!("[{ok},{bad}]")),
                (ErrorCode::InvalidEvent, Some(1)),
                "{bad}"
            );
        }
    }

    #[test]
    fn deep_nesting_and_numbers_beyond_f64_are_invalid_events() {
        let deep = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        for bad in [
            deep(10_000),
            format!("[{}]", deep(10_000)),
            format!(r#"[{{"type":"EVENT","timestamp":1,"x":{}}}]"#, deep(200)),
            format!(r#"{{"type":"EVENT","timestamp":1,"x":{}}}"#, deep(200)),
            r#"[{"type":"EVENT","timestamp":1e400}]"#.to_owned(),
            r#"[{"type":"EVENT","timestamp":1,"x":-1e999}]"#.to_owned(),
        ] {
            assert_eq!(
                code_and_index(&bad),
                (ErrorCode::InvalidEvent, Some(0)),
                "{bad:.60}"
            );
        }
    }

    #[test]
    fn a_negative_zero_timestamp_is_zero() {
        let frame = parse(r#"[{"type":"EVENT","timestamp":-0.0},{"type":"EVENT","timestamp":-0}]"#)
            .unwrap();
        for event in &frame.events {
            assert!(event.timestamp == 0.0 && event.timestamp.is_sign_positive());
        }
        assert_eq!(
            frame.events[0].to_json(),
            r#"{"type":"EVENT","timestamp":-0.0}"#
        );
    }

    #[test]
    fn events_may_nest_up_to_the_depth_limit() {
        let nested = |levels: usize| {
            format!(
                r#"[{{"type":"EVENT","timestamp":1,"x":{}{}}}]"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        assert!(parse(&nested(MAX_EVENT_DEPTH - 1)).is_ok());
        assert_eq!(
            code_and_index(&nested(MAX_EVENT_DEPTH)),
            (ErrorCode::InvalidEvent, Some(0))
        );
    }

    #[test]
    fn another_session_id_is_a_mismatch() {
        assert_eq!(
            code_and_index(r#"[{"type":"EVENT","timestamp":1,"session_id":"s2"}]"#),
            (ErrorCode::SessionMismatch, Some(0))
        );
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_frame_bytes: 100,
            max_events_per_frame: 2,
            max_event_bytes: 40,
        };
        let event = r#"{"type":"EVENT","timestamp":1}"#;
        let too_many = format!("[{event},{event},{event}]");
        let err = Frame::parse(&too_many, &session(), &limits).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooManyEvents);
        let too_large = format!("[{}]", " ".repeat(100));
        let err = Frame::parse(&too_large, &session(), &limits).unwrap_err();
        assert_eq!(err.code, ErrorCode::FrameTooLarge);
        let big_event = r#"[{"type":"EVENT","timestamp":1,"name":"0123456789"}]"#;
        let err = Frame::parse(big_event, &session(), &limits).unwrap_err();
        assert_eq!((err.code, err.index), (ErrorCode::EventTooLarge, Some(0)));
    }
}
