//! The fold (docs/design.md §2.1) under arbitrary delivery schedules.
//!
//! The fuzzer's bytes choose a session's stream (frames with stream
//! sequences, events with few distinct timestamps, names, ids and field
//! orders, so ties and duplicates are common) and a schedule: every frame at
//! least once, redeliveries, any order. Invariants:
//! - `IncrementalFold` over the schedule gives `fold`'s document byte for
//!   byte, and applying the schedule again changes nothing;
//! - `fold` depends only on the set of deliveries, not their order;
//! - every identity is one child; `start`/`end` are the smallest/largest
//!   SESSION_START/SESSION_END timestamps;
//! - the children are in the order Redis keeps them in the processor's
//!   sorted set: by score as Redis compares doubles, then by member bytes.

#![no_main]

use std::collections::{BTreeSet, HashMap};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sessionfold_core::event::normalized_number;
use sessionfold_core::fold::position_member;
use sessionfold_core::{
    Delivery, Event, EventKind, Frame, IncrementalFold, Limits, SessionId, fold,
};

const SESSION: &str = "s";

/// Timestamps as producers write them: equal values spelled differently,
/// negative zero, extremes, values that are not exact in binary.
const TIMESTAMPS: &[&str] = &[
    "0",
    "-0",
    "-0.0",
    "0.0",
    "1",
    "1.0",
    "1e0",
    "1.5",
    "2",
    "2.50",
    "3",
    "1569972082",
    "0.1",
    "0.30000000000000004",
    "9007199254740993",
    "5e-324",
    "1.7976931348623157e308",
];

const KINDS: &[&str] = &[
    "SESSION_START",
    "SESSION_END",
    "EVENT",
    "EVENT",
    "EVENT",
    "EVENT",
];
const NAMES: &[&str] = &["a", "b", "c", "ü☃"];
const IDS: &[&str] = &["i0", "i1", "i2"];
const EXTRAS: &[&str] = &[
    r#"{"b":1,"a":[true,null]}"#,
    r#"{"a":[true,null],"b":1}"#,
    r#"{"a":[null,true]}"#,
];

const UNLIMITED: Limits = Limits {
    max_frame_bytes: usize::MAX,
    max_events_per_frame: usize::MAX,
    max_event_bytes: usize::MAX,
};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((stream, schedule)) = stream_and_schedule(&mut u) else {
        return;
    };
    check(&stream, &schedule);
});

