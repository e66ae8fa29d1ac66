//! Sessions written by the first layout's apply step (kept in
//! `sessionfold_processor::legacy`) keep working: the current step migrates
//! them on first touch, and any delivery schedule split between the two
//! steps still gives the reference fold, byte for byte, with the old keys
//! gone.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use sessionfold_common::redis_conn::{RedisConnection, RedisTimeouts};
use sessionfold_common::settings::RedisSettings;
use sessionfold_core::Keys;
use sessionfold_core::strategies::any_schedule;
use sessionfold_core::{Delivery, SessionId, fold};
use sessionfold_processor::legacy::{LegacyInvocation, apply_v1};
use sessionfold_processor::store::{Applied, Invocation, RedisStore, Store};
use sessionfold_testkit::{RedisServer, init_test_tracing, unique_name};

fn names() -> Keys {
    Keys::new(format!("{}:", unique_name("m")))
}

async fn exists(connection: &mut RedisConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(connection)
        .await
        .unwrap()
        == 1
}

#[test]
fn sessions_written_by_the_first_layout_migrate_on_first_touch() {
    init_test_tracing();
    let redis = RedisServer::start().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let settings = RedisSettings::local(redis.url());
    let (store, connection) = runtime.block_on(async {
        (
            RedisStore::connect(&settings).await.unwrap(),
            RedisConnection::connect(&settings, RedisTimeouts::default())
                .await
                .unwrap(),
        )
    });
    let session = SessionId::parse("old").unwrap();
    let migrated = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(ProptestConfig::with_cases(64));
    let cases = (any_schedule(), any::<prop::sample::Index>());
    runner
        .run(&cases, |((stream, schedule), split)| {
            let names = names();
            let mut connection = connection.clone();
            let store = store.clone();
            let split = split.index(schedule.len() + 1);
            runtime.block_on(async {
                let keys = names.session(&session);
                for batch in schedule[..split].chunks(2) {
                    let deliveries: Vec<Delivery> =
                        batch.iter().map(|&i| stream[i].clone()).collect();
                    let old = LegacyInvocation::new(&names, &session, &deliveries, 0);
                    let applied = apply_v1(&mut connection, &[old]).await.unwrap();
                    assert!(applied[0].is_ok(), "{applied:?}");
                }
                if exists(&mut connection, &keys.order).await {
                    migrated.set(migrated.get() + 1);
                }
                let before = redis::cmd("JSON.GET")
                    .arg(&keys.doc)
                    .query_async::<Option<String>>(&mut connection)
                    .await
                    .unwrap();
                // The new step takes over; an empty batch touches the
                // session too, so every session migrates.
                let mut batches: Vec<Vec<Delivery>> = schedule[split..]
                    .chunks(2)
                    .map(|batch| batch.iter().map(|&i| stream[i].clone()).collect())
                    .collect();
                batches.push(Vec::new());
                for (n, deliveries) in batches.iter().enumerate() {
                    let applied = store
                        .apply(&[Invocation::new(&names, &session, deliveries, 0)])
                        .await
                        .unwrap();
                    assert!(matches!(applied[..], [Applied::Stored(_)]), "{applied:?}");
                    if n == 0 && split > 0 && schedule[split..].is_empty() {
                        // Only the migration ran: the document kept its bytes.
                        let after = redis::cmd("JSON.GET")
                            .arg(&keys.doc)
                            .query_async::<Option<String>>(&mut connection)
                            .await
                            .unwrap();
                        assert_eq!(after, before);
                    }
                }
                let expected = serde_json::to_string(&fold("old", &stream)).unwrap();
                let stored = redis::cmd("JSON.GET")
                    .arg(&keys.doc)
                    .query_async::<Option<String>>(&mut connection)
                    .await
                    .unwrap();
                assert_eq!(stored.as_deref(), Some(expected.as_str()));
                assert!(
                    !exists(&mut connection, &keys.ids).await,
                    "layout-1 identities left"
                );
                assert!(
                    !exists(&mut connection, &keys.order).await,
                    "layout-1 order left"
                );
                assert!(exists(&mut connection, &keys.state).await);
            });
            Ok(())
        })
        .unwrap();
    assert!(
        migrated.get() > 10,
        "only {} cases had a layout-1 session",
        migrated.get()
    );
}
