//! What live streams and read-your-writes cost.
//!
//! - **SSE bytes per applied event**: a session of 100 000 children (frames
//!   published straight to JetStream, one processor), one watcher of
//!   `GET /data/stream`; then events applied one at a time (each frame
//!   published once the watcher has the one before), and the bytes the
//!   watcher received for them, against the events' own bytes (the api
//!   serves documents up to 64 MiB whole here: the session is ~12 MB). Before
//!   deltas the stream pushed the whole document after every apply: that
//!   cost is the `document` event's size, measured in the same run.
//! - **`min_seq` latency**: frames sent through ingest one at a time; from
//!   each accepted reply to the answer of `GET /data?min_seq=<its seq>`,
//!   against a plain `GET /data` sent at the same moment (which may come
//!   before the apply: how often it did is counted).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use sessionfold_client::sse::{LiveReplica, SseEvents};
use sessionfold_client::{FrameOutcome, Producer, ProducerConfig};
use sessionfold_core::SessionId;
use sessionfold_harness::{run_keys, run_subjects};

use crate::stats::Samples;
use crate::system::{Servers, unique_names};

/// What the SSE run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SseBytes {
    pub children: usize,
    pub document_bytes: usize,
    /// The `document` event as sent (what every apply cost before deltas).
    pub document_event_bytes: usize,
    pub events: usize,
    pub event_bytes: f64,
    pub pushed_bytes_per_event: f64,
    /// `delta` events received (one per apply when applies are apart).
    pub deltas: usize,
    pub documents_after_start: usize,
}

fn child(i: usize) -> String {
    // The shape and size of the load generator's events with a payload.
    format!(
        r#"{{"type":"EVENT","timestamp":{},"name":"event_{i}","id":"e{i}","data":{{"page":"/p/{}","n":{},"tags":["a","b"]}}}}"#,
        1_764_547_200 + i,
        i % 20,
        (i * 7) % 1000
    )
}

/// The watcher's side of one stream: its events, and the bytes received.
struct Watch {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: SseEvents,
    replica: LiveReplica,
    bytes: usize,
    counts: std::collections::BTreeMap<String, usize>,
    document_event_bytes: usize,
}

impl Watch {
    /// Reads until the replica is at `revision` or past it.
    async fn until_revision(&mut self, revision: u64) -> anyhow::Result<()> {
        while self.replica.revision < revision || self.replica.document().is_none() {
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.body.next())
                .await
                .context("no event within 60 s")?
                .context("the stream ended")??;
            self.bytes += chunk.len();
            for event in self.parser.push(&chunk) {
                if event.name == "end" {
                    bail!("the stream ended: {}", event.data);
                }
                if event.name == "document" && self.document_event_bytes == 0 {
                    self.document_event_bytes = event.data.len()
                        + "event: document\nid: \ndata: \n\n".len()
                        + event.id.as_deref().map_or(0, str::len);
                }
                *self.counts.entry(event.name.clone()).or_default() += 1;
                self.replica
                    .apply(&event)
                    .map_err(|err| anyhow::anyhow!("replaying the stream: {err}"))?;
            }
        }
        Ok(())
    }
}

