//! Growth:
//!
//! - [`apply_cost`]: the apply step's cost per event in sessions that
//!   already hold N children, with every event newer than the session's
//!   newest (in order), and with 10 % of them older (inserted in the
//!   middle). The cost is Redis's own time in the script (`INFO
//!   commandstats`, `usec` of `evalsha`), so round trips do not blur it;
//!   the wall-clock time of the calls is kept too. Each is the median of
//!   five separately timed rounds. `BENCH_COMMANDSTATS=1` prints the
//!   per-command split of the script's time (`HSET`, `ZADD`,
//!   `JSON.ARRAPPEND`, …) for profiling.
//! - [`idle_connections`]: the resident memory of `sessionfold ingest` with
//!   many open WebSocket connections that send nothing.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::json;
use sessionfold_common::settings::RedisSettings;
use sessionfold_core::{Delivery, Frame, Limits, SeededRng, SessionId};
use sessionfold_processor::store::{Applied, Invocation, RedisStore, Store};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::system::{Servers, proc_status_kb, unique_names};

/// The cost per event at one session size and arrival order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyCost {
    pub children: usize,
    pub out_of_order_percent: u32,
    pub events: usize,
    /// Redis time in the script per event, in microseconds.
    pub server_us_per_event: f64,
    /// Wall-clock time of the apply calls per event, in microseconds.
    pub wall_us_per_event: f64,
}

/// Events per measured frame.
const FRAME_EVENTS: usize = 50;
/// Events per prefill frame.
const PREFILL_EVENTS: usize = 1000;
/// Separately timed rounds per measurement.
const ROUNDS: usize = 5;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// One event: timestamp `timestamp`, a unique name, ~100 bytes.
fn event(timestamp: u64, name: &str) -> serde_json::Value {
    json!({
        "type": "EVENT",
        "timestamp": timestamp,
        "name": name,
        "props": {"page": format!("/p/{}", timestamp % 7), "n": timestamp % 1000},
    })
}

/// Builds the invocation of one frame of `session`.
fn invocation(
    keys: &sessionfold_core::Keys,
    session: &SessionId,
    sequence: u64,
    events: Vec<serde_json::Value>,
) -> anyhow::Result<Invocation> {
    let text = serde_json::Value::Array(events).to_string();
    let limits = Limits {
        max_frame_bytes: usize::MAX,
        max_events_per_frame: usize::MAX,
        max_event_bytes: usize::MAX,
    };
    let delivery = Delivery {
        stream_sequence: sequence,
        events: Frame::parse(&text, session, &limits)
            .map_err(|err| anyhow::anyhow!("{err:?}"))?
            .events,
    };
    Ok(Invocation::new(keys, session, &[delivery], 0))
}

async fn apply(store: &RedisStore, invocations: &[Invocation]) -> anyhow::Result<()> {
    for applied in store.apply(invocations).await? {
        if let Applied::Refused(reason) = applied {
            bail!("the apply step refused a frame: {reason}");
        }
    }
    Ok(())
}

/// `usec` and `calls` of `evalsha` since the last `CONFIG RESETSTAT`.
async fn evalsha_usec(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await?;
    let line = info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
        .context("no evalsha in INFO commandstats")?;
    line.split(',')
        .find_map(|field| field.strip_prefix("usec="))
        .and_then(|usec| usec.parse().ok())
        .context("no usec for evalsha")
}

/// Measures the apply cost at each size of `sizes`, in order and with 10 %
/// out of order; `measured_events` events per size and order.
pub async fn apply_cost(
    servers: &Servers,
    sizes: &[usize],
    measured_events: usize,
) -> anyhow::Result<Vec<ApplyCost>> {
    let mut results = Vec::new();
    for &children in sizes {
        for out_of_order_percent in [0u32, 10] {
            results.push(
                apply_cost_at(servers, children, out_of_order_percent, measured_events).await?,
            );
        }
    }
    Ok(results)
}

