//! `sessionfold-bench`: flags, the order of the measurements, the table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use sessionfold_bench::report::{self, Machine, Row, Status};
use sessionfold_bench::stats::{count, ms};
use sessionfold_bench::system::Servers;
use sessionfold_bench::{e2e, freshness, growth, lifecycle, raw, read};
use sessionfold_client::loadgen::{Workload, WorkloadSpec};

#[derive(Debug, Parser)]
#[command(
    name = "sessionfold-bench",
    about = "Measures sessionfold against the limits of its own parts and records the table in BENCHMARKS.md"
)]
struct Args {
    /// Measurements to run, comma-separated: raw, storage (Redis CPU per
    /// event against the plain-append floor, both layouts; bytes per child),
    /// steps (Redis CPU per apply step of 5, 50 and 500 events: its fixed
    /// cost and its cost per event, against the floor's),
    /// e2e, fresh, durability (end to end and freshness for each
    /// `REDIS_DURABILITY`), lifecycle (end to end with `SESSION_LIFECYCLE`
    /// on and off; timer lag of `--lifecycle-sessions` closing at once), read, growth, idle, servers (JetStream
    /// `sync_interval` always vs 2m; the apply step on redis-server 7.0 vs
    /// Valkey, with and without the query engine), live (SSE bytes per
    /// applied event to a watcher of a large session; `min_seq` latency),
    /// queries (`GET /sessions` over `--query-sessions`; `GET
    /// /data/children` of a session of `--query-children` against its `GET
    /// /data`), commit (group commit at ingest on and off, for the
    /// throughput workload and the web mix of `--web-sessions`: nats-server
    /// fsyncs per acknowledged frame, raw publish single and batched,
    /// acknowledged and end-to-end rates, `sync_interval` always vs 2m, a
    /// lone producer's ack latency).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "raw,storage,steps,e2e,fresh,durability,lifecycle,read,growth,idle,servers,live,queries,commit"
    )]
    only: Vec<String>,
    /// WebSocket producers (one session each at a time) of the throughput runs.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Sessions of the throughput workload.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Frames per session of the throughput workload.
    #[arg(long, default_value_t = 40)]
    frames_per_session: usize,
    /// EVENTs per frame (SESSION_START / SESSION_END come on top).
    #[arg(long, default_value_t = 50)]
    events_per_frame: usize,
    /// Seed of the workload.
    #[arg(long, default_value_t = 6)]
    seed: u64,
    /// PubAcks awaited at once by the raw JetStream publisher.
    #[arg(long, default_value_t = 100)]
    outstanding: usize,
    /// Frames per pipeline of the raw apply run.
    #[arg(long, default_value_t = 100)]
    apply_batch_frames: usize,
    /// Pipelines in flight in the raw apply run.
    #[arg(long, default_value_t = 2)]
    apply_concurrency: usize,
    /// Processor replicas of the end-to-end runs.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    replicas: Vec<usize>,
    /// Producers of the freshness run (each sends one frame per second).
    #[arg(long, default_value_t = 100)]
    fresh_connections: usize,
    /// Seconds of the freshness run.
    #[arg(long, default_value_t = 20)]
    fresh_secs: u64,
    /// Events in the document of the read-path run.
    #[arg(long, default_value_t = 100)]
    read_events: usize,
    /// Concurrent request loops of the read-path run.
    #[arg(long, default_value_t = 32)]
    read_concurrency: usize,
    /// Seconds of each read-path loop.
    #[arg(long, default_value_t = 5)]
    read_secs: u64,
    /// Session sizes (children) of the apply-cost run.
    #[arg(long, value_delimiter = ',', default_value = "10,10000,100000")]
    growth_sizes: Vec<usize>,
    /// Events measured per size and order in the apply-cost run.
    #[arg(long, default_value_t = 10_000)]
    growth_events: usize,
    /// Sessions closing at once in the timer-lag run.
    #[arg(long, default_value_t = 10_000)]
    lifecycle_sessions: usize,
    /// Children of the session whose live stream is measured.
    #[arg(long, default_value_t = 100_000)]
    live_children: usize,
    /// Events applied one at a time to it (and frames of the `min_seq` run).
    #[arg(long, default_value_t = 200)]
    live_events: usize,
    /// Sessions the `GET /sessions` latencies are measured over.
    #[arg(long, default_value_t = 100_000)]
    query_sessions: usize,
    /// Children of the session whose pages are measured.
    #[arg(long, default_value_t = 100_000)]
    query_children: usize,
    /// Requests timed per query and page.
    #[arg(long, default_value_t = 200)]
    query_requests: usize,
    /// Idle WebSocket connections of the memory run.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Sessions of the web mix (10 frames × 3 EVENTs each).
    #[arg(long, default_value_t = 2_000)]
    web_sessions: usize,
    /// WebSocket producers of the web mix.
    #[arg(long, default_value_t = 200)]
    web_connections: usize,
    /// Frames per atomic batch of the raw batched publisher.
    #[arg(long, default_value_t = 100)]
    batch_frames: usize,
    /// Frames a lone producer sends one at a time, for its ack latency.
    #[arg(long, default_value_t = 500)]
    latency_frames: usize,
    /// Small sizes everywhere: a smoke test of the bench itself.
    #[arg(long)]
    quick: bool,
    /// The Markdown file the table is recorded in.
    #[arg(long, default_value = "BENCHMARKS.md")]
    record: PathBuf,
    /// The block of the file to replace (`<!-- bench:LABEL:begin -->`).
    #[arg(long, default_value = "latest")]
    label: String,
    /// Do not touch the Markdown file.
    #[arg(long)]
    no_record: bool,
    /// Where the raw results go, as JSON (for docs/ plots).
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Keep the services' logs (their directory is printed).
    #[arg(long)]
    keep_logs: bool,
}

impl Args {
    fn wants(&self, what: &str) -> bool {
        self.only.iter().any(|o| o == what)
    }

