//! Live updates: `GET /data/stream?session_id=X` is a Server-Sent Events
//! stream that pushes the session's document (event `document`) when the
//! stream opens and after every change. The processor publishes a note on
//! `<UPDATES_SUBJECT_PREFIX>.<token>` after each apply.
//!
//! All watchers of one session share one feed ([`crate::fanout::Hub`]): one
//! NATS subscription (made before the first read, so no change is missed)
//! and one document read per note, through the [`ReadPool`] like any other
//! read; notes that arrive during a read are folded into the next one. The
//! document's event is framed once and the same bytes go to every watcher.
//! A watcher that falls `API_STREAM_BUFFER` updates behind is dropped (its
//! stream ends with `too_slow`).
//!
//! Streams are capped per client IP (`API_MAX_STREAMS_PER_IP`) and in all
//! (`API_MAX_STREAMS`), and each ends by itself after
//! `API_STREAM_MAX_SECS`, when the token that opened it expires, or when the
//! api shuts down. The last event of an ending stream is `end`, with data
//! `{"reason":"max_lifetime"|"token_expired"|"too_slow"|"shutdown"|"unavailable"}`;
//! for a document over `API_MAX_DOCUMENT_BYTES` it is
//! `{"reason":"document_too_large","error":{…}}` with the `error` of
//! `GET /data`'s 413. (Not an event named `error`: browsers' `EventSource`
//! reports its own connection errors under that name.)

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{FutureExt as _, StreamExt as _};
use sessionfold_core::{SessionId, Subjects};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use sessionfold_common::metrics::{
    API_LIVE_READS_TOTAL, API_STREAMS_ENDED_TOTAL, API_STREAMS_OPEN, API_STREAMS_REFUSED_TOTAL,
};
use sessionfold_common::rate_limit::IpKey;

use crate::error::ApiError;
use crate::fanout::{Hub, Next, Publisher};
use crate::read::{ReadError, ReadPool};

/// Where updates are announced.
#[derive(Debug, Clone, clap::Args)]
pub struct LiveSettings {
    /// NATS server(s) carrying update notes; without it `/data/stream` answers 503.
    #[arg(long = "nats-url", env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Subject prefix of update notes; a session's is `<prefix>.<token>`.
    #[arg(
        long,
        env = "UPDATES_SUBJECT_PREFIX",
        default_value = sessionfold_core::names::DEFAULT_UPDATES_PREFIX
    )]
    pub updates_subject_prefix: String,
}

sessionfold_common::defaults_from_flags!(LiveSettings);

/// Limits of `/data/stream`; 0 turns a limit off.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct StreamSettings {
    /// Streams open at once, in all.
    #[arg(long, env = "API_MAX_STREAMS", default_value_t = 1024)]
    pub max_streams: usize,
    /// Streams open at once from one client IP.
    #[arg(long, env = "API_MAX_STREAMS_PER_IP", default_value_t = 16)]
    pub max_streams_per_ip: usize,
    /// Longest a stream stays open, in seconds; then it ends (`max_lifetime`)
    /// and the client reconnects.
    #[arg(long, env = "API_STREAM_MAX_SECS", default_value_t = 3600)]
    pub stream_max_secs: u64,
    /// Updates a watcher may fall behind before it is dropped (`too_slow`).
    #[arg(long, env = "API_STREAM_BUFFER", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub stream_buffer: u32,
}

sessionfold_common::defaults_from_flags!(StreamSettings);

/// Comment lines sent while nothing changes, so proxies keep the stream.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";
/// Pause before a feed reads again after Redis could not be read.
const RETRY_AFTER_FAILED_READ: Duration = Duration::from_secs(1);

/// One framed Server-Sent Event shared by every watcher of a session;
/// `last` ends the stream after it.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub frame: Bytes,
    pub last: bool,
}

/// Why a stream ended, as its `end` event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    MaxLifetime,
    TokenExpired,
    TooSlow,
    Shutdown,
    Unavailable,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxLifetime => "max_lifetime",
            Self::TokenExpired => "token_expired",
            Self::TooSlow => "too_slow",
            Self::Shutdown => "shutdown",
            Self::Unavailable => "unavailable",
        }
    }
}

