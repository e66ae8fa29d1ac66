//! The read path: `GET /data` of one 100-event document through
//! `sessionfold api`, against `JSON.GET` of the same key straight from Redis,
//! each by `concurrency` client loops for the same time. Each HTTP loop has
//! its own keep-alive connection ([`crate::http`]); the raw loops share one
//! multiplexed connection, as the api's requests share its one.

use std::time::Duration;

use anyhow::{Context, bail};

use serde_json::json;
use sessionfold_common::settings::RedisSettings;
use sessionfold_core::{Delivery, Frame, Limits, SessionId};
use sessionfold_processor::store::{Invocation, RedisStore, Store};
use tokio::time::Instant;

use crate::http::HttpConnection;
use crate::stats::Samples;
use crate::system::{CpuMeter, Servers, unique_names};

/// Requests per second and latencies of one reader.
#[derive(Debug, Clone)]
pub struct ReadLoad {
    pub requests: u64,
    pub seconds: f64,
    pub latency: Samples,
    /// CPU seconds each process used during the loops.
    pub cpu: Vec<(String, f64)>,
}

impl ReadLoad {
    pub fn per_sec(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Both readers, and the document they read.
#[derive(Debug, Clone)]
pub struct ReadPath {
    pub concurrency: usize,
    pub document_bytes: usize,
    pub api: ReadLoad,
    pub raw: ReadLoad,
}

/// A frame of `events` in-order events, about 100 bytes each.
fn document_frame(events: usize) -> String {
    let events: Vec<_> = (0..events)
        .map(|i| {
            json!({
                "type": "EVENT",
                "timestamp": 1_700_000_000 + i as u64,
                "name": format!("event_{i}"),
                "props": {"page": format!("/p/{}", i % 7), "n": i},
            })
        })
        .collect();
    serde_json::Value::Array(events).to_string()
}

pub async fn run(
    servers: &Servers,
    events: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<ReadPath> {
    let names = unique_names();
    let session = SessionId::parse("read-path-session")?;
    let run_keys = sessionfold_harness::run_keys(&names);
    let key = run_keys.session(&session).doc;
    let store = RedisStore::connect(&RedisSettings {
        key_prefix: names.key_prefix.clone(),
        ..RedisSettings::local(servers.redis_url())
    })
    .await?;
    let delivery = Delivery {
        stream_sequence: 1,
        events: Frame::parse(&document_frame(events), &session, &Limits::default())
            .map_err(|err| anyhow::anyhow!("{err:?}"))?
            .events,
    };
    store
        .apply(&[Invocation::new(&run_keys, &session, &[delivery], 0)])
        .await?;
    let mut redis = servers.redis_connection().await?;
    let document: String = redis::cmd("JSON.GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .context("reading the document")?;

    let api = servers.start_api(&names).await?;
    let addr = api.addr();
    let redis_pid = servers.redis.pid().unwrap_or_default();
    let cpu = CpuMeter::start(&[
        ("api", api.pid()),
        ("redis-server", redis_pid),
        ("bench (readers)", std::process::id()),
    ]);
    let path = format!("/data?session_id={}", session.as_str());
    let expected = document.len();
    let api_load = drive(
        concurrency,
        duration,
        move || HttpConnection::connect(addr),
        move |mut http: HttpConnection| {
            let path = path.clone();
            async move {
                let response = http.get(&path).await?;
                if response.status != 200 {
                    bail!("GET /data answered {}", response.status);
                }
                if response.body.len() != expected {
                    bail!(
                        "GET /data answered {} bytes, not {expected}",
                        response.body.len()
                    );
                }
                Ok(http)
            }
        },
    )
    .await?;
    let api_load = ReadLoad {
        cpu: cpu.stop(),
        ..api_load
    };
    drop(api);
    crate::raw::settle().await;
    let cpu = CpuMeter::start(&[
        ("redis-server", redis_pid),
        ("bench (readers)", std::process::id()),
    ]);

    let raw_load = drive(
        concurrency,
        duration,
        move || {
            let redis = redis.clone();
            async move { anyhow::Ok(redis) }
        },
        move |mut redis: redis::aio::MultiplexedConnection| {
            let key = key.clone();
            async move {
                let body: String = redis::cmd("JSON.GET")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await?;
                if body.len() != expected {
                    bail!("JSON.GET answered {} bytes, not {expected}", body.len());
                }
                Ok(redis)
            }
        },
    )
    .await?;
    let raw_load = ReadLoad {
        cpu: cpu.stop(),
        ..raw_load
    };
    servers.clean(&names).await?;
    Ok(ReadPath {
        concurrency,
        document_bytes: document.len(),
        api: api_load,
        raw: raw_load,
    })
}

/// Runs `concurrency` loops of `request` for `duration` (after a short
/// warm-up that is not counted); each loop starts with the state `open`
/// gives it (a connection) and hands it from one request to the next.
async fn drive<S, O, OF, R, RF>(
    concurrency: usize,
    duration: Duration,
    open: O,
    request: R,
) -> anyhow::Result<ReadLoad>
where
    S: Send + 'static,
    O: Fn() -> OF,
    OF: std::future::Future<Output = anyhow::Result<S>>,
    R: Fn(S) -> RF + Clone + Send + 'static,
    RF: std::future::Future<Output = anyhow::Result<S>> + Send,
{
    let mut states = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        states.push(open().await?);
    }
    let warm_up = Duration::from_millis(500);
    let started = Instant::now() + warm_up;
    let until = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for state in states {
        let request = request.clone();
        tasks.spawn(async move {
            let mut latency = Samples::new();
            let mut state = state;
            loop {
                let begun = Instant::now();
                if begun >= until {
                    return anyhow::Ok(latency);
                }
                state = request(state).await?;
                if begun >= started {
                    latency.push(begun.elapsed());
                }
            }
        });
    }
    let mut latency = Samples::new();
    while let Some(joined) = tasks.join_next().await {
        latency.extend(joined??);
    }
    Ok(ReadLoad {
        requests: latency.len() as u64,
        seconds: duration.as_secs_f64(),
        latency,
        cpu: Vec::new(),
    })
}
