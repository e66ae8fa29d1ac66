//! What operators see: request ids on every route, Prometheus metrics on
//! every service, readiness that checks the dependencies.
//!
//! Every app of this test binary records into the one recorder of the
//! process, so metric assertions compare a scrape before and after the
//! test's own actions and only ever expect counters to have grown by at
//! least what the test did.

use reqwest::StatusCode;
use serde_json::Value;
use sessionfold_testkit::{eventually, free_port};

use crate::helpers::{DEADLINE, TestApp, expected_document, spawn_app, spawn_split_app};

/// The sum of every series of `name` whose labels include all of `labels`.
pub fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// Whether the page has any series of `name` with `labels`.
fn has_series(page: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    page.lines().any(|line| {
        line.starts_with(name)
            && line[name.len()..].starts_with(['{', ' '])
            && labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
    })
}

async fn scrape(app: &TestApp, base: &str) -> String {
    let response = app
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

#[tokio::test]
async fn every_route_returns_the_clients_request_id_or_a_new_one() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.api_addr);
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/data?session_id=nobody",
        "/data",
        "/websocket?session_id=s",
        "/nowhere",
    ] {
        let response = app
            .http
            .get(format!("{base}{path}"))
            .header("x-request-id", "trace-me-42")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["x-request-id"],
            "trace-me-42",
            "GET {path} answered {}",
            response.status()
        );
        let response = app.http.get(format!("{base}{path}")).send().await.unwrap();
        let generated = response.headers()["x-request-id"].to_str().unwrap();
        assert!(
            generated.len() == 32 && generated.bytes().all(|b| b.is_ascii_hexdigit()),
            "GET {path} generated {generated:?}"
        );
    }
}

#[tokio::test]
async fn metrics_count_connections_frames_events_publishes_batches_and_requests() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.api_addr);
    let before = scrape(&app, &base).await;

    let good = r#"[{"type":"SESSION_START","timestamp":1},{"type":"EVENT","timestamp":2,"name":"a"},{"type":"EVENT","timestamp":3,"name":"b"}]"#;
    let mut producer = app.connect("metered").await;
    producer.send_accepted(good).await;
    let rejected = producer.send_and_reply("not json").await;
    assert!(!rejected.is_ok());
    let bad_event = producer
        .send_and_reply(r#"[{"type":"EVENT","timestamp":1},{"type":"NOPE","timestamp":1}]"#)
        .await;
    assert!(!bad_event.is_ok());
    app.wait_for_document("metered", &expected_document("metered", &[good]))
        .await;
    app.wait_until_consumed().await;
    let (status, _) = app.get_data("metered").await;
    assert_eq!(status, StatusCode::OK);

    let after = scrape(&app, &base).await;
    let grew = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert!(grew("sessionfold_ingest_connections_total", &[]) >= 1.0);
    assert!(has_series(
        &after,
        "sessionfold_ingest_connections_open",
        &[]
    ));
    assert!(grew("sessionfold_ingest_frames_accepted_total", &[]) >= 1.0);
    assert!(grew("sessionfold_ingest_events_accepted_total", &[]) >= 3.0);
    assert!(
        grew(
            "sessionfold_ingest_frames_rejected_total",
            &[("code", "invalid_json")]
        ) >= 1.0
    );
    assert!(
        grew(
            "sessionfold_ingest_frames_rejected_total",
            &[("code", "invalid_event")]
        ) >= 1.0
    );
    assert!(
        grew(
            "sessionfold_ingest_events_rejected_total",
            &[("code", "invalid_event")]
        ) >= 1.0
    );
    assert!(
        grew(
            "sessionfold_ingest_publish_ack_seconds_count",
            &[("outcome", "stored")]
        ) >= 1.0
    );
    assert!(has_series(
        &after,
        "sessionfold_ingest_publish_ack_seconds_bucket",
        &[("le", "0.005")]
    ));
    assert!(grew("sessionfold_processor_batch_messages_count", &[]) >= 1.0);
    assert!(grew("sessionfold_processor_apply_seconds_count", &[]) >= 1.0);
    assert!(
        grew(
            "sessionfold_processor_messages_total",
            &[("outcome", "acked")]
        ) >= 1.0
    );
    assert!(
        grew(
            "sessionfold_http_requests_total",
            &[("route", "/data"), ("method", "GET"), ("status", "200")]
        ) >= 1.0
    );
    assert!(has_series(
        &after,
        "sessionfold_http_request_duration_seconds_bucket",
        &[("route", "/data")]
    ));
    // Raw paths never become labels.
    assert!(!after.contains("session_id=metered"));

    // The consumer's lag is polled every few seconds.
    let consumer = app.names.consumer.clone();
    let lag = eventually("the consumer's lag is reported", DEADLINE, || {
        let app = &app;
        let base = base.clone();
        let consumer = consumer.clone();
        async move {
            let page = scrape(app, &base).await;
            let labels = [("consumer", consumer.as_str())];
            (has_series(&page, "sessionfold_consumer_pending_messages", &labels)
                && has_series(&page, "sessionfold_consumer_ack_pending_messages", &labels))
            .then_some(page)
        }
    })
    .await;
    assert_eq!(
        sample(
            &lag,
            "sessionfold_consumer_pending_messages",
            &[("consumer", &consumer)]
        ),
        0.0
    );
}

