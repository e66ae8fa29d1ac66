//! The processor's apply step and the api's reads on a Redis Cluster: the
//! invocations of one batch land on the masters owning their sessions' hash
//! slots, a master that has lost the script gets it by `EVAL`, and every
//! document equals the reference fold. Runs with the shipped ACL on every
//! node, as the services' own users.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use redis::aio::ConnectionLike;
use sessionfold_cluster::RedisCluster;
use sessionfold_cluster::credentials::{REDIS_ADMIN, REDIS_API, REDIS_PROCESSOR};
use sessionfold_common::redis_conn::{RedisConnection, RedisTimeouts};
use sessionfold_common::settings::RedisSettings;
use sessionfold_core::Keys;
use sessionfold_core::{Delivery, Frame, Limits, SessionId, fold};
use sessionfold_processor::store::{Applied, Invocation, RedisStore, Store};
use sessionfold_testkit::init_test_tracing;

const SESSIONS: usize = 60;

fn delivery(session: &SessionId, sequence: u64, text: &str) -> Delivery {
    Delivery {
        stream_sequence: sequence,
        events: Frame::parse(text, session, &Limits::default())
            .expect("a valid frame")
            .events,
    }
}

/// Two frames per session, the second one out of timestamp order.
fn frames(index: usize) -> [String; 2] {
    [
        format!(
            r#"[{{"type":"SESSION_START","timestamp":{index}}},{{"type":"EVENT","timestamp":{},"name":"late"}}]"#,
            index + 10
        ),
        format!(
            r#"[{{"type":"EVENT","timestamp":{},"name":"early","id":"e{index}"}},{{"type":"SESSION_END","timestamp":{}}}]"#,
            index + 5,
            index + 20
        ),
    ]
}

async fn apply_all(store: &RedisStore, sessions: &[SessionId], frame: usize) -> Vec<Applied> {
    let invocations: Vec<Invocation> = sessions
        .iter()
        .enumerate()
        .map(|(index, session)| {
            let text = &frames(index)[frame];
            Invocation::new(
                &Keys::default(),
                session,
                &[delivery(session, frame as u64 + 1, text)],
                0,
            )
        })
        .collect();
    store.apply(&invocations).await.expect("no outage")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_spread_over_the_masters_and_survive_a_script_flush() {
    init_test_tracing();
    let acl =
        sessionfold_testkit::users_acl(sessionfold_testkit::search_module().unwrap().is_some())
            .unwrap();
    let cluster = RedisCluster::start(
        3,
        &["--aclfile".to_owned(), acl.display().to_string()],
        Some(REDIS_ADMIN),
    )
    .await
    .expect("a Redis Cluster");
    let settings = |credentials| RedisSettings {
        redis_cluster: true,
        ..RedisSettings::local(cluster.urls(Some(credentials)))
    };
    let store = RedisStore::connect(&settings(REDIS_PROCESSOR))
        .await
        .expect("the processor connects to the cluster");
    // Session ids with characters that are escaped in keys, too.
    let sessions: Vec<SessionId> = (0..SESSIONS)
        .map(|index| SessionId::parse(&format!("cluster {index}.{{x}}")).unwrap())
        .collect();

    let applied = apply_all(&store, &sessions, 0).await;
    assert!(
        applied
            .iter()
            .all(|a| matches!(a, Applied::Stored(stored) if stored.written == 1)),
        "{applied:?}"
    );
    // Every master forgets the script (as after a restart or a failover
    // onto a replica that never ran it): the next batch still applies.
    for index in 0..cluster.len() {
        let mut admin = cluster.node_connection(index).await.unwrap();
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
    }
    let applied = apply_all(&store, &sessions, 1).await;
    assert!(
        applied
            .iter()
            .all(|a| matches!(a, Applied::Stored(stored) if stored.written == 1)),
        "{applied:?}"
    );
    // Applying a batch again changes nothing.
    let applied = apply_all(&store, &sessions, 1).await;
    assert!(
        applied
            .iter()
            .all(|a| matches!(a, Applied::Stored(stored) if stored.written == 0)),
        "{applied:?}"
    );

    let keys: Vec<u64> = {
        let mut keys = Vec::new();
        for index in 0..cluster.len() {
            keys.push(cluster.keys_on(index).await.unwrap());
        }
        keys
    };
    assert!(
        keys.iter().all(|&k| k > 0),
        "sessions on every master: {keys:?}"
    );
    // A document, its state, its summary and its names per session.
    assert_eq!(keys.iter().sum::<u64>(), 4 * SESSIONS as u64);

    // The api's read-only user reads every document through the cluster.
    let mut api = RedisConnection::connect(&settings(REDIS_API), RedisTimeouts::default())
        .await
        .expect("the api connects to the cluster");
    assert!(api.is_cluster());
    redis::cmd("PING")
        .query_async::<()>(&mut api)
        .await
        .expect("PING reaches every master");
    for (index, session) in sessions.iter().enumerate() {
        let [a, b] = frames(index);
        let expected = serde_json::to_string(&fold(
            session.as_str(),
            &[delivery(session, 1, &a), delivery(session, 2, &b)],
        ))
        .unwrap();
        let stored: Option<String> = redis::cmd("JSON.GET")
            .arg(Keys::default().session(session).doc)
            .query_async(&mut api)
            .await
            .unwrap();
        assert_eq!(stored.as_deref(), Some(expected.as_str()), "{session:?}");
    }
    // It cannot write.
    let write = redis::cmd("JSON.SET")
        .arg(Keys::default().session(&sessions[0]).doc)
        .arg("$.end")
        .arg("1")
        .query_async::<()>(&mut api)
        .await;
    assert!(write.is_err(), "the api wrote: {write:?}");
    let _ = api.get_db();
}
