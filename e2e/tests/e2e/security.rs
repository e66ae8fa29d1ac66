//! Only the right clients get in, abuse is throttled, limits hold.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sessionfold_common::auth::{Claims, Scope, issue_token, now};
use sessionfold_core::ErrorCode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::helpers::{DEADLINE, Producer, Setting, TestApp, expected_document, spawn_app_with};

const SECRET: &str = "test-secret-of-at-least-32-bytes";
const API_KEY: &str = "test-api-key";
const FRAME: &str = r#"[{"type":"EVENT","timestamp":1,"name":"x"}]"#;

fn token(sid: &str, prefix: bool, scope: Scope, exp: u64) -> String {
    issue_token(
        SECRET.as_bytes(),
        &Claims {
            sid: sid.into(),
            prefix,
            sep: prefix.then(|| "/".to_owned()),
            scope,
            exp,
        },
    )
}

async fn spawn_secured_app() -> TestApp {
    spawn_app_with(&[
        ("AUTH_REQUIRED", "true"),
        ("AUTH_API_KEYS", API_KEY),
        ("AUTH_TOKEN_SECRET", SECRET),
    ])
    .await
}

/// Opens a WebSocket with extra headers; the HTTP status and error code when
/// the upgrade is refused.
async fn connect_with(
    url: String,
    headers: &[(&str, &str)],
) -> Result<Producer, (StatusCode, String)> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(Producer { socket }),
        Err(WsError::Http(response)) => {
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or(b"{}"))
                .unwrap_or(Value::Null);
            let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
            Err((
                StatusCode::from_u16(response.status().as_u16()).unwrap(),
                code,
            ))
        }
        Err(other) => panic!("unexpected WebSocket error: {other:?}"),
    }
}

fn refusal<T>(result: Result<T, (StatusCode, String)>) -> (StatusCode, String) {
    match result {
        Ok(_) => panic!("the connection was accepted"),
        Err(refusal) => refusal,
    }
}

