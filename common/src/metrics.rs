//! Prometheus metrics: every metric name sessionfold records, the process's
//! recorder, and the `/metrics` route.
//!
//! Metrics go through the [`metrics`](::metrics) facade. The recorder is a
//! `metrics-exporter-prometheus` recorder installed once per process by
//! [`install`] (the services call it when they build their routes; several
//! services in one process, as in dev mode and the tests, share it), and
//! `/metrics` renders it. Counters end in `_total`, durations are histograms
//! in seconds ending in `_seconds`.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

// ------------------------------------------------------------------ ingest
/// Gauge: WebSocket connections open now.
pub const CONNECTIONS_OPEN: &str = "sessionfold_ingest_connections_open";
/// Counter: WebSocket connections accepted (upgraded).
pub const CONNECTIONS_TOTAL: &str = "sessionfold_ingest_connections_total";
/// Counter: frames acknowledged as stored.
pub const FRAMES_ACCEPTED_TOTAL: &str = "sessionfold_ingest_frames_accepted_total";
/// Counter, label `code`: frames rejected, by reply error code.
pub const FRAMES_REJECTED_TOTAL: &str = "sessionfold_ingest_frames_rejected_total";
/// Counter: events in frames acknowledged as stored.
pub const EVENTS_ACCEPTED_TOTAL: &str = "sessionfold_ingest_events_accepted_total";
/// Counter, label `code`: events rejected: the offending event of an
/// event-level error, or every event of a valid frame that could not be
/// stored (`unavailable`).
pub const EVENTS_REJECTED_TOTAL: &str = "sessionfold_ingest_events_rejected_total";
/// Histogram, label `outcome` (`stored`, `failed`): time from publishing a
/// frame to JetStream's PubAck (or the failure).
pub const PUBLISH_ACK_SECONDS: &str = "sessionfold_ingest_publish_ack_seconds";
/// Counter, label `outcome` (`committed`, `duplicate`, `not_enabled`,
/// `refused`, `unanswered`, `singles`): group commits of accepted frames.
/// Every outcome but `committed` and `singles` (too few frames to batch)
/// publishes the batch's frames one by one.
pub const PUBLISH_BATCHES_TOTAL: &str = "sessionfold_ingest_publish_batches_total";
/// Counter, labels `rule` (the configured path) and `action` (`remove`,
/// `hash`): fields redacted in events before they were published.
pub const REDACTIONS_TOTAL: &str = "sessionfold_ingest_redactions_total";
/// Histogram: frames per group commit.
pub const PUBLISH_BATCH_FRAMES: &str = "sessionfold_ingest_publish_batch_frames";

// --------------------------------------------------------------- processor
/// Histogram: messages per pulled batch.
pub const BATCH_MESSAGES: &str = "sessionfold_processor_batch_messages";
/// Histogram: one round trip of the apply step to Redis for a batch.
pub const APPLY_SECONDS: &str = "sessionfold_processor_apply_seconds";
/// Counter, label `outcome` (`acked`, `retried`, `refused`,
/// `dead_lettered`): what became of each pulled message.
pub const MESSAGES_TOTAL: &str = "sessionfold_processor_messages_total";
/// Counter: pulled messages that had been delivered before (delivered > 1).
pub const REDELIVERIES_TOTAL: &str = "sessionfold_processor_redeliveries_total";
/// Counter, label `kind` (`poison`, `refused`): messages moved to the
/// dead-letter stream.
pub const DEAD_LETTERS_TOTAL: &str = "sessionfold_processor_dead_letters_total";
/// Counter: apply attempts that failed because Redis was unavailable.
pub const REDIS_OUTAGES_TOTAL: &str = "sessionfold_processor_redis_unavailable_total";
/// Counter: apply attempts whose durability guarantee (`REDIS_DURABILITY`)
/// did not hold in time; the batch was kept and applied again.
pub const NOT_DURABLE_TOTAL: &str = "sessionfold_processor_not_durable_total";
/// Counter, label `reason`: repairs started because Redis lost writes the
/// processor had applied (`restarted`: a new server process, e.g. restarted
/// from older data or failed over; `marker_missing`: flushed or new).
pub const REPAIRS_TOTAL: &str = "sessionfold_repairs_total";
/// Counter: messages re-applied by repairs.
pub const REPAIR_MESSAGES_TOTAL: &str = "sessionfold_repair_messages_total";
/// Gauge: the stream sequence up to which every frame is known to be in
/// Redis (the applied floor written to each node), highest over the nodes.
pub const APPLIED_FLOOR: &str = "sessionfold_processor_applied_floor";
/// Gauge, label `consumer`: messages of the stream the durable consumer has
/// not delivered yet (lag), polled from JetStream.
pub const CONSUMER_PENDING: &str = "sessionfold_consumer_pending_messages";
/// Gauge, label `consumer`: messages delivered and not acked yet.
pub const CONSUMER_ACK_PENDING: &str = "sessionfold_consumer_ack_pending_messages";
/// Gauge, label `consumer`: messages being redelivered now.
pub const CONSUMER_REDELIVERED: &str = "sessionfold_consumer_redelivered_messages";

