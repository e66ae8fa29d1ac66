//! `GET /data` under readers that try to starve Redis: large documents read
//! in a loop by many clients, clients that never read, a Redis that stops
//! answering, documents over the size limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use sessionfold_testkit::eventually;

use crate::harness::*;

const BIG: &str = "big-session";
const SMALL: &str = "small-session";
/// The audit's session: 100 000 children, about 8 MB.
const BIG_CHILDREN: usize = 100_000;

/// Reads `url` to its end without keeping the body; the status and bytes.
async fn read_discarding(http: &reqwest::Client, url: &str) -> (u16, u64) {
    match http.get(url).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let mut bytes = 0;
            let mut body = response.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                bytes += chunk.len() as u64;
            }
            (status, bytes)
        }
        Err(_) => (0, 0),
    }
}

/// A well-behaved reader of a small session, as long as `stop` is not
/// cancelled and at most `reads` times: each read's latency and status.
async fn small_reader(
    http: reqwest::Client,
    url: String,
    reads: usize,
    stop: CancellationToken,
) -> Vec<(Duration, u16)> {
    let mut results = Vec::new();
    while results.len() < reads && !stop.is_cancelled() {
        let started = Instant::now();
        let (status, _) = read_discarding(&http, &url).await;
        results.push((started.elapsed(), status));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_reads_keep_answering_while_48_readers_loop_over_a_large_document() {
    // A read deadline well above the default (1 s), so that what this test
    // checks is that no small read waits behind large ones, whatever else
    // this (debug-built, shared) machine is doing; the latencies printed
    // are the measurement.
    let api = start_api_alone(|config| config.limits.reads.read_timeout_ms = 5_000).await;
    let big = document(BIG, BIG_CHILDREN);
    println!("large document: {} bytes", big.len());
    api.store(BIG, &big).await;
    api.store(SMALL, &document(SMALL, 10)).await;
    let baseline_memory = api.used_memory().await;
    let baseline_clients = read_connections(&api.redis.url()).await;
    let baseline_rss = rss_bytes();

    let stop = CancellationToken::new();
    let redis_peak = {
        let url = api.redis.url();
        sample_peak(stop.clone(), move || {
            let url = url.clone();
            async move { used_memory(&url).await }
        })
    };
    let clients_peak = {
        let url = api.redis.url();
        sample_peak(stop.clone(), move || {
            let url = url.clone();
            async move { read_connections(&url).await }
        })
    };
    let rss_peak = sample_peak(stop.clone(), || async { rss_bytes() });

    // The attack: 48 readers, each reading the large document in a loop
    // (at most 16 times, as in the audit) while the small reader runs.
    let served = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..48)
        .map(|_| {
            let http = api.http.clone();
            let url = api.data_url(BIG);
            let stop = stop.clone();
            let (served, refused) = (served.clone(), refused.clone());
            let expected = big.len() as u64;
            tokio::spawn(async move {
                for _ in 0..16 {
                    if stop.is_cancelled() {
                        break;
                    }
                    match read_discarding(&http, &url).await {
                        (200, bytes) => {
                            assert_eq!(bytes, expected, "a whole document or an error");
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        (503, _) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        (status, _) => panic!("large read answered {status}"),
                    }
                }
            })
        })
        .collect();
    let small = small_reader(api.http.clone(), api.data_url(SMALL), 300, stop.clone()).await;
    stop.cancel();
    for attacker in attackers {
        attacker.await.unwrap();
    }
    let redis_peak = redis_peak.await.unwrap();
    let clients_peak = clients_peak.await.unwrap();
    let rss_peak = rss_peak.await.unwrap();

    let failed: Vec<_> = small
        .iter()
        .filter(|(_, status)| *status != 200)
        .cloned()
        .collect();
    let mut latencies: Vec<Duration> = small.iter().map(|(latency, _)| *latency).collect();
    let (served, refused) = (
        served.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    println!(
        "48 readers of the large document: {served} served, {refused} refused (503); \
         small reader: {} reads, p50 {:?}, p99 {:?}, max {:?}; \
         Redis used_memory peak +{:.1} MiB over {:.1} MiB, read connections peak {clients_peak} (before {baseline_clients}); \
         api process RSS peak {:.1} MiB (before {:.1} MiB)",
        latencies.len(),
        percentile(&mut latencies, 50.0),
        percentile(&mut latencies, 99.0),
        percentile(&mut latencies, 100.0),
        mib(redis_peak.saturating_sub(baseline_memory)),
        mib(baseline_memory),
        mib(rss_peak),
        mib(baseline_rss),
    );
    assert!(
        failed.is_empty(),
        "small reads failed during the attack: {failed:?}"
    );
    assert!(served > 0, "the large document is still served");
    // Before: ~14 GB of output buffers. Now at most one reply per read
    // connection (8 + 2), each at most one document.
    assert!(
        redis_peak.saturating_sub(baseline_memory) < 160 << 20,
        "Redis grew by {:.1} MiB",
        mib(redis_peak - baseline_memory)
    );
    assert!(
        clients_peak <= 8 + 2,
        "read connections are bounded: {clients_peak} (before {baseline_clients})"
    );
}

async fn used_memory(url: &str) -> u64 {
    info_field(url, "memory", "used_memory").await
}

/// Redis clients whose last command was a document read (`JSON.GET` or
/// `JSON.ARRLEN`): the api's read connections.
async fn read_connections(url: &str) -> u64 {
    let Ok(mut redis) = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
    else {
        return 0;
    };
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut redis)
        .await
        .unwrap_or_default();
    clients
        .lines()
        .filter(|line| line.contains(" cmd=json.get ") || line.contains(" cmd=json.arrlen "))
        .count() as u64
}

async fn info_field(url: &str, section: &str, field: &str) -> u64 {
    let Ok(mut redis) = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
    else {
        return 0;
    };
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut redis)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_read_large_documents_hold_bounded_memory_and_no_small_capacity() {
    let api = start_api_alone(|config| {
        config.limits.reads.large_responses = 4;
    })
    .await;
    // Larger than the kernel's socket buffers (4 MiB at most here), so the
    // api itself holds what a stalled reader does not take.
    let big = document(BIG, BIG_CHILDREN);
    api.store(BIG, &big).await;
    api.store(SMALL, &document(SMALL, 10)).await;
    let baseline_rss = rss_bytes();

    // 32 connections ask for the large document and never read a byte,
    // with small receive buffers so the answers stay with the api.
    let mut stalled = Vec::new();
    for _ in 0..32 {
        let mut connection = raw_connection("127.0.0.1", api.addr, Some(4096)).await;
        send_get(&mut connection, &format!("/data?session_id={BIG}"), "").await;
        stalled.push(connection);
    }
    // The four large-document slots are held by stalled readers: a reader
    // that does read gets a prompt 503, not a hang.
    let refused = eventually(
        "large reads refused while every slot is held",
        Duration::from_secs(20),
        || {
            let (http, url) = (api.http.clone(), api.data_url(BIG));
            async move {
                let response = http.get(url).send().await.ok()?;
                (response.status() == 503).then_some(response)
            }
        },
    )
    .await;
    assert!(refused.headers().get("retry-after").is_some());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    let stop = CancellationToken::new();
    let small = small_reader(api.http.clone(), api.data_url(SMALL), 100, stop).await;
    let rss = rss_bytes();
    let failed: Vec<_> = small
        .iter()
        .filter(|(_, status)| *status != 200)
        .cloned()
        .collect();
    assert!(failed.is_empty(), "small reads failed: {failed:?}");
    let mut latencies: Vec<Duration> = small.iter().map(|(latency, _)| *latency).collect();
    println!(
        "32 stalled readers of a {} byte document: small reader p99 {:?}; RSS {:.1} MiB (before {:.1} MiB)",
        big.len(),
        percentile(&mut latencies, 99.0),
        mib(rss),
        mib(baseline_rss)
    );
    // Four slots of one document each, plus the servers' buffers.
    assert!(
        rss.saturating_sub(baseline_rss) < 4 * big.len() as u64 + (96 << 20),
        "RSS grew by {:.1} MiB",
        mib(rss.saturating_sub(baseline_rss))
    );
    drop(stalled);
    // Once the stalled readers are gone, the large document is served again.
    eventually(
        "the large document is served once the slots are free",
        Duration::from_secs(20),
        || {
            let (http, url) = (api.http.clone(), api.data_url(BIG));
            async move { (read_discarding(&http, &url).await.0 == 200).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_read_fails_fast_with_unavailable_when_redis_stops_answering_and_recovers() {
    let api = start_api(|config| {
        config.limits.reads.read_timeout_ms = 300;
    })
    .await;
    api.store(SMALL, &document(SMALL, 3)).await;
    assert_eq!(
        read_discarding(&api.http, &api.data_url(SMALL)).await.0,
        200
    );

    let pid = api.redis.pid().unwrap().to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        api.http.get(api.data_url(SMALL)).send(),
    )
    .await;
    let waited = started.elapsed();
    signal("-CONT");
    let response = response
        .expect("the api answered instead of hanging")
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    println!("answered 503 after {waited:?} with a 300 ms read deadline");

    // The connection that timed out was dropped; reads work again.
    eventually("reads succeed again", Duration::from_secs(10), || async {
        (read_discarding(&api.http, &api.data_url(SMALL)).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_document_over_the_size_limit_gets_413_pointing_to_pages_and_is_not_read_again() {
    let api = start_api(|config| {
        config.limits.reads.max_document_bytes = 20_000;
    })
    .await;
    let big = document(BIG, 400);
    assert!(big.len() > 20_000);
    api.store(BIG, &big).await;
    api.store(SMALL, &document(SMALL, 3)).await;

    let response = api.http.get(api.data_url(BIG)).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "document_too_large", "{body}");
    assert_eq!(body["error"]["document_bytes"], big.len() as u64);
    assert_eq!(body["error"]["max_document_bytes"], 20_000);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("/data/children"), "{message}");

    // Its size is known now: the next request is refused without a read.
    let gets = api.json_gets().await;
    let again = api.http.get(api.data_url(BIG)).send().await.unwrap();
    assert_eq!(again.status(), 413);
    assert_eq!(api.json_gets().await, gets);

    // Documents under the limit are served as before.
    assert_eq!(
        read_discarding(&api.http, &api.data_url(SMALL)).await.0,
        200
    );
}

#[tokio::test]
async fn a_missing_document_is_404_and_a_stored_one_byte_identical() {
    let api = start_api(|_| {}).await;
    let response = api.http.get(api.data_url("nobody")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let small = document(SMALL, 5);
    api.store(SMALL, &small).await;
    let served = api.http.get(api.data_url(SMALL)).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.text().await.unwrap(), small);
    // A large one, served through its own lane, is byte-identical too and
    // carries its length.
    let big = document(BIG, 5_000);
    api.store(BIG, &big).await;
    let served = api.http.get(api.data_url(BIG)).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["content-length"],
        big.len().to_string().as_str()
    );
    assert_eq!(served.text().await.unwrap(), big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_disconnected_after_the_write_timeout_and_frees_its_slot() {
    let api = start_api(|config| {
        config.limits.reads.large_responses = 1;
        config.http.http_write_timeout_secs = 1;
    })
    .await;
    let big = document(BIG, BIG_CHILDREN);
    api.store(BIG, &big).await;
    let mut stalled = raw_connection("127.0.0.1", api.addr, Some(4096)).await;
    send_get(&mut stalled, &format!("/data?session_id={BIG}"), "").await;
    // While it holds the one large-document slot, others are refused...
    eventually(
        "a large read refused while the slot is held",
        Duration::from_secs(20),
        || async { (read_discarding(&api.http, &api.data_url(BIG)).await.0 == 503).then_some(()) },
    )
    .await;
    // ...until the server gives up on it, with the stalled socket still open.
    eventually(
        "the large document is served again",
        Duration::from_secs(20),
        || async { (read_discarding(&api.http, &api.data_url(BIG)).await.0 == 200).then_some(()) },
    )
    .await;
    let received = read_until_end(&mut stalled, Duration::from_secs(20)).await;
    assert!(
        received.len() < big.len(),
        "the stalled reader was cut off after {} of {} bytes",
        received.len(),
        big.len()
    );
}

#[tokio::test]
async fn the_first_read_after_redis_restarts_is_served_on_a_new_connection() {
    let mut api = start_api(|_| {}).await;
    api.store(SMALL, &document(SMALL, 3)).await;
    // Connections of both kinds of read (size probe, document) are idle now.
    assert_eq!(
        read_discarding(&api.http, &api.data_url(SMALL)).await.0,
        200
    );
    api.redis.restart().expect("restarting redis-server");
    // Its idle connections were closed by the restart; the read is retried
    // on a new one instead of answering 503.
    let response = api.http.get(api.data_url(SMALL)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), document(SMALL, 3));
}
