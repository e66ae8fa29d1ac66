//! What the adversarial producers will send, generated from a seed: the
//! sessions, their events (with duplicates by id and by content, within a
//! session and across sessions), and which producer sends which event.
//!
//! Events are kept as a small JSON tree of their own ([`Json`]) so that a
//! number keeps the text it is written with (`5`, `5.0`, `5e0`) and the same
//! event can be written again with its keys in another order, other white
//! space or escaped strings: the same canonical content in other bytes.

use std::fmt::Write as _;

use sessionfold_core::SeededRng;

/// A JSON value with numbers as text and objects in key order.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// A number, written as this text.
    Number(String),
    Str(String),
    /// Written exactly as this text (a string literal with escapes of its
    /// own, say).
    Raw(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// How an event's bytes are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Style {
    /// Object keys in reverse order.
    pub reversed_keys: bool,
    /// A space after `:` and `,`.
    pub spaced: bool,
    /// Every non-ASCII character as `\uXXXX` (surrogate pairs past the BMP).
    pub escape_non_ascii: bool,
}

impl Json {
    pub fn str(s: &str) -> Self {
        Self::Str(s.to_owned())
    }

    pub fn num(text: impl Into<String>) -> Self {
        Self::Number(text.into())
    }

    pub fn render(&self, style: Style) -> String {
        let mut out = String::new();
        self.write(&mut out, style);
        out
    }

    fn write(&self, out: &mut String, style: Style) {
        let comma = if style.spaced { ", " } else { "," };
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Number(text) => out.push_str(text),
            Self::Str(s) => write_string(out, s, style.escape_non_ascii),
            Self::Raw(text) => out.push_str(text),
            Self::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(comma);
                    }
                    item.write(out, style);
                }
                out.push(']');
            }
            Self::Object(fields) => {
                out.push('{');
                let mut order: Vec<&(String, Json)> = fields.iter().collect();
                if style.reversed_keys {
                    order.reverse();
                }
                for (i, (key, value)) in order.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(comma);
                    }
                    write_string(out, key, style.escape_non_ascii);
                    out.push_str(if style.spaced { ": " } else { ":" });
                    value.write(out, style);
                }
                out.push('}');
            }
        }
    }
}

fn write_string(out: &mut String, s: &str, escape_non_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if escape_non_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One event a producer is to get stored.
#[derive(Debug, Clone)]
pub struct PlannedEvent {
    pub value: Json,
    /// How it is written when first sent (a resend may write it otherwise).
    pub style: Style,
    /// `SESSION_END`: a frame holding it makes the server close the socket
    /// once acknowledged.
    pub ends_session: bool,
}

impl PlannedEvent {
    pub fn text(&self) -> String {
        self.value.render(self.style)
    }
}

/// One producer: a session, the events it must get stored, and the seed of
/// its behaviour (batching, disconnects, invalid frames, request ids).
#[derive(Debug, Clone)]
pub struct ProducerPlan {
    pub session: usize,
    pub session_id: String,
    /// Which of the session's producers this is (0, 1, …).
    pub lane: usize,
    pub seed: u64,
    pub events: Vec<PlannedEvent>,
}

/// Every producer of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub session_ids: Vec<String>,
    pub producers: Vec<ProducerPlan>,
}

/// The size of a run's load.
#[derive(Debug, Clone, Copy)]
pub struct PlanSize {
    pub sessions: usize,
    /// About this many events per session (0.5× to 1.5×).
    pub events_per_session: usize,
}

/// Session ids: mostly plain, some with bytes that must be escaped in
/// subjects, keys, URLs and JSON.
fn session_id(seed: u64, n: usize) -> String {
    let plain = format!("adv-{:06x}-{n}", seed & 0xff_ffff);
    match n % 9 {
        4 => format!("adv odd.{n} *>{{x}}_é%/+\"\\ {:x}", seed & 0xffff),
        7 => format!("ADV_{n}.漢字:{:x}", seed & 0xfff),
        _ => plain,
    }
}

/// A `session_id` field holding the session's id, now and then written with
/// its first character escaped (the same string once decoded).
fn session_field(id: &str, rng: &mut SeededRng) -> Json {
    let mut chars = id.chars();
    match chars.next() {
        Some(first) if rng.chance(50) => {
            let mut literal = String::new();
            write_string(&mut literal, chars.as_str(), false);
            let mut units = [0u16; 2];
            let escaped: String = first
                .encode_utf16(&mut units)
                .iter()
                .map(|unit| format!("\\u{unit:04x}"))
                .collect();
            Json::Raw(format!("\"{escaped}{}", &literal[1..]))
        }
        _ => Json::str(id),
    }
}