/// Counter, label `how` (`new`, `reopened`): sessions opened by a frame.
pub const SESSIONS_OPENED_TOTAL: &str = "sessionfold_sessions_opened_total";
/// Counter, label `reason` (`ended`, `idle`, `max_duration`): sessions
/// closed, counted once per close (the finished message stored).
pub const SESSIONS_CLOSED_TOTAL: &str = "sessionfold_sessions_closed_total";
/// Gauge: sessions whose close is pending (each has one timer), polled from
/// JetStream.
pub const SESSIONS_OPEN: &str = "sessionfold_sessions_open";
/// Counter, label `outcome` (`applied`: within the lateness, the session
/// opened again; `dead_lettered`; `rejected`, by ingest): frames for a
/// closed session.
pub const LATE_FRAMES_TOTAL: &str = "sessionfold_late_frames_total";
/// Histogram: how long after its due time a session actually closed.
pub const TIMER_LAG_SECONDS: &str = "sessionfold_timer_lag_seconds";

// --------------------------------------------------------------------- api
/// Counter, label `reason` (`busy`, `large_busy`, `timeout`, `redis`,
/// `too_large`): document reads the api refused or could not do.
pub const API_READS_REFUSED_TOTAL: &str = "sessionfold_api_reads_refused_total";
/// Gauge: live streams (`/data/stream`) open now.
pub const API_STREAMS_OPEN: &str = "sessionfold_api_streams_open";
/// Counter, label `limit` (`total`, `per_ip`): live streams refused at a cap.
pub const API_STREAMS_REFUSED_TOTAL: &str = "sessionfold_api_streams_refused_total";
/// Counter, label `reason` (as the stream's `end` event): live streams that
/// ended by themselves.
pub const API_STREAMS_ENDED_TOTAL: &str = "sessionfold_api_streams_ended_total";
/// Counter: document reads of the live feeds: one when a session's first
/// stream opens and one per gap in its notes, however many streams watch it.
pub const API_LIVE_READS_TOTAL: &str = "sessionfold_api_live_reads_total";
/// Counter: JetStream consumer-info lookups of `min_seq` reads (one at a
/// time, shared by every waiter).
pub const API_ACK_FLOOR_LOOKUPS_TOTAL: &str = "sessionfold_api_ack_floor_lookups_total";
/// Counter, label `outcome` (`applied`, `not_yet_applied`, `refused`):
/// `min_seq` reads by how their wait ended.
pub const API_MIN_SEQ_READS_TOTAL: &str = "sessionfold_api_min_seq_reads_total";

// -------------------------------------------------------------------- http
/// Counter, labels `route` (the matched route, `other` for none),
/// `method` (a standard method, else `other`), `status`: HTTP requests
/// answered, on every service.
pub const HTTP_REQUESTS_TOTAL: &str = "sessionfold_http_requests_total";
/// Histogram, labels `route`, `method`, `status`: time to answer a request
/// (for `/websocket`, until the upgrade).
pub const HTTP_REQUEST_SECONDS: &str = "sessionfold_http_request_duration_seconds";
/// Gauge: open connections of every kind (HTTP, SSE, WebSockets) on the
/// process's listeners.
pub const HTTP_CONNECTIONS_OPEN: &str = "sessionfold_http_connections_open";
/// Counter, label `limit` (`total`, `per_ip`, `read_budget`): connections
/// closed at once because a connection cap was reached, or because they
/// waited too long for read budget.
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "sessionfold_http_connections_refused_total";

