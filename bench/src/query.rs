//! Queries: `GET /sessions` over many sessions, and `GET /data/children` of
//! one large session against `GET /data` of the same session, each through
//! `sessionfold api` by one client loop (latency, not throughput).
//!
//! The sessions and the large session are written by the apply step itself
//! (`Store::apply`, so their summaries are the ones production keeps), and
//! the index by the processor's own `ensure_index`. A tenth of the sessions
//! are then marked closed (`ended`) the way the close step does it.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sessionfold_common::redis_conn::{RedisConnection, RedisTimeouts};
use sessionfold_common::settings::RedisSettings;
use sessionfold_core::{Delivery, Frame, Keys, Limits, SessionId};
use sessionfold_processor::store::{Invocation, RedisStore, Store};
use tokio::time::Instant;

use crate::http::HttpConnection;
use crate::stats::Samples;
use crate::system::{Servers, unique_names};

/// The latency of one kind of request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub what: String,
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Bytes of the last answer.
    pub bytes: usize,
}

/// Everything measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Queries {
    pub sessions: usize,
    pub children: usize,
    pub document_bytes: usize,
    pub listing: Vec<Latency>,
    pub pages: Vec<Latency>,
}

/// Event names the sessions carry (one each, chosen by index).
const NAMES: usize = 20;
/// Sessions written per apply call.
const BATCH: usize = 1000;
/// Children per frame of the large session.
const FRAME_CHILDREN: usize = 1000;

fn delivery(session: &SessionId, sequence: u64, events: Vec<Value>) -> anyhow::Result<Delivery> {
    Ok(Delivery {
        stream_sequence: sequence,
        events: Frame::parse(
            &Value::Array(events).to_string(),
            session,
            &Limits::default(),
        )
        .map_err(|err| anyhow::anyhow!("{err:?}"))?
        .events,
    })
}

