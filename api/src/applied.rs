//! Read your writes: `GET /data?session_id=X&min_seq=S&wait_ms=T` answers
//! once the document holds every accepted frame of the stream up to stream
//! sequence `S` (the `seq` of an accepted reply, docs/design.md §1.2).
//!
//! A processor acks a frame only after its apply is stored (§3), so the
//! durable consumer's **ack floor** (every message up to it is settled)
//! reaching `S` means every frame up to `S` is in its document. A frame
//! that was dead-lettered is settled too (terminated), so it counts as
//! applied: its document will never hold it, and waiting longer would not
//! change that.
//!
//! A waiter does not poll Redis: it listens to the session's update notes
//! (sent after each apply, just before its ack) and a timer that starts at
//! [`FIRST_CHECK`] and doubles up to [`COARSE_CHECK`], and on each wake
//! asks JetStream for the consumer's info. Concurrent waiters share one
//! lookup: a waiter takes the answer of any lookup that started after it
//! asked, so however many wait, at most one lookup is in flight. The
//! highest floor seen is kept, and a `min_seq` at or below it is answered
//! at once, without a lookup.
//!
//! Waits are capped: `wait_ms` up to `API_MAX_WAIT_MS`, waiters per client
//! address (`API_MAX_WAITERS_PER_IP`) and in all (`API_MAX_WAITERS`). Past
//! `wait_ms` the answer is 503 `not_yet_applied` with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use sessionfold_common::rate_limit::IpKey;
use tokio::time::Instant;

use sessionfold_common::metrics::{API_ACK_FLOOR_LOOKUPS_TOTAL, API_MIN_SEQ_READS_TOTAL};

use crate::error::ApiError;

/// The first re-check after a check that found the floor short.
pub const FIRST_CHECK: Duration = Duration::from_millis(5);
/// The longest a waiter goes without a check when no note wakes it
/// (frames of other sessions can hold the floor back; they send no note
/// to this session).
pub const COARSE_CHECK: Duration = Duration::from_millis(250);
/// Deadline of one consumer-info lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the api finds what the processors applied.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ConsumerNames {
    /// JetStream stream holding accepted frames (the processors' stream).
    #[arg(long = "stream-name", env = "STREAM_NAME", default_value = sessionfold_core::names::DEFAULT_EVENT_STREAM)]
    pub stream_name: String,
    /// The processors' durable consumer, whose ack floor says what is applied.
    #[arg(long = "consumer-name", env = "CONSUMER_NAME", default_value = sessionfold_core::names::DEFAULT_CONSUMER)]
    pub consumer_name: String,
}

sessionfold_common::defaults_from_flags!(ConsumerNames);

/// Limits of `min_seq` reads.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct AppliedSettings {
    /// Longest `wait_ms` a `min_seq` read may ask for, in milliseconds;
    /// more is refused with 400 `invalid_wait_ms`.
    #[arg(long, env = "API_MAX_WAIT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub max_wait_ms: u64,
    /// `min_seq` reads waiting at once, in all; 0: no limit.
    #[arg(long, env = "API_MAX_WAITERS", default_value_t = 1024)]
    pub max_waiters: usize,
    /// `min_seq` reads waiting at once from one client IP; 0: no limit.
    #[arg(long, env = "API_MAX_WAITERS_PER_IP", default_value_t = 32)]
    pub max_waiters_per_ip: usize,
}

sessionfold_common::defaults_from_flags!(AppliedSettings);

/// What a `min_seq` read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinSeq {
    pub seq: u64,
    pub wait: Duration,
}

impl MinSeq {
    /// `min_seq` and `wait_ms` from the query: `None` without `min_seq`;
    /// `wait_ms` defaults to 0 (check once) and may not pass `max_wait_ms`
    /// (checked with or without `min_seq`).
    pub fn from_query(query: &str, max_wait_ms: u64) -> Result<Option<Self>, ApiError> {
        let value = |name: &str| {
            sessionfold_core::session::query_value(query, name)
                .map_err(|err| ApiError::InvalidParameter(name_code(name), err.to_string()))
        };
        let seq = value("min_seq")?;
        let wait = value("wait_ms")?;
        let seq = match seq {
            None => None,
            Some(seq) => Some(seq.parse::<u64>().ok().filter(|&seq| seq >= 1).ok_or_else(
                || {
                    ApiError::InvalidParameter(
                    "invalid_min_seq",
                    "min_seq must be a stream sequence: an integer from 1 to 18446744073709551615"
                        .to_owned(),
                )
                },
            )?),
        };
        let wait_ms = match wait {
            None => 0,
            Some(wait) => wait
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms <= max_wait_ms)
                .ok_or_else(|| {
                    ApiError::InvalidParameter(
                        "invalid_wait_ms",
                        format!(
                            "wait_ms must be an integer from 0 to {max_wait_ms} (API_MAX_WAIT_MS)"
                        ),
                    )
                })?,
        };
        // Without min_seq there is nothing to wait for: wait_ms, checked
        // all the same, changes nothing.
        Ok(seq.map(|seq| Self {
            seq,
            wait: Duration::from_millis(wait_ms),
        }))
    }
}