/// Buckets of the latency histograms, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of the timer-lag histogram, in seconds.
const TIMER_LAG_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];
/// Buckets of the batch-size histogram, in messages.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The process's Prometheus handle, installing the recorder on first use.
/// If another recorder was installed first (by code outside sessionfold),
/// the handle renders an empty page instead of failing the service.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            Matcher::Full(TIMER_LAG_SECONDS.into()),
                            TIMER_LAG_BUCKETS,
                        )
                    })
                    .and_then(|b| {
                        b.set_buckets_for_metric(Matcher::Full(BATCH_MESSAGES.into()), BATCH_BUCKETS)
                    })
                    .expect("bucket lists are not empty")
            };
            let handle = match builder().install_recorder() {
                Ok(handle) => handle,
                Err(err) => {
                    tracing::warn!(error = %err, "a metrics recorder was already installed; /metrics stays empty");
                    builder().build_recorder().handle()
                }
            };
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(CONNECTIONS_OPEN, "WebSocket connections open now");
    describe_counter!(CONNECTIONS_TOTAL, "WebSocket connections accepted");
    describe_counter!(FRAMES_ACCEPTED_TOTAL, "Frames stored and acknowledged");
    describe_counter!(FRAMES_REJECTED_TOTAL, "Frames rejected, by error code");
    describe_counter!(EVENTS_ACCEPTED_TOTAL, "Events in stored frames");
    describe_counter!(EVENTS_REJECTED_TOTAL, "Events rejected, by error code");
    describe_histogram!(
        PUBLISH_ACK_SECONDS,
        Unit::Seconds,
        "Time from publishing a frame to its JetStream PubAck"
    );
    describe_counter!(
        REDACTIONS_TOTAL,
        "Fields redacted before publishing, by rule and action"
    );
    describe_counter!(
        PUBLISH_BATCHES_TOTAL,
        "Group commits of accepted frames, by outcome"
    );
    describe_histogram!(PUBLISH_BATCH_FRAMES, Unit::Count, "Frames per group commit");
    describe_histogram!(
        BATCH_MESSAGES,
        Unit::Count,
        "Messages per batch pulled by the processor"
    );
    describe_histogram!(
        APPLY_SECONDS,
        Unit::Seconds,
        "One round trip of the Redis apply step"
    );
    describe_counter!(MESSAGES_TOTAL, "Pulled messages, by outcome");
    describe_counter!(
        REDELIVERIES_TOTAL,
        "Pulled messages that had been delivered before"
    );
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        "Messages moved to the dead-letter stream"
    );
    describe_counter!(
        REDIS_OUTAGES_TOTAL,
        "Apply attempts that failed because Redis was unavailable"
    );
    describe_counter!(
        NOT_DURABLE_TOTAL,
        "Apply attempts whose durability guarantee did not hold in time"
    );
    describe_counter!(
        REPAIRS_TOTAL,
        "Repairs started because Redis lost applied writes, by reason"
    );
    describe_counter!(REPAIR_MESSAGES_TOTAL, "Messages re-applied by repairs");
    describe_gauge!(
        APPLIED_FLOOR,
        "Stream sequence up to which every frame is known to be in Redis"
    );
    describe_gauge!(
        CONSUMER_PENDING,
        "Stream messages the durable consumer has not delivered yet"
    );
    describe_gauge!(CONSUMER_ACK_PENDING, "Messages delivered and not acked yet");
    describe_gauge!(CONSUMER_REDELIVERED, "Messages being redelivered");
    describe_counter!(SESSIONS_OPENED_TOTAL, "Sessions opened by a frame, by how");
    describe_counter!(SESSIONS_CLOSED_TOTAL, "Sessions closed, by reason");
    describe_gauge!(SESSIONS_OPEN, "Sessions whose close is pending");
    describe_counter!(LATE_FRAMES_TOTAL, "Frames for a closed session, by outcome");
    describe_histogram!(
        TIMER_LAG_SECONDS,
        Unit::Seconds,
        "How long after its due time a session closed"
    );
    describe_counter!(
        API_READS_REFUSED_TOTAL,
        "Document reads refused or failed, by reason"
    );
    describe_gauge!(API_STREAMS_OPEN, "Live streams open now");
    describe_counter!(
        API_STREAMS_REFUSED_TOTAL,
        "Live streams refused at a cap, by limit"
    );
    describe_counter!(
        API_STREAMS_ENDED_TOTAL,
        "Live streams that ended by themselves, by reason"
    );
    describe_counter!(
        API_LIVE_READS_TOTAL,
        "Document reads of the live feeds (one per session followed, and one per gap in its notes)"
    );
    describe_counter!(
        API_ACK_FLOOR_LOOKUPS_TOTAL,
        "JetStream consumer-info lookups of min_seq reads, shared by every waiter"
    );
    describe_counter!(
        API_MIN_SEQ_READS_TOTAL,
        "min_seq reads, by how their wait ended"
    );
    describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests, by route and status");
    describe_gauge!(HTTP_CONNECTIONS_OPEN, "Open connections of every kind");
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED_TOTAL,
        "Connections closed at once because a connection cap was reached"
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "Time to answer an HTTP request"
    );
}