/// One Server-Sent Event: `event: <name>` and the data, one `data:` line
/// per line of it.
pub fn sse_event(name: &str, data: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(data.len() + name.len() + 16);
    frame.put_slice(b"event: ");
    frame.put_slice(name.as_bytes());
    frame.put_u8(b'\n');
    // RedisJSON's compact output has no line breaks; anything else is split
    // as SSE requires.
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        frame.put_slice(b"data: ");
        frame.put_slice(line);
        frame.put_u8(b'\n');
    }
    frame.put_u8(b'\n');
    frame.freeze()
}

fn end_event(reason: EndReason) -> Bytes {
    sse_event(
        "end",
        serde_json::json!({"reason": reason.as_str()})
            .to_string()
            .as_bytes(),
    )
}

/// The live side of the api: the NATS connection, the shared feeds and the
/// stream caps.
pub struct Live {
    client: Option<async_nats::Client>,
    subjects: Subjects,
    hub: Arc<Hub<LiveEvent>>,
    slots: Arc<StreamSlots>,
    settings: StreamSettings,
}

/// What one stream is opened with.
pub struct StreamRequest {
    pub session: SessionId,
    pub key: String,
    pub client_ip: IpAddr,
    /// When the credential that opened it expires (Unix seconds), if it does.
    pub expires_at: Option<u64>,
}

impl Live {
    pub fn new(
        client: Option<async_nats::Client>,
        live: &LiveSettings,
        settings: &StreamSettings,
    ) -> Self {
        Self {
            client,
            subjects: Subjects {
                updates_prefix: live.updates_subject_prefix.clone(),
                ..Subjects::default()
            },
            hub: Hub::new(settings.stream_buffer as usize),
            slots: Arc::new(StreamSlots::new(
                settings.max_streams,
                settings.max_streams_per_ip,
            )),
            settings: settings.clone(),
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.slots.total()
    }

    /// Sessions with a feed now.
    pub fn feeds(&self) -> usize {
        self.hub.topics()
    }

    /// Opens the SSE stream of `request.session`.
    pub fn stream(
        &self,
        request: StreamRequest,
        reads: Arc<ReadPool>,
        closing: CancellationToken,
    ) -> Result<Response, ApiError> {
        let client = self
            .client
            .clone()
            .ok_or_else(|| ApiError::LiveUnavailable("the api has no NATS_URL".to_owned()))?;
        let slot = self.slots.try_open(request.client_ip)?;
        let (end_at, end_reason) = self.end_of(request.expires_at);
        let subject = self.subjects.update(&request.session);
        let key = request.key.clone();
        let session = request.session.as_str().to_owned();
        let watch = self.hub.watch(&request.key, move |publisher| {
            document_feed(publisher, client, subject, reads, key, session)
        });
        tracing::debug!(
            open = self.slots.total(),
            watchers = self.hub.watchers(&request.key),
            "live stream opened"
        );
        let state = WatcherState {
            watch,
            keep_alive: tokio::time::interval_at(
                Instant::now() + KEEP_ALIVE_INTERVAL,
                KEEP_ALIVE_INTERVAL,
            ),
            end_at,
            end_reason,
            closing,
            _slot: slot,
        };
        let events = futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            let (frame, more) = state.next_frame().await;
            Some((Ok::<_, Infallible>(frame), more.then_some(state)))
        });
        let mut response = Body::from_stream(events).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Tells nginx-like proxies not to buffer the stream.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(response)
    }

    /// When a stream opened now ends by itself, and why: its maximum
    /// lifetime or its token's expiry, whichever comes first.
    fn end_of(&self, expires_at: Option<u64>) -> (Instant, EndReason) {
        let now = Instant::now();
        // Far enough to never come, near enough not to overflow.
        let never = now + Duration::from_secs(100 * 365 * 24 * 3600);
        let lifetime = match self.settings.stream_max_secs {
            0 => never,
            secs => now + Duration::from_secs(secs),
        };
        let expiry = expires_at.map(|exp| {
            let left = exp.saturating_sub(sessionfold_common::auth::now());
            now + Duration::from_secs(left).min(never - now)
        });
        match expiry {
            Some(expiry) if expiry <= lifetime => (expiry, EndReason::TokenExpired),
            _ => (lifetime, EndReason::MaxLifetime),
        }
    }
}

