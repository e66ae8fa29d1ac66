//! `GET /sessions` against the real system: every filter finds what the
//! reference fold says it should, each listed item is the reference summary
//! of its session, pages follow each other without duplicates or gaps while
//! writes go on, values that mean something to the query syntax are only
//! values, and without the query engine the route alone answers 503.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sessionfold_core::Reply;
use sessionfold_core::summary::summarize;
use sessionfold_testkit::{RedisOptions, RedisServer, eventually};

use crate::helpers::{
    DEADLINE, TestApp, expected_document, spawn_app_with, spawn_split_app_on, unique_names,
};

/// `GET /sessions?<query>`: status and body.
async fn sessions(app: &TestApp, query: &str) -> (StatusCode, Value) {
    let response = app
        .http
        .get(format!("http://{}/sessions?{query}", app.api_addr))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// Every page of `query`, followed by cursor: the items in order.
async fn all_pages(app: &TestApp, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("{query}&cursor={cursor}"),
            None => query.to_owned(),
        };
        let (status, body) = sessions(app, &query).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        items.extend(body["sessions"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| item["session_id"].as_str().unwrap().to_owned())
        .collect()
}

fn encode(value: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").unwrap();
    url.query_pairs_mut().append_pair("v", value);
    url.query().unwrap().strip_prefix("v=").unwrap().to_owned()
}

/// One session the test writes: its frames, and the stream sequences
/// that stored them.
struct Written {
    frames: Vec<String>,
    sequences: Vec<u64>,
}

async fn write(app: &TestApp, session: &str, frames: &[String]) -> Written {
    let mut producer = app.connect(session).await;
    let mut sequences = Vec::new();
    for frame in frames {
        match producer.send_and_reply(frame).await {
            Reply::Accepted { seq: Some(seq), .. } => sequences.push(seq),
            other => panic!("{frame} was not stored: {other:?}"),
        }
    }
    Written {
        frames: frames.to_vec(),
        sequences,
    }
}

/// The arrival times JetStream gave these stored frames, in ms.
async fn arrivals(app: &TestApp, sequences: &[u64]) -> (u64, u64) {
    let js = app.jetstream().await;
    let stream = js.get_stream(&app.names.stream).await.unwrap();
    let mut times = Vec::new();
    for sequence in sequences {
        let message = stream.get_raw_message(*sequence).await.unwrap();
        times.push((message.time.unix_timestamp_nanos() / 1_000_000) as u64);
    }
    (*times.iter().min().unwrap(), *times.iter().max().unwrap())
}

/// Sends one frame on a new connection to `url` and waits for its reply.
async fn send_one(url: &str, frame: &str) {
    use futures::{SinkExt, StreamExt};
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(frame))
        .await
        .unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert!(
        reply.to_text().unwrap().starts_with(r#"{"ok":true"#),
        "{reply}"
    );
}

fn event(timestamp: f64, name: &str) -> Value {
    json!({"type": "EVENT", "timestamp": timestamp, "name": name})
}

#[tokio::test]
async fn sessions_are_found_by_every_filter_as_their_reference_summaries() {
    // Sessions with a SESSION_END close as `ended` a second after it.
    let app = spawn_app_with(&[("SESSION_END_GRACE_SECS", "1")]).await;
    let mut written = BTreeMap::new();
    for i in 0..12u32 {
        let session = format!("shop-{i:02}");
        let start = 1_000.0 + f64::from(i) * 10.0;
        let mut first = vec![json!({"type": "SESSION_START", "timestamp": start})];
        first.push(event(
            start + 1.0,
            if i % 3 == 0 { "checkout" } else { "browse" },
        ));
        let mut frames = vec![Value::Array(first).to_string()];
        frames.push(json!([event(start + 2.0, &format!("step {i}"))]).to_string());
        if i % 2 == 0 {
            frames.push(json!([{"type": "SESSION_END", "timestamp": start + 5.0}]).to_string());
        }
        written.insert(session.clone(), write(&app, &session, &frames).await);
    }
    // A session without a start, and one with more names than a summary lists.
    let no_start = vec![json!([event(5.0, "lonely")]).to_string()];
    written.insert("other-a".into(), write(&app, "other-a", &no_start).await);
    let many: Vec<Value> = (0..40)
        .map(|n| event(7.0 + f64::from(n), &format!("n{n:02}")))
        .collect();
    let many = vec![Value::Array(many).to_string()];
    written.insert("other-b".into(), write(&app, "other-b", &many).await);

    // Everything is listed, each ended session closed, each item equal to the
    // reference summary of the reference fold of its frames.
    let mut expected = BTreeMap::new();
    for (session, frames) in &written {
        let document = expected_document(
            session,
            &frames.frames.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let (first, last) = arrivals(&app, &frames.sequences).await;
        let ended = document["end"].is_number();
        let state = if ended { "ended" } else { "open" };
        expected.insert(
            session.clone(),
            summarize(&document, Some(first), Some(last), state),
        );
    }
    let listed = eventually(
        "every session is listed as its reference summary",
        DEADLINE,
        || {
            let app = &app;
            let expected = &expected;
            async move {
                let items = all_pages(app, "limit=5").await;
                let by_id: BTreeMap<String, Value> = ids(&items).into_iter().zip(items).collect();
                (&by_id == expected).then_some(by_id)
            }
        },
    )
    .await;
    assert_eq!(listed["other-b"]["names"].as_array().unwrap().len(), 32);
    assert_eq!(listed["other-b"]["names_capped"], true);

    // The default order: by start, the sessions without one last.
    let items = all_pages(&app, "limit=4").await;
    let mut by_start: Vec<&String> = written.keys().filter(|id| id.starts_with("shop")).collect();
    by_start.sort_by(|a, b| {
        listed[*a]["start"]
            .as_f64()
            .partial_cmp(&listed[*b]["start"].as_f64())
            .unwrap()
    });
    let mut order: Vec<String> = by_start.into_iter().cloned().collect();
    let mut unstarted = vec!["other-a".to_owned(), "other-b".to_owned()];
    unstarted.sort_by_key(|id| listed[id]["first_arrival"].as_u64());
    order.extend(unstarted);
    assert_eq!(ids(&items), order);
    let mut reversed = order.clone();
    reversed.reverse();
    assert_eq!(ids(&all_pages(&app, "order=desc&limit=3").await), reversed);
    let mut by_activity: Vec<String> = written.keys().cloned().collect();
    by_activity.sort_by_key(|id| {
        (
            listed[id]["last_arrival"].as_u64(),
            sessionfold_core::SessionId::parse(id).unwrap().token(),
        )
    });
    assert_eq!(
        ids(&all_pages(&app, "sort=last_activity&limit=6").await),
        by_activity
    );

    // Each filter finds exactly the sessions whose summary passes it.
    let check = |query: &'static str, pass: Box<dyn Fn(&Value) -> bool>| {
        let app = &app;
        let listed = &listed;
        async move {
            let found: BTreeSet<String> = ids(&all_pages(app, query).await).into_iter().collect();
            let wanted: BTreeSet<String> = listed
                .iter()
                .filter(|(_, item)| pass(item))
                .map(|(id, _)| id.clone())
                .collect();
            assert!(!wanted.is_empty(), "{query} should find something");
            assert_eq!(found, wanted, "{query}");
        }
    };
    let start = |item: &Value| item["start"].as_f64();
    let end = |item: &Value| item["end"].as_f64();
    check(
        "start_from=1030&start_to=1070",
        Box::new(move |i| start(i).is_some_and(|s| (1030.0..=1070.0).contains(&s))),
    )
    .await;
    check(
        "start_from=1085",
        Box::new(move |i| start(i).is_some_and(|s| s >= 1085.0)),
    )
    .await;
    check(
        "end_to=1045",
        Box::new(move |i| end(i).is_some_and(|e| e <= 1045.0)),
    )
    .await;
    check(
        "end_from=1040&end_to=1100",
        Box::new(move |i| end(i).is_some_and(|e| (1040.0..=1100.0).contains(&e))),
    )
    .await;
    check("state=ended", Box::new(|i| i["state"] == "ended")).await;
    check("state=open,idle", Box::new(|i| i["state"] == "open")).await;
    check(
        "name=checkout",
        Box::new(|i| i["names"].as_array().unwrap().contains(&json!("checkout"))),
    )
    .await;
    check("name=step%207", Box::new(|i| i["session_id"] == "shop-07")).await;
    check("name=n05", Box::new(|i| i["session_id"] == "other-b")).await;
    check(
        "prefix=shop-0",
        Box::new(|i| i["session_id"].as_str().unwrap().starts_with("shop-0")),
    )
    .await;
    check(
        "prefix=other&state=open",
        Box::new(|i| i["session_id"].as_str().unwrap().starts_with("other")),
    )
    .await;
    check(
        "state=ended&name=checkout&start_to=1065",
        Box::new(move |i| {
            i["state"] == "ended"
                && i["names"].as_array().unwrap().contains(&json!("checkout"))
                && start(i).is_some_and(|s| s <= 1065.0)
        }),
    )
    .await;
    let (status, body) = sessions(&app, "name=nowhere").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"sessions": [], "next_cursor": null}))
    );
}

