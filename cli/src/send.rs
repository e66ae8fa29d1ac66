//! `sessionfold send`: sends events from files to a session over the
//! WebSocket, in frames, and waits until every frame is acknowledged;
//! `sessionfold get`: prints a session's document.

use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use sessionfold_client::sse::{LiveReplica, SseEvents};
use sessionfold_client::{FrameOutcome, Producer, ProducerConfig};

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The session the events belong to.
    #[arg(long)]
    pub session: String,
    /// Files of events: a JSON array, or one JSON event per line (NDJSON).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The WebSocket endpoint.
    #[arg(
        long,
        env = "SESSIONFOLD_URL",
        default_value = "ws://localhost:8080/websocket"
    )]
    pub url: String,
    /// Bearer credential (an API key or a session token).
    #[arg(long, env = "SESSIONFOLD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Most events in one frame.
    #[arg(long, default_value_t = 500)]
    pub events_per_frame: usize,
    /// Most bytes in one frame (stay under the server's MAX_FRAME_BYTES).
    #[arg(long, default_value_t = 512 * 1024)]
    pub frame_bytes: usize,
    /// Then print the document, read with `min_seq` (the last frame's
    /// `seq`): it holds every event sent, without guessing a delay.
    #[arg(long)]
    pub then_get: bool,
    /// The api's base URL, for `--then-get`.
    #[arg(long, env = "SESSIONFOLD_API", default_value = "http://localhost:8080")]
    pub api: String,
    /// How long `--then-get` lets the api wait for the apply, in
    /// milliseconds (at most the api's API_MAX_WAIT_MS).
    #[arg(long, default_value_t = 10_000)]
    pub wait_ms: u64,
}

/// Reads events from a JSON array or NDJSON text.
pub fn read_events(text: &str) -> anyhow::Result<Vec<Value>> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text).context("reading a JSON array of events");
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", number + 1))
        })
        .collect()
}

/// Packs events into frames of at most `max_events` events and about
/// `max_bytes` bytes (a single larger event travels alone).
pub fn frames(events: &[Value], max_events: usize, max_bytes: usize) -> Vec<String> {
    let mut frames = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut size = 2;
    for event in events {
        let text = event.to_string();
        if !current.is_empty()
            && (current.len() >= max_events.max(1) || size + text.len() + 1 > max_bytes)
        {
            frames.push(format!("[{}]", current.join(",")));
            current.clear();
            size = 2;
        }
        size += text.len() + 1;
        current.push(text);
    }
    if !current.is_empty() {
        frames.push(format!("[{}]", current.join(",")));
    }
    frames
}

pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let mut events = Vec::new();
    for file in &args.files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        events.extend(read_events(&text).with_context(|| file.display().to_string())?);
    }
    let frames = frames(&events, args.events_per_frame, args.frame_bytes);
    let mut config = ProducerConfig::new(&args.url)?;
    if let Some(token) = &args.token {
        config = config.with_bearer_token(token)?;
    }
    let producer = Producer::new(config);
    let mut sender = producer.session(&args.session)?;

    let progress = ProgressBar::new(events.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} {eta}")
            .expect("a valid template"),
    );
    if frames.len() < 2 {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut accepted = 0usize;
    let mut last_seq: Option<u64> = None;
    let mut rejected = Vec::new();
    for (index, frame) in frames.into_iter().enumerate() {
        match sender.send_frame(&frame).await {
            Ok(FrameOutcome::Accepted { events, seq }) => {
                accepted += events;
                last_seq = seq.max(last_seq);
                progress.inc(events as u64);
            }
            Ok(FrameOutcome::Rejected(error)) => rejected.push((index + 1, error)),
            Err(err) => {
                progress.abandon();
                anyhow::bail!("frame {} was not acknowledged: {err}", index + 1);
            }
        }
    }
    progress.finish_and_clear();
    let counters = sender.counters();
    sender.close().await;
    println!(
        "{accepted} events acknowledged in {} frames ({} resent, {} reconnects)",
        counters.acked,
        counters
            .attempts
            .saturating_sub(counters.acked + counters.rejected),
        counters.reconnects
    );
    for (frame, error) in &rejected {
        eprintln!(
            "frame {frame} rejected: {} {}{}",
            error.code.as_str(),
            error.message,
            error
                .index
                .map(|i| format!(" (event {i})"))
                .unwrap_or_default()
        );
    }
    anyhow::ensure!(
        rejected.is_empty(),
        "{} frames were rejected",
        rejected.len()
    );
    if args.then_get {
        let read = ReadArgs {
            session: args.session.clone(),
            api: args.api.clone(),
            token: args.token.clone(),
        };
        let mut query = Vec::new();
        if let Some(seq) = last_seq {
            query.push(("min_seq", seq.to_string()));
            query.push(("wait_ms", args.wait_ms.to_string()));
        }
        print_document(&read, &query).await?;
    }
    Ok(())
}