    fn shrink_if_quick(&mut self) {
        if self.quick {
            self.sessions = self.sessions.min(20);
            self.connections = self.connections.min(20);
            self.frames_per_session = self.frames_per_session.min(5);
            self.fresh_connections = self.fresh_connections.min(20);
            self.fresh_secs = self.fresh_secs.min(3);
            self.read_secs = self.read_secs.min(1);
            self.growth_sizes = vec![10, 1000];
            self.growth_events = self.growth_events.min(500);
            self.idle_connections = self.idle_connections.min(500);
            self.lifecycle_sessions = self.lifecycle_sessions.min(500);
            self.live_children = self.live_children.min(2000);
            self.live_events = self.live_events.min(20);
            self.query_sessions = self.query_sessions.min(2_000);
            self.query_children = self.query_children.min(5_000);
            self.query_requests = self.query_requests.min(20);
            self.web_sessions = self.web_sessions.min(200);
            self.web_connections = self.web_connections.min(20);
            self.latency_frames = self.latency_frames.min(50);
        }
    }
}

/// End to end (1 processor) with sessions closing by themselves on and off,
/// alternately twice; then the timer lag of many sessions closing at once.
async fn lifecycle_rows(
    args: &Args,
    servers: &Servers,
    workload: &Workload,
    rows: &mut Vec<Row>,
    json: &mut serde_json::Map<String, serde_json::Value>,
    clock: Instant,
) -> anyhow::Result<()> {
    let mut rates: BTreeMap<bool, Vec<f64>> = BTreeMap::new();
    for on in [false, true, false, true] {
        servers.set_processor_env(vec![("SESSION_LIFECYCLE", on.to_string())]);
        let run = e2e::run(servers, workload, 1, args.connections).await;
        servers.set_processor_env(Vec::new());
        let run = run?;
        if run.exact_documents != run.sessions {
            anyhow::bail!(
                "SESSION_LIFECYCLE={on}: only {} of {} documents equal the reference fold",
                run.exact_documents,
                run.sessions
            );
        }
        rates.entry(on).or_default().push(run.events_per_sec());
        raw::settle().await;
    }
    let mean = |on: bool| {
        let runs = &rates[&on];
        runs.iter().sum::<f64>() / runs.len() as f64
    };
    let (off, on) = (mean(false), mean(true));
    step(
        &format!("lifecycle: {} events/s on, {} off", count(on), count(off)),
        clock,
    );
    rows.push(Row {
        item: 2,
        measure: "End to end, 1 processor, sessions closing by themselves (`SESSION_LIFECYCLE=true`, the default), mean of 2 runs".to_owned(),
        result: format!("{} events/s", count(on)),
        against: format!("`SESSION_LIFECYCLE=false`, runs alternated: {} events/s", count(off)),
        ratio: percent(on, off),
        target: String::new(),
        status: Status::Info,
    });
    let lag = lifecycle::timer_lag(servers, args.lifecycle_sessions).await?;
    step(
        &format!(
            "timer lag at {} sessions: p99 {:.0} ms",
            lag.sessions, lag.p99_ms
        ),
        clock,
    );
    rows.push(Row::info(
        2,
        format!(
            "Timer lag, {} sessions closing at once (idle timeout {} s, 1 processor): due time → finished message stored",
            count(lag.sessions as f64),
            lag.idle_timeout_secs
        ),
        format!(
            "p50 {:.0} / p99 {:.0} / max {:.0} ms ({:.1} s from the first frame to the last close)",
            lag.p50_ms, lag.p99_ms, lag.max_ms, lag.seconds
        ),
    ));
    json.insert(
        "lifecycle".into(),
        serde_json::json!({"events_per_sec_on": rates[&true], "events_per_sec_off": rates[&false], "timer_lag": lag}),
    );
    Ok(())
}

/// Live streams: SSE bytes per applied event to one watcher of a large
/// session, against the event's own bytes and the whole document the stream
/// pushed per apply before deltas; the latency `min_seq` adds after an ack.
async fn live_rows(
    args: &Args,
    servers: &Servers,
    rows: &mut Vec<Row>,
    json: &mut serde_json::Map<String, serde_json::Value>,
    clock: Instant,
) -> anyhow::Result<()> {
    use sessionfold_bench::live;
    let sse = live::sse_bytes(servers, args.live_children, args.live_events).await?;
    step(
        &format!(
            "live: {:.0} B pushed per applied event of {:.0} B ({} deltas, {} documents after the first)",
            sse.pushed_bytes_per_event, sse.event_bytes, sse.deltas, sse.documents_after_start
        ),
        clock,
    );
    let ratio = sse.pushed_bytes_per_event / sse.event_bytes;
    rows.push(Row {
        item: 7,
        measure: format!(
            "SSE bytes pushed per applied event to one watcher of a {}-child session ({} events applied one at a time, a quarter out of order)",
            count(sse.children as f64),
            sse.events
        ),
        result: format!(
            "{:.0} B per event of {:.0} B ({} `delta`s, {} `document`s after the first)",
            sse.pushed_bytes_per_event, sse.event_bytes, sse.deltas, sse.documents_after_start
        ),
        against: "the event's own bytes".to_owned(),
        ratio: format!("{ratio:.2}×"),
        target: "< 2×".to_owned(),
        status: Status::of(ratio < 2.0),
    });
    rows.push(Row {
        item: 7,
        measure: "The same, as the stream was before deltas: the whole document after every apply"
            .to_owned(),
        result: format!(
            "{} B per event (the `document` event of this run, {} B of document)",
            count(sse.document_event_bytes as f64),
            count(sse.document_bytes as f64)
        ),
        against: "deltas".to_owned(),
        ratio: format!(
            "{}×",
            count(sse.document_event_bytes as f64 / sse.pushed_bytes_per_event)
        ),
        target: String::new(),
        status: Status::Info,
    });
    raw::settle().await;
    let latency = live::min_seq_latency(servers, args.live_events, 1).await?;
    step(
        &format!(
            "min_seq: p50 {:.1} ms after the ack (plain read {:.1} ms, {} of {} without their frame)",
            latency.min_seq_p50_ms, latency.plain_p50_ms, latency.plain_missed, latency.frames
        ),
        clock,
    );
    rows.push(Row {
        item: 7,
        measure: format!(
            "`GET /data?min_seq=<seq>` from the accepted reply to the answer ({} frames one at a time, {} processor)",
            latency.frames, latency.processors
        ),
        result: format!(
            "p50 {:.1} / p99 {:.1} ms, every answer with its frame",
            latency.min_seq_p50_ms, latency.min_seq_p99_ms
        ),
        against: format!(
            "plain `GET /data` at the same moment: p50 {:.1} / p99 {:.1} ms, {} of {} without the frame",
            latency.plain_p50_ms, latency.plain_p99_ms, latency.plain_missed, latency.frames
        ),
        ratio: format!("+{:.1} ms", latency.min_seq_p50_ms - latency.plain_p50_ms),
        target: String::new(),
        status: Status::Info,
    });
    json.insert(
        "live".into(),
        serde_json::json!({"sse": sse, "min_seq": latency}),
    );
    Ok(())
}

