//! The document TTL of the apply step against a real redis-server with
//! RedisJSON: every successful apply (re)sets the TTL on the session's
//! keys; without a TTL they never expire.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use sessionfold_common::settings::RedisSettings;
use sessionfold_core::Keys;
use sessionfold_core::{Delivery, Frame, Limits, SessionId};
use sessionfold_processor::store::{Applied, Invocation, RedisStore, Store};
use sessionfold_testkit::{RedisServer, init_test_tracing, unique_name};

fn frame(session: &SessionId, sequence: u64, text: &str) -> Delivery {
    Delivery {
        stream_sequence: sequence,
        events: Frame::parse(text, session, &Limits::default())
            .unwrap()
            .events,
    }
}

/// `TTL` of each key: seconds left, -1 for none, -2 for a missing key.
async fn ttls(redis_url: &str, keys: &[&str]) -> Vec<i64> {
    let client = redis::Client::open(redis_url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut ttls = Vec::new();
    for key in keys {
        ttls.push(
            redis::cmd("TTL")
                .arg(*key)
                .query_async(&mut connection)
                .await
                .unwrap(),
        );
    }
    ttls
}

#[tokio::test]
async fn an_apply_with_a_ttl_sets_it_on_every_key_of_the_session_and_renews_it() {
    init_test_tracing();
    let redis = RedisServer::start().unwrap();
    let store = RedisStore::connect(&RedisSettings::local(redis.url()))
        .await
        .unwrap();
    let names = Keys::new(format!("{}:", unique_name("ttl")));
    let session = SessionId::parse("expiring").unwrap();
    let keys = names.session(&session);
    let keys = [keys.doc.as_str(), keys.state.as_str()];
    let first = frame(
        &session,
        1,
        r#"[{"type":"SESSION_START","timestamp":1},{"type":"EVENT","timestamp":2,"name":"a"}]"#,
    );
    let applied = store
        .apply(&[
            Invocation::new(&names, &session, std::slice::from_ref(&first), 0)
                .with_document_ttl(100),
        ])
        .await
        .unwrap();
    assert!(
        matches!(applied[..], [Applied::Stored(ref stored)] if stored.written == 1),
        "{applied:?}"
    );
    for ttl in ttls(&redis.url(), &keys).await {
        assert!((1..=100).contains(&ttl), "TTL {ttl} on one of {keys:?}");
    }

    // A later apply (even one that writes nothing new) sets the new TTL.
    store
        .apply(&[Invocation::new(&names, &session, &[first], 0).with_document_ttl(5000)])
        .await
        .unwrap();
    for ttl in ttls(&redis.url(), &keys).await {
        assert!(ttl > 100, "TTL {ttl} was not renewed on one of {keys:?}");
    }
}

#[tokio::test]
async fn without_a_ttl_keys_never_expire() {
    init_test_tracing();
    let redis = RedisServer::start().unwrap();
    let store = RedisStore::connect(&RedisSettings::local(redis.url()))
        .await
        .unwrap();
    let names = Keys::new(format!("{}:", unique_name("ttl")));
    let session = SessionId::parse("forever").unwrap();
    let delivery = frame(
        &session,
        1,
        r#"[{"type":"EVENT","timestamp":2,"name":"a"}]"#,
    );
    store
        .apply(&[Invocation::new(&names, &session, &[delivery], 0)])
        .await
        .unwrap();
    let keys = names.session(&session);
    assert_eq!(
        ttls(&redis.url(), &[keys.doc.as_str(), keys.state.as_str()]).await,
        vec![-1, -1]
    );
}
