//! Read your writes: `GET /data?min_seq=S&wait_ms=T` answers only once the
//! frame accepted with `seq` S is in the document, with two processors
//! sharing the consumer; past `wait_ms` it answers 503 `not_yet_applied`;
//! a dead-lettered frame counts as settled; concurrent waiters share their
//! consumer-info lookups.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_split_app, spawn_split_app_on};

/// `GET /data?session_id=…&min_seq=…&wait_ms=…`: status, `Retry-After` and body.
async fn read_after(
    app: &TestApp,
    session: &str,
    min_seq: &str,
    wait_ms: &str,
) -> (StatusCode, Option<String>, Value) {
    let mut url = app.data_url(Some(session));
    url.query_pairs_mut()
        .append_pair("min_seq", min_seq)
        .append_pair("wait_ms", wait_ms);
    let response = app.http.get(url).send().await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    (status, retry_after, response.json().await.unwrap())
}

fn names(document: &Value) -> Vec<&str> {
    document["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|child| child["name"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_min_seq_read_includes_its_frame_with_two_processors() {
    let app = spawn_split_app().await;

    // No processor yet: the frame is accepted but cannot be applied, so a
    // min_seq read waits its wait_ms and says so.
    let mut first = app.connect("ryw-0").await;
    let reply = first
        .send_and_reply(r#"[{"type":"EVENT","timestamp":1,"name":"early"}]"#)
        .await;
    let seq = reply.seq().expect("an accepted frame has a seq");
    let asked = Instant::now();
    let (status, retry_after, body) = read_after(&app, "ryw-0", &seq.to_string(), "300").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "not_yet_applied", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "it waited its wait_ms"
    );

    let _a = app.start_processor();
    let _b = app.start_processor();
    let (status, _, body) = read_after(&app, "ryw-0", &seq.to_string(), "10000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(names(&body), ["early"]);

    // 4 producers × 60 frames, each frame read back at once with its seq.
    const SESSIONS: usize = 4;
    const FRAMES: usize = 60;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let session = format!("ryw-{}", s + 1);
            let mut producer = app.connect(&session).await;
            let mut missed = Vec::new();
            let mut plain_misses = 0;
            for i in 0..FRAMES {
                let name = format!("e{i}");
                // Out of timestamp order now and then, so some applies
                // insert rather than append.
                let timestamp = if i % 7 == 3 { i as f64 - 2.5 } else { i as f64 };
                let frame =
                    format!(r#"[{{"type":"EVENT","timestamp":{timestamp},"name":"{name}"}}]"#);
                let reply = producer.send_and_reply(&frame).await;
                let seq = reply.seq().unwrap_or_else(|| panic!("{reply:?}"));
                // Without min_seq a read right after the ack may come
                // before the apply: counted, to show what min_seq adds.
                let (_, plain) = app.get_data(&session).await;
                if plain["children"]
                    .as_array()
                    .is_none_or(|c| c.len() != i + 1)
                {
                    plain_misses += 1;
                }
                let (status, _, body) = read_after(&app, &session, &seq.to_string(), "10000").await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let names = names(&body);
                if !names.contains(&name.as_str()) || names.len() != i + 1 {
                    missed.push((seq, names.len()));
                }
            }
            (missed, plain_misses)
        }));
    }
    let mut plain_misses = 0;
    for task in tasks {
        let (missed, plain) = task.await.unwrap();
        plain_misses += plain;
        assert!(
            missed.is_empty(),
            "min_seq reads without their frame: {missed:?}"
        );
    }
    println!(
        "{} min_seq reads with 2 processors, each included its frame \
         ({plain_misses} plain reads just before them did not)",
        SESSIONS * FRAMES + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_seq_input_is_checked_and_waiters_are_capped() {
    let nats = sessionfold_testkit::NatsServer::start().unwrap();
    let redis = sessionfold_testkit::RedisServer::start().unwrap();
    let app = spawn_split_app_on(
        nats,
        redis,
        crate::helpers::unique_names(),
        &[],
        &[("API_MAX_WAIT_MS", "5000"), ("API_MAX_WAITERS_PER_IP", "1")],
    )
    .await;
    for (min_seq, wait_ms, code) in [
        ("0", "10", "invalid_min_seq"),
        ("x", "10", "invalid_min_seq"),
        ("18446744073709551616", "10", "invalid_min_seq"),
        ("1", "5001", "invalid_wait_ms"),
        ("1", "-1", "invalid_wait_ms"),
    ] {
        let (status, _, body) = read_after(&app, "caps", min_seq, wait_ms).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{min_seq} {wait_ms}: {body}"
        );
        assert_eq!(body["error"]["code"], code, "{body}");
    }

    // No processor runs: a waiter for seq 1 holds the address's one place
    // until its wait_ms passes.
    let mut producer = app.connect("caps").await;
    producer
        .send_accepted(r#"[{"type":"EVENT","timestamp":1}]"#)
        .await;
    let app = std::sync::Arc::new(app);
    let holder = {
        let app = app.clone();
        tokio::spawn(async move {
            // The probe below may hold the place for a moment: then this
            // waiter is the one refused, and comes again.
            loop {
                let read = read_after(&app, "caps", "1", "5000").await;
                if read.0 != StatusCode::TOO_MANY_REQUESTS {
                    return read;
                }
            }
        })
    };
    sessionfold_testkit::eventually(
        "the second waiter is refused",
        Duration::from_secs(5),
        || {
            let app = app.clone();
            async move {
                let (status, retry_after, body) = read_after(&app, "caps", "1", "1").await;
                (status == StatusCode::TOO_MANY_REQUESTS).then(|| {
                    assert_eq!(body["error"]["code"], "too_many_waiters", "{body}");
                    assert_eq!(retry_after.as_deref(), Some("1"));
                })
            }
        },
    )
    .await;
    let (status, _, body) = holder.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "not_yet_applied");
}

