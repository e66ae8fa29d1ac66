//! One validated event and its de-duplication identity (docs/design.md §1.1, §2.1).

use std::fmt::Write as _;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The three kinds of event a producer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    SessionStart,
    SessionEnd,
    Event,
}

impl EventKind {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "SESSION_START" => Some(Self::SessionStart),
            "SESSION_END" => Some(Self::SessionEnd),
            "EVENT" => Some(Self::Event),
            _ => None,
        }
    }
}

/// A validated event: its kind and timestamp, and the whole object as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    /// Finite and ≥ 0.
    pub timestamp: f64,
    /// The event object with every field, in the order sent.
    pub body: Map<String, Value>,
}

impl Event {
    /// The identity under which the event is de-duplicated within its
    /// session: its `id` when present, else a digest of its canonical JSON
    /// (keys sorted, no white space), so the same content always has the same
    /// identity whatever its field order.
    pub fn identity(&self) -> String {
        if let Some(Value::String(id)) = self.body.get("id") {
            return format!("id:{id}");
        }
        let mut canonical = String::with_capacity(256);
        write_canonical_object(&mut canonical, &self.body);
        let digest = Sha256::digest(canonical.as_bytes());
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut identity = String::with_capacity(4 + 32);
        identity.push_str("sha:");
        for byte in &digest[..16] {
            identity.push(char::from(HEX[usize::from(byte >> 4)]));
            identity.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        identity
    }

    /// The identity as 16 bytes, as the apply step stores it: the first
    /// 128 bits of SHA-256 over `id:` and the event's `id` when it has one,
    /// else over its canonical JSON (those 128 bits are exactly the hex
    /// digits of [`identity`](Self::identity)'s `sha:` form). Two different
    /// identities share a digest with probability about n² / 2¹²⁹ for n
    /// events in a session: below 10⁻²⁶ for a million.
    pub fn identity_digest(&self) -> [u8; 16] {
        let digest = match self.body.get("id") {
            Some(Value::String(id)) => {
                let mut hasher = Sha256::new();
                hasher.update(b"id:");
                hasher.update(id.as_bytes());
                hasher.finalize()
            }
            _ => {
                let mut canonical = String::with_capacity(256);
                write_canonical_object(&mut canonical, &self.body);
                Sha256::digest(canonical.as_bytes())
            }
        };
        let mut identity = [0u8; 16];
        identity.copy_from_slice(&digest[..16]);
        identity
    }

    /// The event as JSON text, fields in the order sent.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.body).expect("a JSON object always serializes")
    }
}

/// Writes `value` as canonical JSON: object keys sorted by their UTF-8 bytes,
/// no insignificant white space, strings and numbers as serde_json writes them.
pub fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => write_canonical_object(out, map),
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
        Value::String(text) => write_string(out, text),
        // Display writes numbers exactly as serde_json serializes them.
        Value::Number(number) => {
            let _ = write!(out, "{number}");
        }
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Null => out.push_str("null"),
    }
}

fn write_canonical_object(out: &mut String, map: &Map<String, Value>) {
    let mut entries: Vec<_> = map.iter().collect();
    // Keys are unique, so an unstable sort gives the one order.
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_canonical(out, value);
    }
    out.push('}');
}

/// `text` as a JSON string, escaped as serde_json escapes it (only `"`,
/// `\` and control characters need escaping; the rest is copied).
fn write_string(out: &mut String, text: &str) {
    if text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(&Value::String(text.to_owned()).to_string());
    } else {
        out.push('"');
        out.push_str(text);
        out.push('"');
    }
}

