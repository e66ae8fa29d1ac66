//! Redaction: fields the operator names are removed from every event, or
//! replaced by a keyed hash, before a frame is published (docs/design.md
//! §1.6). Nothing downstream (the stream, documents, summaries, dead
//! letters, finished sessions) ever sees the raw value.
//!
//! A path is field names joined by `.`: `email`, `props.card`,
//! `user.address.street`. An array on the way is crossed: `items.sku`
//! reaches the `sku` of every object in `items`. `*` stands for every field
//! of an object (and every element of an array): `props.*.token`. The
//! top-level `type` and `timestamp` cannot be named: the fold needs them.
//!
//! A hashed value becomes `"hmac-sha256:<64 hex digits>"`, HMAC-SHA256 of
//! the value's JSON text under `REDACTION_KEY`: equal values give equal
//! hashes, so joins on them still work, and without the key nobody can
//! test a guess. Redaction runs before the processor computes an event's
//! identity, so a resent event is the same redacted event and is
//! de-duplicated as before.

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

/// Fewest bytes a redaction key may have.
pub const MIN_KEY_BYTES: usize = 32;
/// What a hashed value starts with.
pub const HASH_PREFIX: &str = "hmac-sha256:";

/// What a rule does to the fields it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Remove,
    Hash,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Remove => "remove",
            Self::Hash => "hash",
        }
    }
}

/// One configured path and its action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// As configured, for metrics.
    pub path: String,
    segments: Vec<String>,
    pub action: Action,
}

/// Why the redaction settings cannot be used; the service does not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedactionConfigError {
    #[error("redaction path {0:?} is empty or has an empty field name")]
    EmptySegment(String),
    #[error("redaction path {0:?} names `type` or `timestamp`, which every event needs")]
    Protected(String),
    #[error("HASH_FIELDS needs REDACTION_KEY of at least {MIN_KEY_BYTES} bytes, got {0}")]
    KeyTooShort(usize),
    #[error("redaction path {0:?} is both removed and hashed")]
    Both(String),
}

/// The key hashed fields are keyed with. Its bytes never appear in
/// `Debug` output.
#[derive(Clone)]
pub struct RedactionKey(Vec<u8>);

impl std::fmt::Debug for RedactionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedactionKey(..)")
    }
}

/// Every rule, ready to apply.
#[derive(Debug, Clone)]
pub struct Redaction {
    rules: Vec<Rule>,
    key: Option<RedactionKey>,
}

/// What redacting one event did: how often each rule (by index) applied.
pub type Applied = Vec<usize>;

