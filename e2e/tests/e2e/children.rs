//! `GET /data/children` against the real system: pages by position
//! concatenate to the document's children byte for byte, pages by
//! timestamp hold exactly the children in the range, the limits and bad
//! input get their stable errors, and the 413 of `GET /data` leads here.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sessionfold_core::SeededRng;

use crate::helpers::{TestApp, expected_document, spawn_app_with};

async fn get(app: &TestApp, path_and_query: &str) -> (StatusCode, Vec<u8>) {
    let response = app
        .http
        .get(format!("http://{}{path_and_query}", app.api_addr))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.bytes().await.unwrap().to_vec())
}

/// The bytes of the `children` array in a body that ends with it.
fn children_bytes(body: &[u8]) -> &[u8] {
    let text = std::str::from_utf8(body).unwrap();
    let at = text.find(r#""children":"#).unwrap() + r#""children":"#.len();
    &body[at..body.len() - 1]
}

/// Frames of `count` children in all, out of order, with equal timestamps
/// and numbers written in ways a parser might normalize.
fn frames(count: usize) -> Vec<String> {
    let mut rng = SeededRng::new(7);
    let mut events: Vec<Value> = (0..count)
        .map(|i| {
            let timestamp = (i / 3) as f64 + if i % 7 == 0 { 0.5 } else { 0.0 };
            json!({"type": "EVENT", "timestamp": timestamp, "name": format!("e{}", i % 11), "i": i})
        })
        .collect();
    for i in (1..events.len()).rev() {
        events.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut frames: Vec<String> = events
        .chunks(400)
        .map(|chunk| Value::Array(chunk.to_vec()).to_string())
        .collect();
    // Bytes a re-serialization would change.
    frames.push(r#"[{"type":"EVENT","timestamp":3.50,"n":1e3,"s":"é\u00e9"}]"#.to_owned());
    frames
}

#[tokio::test]
async fn pages_concatenate_to_the_document_and_ranges_hold_their_children() {
    let app = spawn_app_with(&[("API_CHILDREN_MAX_PAGE", "500")]).await;
    let session = "big session";
    let frames = frames(2_500);
    let mut producer = app.connect(session).await;
    for frame in &frames {
        producer.send_accepted(frame).await;
    }
    let expected = expected_document(
        session,
        &frames.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    app.wait_for_document(session, &expected).await;
    let (status, document) = get(&app, "/data?session_id=big%20session").await;
    assert_eq!(status, StatusCode::OK);
    let whole = children_bytes(&document);

    // By position, in pages of 333: the pages' children, joined, are the
    // document's bytes.
    let mut joined: Vec<u8> = Vec::new();
    let mut from = 0;
    loop {
        let (status, body) = get(
            &app,
            &format!("/data/children?session_id=big%20session&from={from}&limit=333"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let page: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(page["total"], 2_501);
        assert_eq!(page["from"], from);
        let inner = children_bytes(&body);
        let inner = &inner[1..inner.len() - 1];
        if !inner.is_empty() {
            if !joined.is_empty() {
                joined.push(b',');
            }
            joined.extend_from_slice(inner);
        }
        match page["next"].as_u64() {
            Some(next) => {
                assert_eq!(next, from + 333);
                from = next;
            }
            None => break,
        }
    }
    assert_eq!(
        String::from_utf8([b"[".as_slice(), &joined, b"]"].concat()).unwrap(),
        String::from_utf8(whole.to_vec()).unwrap()
    );

    // By timestamp: exactly the children in [since, until], in pages that
    // continue with `from=next`.
    let children = expected["children"].as_array().unwrap();
    for (since, until, limit) in [
        (Some(100.0), Some(200.0), 500),
        (Some(100.0), Some(200.0), 37),
        (Some(3.5), Some(3.5), 10),
        (None, Some(10.0), 7),
        (Some(830.0), None, 500),
        (Some(9_999.0), None, 5),
        (Some(-1.0), Some(-0.5), 5),
    ] {
        let wanted: Vec<&Value> = children
            .iter()
            .filter(|child| {
                let t = child["timestamp"].as_f64().unwrap();
                since.is_none_or(|since| t >= since) && until.is_none_or(|until| t <= until)
            })
            .collect();
        let mut query = format!("/data/children?session_id=big%20session&limit={limit}");
        if let Some(since) = since {
            query += &format!("&since={since}");
        }
        if let Some(until) = until {
            query += &format!("&until={until}");
        }
        let mut got: Vec<Value> = Vec::new();
        let mut next = 0;
        loop {
            let (status, body) = get(&app, &format!("{query}&from={next}")).await;
            assert_eq!(status, StatusCode::OK, "{query}");
            let page: Value = serde_json::from_slice(&body).unwrap();
            let served = page["children"].as_array().unwrap();
            assert!(served.len() <= limit);
            got.extend(served.iter().cloned());
            match page["next"].as_u64() {
                Some(position) => next = position,
                None => break,
            }
        }
        assert_eq!(got.iter().collect::<Vec<_>>(), wanted, "{query}");
    }

    // An empty range is an empty page where it would have started.
    let (status, body) = get(
        &app,
        "/data/children?session_id=big%20session&since=5&until=4",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (&page["children"], &page["next"]),
        (&json!([]), &Value::Null)
    );
    // A position past the end is an empty page; bad input is refused.
    let (status, body) = get(&app, "/data/children?session_id=big%20session&from=9999").await;
    assert_eq!(status, StatusCode::OK);
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        page,
        json!({"total": 2501, "from": 2501, "next": null, "children": []})
    );
    for (query, status, code) in [
        ("session_id=nobody", StatusCode::NOT_FOUND, "not_found"),
        ("", StatusCode::BAD_REQUEST, "invalid_session_id"),
        (
            "session_id=big%20session&limit=501",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "session_id=big%20session&limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "session_id=big%20session&from=-1",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "session_id=big%20session&since=NaN",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "session_id=big%20session&until=1e999",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
    ] {
        let (got, body) = get(&app, &format!("/data/children?{query}")).await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{query}: {body}"
        );
    }
}

#[tokio::test]
async fn a_document_too_large_for_get_data_is_read_in_pages() {
    let app = spawn_app_with(&[("API_MAX_DOCUMENT_BYTES", "20000")]).await;
    let session = "large";
    let frames = frames(600);
    let mut producer = app.connect(session).await;
    for frame in &frames {
        producer.send_accepted(frame).await;
    }
    let expected = expected_document(
        session,
        &frames.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let body = sessionfold_testkit::eventually(
        "GET /data refuses the document",
        crate::helpers::DEADLINE,
        || {
            let app = &app;
            async move {
                let (status, body) = get(app, "/data?session_id=large").await;
                (status == StatusCode::PAYLOAD_TOO_LARGE).then_some(body)
            }
        },
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("GET /data/children?session_id="),
        "{message}"
    );

    let mut children: Vec<Value> = Vec::new();
    let mut from = 0;
    loop {
        let (status, body) = get(
            &app,
            &format!("/data/children?session_id=large&from={from}&limit=100"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let page: Value = serde_json::from_slice(&body).unwrap();
        children.extend(page["children"].as_array().unwrap().iter().cloned());
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(Value::Array(children), expected["children"]);
    // A page over the size limit is refused as such.
    let (status, body) = get(&app, "/data/children?session_id=large&limit=600").await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("page_too_large"))
    );
}