#[tokio::test]
async fn a_dead_lettered_frame_counts_as_settled() {
    let app = spawn_split_app().await;
    let _processor =
        app.start_processor_with(&[("MAX_CHILDREN_PER_SESSION", "1"), ("MAX_ATTEMPTS", "1")]);
    let mut producer = app.connect("dead").await;
    let first = producer
        .send_and_reply(r#"[{"type":"EVENT","timestamp":1,"name":"kept"}]"#)
        .await;
    // Applied before the next frame is sent: with batches in flight, a later
    // frame applied first would take the one place (the README says so).
    let (status, _, body) =
        read_after(&app, "dead", &first.seq().unwrap().to_string(), "10000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // One child too many: refused by the apply step and dead-lettered.
    let reply = producer
        .send_and_reply(r#"[{"type":"EVENT","timestamp":2,"name":"refused"}]"#)
        .await;
    let seq = reply.seq().unwrap();
    let (status, _, body) = read_after(&app, "dead", &seq.to_string(), "10000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(names(&body), ["kept"], "the document never holds it");
}

/// A counter of the api's `/metrics`, summed over its labels.
async fn api_counter(app: &TestApp, name: &str) -> u64 {
    let text = app
        .http
        .get(format!("http://{}/metrics", app.api_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_their_lookups() {
    let app = std::sync::Arc::new(spawn_split_app().await);
    // No processor: every waiter waits its whole wait_ms.
    let mut producer = app.connect("shared").await;
    let seq = producer
        .send_and_reply(r#"[{"type":"EVENT","timestamp":1}]"#)
        .await
        .seq()
        .unwrap();
    const WAITERS: u64 = 20;
    let before = api_counter(&app, "sessionfold_api_ack_floor_lookups_total").await;
    let reads: Vec<_> = (0..WAITERS)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { read_after(&app, "shared", &seq.to_string(), "1000").await })
        })
        .collect();
    for read in reads {
        let (status, _, body) = read.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "not_yet_applied");
    }
    let lookups = api_counter(&app, "sessionfold_api_ack_floor_lookups_total").await - before;
    // One waiter alone checks about 9 times in a second (5 ms doubling to
    // 250 ms); twenty that did not share would make some 180 lookups.
    println!("{WAITERS} waiters of 1 s: {lookups} consumer-info lookups");
    assert!(
        lookups >= 5,
        "the waiters checked again while they waited: {lookups}"
    );
    assert!(
        lookups < WAITERS * 9 / 2,
        "{lookups} lookups for {WAITERS} waiters"
    );
    assert_eq!(
        api_counter(
            &app,
            "sessionfold_api_min_seq_reads_total{outcome=\"not_yet_applied\"}"
        )
        .await,
        WAITERS
    );
}