/// Redis CPU per apply step against the step's size: the same kind of
/// workload in frames of 5, 50 and 500 EVENTs, through the floor (one call
/// a frame) and the apply step with and without summaries (one step a
/// session a batch: a frame each while the batch holds no session twice,
/// as with 100 sessions).
/// A line through the smallest and largest sizes splits each into a fixed
/// cost per step and a cost per event, which says where the apply step's
/// cost over the floor lies.
async fn step_size_rows(
    args: &Args,
    servers: &Servers,
    rows: &mut Vec<Row>,
    json: &mut serde_json::Map<String, serde_json::Value>,
    clock: Instant,
) -> anyhow::Result<()> {
    use sessionfold_bench::storage::{self, Layout};
    // About 20 000 events at 5 a step (4 000 steps) and 200 000 above.
    let sizes: &[(usize, usize)] = if args.quick {
        &[(5, 4), (50, 2), (500, 1)]
    } else {
        &[(5, 40), (50, 40), (500, 4)]
    };
    let mut measured = Vec::new();
    for &(events_per_frame, frames_per_session) in sizes {
        let mut spec = WorkloadSpec::new(
            args.seed,
            args.sessions,
            frames_per_session,
            events_per_frame,
        );
        spec.session_prefix = "steps".to_owned();
        let workload = Workload::generate(&spec);
        let calls = (args.sessions * frames_per_session) as f64;
        // Pipelines of about as many events as the other rows' (100 frames
        // of 50), so that none waits past the client's response timeout.
        let batch_frames = (args.apply_batch_frames * 50 / events_per_frame)
            .clamp(1, args.apply_batch_frames.max(1));
        let steps = storage::steps(&workload, batch_frames) as f64;
        let floor = storage::floor(servers, &workload, batch_frames).await?;
        raw::settle().await;
        let current = storage::apply_cpu(servers, &workload, batch_frames, Layout::Current).await?;
        raw::settle().await;
        let unsummarized = storage::apply_cpu(
            servers,
            &workload,
            batch_frames,
            Layout::CurrentWithoutSummaries,
        )
        .await?;
        raw::settle().await;
        // (events a call or step, Redis µs a call or step): the floor
        // calls once a frame, the apply step once a session a batch.
        let per = |cost: &storage::RedisCost, calls: f64| {
            (cost.events as f64 / calls, cost.cpu_seconds * 1e6 / calls)
        };
        let points = [
            per(&floor, calls),
            per(&current, steps),
            per(&unsummarized, steps),
        ];
        step(
            &format!(
                "frames of {events_per_frame} events: floor {:.1} µs a call, apply step {:.1} µs, without summaries {:.1} µs a step",
                points[0].1, points[1].1, points[2].1
            ),
            clock,
        );
        rows.push(Row::info(
            1,
            format!(
                "Redis CPU per call of the floor ({:.1} EVENTs) / per apply step and without summaries ({:.1} EVENTs), frames of {events_per_frame}",
                points[0].0, points[1].0
            ),
            format!(
                "{:.1} / {:.1} / {:.1} µs ({:.2} / {:.2} / {:.2} µs an event)",
                points[0].1,
                points[1].1,
                points[2].1,
                floor.cpu_us_per_event(),
                current.cpu_us_per_event(),
                unsummarized.cpu_us_per_event()
            ),
        ));
        measured.push(points);
    }
    let (small, large) = (measured[0], measured[measured.len() - 1]);
    let fit = |k: usize| {
        let per_event = (large[k].1 - small[k].1) / (large[k].0 - small[k].0);
        (small[k].1 - per_event * small[k].0, per_event)
    };
    let mut fits = serde_json::Map::new();
    for (k, name) in ["floor", "apply step", "apply step without summaries"]
        .iter()
        .enumerate()
    {
        let (fixed, per_event) = fit(k);
        rows.push(Row::info(
            1,
            format!("Fixed cost per call and cost per event, {name} (the line through the smallest and largest frames)"),
            format!("{fixed:.1} µs a call + {per_event:.2} µs an event"),
        ));
        fits.insert(
            (*name).to_owned(),
            serde_json::json!({"fixed_us_per_call": fixed, "us_per_event": per_event}),
        );
    }
    json.insert(
        "steps".into(),
        serde_json::json!({"sizes": measured.iter().map(|points| serde_json::json!({
            "floor": points[0], "apply": points[1], "apply_without_summaries": points[2],
        })).collect::<Vec<_>>(), "fits": fits}),
    );
    Ok(())
}

