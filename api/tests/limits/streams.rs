//! `GET /data/stream` under watchers that try to starve Redis or the api:
//! many watchers that never read, a watcher that falls behind, too many
//! streams, streams that would never end, tokens that expire.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::Value;
use sessionfold_common::auth::{Claims, Scope, issue_token};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

const SESSION: &str = "watched-session";

/// An SSE event as a client sees it.
#[derive(Debug, Clone)]
struct SseEvent {
    name: String,
    data: String,
}

/// Follows `url` until the stream ends or `limit` passes, collecting events.
async fn follow(http: &reqwest::Client, url: &str, limit: Duration) -> (u16, Vec<SseEvent>) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let mut events = Vec::new();
    let mut body = response.bytes_stream();
    let mut pending = String::new();
    let (mut name, mut data) = (String::new(), Vec::<String>::new());
    let _ = tokio::time::timeout(limit, async {
        while let Some(Ok(chunk)) = body.next().await {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let line = line.trim_end_matches('\n');
                if line.is_empty() {
                    if !data.is_empty() {
                        events.push(SseEvent {
                            name: std::mem::take(&mut name),
                            data: data.join("\n"),
                        });
                        data.clear();
                    }
                } else if let Some(value) = line.strip_prefix("event: ") {
                    name = value.to_owned();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push(value.to_owned());
                }
            }
        }
    })
    .await;
    (status, events)
}

fn stream_url(api: &Api, session: &str) -> String {
    api.url(&format!("/data/stream?session_id={session}"))
}

/// Opens a stream on a raw connection from `source`, reads its response
/// head (status and headers) and nothing more.
async fn open_unread(api: &Api, source: &str, session: &str) -> (TcpStream, String) {
    let mut connection = raw_connection(source, api.addr, Some(4096)).await;
    send_get(
        &mut connection,
        &format!("/data/stream?session_id={session}"),
        "",
    )
    .await;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), connection.read(&mut byte))
            .await
            .expect("a response head")
            .unwrap();
        assert_eq!(n, 1, "the server closed before its response head");
        head.push(byte[0]);
    }
    (connection, status_line(&head))
}

/// Changes the stored document (its `end`) and announces it, then waits
/// until the api has read it: one `JSON.GET` more than `gets`.
async fn update_and_wait_for_the_read(api: &Api, session: &str, end: u64, gets: &mut u64) {
    let mut redis = api.redis().await;
    let _: () = redis::cmd("JSON.SET")
        .arg(doc_key(session))
        .arg("$.end")
        .arg(end)
        .query_async(&mut redis)
        .await
        .unwrap();
    api.announce(session).await;
    let expected = *gets + 1;
    eventually_read(api, expected).await;
    *gets = expected;
}

