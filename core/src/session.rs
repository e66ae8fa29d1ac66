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

/// Longest accepted session_id, in bytes (docs/design.md §6).
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// A validated session identifier: 1–128 bytes of UTF-8 without control
/// characters and without invisible format characters (Unicode category
/// `Cf`: bidi controls such as U+202E, zero-width characters, the BOM, …),
/// which would let two ids look alike in logs and pages.
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
    #[error("session_id contains the invisible format character U+{0:04X}")]
    FormatCharacter(u32),
    #[error("session_id is not valid UTF-8 once percent-decoded")]
    NotUtf8,
    #[error("session_id has a malformed percent escape")]
    BadEscape,
    #[error("session_id is given more than once")]
    Repeated,
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
        if let Some(format) = raw.chars().find(|c| is_format_character(*c)) {
            return Err(SessionIdError::FormatCharacter(u32::from(format)));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The `session_id` parameter of a URL query (the part after `?`),
    /// decoded strictly: `+` is a space, `%XX` a byte, and the bytes must be
    /// UTF-8. A malformed escape, bytes that are not UTF-8 (never replaced
    /// by U+FFFD, which would let `%ff%fe` and `%C0%AE` reach one session)
    /// or a repeated parameter is refused; so is a missing one.
    pub fn from_query(query: Option<&str>, max_bytes: usize) -> Result<Self, SessionIdError> {
        match query_value(query.unwrap_or(""), "session_id")? {
            Some(raw) => Self::parse_with_max(&raw, max_bytes),
            None => Err(SessionIdError::Missing),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject- and key-safe token for this session (see the module docs).
    pub fn token(&self) -> String {
        escape_token(&self.0)
    }

    /// Reverses [`token`](Self::token). Returns `None` for anything that no
    /// valid session_id produces.
    pub fn from_token(token: &str) -> Option<Self> {
        Self::parse(&unescape_token(token)?).ok()
    }
}

/// The token escape of any text (see the module docs): ASCII letters, digits
/// and `-` stay, every other byte becomes `_XX`. Besides session ids it
/// names event names in session summaries, where the query engine must see
/// nothing but letters, digits, `-` and `_`. It keeps prefixes: the escape
/// of a prefix of `text` is a prefix of the escape of `text`.
pub fn escape_token(text: &str) -> String {
    let mut token = String::with_capacity(text.len());
    for byte in text.bytes() {
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

/// Reverses [`escape_token`]: `None` for text it never produces (a stray
/// character, a bad or needless escape, bytes that are not UTF-8).
pub fn unescape_token(token: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut input = token.bytes();
    while let Some(byte) = input.next() {
        match byte {
            b'_' => {
                let high = hex_value(input.next()?)?;
                let low = hex_value(input.next()?)?;
                let decoded = (high << 4) | low;
                // An escaped byte that did not need escaping would give a
                // second token for the same text.
                if decoded.is_ascii_alphanumeric() || decoded == b'-' {
                    return None;
                }
                bytes.push(decoded);
            }
            b if b.is_ascii_alphanumeric() || b == b'-' => bytes.push(b),
            _ => return None,
        }
    }
    String::from_utf8(bytes).ok()
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Unicode's format characters (general category `Cf`, Unicode 16): bidi
/// embeddings, overrides and isolates, zero-width spaces and joiners, word
/// joiners, invisible operators, the BOM, interlinear annotation marks, tags
/// and the like. None is visible, so an id holding one reads like another.
pub fn is_format_character(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// The value of parameter `name` in a URL query, strictly decoded (see
/// [`SessionId::from_query`]); `None` when it is absent.
pub fn query_value(query: &str, name: &str) -> Result<Option<String>, SessionIdError> {
    let mut found = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode_strict(key)? != name {
            continue;
        }
        if found.is_some() {
            return Err(SessionIdError::Repeated);
        }
        found = Some(percent_decode_strict(value)?);
    }
    Ok(found)
}

/// Form decoding without any lossy step.
fn percent_decode_strict(text: &str) -> Result<String, SessionIdError> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut input = text.bytes();
    while let Some(byte) = input.next() {
        match byte {
            b'%' => {
                let high = input.next().and_then(hex_value_any_case);
                let low = input.next().and_then(hex_value_any_case);
                match (high, low) {
                    (Some(high), Some(low)) => bytes.push((high << 4) | low),
                    _ => return Err(SessionIdError::BadEscape),
                }
            }
            b'+' => bytes.push(b' '),
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).map_err(|_| SessionIdError::NotUtf8)
}

fn hex_value_any_case(digit: u8) -> Option<u8> {
    hex_value(digit.to_ascii_lowercase())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{Keys, Subjects};
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
        assert_eq!(
            SessionId::parse("abc\u{202e}gpj.exe"),
            Err(SessionIdError::FormatCharacter(0x202E))
        );
        assert_eq!(
            SessionId::parse("a\u{200b}b"),
            Err(SessionIdError::FormatCharacter(0x200B))
        );
    }

    #[test]
    fn query_ids_are_decoded_strictly() {
        let max = MAX_SESSION_ID_BYTES;
        let id = |query: &str| SessionId::from_query(Some(query), max);
        assert_eq!(id("session_id=a%20b+c").unwrap().as_str(), "a b c");
        assert_eq!(id("x=1&session_id=%C3%A9").unwrap().as_str(), "é");
        assert_eq!(id("session_id=%ff%fe"), Err(SessionIdError::NotUtf8));
        assert_eq!(id("session_id=%C0%AE"), Err(SessionIdError::NotUtf8));
        assert_eq!(
            id("session_id=%e2%80%ae"),
            Err(SessionIdError::FormatCharacter(0x202E))
        );
        assert_eq!(id("session_id=%zz"), Err(SessionIdError::BadEscape));
        assert_eq!(id("session_id=%4"), Err(SessionIdError::BadEscape));
        assert_eq!(
            id("session_id=a&session_id=b"),
            Err(SessionIdError::Repeated)
        );
        assert_eq!(id("session_id="), Err(SessionIdError::Empty));
        assert_eq!(id("other=1"), Err(SessionIdError::Missing));
        assert_eq!(
            SessionId::from_query(None, max),
            Err(SessionIdError::Missing)
        );
        assert_eq!(
            query_value("token=a%2Fb&session_id=s", "token"),
            Ok(Some("a/b".to_owned()))
        );
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

    /// Characters that break naive subject or key building: NATS separators
    /// and wildcards, white space that is not a control character, Redis
    /// hash-tag braces, the token's own escape character and hex digits,
    /// glob, quoting and URL characters, and multi-byte UTF-8 (combining,
    /// BOM, the last code point).
    const DANGEROUS: &[char] = &[
        '.',
        '*',
        '>',
        ' ',
        '\u{a0}',
        '\u{2028}',
        '\u{3000}',
        '{',
        '}',
        '_',
        '2',
        'e',
        'f',
        'a',
        'Z',
        '-',
        '%',
        '?',
        '[',
        ']',
        '\\',
        '"',
        '\'',
        ':',
        '/',
        '#',
        '$',
        '+',
        '&',
        '=',
        '~',
        'é',
        '☃',
        '🦀',
        '\u{301}',
        '\u{feff}',
        '\u{10ffff}',
    ];

    /// One-byte dangerous characters, to pad an id to exactly the limit.
    const DANGEROUS_ASCII: &[char] = &['.', '*', '>', ' ', '{', '}', '_', '%', '-', 'a'];

    /// Strings made mostly of dangerous characters, up to a little past the
    /// length limit, so some are too long.
    fn dangerous_raw() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(DANGEROUS), 1..140)
            .prop_map(|chars| chars.into_iter().collect())
    }

    /// Dangerous strings of exactly [`MAX_SESSION_ID_BYTES`] bytes.
    fn maximal_raw() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(DANGEROUS), 0..60),
            prop::sample::select(DANGEROUS_ASCII),
        )
            .prop_map(|(chars, pad)| {
                let mut raw = String::new();
                for c in chars {
                    if raw.len() + c.len_utf8() > MAX_SESSION_ID_BYTES {
                        break;
                    }
                    raw.push(c);
                }
                while raw.len() < MAX_SESSION_ID_BYTES {
                    raw.push(pad);
                }
                raw
            })
    }

    fn any_session_id() -> impl Strategy<Value = SessionId> {
        prop_oneof![
            "[ -~]{1,128}",
            "[a-z.*> {}_-]{1,40}",
            "\\PC{1,32}",
            dangerous_raw(),
            maximal_raw(),
        ]
        .prop_filter_map("valid session ids only", |raw| SessionId::parse(&raw).ok())
    }

    /// Subject prefixes as operators and the tests configure them.
    fn any_subject_prefix() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(crate::names::DEFAULT_EVENTS_PREFIX.to_owned()),
            "events_[0-9a-f]{16}",
            "[a-z][a-z0-9_-]{0,8}(\\.[a-z][a-z0-9_-]{0,8}){0,3}",
        ]
    }

    fn any_key_prefix() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(crate::names::DEFAULT_KEY_PREFIX.to_owned()),
            Just(String::new()),
            "sf_[0-9a-f]{16}:",
        ]
    }

    /// A subject a client may publish to: non-empty tokens, no white space,
    /// no wildcard, printable ASCII.
    fn is_publishable_subject(subject: &str) -> bool {
        subject.split('.').all(|token| {
            !token.is_empty()
                && token.bytes().all(|b| b.is_ascii_graphic())
                && !token.contains(['*', '>'])
        })
    }

    /// NATS subject matching of a filter with `*` and `>` wildcards.
    fn subject_matches(filter: &str, subject: &str) -> bool {
        let mut subject_tokens = subject.split('.');
        for wanted in filter.split('.') {
            match (wanted, subject_tokens.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (wanted, Some(token)) if wanted == token => {}
                _ => return false,
            }
        }
        subject_tokens.next().is_none()
    }

    /// The part of a key Redis Cluster hashes: between the first `{` and the
    /// next `}` when that is not empty, else the whole key.
    fn hash_tag(key: &str) -> &str {
        let Some(open) = key.find('{') else {
            return key;
        };
        match key[open + 1..].find('}') {
            Some(0) | None => key,
            Some(len) => &key[open + 1..open + 1 + len],
        }
    }

    /// What `parse` must decide, written out independently.
    fn is_valid_raw(raw: &str) -> bool {
        !raw.is_empty()
            && raw.len() <= MAX_SESSION_ID_BYTES
            && !raw
                .chars()
                .any(|c| c.is_control() || is_format_character(c))
    }

    /// Strings a producer may send as session_id that must be refused:
    /// empty, one byte too long (also inside a multi-byte character), or
    /// holding a C0/C1 control character.
    fn refused_raw() -> impl Strategy<Value = String> {
        let control = prop::sample::select(
            &[
                '\0', '\t', '\n', '\r', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}',
            ][..],
        );
        prop_oneof![
            Just(String::new()),
            (dangerous_raw(), control, any::<prop::sample::Index>()).prop_map(
                |(raw, control, at)| {
                    let chars: Vec<char> = raw.chars().collect();
                    let at = at.index(chars.len() + 1);
                    chars[..at]
                        .iter()
                        .chain(std::iter::once(&control))
                        .chain(&chars[at..])
                        .collect()
                }
            ),
            maximal_raw().prop_map(|raw| raw + "x"),
            maximal_raw().prop_map(|raw| {
                let mut raw: String = raw.chars().skip(1).collect();
                while raw.len() <= MAX_SESSION_ID_BYTES {
                    raw.push('é');
                }
                raw
            }),
        ]
    }

    proptest! {
        #[test]
        fn token_is_subject_and_hash_tag_safe(id in any_session_id()) {
            let token = id.token();
            prop_assert!(!token.is_empty());
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert!(token.len() <= 3 * id.as_str().len());
            let subject = Subjects::default().event(&id);
            prop_assert_eq!(subject.split('.').count(), 3);
        }

        #[test]
        fn every_subject_is_one_publishable_token_below_the_prefix(
            id in any_session_id(),
            prefix in any_subject_prefix(),
        ) {
            let subjects = Subjects::with_events_prefix(prefix.clone());
            let subject = subjects.event(&id);
            prop_assert!(is_publishable_subject(&subject), "{subject}");
            let tokens: Vec<&str> = subject.split('.').collect();
            prop_assert_eq!(tokens.len(), prefix.split('.').count() + 1);
            prop_assert_eq!(tokens[tokens.len() - 1], id.token());
            prop_assert!(subject_matches(&subjects.events_filter(), &subject));
            // Far below NATS's 4 KiB control line, even for 128 escaped bytes.
            prop_assert!(subject.len() <= prefix.len() + 1 + 3 * MAX_SESSION_ID_BYTES);
        }

        #[test]
        fn every_key_carries_exactly_the_token_as_hash_tag(
            id in any_session_id(),
            key_prefix in any_key_prefix(),
        ) {
            let keys = Keys::new(key_prefix.clone()).session(&id);
            let token = id.token();
            let all = [&keys.doc, &keys.state, &keys.summary, &keys.names];
            for key in all {
                prop_assert_eq!(hash_tag(key), token.as_str(), "{}", key);
                prop_assert!(key.starts_with(&key_prefix));
                prop_assert!(key.ends_with('}'), "{}", key);
                prop_assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{}", key);
            }
            for (i, a) in all.iter().enumerate() {
                for b in &all[i + 1..] {
                    prop_assert_ne!(a, b);
                }
            }
        }

        #[test]
        fn token_round_trips(id in any_session_id()) {
            prop_assert_eq!(SessionId::from_token(&id.token()), Some(id.clone()));
            let subjects = Subjects::default();
            prop_assert_eq!(subjects.session_of_event(&subjects.event(&id)), Some(id));
        }

        #[test]
        fn distinct_ids_never_share_a_token_or_key(a in any_session_id(), b in any_session_id()) {
            let (subjects, keys) = (Subjects::default(), Keys::default());
            prop_assert_eq!(a == b, a.token() == b.token());
            prop_assert_eq!(a == b, subjects.event(&a) == subjects.event(&b));
            prop_assert_eq!(a == b, keys.session(&a).doc == keys.session(&b).doc);
            prop_assert_eq!(a == b, keys.session(&a).state == keys.session(&b).state);
            prop_assert_eq!(a == b, keys.session(&a).summary == keys.session(&b).summary);
        }

        /// The collision a naive escape has: `a.b` and `a_2eb`. Writing any
        /// character of an id as its own escape text gives another id with
        /// another token.
        #[test]
        fn an_id_spelled_with_its_escape_text_is_another_session(
            id in any_session_id(),
            at in any::<prop::sample::Index>(),
        ) {
            let chars: Vec<char> = id.as_str().chars().collect();
            let at = at.index(chars.len());
            let spelled = SessionId(chars[at].to_string()).token();
            let raw: String = chars[..at].iter().collect::<String>() + &spelled
                + &chars[at + 1..].iter().collect::<String>();
            if let Ok(other) = SessionId::parse(&raw) {
                prop_assert_eq!(other == id, other.token() == id.token());
                prop_assert_eq!(other == id, Keys::default().session(&other) == Keys::default().session(&id));
            }
        }

        /// Any byte string, percent-encoded in full: accepted exactly when
        /// it is UTF-8 that `parse` accepts, and then it is that string;
        /// distinct byte strings never reach one session.
        #[test]
        fn query_decoding_is_injective_and_never_lossy(
            a in prop::collection::vec(any::<u8>(), 0..40),
            b in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let encode = |bytes: &[u8]| -> String {
                let escaped: String = bytes.iter().map(|byte| format!("%{byte:02X}")).collect();
                format!("session_id={escaped}")
            };
            for bytes in [&a, &b] {
                let decoded = SessionId::from_query(Some(&encode(bytes)), MAX_SESSION_ID_BYTES);
                match std::str::from_utf8(bytes) {
                    Ok(text) if is_valid_raw(text) => {
                        let decoded = decoded.unwrap();
                        prop_assert_eq!(decoded.as_str(), text);
                    }
                    Ok(_) => prop_assert!(decoded.is_err()),
                    Err(_) => prop_assert_eq!(decoded, Err(SessionIdError::NotUtf8)),
                }
            }
            if let (Ok(x), Ok(y)) = (
                SessionId::from_query(Some(&encode(&a)), MAX_SESSION_ID_BYTES),
                SessionId::from_query(Some(&encode(&b)), MAX_SESSION_ID_BYTES),
            ) {
                prop_assert_eq!(x == y, a == b);
            }
        }

        /// No valid id holds a bidi control or another format character.
        #[test]
        fn format_characters_are_never_part_of_an_id(
            raw in dangerous_raw(),
            format in prop::sample::select(&['\u{200b}', '\u{200e}', '\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}', '\u{feff}', '\u{ad}', '\u{e0041}'][..]),
            at in any::<prop::sample::Index>(),
        ) {
            let mut chars: Vec<char> = raw.chars().collect();
            let at = at.index(chars.len() + 1);
            chars.insert(at, format);
            let raw: String = chars.into_iter().collect();
            prop_assert!(SessionId::parse(&raw).is_err(), "{:?}", raw);
        }

        #[test]
        fn parse_accepts_exactly_the_printable_ids_up_to_the_limit(
            raw in prop_oneof![any::<String>(), dangerous_raw(), maximal_raw(), refused_raw()],
        ) {
            prop_assert_eq!(SessionId::parse(&raw).is_ok(), is_valid_raw(&raw), "{:?}", raw);
        }

        /// Nothing refused at the edge can get a name: even a subject built
        /// by hand for a refused id is not decoded by the processor.
        #[test]
        fn refused_ids_have_no_subject_or_key(raw in refused_raw()) {
            prop_assert!(SessionId::parse(&raw).is_err(), "{:?}", raw);
            let forged = SessionId(raw).token();
            prop_assert_eq!(SessionId::from_token(&forged), None);
            let subjects = Subjects::default();
            prop_assert_eq!(subjects.session_of_event(&format!("{}.{forged}", subjects.events_prefix)), None);
        }

        /// Every id has exactly one token: any string that decodes is the
        /// token of what it decodes to.
        #[test]
        fn only_canonical_tokens_decode(
            token in prop_oneof![
                "[a-zA-Z0-9_-]{0,24}",
                "(_[0-9a-fA-F]{2}|[a-z0-9.-]){0,24}",
                any::<String>(),
            ],
        ) {
            if let Some(id) = SessionId::from_token(&token) {
                prop_assert_eq!(id.token(), token.clone());
            }
            let subjects = Subjects::default();
            let subject = format!("{}.{token}", subjects.events_prefix);
            if let Some(id) = subjects.session_of_event(&subject) {
                prop_assert_eq!(subjects.event(&id), subject);
            }
        }
    }

    #[test]
    fn the_limit_is_exact_in_bytes() {
        let maximal = "🦀".repeat(32);
        assert_eq!(maximal.len(), MAX_SESSION_ID_BYTES);
        let id = SessionId::parse(&maximal).unwrap();
        assert_eq!(SessionId::from_token(&id.token()), Some(id));
        assert!(SessionId::parse(&format!("{maximal}x")).is_err());
        let escaped = SessionId::parse(&".".repeat(128)).unwrap();
        assert_eq!(escaped.token(), "_2e".repeat(128));
    }
}