#[tokio::test]
async fn websocket_upgrades_need_a_credential_for_the_session() {
    let app = spawn_secured_app().await;
    let url = app.websocket_url("s1");
    let later = now() + 600;

    assert_eq!(
        refusal(connect_with(url.clone(), &[]).await),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    let bearer = |value: &str| format!("Bearer {value}");

    let mut with_key = connect_with(url.clone(), &[("authorization", &bearer(API_KEY))])
        .await
        .unwrap();
    with_key.send_accepted(FRAME).await;

    let write = token("s1", false, Scope::Write, later);
    let mut with_token = connect_with(url.clone(), &[("authorization", &bearer(&write))])
        .await
        .unwrap();
    with_token.send_accepted(FRAME).await;

    // Browsers pass the token as a query parameter.
    let mut in_query = connect_with(format!("{url}&token={write}"), &[])
        .await
        .unwrap();
    in_query.send_accepted(FRAME).await;

    let cases = [
        (
            token("s2", false, Scope::Write, later),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            token("s1", false, Scope::Read, later),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            token("s1", false, Scope::Write, now() - 5),
            StatusCode::UNAUTHORIZED,
            "token_expired",
        ),
        (
            format!("{write}x"),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            issue_token(
                b"another-secret-of-at-least-32-bytes",
                &Claims {
                    sid: "s1".into(),
                    prefix: false,
                    sep: None,
                    scope: Scope::Write,
                    exp: later,
                },
            ),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "wrong-key".to_owned(),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
    ];
    for (credential, status, code) in cases {
        assert_eq!(
            refusal(connect_with(url.clone(), &[("authorization", &bearer(&credential))]).await),
            (status, code.to_owned()),
            "{credential}"
        );
    }
    // A prefix matches only at its separator: "s" does not open "s1".
    let unbounded = token("s", true, Scope::ReadWrite, later);
    assert_eq!(
        refusal(connect_with(url, &[("authorization", &bearer(&unbounded))]).await),
        (StatusCode::FORBIDDEN, "forbidden".to_owned())
    );
    let tenant = token("tenant/", true, Scope::ReadWrite, later);
    connect_with(
        app.websocket_url("tenant/s1"),
        &[("authorization", &bearer(&tenant))],
    )
    .await
    .expect("a prefix token opens every session under it");
}

#[tokio::test]
async fn reads_need_a_read_credential_for_the_session() {
    let app = spawn_secured_app().await;
    let get = |credential: Option<String>| {
        let mut request = app.http.get(app.data_url(Some("s1")));
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    let later = now() + 600;
    assert_eq!(
        get(None).await,
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    assert_eq!(
        get(Some(API_KEY.into())).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let read = token("s1", false, Scope::Read, later);
    assert_eq!(
        get(Some(read.clone())).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    assert_eq!(
        get(Some(token("s1", false, Scope::Write, later))).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    assert_eq!(
        get(Some(token("s2", false, Scope::Read, later))).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    assert_eq!(
        get(Some(token("s1", false, Scope::Read, now() - 1))).await,
        (StatusCode::UNAUTHORIZED, "token_expired".into())
    );
    let mut url = app.data_url(Some("s1"));
    url.query_pairs_mut().append_pair("token", &read);
    assert_eq!(
        app.http.get(url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

/// Sends `count` frames without waiting, then reads every reply: the
/// accepted frames and the number rate-limited.
async fn burst(
    producer: &mut Producer,
    count: usize,
    frame: impl Fn(usize) -> String,
) -> (Vec<String>, usize) {
    let frames: Vec<String> = (0..count).map(frame).collect();
    for frame in &frames {
        producer.send(frame).await;
    }
    let mut accepted = Vec::new();
    let mut limited = 0;
    for frame in frames {
        let reply = producer.reply().await;
        match reply.error_code() {
            None => accepted.push(frame),
            Some(ErrorCode::RateLimited) => limited += 1,
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    (accepted, limited)
}

#[tokio::test]
async fn each_rate_limit_is_enforced_and_throttled_frames_are_not_stored() {
    let numbered = |i: usize| {
        format!(
            r#"[{{"type":"EVENT","timestamp":{i},"name":"{}"}}]"#,
            "p".repeat(200)
        )
    };
    let limits: [(&str, &[Setting]); 4] = [
        ("frames per session", &[("SESSION_FRAMES_PER_SEC", "5")]),
        (
            "bytes per session",
            // The byte budget's burst is one largest frame.
            &[
                ("MAX_FRAME_BYTES", "2000"),
                ("SESSION_BYTES_PER_SEC", "1000"),
            ],
        ),
        ("frames per IP", &[("IP_FRAMES_PER_SEC", "5")]),
        (
            "bytes per IP",
            &[("MAX_FRAME_BYTES", "2000"), ("IP_BYTES_PER_SEC", "1000")],
        ),
    ];
    for (name, settings) in limits {
        let app = spawn_app_with(settings).await;
        let mut producer = app.connect("limited").await;
        let (accepted, limited) = burst(&mut producer, 30, numbered).await;
        assert!(limited > 0, "{name}: nothing was limited");
        assert!(!accepted.is_empty(), "{name}: nothing got through");
        let accepted: Vec<&str> = accepted.iter().map(String::as_str).collect();
        app.wait_for_document("limited", &expected_document("limited", &accepted))
            .await;
        app.wait_until_consumed().await;
        assert_eq!(
            app.stored_frames("limited").await,
            accepted.len() as u64,
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_api_answers_429_with_retry_after_past_its_rate() {
    let app = spawn_app_with(&[("API_IP_REQUESTS_PER_SEC", "3")]).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..10 {
        let response = app
            .http
            .get(app.data_url(Some("any")))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response.headers().get("retry-after").cloned();
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    assert!(statuses.contains(&StatusCode::NOT_FOUND));
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let seconds: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!(seconds >= 1);
}

#[tokio::test]
async fn connection_limits_hold_in_all_and_per_address() {
    let app = spawn_app_with(&[("MAX_CONNECTIONS_PER_IP", "2")]).await;
    let first = app.connect("c1").await;
    let _second = app.connect("c2").await;
    assert_eq!(
        refusal(connect_with(app.websocket_url("c3"), &[]).await),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_connections".into())
    );
    drop(first);
    sessionfold_testkit::eventually(
        "a closed connection frees its place",
        crate::helpers::DEADLINE,
        || async {
            connect_with(app.websocket_url("c3"), &[])
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;

    let app = spawn_app_with(&[("MAX_CONNECTIONS", "1")]).await;
    let _only = app.connect("c1").await;
    assert_eq!(
        refusal(connect_with(app.websocket_url("c2"), &[]).await),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections".into()
        )
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let app = spawn_app_with(&[("IDLE_TIMEOUT_SECS", "1")]).await;
    let mut producer = app.connect("idle").await;
    producer.send_accepted(FRAME).await;
    let started = std::time::Instant::now();
    match producer.next_message().await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 1000);
            assert_eq!(frame.reason.as_str(), "idle timeout");
        }
        other => panic!("expected an idle close, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn only_listed_origins_may_connect() {
    let app = spawn_app_with(&[("ALLOWED_ORIGINS", "https://app.example")]).await;
    let url = app.websocket_url("o1");
    assert_eq!(
        refusal(connect_with(url.clone(), &[("origin", "https://evil.example")]).await),
        (StatusCode::FORBIDDEN, "origin_not_allowed".into())
    );
    connect_with(url.clone(), &[("origin", "https://app.example")])
        .await
        .expect("a listed origin");
    connect_with(url, &[])
        .await
        .expect("clients without an Origin");
}

#[tokio::test]
async fn an_event_over_the_size_limit_is_rejected_with_its_index() {
    let app = spawn_app_with(&[("MAX_EVENT_BYTES", "100")]).await;
    let mut producer = app.connect("sizes").await;
    let big = format!(
        r#"[{{"type":"EVENT","timestamp":1}},{{"type":"EVENT","timestamp":2,"name":"{}"}}]"#,
        "x".repeat(100)
    );
    let reply = producer.send_and_reply(&big).await;
    assert_eq!(reply.error_code(), Some(ErrorCode::EventTooLarge));
    let parsed: Value = serde_json::from_str(&reply.to_json()).unwrap();
    assert_eq!(parsed["error"]["index"], 1);
    producer.send_accepted(FRAME).await;
    app.wait_for_document("sizes", &expected_document("sizes", &[FRAME]))
        .await;
}

#[tokio::test]
async fn listing_sessions_needs_an_api_key_or_an_all_sessions_reader_and_pages_of_children_the_session()
 {
    let app = spawn_secured_app().await;
    let mut producer = connect_with(
        app.websocket_url("s1"),
        &[("Authorization", &format!("Bearer {API_KEY}"))],
    )
    .await
    .unwrap();
    producer.send_accepted(FRAME).await;
    let read = |path: String, credential: Option<String>| {
        let app = &app;
        async move {
            let mut request = app.http.get(format!("http://{}{path}", app.api_addr));
            if let Some(credential) = credential {
                request = request.bearer_auth(credential);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    let later = now() + 600;
    let s1 = token("s1", false, Scope::Read, later);
    let tenant = token("tenant/", true, Scope::Read, later);
    let everything = token("", true, Scope::Read, later);
    let everything_write = token("", true, Scope::Write, later);
    for (credential, status, code) in [
        (None, StatusCode::UNAUTHORIZED, "unauthorized"),
        (Some(s1.clone()), StatusCode::FORBIDDEN, "forbidden"),
        (Some(tenant), StatusCode::FORBIDDEN, "forbidden"),
        (Some(everything_write), StatusCode::FORBIDDEN, "forbidden"),
        (Some(everything), StatusCode::OK, ""),
        (Some(API_KEY.to_owned()), StatusCode::OK, ""),
    ] {
        assert_eq!(
            read("/sessions".to_owned(), credential).await,
            (status, code.to_owned())
        );
    }
    let children = "/data/children?session_id=s1".to_owned();
    assert_eq!(
        read(children.clone(), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let s2 = token("s2", false, Scope::Read, later);
    assert_eq!(
        read(children.clone(), Some(s2)).await.0,
        StatusCode::FORBIDDEN
    );
    // The session's own read token reads its pages once it is stored.
    sessionfold_testkit::eventually(
        "a page of s1 with its token",
        crate::helpers::DEADLINE,
        || {
            let read = &read;
            let children = children.clone();
            let s1 = s1.clone();
            async move { (read(children, Some(s1)).await.0 == StatusCode::OK).then_some(()) }
        },
    )
    .await;
}

/// Hardening II: under `OPS_REQUIRE_API_KEY=true`, the operators' routes
/// (metrics, readiness with its dependency checks, the API description)
/// answer only an API key; `/healthz` stays open for liveness probes. By
/// default they stay open, as scrapers and probes expect.
#[tokio::test]
async fn operators_routes_need_an_api_key_when_asked_and_healthz_never_does() {
    let app = spawn_app_with(&[
        ("AUTH_REQUIRED", "true"),
        ("AUTH_API_KEYS", API_KEY),
        ("AUTH_TOKEN_SECRET", SECRET),
        ("OPS_REQUIRE_API_KEY", "true"),
    ])
    .await;
    let status = |path: &'static str, credential: Option<String>| {
        let app = &app;
        async move {
            let mut request = app.http.get(format!("http://{}{path}", app.api_addr));
            if let Some(credential) = credential {
                request = request.bearer_auth(credential);
            }
            request.send().await.unwrap().status()
        }
    };
    sessionfold_testkit::eventually("/readyz with the API key", DEADLINE, || async {
        (status("/readyz", Some(API_KEY.to_owned())).await == StatusCode::OK).then_some(())
    })
    .await;
    let reader = token("", true, Scope::Read, now() + 600);
    for path in ["/metrics", "/readyz", "/openapi.json"] {
        assert_eq!(status(path, None).await, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            status(path, Some(reader.clone())).await,
            StatusCode::UNAUTHORIZED,
            "{path} with a session token"
        );
        assert_eq!(
            status(path, Some(API_KEY.to_owned())).await,
            StatusCode::OK,
            "{path} with the API key"
        );
    }
    assert_eq!(status("/healthz", None).await, StatusCode::OK);

    let open = spawn_secured_app().await;
    let metrics = open
        .http
        .get(format!("http://{}/metrics", open.api_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK, "open by default");
}