/// Redis CPU per event of the floor and of both layouts' apply steps, and
/// bytes per child; returns the floor's events/s.
async fn storage_rows(
    args: &Args,
    servers: &Servers,
    workload: &Workload,
    rows: &mut Vec<Row>,
    json: &mut serde_json::Map<String, serde_json::Value>,
    clock: Instant,
) -> anyhow::Result<f64> {
    use sessionfold_bench::storage::{self, Layout};
    let floor = storage::floor(servers, workload, args.apply_batch_frames).await?;
    raw::settle().await;
    let current =
        storage::apply_cpu(servers, workload, args.apply_batch_frames, Layout::Current).await?;
    raw::settle().await;
    let unsummarized = storage::apply_cpu(
        servers,
        workload,
        args.apply_batch_frames,
        Layout::CurrentWithoutSummaries,
    )
    .await?;
    raw::settle().await;
    step(
        &format!(
            "Redis CPU per event: floor {:.2} µs, apply step {:.2} µs, without summaries {:.2} µs",
            floor.cpu_us_per_event(),
            current.cpu_us_per_event(),
            unsummarized.cpu_us_per_event()
        ),
        clock,
    );
    let describe = |cost: &storage::RedisCost| {
        format!(
            "{:.2} µs of Redis CPU per event ({} events/s)",
            cost.cpu_us_per_event(),
            count(cost.events_per_sec())
        )
    };
    rows.push(Row::info(
        1,
        format!(
            "Floor: the workload's EVENTs by plain pipelined `JSON.ARRAPPEND` (one call per frame, {} frames per pipeline)",
            args.apply_batch_frames
        ),
        describe(&floor),
    ));
    for (name, cost) in [
        ("apply step", &current),
        (
            "apply step without summaries (`SESSION_SUMMARIES=false`)",
            &unsummarized,
        ),
    ] {
        let ratio = cost.cpu_us_per_event() / floor.cpu_us_per_event();
        rows.push(Row {
            item: 1,
            measure: format!("Redis CPU per event, {name}, same batches"),
            result: describe(cost),
            against: "floor".to_owned(),
            ratio: format!("{ratio:.2}×"),
            target: if name == "apply step" {
                "≤ 2×".to_owned()
            } else {
                String::new()
            },
            status: if name == "apply step" {
                Status::of(ratio <= 2.0)
            } else {
                Status::Info
            },
        });
    }
    json.insert("floor".into(), serde_json::to_value(&floor)?);
    json.insert("apply_cpu".into(), serde_json::to_value(&current)?);

    let sizes = if args.quick {
        vec![10, 1000]
    } else {
        args.growth_sizes.clone()
    };
    let tables = storage::storage(servers, &sizes).await?;
    step("storage per child measured", clock);
    for table in &tables {
        let split: Vec<String> = table
            .bookkeeping
            .iter()
            .map(|(key, bytes)| format!("{key} {bytes:.0}"))
            .collect();
        let bookkeeping = table.bookkeeping_bytes();
        let open_target = table.layout == "current" && table.children >= 10_000;
        rows.push(Row {
            item: 1,
            measure: format!(
                "Bytes per child, {} layout, open session of {} children",
                table.layout, table.children
            ),
            result: format!(
                "document {:.0} B + bookkeeping {bookkeeping:.0} B ({}) = {:.2}× the events' {:.0} B",
                table.document_bytes,
                split.join(", "),
                (table.document_bytes + bookkeeping) / table.event_bytes,
                table.event_bytes
            ),
            against: String::new(),
            ratio: String::new(),
            target: if open_target { "bookkeeping ≤ 48 B".to_owned() } else { String::new() },
            status: if open_target { Status::of(bookkeeping <= 48.0) } else { Status::Info },
        });
        if let (Some(finished), Some(keys)) = (
            table.finished_bookkeeping_bytes(),
            table.finished_bookkeeping.as_ref(),
        ) {
            let split: Vec<String> = keys
                .iter()
                .map(|(key, bytes)| format!("{key} {bytes:.1}"))
                .collect();
            let ratio = (table.document_bytes + finished) / table.document_bytes;
            let target = table.children >= 10_000;
            rows.push(Row {
                item: 1,
                measure: format!(
                    "Bytes per child, finished session of {} children (closed, past its lateness, compacted)",
                    table.children
                ),
                result: format!(
                    "document {:.0} B + bookkeeping {finished:.1} B ({})",
                    table.document_bytes,
                    split.join(", ")
                ),
                against: "the document alone".to_owned(),
                ratio: format!("{ratio:.3}×"),
                target: if target { "≤ 1.1×".to_owned() } else { String::new() },
                status: if target { Status::of(ratio <= 1.1) } else { Status::Info },
            });
        }
    }
    json.insert("storage".into(), serde_json::to_value(&tables)?);

    let (before, frame_events) = if args.quick {
        (10_000, 2_000)
    } else {
        (100_000, 10_000)
    };
    let longest = storage::longest_step(
        servers,
        before,
        frame_events,
        sessionfold_processor::config::DEFAULT_MAX_EVENTS_PER_STEP,
    )
    .await?;
    step("longest apply step measured", clock);
    rows.push(Row {
        item: 1,
        measure: format!(
            "Longest apply step (Redis slow log): a frame of {} events, a tenth out of order, into a session of {} children",
            count(longest.frame_events as f64),
            count(longest.children_before as f64)
        ),
        result: format!(
            "{:.1} ms in slices of {} events ({} steps; `MAX_EVENTS_PER_STEP`)",
            longest.sliced_ms, longest.slice_events, longest.slices
        ),
        against: format!("one step for the frame: {:.1} ms", longest.whole_ms),
        ratio: String::new(),
        target: "≤ 10 ms".to_owned(),
        status: Status::of(longest.sliced_ms <= 10.0),
    });
    json.insert("longest_step".into(), serde_json::to_value(&longest)?);
    Ok(floor.events_per_sec())
}

