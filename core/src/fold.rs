//! The fold rules (docs/design.md §2.1): how the accepted frames of a session become
//! its document.
//!
//! Every event has a *position*: the JetStream stream sequence of its frame and
//! its index in the frame. [`fold`] is the reference: it looks at all
//! deliveries at once. [`IncrementalFold`] applies deliveries one at a time,
//! in any order and any number of times, with the same state the processor
//! keeps in Redis (an identity → position map and a position set ordered by
//! timestamp); the property tests below show that both always agree.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use crate::event::{Event, EventKind, normalized_number};

/// One JetStream message of a session: its stream sequence and its events.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub stream_sequence: u64,
    pub events: Vec<Event>,
}

/// An event's position as a string whose byte order is stream order; it is
/// the member of the Redis sorted set and the value of the identity hash.
pub fn position_member(stream_sequence: u64, index: usize) -> String {
    format!("{stream_sequence:020}:{index:010}")
}

/// The reference fold over every delivery of one session.
pub fn fold(session_id: &str, deliveries: &[Delivery]) -> Value {
    let mut start: Option<f64> = None;
    let mut end: Option<f64> = None;
    let mut first_by_identity: HashMap<String, (String, &Event)> = HashMap::new();
    for delivery in deliveries {
        for (index, event) in delivery.events.iter().enumerate() {
            match event.kind {
                EventKind::SessionStart => start = Some(min(start, event.timestamp)),
                EventKind::SessionEnd => end = Some(max(end, event.timestamp)),
                EventKind::Event => {
                    let position = position_member(delivery.stream_sequence, index);
                    first_by_identity
                        .entry(event.identity())
                        .and_modify(|kept| {
                            if position < kept.0 {
                                *kept = (position.clone(), event);
                            }
                        })
                        .or_insert((position, event));
                }
            }
        }
    }
    let mut children: Vec<(f64, String, &Event)> = first_by_identity
        .into_values()
        .map(|(position, event)| (event.timestamp, position, event))
        .collect();
    children.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    document(
        session_id,
        start,
        end,
        children.into_iter().map(|(_, _, event)| &event.body),
    )
}

/// The document of a session, fields in the contract's order.
pub fn document<'a>(
    session_id: &str,
    start: Option<f64>,
    end: Option<f64>,
    children: impl Iterator<Item = &'a Map<String, Value>>,
) -> Value {
    json!({
        "session_id": session_id,
        "type": "SESSION",
        "start": start.map(normalized_number),
        "end": end.map(normalized_number),
        "children": children.map(|body| Value::Object(body.clone())).collect::<Vec<_>>(),
    })
}

/// The skeleton a session's document starts from.
pub fn empty_document(session_id: &str) -> Value {
    document(session_id, None, None, std::iter::empty())
}

fn min(current: Option<f64>, candidate: f64) -> f64 {
    current.map_or(candidate, |value| value.min(candidate))
}

fn max(current: Option<f64>, candidate: f64) -> f64 {
    current.map_or(candidate, |value| value.max(candidate))
}

/// Orders timestamps as Redis orders sorted-set scores.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Score(f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The fold applied one delivery at a time, with the state the processor's
/// Redis step keeps for a session.
#[derive(Debug, Clone, Default)]
pub struct IncrementalFold {
    start: Option<f64>,
    end: Option<f64>,
    /// identity → position of the first arrival seen so far.
    first_position: HashMap<String, String>,
    /// (timestamp, position) → event, in children order.
    order: BTreeMap<(Score, String), Event>,
}

impl IncrementalFold {
    pub fn apply(&mut self, delivery: &Delivery) {
        for (index, event) in delivery.events.iter().enumerate() {
            match event.kind {
                EventKind::SessionStart => self.start = Some(min(self.start, event.timestamp)),
                EventKind::SessionEnd => self.end = Some(max(self.end, event.timestamp)),
                EventKind::Event => {
                    let position = position_member(delivery.stream_sequence, index);
                    self.apply_child(event, position);
                }
            }
        }
    }

    fn apply_child(&mut self, event: &Event, position: String) {
        let identity = event.identity();
        if let Some(kept) = self.first_position.get(&identity) {
            if *kept <= position {
                return;
            }
            // An earlier arrival replaces the one applied before it.
            let kept = kept.clone();
            self.order.retain(|(_, member), _| *member != kept);
        }
        self.first_position.insert(identity, position.clone());
        self.order
            .insert((Score(event.timestamp), position), event.clone());
    }

