//! The Redis apply step against a real redis-server with RedisJSON: any
//! order of batches and any redelivery gives the reference fold, byte for
//! byte, and refused batches write nothing.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use sessionfold_common::settings::RedisSettings;
use sessionfold_core::Keys;
use sessionfold_core::strategies::any_schedule;
use sessionfold_core::{Delivery, Frame, Limits, SessionId, fold};
use sessionfold_processor::store::{Applied, Invocation, RedisStore, Store};
use sessionfold_testkit::{RedisServer, init_test_tracing, unique_name};

mod support;

fn names() -> Keys {
    Keys::new(format!("{}:", unique_name("t")))
}

async fn stored_document(redis_url: &str, key: &str) -> Option<String> {
    let client = redis::Client::open(redis_url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("JSON.GET")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap()
}

/// Applies random delivery schedules, `per_batch` deliveries a batch, each
/// batch as the invocations `build` makes of it, and checks the document
/// against the reference fold and the state against the document.
fn every_schedule_stores_the_reference_document(
    cases: u32,
    per_batch: usize,
    build: impl Fn(&Keys, &SessionId, &[Delivery]) -> Vec<Invocation>,
) {
    init_test_tracing();
    let redis = RedisServer::start().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime
        .block_on(RedisStore::connect(&RedisSettings::local(redis.url())))
        .unwrap();
    let session = SessionId::parse("s").unwrap();
    let mut runner = TestRunner::new(ProptestConfig::with_cases(cases));
    runner
        .run(&any_schedule(), |(stream, schedule)| {
            let names = names();
            let store = store.clone();
            runtime.block_on(async {
                for batch in schedule.chunks(per_batch) {
                    let deliveries: Vec<Delivery> =
                        batch.iter().map(|&i| stream[i].clone()).collect();
                    let invocations = build(&names, &session, &deliveries);
                    let applied = store.apply(&invocations).await.unwrap();
                    assert_eq!(applied.len(), invocations.len(), "{applied:?}");
                    assert!(
                        applied.iter().all(|a| matches!(a, Applied::Stored(_))),
                        "{applied:?}"
                    );
                }
                let expected = serde_json::to_string(&fold("s", &stream)).unwrap();
                let stored = stored_document(&redis.url(), &names.session(&session).doc).await;
                if stream.is_empty() {
                    assert_eq!(stored, None);
                } else {
                    assert_eq!(stored.as_deref(), Some(expected.as_str()));
                    let keys = names.session(&session);
                    support::check_state(&redis.url(), &keys.state, &keys.doc).await;
                }
            });
            Ok(())
        })
        .unwrap();
}

#[test]
fn any_delivery_schedule_stores_the_reference_document() {
    // Deliveries in schedule order, batched two at a time, as a processor
    // receiving redeliveries would see them.
    every_schedule_stores_the_reference_document(96, 2, |names, session, deliveries| {
        vec![Invocation::new(names, session, deliveries, 0)]
    });
}

fn frame(session: &SessionId, sequence: u64, text: &str) -> Delivery {
    Delivery {
        stream_sequence: sequence,
        events: Frame::parse(text, session, &Limits::default())
            .unwrap()
            .events,
    }
}

#[tokio::test]
async fn a_batch_past_the_children_limit_is_refused_and_writes_nothing() {
    init_test_tracing();
    let redis = RedisServer::start().unwrap();
    let store = RedisStore::connect(&RedisSettings::local(redis.url()))
        .await
        .unwrap();
    let names = names();
    let session = SessionId::parse("full").unwrap();
    let first = frame(
        &session,
        1,
        r#"[{"type":"SESSION_START","timestamp":1},{"type":"EVENT","timestamp":2,"name":"a"},{"type":"EVENT","timestamp":3,"name":"b"}]"#,
    );
    let over = frame(
        &session,
        2,
        r#"[{"type":"SESSION_END","timestamp":9},{"type":"EVENT","timestamp":4,"name":"c"},{"type":"EVENT","timestamp":5,"name":"d"}]"#,
    );
    let applied = store
        .apply(&[Invocation::new(
            &names,
            &session,
            std::slice::from_ref(&first),
            3,
        )])
        .await
        .unwrap();
    assert!(
        matches!(applied[..], [Applied::Stored(ref stored)] if stored.written == 2),
        "{applied:?}"
    );
    let before = stored_document(&redis.url(), &names.session(&session).doc).await;

    let applied = store
        .apply(&[Invocation::new(&names, &session, &[over], 3)])
        .await
        .unwrap();
    match &applied[..] {
        [Applied::Refused(reason)] => assert!(reason.contains("SESSIONFOLD_FULL"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        stored_document(&redis.url(), &names.session(&session).doc).await,
        before,
        "a refused batch left a trace"
    );

    // Re-applying what is already stored is still fine at the limit.
    let applied = store
        .apply(&[Invocation::new(&names, &session, &[first], 2)])
        .await
        .unwrap();
    assert!(
        matches!(applied[..], [Applied::Stored(ref stored)] if stored.written == 0),
        "{applied:?}"
    );
}

#[tokio::test]
async fn a_restarted_redis_gets_the_script_again() {
    init_test_tracing();
    let mut redis = RedisServer::start().unwrap();
    let store = RedisStore::connect(&RedisSettings::local(redis.url()))
        .await
        .unwrap();
    let names = names();
    let session = SessionId::parse("restart").unwrap();
    let one = frame(
        &session,
        1,
        r#"[{"type":"EVENT","timestamp":1,"name":"a"}]"#,
    );
    let two = frame(
        &session,
        2,
        r#"[{"type":"EVENT","timestamp":2,"name":"b"}]"#,
    );
    store
        .apply(&[Invocation::new(
            &names,
            &session,
            std::slice::from_ref(&one),
            0,
        )])
        .await
        .unwrap();
    redis.restart().unwrap();
    let invocation = Invocation::new(&names, &session, std::slice::from_ref(&two), 0);
    let applied = sessionfold_testkit::eventually_ok(
        "the store works again after a restart",
        std::time::Duration::from_secs(10),
        || {
            let store = store.clone();
            let invocation = invocation.clone();
            async move { store.apply(&[invocation]).await }
        },
    )
    .await;
    assert!(
        matches!(applied[..], [Applied::Stored(ref stored)] if stored.written == 1),
        "{applied:?}"
    );
    let expected = serde_json::to_string(&fold("restart", &[one, two])).unwrap();
    assert_eq!(
        stored_document(&redis.url(), &names.session(&session).doc).await,
        Some(expected)
    );
}

/// Frames far larger than the script's bulk size (256), mixing appends,
/// inserts in the middle, repeats and earlier arrivals of kept events, so
/// the bulk path's chunk boundaries and its hand-over to the per-event path
/// are crossed many times.
#[tokio::test]
async fn large_mixed_batches_store_the_reference_document() {
    init_test_tracing();
    let redis = RedisServer::start().unwrap();
    let store = RedisStore::connect(&RedisSettings::local(redis.url()))
        .await
        .unwrap();
    let session = SessionId::parse("large").unwrap();

    // A small linear congruential generator: deterministic, no extra crate.
    let mut state: u64 = 0x5eed;
    let mut next = move |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    let mut stream = Vec::new();
    let mut sent: Vec<String> = Vec::new();
    let mut newest = 0u64;
    for sequence in 1..=6u64 {
        let mut events = Vec::new();
        if sequence == 1 {
            events.push(r#"{"type":"SESSION_START","timestamp":0}"#.to_string());
        }
        for n in 0..700u64 {
            let event = match next(10) {
                // A repeat of an event sent in an earlier frame.
                0 if !sent.is_empty() => sent[next(sent.len() as u64) as usize].clone(),
                // Older than the newest child: inserted in the middle.
                1 if newest > 0 => {
                    format!(
                        r#"{{"type":"EVENT","timestamp":{},"name":"late-{sequence}-{n}"}}"#,
                        next(newest)
                    )
                }
                // Same timestamp as another child: ordered by arrival.
                2 => format!(
                    r#"{{"type":"EVENT","timestamp":{newest},"name":"tie-{sequence}-{n}"}}"#
                ),
                _ => {
                    newest += 1 + next(3);
                    format!(r#"{{"type":"EVENT","timestamp":{newest},"name":"e-{sequence}-{n}"}}"#)
                }
            };
            events.push(event);
        }
        sent.extend(events.iter().cloned());
        if sequence == 6 {
            events.push(format!(
                r#"{{"type":"SESSION_END","timestamp":{}}}"#,
                newest + 1
            ));
        }
        stream.push(frame(
            &session,
            sequence,
            &format!("[{}]", events.join(",")),
        ));
    }
    let expected = serde_json::to_string(&fold("large", &stream)).unwrap();

    // In order one frame at a time; all at once; newest first (every kept
    // event is then replaced by an earlier arrival); redelivered twice.
    let schedules: [Vec<Vec<usize>>; 4] = [
        (0..6).map(|i| vec![i]).collect(),
        vec![(0..6).collect()],
        (0..6).rev().map(|i| vec![i]).collect(),
        vec![
            vec![3, 4, 5],
            vec![0, 1, 2],
            vec![2, 5, 0],
            vec![0, 1, 2, 3, 4, 5],
        ],
    ];
    for schedule in schedules {
        let names = names();
        let store = store.clone();
        let keys = names.session(&session);
        // The children as the reported ops build them, one apply after the
        // other: what a live view receives as deltas.
        let mut replayed: Vec<String> = Vec::new();
        for batch in &schedule {
            let deliveries: Vec<Delivery> = batch.iter().map(|&i| stream[i].clone()).collect();
            let invocation = Invocation::new(&names, &session, &deliveries, 0);
            let applied = store
                .apply(std::slice::from_ref(&invocation))
                .await
                .unwrap();
            match &applied[..] {
                [Applied::Stored(stored)] => support::replay(&mut replayed, &invocation, stored),
                other => panic!("{schedule:?}: {other:?}"),
            }
            support::check_state(&redis.url(), &keys.state, &keys.doc).await;
        }
        let stored = stored_document(&redis.url(), &keys.doc).await;
        assert_eq!(
            stored.as_deref(),
            Some(expected.as_str()),
            "schedule {schedule:?}"
        );
        let children: serde_json::Value =
            serde_json::from_str(&format!("[{}]", replayed.join(","))).unwrap();
        let document: serde_json::Value = serde_json::from_str(&expected).unwrap();
        assert_eq!(
            children, document["children"],
            "replayed ops, schedule {schedule:?}"
        );
    }
}

#[test]
fn any_delivery_schedule_applied_in_slices_stores_the_reference_document() {
    // Slices of 2 EVENTs: frames are cut too.
    every_schedule_stores_the_reference_document(64, 3, |names, session, deliveries| {
        Invocation::slices(names, session, deliveries, 0, 2)
    });
}

#[tokio::test]
async fn a_large_out_of_order_frame_goes_in_bounded_slices_and_stores_the_reference_document() {
    init_test_tracing();
    let redis = RedisServer::start().unwrap();
    let store = RedisStore::connect(&RedisSettings::local(redis.url()))
        .await
        .unwrap();
    let session = SessionId::parse("big frame").unwrap();
    let names = names();
    // 5 000 events in a scrambled timestamp order, some repeated, after a
    // first frame of 2 000 in order.
    let in_order: Vec<String> = (0..2_000)
        .map(|t| format!(r#"{{"type":"EVENT","timestamp":{t},"name":"a"}}"#))
        .collect();
    let scrambled: Vec<String> = (0..5_000u64)
        .map(|i| {
            let t = (i * 7_919) % 4_000;
            format!(
                r#"{{"type":"EVENT","timestamp":{t},"name":"b","id":"x{}"}}"#,
                i % 4_500
            )
        })
        .collect();
    let frames = [
        frame(&session, 1, &format!("[{}]", in_order.join(","))),
        frame(&session, 2, &format!("[{}]", scrambled.join(","))),
    ];
    let slices = Invocation::slices(&names, &session, &frames, 0, 1_000);
    assert_eq!(
        slices.len(),
        2 + 5,
        "two slices of the first frame, five of the second"
    );
    assert!(slices.iter().all(|slice| slice.children() <= 1_000));
    let applied = store.apply(&slices).await.unwrap();
    assert!(applied.iter().all(|a| matches!(a, Applied::Stored(_))));
    let expected = serde_json::to_string(&fold(session.as_str(), &frames)).unwrap();
    let keys = names.session(&session);
    assert_eq!(
        stored_document(&redis.url(), &keys.doc).await.as_deref(),
        Some(expected.as_str())
    );
    support::check_state(&redis.url(), &keys.state, &keys.doc).await;
    // With a children limit, frames stay whole.
    let whole = Invocation::slices(&names, &session, &frames, 100_000, 1_000);
    assert_eq!(whole.len(), 2);
}