/// End-to-end throughput (1 processor) and freshness for each
/// `REDIS_DURABILITY`, with a replica attached to the bench's Redis for all
/// three, so that only the processors' wait differs.
async fn durability_rows(
    args: &Args,
    servers: &Servers,
    workload: &Workload,
    rows: &mut Vec<Row>,
    json: &mut serde_json::Map<String, serde_json::Value>,
    clock: Instant,
) -> anyhow::Result<()> {
    let replica = tokio::task::block_in_place(|| servers.start_redis_replica())?;
    let mut results = serde_json::Map::new();
    let fresh_secs = args.fresh_secs.min(10);
    for mode in ["none", "fsync", "replica"] {
        servers.set_processor_env(vec![("REDIS_DURABILITY", mode.to_owned())]);
        let run = e2e::run(servers, workload, 1, args.connections).await?;
        raw::settle().await;
        let fresh = freshness::run(
            servers,
            args.fresh_connections,
            args.events_per_frame,
            Duration::from_secs(fresh_secs),
        )
        .await?;
        raw::settle().await;
        step(
            &format!(
                "REDIS_DURABILITY={mode}: {} events/s end to end, freshness p99 {} ms",
                count(run.events_per_sec()),
                ms(fresh.visible.p99())
            ),
            clock,
        );
        rows.push(Row::info(
            2,
            format!("`REDIS_DURABILITY={mode}`: end to end with 1 processor, and freshness at {} events/s", count(fresh.events_per_sec)),
            format!(
                "{} events/s ({}/{} documents exact); send → visible p50 {} / p99 {} ms",
                count(run.events_per_sec()),
                run.exact_documents,
                run.sessions,
                ms(fresh.visible.p50()),
                ms(fresh.visible.p99())
            ),
        ));
        results.insert(
            mode.to_owned(),
            serde_json::json!({
                "end_to_end": run,
                "freshness_p50_ms": fresh.visible.p50().as_secs_f64() * 1e3,
                "freshness_p99_ms": fresh.visible.p99().as_secs_f64() * 1e3,
            }),
        );
    }
    servers.set_processor_env(Vec::new());
    drop(replica);
    json.insert("durability".into(), serde_json::Value::Object(results));
    Ok(())
}

/// `GET /sessions` latencies over many sessions; pages of a large session
/// against `GET /data` of it.
async fn query_rows(
    args: &Args,
    servers: &Servers,
    rows: &mut Vec<Row>,
    json: &mut serde_json::Map<String, serde_json::Value>,
    clock: Instant,
) -> anyhow::Result<()> {
    let queries = sessionfold_bench::query::run(
        servers,
        args.query_sessions,
        args.query_children,
        args.query_requests,
    )
    .await?;
    let latency = |l: &sessionfold_bench::query::Latency| {
        format!(
            "p50 {:.2} / p99 {:.2} ms ({} B)",
            l.p50_ms, l.p99_ms, l.bytes
        )
    };
    for listing in &queries.listing {
        step(
            &format!(
                "GET /sessions, {}: p99 {:.2} ms",
                listing.what, listing.p99_ms
            ),
            clock,
        );
        rows.push(Row::info(
            4,
            format!(
                "`GET /sessions` over {} sessions: {}",
                count(queries.sessions as f64),
                listing.what
            ),
            latency(listing),
        ));
    }
    let whole = queries.pages.first().context("no GET /data timing")?;
    for page in &queries.pages[1..] {
        step(
            &format!(
                "GET /data/children, {}: p99 {:.2} ms",
                page.what, page.p99_ms
            ),
            clock,
        );
        rows.push(Row {
            item: 4,
            measure: format!(
                "`GET /data/children` of a session of {} children: {}",
                count(queries.children as f64),
                page.what
            ),
            result: latency(page),
            against: format!(
                "`GET /data` of it ({} B): {}",
                queries.document_bytes,
                latency(whole)
            ),
            ratio: percent(page.p50_ms, whole.p50_ms),
            target: String::new(),
            status: Status::Info,
        });
    }
    json.insert("queries".into(), serde_json::to_value(&queries)?);
    Ok(())
}

/// Prints a line as soon as a step is done, so a long run shows progress.
fn step(what: &str, started: Instant) {
    eprintln!("bench: [{:>5.1} s] {what}", started.elapsed().as_secs_f64());
}

