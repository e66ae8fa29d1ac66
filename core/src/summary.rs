//! Session summaries (docs/design.md §4.2): the small record of one session
//! that `GET /sessions` finds and lists. The processor's apply step keeps
//! one per session beside its document; this module holds the rules it
//! follows (which event names a summary keeps, how its sort keys are made)
//! and [`summarize`], the reference a stored summary is checked against.

use serde_json::{Value, json};

use crate::session::escape_token;

/// The most distinct event names a summary lists.
pub const MAX_NAMES: usize = 32;

/// The most distinct names the apply step counts per session: the smallest
/// tokens seen. Every name it leaves out is larger than every name it
/// counts, so the first [`MAX_NAMES`] stay exact while the bookkeeping of a
/// session of many distinct names stays bounded.
pub const MAX_COUNTED_NAMES: usize = 128;

/// The longest event name a summary keeps, in bytes; a session with a longer
/// name says its names are capped.
pub const MAX_NAME_BYTES: usize = 128;

/// The event names a summary keeps of a session, and whether some were left
/// out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Names {
    /// The kept names, ordered by their token's bytes.
    pub names: Vec<String>,
    /// Some name was left out: more than [`MAX_NAMES`] distinct ones, or one
    /// longer than [`MAX_NAME_BYTES`].
    pub capped: bool,
}

/// The names a summary keeps of every name its session's events carried:
/// of those at most [`MAX_NAME_BYTES`] long, the [`MAX_NAMES`] whose tokens
/// come first in byte order. The choice depends only on the set of names,
/// never on the order the events were applied in.
pub fn kept_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Names {
    let mut capped = false;
    let mut tokens: Vec<(String, &str)> = Vec::new();
    for name in names {
        if name.len() > MAX_NAME_BYTES {
            capped = true;
            continue;
        }
        tokens.push((escape_token(name), name));
    }
    tokens.sort();
    tokens.dedup();
    if tokens.len() > MAX_NAMES {
        capped = true;
        tokens.truncate(MAX_NAMES);
    }
    Names {
        names: tokens
            .into_iter()
            .map(|(_, name)| name.to_owned())
            .collect(),
        capped,
    }
}

/// The reference summary of a folded `document` whose frames arrived first
/// at `first_arrival` and last at `last_arrival` (JetStream timestamps, in
/// milliseconds), in `state`: the item `GET /sessions` lists for it.
pub fn summarize(
    document: &Value,
    first_arrival: Option<u64>,
    last_arrival: Option<u64>,
    state: &str,
) -> Value {
    let children = document["children"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let names = kept_names(children.iter().filter_map(|child| child["name"].as_str()));
    json!({
        "session_id": document["session_id"],
        "state": state,
        "start": document["start"],
        "end": document["end"],
        "children": children.len(),
        "first_arrival": first_arrival,
        "last_arrival": last_arrival,
        "names": names.names,
        "names_capped": names.capped,
    })
}

/// Sixteen hex digits of a non-negative number's IEEE bits: for numbers
/// ≥ 0 their order is the numbers' order (-0 counts as 0).
pub fn hex_double(value: f64) -> String {
    let value = if value == 0.0 { 0.0 } else { value };
    format!("{:016x}", value.to_bits())
}

/// The key `sort=start` orders by: sessions with a `start`, by it, then
/// those without, by their first arrival; ties by token.
pub fn start_sort_key(start: Option<f64>, first_arrival: u64, token: &str) -> String {
    match start {
        Some(start) => format!("s{}{token}", hex_double(start)),
        None => format!("u{}{token}", hex_double(first_arrival as f64)),
    }
}

/// The key `sort=last_activity` orders by: the last arrival, then the token.
pub fn activity_sort_key(last_arrival: u64, token: &str) -> String {
    format!("{}{token}", hex_double(last_arrival as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_by_token_order_and_capped() {
        let kept = kept_names(["b", "a", "b", "A"]);
        assert_eq!(kept.names, ["A", "a", "b"]);
        assert!(!kept.capped);
        let many: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
        let kept = kept_names(many.iter().rev().map(String::as_str));
        assert_eq!(kept.names.len(), MAX_NAMES);
        assert_eq!(kept.names[0], "n00");
        assert_eq!(kept.names[MAX_NAMES - 1], "n31");
        assert!(kept.capped);
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let kept = kept_names([long.as_str(), "short"]);
        assert_eq!(kept.names, ["short"]);
        assert!(kept.capped);
    }

    #[test]
    fn names_sort_by_their_tokens_bytes_not_the_raw_text() {
        // "a b" is "a_20b" and "a-b" stays: '-' (0x2d) sorts before '_' (0x5f).
        assert_eq!(kept_names(["a b", "a-b"]).names, ["a-b", "a b"]);
    }

    #[test]
    fn sort_keys_order_like_their_values_then_tokens() {
        let mut keys = vec![
            start_sort_key(Some(10.0), 0, "b"),
            start_sort_key(None, 5, "a"),
            start_sort_key(Some(2.5), 0, "z"),
            start_sort_key(Some(10.0), 0, "a"),
            start_sort_key(Some(-0.0), 0, "m"),
        ];
        keys.sort();
        assert_eq!(
            keys,
            [
                start_sort_key(Some(0.0), 0, "m"),
                start_sort_key(Some(2.5), 0, "z"),
                start_sort_key(Some(10.0), 0, "a"),
                start_sort_key(Some(10.0), 0, "b"),
                start_sort_key(None, 5, "a"),
            ]
        );
        assert!(activity_sort_key(999, "z") < activity_sort_key(1000, "a"));
        assert_eq!(hex_double(1.0), "3ff0000000000000");
    }

    #[test]
    fn a_summary_lists_the_documents_bounds_count_and_names() {
        let document = json!({"session_id": "s", "type": "SESSION", "start": 1, "end": null,
            "children": [{"type": "EVENT", "timestamp": 2, "name": "b"},
                         {"type": "EVENT", "timestamp": 3},
                         {"type": "EVENT", "timestamp": 4, "name": "a"}]});
        assert_eq!(
            summarize(&document, Some(100), Some(200), "open"),
            json!({"session_id": "s", "state": "open", "start": 1, "end": null, "children": 3,
                   "first_arrival": 100, "last_arrival": 200, "names": ["a", "b"],
                   "names_capped": false})
        );
    }
}
