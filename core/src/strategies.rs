//! proptest strategies for streams of frames and their delivery schedules,
//! shared by the fold's own property tests and the processor's tests of its
//! Redis step. Enabled by the `proptest` feature.

use proptest::prelude::*;

use crate::{Delivery, Frame, Limits, SessionId};

/// One event as JSON text. Few distinct timestamps, names and ids, so ties
/// and duplicates are common.
pub fn any_event() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        1 => Just("SESSION_START"),
        1 => Just("SESSION_END"),
        6 => Just("EVENT"),
    ];
    (
        kind,
        0u8..6,
        prop::option::of(0u8..4),
        prop::option::of(0u8..3),
        any::<bool>(),
    )
        .prop_map(|(kind, ts, name, id, fractional)| {
            let timestamp = if fractional {
                format!("{ts}.5")
            } else {
                ts.to_string()
            };
            let mut event = format!(r#"{{"type":"{kind}","timestamp":{timestamp}"#);
            if let Some(name) = name {
                event.push_str(&format!(r#","name":"n{name}""#));
            }
            if let Some(id) = id {
                event.push_str(&format!(r#","id":"i{id}""#));
            }
            event.push('}');
            event
        })
}

/// The frames a stream holds for one session, with sequences 1, 2, …
pub fn any_stream() -> impl Strategy<Value = Vec<Delivery>> {
    prop::collection::vec(prop::collection::vec(any_event(), 0..6), 0..8).prop_map(|frames| {
        let session = SessionId::parse("s").expect("a valid id");
        frames
            .into_iter()
            .enumerate()
            .map(|(i, events)| Delivery {
                stream_sequence: i as u64 + 1,
                events: Frame::parse(
                    &format!("[{}]", events.join(",")),
                    &session,
                    &Limits::default(),
                )
                .expect("generated frames are valid")
                .events,
            })
            .collect()
    })
}

/// A stream and a delivery schedule over it: indexes into the stream in any
/// order, with any number of redeliveries, every frame at least once.
pub fn any_schedule() -> impl Strategy<Value = (Vec<Delivery>, Vec<usize>)> {
    any_stream().prop_flat_map(|stream| {
        let n = stream.len();
        let redeliveries = prop::collection::vec(0..n.max(1), 0..n * 2 + 1);
        (Just(stream), redeliveries).prop_flat_map(move |(stream, extra)| {
            let mut schedule: Vec<usize> = (0..n).collect();
            if n > 0 {
                schedule.extend(extra);
            }
            (Just(stream), Just(schedule).prop_shuffle())
        })
    })
}