fn percent(part: f64, whole: f64) -> String {
    format!("{:.0} %", 100.0 * part / whole)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.shrink_if_quick();
    let clock = Instant::now();
    let mut machine = Machine::describe();
    let servers = tokio::task::spawn_blocking(Servers::start).await??;
    step(
        &format!(
            "nats-server {} and redis-server {} up; services from {}",
            servers.nats_url(),
            servers.redis_url(),
            servers.bin().display()
        ),
        clock,
    );
    let mut spec = WorkloadSpec::new(
        args.seed,
        args.sessions,
        args.frames_per_session,
        args.events_per_frame,
    );
    spec.session_prefix = "bench".to_owned();
    let workload = Workload::generate(&spec);
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut json = serde_json::Map::new();
    let frame_bytes = workload
        .sessions
        .iter()
        .flat_map(|s| &s.frames)
        .map(String::len)
        .sum::<usize>()
        / workload.frames().max(1);
    notes.push(format!(
        "Throughput workload: {} sessions × {} frames × {} EVENTs (+ SESSION_START/END), \
         {} frames, {} events, {frame_bytes} bytes per frame on average (`loadgen`, seed {}: \
         a quarter of the events out of order, 10 % repeated).",
        args.sessions,
        args.frames_per_session,
        args.events_per_frame,
        workload.frames(),
        workload.events(),
        args.seed
    ));

    let mut raw_publish = None;
    if args.wants("raw") {
        let publish = raw::jetstream_publish(&servers, &workload, args.outstanding).await?;
        step(
            &format!(
                "JetStream publish: {} events/s",
                count(publish.events_per_sec())
            ),
            clock,
        );
        rows.push(Row::info(
            1,
            format!(
                "JetStream publish, async-nats alone, ≤ {} PubAcks outstanding",
                args.outstanding
            ),
            format!(
                "{} events/s ({} frames/s)",
                count(publish.events_per_sec()),
                count(publish.frames_per_sec())
            ),
        ));
        json.insert("jetstream_publish".into(), serde_json::to_value(publish)?);
        raw_publish = Some(publish);
        raw::settle().await;
        let (apply, exact) = raw::redis_apply(
            &servers,
            &workload,
            args.apply_batch_frames,
            args.apply_concurrency,
        )
        .await?;
        step(
            &format!(
                "Redis apply: {} events/s ({exact}/{} documents exact)",
                count(apply.events_per_sec()),
                args.sessions
            ),
            clock,
        );
        rows.push(Row::info(
            1,
            format!(
                "Redis apply step, `Store::apply`, {} frames per pipeline, {} in flight",
                args.apply_batch_frames, args.apply_concurrency
            ),
            format!(
                "{} events/s ({} frames/s)",
                count(apply.events_per_sec()),
                count(apply.frames_per_sec())
            ),
        ));
        if exact != args.sessions {
            notes.push(format!(
                "Raw apply: only {exact} of {} documents equal the reference fold.",
                args.sessions
            ));
        }
        json.insert("redis_apply".into(), serde_json::to_value(apply)?);
        raw::settle().await;
    }

    // Before the storage rows, whose large sessions leave Redis with much
    // memory to fork for the AOF rewrites between measurements.
    if args.wants("steps") {
        step_size_rows(&args, &servers, &mut rows, &mut json, clock).await?;
    }

    let mut floor_events_per_sec = None;
    if args.wants("storage") {
        floor_events_per_sec =
            Some(storage_rows(&args, &servers, &workload, &mut rows, &mut json, clock).await?);
    }

    if args.wants("durability") {
        durability_rows(&args, &servers, &workload, &mut rows, &mut json, clock).await?;
    }

    if args.wants("lifecycle") {
        lifecycle_rows(&args, &servers, &workload, &mut rows, &mut json, clock).await?;
    }

    if args.wants("queries") {
        query_rows(&args, &servers, &mut rows, &mut json, clock).await?;
        raw::settle().await;
    }

    if args.wants("servers") {
        servers_side_by_side(&args, &workload, &mut rows, &mut notes, &mut json, clock).await?;
    }

    if args.wants("e2e") {
        let mut runs = Vec::new();
        for &replicas in &args.replicas {
            let run = e2e::run(&servers, &workload, replicas, args.connections).await?;
            step(
                &format!(
                    "end to end, {replicas} processor(s): {} events/s ({}/{} documents exact)",
                    count(run.events_per_sec()),
                    run.exact_documents,
                    run.sessions
                ),
                clock,
            );
            let plural = if replicas == 1 { "" } else { "s" };
            let mut row = Row::info(
                2,
                format!(
                    "End to end, {} WebSocket clients, frames of {} events, {replicas} processor{plural}",
                    args.connections, args.events_per_frame
                ),
                format!(
                    "{} events/s (acked at {} events/s)",
                    count(run.events_per_sec()),
                    count(run.events as f64 / run.acked_seconds)
                ),
            );
            if let Some(publish) = raw_publish {
                row.against = "raw JetStream publish".to_owned();
                row.ratio = percent(run.events_per_sec(), publish.events_per_sec());
                row.target = "≥ 60 %".to_owned();
                row.status = Status::of(run.events_per_sec() >= 0.6 * publish.events_per_sec());
            }
            rows.push(row);
            if run.exact_documents != run.sessions {
                notes.push(format!(
                    "End to end with {replicas} processor(s): only {} of {} documents equal the reference fold.",
                    run.exact_documents, run.sessions
                ));
            }
            let cpu: Vec<String> = run
                .cpu
                .iter()
                .map(|(name, secs)| format!("{name} {secs:.1}"))
                .collect();
            notes.push(format!(
                "CPU seconds in the {replicas}-processor run ({:.1} s × {} cores): {}.",
                run.complete_seconds,
                machine.nproc,
                cpu.join(", ")
            ));
            runs.push(run);
            raw::settle().await;
        }
        if let (Some(floor), Some(one)) = (
            floor_events_per_sec,
            runs.iter().find(|run| run.replicas == 1),
        ) {
            let ratio = one.events_per_sec() / floor;
            rows.push(Row {
                item: 2,
                measure: "End to end with 1 processor against the floor's events/s".to_owned(),
                result: format!("{} events/s", count(one.events_per_sec())),
                against: format!("floor, {} events/s", count(floor)),
                ratio: format!("{:.0} %", ratio * 100.0),
                target: "≥ 50 %".to_owned(),
                status: Status::of(ratio >= 0.5),
            });
        }
        json.insert("end_to_end".into(), serde_json::to_value(&runs)?);
    }

    if args.wants("fresh") {
        let fresh = freshness::run(
            &servers,
            args.fresh_connections,
            args.events_per_frame,
            Duration::from_secs(args.fresh_secs),
        )
        .await?;
        step(
            &format!(
                "freshness: p50 {} / p99 {} / max {} ms at {} events/s",
                ms(fresh.visible.p50()),
                ms(fresh.visible.p99()),
                ms(fresh.visible.max()),
                count(fresh.events_per_sec)
            ),
            clock,
        );
        rows.push(Row {
            item: 3,
            measure: format!(
                "Freshness at {} events/s ({} clients × 1 frame/s × {} events), send → visible in `GET /data`",
                count(fresh.events_per_sec),
                fresh.connections,
                fresh.events_per_frame
            ),
            result: format!(
                "p50 {} / p99 {} / max {} ms",
                ms(fresh.visible.p50()),
                ms(fresh.visible.p99()),
                ms(fresh.visible.max())
            ),
            against: String::new(),
            ratio: String::new(),
            target: "p99 < 25 ms".to_owned(),
            status: Status::of(
                fresh.visible.p99() < Duration::from_millis(25) && fresh.never_visible == 0,
            ),
        });
        rows.push(Row::info(
            3,
            "… of which send → acknowledged on the socket",
            format!(
                "p50 {} / p99 {} / max {} ms",
                ms(fresh.acked.p50()),
                ms(fresh.acked.p99()),
                ms(fresh.acked.max())
            ),
        ));
        notes.push(format!(
            "Freshness: {} frames measured, {} never visible within 10 s, {} `GET /data` polls (1 ms apart per frame).",
            fresh.visible.len(),
            fresh.never_visible,
            fresh.polls
        ));
        json.insert(
            "freshness_ms".into(),
            serde_json::json!({
                "p50": fresh.visible.p50().as_secs_f64() * 1e3,
                "p99": fresh.visible.p99().as_secs_f64() * 1e3,
                "max": fresh.visible.max().as_secs_f64() * 1e3,
                "ack_p50": fresh.acked.p50().as_secs_f64() * 1e3,
                "ack_p99": fresh.acked.p99().as_secs_f64() * 1e3,
                "events_per_sec": fresh.events_per_sec,
            }),
        );
        raw::settle().await;
    }

    if args.wants("read") {
        let read = read::run(
            &servers,
            args.read_events,
            args.read_concurrency,
            Duration::from_secs(args.read_secs),
        )
        .await?;
        step(
            &format!(
                "read path: api {} req/s, JSON.GET {} req/s",
                count(read.api.per_sec()),
                count(read.raw.per_sec())
            ),
            clock,
        );
        rows.push(Row {
            item: 4,
            measure: format!(
                "`GET /data`, {}-event document ({} bytes), {} concurrent loops",
                args.read_events, read.document_bytes, read.concurrency
            ),
            result: format!(
                "{} req/s, p99 {} ms",
                count(read.api.per_sec()),
                ms(read.api.latency.p99())
            ),
            against: format!(
                "raw `JSON.GET`: {} req/s, p99 {} ms",
                count(read.raw.per_sec()),
                ms(read.raw.latency.p99())
            ),
            ratio: percent(read.api.per_sec(), read.raw.per_sec()),
            target: "≥ 70 %".to_owned(),
            status: Status::of(read.api.per_sec() >= 0.7 * read.raw.per_sec()),
        });
        for (what, load) in [("`GET /data`", &read.api), ("raw `JSON.GET`", &read.raw)] {
            let cpu: Vec<String> = load
                .cpu
                .iter()
                .map(|(name, secs)| format!("{name} {secs:.1}"))
                .collect();
            notes.push(format!(
                "CPU seconds in the {what} loops ({} s × {} cores): {}.",
                load.seconds,
                machine.nproc,
                cpu.join(", ")
            ));
        }
        json.insert(
            "read_path".into(),
            serde_json::json!({
                "api_per_sec": read.api.per_sec(),
                "api_p99_ms": read.api.latency.p99().as_secs_f64() * 1e3,
                "raw_per_sec": read.raw.per_sec(),
                "raw_p99_ms": read.raw.latency.p99().as_secs_f64() * 1e3,
            }),
        );
        raw::settle().await;
    }

    if args.wants("growth") {
        let costs = growth::apply_cost(&servers, &args.growth_sizes, args.growth_events).await?;
        let base = |ooo: u32| {
            costs
                .iter()
                .find(|c| c.out_of_order_percent == ooo)
                .map(|c| c.server_us_per_event)
        };
        let smallest = args.growth_sizes.iter().copied().min().unwrap_or(0);
        let largest = args.growth_sizes.iter().copied().max().unwrap_or(0);
        for cost in &costs {
            step(
                &format!(
                    "apply cost, {} children, {} % out of order: {:.2} µs/event",
                    cost.children, cost.out_of_order_percent, cost.server_us_per_event
                ),
                clock,
            );
            let order = if cost.out_of_order_percent == 0 {
                "in order".to_owned()
            } else {
                format!("{} % out of order", cost.out_of_order_percent)
            };
            let mut row = Row::info(
                5,
                format!(
                    "Apply cost per event, session of {} children, {order}",
                    count(cost.children as f64)
                ),
                format!(
                    "{:.2} µs in Redis ({:.2} µs wall)",
                    cost.server_us_per_event, cost.wall_us_per_event
                ),
            );
            if cost.children != smallest
                && let Some(base) = base(cost.out_of_order_percent)
            {
                row.against = format!("{} children, {order}", count(smallest as f64));
                row.ratio = format!("{:.2}×", cost.server_us_per_event / base);
                if cost.out_of_order_percent == 0 && cost.children == largest {
                    row.target = "≤ 1.5×".to_owned();
                    row.status = Status::of(cost.server_us_per_event <= 1.5 * base);
                }
            }
            rows.push(row);
        }
        json.insert("apply_cost".into(), serde_json::to_value(&costs)?);
        raw::settle().await;
    }

    if args.wants("live") {
        live_rows(&args, &servers, &mut rows, &mut json, clock).await?;
        raw::settle().await;
    }

    if args.wants("idle") {
        let idle = growth::idle_connections(&servers, args.idle_connections).await?;
        let mb = |kb: u64| kb as f64 / 1024.0;
        step(
            &format!(
                "idle connections: ingest VmRSS {:.1} MB with {}",
                mb(idle.rss_kb),
                idle.connections
            ),
            clock,
        );
        rows.push(Row {
            item: 5,
            measure: format!(
                "Ingest RSS with {} idle WebSocket connections",
                count(idle.connections as f64)
            ),
            result: format!(
                "{:.1} MB ({:.1} MB before; {:.1} KB per connection)",
                mb(idle.rss_kb),
                mb(idle.rss_before_kb),
                idle.per_connection_kb()
            ),
            against: String::new(),
            ratio: String::new(),
            target: "< 200 MB".to_owned(),
            status: Status::of(mb(idle.rss_kb) < 200.0),
        });
        json.insert("idle_connections".into(), serde_json::to_value(&idle)?);
    }

    if args.wants("commit") {
        let options = sessionfold_bench::commit::Options {
            throughput: spec.clone(),
            throughput_connections: args.connections,
            web_sessions: args.web_sessions,
            web_connections: args.web_connections,
            outstanding: args.outstanding,
            batch_frames: args.batch_frames,
            batches_in_flight: 2,
            latency_frames: args.latency_frames,
        };
        sessionfold_bench::commit::rows(
            &options, &servers, &mut rows, &mut notes, &mut json, clock,
        )
        .await?;
    }

    machine.finish();
    let block = report::block(&machine, &rows, &notes);
    println!("\n{block}");
    if !args.no_record {
        report::record(&args.record, &args.label, &block)?;
        eprintln!(
            "bench: recorded in {} (block `{}`)",
            args.record.display(),
            args.label
        );
    }
    json.insert("machine".into(), serde_json::to_value(&machine)?);
    json.insert("rows".into(), serde_json::to_value(&rows)?);
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&serde_json::Value::Object(json))?,
    )?;
    step(&format!("done; results in {}", args.json.display()), clock);
    if args.keep_logs {
        eprintln!(
            "bench: service logs kept in {}",
            servers.keep_logs().display()
        );
    }
    Ok(())
}

