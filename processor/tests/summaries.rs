//! The session summaries the apply step keeps beside each document
//! (docs/design.md §4.2), against a real Valkey with RedisJSON: any order
//! of batches and any redelivery gives the reference summary, names are
//! capped the same way whatever the order, the sort keys are the reference
//! ones, and the summary expires with the document.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value, json};
use sessionfold_common::settings::RedisSettings;
use sessionfold_core::strategies::any_schedule;
use sessionfold_core::summary::{
    MAX_COUNTED_NAMES, MAX_NAMES, activity_sort_key, start_sort_key, summarize,
};
use sessionfold_core::{Delivery, Frame, Keys, Limits, SessionId, fold};
use sessionfold_processor::store::{Applied, Invocation, RedisStore, Store};
use sessionfold_testkit::{RedisServer, init_test_tracing, unique_name};

fn names() -> Keys {
    Keys::new(format!("{}:", unique_name("t")))
}

/// When the test says delivery `sequence` arrived, in milliseconds.
fn arrival(sequence: u64) -> u64 {
    1_700_000_000_000 + sequence * 7
}

fn invocation(keys: &Keys, session: &SessionId, deliveries: &[Delivery]) -> Invocation {
    let arrivals: Vec<u64> = deliveries
        .iter()
        .map(|d| arrival(d.stream_sequence))
        .collect();
    Invocation::new(keys, session, deliveries, 0).with_arrivals(
        arrivals.iter().copied().min().unwrap_or(0),
        arrivals.iter().copied().max().unwrap_or(0),
        None,
    )
}

async fn stored(redis_url: &str, key: &str) -> Option<Value> {
    let client = redis::Client::open(redis_url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let text: Option<String> = redis::cmd("JSON.GET")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap();
    text.map(|text| serde_json::from_str(&text).unwrap())
}

/// The stored summary without its internal fields (token, sort keys), with
/// its name tokens decoded: what `GET /sessions` lists.
fn public(mut summary: Value) -> Value {
    let object = summary.as_object_mut().unwrap();
    for internal in ["token", "sort_start", "sort_activity"] {
        object.remove(internal);
    }
    let names: Vec<Value> = object["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|token| {
            sessionfold_core::session::unescape_token(token.as_str().unwrap())
                .unwrap()
                .into()
        })
        .collect();
    object.insert("names".into(), names.into());
    summary
}

/// A Valkey of the test's own and a store on it.
async fn start_store() -> (RedisServer, RedisStore) {
    init_test_tracing();
    let redis = RedisServer::start().unwrap();
    let store = RedisStore::connect(&RedisSettings::local(redis.url()))
        .await
        .unwrap();
    (redis, store)
}

fn frame(session: &SessionId, sequence: u64, text: &str) -> Delivery {
    Delivery {
        stream_sequence: sequence,
        events: Frame::parse(text, session, &Limits::default())
            .unwrap()
            .events,
    }
}