fn event_text(u: &mut Unstructured) -> Result<String> {
    let mut fields = vec![
        format!(r#""type":"{}""#, u.choose(KINDS)?),
        format!(r#""timestamp":{}"#, u.choose(TIMESTAMPS)?),
    ];
    if u.arbitrary()? {
        fields.push(format!(r#""name":"{}""#, u.choose(NAMES)?));
    }
    if u.ratio(1, 3)? {
        fields.push(format!(r#""id":"{}""#, u.choose(IDS)?));
    }
    if u.ratio(1, 4)? {
        fields.push(format!(r#""extra":{}"#, u.choose(EXTRAS)?));
    }
    if u.ratio(1, 8)? {
        fields.push(format!(r#""session_id":"{SESSION}""#));
    }
    shuffle(u, &mut fields)?;
    Ok(format!("{{{}}}", fields.join(",")))
}

fn shuffle<T>(u: &mut Unstructured, items: &mut [T]) -> Result<()> {
    for i in (1..items.len()).rev() {
        let j = u.int_in_range(0..=i)?;
        items.swap(i, j);
    }
    Ok(())
}

fn stream_and_schedule(u: &mut Unstructured) -> Result<(Vec<Delivery>, Vec<usize>)> {
    let session = SessionId::parse(SESSION).expect("a valid id");
    let frames = u.int_in_range(0..=12)?;
    let mut stream = Vec::with_capacity(frames);
    let mut sequence = 0u64;
    for _ in 0..frames {
        // Other sessions' frames take sequences in between.
        sequence += 1 + u64::from(u.int_in_range(0..=3u8)?);
        let count = u.int_in_range(0..=8)?;
        let events = (0..count)
            .map(|_| event_text(u))
            .collect::<Result<Vec<_>>>()?;
        let text = format!("[{}]", events.join(","));
        let frame = Frame::parse(&text, &session, &UNLIMITED)
            .unwrap_or_else(|err| panic!("generated frame {text} is invalid: {err}"));
        stream.push(Delivery {
            stream_sequence: sequence,
            events: frame.events,
        });
    }
    let mut schedule: Vec<usize> = (0..stream.len()).collect();
    if !stream.is_empty() {
        let redeliveries = u.int_in_range(0..=2 * stream.len())?;
        for _ in 0..redeliveries {
            schedule.push(u.int_in_range(0..=stream.len() - 1)?);
        }
    }
    shuffle(u, &mut schedule)?;
    Ok((stream, schedule))
}

fn check(stream: &[Delivery], schedule: &[usize]) {
    let reference = fold(SESSION, stream);
    let reference_text = serde_json::to_string(&reference).unwrap();

    let mut incremental = IncrementalFold::default();
    for &i in schedule {
        incremental.apply(&stream[i]);
    }
    assert_eq!(
        serde_json::to_string(&incremental.document(SESSION)).unwrap(),
        reference_text,
        "schedule {schedule:?}"
    );
    for &i in schedule {
        incremental.apply(&stream[i]);
    }
    assert_eq!(
        serde_json::to_string(&incremental.document(SESSION)).unwrap(),
        reference_text,
        "applying everything again changed the document"
    );

    let reversed: Vec<Delivery> = stream.iter().rev().cloned().collect();
    assert_eq!(
        serde_json::to_string(&fold(SESSION, &reversed)).unwrap(),
        reference_text
    );

    let events = || stream.iter().flat_map(|d| &d.events);
    let bound = |kind: EventKind, pick: fn(f64, f64) -> f64| {
        events()
            .filter(|e| e.kind == kind)
            .map(|e| e.timestamp)
            .reduce(pick)
            .map(normalized_number)
    };
    assert_eq!(
        reference["start"],
        bound(EventKind::SessionStart, f64::min).map_or(Value::Null, Value::Number)
    );
    assert_eq!(
        reference["end"],
        bound(EventKind::SessionEnd, f64::max).map_or(Value::Null, Value::Number)
    );

    let children = reference["children"]
        .as_array()
        .expect("children is an array");
    let identities: BTreeSet<String> = events()
        .filter(|e| e.kind == EventKind::Event)
        .map(Event::identity)
        .collect();
    assert_eq!(children.len(), identities.len(), "one child per identity");
    assert_eq!(children, &redis_order(stream), "not the order Redis keeps");
}

/// The children as the processor's sorted set orders them: the first
/// arrival of each identity, scored by the timestamp text the processor
/// sends to ZADD, ordered by score (doubles compared as Redis does, so
/// -0 equals 0) and then by member bytes.
fn redis_order(stream: &[Delivery]) -> Vec<Value> {
    let mut first: HashMap<String, (String, f64, &Event)> = HashMap::new();
    for delivery in stream {
        for (index, event) in delivery.events.iter().enumerate() {
            if event.kind != EventKind::Event {
                continue;
            }
            let member = position_member(delivery.stream_sequence, index);
            let score: f64 = event
                .timestamp
                .to_string()
                .parse()
                .expect("a score Redis reads");
            let kept = first
                .entry(event.identity())
                .or_insert((member.clone(), score, event));
            if member < kept.0 {
                *kept = (member, score, event);
            }
        }
    }
    let mut members: Vec<_> = first.into_values().collect();
    members.sort_by(|a, b| {
        a.1.partial_cmp(&b.1)
            .expect("finite scores")
            .then_with(|| a.0.cmp(&b.0))
    });
    members
        .into_iter()
        .map(|(_, _, event)| Value::Object(event.body.clone()))
        .collect()
}
