//! `GET /data/stream` pushes deltas from the update notes: in revision
//! order whatever order the notes come in, without reading the document;
//! a gap that does not fill, or a note without `changes`, makes it read the
//! document and send it whole; a state note becomes a `state` event.

use std::time::Duration;

use futures::StreamExt;
use sessionfold_client::sse::{LiveReplica, SseEvent, SseEvents};
use sessionfold_core::SessionId;

use crate::harness::{Api, UPDATES_PREFIX, doc_key, start_api};

const SESSION: &str = "deltas";

async fn publish_note(api: &Api, note: &str) {
    let client = async_nats::connect(api.nats.url()).await.unwrap();
    let subject = sessionfold_core::Subjects {
        updates_prefix: UPDATES_PREFIX.to_owned(),
        ..sessionfold_core::Subjects::default()
    }
    .update(&SessionId::parse(SESSION).unwrap());
    client
        .publish(subject, note.to_owned().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
}

/// Stores `document` at `revision`, as an apply step would.
async fn store_at(api: &Api, document: &str, revision: u64) {
    let mut redis = api.redis().await;
    let session = SessionId::parse(SESSION).unwrap();
    let keys = sessionfold_core::Keys::default().session(&session);
    let _: () = redis::pipe()
        .atomic()
        .cmd("JSON.SET")
        .arg(doc_key(SESSION))
        .arg("$")
        .arg(document)
        .ignore()
        .cmd("HSET")
        .arg(&keys.state)
        .arg("rev")
        .arg(revision)
        .ignore()
        .query_async(&mut redis)
        .await
        .unwrap();
}

struct Stream {
    events: tokio::sync::mpsc::UnboundedReceiver<SseEvent>,
}

impl Stream {
    async fn open(api: &Api) -> Self {
        let response = api
            .http
            .get(api.url(&format!("/data/stream?session_id={SESSION}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut parser = SseEvents::default();
            while let Some(Ok(chunk)) = body.next().await {
                for event in parser.push(&chunk) {
                    let _ = tx.send(event);
                }
            }
        });
        Self { events }
    }

    async fn next(&mut self) -> SseEvent {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .expect("an event in time")
            .expect("the stream stays open")
    }
}

fn doc(children: &[&str], start: &str, end: &str) -> String {
    format!(
        r#"{{"session_id":"{SESSION}","type":"SESSION","start":{start},"end":{end},"children":[{}]}}"#,
        children.join(",")
    )
}

const A: &str = r#"{"type":"EVENT","timestamp":1,"name":"a"}"#;
const B: &str = r#"{"type":"EVENT","timestamp":2,"name":"b"}"#;
const C: &str = r#"{"type":"EVENT","timestamp":3,"name":"c"}"#;
const D: &str = r#"{"type":"EVENT","timestamp":4,"name":"d"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_become_ordered_deltas_and_gaps_a_document() {
    let api = start_api(|_| {}).await;
    store_at(&api, &doc(&[C], "null", "null"), 5).await;
    let mut stream = Stream::open(&api).await;
    let mut replica = LiveReplica::default();
    let first = stream.next().await;
    assert_eq!(
        (first.name.as_str(), first.id.as_deref()),
        ("document", Some("5"))
    );
    replica.apply(&first).unwrap();
    let gets = api.json_gets().await;

    // Revision 7 comes before 6 (two processors): the deltas come in
    // revision order, and nothing is read.
    publish_note(
        &api,
        &format!(r#"{{"session_id":"{SESSION}","written":1,"revision":7,"end":9,"changes":[{{"insert":3,"children":[{D}]}}]}}"#),
    )
    .await;
    publish_note(
        &api,
        &format!(r#"{{"session_id":"{SESSION}","written":2,"revision":6,"start":0.5,"changes":[{{"insert":0,"children":[{A},{B}]}}]}}"#),
    )
    .await;
    // A step that changed nothing repeats revision 7: it is no delta.
    publish_note(
        &api,
        &format!(r#"{{"session_id":"{SESSION}","written":0,"revision":7,"start":0.1,"changes":[],"unchanged":true}}"#),
    )
    .await;
    let mut ids = Vec::new();
    while replica.revision < 7 {
        let event = stream.next().await;
        assert_eq!(event.name, "delta", "{event:?}");
        ids.push(event.id.clone().unwrap());
        replica.apply(&event).unwrap();
    }
    assert_eq!(
        replica.document().unwrap(),
        doc(&[A, B, C, D], "0.5", "9"),
        "deltas {ids:?}"
    );
    assert_eq!(api.json_gets().await, gets, "deltas read nothing");

    // Revision 9 without 8: after a short wait the document is read and
    // sent whole.
    let stored = doc(&[A, C, D], "0.5", "9");
    store_at(&api, &stored, 9).await;
    publish_note(
        &api,
        &format!(
            r#"{{"session_id":"{SESSION}","written":0,"revision":9,"changes":[{{"remove":1}}]}}"#
        ),
    )
    .await;
    let event = stream.next().await;
    assert_eq!(
        (event.name.as_str(), event.id.as_deref()),
        ("document", Some("9"))
    );
    assert_eq!(event.data, stored);

    // A note without changes (too many bytes for one): read and sent whole.
    let stored = doc(&[A, B, C, D], "0.5", "9");
    store_at(&api, &stored, 10).await;
    publish_note(
        &api,
        &format!(r#"{{"session_id":"{SESSION}","written":1,"revision":10}}"#),
    )
    .await;
    let event = stream.next().await;
    assert_eq!(
        (event.name.as_str(), event.id.as_deref()),
        ("document", Some("10"))
    );
    assert_eq!(event.data, stored);

    // The session closes: a state event at its revision.
    publish_note(
        &api,
        &format!(r#"{{"session_id":"{SESSION}","written":0,"revision":10,"state":"idle"}}"#),
    )
    .await;
    let event = stream.next().await;
    assert_eq!(
        (event.name.as_str(), event.id.as_deref()),
        ("state", Some("10"))
    );
    assert_eq!(event.data, r#"{"state":"idle"}"#);

    // A watcher that joins now gets the document and its state.
    let mut late = Stream::open(&api).await;
    let event = late.next().await;
    assert_eq!(
        (event.name.as_str(), event.id.as_deref()),
        ("document", Some("10"))
    );
    assert_eq!(event.data, stored);
    let event = late.next().await;
    assert_eq!(event.data, r#"{"state":"idle"}"#);
}