#[test]
fn any_delivery_schedule_keeps_the_reference_summary() {
    init_test_tracing();
    let redis = RedisServer::start().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime
        .block_on(RedisStore::connect(&RedisSettings::local(redis.url())))
        .unwrap();
    let session = SessionId::parse("s p/1").unwrap();
    let mut runner = TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&any_schedule(), |(stream, schedule)| {
            let keys = names();
            let store = store.clone();
            runtime.block_on(async {
                for batch in schedule.chunks(2) {
                    let deliveries: Vec<Delivery> =
                        batch.iter().map(|&i| stream[i].clone()).collect();
                    let applied = store
                        .apply(&[invocation(&keys, &session, &deliveries)])
                        .await
                        .unwrap();
                    assert!(matches!(applied[..], [Applied::Stored(_)]), "{applied:?}");
                }
                let summary = stored(&redis.url(), &keys.session(&session).summary).await;
                if stream.is_empty() {
                    assert_eq!(summary, None);
                    return;
                }
                let summary = summary.unwrap();
                let document = fold(session.as_str(), &stream);
                let first = stream.iter().map(|d| arrival(d.stream_sequence)).min();
                let last = stream.iter().map(|d| arrival(d.stream_sequence)).max();
                assert_eq!(
                    public(summary.clone()),
                    summarize(&document, first, last, "open")
                );
                let token = session.token();
                assert_eq!(summary["token"], token.as_str());
                assert_eq!(
                    summary["sort_start"],
                    start_sort_key(document["start"].as_f64(), first.unwrap(), &token)
                );
                assert_eq!(
                    summary["sort_activity"],
                    activity_sort_key(last.unwrap(), &token)
                );
            });
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn names_are_capped_to_the_same_set_in_any_order() {
    let (redis, store) = start_store().await;
    let session = SessionId::parse("many names").unwrap();
    // 3 × 20 distinct names in three frames, with names needing escapes,
    // one too long to keep, and repeats.
    let long = "L".repeat(200);
    let frames: Vec<Delivery> = (0..3u64)
        .map(|f| {
            let events: Vec<String> = (0..20)
                .map(|i| {
                    let name = if f == 1 && i == 0 {
                        long.clone()
                    } else {
                        format!("name {} é/{i}", 2 - f)
                    };
                    json!({"type": "EVENT", "timestamp": f * 100 + i, "name": name}).to_string()
                })
                .chain([json!({"type": "EVENT", "timestamp": 1, "name": "name 0 é/3", "id": format!("r{f}")}).to_string()])
                .collect();
            frame(&session, f + 1, &format!("[{}]", events.join(",")))
        })
        .collect();
    let mut summaries = Vec::new();
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
        let keys = names();
        for &f in &order {
            store
                .apply(&[invocation(
                    &keys,
                    &session,
                    std::slice::from_ref(&frames[f]),
                )])
                .await
                .unwrap();
        }
        summaries.push(public(
            stored(&redis.url(), &keys.session(&session).summary)
                .await
                .unwrap(),
        ));
    }
    let document = fold(session.as_str(), &frames);
    let reference = summarize(&document, Some(arrival(1)), Some(arrival(3)), "open");
    assert_eq!(reference["names"].as_array().unwrap().len(), MAX_NAMES);
    assert_eq!(reference["names_capped"], true);
    for summary in summaries {
        assert_eq!(summary, reference);
    }
}

#[tokio::test]
async fn a_repeated_frame_moves_only_the_last_arrival() {
    let (redis, store) = start_store().await;
    let keys = names();
    let session = SessionId::parse("again").unwrap();
    let one = frame(
        &session,
        4,
        r#"[{"type":"SESSION_START","timestamp":10},{"type":"EVENT","timestamp":11,"name":"a"}]"#,
    );
    store
        .apply(&[invocation(&keys, &session, std::slice::from_ref(&one))])
        .await
        .unwrap();
    let before = stored(&redis.url(), &keys.session(&session).summary)
        .await
        .unwrap();
    // The same frame again, delivered later (a redelivery keeps its
    // arrival; a producer's resend is a new frame that arrives later).
    let resent = Delivery {
        stream_sequence: 9,
        ..one.clone()
    };
    store
        .apply(&[invocation(&keys, &session, &[resent])])
        .await
        .unwrap();
    let after = stored(&redis.url(), &keys.session(&session).summary)
        .await
        .unwrap();
    assert_eq!(after["last_arrival"], arrival(9));
    assert_eq!(before["last_arrival"], arrival(4));
    let (mut before, mut after) = (before, after);
    for summary in [&mut before, &mut after] {
        let object = summary.as_object_mut().unwrap();
        object.remove("last_arrival");
        object.remove("sort_activity");
    }
    assert_eq!(before, after);
}

#[tokio::test]
async fn the_summary_expires_with_the_document() {
    let (redis, store) = start_store().await;
    let keys = names();
    let session = SessionId::parse("ttl").unwrap();
    let one = frame(
        &session,
        1,
        r#"[{"type":"EVENT","timestamp":1,"name":"a"}]"#,
    );
    store
        .apply(&[invocation(&keys, &session, &[one]).with_document_ttl(100)])
        .await
        .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let session_keys = keys.session(&session);
    for key in [
        &session_keys.doc,
        &session_keys.summary,
        &session_keys.names,
    ] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!((1..=100).contains(&ttl), "{key}: {ttl}");
    }
}

#[tokio::test]
async fn the_processor_creates_the_index_of_sessions_and_it_finds_summaries() {
    init_test_tracing();
    let redis = RedisServer::start().unwrap();
    let keys = names();
    let settings = RedisSettings {
        key_prefix: keys.prefix.clone(),
        ..RedisSettings::local(redis.url())
    };
    let store = RedisStore::connect(&settings).await.unwrap();
    let session = SessionId::parse("found").unwrap();
    let one = frame(
        &session,
        1,
        r#"[{"type":"EVENT","timestamp":1,"name":"check out"}]"#,
    );
    store
        .apply(&[invocation(&keys, &session, &[one])])
        .await
        .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    // Indexing is asynchronous to the write only for existing keys at
    // creation; a key written after the index exists is indexed at once.
    let found: Vec<Value> = redis::cmd("FT.SEARCH")
        .arg(keys.sessions_index())
        .arg("@names:{check_20out} @state:{open}")
        .arg("NOCONTENT")
        .arg("DIALECT")
        .arg(2)
        .query_async::<redis::Value>(&mut connection)
        .await
        .map(|reply| match reply {
            redis::Value::Array(items) => items
                .into_iter()
                .skip(1)
                .map(|item| Value::String(redis::from_redis_value::<String>(item).unwrap()))
                .collect(),
            other => panic!("{other:?}"),
        })
        .unwrap();
    assert_eq!(found, vec![Value::String(keys.session(&session).summary)]);
}