/// Arguments of `get` and `tail`.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// The session to read.
    pub session: String,
    /// The api's base URL.
    #[arg(long, env = "SESSIONFOLD_API", default_value = "http://localhost:8080")]
    pub api: String,
    /// Bearer credential (an API key or a read token).
    #[arg(long, env = "SESSIONFOLD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ReadArgs {
    /// `GET <api><path>?session_id=…` with the credential, answered 2xx.
    async fn request(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.request_with(path, &[]).await
    }

    /// The same with more query parameters.
    async fn request_with(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<reqwest::Response> {
        let mut url = url::Url::parse(&self.api)?.join(path)?;
        url.query_pairs_mut()
            .append_pair("session_id", &self.session);
        for (name, value) in query {
            url.query_pairs_mut().append_pair(name, value);
        }
        let mut request = reqwest::Client::new().get(url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            anyhow::bail!(
                "{status} {}: {}",
                body["error"]["code"].as_str().unwrap_or(""),
                body["error"]["message"].as_str().unwrap_or("error")
            );
        }
        Ok(response)
    }
}

/// Prints a session's document, pretty.
pub async fn get(args: ReadArgs) -> anyhow::Result<()> {
    print_document(&args, &[]).await
}

async fn print_document(args: &ReadArgs, query: &[(&str, String)]) -> anyhow::Result<()> {
    let body: Value = args
        .request_with("/data", query)
        .await?
        .json()
        .await
        .context("the api did not answer JSON")?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

/// Follows `GET /data/stream`, printing the document (one JSON line) each
/// time it changes, rebuilt from the stream's deltas, until the stream
/// ends or Ctrl-C.
pub async fn tail(args: ReadArgs) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let response = args.request("/data/stream").await?;
    let mut events = SseEvents::default();
    let mut replica = LiveReplica::default();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        for event in events.push(&chunk?) {
            replica
                .apply(&event)
                .with_context(|| format!("replaying the {} event", event.name))?;
            match event.name.as_str() {
                "document" | "delta" => {
                    if let Some(document) = replica.document() {
                        println!("{document}");
                    }
                }
                "state" => eprintln!("state: {}", event.data),
                "end" => eprintln!("stream ended: {}", event.data),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_ndjson_are_read() {
        let array = read_events(r#" [{"a":1},{"b":2}]"#).unwrap();
        let lines = read_events("{\"a\":1}\n\n{\"b\":2}\n").unwrap();
        assert_eq!(array, lines);
        assert!(read_events("{\"a\":1}\nnope").is_err());
    }

    #[test]
    fn events_are_packed_by_count_and_size() {
        let events: Vec<Value> = (0..5).map(|i| serde_json::json!({"i": i})).collect();
        assert_eq!(frames(&events, 2, 1 << 20).len(), 3);
        assert_eq!(frames(&events, 100, 15).len(), 5);
        let all = frames(&events, 100, 1 << 20);
        assert_eq!(all, vec![r#"[{"i":0},{"i":1},{"i":2},{"i":3},{"i":4}]"#]);
    }
}