/// The choices of the servers, measured side by side on servers of their
/// own: JetStream's `sync_interval` (`always`, shipped, against nats-server's
/// default `2m`) on raw publish and on ingest's acknowledged rate; the
/// apply step on Debian's redis-server 7.0 (when `.deps/bin/redis-server-7.0`
/// exists) against Valkey 9, without and with the query engine loaded.
async fn servers_side_by_side(
    args: &Args,
    workload: &Workload,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
    json: &mut serde_json::Map<String, serde_json::Value>,
    clock: Instant,
) -> anyhow::Result<()> {
    use sessionfold_bench::system::REDIS_ARGS;
    use sessionfold_testkit::{NatsOptions, RedisOptions};

    let mut by_sync = serde_json::Map::new();
    for sync in ["always", "2m"] {
        let nats = NatsOptions {
            sync_interval: Some(sync.to_owned()),
            ..NatsOptions::default()
        };
        let servers = tokio::task::spawn_blocking(move || {
            Servers::start_with(nats, RedisOptions::with_args(REDIS_ARGS))
        })
        .await??;
        let publish = raw::jetstream_publish(&servers, workload, args.outstanding).await?;
        raw::settle().await;
        let run = e2e::run(&servers, workload, 1, args.connections).await?;
        let acked = run.events as f64 / run.acked_seconds;
        step(
            &format!(
                "sync_interval {sync}: publish {} events/s, ingest acks {} events/s",
                count(publish.events_per_sec()),
                count(acked)
            ),
            clock,
        );
        rows.push(Row::info(
            1,
            format!("JetStream publish, `sync_interval: {sync}`"),
            format!(
                "{} events/s ({} frames/s)",
                count(publish.events_per_sec()),
                count(publish.frames_per_sec())
            ),
        ));
        rows.push(Row::info(
            2,
            format!(
                "ingest's acknowledged rate, `sync_interval: {sync}`, {} connections, 1 processor",
                args.connections
            ),
            format!(
                "{} events/s ({} frames/s)",
                count(acked),
                count(run.frames as f64 / run.acked_seconds)
            ),
        ));
        by_sync.insert(
            sync.to_owned(),
            serde_json::json!({"publish": publish, "ingest_acked_events_per_sec": acked}),
        );
        drop(servers);
        raw::settle().await;
    }
    json.insert("sync_interval".into(), serde_json::Value::Object(by_sync));

    let old = sessionfold_bench::system::deps_bin("redis-server-7.0");
    let mut candidates: Vec<(String, RedisOptions)> = Vec::new();
    match old {
        Some(path) => candidates.push((
            "redis-server 7.0 (Debian)".to_owned(),
            RedisOptions {
                server: Some(path),
                search: Some(false),
                extra_args: REDIS_ARGS.iter().map(|a| a.to_string()).collect(),
                ..RedisOptions::default()
            },
        )),
        None => notes.push(
            "No `.deps/bin/redis-server-7.0` (Debian's redis-server is not installed):              the apply step was not measured on Redis 7.0."
                .to_owned(),
        ),
    }
    for (label, search) in [
        ("Valkey 9, RedisJSON only", false),
        ("Valkey 9, RedisJSON + query engine", true),
    ] {
        candidates.push((
            label.to_owned(),
            RedisOptions {
                search: Some(search),
                extra_args: REDIS_ARGS.iter().map(|a| a.to_string()).collect(),
                ..RedisOptions::default()
            },
        ));
    }
    let mut by_server = serde_json::Map::new();
    for (label, redis) in candidates {
        let servers =
            tokio::task::spawn_blocking(move || Servers::start_with(NatsOptions::default(), redis))
                .await??;
        let version = servers.redis_version().await.unwrap_or_default();
        let (apply, exact) = raw::redis_apply(
            &servers,
            workload,
            args.apply_batch_frames,
            args.apply_concurrency,
        )
        .await?;
        step(
            &format!(
                "apply step on {label} ({version}): {} events/s ({exact}/{} documents exact)",
                count(apply.events_per_sec()),
                args.sessions
            ),
            clock,
        );
        rows.push(Row::info(
            1,
            format!("Redis apply step on {label} ({version})"),
            format!(
                "{} events/s ({} frames/s)",
                count(apply.events_per_sec()),
                count(apply.frames_per_sec())
            ),
        ));
        if exact != args.sessions {
            notes.push(format!(
                "Apply step on {label}: only {exact} of {} documents equal the reference fold.",
                args.sessions
            ));
        }
        by_server.insert(label, serde_json::to_value(apply)?);
        drop(servers);
        raw::settle().await;
    }
    json.insert(
        "apply_by_server".into(),
        serde_json::Value::Object(by_server),
    );
    Ok(())
}