/// Names of the state hash's per-name counters and members of the names set.
async fn counted_names(redis_url: &str, keys: &sessionfold_core::SessionKeys) -> (usize, usize) {
    let client = redis::Client::open(redis_url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&keys.state)
        .query_async(&mut connection)
        .await
        .unwrap();
    let members: usize = redis::cmd("ZCARD")
        .arg(&keys.names)
        .query_async(&mut connection)
        .await
        .unwrap();
    (
        fields.iter().filter(|f| f.starts_with("m:")).count(),
        members,
    )
}

#[tokio::test]
async fn a_session_of_many_distinct_names_counts_a_bounded_set_and_lists_the_same_first_names_in_any_order()
 {
    let (redis, store) = start_store().await;
    let session = SessionId::parse("distinct names").unwrap();
    // 20 frames of 50 events, every name distinct, in a scrambled order of
    // names, then one frame that repeats a few ids under other names.
    let mut rng = sessionfold_core::SeededRng::new(11);
    let mut frames: Vec<Delivery> = (0..20u64)
        .map(|f| {
            let events: Vec<String> = (0..50u64)
                .map(|i| {
                    let n = rng.below(1_000_000);
                    json!({"type": "EVENT", "timestamp": f * 50 + i, "name": format!("n{n}"), "id": format!("e{f}-{i}")}).to_string()
                })
                .collect();
            frame(&session, f + 1, &format!("[{}]", events.join(",")))
        })
        .collect();
    frames.push(frame(
        &session,
        21,
        r#"[{"type":"EVENT","timestamp":3,"name":"a-first","id":"e0-3"},{"type":"EVENT","timestamp":7,"name":"zz","id":"e0-7"}]"#,
    ));
    let document = fold(session.as_str(), &frames);
    let reference = summarize(&document, Some(arrival(1)), Some(arrival(21)), "open");
    assert_eq!(reference["names_capped"], true);
    let orders: Vec<Vec<usize>> = vec![
        (0..frames.len()).collect(),
        (0..frames.len()).rev().collect(),
        {
            let mut order: Vec<usize> = (0..frames.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.index(i + 1));
            }
            order
        },
    ];
    for order in orders {
        let keys = names();
        for &f in &order {
            store
                .apply(&[invocation(
                    &keys,
                    &session,
                    std::slice::from_ref(&frames[f]),
                )])
                .await
                .unwrap();
        }
        let session_keys = keys.session(&session);
        let summary = public(stored(&redis.url(), &session_keys.summary).await.unwrap());
        assert_eq!(summary, reference, "order {order:?}");
        let (counters, members) = counted_names(&redis.url(), &session_keys).await;
        assert_eq!(counters, MAX_COUNTED_NAMES, "order {order:?}");
        assert_eq!(members, MAX_COUNTED_NAMES, "order {order:?}");
    }
}

#[tokio::test]
async fn a_step_without_summaries_keeps_none_and_leaves_an_older_one_as_it_was() {
    let (redis, store) = start_store().await;
    let keys = names();
    let session = SessionId::parse("quiet").unwrap();
    let first = frame(
        &session,
        1,
        r#"[{"type":"EVENT","timestamp":1,"name":"a"}]"#,
    );
    let second = frame(
        &session,
        2,
        r#"[{"type":"EVENT","timestamp":2,"name":"b"}]"#,
    );
    let summary_key = keys.session(&session).summary;
    store
        .apply(&[invocation(&keys, &session, std::slice::from_ref(&first)).without_summary()])
        .await
        .unwrap();
    assert_eq!(stored(&redis.url(), &summary_key).await, None);
    store
        .apply(&[invocation(&keys, &session, std::slice::from_ref(&second))])
        .await
        .unwrap();
    let kept = stored(&redis.url(), &summary_key).await.unwrap();
    // Written after a step that kept none: its older names are unknown.
    assert_eq!(kept["children"], 2);
    assert_eq!(kept["names_capped"], true);
    let third = frame(
        &session,
        3,
        r#"[{"type":"EVENT","timestamp":3,"name":"c"}]"#,
    );
    store
        .apply(&[invocation(&keys, &session, std::slice::from_ref(&third)).without_summary()])
        .await
        .unwrap();
    assert_eq!(stored(&redis.url(), &summary_key).await.unwrap(), kept);
}