/// A timestamp near `base`, in one of the forms the contract allows: an
/// integer, a decimal, an integral decimal (`5.0`) or with an exponent.
/// Offsets are few, so equal timestamps are common.
fn timestamp(base: u64, rng: &mut SeededRng) -> Json {
    let at = base + rng.below(40);
    match rng.below(10) {
        0..=4 => Json::num(at.to_string()),
        5 | 6 => Json::num(format!("{at}.{}", ["5", "25", "125"][rng.index(3)])),
        7 => Json::num(format!("{at}.0")),
        // 1600000012 as 1.600000012e9: exact, 10 significant digits.
        _ => {
            let digits = at.to_string();
            let (head, tail) = digits.split_at(1);
            let tail = tail.trim_end_matches('0');
            let exponent = digits.len() - 1;
            if tail.is_empty() {
                Json::num(format!("{head}e{exponent}"))
            } else {
                Json::num(format!("{head}.{tail}e{exponent}"))
            }
        }
    }
}

fn props(rng: &mut SeededRng, k: usize) -> Json {
    Json::Object(vec![
        ("n".to_owned(), Json::num(k.to_string())),
        (
            "list".to_owned(),
            Json::Array(vec![
                Json::num("1"),
                Json::num("2.5"),
                Json::str("x"),
                Json::Null,
                Json::Bool(rng.chance(50)),
            ]),
        ),
        (
            "deep".to_owned(),
            Json::Object(vec![(
                "a".to_owned(),
                Json::Object(vec![("b".to_owned(), Json::Array(Vec::new()))]),
            )]),
        ),
        ("ünï €".to_owned(), Json::str("\u{1F600} tab\tquote\" nl\n")),
        (String::new(), Json::str("empty key")),
    ])
}

/// A fresh `EVENT` of session number `session`.
fn fresh_event(
    session: usize,
    session_id: &str,
    base: u64,
    k: usize,
    ids_so_far: &mut Vec<String>,
    rng: &mut SeededRng,
) -> Json {
    let mut fields = Vec::new();
    let name = match rng.below(10) {
        0 => format!("café-{k}"),
        1 => format!("漢-{k} \u{1F600}"),
        _ => format!("e{k}"),
    };
    let ts = timestamp(base, rng);
    let mut typed = vec![
        ("type".to_owned(), Json::str("EVENT")),
        ("timestamp".to_owned(), ts),
    ];
    if rng.chance(50) {
        typed.reverse();
    }
    fields.extend(typed);
    fields.push(("name".to_owned(), Json::Str(name)));
    let roll = rng.below(100);
    if roll < 30 {
        let id = format!("id-{session}-{k}");
        ids_so_far.push(id.clone());
        fields.push(("id".to_owned(), Json::Str(id)));
    } else if roll < 36 && !ids_so_far.is_empty() {
        // An id the session used before, on other content: de-duplicated
        // by id, the first arrival stays.
        let id = ids_so_far[rng.index(ids_so_far.len())].clone();
        fields.push(("id".to_owned(), Json::Str(id)));
    } else if roll < 39 {
        // The same id in several sessions: each keeps its own.
        fields.push(("id".to_owned(), Json::str(&format!("shared-{}", k % 5))));
    }
    if rng.chance(10) {
        fields.push(("session_id".to_owned(), session_field(session_id, rng)));
    }
    if rng.chance(20) {
        fields.push(("props".to_owned(), props(rng, k)));
    }
    if rng.chance(5) {
        let at = rng.index(fields.len() + 1);
        fields.insert(at, ("weird key \\ \"".to_owned(), Json::num("-0.5")));
    }
    Json::Object(fields)
}

/// Events that several sessions send with the same bytes (no `session_id`
/// field): each session must keep its copy.
fn shared_events(base: u64) -> Vec<Json> {
    (0..4)
        .map(|k| {
            Json::Object(vec![
                ("type".to_owned(), Json::str("EVENT")),
                (
                    "timestamp".to_owned(),
                    Json::num((base + 7 * k).to_string()),
                ),
                ("name".to_owned(), Json::str(&format!("shared-content-{k}"))),
            ])
        })
        .collect()
}