struct WatcherState {
    watch: crate::fanout::Watch<LiveEvent>,
    keep_alive: tokio::time::Interval,
    end_at: Instant,
    end_reason: EndReason,
    closing: CancellationToken,
    _slot: StreamSlot,
}

impl WatcherState {
    /// The next bytes of the stream, and whether more follow.
    async fn next_frame(&mut self) -> (Bytes, bool) {
        let ended = |reason: EndReason| {
            ::metrics::counter!(API_STREAMS_ENDED_TOTAL, "reason" => reason.as_str()).increment(1);
            (end_event(reason), false)
        };
        tokio::select! {
            biased;
            () = self.closing.cancelled() => ended(EndReason::Shutdown),
            () = sleep_until(self.end_at) => ended(self.end_reason),
            next = self.watch.next() => match next {
                Next::Value(event) => (event.frame, !event.last),
                Next::Lagged => ended(EndReason::TooSlow),
                Next::Ended => ended(EndReason::Unavailable),
            },
            _ = self.keep_alive.tick() => (Bytes::from_static(KEEP_ALIVE), true),
        }
    }
}

/// The feed of one session: subscribe to its notes, read the document, and
/// read it again after notes, publishing it when it changed.
async fn document_feed(
    publisher: Publisher<LiveEvent>,
    client: async_nats::Client,
    subject: String,
    reads: Arc<ReadPool>,
    key: String,
    session: String,
) {
    let span = tracing::info_span!("live_feed", session_id = %session);
    let mut notes = match client.subscribe(subject).await {
        Ok(notes) => notes,
        Err(err) => {
            span.in_scope(|| tracing::warn!(error = %err, "subscribing to update notes"));
            return;
        }
    };
    let mut published: Option<u128> = None;
    let mut stale = true;
    let mut retry_at: Option<Instant> = None;
    loop {
        if stale && retry_at.is_none_or(|at| at <= Instant::now()) {
            retry_at = None;
            ::metrics::counter!(API_LIVE_READS_TOTAL).increment(1);
            match reads.read(&key).await {
                Ok(Some(document)) => {
                    stale = false;
                    let (bytes, slot) = document.into_parts();
                    // Hashing and framing a large document takes a while;
                    // off the worker threads that serve requests.
                    let (hash, frame) = tokio::task::spawn_blocking(move || {
                        (
                            xxhash_rust::xxh3::xxh3_128(&bytes),
                            sse_event("document", &bytes),
                        )
                    })
                    .await
                    .expect("framing does not panic");
                    drop(slot);
                    if published != Some(hash) {
                        published = Some(hash);
                        publisher.publish(LiveEvent { frame, last: false });
                    }
                }
                // No document yet: the note of its first apply brings it.
                Ok(None) => stale = false,
                Err(ReadError::TooLarge { bytes, limit }) => {
                    let mut end = crate::error::too_large_body(bytes, limit);
                    end["reason"] = "document_too_large".into();
                    publisher.publish(LiveEvent {
                        frame: sse_event("end", end.to_string().as_bytes()),
                        last: true,
                    });
                    return;
                }
                Err(ReadError::Unavailable(reason)) => {
                    span.in_scope(
                        || tracing::warn!(error = %reason, "reading a document for live streams"),
                    );
                    retry_at = Some(Instant::now() + RETRY_AFTER_FAILED_READ);
                }
            }
        }
        let retry = async {
            match retry_at {
                Some(at) => sleep_until(at).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            note = notes.next() => {
                if note.is_none() {
                    return;
                }
                // Notes that came during the read are covered by one more.
                while let Some(Some(_)) = notes.next().now_or_never() {}
                stale = true;
            }
            () = retry => {}
        }
    }
}

/// Counts open streams per client address (IPv6: per /64, as the rate
/// limits do) and in all.
pub struct StreamSlots {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpKey, usize>)>,
}