/// A timestamp as a JSON number that depends only on its value: integral
/// values within ±2^53 are written as integers, everything else as the
/// shortest float that reads back the same. `start` and `end` use it, so
/// `1` and `1.0` give the same document.
pub fn normalized_number(value: f64) -> serde_json::Number {
    const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;
    if value.fract() == 0.0 && value.abs() <= EXACT_INTEGER_LIMIT {
        serde_json::Number::from(value as i64)
    } else {
        serde_json::Number::from_f64(value).expect("timestamps are finite")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(value: Value) -> Event {
        let body = value.as_object().unwrap().clone();
        let timestamp = body["timestamp"].as_f64().unwrap();
        Event {
            kind: EventKind::Event,
            timestamp,
            body,
        }
    }

    #[test]
    fn identity_ignores_field_order() {
        let a: Value =
            serde_json::from_str(r#"{"type":"EVENT","timestamp":1,"name":"x","p":{"b":1,"a":2}}"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"{"name":"x","p":{"a":2,"b":1},"timestamp":1,"type":"EVENT"}"#)
                .unwrap();
        assert_eq!(event(a).identity(), event(b).identity());
    }

    #[test]
    fn identity_distinguishes_content() {
        let a = event(json!({"type":"EVENT","timestamp":1,"name":"x"}));
        let b = event(json!({"type":"EVENT","timestamp":1,"name":"y"}));
        assert_ne!(a.identity(), b.identity());
    }

    #[test]
    fn identity_prefers_the_id_field() {
        let a = event(json!({"type":"EVENT","timestamp":1,"id":"e1"}));
        let b = event(json!({"type":"EVENT","timestamp":2,"id":"e1","name":"other"}));
        assert_eq!(a.identity(), "id:e1");
        assert_eq!(a.identity(), b.identity());
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let mut out = String::new();
        write_canonical(&mut out, &json!({"b":[{"d":1,"c":"é"}],"a":null}));
        assert_eq!(out, r#"{"a":null,"b":[{"c":"é","d":1}]}"#);
    }

    /// The canonical form as first written (every string through
    /// serde_json): identities are stored, so they must never change.
    fn reference_canonical(out: &mut String, value: &Value) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                out.push('{');
                for (i, (key, value)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    reference_canonical(out, value);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    reference_canonical(out, item);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }

    #[test]
    fn canonical_json_and_identities_never_change() {
        let tricky = json!({
            "type": "EVENT",
            "timestamp": 1569972083.25,
            "name": "quote \" backslash \\ tab \t nul \u{0} del \u{7f} bell \u{7} é 🎉",
            "z\"key\n": [1, -2, 3.5e300, 1e-7, 18446744073709551615u64, true, false, null],
            "nested": {"b": {"d": "x", "c": []}, "a": {}},
        });
        let mut fast = String::new();
        write_canonical(&mut fast, &tricky);
        let mut reference = String::new();
        reference_canonical(&mut reference, &tricky);
        assert_eq!(fast, reference);
        let event = event(tricky);
        let digest = Sha256::digest(reference.as_bytes());
        let expected: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(event.identity(), format!("sha:{expected}"));
    }

    #[test]
    fn the_identity_digest_is_the_sha_identity_or_a_digest_of_the_id() {
        let content = event(json!({"type":"EVENT","timestamp":1,"name":"x"}));
        let hex: String = content
            .identity_digest()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(content.identity(), format!("sha:{hex}"));
        let with_id = event(json!({"type":"EVENT","timestamp":1,"id":"e1"}));
        let same_id = event(json!({"type":"EVENT","timestamp":9,"id":"e1","name":"y"}));
        assert_eq!(with_id.identity_digest(), same_id.identity_digest());
        let expected = Sha256::digest(b"id:e1");
        assert_eq!(with_id.identity_digest()[..], expected[..16]);
        assert_ne!(with_id.identity_digest(), content.identity_digest());
    }

    #[test]
    fn normalized_numbers_depend_on_value_only() {
        assert_eq!(normalized_number(1569972082.0).to_string(), "1569972082");
        assert_eq!(normalized_number(1.5).to_string(), "1.5");
        assert_eq!(normalized_number(1e300).to_string(), "1e+300");
    }
}