#[tokio::test]
async fn pages_have_no_duplicates_or_gaps_while_writes_go_on() {
    let app = spawn_app_with(&[]).await;
    let start = |i: u32| 10_000.0 + f64::from(i * 7 % 97);
    let mut before = BTreeSet::new();
    for i in 0..40u32 {
        let session = format!("p{i:03}");
        let frame =
            json!([{"type": "SESSION_START", "timestamp": start(i)}, event(start(i) + 1.0, "a")])
                .to_string();
        write(&app, &session, &[frame]).await;
        before.insert(session);
    }
    eventually("every session is indexed", DEADLINE, || {
        let app = &app;
        let before = &before;
        async move {
            let found: BTreeSet<String> = ids(&all_pages(app, "limit=100").await)
                .into_iter()
                .collect();
            (&found == before).then_some(())
        }
    })
    .await;

    // Pages of 3 by start while other sessions appear (new starts anywhere
    // in the range) and the listed ones get more events (their start stays).
    let (written, mut rounds) = tokio::sync::mpsc::channel::<()>(1);
    let base = format!("ws://{}/websocket", app.ingest_addr);
    let writer = tokio::spawn(async move {
        for i in 0..30u32 {
            let new = format!("{base}?session_id=q{i:03}");
            let frame =
                json!([{"type": "SESSION_START", "timestamp": 10_000.0 + f64::from(i * 13 % 97)}]);
            send_one(&new, &frame.to_string()).await;
            let old = format!("{base}?session_id=p{:03}", i % 40);
            send_one(
                &old,
                &json!([event(20_000.0 + f64::from(i), "b")]).to_string(),
            )
            .await;
            if written.send(()).await.is_err() {
                return;
            }
        }
    });
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("limit=3&cursor={cursor}"),
            None => "limit=3".to_owned(),
        };
        let (status, body) = sessions(&app, &query).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        items.extend(body["sessions"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        // A round of writes between every two pages.
        rounds.recv().await;
    }
    drop(rounds);
    writer.await.unwrap();
    let listed = ids(&items);
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a session served twice: {listed:?}"
    );
    assert!(
        before.is_subset(&unique),
        "a session skipped: {:?}",
        before.difference(&unique).collect::<Vec<_>>()
    );
    let keys: Vec<(f64, String)> = items
        .iter()
        .map(|item| {
            (
                item["start"].as_f64().unwrap(),
                sessionfold_core::SessionId::parse(item["session_id"].as_str().unwrap())
                    .unwrap()
                    .token(),
            )
        })
        .collect();
    assert!(
        keys.windows(2).all(|pair| pair[0] < pair[1]),
        "pages in order: {keys:?}"
    );
}

