//! Session identifiers and the names derived from them.
//!
//! A session_id arrives from the network as any string. [`SessionId::parse`]
//! is the only way to make one, so past the edge every id is valid. Its
//! [`token`](SessionId::token) is an injective, reversible escape of the id
//! that is safe in a NATS subject (no `.`, `*`, `>`, whitespace) and inside a
//! Redis Cluster hash tag (no `{` or `}`): ASCII letters, digits and `-` stay
//! as they are, every other byte becomes `_XX` (two lowercase hex digits).
//! UUIDs, the usual session ids, therefore read the same in subjects and keys.

use std::fmt;

/// Longest accepted session_id, in bytes (DESIGN §6).
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// A validated session identifier: 1–128 bytes of UTF-8 without control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

/// Why a string is not a session_id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionIdError {
    #[error("session_id is missing")]
    Missing,
    #[error("session_id is empty")]
    Empty,
    #[error("session_id is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("session_id contains a control character")]
    NotPrintable,
}

impl SessionId {
    /// Validates a session_id with the default length limit.
    pub fn parse(raw: &str) -> Result<Self, SessionIdError> {
        Self::parse_with_max(raw, MAX_SESSION_ID_BYTES)
    }

    /// Validates a session_id that may be at most `max_bytes` long.
    pub fn parse_with_max(raw: &str, max_bytes: usize) -> Result<Self, SessionIdError> {
        if raw.is_empty() {
            return Err(SessionIdError::Empty);
        }
        if raw.len() > max_bytes {
            return Err(SessionIdError::TooLong { max: max_bytes });
        }
        if raw.chars().any(char::is_control) {
            return Err(SessionIdError::NotPrintable);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject- and key-safe token for this session (see the module docs).
    pub fn token(&self) -> String {
        let mut token = String::with_capacity(self.0.len());
        for byte in self.0.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'-' {
                token.push(byte as char);
            } else {
                token.push('_');
                token.push(hex_digit(byte >> 4));
                token.push(hex_digit(byte & 0x0f));
            }
        }
        token
    }

    /// Reverses [`token`](Self::token). Returns `None` for anything that no
    /// valid session_id produces.
    pub fn from_token(token: &str) -> Option<Self> {
        let mut bytes = Vec::with_capacity(token.len());
        let mut input = token.bytes();
        while let Some(byte) = input.next() {
            match byte {
                b'_' => {
                    let high = hex_value(input.next()?)?;
                    let low = hex_value(input.next()?)?;
                    let decoded = (high << 4) | low;
                    // An escaped byte that did not need escaping would give a
                    // second token for the same id.
                    if decoded.is_ascii_alphanumeric() || decoded == b'-' {
                        return None;
                    }
                    bytes.push(decoded);
                }
                b if b.is_ascii_alphanumeric() || b == b'-' => bytes.push(b),
                _ => return None,
            }
        }
        let text = String::from_utf8(bytes).ok()?;
        Self::parse(&text).ok()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).expect("a nibble is a hex digit")
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// The NATS subjects and Redis keys of sessionfold, derived from configured
/// prefixes and a session's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Subject prefix of accepted frames; a session's subject is `<prefix>.<token>`.
    pub events_subject_prefix: String,
    /// Prefix of every Redis key, e.g. `sf:`.
    pub key_prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            events_subject_prefix: "sessionfold.events".to_owned(),
            key_prefix: "sf:".to_owned(),
        }
    }
}

/// The Redis keys of one session. All carry the hash tag `{<token>}`, so they
/// share one Redis Cluster slot and one atomic script may touch them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// The RedisJSON document served by the api.
    pub doc: String,
    /// Hash: event identity → position member of its first arrival.
    pub ids: String,
    /// Sorted set: position member scored by timestamp; its order is the
    /// order of `children`.
    pub order: String,
}

impl Names {
    pub fn subject(&self, session: &SessionId) -> String {
        format!("{}.{}", self.events_subject_prefix, session.token())
    }

    /// The wildcard subject a stream listens on.
    pub fn subject_filter(&self) -> String {
        format!("{}.*", self.events_subject_prefix)
    }

    /// Recovers the session of a message from its subject.
    pub fn session_of_subject(&self, subject: &str) -> Option<SessionId> {
        let token = subject
            .strip_prefix(self.events_subject_prefix.as_str())?
            .strip_prefix('.')?;
        SessionId::from_token(token)
    }

    pub fn keys(&self, session: &SessionId) -> SessionKeys {
        let token = session.token();
        let prefix = &self.key_prefix;
        SessionKeys {
            doc: format!("{prefix}doc:{{{token}}}"),
            ids: format!("{prefix}ids:{{{token}}}"),
            order: format!("{prefix}order:{{{token}}}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn uuid_tokens_read_as_the_id() {
        let id = SessionId::parse("e6fa79ca-d142-4046-a134-5134f16a0b5e").unwrap();
        assert_eq!(id.token(), "e6fa79ca-d142-4046-a134-5134f16a0b5e");
    }

    #[test]
    fn separators_and_wildcards_are_escaped() {
        let id = SessionId::parse("a.b*c>d e{f}_").unwrap();
        assert_eq!(id.token(), "a_2eb_2ac_3ed_20e_7bf_7d_5f");
    }

    #[test]
    fn invalid_ids_are_refused() {
        assert_eq!(SessionId::parse(""), Err(SessionIdError::Empty));
        assert_eq!(
            SessionId::parse(&"x".repeat(129)),
            Err(SessionIdError::TooLong { max: 128 })
        );
        assert_eq!(SessionId::parse("a\nb"), Err(SessionIdError::NotPrintable));
        assert!(SessionId::parse(&"é".repeat(64)).is_ok());
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let names = Names::default();
        let keys = names.keys(&SessionId::parse("s}{1").unwrap());
        assert_eq!(keys.doc, "sf:doc:{s_7d_7b1}");
        assert_eq!(keys.ids, "sf:ids:{s_7d_7b1}");
        assert_eq!(keys.order, "sf:order:{s_7d_7b1}");
    }

    #[test]
    fn non_canonical_tokens_are_refused() {
        assert_eq!(
            SessionId::from_token("_61"),
            None,
            "'a' need not be escaped"
        );
        assert_eq!(SessionId::from_token("a.b"), None);
        assert_eq!(SessionId::from_token("_2"), None);
        assert_eq!(SessionId::from_token("_0a"), None, "control character");
    }

    fn any_session_id() -> impl Strategy<Value = SessionId> {
        prop_oneof!["[ -~]{1,128}", "[a-z.*> {}_-]{1,40}", "\\PC{1,32}",]
            .prop_filter_map("valid session ids only", |raw| SessionId::parse(&raw).ok())
    }

    proptest! {
        #[test]
        fn token_is_subject_and_hash_tag_safe(id in any_session_id()) {
            let token = id.token();
            prop_assert!(!token.is_empty());
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            let subject = Names::default().subject(&id);
            prop_assert_eq!(subject.split('.').count(), 3);
        }

        #[test]
        fn token_round_trips(id in any_session_id()) {
            prop_assert_eq!(SessionId::from_token(&id.token()), Some(id.clone()));
            let names = Names::default();
            prop_assert_eq!(names.session_of_subject(&names.subject(&id)), Some(id));
        }

        #[test]
        fn distinct_ids_never_share_a_token_or_key(a in any_session_id(), b in any_session_id()) {
            let names = Names::default();
            prop_assert_eq!(a == b, a.token() == b.token());
            prop_assert_eq!(a == b, names.keys(&a).doc == names.keys(&b).doc);
        }
    }
}
