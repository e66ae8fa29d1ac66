//! Conditional reads: `GET /data` carries a strong `ETag` (the XXH3-128 of
//! the stored bytes), and a matching `If-None-Match` gets `304` without a
//! body until the document changes.

use redis::AsyncCommands as _;
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use xxhash_rust::xxh3::xxh3_128;

use crate::helpers::{expected_document, spawn_app};

#[tokio::test]
async fn a_matching_if_none_match_gets_304_until_the_document_changes() {
    let app = spawn_app().await;
    let first =
        r#"[{"type":"SESSION_START","timestamp":1},{"type":"EVENT","timestamp":2,"name":"a"}]"#;
    let second = r#"[{"type":"EVENT","timestamp":3,"name":"b"}]"#;
    let mut producer = app.connect("cached").await;
    producer.send_accepted(first).await;
    app.wait_for_document("cached", &expected_document("cached", &[first]))
        .await;

    let response = app
        .http
        .get(app.data_url(Some("cached")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers()[ETAG].to_str().unwrap().to_owned();
    assert_eq!(response.headers()[CACHE_CONTROL], "no-cache");
    let body = response.bytes().await.unwrap();
    // Strong, and a hash of exactly the bytes served (and stored).
    assert_eq!(etag, format!("\"{:032x}\"", xxh3_128(&body)));
    let client = redis::Client::open(app.redis.url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let key = app.doc_key("cached");
    let stored: String = redis::cmd("JSON.GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(stored.as_bytes(), &body[..]);

    for matching in [etag.clone(), format!("\"stale\", W/{etag}"), "*".to_owned()] {
        let response = app
            .http
            .get(app.data_url(Some("cached")))
            .header(IF_NONE_MATCH, &matching)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{matching}");
        assert_eq!(response.headers()[ETAG], etag.as_str());
        assert!(response.bytes().await.unwrap().is_empty());
    }
    let response = app
        .http
        .get(app.data_url(Some("cached")))
        .header(IF_NONE_MATCH, "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Once the document changes, the old tag no longer matches.
    producer.send_accepted(second).await;
    app.wait_for_document("cached", &expected_document("cached", &[first, second]))
        .await;
    let response = app
        .http
        .get(app.data_url(Some("cached")))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let new_etag = response.headers()[ETAG].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);
    let _: () = redis.del(&key).await.unwrap();
    let response = app
        .http
        .get(app.data_url(Some("cached")))
        .header(IF_NONE_MATCH, &new_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.headers().get(ETAG).is_none());
}
