//! What travels back to producers: one reply frame per client frame
//! (docs/design.md §1.2), with stable machine-readable error codes (§1.3), each either
//! permanent (sending the same frame again can never succeed) or transient
//! (send it again).

use serde::{Deserialize, Serialize};

/// Stable error codes of rejected frames. The string forms are the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON, or not text.
    InvalidJson,
    /// The frame is JSON but neither an array of events nor one event object.
    InvalidFrame,
    /// An event breaks a field rule; `index` names it.
    InvalidEvent,
    /// An event names another session than the connection's.
    SessionMismatch,
    FrameTooLarge,
    TooManyEvents,
    EventTooLarge,
    RateLimited,
    /// The frame could not be stored durably; it was not accepted. Send it again.
    Unavailable,
    /// The session closed longer ago than its allowed lateness and takes no
    /// frame again (`LATE_EVENTS=reject`).
    SessionClosed,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidFrame => "invalid_frame",
            Self::InvalidEvent => "invalid_event",
            Self::SessionMismatch => "session_mismatch",
            Self::FrameTooLarge => "frame_too_large",
            Self::TooManyEvents => "too_many_events",
            Self::EventTooLarge => "event_too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::SessionClosed => "session_closed",
        }
    }

    /// Whether sending the same frame again may succeed: `rate_limited` and
    /// `unavailable` are transient; every other code is permanent.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::RateLimited | Self::Unavailable)
    }

    /// Every code, for metrics labels and documentation.
    pub const ALL: [ErrorCode; 10] = [
        Self::InvalidJson,
        Self::InvalidFrame,
        Self::InvalidEvent,
        Self::SessionMismatch,
        Self::FrameTooLarge,
        Self::TooManyEvents,
        Self::EventTooLarge,
        Self::RateLimited,
        Self::Unavailable,
        Self::SessionClosed,
    ];
}

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The offending event's position in the frame, for event errors.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub index: Option<usize>,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            index: None,
        }
    }

    pub fn at(code: ErrorCode, index: usize, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            index: Some(index),
        }
    }
}

/// The reply to the `frame`-th frame of a connection (counted from 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Accepted {
        ok: monostate::True,
        frame: u64,
        accepted: usize,
        /// The JetStream stream sequence that stores the frame (for a frame
        /// JetStream already held, the original's). Absent for `[]`, which
        /// stores nothing.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        seq: Option<u64>,
    },
    Rejected {
        ok: monostate::False,
        frame: u64,
        error: FrameError,
    },
}

impl Reply {
    /// An accepted frame that stored nothing (`[]`).
    pub fn accepted(frame: u64, accepted: usize) -> Self {
        Self::Accepted {
            ok: monostate::True,
            frame,
            accepted,
            seq: None,
        }
    }

    /// An accepted frame stored at stream sequence `seq`.
    pub fn stored(frame: u64, accepted: usize, seq: u64) -> Self {
        Self::Accepted {
            ok: monostate::True,
            frame,
            accepted,
            seq: Some(seq),
        }
    }

    /// The stream sequence of an accepted, stored frame.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Self::Accepted { seq, .. } => *seq,
            Self::Rejected { .. } => None,
        }
    }

    pub fn rejected(frame: u64, error: FrameError) -> Self {
        Self::Rejected {
            ok: monostate::False,
            frame,
            error,
        }
    }

    pub fn frame(&self) -> u64 {
        match self {
            Self::Accepted { frame, .. } | Self::Rejected { frame, .. } => *frame,
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Accepted { .. })
    }

    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Accepted { .. } => None,
            Self::Rejected { error, .. } => Some(error.code),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a reply always serializes")
    }
}

/// `true` and `false` as types, so that `ok` is serialized as a literal and
/// a reply deserializes into the right variant.
pub mod monostate {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    macro_rules! literal_bool {
        ($name:ident, $value:expr) => {
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
            pub struct $name;

            impl Serialize for $name {
                fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    serializer.serialize_bool($value)
                }
            }

            impl<'de> Deserialize<'de> for $name {
                fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    if bool::deserialize(deserializer)? == $value {
                        Ok($name)
                    } else {
                        Err(D::Error::custom(concat!("expected ", stringify!($value))))
                    }
                }
            }
        };
    }

    literal_bool!(True, true);
    literal_bool!(False, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the error-code table of docs/design.md §1.3: code and
    /// kind.
    fn documented_codes() -> Vec<(String, String)> {
        let design = include_str!("../../docs/design.md");
        let section = design
            .split("\n### 1.3 ")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("docs/design.md has a §1.3");
        section
            .lines()
            .filter_map(|line| {
                let mut cells = line.split('|').map(str::trim).skip(1);
                let code = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
                Some((code.to_owned(), cells.next()?.to_owned()))
            })
            .collect()
    }

    #[test]
    fn the_design_lists_every_error_code_with_its_kind() {
        let documented = documented_codes();
        let actual: Vec<(String, String)> = ErrorCode::ALL
            .iter()
            .map(|code| {
                let kind = if code.is_transient() {
                    "transient"
                } else {
                    "permanent"
                };
                (code.as_str().to_owned(), kind.to_owned())
            })
            .collect();
        assert_eq!(documented, actual);
    }

    #[test]
    fn replies_have_the_contract_shape() {
        assert_eq!(
            Reply::accepted(3, 0).to_json(),
            r#"{"ok":true,"frame":3,"accepted":0}"#
        );
        assert_eq!(
            Reply::stored(3, 2, 41).to_json(),
            r#"{"ok":true,"frame":3,"accepted":2,"seq":41}"#
        );
        let rejected = Reply::rejected(
            4,
            FrameError::at(ErrorCode::InvalidEvent, 1, "timestamp must be a number"),
        );
        assert_eq!(
            rejected.to_json(),
            r#"{"ok":false,"frame":4,"error":{"code":"invalid_event","message":"timestamp must be a number","index":1}}"#
        );
        let without_index = Reply::rejected(5, FrameError::new(ErrorCode::InvalidJson, "x"));
        assert_eq!(
            without_index.to_json(),
            r#"{"ok":false,"frame":5,"error":{"code":"invalid_json","message":"x"}}"#
        );
    }

    #[test]
    fn replies_parse_back() {
        for reply in [
            Reply::accepted(1, 0),
            Reply::stored(1, 10, 7),
            Reply::rejected(2, FrameError::new(ErrorCode::Unavailable, "later")),
        ] {
            let parsed: Reply = serde_json::from_str(&reply.to_json()).unwrap();
            assert_eq!(parsed, reply);
        }
    }

    #[test]
    fn replies_without_seq_still_parse() {
        let old: Reply = serde_json::from_str(r#"{"ok":true,"frame":1,"accepted":2}"#).unwrap();
        assert_eq!(old, Reply::accepted(1, 2));
        assert_eq!(old.seq(), None);
    }

    #[test]
    fn only_rate_limited_and_unavailable_are_transient() {
        let transient: Vec<_> = ErrorCode::ALL
            .into_iter()
            .filter(|code| code.is_transient())
            .collect();
        assert_eq!(transient, [ErrorCode::RateLimited, ErrorCode::Unavailable]);
    }

    #[test]
    fn code_strings_match_serde() {
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::from(code.as_str())
            );
        }
    }
}