async fn eventually_read(api: &Api, expected: u64) {
    sessionfold_testkit::eventually(
        "the api read the document after the note",
        Duration::from_secs(20),
        || async { (api.json_gets().await >= expected).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watchers_that_never_read_cost_one_read_per_update() {
    let api = start_api_alone(|_| {}).await;
    let big = document(SESSION, 100_000);
    api.store(SESSION, &big).await;
    let gets_before = api.json_gets().await;
    let baseline_memory = api.used_memory().await;
    let baseline_rss = rss_bytes();

    let stop = CancellationToken::new();
    let redis_peak = {
        let url = api.redis.url();
        sample_peak(stop.clone(), move || {
            let url = url.clone();
            async move {
                let Ok(mut redis) = redis::Client::open(url.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                else {
                    return 0;
                };
                let info: String = redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut redis)
                    .await
                    .unwrap_or_default();
                info.lines()
                    .find_map(|line| line.strip_prefix("used_memory:"))
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or(0)
            }
        })
    };
    let rss_peak = sample_peak(stop.clone(), || async { rss_bytes() });

    // 200 watchers from 20 addresses (10 each, under the per-IP cap), none
    // of which reads past its response head.
    let mut watchers = Vec::new();
    for i in 0..200 {
        let source = format!("127.0.1.{}", 1 + i / 10);
        let (connection, status) = open_unread(&api, &source, SESSION).await;
        assert!(status.contains(" 200 "), "{status}");
        watchers.push(connection);
    }
    // One shared first read, however many watchers.
    let mut gets = gets_before + 1;
    eventually_read(&api, gets).await;
    const UPDATES: u64 = 5;
    for end in 0..UPDATES {
        update_and_wait_for_the_read(&api, SESSION, 1_569_999_000 + end, &mut gets).await;
    }
    // A watcher that does read gets the latest document.
    let (status, events) = follow(
        &api.http,
        &stream_url(&api, SESSION),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status, 200);
    assert!(events.iter().all(|event| event.name == "document"));
    // The last update may still be on its way to the feed's watchers when
    // this one joins: it gets the document before it, then the last.
    let last = events.last().expect("a document event");
    let document: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(document["end"], 1_569_999_000 + UPDATES - 1);
    assert_eq!(document["children"].as_array().unwrap().len(), 100_000);

    stop.cancel();
    let (redis_peak, rss_peak) = (redis_peak.await.unwrap(), rss_peak.await.unwrap());
    let reads = api.json_gets().await - gets_before;
    println!(
        "200 unread watchers of a {} byte document, {UPDATES} updates: {reads} JSON.GET in all; \
         Redis used_memory peak +{:.1} MiB over {:.1} MiB; api process RSS peak {:.1} MiB (before {:.1} MiB)",
        big.len(),
        mib(redis_peak.saturating_sub(baseline_memory)),
        mib(baseline_memory),
        mib(rss_peak),
        mib(baseline_rss)
    );
    // One read per update and one to start (before: one per watcher per
    // update, 1 200 reads).
    assert_eq!(reads, UPDATES + 1);
    // Before: 6.5 GB of Redis output buffers.
    assert!(
        redis_peak.saturating_sub(baseline_memory) < 64 << 20,
        "Redis grew by {:.1} MiB",
        mib(redis_peak.saturating_sub(baseline_memory))
    );
    // Shared frames, not one copy per watcher: 200 copies would be 1.6 GB.
    // What it does hold: a few versions in the feed's buffer, the versions
    // stalled watchers were sent, this test's own reading watcher, and
    // what the allocator keeps.
    assert!(
        rss_peak.saturating_sub(baseline_rss) < 48 * big.len() as u64,
        "RSS grew by {:.1} MiB",
        mib(rss_peak.saturating_sub(baseline_rss))
    );
    drop(watchers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_dropped_as_too_slow_while_others_keep_up() {
    let api = start_api(|config| {
        config.limits.streams.stream_buffer = 2;
    })
    .await;
    api.store(SESSION, &document(SESSION, 10_000)).await;
    let mut gets = api.json_gets().await;
    let (mut slow, status) = open_unread(&api, "127.0.0.1", SESSION).await;
    assert!(status.contains(" 200 "), "{status}");
    gets += 1;
    eventually_read(&api, gets).await;
    let keeping_up = {
        let (http, url) = (api.http.clone(), stream_url(&api, SESSION));
        tokio::spawn(async move { follow(&http, &url, Duration::from_secs(15)).await })
    };
    const UPDATES: u64 = 20;
    for end in 0..UPDATES {
        update_and_wait_for_the_read(&api, SESSION, end, &mut gets).await;
    }
    let received = read_until_end(&mut slow, Duration::from_secs(20)).await;
    let documents = count(&received, b"event: document\n");
    assert!(
        count(
            &received,
            b"event: end\ndata: {\"reason\":\"too_slow\"}\n\n"
        ) == 1,
        "the slow watcher's stream ended as too slow after {documents} documents"
    );
    assert!(
        received.ends_with(b"\r\n0\r\n\r\n"),
        "the stream was closed"
    );
    assert!(documents < UPDATES as usize, "{documents}");

    let (_, events) = keeping_up.await.unwrap();
    let last = events
        .iter()
        .rev()
        .find(|event| event.name == "document")
        .expect("documents");
    let document: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(document["end"], UPDATES - 1, "the reader kept up");
    assert!(events.iter().all(|event| event.name == "document"));
    println!(
        "slow watcher dropped after {documents} of {} documents; the other got the last one",
        UPDATES + 1
    );
}

#[tokio::test]
async fn streams_are_capped_per_address_and_in_all() {
    let api = start_api(|config| {
        config.limits.streams.max_streams_per_ip = 2;
        config.limits.streams.max_streams = 3;
    })
    .await;
    api.store(SESSION, &document(SESSION, 3)).await;
    let (first, status) = open_unread(&api, "127.0.0.1", SESSION).await;
    assert!(status.contains(" 200 "), "{status}");
    let (_second, status) = open_unread(&api, "127.0.0.1", SESSION).await;
    assert!(status.contains(" 200 "), "{status}");

    let over_ip = api
        .http
        .get(stream_url(&api, SESSION))
        .send()
        .await
        .unwrap();
    assert_eq!(over_ip.status(), 429);
    assert!(over_ip.headers().get("retry-after").is_some());
    let body: Value = over_ip.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");

    let (_third, status) = open_unread(&api, "127.0.0.2", SESSION).await;
    assert!(status.contains(" 200 "), "{status}");
    let (_, status) = open_unread(&api, "127.0.0.3", SESSION).await;
    assert!(status.contains(" 503 "), "over the total: {status}");

    // A closed stream frees its place.
    drop(first);
    sessionfold_testkit::eventually("a place is free again", Duration::from_secs(10), || async {
        let (connection, status) = open_unread(&api, "127.0.0.1", SESSION).await;
        status.contains(" 200 ").then_some(connection)
    })
    .await;
}

#[tokio::test]
async fn a_stream_ends_after_its_maximum_lifetime() {
    let api = start_api(|config| {
        config.limits.streams.stream_max_secs = 1;
    })
    .await;
    api.store(SESSION, &document(SESSION, 3)).await;
    let started = Instant::now();
    let (status, events) = follow(
        &api.http,
        &stream_url(&api, SESSION),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = events.iter().map(|event| event.name.as_str()).collect();
    assert_eq!(names, ["document", "end"], "{events:?}");
    assert_eq!(events[1].data, r#"{"reason":"max_lifetime"}"#);
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    const SECRET: &str = "a-test-secret-of-some-length-0123456789";
    let api = start_api(|config| {
        config.auth.auth_required = true;
        config.auth.auth_token_secret = Some(SECRET.to_owned());
        config.auth.auth_api_keys = vec!["test-api-key".to_owned()];
    })
    .await;
    api.store(SESSION, &document(SESSION, 3)).await;
    let expires = sessionfold_common::auth::now() + 2;
    let token = issue_token(
        SECRET.as_bytes(),
        &Claims {
            sid: SESSION.to_owned(),
            prefix: false,
            sep: None,
            scope: Scope::Read,
            exp: expires,
        },
    );
    let url = format!("{}&token={token}", stream_url(&api, SESSION));
    let (status, events) = follow(&api.http, &url, Duration::from_secs(20)).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = events.iter().map(|event| event.name.as_str()).collect();
    assert_eq!(names, ["document", "end"], "{events:?}");
    assert_eq!(events[1].data, r#"{"reason":"token_expired"}"#);
    assert!(sessionfold_common::auth::now() >= expires);
    // Reconnecting with it is refused.
    let again = api.http.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 401);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "token_expired");
}

#[tokio::test]
async fn a_document_over_the_size_limit_ends_its_stream_saying_so() {
    let api = start_api(|config| {
        config.limits.reads.max_document_bytes = 10_000;
    })
    .await;
    let big = document(SESSION, 400);
    api.store(SESSION, &big).await;
    let (status, events) = follow(
        &api.http,
        &stream_url(&api, SESSION),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].name, "end");
    let error: Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(error["reason"], "document_too_large");
    assert_eq!(error["error"]["code"], "document_too_large");
    assert_eq!(error["error"]["document_bytes"], big.len() as u64);
}

#[tokio::test]
async fn shutting_down_ends_open_streams() {
    let mut api = start_api(|_| {}).await;
    api.store(SESSION, &document(SESSION, 3)).await;
    let watcher = {
        let (http, url) = (api.http.clone(), stream_url(&api, SESSION));
        tokio::spawn(async move { follow(&http, &url, Duration::from_secs(20)).await })
    };
    eventually_read(&api, 1).await;
    api.stop_serving();
    let (_, events) = watcher.await.unwrap();
    let last = events.last().expect("events");
    assert_eq!(last.name, "end");
    assert_eq!(last.data, r#"{"reason":"shutdown"}"#);
    api.wait_stopped(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_is_disconnected_after_the_write_timeout() {
    let api = start_api(|config| {
        config.limits.streams.max_streams = 1;
        config.http.http_write_timeout_secs = 1;
    })
    .await;
    // Larger than the kernel's socket buffers: the first event stalls.
    api.store(SESSION, &document(SESSION, 100_000)).await;
    let (mut stalled, status) = open_unread(&api, "127.0.0.1", SESSION).await;
    assert!(status.contains(" 200 "), "{status}");
    let (_, status) = open_unread(&api, "127.0.0.2", SESSION).await;
    assert!(status.contains(" 503 "), "the one place is taken: {status}");
    // The server closes the stalled stream and its place is free again.
    sessionfold_testkit::eventually(
        "a stream opens once the stalled one is closed",
        Duration::from_secs(20),
        || async {
            let (connection, status) = open_unread(&api, "127.0.0.2", SESSION).await;
            status.contains(" 200 ").then_some(connection)
        },
    )
    .await;
    let received = read_until_end(&mut stalled, Duration::from_secs(20)).await;
    assert!(!received.ends_with(b"\r\n0\r\n\r\n"), "cut off, not ended");
}