#[tokio::test]
async fn an_undecodable_message_counts_as_a_dead_letter() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.api_addr);
    let before = scrape(&app, &base).await;
    let js = app.jetstream().await;
    js.publish(app.subject("poison"), "not a frame".into())
        .await
        .unwrap()
        .await
        .unwrap();
    app.wait_until_consumed().await;
    let after = scrape(&app, &base).await;
    let grew = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert!(
        grew(
            "sessionfold_processor_dead_letters_total",
            &[("kind", "poison")]
        ) >= 1.0
    );
    assert!(
        grew(
            "sessionfold_processor_messages_total",
            &[("outcome", "dead_lettered")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn the_processor_serves_metrics_and_checked_readiness_on_its_health_listener() {
    let app = spawn_split_app().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _processor = app.start_processor_with(&[("PROCESSOR_LISTEN", &listen)]);
    let base = format!("http://{listen}");
    let ready: Value = eventually("the processor is ready", DEADLINE, || {
        let http = app.http.clone();
        let url = format!("{base}/readyz");
        async move {
            let response = http.get(url).send().await.ok()?;
            (response.status() == StatusCode::OK).then_some(())?;
            response.json().await.ok()
        }
    })
    .await;
    for check in ["nats", "redis", "stream", "consumer", "consuming"] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }

    let frame = r#"[{"type":"EVENT","timestamp":1,"name":"seen"}]"#;
    let mut producer = app.connect("split-metrics").await;
    producer.send_accepted(frame).await;
    app.wait_for_document(
        "split-metrics",
        &expected_document("split-metrics", &[frame]),
    )
    .await;
    // The processor is its own process: its page holds its own counts. The
    // document is visible before the message's ack is counted.
    let page = eventually("the processor counts the acked message", DEADLINE, || {
        let app = &app;
        let base = base.clone();
        async move {
            let page = scrape(app, &base).await;
            let acked = sample(
                &page,
                "sessionfold_processor_messages_total",
                &[("outcome", "acked")],
            );
            (acked >= 1.0).then_some(page)
        }
    })
    .await;
    assert!(sample(&page, "sessionfold_processor_batch_messages_count", &[]) >= 1.0);
    assert!(
        sample(
            &page,
            "sessionfold_http_requests_total",
            &[("route", "/readyz")]
        ) >= 1.0
    );
    // Ingest and api have their own listeners and pages.
    let ingest = scrape(&app, &format!("http://{}", app.ingest_addr)).await;
    assert!(ingest.contains("sessionfold_ingest_frames_accepted_total"));
    let api = scrape(&app, &format!("http://{}", app.api_addr)).await;
    assert!(api.contains("sessionfold_http_requests_total"));
}

#[tokio::test]
async fn readiness_fails_while_redis_is_down_and_names_the_check() {
    let mut app = spawn_app().await;
    let url = format!("http://{}/readyz", app.api_addr);
    let report: Value = app
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["status"], "ready", "{report}");
    for check in ["nats", "redis", "stream", "consumer", "consuming"] {
        assert_eq!(report["checks"][check], "ok", "{report}");
    }

    app.redis.stop();
    let down: Value = eventually("readiness notices Redis is down", DEADLINE, || {
        let http = app.http.clone();
        let url = url.clone();
        async move {
            let response = http.get(url).send().await.ok()?;
            (response.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())?;
            response.json().await.ok()
        }
    })
    .await;
    assert_eq!(down["status"], "not_ready");
    assert_ne!(down["checks"]["redis"], "ok", "{down}");
    assert_eq!(down["checks"]["nats"], "ok", "{down}");

    app.redis.restart().expect("restarting redis-server");
    eventually("readiness recovers with Redis", DEADLINE, || {
        let http = app.http.clone();
        let url = url.clone();
        async move {
            let response = http.get(url).send().await.ok()?;
            (response.status() == StatusCode::OK).then_some(())
        }
    })
    .await;
}