/// One open stream; dropping it frees its place.
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    ip: IpKey,
}

impl StreamSlots {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    pub fn total(&self) -> usize {
        self.open.lock().expect("stream slots lock").0
    }

    /// A place for one more stream from `ip`, if the caps allow it.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<StreamSlot, ApiError> {
        let ip = IpKey::of(ip);
        let mut open = self.open.lock().expect("stream slots lock");
        let (total, per_ip) = &mut *open;
        let refused = |limit: &'static str| {
            ::metrics::counter!(API_STREAMS_REFUSED_TOTAL, "limit" => limit).increment(1);
        };
        if self.max_total != 0 && *total >= self.max_total {
            refused("total");
            return Err(ApiError::TooManyStreams { per_ip: false });
        }
        let mine = per_ip.entry(ip).or_insert(0);
        if self.max_per_ip != 0 && *mine >= self.max_per_ip {
            refused("per_ip");
            return Err(ApiError::TooManyStreams { per_ip: true });
        }
        *mine += 1;
        *total += 1;
        ::metrics::gauge!(API_STREAMS_OPEN).increment(1.0);
        Ok(StreamSlot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("stream slots lock");
        let (total, per_ip) = &mut *open;
        *total -= 1;
        ::metrics::gauge!(API_STREAMS_OPEN).decrement(1.0);
        if let Some(mine) = per_ip.get_mut(&self.ip) {
            *mine -= 1;
            if *mine == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// The session timeline page: start, end and the children on a time axis,
/// live from `/data/stream`. Plain HTML and JavaScript, no external assets.
pub const TIMELINE_PAGE: &str = include_str!("../assets/timeline.html");

/// `GET /sessions` and `GET /sessions/{id}`: the timeline page (it reads
/// the session from its own path).
pub async fn timeline() -> axum::response::Html<&'static str> {
    axum::response::Html(TIMELINE_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        streams: StreamSettings,
    }

    #[test]
    fn the_defaults_are_the_flags_defaults() {
        let parsed = Flags::try_parse_from(["api"]).unwrap().streams;
        assert_eq!(parsed, StreamSettings::default());
    }

    #[test]
    fn an_event_has_one_data_line_per_line() {
        assert_eq!(
            &sse_event("document", br#"{"a":1}"#)[..],
            b"event: document\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            &sse_event("x", b"one\r\ntwo")[..],
            b"event: x\ndata: one\ndata: two\n\n"
        );
    }

    #[test]
    fn streams_are_capped_per_ip_and_in_all_and_freed_on_drop() {
        let slots = Arc::new(StreamSlots::new(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = slots.try_open(a).unwrap();
        let _second = slots.try_open(a).unwrap();
        assert!(matches!(
            slots.try_open(a),
            Err(ApiError::TooManyStreams { per_ip: true })
        ));
        let _third = slots.try_open(b).unwrap();
        assert!(matches!(
            slots.try_open(b),
            Err(ApiError::TooManyStreams { per_ip: false })
        ));
        drop(first);
        assert_eq!(slots.total(), 2);
        assert!(slots.try_open(a).is_ok());
        // One IPv6 /64 is one client.
        let v6 = Arc::new(StreamSlots::new(0, 1));
        let _one = v6.try_open("2001:db8::1".parse().unwrap()).unwrap();
        assert!(v6.try_open("2001:db8::2".parse().unwrap()).is_err());
        assert!(v6.try_open("2001:db8:0:1::1".parse().unwrap()).is_ok());
        let unlimited = Arc::new(StreamSlots::new(0, 0));
        let held: Vec<_> = (0..100).map(|_| unlimited.try_open(a).unwrap()).collect();
        assert_eq!(unlimited.total(), held.len());
    }
}