fn name_code(name: &str) -> &'static str {
    if name == "min_seq" {
        "invalid_min_seq"
    } else {
        "invalid_wait_ms"
    }
}

/// The ack floor of the processors' consumer, looked up on demand and
/// shared by every waiter.
pub struct Applied {
    client: Option<async_nats::Client>,
    info_subject: String,
    /// The highest stream sequence the consumer's info accounts for (its
    /// delivered sequence and the messages pending after it), 0 before
    /// one is known: a `min_seq` above it was never given to a producer.
    last_seen: AtomicU64,
    /// The highest ack floor seen.
    known: AtomicU64,
    /// When the last finished lookup started; held while one runs, so
    /// lookups never overlap.
    last_lookup: tokio::sync::Mutex<Option<Instant>>,
    slots: Arc<WaitSlots>,
}

impl Applied {
    pub fn new(
        client: Option<async_nats::Client>,
        names: &ConsumerNames,
        settings: &AppliedSettings,
    ) -> Self {
        Self {
            client,
            info_subject: format!(
                "$JS.API.CONSUMER.INFO.{}.{}",
                names.stream_name, names.consumer_name
            ),
            last_seen: AtomicU64::new(0),
            known: AtomicU64::new(0),
            last_lookup: tokio::sync::Mutex::new(None),
            slots: Arc::new(WaitSlots::new(
                settings.max_waiters,
                settings.max_waiters_per_ip,
            )),
        }
    }

    /// Waiters now.
    pub fn waiters(&self) -> usize {
        self.slots.total()
    }

    /// Returns once the consumer's ack floor reached `want.seq`, or fails
    /// with `not_yet_applied` after `want.wait`. `notes` is the session's
    /// update-note subject.
    pub async fn wait(
        &self,
        want: MinSeq,
        session: &str,
        notes: String,
        client_ip: IpAddr,
    ) -> Result<(), ApiError> {
        let waited = self.wait_unrecorded(want, session, notes, client_ip).await;
        let outcome = match &waited {
            Ok(()) => "applied",
            Err(ApiError::NotYetApplied { .. }) => "not_yet_applied",
            Err(_) => "refused",
        };
        ::metrics::counter!(API_MIN_SEQ_READS_TOTAL, "outcome" => outcome).increment(1);
        waited
    }

    async fn wait_unrecorded(
        &self,
        want: MinSeq,
        session: &str,
        notes: String,
        client_ip: IpAddr,
    ) -> Result<(), ApiError> {
        if self.known.load(Ordering::Relaxed) >= want.seq {
            return Ok(());
        }
        let Some(client) = &self.client else {
            return Err(ApiError::WaitUnavailable(
                "min_seq needs the api's NATS_URL".to_owned(),
            ));
        };
        let _slot = self.slots.try_open(client_ip)?;
        let deadline = Instant::now() + want.wait;
        // Subscribed before the first check, so a note sent after it wakes
        // this waiter.
        let mut notes = client.subscribe(notes).await.map_err(|err| {
            ApiError::WaitUnavailable(format!("subscribing to update notes: {err}"))
        })?;
        let mut next_check = FIRST_CHECK;
        loop {
            let floor = self.floor(client).await?;
            if floor >= want.seq {
                return Ok(());
            }
            // The lookup started after this request: a sequence past the
            // stream's messages then was never given to a producer (a
            // session that does not exist, a made-up number), and no frame
            // will be applied at it within the wait, so the wait ends now,
            // answered as any `min_seq` not reached yet (the stream may
            // still grow to it).
            let last = self.last_seen.load(Ordering::Relaxed);
            if last != 0 && want.seq > last {
                tracing::debug!(session_id = %session, min_seq = want.seq, last_sequence = last, "min_seq past the stream");
                return Err(ApiError::NotYetApplied {
                    min_seq: want.seq,
                    ack_floor: floor,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::debug!(session_id = %session, min_seq = want.seq, ack_floor = floor, "min_seq not reached in time");
                return Err(ApiError::NotYetApplied {
                    min_seq: want.seq,
                    ack_floor: floor,
                });
            }
            let sleep = tokio::time::sleep_until((now + next_check).min(deadline));
            tokio::select! {
                note = notes.next() => {
                    if note.is_none() {
                        return Err(ApiError::WaitUnavailable("the NATS connection closed".to_owned()));
                    }
                    // The note comes just before the apply's ack: check
                    // again now, then soon.
                    next_check = FIRST_CHECK;
                }
                () = sleep => next_check = (next_check * 2).min(COARSE_CHECK),
            }
        }
    }

    /// The ack floor, from a lookup that started after this call.
    async fn floor(&self, client: &async_nats::Client) -> Result<u64, ApiError> {
        let asked = Instant::now();
        let mut last = self.last_lookup.lock().await;
        if last.is_some_and(|started| started >= asked) {
            return Ok(self.known.load(Ordering::Relaxed));
        }
        let started = Instant::now();
        ::metrics::counter!(API_ACK_FLOOR_LOOKUPS_TOTAL).increment(1);
        // The request has an empty body, as JetStream wants for an info.
        let reply = tokio::time::timeout(
            LOOKUP_TIMEOUT,
            client.request(self.info_subject.clone(), bytes::Bytes::new()),
        )
        .await
        .map_err(|_| ApiError::WaitUnavailable("JetStream consumer info timed out".to_owned()))?
        .map_err(|err| ApiError::WaitUnavailable(format!("JetStream consumer info: {err}")))?;
        let response: async_nats::jetstream::response::Response<
            async_nats::jetstream::consumer::Info,
        > = serde_json::from_slice(&reply.payload)
            .map_err(|err| ApiError::WaitUnavailable(format!("JetStream consumer info: {err}")))?;
        let info = match response {
            async_nats::jetstream::response::Response::Ok(info) => info,
            // No processor has created the consumer yet: nothing is applied.
            async_nats::jetstream::response::Response::Err { error }
                if error.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
            {
                *last = Some(started);
                return Ok(self.known.load(Ordering::Relaxed));
            }
            async_nats::jetstream::response::Response::Err { error } => {
                return Err(ApiError::WaitUnavailable(format!(
                    "JetStream consumer info: {error}"
                )));
            }
        };
        *last = Some(started);
        // Without a filter, every message after the delivered one is
        // pending: together they reach the stream's last sequence (before
        // a first delivery, messages aged out would be missing from it).
        if info.delivered.stream_sequence > 0
            && info.config.filter_subject.is_empty()
            && info.config.filter_subjects.is_empty()
        {
            let accounted = info.delivered.stream_sequence + info.num_pending;
            self.last_seen.fetch_max(accounted, Ordering::Relaxed);
        }
        let floor = info.ack_floor.stream_sequence;
        Ok(self.known.fetch_max(floor, Ordering::Relaxed).max(floor))
    }
}

/// Counts waiters per client address (IPv6: per /64) and in all, the
/// api-wide cap shared fairly ([`crate::fair`]).
struct WaitSlots {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpKey, usize>)>,
}

struct WaitSlot {
    slots: Arc<WaitSlots>,
    ip: IpKey,
}

impl WaitSlots {
    fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    fn total(&self) -> usize {
        self.open.lock().expect("wait slots lock").0
    }

    fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<WaitSlot, ApiError> {
        let ip = IpKey::of(ip);
        let mut open = self.open.lock().expect("wait slots lock");
        let (total, per_ip) = &mut *open;
        let held = per_ip.get(&ip).copied().unwrap_or(0);
        crate::fair::admit(*total, self.max_total, held, self.max_per_ip).map_err(|refused| {
            ApiError::TooManyWaiters {
                per_ip: refused == crate::fair::Refused::PerAddress,
            }
        })?;
        *per_ip.entry(ip).or_insert(0) += 1;
        *total += 1;
        Ok(WaitSlot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("wait slots lock");
        let (total, per_ip) = &mut *open;
        *total -= 1;
        if let Some(mine) = per_ip.get_mut(&self.ip) {
            *mine -= 1;
            if *mine == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<Option<MinSeq>, &'static str> {
        MinSeq::from_query(query, 10_000).map_err(|err| err.code())
    }

    #[test]
    fn min_seq_and_wait_ms_are_parsed_and_capped() {
        assert_eq!(parse("session_id=a"), Ok(None));
        assert_eq!(
            parse("session_id=a&min_seq=7&wait_ms=250"),
            Ok(Some(MinSeq {
                seq: 7,
                wait: Duration::from_millis(250)
            }))
        );
        assert_eq!(
            parse("min_seq=7"),
            Ok(Some(MinSeq {
                seq: 7,
                wait: Duration::ZERO
            }))
        );
        assert_eq!(parse("min_seq=0"), Err("invalid_min_seq"));
        assert_eq!(parse("min_seq=-1"), Err("invalid_min_seq"));
        assert_eq!(parse("min_seq=x"), Err("invalid_min_seq"));
        assert_eq!(parse("min_seq=1&min_seq=2"), Err("invalid_min_seq"));
        assert_eq!(parse("min_seq=1&wait_ms=10001"), Err("invalid_wait_ms"));
        assert_eq!(parse("min_seq=1&wait_ms=1.5"), Err("invalid_wait_ms"));
        assert_eq!(parse("wait_ms=5"), Ok(None));
        assert_eq!(parse("wait_ms=10001"), Err("invalid_wait_ms"));
    }

    #[test]
    fn waiters_are_capped_per_ip_and_in_all() {
        let slots = Arc::new(WaitSlots::new(2, 1));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let first = slots.try_open(a).unwrap();
        assert!(matches!(
            slots.try_open(a),
            Err(ApiError::TooManyWaiters { per_ip: true })
        ));
        let _second = slots.try_open(b).unwrap();
        assert!(matches!(
            slots.try_open(c),
            Err(ApiError::TooManyWaiters { per_ip: false })
        ));
        drop(first);
        assert_eq!(slots.total(), 1);
        assert!(slots.try_open(a).is_ok());
    }
}