impl Redaction {
    /// Rules from `remove` and `hash` paths; `key` is required when any
    /// path is hashed.
    pub fn new(
        remove: &[String],
        hash: &[String],
        key: Option<&str>,
    ) -> Result<Self, RedactionConfigError> {
        let mut rules = Vec::new();
        for (paths, action) in [(remove, Action::Remove), (hash, Action::Hash)] {
            for path in paths
                .iter()
                .map(|path| path.trim())
                .filter(|path| !path.is_empty())
            {
                let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
                if segments.iter().any(String::is_empty) {
                    return Err(RedactionConfigError::EmptySegment(path.to_owned()));
                }
                if segments.len() == 1 && matches!(segments[0].as_str(), "type" | "timestamp" | "*")
                {
                    return Err(RedactionConfigError::Protected(path.to_owned()));
                }
                if rules.iter().any(|rule: &Rule| rule.path == path) {
                    return Err(RedactionConfigError::Both(path.to_owned()));
                }
                rules.push(Rule {
                    path: path.to_owned(),
                    segments,
                    action,
                });
            }
        }
        let key = if rules.iter().any(|rule| rule.action == Action::Hash) {
            let key = key.unwrap_or("");
            if key.len() < MIN_KEY_BYTES {
                return Err(RedactionConfigError::KeyTooShort(key.len()));
            }
            Some(RedactionKey(key.as_bytes().to_vec()))
        } else {
            None
        };
        Ok(Self { rules, key })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Redacts one event in place; returns how often each rule applied.
    pub fn apply(&self, event: &mut Map<String, Value>) -> Applied {
        self.rules
            .iter()
            .map(|rule| {
                let mut count = 0;
                self.visit(event, &rule.segments, rule.action, &mut count);
                count
            })
            .collect()
    }

    /// Redacts every event of a frame and counts each rule's work; the
    /// frame's new text when anything changed, `None` when the frame's own
    /// bytes can be stored as they came.
    pub fn redact_frame(&self, events: &mut [sessionfold_core::Event]) -> Option<String> {
        let mut totals = vec![0usize; self.rules.len()];
        for event in events.iter_mut() {
            for (total, count) in totals.iter_mut().zip(self.apply(&mut event.body)) {
                *total += count;
            }
        }
        for (rule, &count) in self.rules.iter().zip(&totals) {
            if count > 0 {
                sessionfold_common::metrics::redacted(&rule.path, rule.action.as_str(), count);
            }
        }
        if totals.iter().all(|&count| count == 0) {
            return None;
        }
        let mut text = String::from("[");
        for (index, event) in events.iter().enumerate() {
            if index > 0 {
                text.push(',');
            }
            text.push_str(&event.to_json());
        }
        text.push(']');
        Some(text)
    }

    fn visit(
        &self,
        object: &mut Map<String, Value>,
        segments: &[String],
        action: Action,
        count: &mut usize,
    ) {
        let (first, rest) = segments.split_first().expect("a path has a segment");
        let names: Vec<String> = if first == "*" {
            object.keys().cloned().collect()
        } else if object.contains_key(first) {
            vec![first.clone()]
        } else {
            Vec::new()
        };
        for name in names {
            if rest.is_empty() {
                match action {
                    Action::Remove => {
                        object.shift_remove(&name);
                    }
                    Action::Hash => {
                        let value = object.get_mut(&name).expect("the field exists");
                        *value = Value::String(self.hash(value));
                    }
                }
                *count += 1;
            } else if let Some(value) = object.get_mut(&name) {
                self.descend(value, rest, action, count);
            }
        }
    }

    fn descend(&self, value: &mut Value, segments: &[String], action: Action, count: &mut usize) {
        match value {
            Value::Object(inner) => self.visit(inner, segments, action, count),
            Value::Array(items) => {
                for item in items {
                    self.descend(item, segments, action, count);
                }
            }
            _ => {}
        }
    }

    fn hash(&self, value: &Value) -> String {
        let key = self
            .key
            .as_ref()
            .expect("a hashing rule was built with a key");
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes keys of any length");
        mac.update(value.to_string().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(HASH_PREFIX.len() + 64);
        out.push_str(HASH_PREFIX);
        for byte in digest {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "a-redaction-key-of-at-least-32-bytes";

    fn redaction(remove: &[&str], hash: &[&str]) -> Redaction {
        let owned = |paths: &[&str]| paths.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        Redaction::new(&owned(remove), &owned(hash), Some(KEY)).unwrap()
    }

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_removed_field_is_gone_and_the_rest_keeps_its_order() {
        let rules = redaction(&["email", "props.card"], &[]);
        let mut event = object(json!({
            "type": "EVENT", "timestamp": 1, "email": "a@b.c", "name": "x",
            "props": {"card": "4111", "plan": "pro"}
        }));
        assert_eq!(rules.apply(&mut event), vec![1, 1]);
        assert_eq!(
            Value::Object(event).to_string(),
            r#"{"type":"EVENT","timestamp":1,"name":"x","props":{"plan":"pro"}}"#
        );
    }

    #[test]
    fn a_hashed_field_is_keyed_and_equal_values_hash_equally() {
        let rules = redaction(&[], &["user_id"]);
        let mut a = object(json!({"type": "EVENT", "timestamp": 1, "user_id": "u-42"}));
        let mut b = object(json!({"type": "EVENT", "timestamp": 2, "user_id": "u-42"}));
        let mut c = object(json!({"type": "EVENT", "timestamp": 3, "user_id": "u-43"}));
        for event in [&mut a, &mut b, &mut c] {
            assert_eq!(rules.apply(event), vec![1]);
        }
        let hashed = a["user_id"].as_str().unwrap();
        assert!(hashed.starts_with(HASH_PREFIX) && hashed.len() == HASH_PREFIX.len() + 64);
        assert!(!hashed.contains("u-42"));
        assert_eq!(a["user_id"], b["user_id"]);
        assert_ne!(a["user_id"], c["user_id"]);
        // Another key, another hash: a guess cannot be tested without it.
        let other = Redaction::new(&[], &["user_id".into()], Some(&"k".repeat(32))).unwrap();
        let mut d = object(json!({"type": "EVENT", "timestamp": 1, "user_id": "u-42"}));
        other.apply(&mut d);
        assert_ne!(a["user_id"], d["user_id"]);
        // A number or an object hashes by its JSON text.
        let mut e = object(json!({"type": "EVENT", "timestamp": 1, "user_id": {"n": 7}}));
        rules.apply(&mut e);
        assert!(e["user_id"].as_str().unwrap().starts_with(HASH_PREFIX));
    }

    #[test]
    fn arrays_are_crossed_and_a_star_matches_every_field() {
        let rules = redaction(&["items.sku", "props.*.token"], &[]);
        let mut event = object(json!({
            "type": "EVENT", "timestamp": 1,
            "items": [{"sku": 1, "q": 2}, {"sku": 3}, "plain", [{"sku": 4}]],
            "props": {"a": {"token": "t1", "keep": 1}, "b": {"token": "t2"}, "c": 5}
        }));
        assert_eq!(rules.apply(&mut event), vec![3, 2]);
        assert_eq!(
            Value::Object(event).to_string(),
            r#"{"type":"EVENT","timestamp":1,"items":[{"q":2},{},"plain",[{}]],"props":{"a":{"keep":1},"b":{},"c":5}}"#
        );
    }

    #[test]
    fn a_path_that_reaches_nothing_changes_nothing() {
        let rules = redaction(&["email", "a.b.c"], &["user.id"]);
        let original = json!({"type": "EVENT", "timestamp": 1, "a": {"b": 7}, "user": "x"});
        let mut event = object(original.clone());
        assert_eq!(rules.apply(&mut event), vec![0, 0, 0]);
        assert_eq!(Value::Object(event), original);
    }

    #[test]
    fn settings_that_cannot_be_kept_stop_the_service() {
        let owned = |paths: &[&str]| paths.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        for protected in ["type", "timestamp", "*"] {
            assert_eq!(
                Redaction::new(&owned(&[protected]), &[], None).unwrap_err(),
                RedactionConfigError::Protected(protected.to_owned())
            );
        }
        assert!(matches!(
            Redaction::new(&owned(&["a..b"]), &[], None),
            Err(RedactionConfigError::EmptySegment(_))
        ));
        assert_eq!(
            Redaction::new(&[], &owned(&["user_id"]), Some("short")).unwrap_err(),
            RedactionConfigError::KeyTooShort(5)
        );
        assert_eq!(
            Redaction::new(&[], &owned(&["user_id"]), None).unwrap_err(),
            RedactionConfigError::KeyTooShort(0)
        );
        assert!(matches!(
            Redaction::new(&owned(&["x"]), &owned(&["x"]), Some(KEY)),
            Err(RedactionConfigError::Both(_))
        ));
        // Nested `type` and `timestamp` are ordinary fields.
        assert!(Redaction::new(&owned(&["props.type", "a.timestamp"]), &[], None).is_ok());
        // Removing needs no key.
        assert!(Redaction::new(&owned(&["email"]), &[], None).is_ok());
        assert!(format!("{:?}", redaction(&[], &["x"])).contains("RedactionKey(..)"));
        assert!(!format!("{:?}", redaction(&[], &["x"])).contains(KEY));
    }
}
