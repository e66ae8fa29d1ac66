//! Live deltas (docs/design.md §3.2): a client that replays
//! `GET /data/stream` (the document, then deltas, a document again after a
//! gap) ends with the document `GET /data` serves, byte for byte, with two
//! processors applying frames that arrive out of order and again; a
//! watcher that joins midway too; and it is told the session's state.

use futures::StreamExt;
use reqwest::StatusCode;
use sessionfold_client::sse::{LiveReplica, SseEvents};
use sessionfold_core::SeededRng;

use crate::helpers::{DEADLINE, TestApp, spawn_split_app};

/// A watcher of one session's live stream, replaying it.
struct Watcher {
    events: tokio::sync::mpsc::UnboundedReceiver<sessionfold_client::sse::SseEvent>,
    replica: LiveReplica,
    counts: std::collections::BTreeMap<String, usize>,
}

impl Watcher {
    async fn open(app: &TestApp, session: &str) -> Self {
        let mut url = app.data_url(Some(session));
        url.set_path("/data/stream");
        let response = app.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut parser = SseEvents::default();
            while let Some(Ok(chunk)) = body.next().await {
                for event in parser.push(&chunk) {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            events,
            replica: LiveReplica::default(),
            counts: Default::default(),
        }
    }

    /// Replays events until `done` holds, within the deadline.
    async fn until(&mut self, what: &str, done: impl Fn(&LiveReplica) -> bool) {
        let reached = tokio::time::timeout(DEADLINE, async {
            while !done(&self.replica) {
                let event = self.events.recv().await.expect("the stream stays open");
                assert_ne!(event.name, "end", "the stream ended: {}", event.data);
                *self.counts.entry(event.name.clone()).or_default() += 1;
                if event.name == "delta" {
                    *self.counts.entry("removals".to_owned()).or_default() +=
                        event.data.matches(r#"{"remove":"#).count();
                }
                self.replica
                    .apply(&event)
                    .unwrap_or_else(|err| panic!("{err}: {event:?}"));
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "the replayed stream never reached {what}; it holds {:?} ({:?})",
            self.replica.document(),
            self.counts
        );
    }

    fn count(&self, name: &str) -> usize {
        self.counts.get(name).copied().unwrap_or(0)
    }
}

/// The document's bytes as `GET /data` serves them, once every frame up to
/// `seq` is applied.
async fn served(app: &TestApp, session: &str, seq: u64) -> String {
    let mut url = app.data_url(Some(session));
    url.query_pairs_mut()
        .append_pair("min_seq", &seq.to_string())
        .append_pair("wait_ms", "10000");
    let response = app.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// A seeded frame of 1–4 events: timestamps out of order, some events sent
/// again (by `id` or as the same content), now and then bounds.
fn frame(rng: &mut SeededRng, producer: usize, i: usize) -> String {
    let mut events = Vec::new();
    for k in 0..1 + rng.below(4) {
        let timestamp = rng.below(1000) as f64 / 4.0;
        let event = match rng.below(10) {
            // The same identity as an event of another frame: the earliest
            // arrival wins, so a later apply of an earlier frame replaces it.
            0..=1 => format!(
                r#"{{"type":"EVENT","timestamp":{timestamp},"id":"dup-{}","from":{producer}}}"#,
                rng.below(20)
            ),
            2 => r#"{"type":"EVENT","timestamp":7,"name":"same"}"#.to_owned(),
            3 => format!(
                r#"{{"type":"SESSION_START","timestamp":{}}}"#,
                rng.below(100)
            ),
            _ => format!(
                r#"{{"type":"EVENT","timestamp":{timestamp},"name":"p{producer}-{i}-{k}"}}"#
            ),
        };
        events.push(event);
    }
    format!("[{}]", events.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_deltas_give_the_served_document_byte_for_byte() {
    let app = std::sync::Arc::new(spawn_split_app().await);
    let _a = app.start_processor_with(&[("SESSION_END_GRACE_SECS", "1")]);
    let _b = app.start_processor_with(&[("SESSION_END_GRACE_SECS", "1")]);
    const SESSION: &str = "replay";
    let mut early = Watcher::open(&app, SESSION).await;

    // Two producers of the one session, 150 frames each (and every tenth
    // twice), at once; the first says when it is half way.
    let (half_way, halfway_reached) = tokio::sync::oneshot::channel::<()>();
    let mut half_way = Some(half_way);
    let mut tasks = Vec::new();
    for producer in 0..2 {
        let app = app.clone();
        let half_way = if producer == 0 { half_way.take() } else { None };
        tasks.push(tokio::spawn(async move {
            let mut half_way = half_way;
            let mut rng = SeededRng::new(20_261_201 + producer as u64);
            let mut socket = app.connect(SESSION).await;
            let mut last = 0;
            for i in 0..150 {
                if i == 75
                    && let Some(half_way) = half_way.take()
                {
                    let _ = half_way.send(());
                }
                let sent = frame(&mut rng, producer, i);
                let reply = socket.send_and_reply(&sent).await;
                last = last.max(reply.seq().unwrap_or_else(|| panic!("{reply:?}")));
                // Now and then the same frame again: a step that changes
                // nothing, whose note repeats a revision.
                if i % 10 == 9 {
                    let reply = socket.send_and_reply(&sent).await;
                    last = last.max(reply.seq().unwrap_or_else(|| panic!("{reply:?}")));
                }
            }
            last
        }));
    }
    // One more watcher joins while the frames come.
    halfway_reached.await.unwrap();
    let mut late = Watcher::open(&app, SESSION).await;
    let mut last = 0;
    for task in tasks {
        last = last.max(task.await.unwrap());
    }
    let expected = served(&app, SESSION, last).await;
    for watcher in [&mut early, &mut late] {
        watcher
            .until("the served document", |replica| {
                replica.document().as_deref() == Some(expected.as_str())
            })
            .await;
    }
    println!(
        "{} bytes replayed byte for byte: the early watcher got {:?}, the late one {:?}",
        expected.len(),
        early.counts,
        late.counts
    );
    assert!(early.count("delta") > 0, "{:?}", early.counts);
    // A document on start and after a gap that did not fill; one per
    // apply would be hundreds.
    assert!(
        early.count("document") * 10 <= early.count("delta"),
        "{:?}",
        early.counts
    );

    // The session ends: the stream says so, and a frame within the
    // allowed lateness opens it again with one more delta.
    let mut socket = app.connect(SESSION).await;
    socket
        .send_accepted(r#"[{"type":"SESSION_END","timestamp":900}]"#)
        .await;
    early
        .until("the state ended", |replica| {
            replica.state.as_deref() == Some("ended")
        })
        .await;
    let mut socket = app.connect(SESSION).await;
    let reply = socket
        .send_and_reply(r#"[{"type":"EVENT","timestamp":950,"name":"late"}]"#)
        .await;
    let expected = served(&app, SESSION, reply.seq().unwrap()).await;
    early
        .until("open again with the late event", |replica| {
            replica.state.as_deref() == Some("open")
                && replica.document().as_deref() == Some(expected.as_str())
        })
        .await;
    assert!(expected.contains(r#""end":900"#), "{expected}");
}