/// `GET /metrics`: the Prometheus text exposition of this process's metrics.
pub fn routes() -> Router {
    let handle = install();
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                // Histograms are drained into their buckets by the upkeep;
                // run it here so every scrape is current.
                handle.run_upkeep();
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    )],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}

/// Records the outcome of one frame on a connection.
pub fn frame_accepted(events: usize) {
    ::metrics::counter!(FRAMES_ACCEPTED_TOTAL).increment(1);
    ::metrics::counter!(EVENTS_ACCEPTED_TOTAL).increment(events as u64);
}

/// Records a frame for a closed session and what became of it.
pub fn late_frame(outcome: &'static str) {
    ::metrics::counter!(LATE_FRAMES_TOTAL, "outcome" => outcome).increment(1);
}

/// Records a rejected frame with its reply `code` and the events it rejects.
pub fn frame_rejected(code: &'static str, events: usize) {
    ::metrics::counter!(FRAMES_REJECTED_TOTAL, "code" => code).increment(1);
    events_rejected(code, events);
}

/// Records `events` valid events rejected with `code` (their frame is
/// counted by [`frame_rejected`]).
pub fn events_rejected(code: &'static str, events: usize) {
    if events > 0 {
        ::metrics::counter!(EVENTS_REJECTED_TOTAL, "code" => code).increment(events as u64);
    }
}

/// Records one publish-to-PubAck wait.
pub fn publish_acked(elapsed: Duration, stored: bool) {
    let outcome = if stored { "stored" } else { "failed" };
    ::metrics::histogram!(PUBLISH_ACK_SECONDS, "outcome" => outcome).record(elapsed.as_secs_f64());
}

/// Counts `count` fields redacted by the rule on `path`.
pub fn redacted(path: &str, action: &'static str, count: usize) {
    ::metrics::counter!(REDACTIONS_TOTAL, "rule" => path.to_owned(), "action" => action)
        .increment(count as u64);
}

/// Counts one group commit of `frames` frames and how it went.
pub fn publish_batch(outcome: &'static str, frames: usize) {
    ::metrics::counter!(PUBLISH_BATCHES_TOTAL, "outcome" => outcome).increment(1);
    ::metrics::histogram!(PUBLISH_BATCH_FRAMES).record(frames as f64);
}

/// Counts an open WebSocket connection for as long as it lives.
#[must_use = "the connection counts as open while the guard lives"]
pub struct OpenConnection(());

impl OpenConnection {
    pub fn open() -> Self {
        ::metrics::counter!(CONNECTIONS_TOTAL).increment(1);
        ::metrics::gauge!(CONNECTIONS_OPEN).increment(1.0);
        Self(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        ::metrics::gauge!(CONNECTIONS_OPEN).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prometheus_conventions() {
        let counters = [
            CONNECTIONS_TOTAL,
            FRAMES_ACCEPTED_TOTAL,
            FRAMES_REJECTED_TOTAL,
            EVENTS_ACCEPTED_TOTAL,
            EVENTS_REJECTED_TOTAL,
            PUBLISH_BATCHES_TOTAL,
            REDACTIONS_TOTAL,
            MESSAGES_TOTAL,
            REDELIVERIES_TOTAL,
            DEAD_LETTERS_TOTAL,
            REDIS_OUTAGES_TOTAL,
            NOT_DURABLE_TOTAL,
            REPAIRS_TOTAL,
            REPAIR_MESSAGES_TOTAL,
            HTTP_REQUESTS_TOTAL,
            HTTP_CONNECTIONS_REFUSED_TOTAL,
        ];
        assert!(counters.iter().all(|name| name.ends_with("_total")));
        let durations = [PUBLISH_ACK_SECONDS, APPLY_SECONDS, HTTP_REQUEST_SECONDS];
        assert!(durations.iter().all(|name| name.ends_with("_seconds")));
        assert!(
            counters
                .iter()
                .chain(&durations)
                .all(|name| name.starts_with("sessionfold_"))
        );
    }

    #[test]
    fn recorded_metrics_are_rendered() {
        let handle = install();
        frame_rejected("invalid_json", 0);
        publish_acked(Duration::from_millis(3), true);
        handle.run_upkeep();
        let page = handle.render();
        assert!(
            page.contains(r#"sessionfold_ingest_frames_rejected_total{code="invalid_json"}"#),
            "{page}"
        );
        assert!(
            page.contains(
                r#"sessionfold_ingest_publish_ack_seconds_bucket{outcome="stored",le="0.005"}"#
            ),
            "{page}"
        );
        // A second install in the same process returns the same recorder.
        assert!(
            install()
                .render()
                .contains("sessionfold_ingest_frames_rejected_total")
        );
    }
}