    pub fn document(&self, session_id: &str) -> Value {
        document(
            session_id,
            self.start,
            self.end,
            self.order.values().map(|event| &event.body),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::{any_schedule, any_stream};
    use crate::{Frame, Limits, SessionId};
    use proptest::prelude::*;

    fn delivery(stream_sequence: u64, text: &str) -> Delivery {
        let session = SessionId::parse("e6fa79ca-d142-4046-a134-5134f16a0b5e").unwrap();
        let frame = Frame::parse(text, &session, &Limits::default()).unwrap();
        Delivery {
            stream_sequence,
            events: frame.events,
        }
    }

    const FRAME_A: &str = r#"[{"type":"SESSION_START","timestamp":1569972082},{"type":"EVENT","timestamp":1569972085,"name":"last_event"}]"#;
    const FRAME_B: &str = r#"[{"type":"EVENT","timestamp":1569972083,"name":"middle_event"},{"type":"EVENT","timestamp":1569972083,"name":"first_event"},{"type":"SESSION_END","timestamp":1569972086}]"#;

    fn design_example() -> Value {
        serde_json::from_str(
            r#"{
              "session_id": "e6fa79ca-d142-4046-a134-5134f16a0b5e",
              "type": "SESSION",
              "start": 1569972082,
              "end": 1569972086,
              "children": [
                {"type": "EVENT", "timestamp": 1569972083, "name": "middle_event"},
                {"type": "EVENT", "timestamp": 1569972083, "name": "first_event"},
                {"type": "EVENT", "timestamp": 1569972085, "name": "last_event"}
              ]
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn the_design_example_folds_to_the_design_document() {
        let deliveries = [delivery(1, FRAME_A), delivery(2, FRAME_B)];
        let id = "e6fa79ca-d142-4046-a134-5134f16a0b5e";
        assert_eq!(fold(id, &deliveries), design_example());
        let mut incremental = IncrementalFold::default();
        incremental.apply(&deliveries[1]);
        incremental.apply(&deliveries[0]);
        assert_eq!(incremental.document(id), design_example());
    }

    #[test]
    fn an_empty_session_has_null_bounds() {
        assert_eq!(
            fold("s", &[]),
            json!({"session_id":"s","type":"SESSION","start":null,"end":null,"children":[]})
        );
        assert_eq!(empty_document("s"), fold("s", &[]));
    }

    #[test]
    fn start_is_the_smallest_and_end_the_largest() {
        let deliveries = [
            delivery(
                1,
                r#"[{"type":"SESSION_END","timestamp":5},{"type":"SESSION_START","timestamp":3}]"#,
            ),
            delivery(
                2,
                r#"[{"type":"SESSION_START","timestamp":2},{"type":"SESSION_END","timestamp":9.5}]"#,
            ),
        ];
        let doc = fold("s", &deliveries);
        assert_eq!(doc["start"], json!(2));
        assert_eq!(doc["end"], json!(9.5));
    }

    #[test]
    fn the_first_arrival_of_an_identity_wins() {
        let deliveries = [
            delivery(
                4,
                r#"[{"type":"EVENT","timestamp":1,"id":"a","name":"late"}]"#,
            ),
            delivery(
                2,
                r#"[{"type":"EVENT","timestamp":8,"id":"a","name":"early"}]"#,
            ),
        ];
        let doc = fold("s", &deliveries);
        assert_eq!(
            doc["children"],
            json!([{"type":"EVENT","timestamp":8,"id":"a","name":"early"}])
        );
        let mut incremental = IncrementalFold::default();
        incremental.apply(&deliveries[0]);
        incremental.apply(&deliveries[1]);
        assert_eq!(incremental.document("s"), doc);
    }

    #[test]
    fn equal_content_is_one_child() {
        let deliveries = [
            delivery(
                1,
                r#"[{"type":"EVENT","timestamp":1,"name":"x"},{"name":"x","timestamp":1,"type":"EVENT"}]"#,
            ),
            delivery(2, r#"{"type":"EVENT","timestamp":1,"name":"x"}"#),
        ];
        let doc = fold("s", &deliveries);
        assert_eq!(doc["children"].as_array().unwrap().len(), 1);
    }

    proptest! {
        #[test]
        fn any_order_and_redelivery_gives_the_reference_document((stream, schedule) in any_schedule()) {
            let mut incremental = IncrementalFold::default();
            for &i in &schedule {
                incremental.apply(&stream[i]);
            }
            prop_assert_eq!(
                serde_json::to_string(&incremental.document("s")).unwrap(),
                serde_json::to_string(&fold("s", &stream)).unwrap()
            );
        }

        #[test]
        fn children_are_ordered_by_timestamp_then_position(stream in any_stream()) {
            let doc = fold("s", &stream);
            let timestamps: Vec<f64> = doc["children"]
                .as_array()
                .unwrap()
                .iter()
                .map(|child| child["timestamp"].as_f64().unwrap())
                .collect();
            prop_assert!(timestamps.windows(2).all(|w| w[0] <= w[1]));
        }

        #[test]
        fn sending_everything_again_changes_nothing(stream in any_stream()) {
            let mut doubled = stream.clone();
            let next = stream.len() as u64 + 1;
            doubled.extend(stream.iter().enumerate().map(|(i, d)| Delivery {
                stream_sequence: next + i as u64,
                events: d.events.clone(),
            }));
            prop_assert_eq!(fold("s", &doubled), fold("s", &stream));
        }
    }
}