#[tokio::test]
async fn query_syntax_in_values_is_only_a_value() {
    let app = spawn_app_with(&[]).await;
    let hostile = [
        ("x') || startswith(@token, '", "} | @state:{open"),
        ("a*", "*"),
        ("b\\\"", "n\\\" @names:{x"),
        ("c -@start:[-inf +inf]", "-@start:[0 +inf] | *"),
    ];
    for (session, name) in hostile {
        let frame =
            json!([{"type": "SESSION_START", "timestamp": 1}, event(2.0, name)]).to_string();
        write(&app, session, &[frame]).await;
        write(
            &app,
            &format!("{session} twin"),
            &[json!([event(2.0, "plain")]).to_string()],
        )
        .await;
    }
    eventually("every session is indexed", DEADLINE, || {
        let app = &app;
        async move { (all_pages(app, "limit=100").await.len() == 8).then_some(()) }
    })
    .await;
    for (session, name) in hostile {
        let found = all_pages(&app, &format!("name={}", encode(name))).await;
        assert_eq!(ids(&found), [session], "name={name}");
        let found = all_pages(&app, &format!("prefix={}", encode(session))).await;
        let mut expected = vec![session.to_owned(), format!("{session} twin")];
        expected.sort_by_key(|id| if id.ends_with("twin") { 1 } else { 0 });
        assert_eq!(ids(&found), expected, "prefix={session}");
    }
    for (query, message) in [
        ("state=open)", "state"),
        ("sort=@token", "sort"),
        ("start_from=1%20%2Binf%5D", "start_from"),
        ("limit=100000", "limit"),
        ("cursor=%27%29%20%7C%7C%20%27", "cursor"),
    ] {
        let (status, body) = sessions(&app, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{query}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(message),
            "{body}"
        );
    }
}

#[tokio::test]
async fn without_the_query_engine_only_sessions_is_unavailable() {
    let nats = sessionfold_testkit::NatsServer::start().unwrap();
    let redis = RedisServer::start_with(RedisOptions {
        search: Some(false),
        ..RedisOptions::default()
    })
    .unwrap();
    let app = spawn_split_app_on(nats, redis, unique_names(), &[], &[]).await;
    let _processor = app.start_processor();
    let frame =
        r#"[{"type":"SESSION_START","timestamp":1},{"type":"EVENT","timestamp":2,"name":"a"}]"#;
    let mut producer = app.connect("plain").await;
    producer.send_accepted(frame).await;
    app.wait_for_document("plain", &expected_document("plain", &[frame]))
        .await;

    let (status, body) = sessions(&app, "limit=5").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "search_unavailable");
    let response = app
        .http
        .get(format!(
            "http://{}/data/children?session_id=plain",
            app.api_addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.unwrap();
    assert_eq!(
        page["children"],
        expected_document("plain", &[frame])["children"]
    );
    // Bad input is still told apart from the missing engine.
    let (status, body) = sessions(&app, "limit=0").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_query"))
    );
}