/// `requests` sequential `GET`s of `path`: p50 and p99.
async fn time(
    http: &mut HttpConnection,
    what: &str,
    path: &str,
    requests: usize,
) -> anyhow::Result<Latency> {
    let mut samples = Samples::new();
    let mut bytes = 0;
    // A few unmeasured requests first: connections and caches warm up.
    for round in 0..requests + 5 {
        let begun = Instant::now();
        let response = http.get(path).await?;
        let took = begun.elapsed();
        if response.status != 200 {
            bail!(
                "{path} answered {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
        }
        bytes = response.body.len();
        if round >= 5 {
            samples.push(took);
        }
    }
    Ok(Latency {
        what: what.to_owned(),
        requests,
        p50_ms: samples.p50().as_secs_f64() * 1e3,
        p99_ms: samples.p99().as_secs_f64() * 1e3,
        bytes,
    })
}

/// The `next_cursor` after `skip` sessions of `query` (followed page by page).
async fn cursor_after(
    http: &mut HttpConnection,
    query: &str,
    skip: usize,
) -> anyhow::Result<String> {
    let mut cursor = String::new();
    let mut skipped = 0;
    while skipped < skip {
        let path = if cursor.is_empty() {
            format!("/sessions?{query}&limit=500")
        } else {
            format!("/sessions?{query}&limit=500&cursor={cursor}")
        };
        let response = http.get(&path).await?;
        let body: Value = serde_json::from_slice(&response.body)?;
        skipped += body["sessions"].as_array().map_or(0, Vec::len);
        cursor = body["next_cursor"]
            .as_str()
            .context("the listing ended before the page to measure")?
            .to_owned();
    }
    Ok(cursor)
}

pub async fn run(
    servers: &Servers,
    sessions: usize,
    children: usize,
    requests: usize,
) -> anyhow::Result<Queries> {
    let names = unique_names();
    let keys = sessionfold_harness::run_keys(&names);
    let settings = RedisSettings {
        key_prefix: names.key_prefix.clone(),
        ..RedisSettings::local(servers.redis_url())
    };
    let mut connection = RedisConnection::connect(&settings, RedisTimeouts::default()).await?;
    sessionfold_processor::summary::ensure_index(&mut connection, &keys).await?;
    let store = RedisStore::connect(&settings).await?;

    // Many small sessions, their starts spread out, one event name each.
    let ids: Vec<SessionId> = (0..sessions)
        .map(|i| SessionId::parse(&format!("user-{:03}-{i:06}", i % 1000)))
        .collect::<Result<_, _>>()?;
    for (chunk_index, chunk) in ids.chunks(BATCH).enumerate() {
        let mut invocations = Vec::with_capacity(chunk.len());
        for (offset, session) in chunk.iter().enumerate() {
            let i = chunk_index * BATCH + offset;
            let start = 1_700_000_000 + (i * 7919) % sessions;
            let events = vec![
                json!({"type": "SESSION_START", "timestamp": start}),
                json!({"type": "EVENT", "timestamp": start + 1, "name": format!("name_{}", i % NAMES)}),
                json!({"type": "EVENT", "timestamp": start + 2, "name": "page_view"}),
            ];
            let arrival = 1_764_000_000_000 + i as u64;
            invocations.push(
                Invocation::new(
                    &keys,
                    session,
                    &[delivery(session, i as u64 + 1, events)?],
                    0,
                )
                .with_arrivals(arrival, arrival, None),
            );
        }
        store.apply(&invocations).await?;
    }
    let mut redis = servers.redis_connection().await?;
    for session in ids.iter().step_by(10) {
        let _: () = redis::cmd("JSON.SET")
            .arg(keys.session(session).summary)
            .arg("$.state")
            .arg("\"ended\"")
            .query_async(&mut redis)
            .await?;
    }
    wait_indexed(&mut redis, &keys, sessions).await?;

    // One large session, in timestamp order, small children.
    let large = SessionId::parse("large-session")?;
    for frame in 0..children.div_ceil(FRAME_CHILDREN) {
        let events: Vec<Value> = (frame * FRAME_CHILDREN
            ..((frame + 1) * FRAME_CHILDREN).min(children))
            .map(|i| json!({"type": "EVENT", "timestamp": i, "n": i}))
            .collect();
        let invocation = Invocation::new(
            &keys,
            &large,
            &[delivery(&large, (sessions + frame + 1) as u64, events)?],
            0,
        );
        store.apply(&[invocation]).await?;
    }
    let document: String = redis::cmd("JSON.GET")
        .arg(keys.session(&large).doc)
        .query_async(&mut redis)
        .await?;

    let api = servers.start_api(&names).await?;
    let mut http = HttpConnection::connect(api.addr()).await?;
    let deep = cursor_after(&mut http, "sort=start", sessions / 2).await?;
    let mut listing = Vec::new();
    for (what, path) in [
        (
            "first page of 50, by start, no filter",
            "/sessions?limit=50".to_owned(),
        ),
        (
            "a page of 50 from the middle (cursor after half the sessions)",
            format!("/sessions?limit=50&cursor={deep}"),
        ),
        (
            "latest activity first, 50",
            "/sessions?sort=last_activity&order=desc&limit=50".to_owned(),
        ),
        (
            "state=ended and one event name (1 in 20 sessions)",
            "/sessions?state=ended&name=name_10&limit=50".to_owned(),
        ),
        (
            "start range of 1 %",
            format!(
                "/sessions?start_from=1700000000&start_to={}&limit=50",
                1_700_000_000 + sessions / 100
            ),
        ),
        (
            "session_id prefix (1 in 1000 sessions)",
            "/sessions?prefix=user-042-&limit=50".to_owned(),
        ),
    ] {
        listing.push(time(&mut http, what, &path, requests).await?);
    }

    let session = "large-session";
    let mut pages = Vec::new();
    pages.push(
        time(
            &mut http,
            "`GET /data`, the whole document",
            &format!("/data?session_id={session}"),
            requests.min(50),
        )
        .await?,
    );
    let middle = children / 2;
    for (what, path) in [
        (
            "first 100",
            format!("/data/children?session_id={session}&from=0&limit=100"),
        ),
        (
            "100 in the middle",
            format!("/data/children?session_id={session}&from={middle}&limit=100"),
        ),
        (
            "last 100",
            format!(
                "/data/children?session_id={session}&from={}&limit=100",
                children - 100
            ),
        ),
        (
            "1000 in the middle",
            format!("/data/children?session_id={session}&from={middle}&limit=1000"),
        ),
        (
            "by timestamp, 100 in the middle (binary search)",
            format!(
                "/data/children?session_id={session}&since={middle}&until={}&limit=100",
                middle + 99
            ),
        ),
    ] {
        pages.push(time(&mut http, what, &path, requests).await?);
    }
    drop(http);
    drop(api);
    servers.clean(&names).await?;
    Ok(Queries {
        sessions,
        children,
        document_bytes: document.len(),
        listing,
        pages,
    })
}

/// Waits until the index holds `sessions` summaries and has indexed them all.
async fn wait_indexed(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    sessions: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info: Vec<Value> = redis::cmd("FT.INFO")
            .arg(keys.sessions_index())
            .query_async::<redis::Value>(redis)
            .await
            .map(|value| match value {
                redis::Value::Array(items) => items
                    .iter()
                    .map(|item| match item {
                        redis::Value::BulkString(bytes) => {
                            Value::String(String::from_utf8_lossy(bytes).into_owned())
                        }
                        redis::Value::SimpleString(text) => Value::String(text.clone()),
                        redis::Value::Int(n) => json!(n),
                        redis::Value::Double(n) => json!(n),
                        _ => Value::Null,
                    })
                    .collect(),
                _ => Vec::new(),
            })?;
        let field = |name: &str| {
            info.iter()
                .position(|item| item.as_str() == Some(name))
                .and_then(|at| info.get(at + 1))
                .cloned()
        };
        let docs = field("num_docs")
            .and_then(|v| {
                v.as_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .or(v.as_u64())
            })
            .unwrap_or(0);
        let indexing = field("indexing")
            .and_then(|v| {
                v.as_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .or(v.as_u64())
            })
            .unwrap_or(1);
        if docs >= sessions as u64 && indexing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the index holds {docs} of {sessions} summaries after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