/// Bytes a watcher of a `children`-child session receives per applied event.
pub async fn sse_bytes(
    servers: &Servers,
    children: usize,
    events: usize,
) -> anyhow::Result<SseBytes> {
    let names = unique_names();
    let processors = servers.start_processors(&names, 1).await?;
    // 100 000 children of this size are ~12 MB, over the default 8 MiB a
    // document is served whole.
    let api = servers
        .start_live_api(
            &names,
            &[("API_MAX_DOCUMENT_BYTES", (64u64 << 20).to_string())],
        )
        .await?;
    let js = servers.jetstream().await?;
    let subjects = run_subjects(&names);
    let session = SessionId::parse("live-bytes")?;
    let subject = subjects.event(&session);
    let publish = |n: usize, frame: String| {
        let js = js.clone();
        let subject = subject.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("live-{n}").as_str());
            js.publish_with_headers(subject, headers, frame.into())
                .await?
                .await
                .context("publishing a frame")?;
            anyhow::Ok(())
        }
    };
    // The session, 1 000 children a frame.
    for (n, from) in (0..children).step_by(1000).enumerate() {
        let frame: Vec<String> = (from..(from + 1000).min(children)).map(child).collect();
        publish(n, format!("[{}]", frame.join(","))).await?;
    }
    let doc_key = run_keys(&names).session(&session).doc;
    let mut redis = servers.redis_connection().await?;
    let started = Instant::now();
    loop {
        let len: Vec<Option<usize>> = redis::cmd("JSON.ARRLEN")
            .arg(&doc_key)
            .arg("$.children")
            .query_async(&mut redis)
            .await
            .unwrap_or_default();
        if len.first().copied().flatten() == Some(children) {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the {children}-child session was not applied in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let url = format!(
        "http://{}/data/stream?session_id={}",
        api.addr(),
        session.as_str()
    );
    let response = reqwest::get(&url).await?.error_for_status()?;
    let mut watch = Watch {
        body: response.bytes_stream().boxed(),
        parser: SseEvents::default(),
        replica: LiveReplica::default(),
        bytes: 0,
        counts: Default::default(),
        document_event_bytes: 0,
    };
    watch.until_revision(1).await?;
    let document_bytes = watch.replica.document().map_or(0, |d| d.len());
    let start_bytes = watch.bytes;
    let documents_at_start = watch.counts.get("document").copied().unwrap_or(0);
    let mut event_bytes = 0usize;
    let first_frame = children.div_ceil(1000);
    for k in 0..events {
        // Every fourth one out of order, so some go in before the end.
        let i = children + k;
        let mut event = child(i);
        if k % 4 == 3 {
            event = event.replace(
                &format!("\"timestamp\":{}", 1_764_547_200 + i),
                &format!("\"timestamp\":{}", 1_764_547_200 + i - 500),
            );
        }
        event_bytes += event.len();
        let revision = watch.replica.revision;
        publish(first_frame + k, format!("[{event}]")).await?;
        watch.until_revision(revision + 1).await?;
    }
    let pushed = watch.bytes - start_bytes;
    let expected: Vec<u8> = redis::cmd("JSON.GET")
        .arg(&doc_key)
        .query_async(&mut redis)
        .await?;
    if watch.replica.document().map(String::into_bytes) != Some(expected) {
        bail!("the replayed stream differs from the stored document");
    }
    let result = SseBytes {
        children,
        document_bytes,
        document_event_bytes: watch.document_event_bytes,
        events,
        event_bytes: event_bytes as f64 / events as f64,
        pushed_bytes_per_event: pushed as f64 / events as f64,
        deltas: watch.counts.get("delta").copied().unwrap_or(0),
        documents_after_start: watch.counts.get("document").copied().unwrap_or(0)
            - documents_at_start,
    };
    drop(watch);
    drop(api);
    drop(processors);
    servers.clean(&names).await?;
    Ok(result)
}

/// What the `min_seq` run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MinSeqLatency {
    pub frames: usize,
    pub processors: usize,
    pub min_seq_p50_ms: f64,
    pub min_seq_p99_ms: f64,
    pub plain_p50_ms: f64,
    pub plain_p99_ms: f64,
    /// Plain reads that did not hold their frame yet.
    pub plain_missed: usize,
}

/// From each accepted reply to `GET /data?min_seq=…`, one frame at a time.
pub async fn min_seq_latency(
    servers: &Servers,
    frames: usize,
    processors: usize,
) -> anyhow::Result<MinSeqLatency> {
    let names = unique_names();
    let running = servers.start_processors(&names, processors).await?;
    let ingest = servers.start_ingest(&names).await?;
    let api = servers.start_live_api(&names, &[]).await?;
    let producer = Producer::new(ProducerConfig::new(&format!(
        "ws://{}/websocket",
        ingest.addr()
    ))?);
    let mut sender = producer.session("live-min-seq")?;
    let http = reqwest::Client::new();
    let data = format!("http://{}/data?session_id=live-min-seq", api.addr());
    let mut with_min_seq = Samples::new();
    let mut plain = Samples::new();
    let mut plain_missed = 0;
    for i in 0..frames {
        let frame = format!("[{}]", child(i));
        let seq = match sender.send_frame(&frame).await? {
            FrameOutcome::Accepted { seq: Some(seq), .. } => seq,
            other => bail!("frame {i} was not accepted: {other:?}"),
        };
        let acked = Instant::now();
        let waited = http
            .get(format!("{data}&min_seq={seq}&wait_ms=10000"))
            .send();
        let unwaited = http.get(&data).send();
        let (waited, unwaited) = tokio::join!(
            async {
                let response = waited.await?.error_for_status()?;
                let body = response.bytes().await?;
                anyhow::Ok((acked.elapsed(), body))
            },
            async {
                let response = unwaited.await?;
                let status = response.status();
                let body = response.bytes().await?;
                anyhow::Ok((acked.elapsed(), status, body))
            }
        );
        let (waited, body) = waited?;
        let needle = format!("\"name\":\"event_{i}\"");
        if !String::from_utf8_lossy(&body).contains(&needle) {
            bail!("a min_seq read of frame {i} did not hold it");
        }
        with_min_seq.push(waited);
        let (took, status, body) = unwaited?;
        plain.push(took);
        if !status.is_success() || !String::from_utf8_lossy(&body).contains(&needle) {
            plain_missed += 1;
        }
    }
    sender.close().await;
    drop(api);
    drop(ingest);
    drop(running);
    servers.clean(&names).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(MinSeqLatency {
        frames,
        processors,
        min_seq_p50_ms: ms(with_min_seq.p50()),
        min_seq_p99_ms: ms(with_min_seq.p99()),
        plain_p50_ms: ms(plain.p50()),
        plain_p99_ms: ms(plain.p99()),
        plain_missed,
    })
}