fn bound_event(kind: &str, base: u64, rng: &mut SeededRng) -> Json {
    let mut fields = vec![
        ("type".to_owned(), Json::str(kind)),
        ("timestamp".to_owned(), timestamp(base, rng)),
    ];
    if rng.chance(30) {
        fields.push(("name".to_owned(), Json::str(&kind.to_ascii_lowercase())));
    }
    if rng.chance(50) {
        fields.reverse();
    }
    Json::Object(fields)
}

fn random_style(rng: &mut SeededRng) -> Style {
    Style {
        reversed_keys: false,
        spaced: rng.chance(20),
        escape_non_ascii: rng.chance(15),
    }
}

impl Plan {
    /// The plan of `size` drawn from `seed`.
    pub fn generate(seed: u64, size: PlanSize) -> Self {
        let mut rng = SeededRng::new(seed ^ 0x009a_110f_ad7e);
        let base = 1_600_000_000 + rng.below(100_000_000);
        let shared = shared_events(base);
        let mut session_ids = Vec::with_capacity(size.sessions);
        let mut producers = Vec::new();
        for session in 0..size.sessions {
            let id = session_id(seed, session);
            let count = size.events_per_session / 2 + rng.index(size.events_per_session + 1);
            let mut values: Vec<Json> = Vec::with_capacity(count + 8);
            let mut ids = Vec::new();
            for k in 0..count {
                let roll = rng.below(100);
                let value = if roll < 8 && !values.is_empty() {
                    // An exact repeat of an earlier event.
                    values[rng.index(values.len())].clone()
                } else if roll < 10 {
                    shared[rng.index(shared.len())].clone()
                } else {
                    fresh_event(session, &id, base, k, &mut ids, &mut rng)
                };
                values.push(value);
            }
            // SESSION_START and SESSION_END anywhere, 0 to 3 of each.
            for kind in ["SESSION_START", "SESSION_END"] {
                for _ in 0..rng.below(4) {
                    let at = rng.index(values.len() + 1);
                    values.insert(at, bound_event(kind, base, &mut rng));
                }
            }
            let lanes = match rng.below(100) {
                0..=64 => 1,
                65..=94 => 2,
                _ => 3,
            };
            let mut lanes_events: Vec<Vec<PlannedEvent>> = vec![Vec::new(); lanes];
            for value in values {
                let ends_session = matches!(
                    &value,
                    Json::Object(fields) if fields.iter().any(|(k, v)| k == "type" && *v == Json::str("SESSION_END"))
                );
                let first = rng.index(lanes);
                let planned = PlannedEvent {
                    value,
                    style: random_style(&mut rng),
                    ends_session,
                };
                // Now and then the same event from two connections at once.
                if lanes > 1 && rng.chance(10) {
                    let second = (first + 1 + rng.index(lanes - 1)) % lanes;
                    lanes_events[second].push(planned.clone());
                }
                lanes_events[first].push(planned);
            }
            for (lane, events) in lanes_events.into_iter().enumerate() {
                producers.push(ProducerPlan {
                    session,
                    session_id: id.clone(),
                    lane,
                    seed: rng.next_u64(),
                    events,
                });
            }
            session_ids.push(id);
        }
        Self {
            session_ids,
            producers,
        }
    }

    pub fn events(&self) -> usize {
        self.producers.iter().map(|p| p.events.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adversary::oracle;

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let size = PlanSize {
            sessions: 12,
            events_per_session: 30,
        };
        let a = Plan::generate(7, size);
        let b = Plan::generate(7, size);
        let texts = |p: &Plan| -> Vec<String> {
            p.producers
                .iter()
                .flat_map(|p| p.events.iter().map(PlannedEvent::text))
                .collect()
        };
        assert_eq!(a.session_ids, b.session_ids);
        assert_eq!(texts(&a), texts(&b));
        assert_ne!(texts(&a), texts(&Plan::generate(8, size)));
    }

    #[test]
    fn every_style_writes_the_same_canonical_content() {
        let plan = Plan::generate(
            11,
            PlanSize {
                sessions: 9,
                events_per_session: 40,
            },
        );
        let styles = [
            Style::default(),
            Style {
                reversed_keys: true,
                spaced: true,
                escape_non_ascii: true,
            },
        ];
        for event in plan.producers.iter().flat_map(|p| &p.events) {
            let [plain, other] = styles.map(|style| {
                let text = event.value.render(style);
                let value: serde_json::Value =
                    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{text}: {err}"));
                oracle::canonical(&value)
            });
            assert_eq!(plain, other);
        }
        assert!(plan.session_ids.iter().any(|id| id.contains('"')));
    }
}