/// One size and order, on sessions of their own.
async fn apply_cost_at(
    servers: &Servers,
    children: usize,
    out_of_order_percent: u32,
    measured_events: usize,
) -> anyhow::Result<ApplyCost> {
    let names = unique_names();
    let run_keys = sessionfold_harness::run_keys(&names);
    let store = RedisStore::connect(&RedisSettings {
        key_prefix: names.key_prefix.clone(),
        ..RedisSettings::local(servers.redis_url())
    })
    .await?;
    let mut redis = servers.redis_connection().await?;
    // Enough sessions that none grows by more than a tenth while measured
    // (at most one frame per session when they are small), so each stays
    // at about `children` children.
    let frames = measured_events.div_ceil(FRAME_EVENTS);
    let sessions = (frames * FRAME_EVENTS * 10)
        .div_ceil(children.max(1))
        .clamp(1, frames);
    let ids: Vec<SessionId> = (0..sessions)
        .map(|s| SessionId::parse(&format!("growth-{children}-{s}")))
        .collect::<Result<_, _>>()?;
    let mut sequence = 0u64;
    // Prefill: `children` in-order events per session, in big frames.
    for session in &ids {
        let mut batch = Vec::new();
        for start in (0..children).step_by(PREFILL_EVENTS) {
            let events = (start..(start + PREFILL_EVENTS).min(children))
                .map(|t| event(t as u64, &format!("pre-{t}")))
                .collect();
            sequence += 1;
            batch.push(invocation(&run_keys, session, sequence, events)?);
            if batch.len() == 10 {
                apply(&store, &batch).await?;
                batch.clear();
            }
        }
        apply(&store, &batch).await?;
    }
    // The measured frames, round robin over the sessions.
    let mut next_timestamp = vec![children as u64; sessions];
    let mut rng = SeededRng::new(0x2545_f491_4f6c_dd1d);
    let mut invocations = Vec::with_capacity(frames);
    for f in 0..frames {
        let s = f % sessions;
        let events = (0..FRAME_EVENTS)
            .map(|i| {
                let name = format!("m-{f}-{i}");
                // About one event in ten (at random places in the frame)
                // lands among the existing children.
                if rng.chance(u64::from(out_of_order_percent)) {
                    event(rng.below(next_timestamp[s].max(1)), &name)
                } else {
                    next_timestamp[s] += 1;
                    event(next_timestamp[s], &name)
                }
            })
            .collect();
        sequence += 1;
        invocations.push(invocation(&run_keys, &ids[s], sequence, events)?);
    }
    // Several rounds, each timed alone: the median round is the result, so
    // that a burst of load from elsewhere on the machine does not decide it.
    let mut server_us = Vec::with_capacity(ROUNDS);
    let mut wall_us = Vec::with_capacity(ROUNDS);
    for round in invocations.chunks(frames.div_ceil(ROUNDS)) {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut redis)
            .await?;
        let started = Instant::now();
        for one in round {
            apply(&store, std::slice::from_ref(one)).await?;
        }
        let wall = started.elapsed();
        let usec = evalsha_usec(&mut redis).await?;
        let events = (round.len() * FRAME_EVENTS) as f64;
        server_us.push(usec as f64 / events);
        wall_us.push(wall.as_secs_f64() * 1e6 / events);
    }
    if std::env::var_os("BENCH_COMMANDSTATS").is_some() {
        // Where the script's time goes, by command (for profiling).
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut redis)
            .await?;
        eprintln!(
            "commandstats of the last round, {children} children, {out_of_order_percent} % out of order:\n{info}"
        );
    }
    let events = frames * FRAME_EVENTS;
    servers.clean(&names).await?;
    Ok(ApplyCost {
        children,
        out_of_order_percent,
        events,
        server_us_per_event: median(&mut server_us),
        wall_us_per_event: median(&mut wall_us),
    })
}

/// Ingest's memory with idle connections.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleConnections {
    pub connections: usize,
    /// VmRSS before the first connection, in kB.
    pub rss_before_kb: u64,
    /// VmRSS with every connection open, in kB.
    pub rss_kb: u64,
    /// Seconds to open them all.
    pub connect_seconds: f64,
}

impl IdleConnections {
    pub fn per_connection_kb(&self) -> f64 {
        self.rss_kb.saturating_sub(self.rss_before_kb) as f64 / self.connections.max(1) as f64
    }
}

/// Opens `connections` WebSockets to a fresh ingest (at most 256 handshakes
/// at once), sends nothing, and reads ingest's VmRSS once they are all open.
pub async fn idle_connections(
    servers: &Servers,
    connections: usize,
) -> anyhow::Result<IdleConnections> {
    let names = unique_names();
    let ingest = servers.start_ingest(&names).await?;
    let rss_before_kb = proc_status_kb(ingest.pid(), "VmRSS")?;
    let started = Instant::now();
    let mut open = Vec::with_capacity(connections);
    let mut handshakes = FuturesUnordered::new();
    let mut next = 0;
    while open.len() < connections {
        while next < connections && handshakes.len() < 256 {
            let url = format!("ws://{}/websocket?session_id=idle-{next:06}", ingest.addr());
            handshakes.push(async move {
                // A small read buffer, so that the client side of 10 000
                // connections stays light too.
                let config = WebSocketConfig::default().read_buffer_size(4096);
                tokio::time::timeout(
                    Duration::from_secs(30),
                    tokio_tungstenite::connect_async_with_config(url, Some(config), false),
                )
                .await
            });
            next += 1;
        }
        match handshakes.next().await {
            Some(Ok(Ok((socket, _)))) => open.push(socket),
            Some(Ok(Err(err))) => bail!(
                "connection {} of {connections} failed: {err} (is `ulimit -n` high enough?)",
                open.len() + 1
            ),
            Some(Err(_)) => bail!("a WebSocket handshake took over 30 s"),
            None => break,
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    // Let ingest settle (the allocator, the per-connection tasks).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_kb = proc_status_kb(ingest.pid(), "VmRSS")?;
    drop(open);
    drop(ingest);
    servers.clean(&names).await?;
    Ok(IdleConnections {
        connections,
        rss_before_kb,
        rss_kb,
        connect_seconds,
    })
}
