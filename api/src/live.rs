//! Live updates: `GET /data/stream?session_id=X` is a Server-Sent Events
//! stream that pushes the session's document (event `document`) when the
//! stream opens, then its changes (`delta`) and its state (`state`), each
//! with the session's revision as its SSE `id` (docs/design.md §3.2). The
//! processor publishes a note on `<UPDATES_SUBJECT_PREFIX>.<token>` after
//! each apply, with what it changed ([`crate::delta`]).
//!
//! All watchers of one session share one feed ([`crate::fanout::Hub`]): one
//! NATS subscription (made before the first read, so no change is missed),
//! one read of the document with its revision, and then the notes applied
//! to the feed's copy in revision order; each event is framed once and the
//! same bytes go to every watcher. A watcher that joins later starts from
//! the feed's copy ([`FeedState`]), not a read. The document is read again
//! only after a gap in the revisions that does not fill within
//! [`GAP_WAIT`], a note without `changes`, or a note that does not fit.
//! A watcher that falls `API_STREAM_BUFFER` events behind is dropped (its
//! stream ends with `too_slow`).
//!
//! Streams are capped per client IP (`API_MAX_STREAMS_PER_IP`) and in all
//! (`API_MAX_STREAMS`), and each ends by itself after
//! `API_STREAM_MAX_SECS`, when the token that opened it expires, or when the
//! api shuts down; the streams of a session with no document end after
//! `API_STREAM_ABSENT_SECS` if none comes. The caps are shared fairly
//! between addresses ([`crate::fair`]). The last event of an ending stream
//! is `end`, with data
//! `{"reason":"max_lifetime"|"token_expired"|"too_slow"|"shutdown"|"unavailable"|"not_found"}`;
//! for a document over `API_MAX_DOCUMENT_BYTES` (read, or grown so by
//! deltas) it is `{"reason":"document_too_large","error":{…}}` with the
//! `error` of `GET /data`'s 413. (Not an event named `error`: browsers'
//! `EventSource` reports its own connection errors under that name.)

use std::collections::{BTreeMap, HashMap};
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

use crate::delta::{Delta, Inconsistent, LiveDocument, Note};
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
    /// Events a watcher may fall behind before it is dropped (`too_slow`).
    #[arg(long, env = "API_STREAM_BUFFER", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub stream_buffer: u32,
    /// How long the streams of a session that has no document wait for
    /// one, in seconds; then they end (`not_found`), so that streams on
    /// sessions that do not exist do not hold their places. 0: they wait
    /// as long as they live.
    #[arg(long, env = "API_STREAM_ABSENT_SECS", default_value_t = 60)]
    pub stream_absent_secs: u64,
}

sessionfold_common::defaults_from_flags!(StreamSettings);

/// Comment lines sent while nothing changes, so proxies keep the stream.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";
/// Pause before a feed reads again after Redis could not be read.
const RETRY_AFTER_FAILED_READ: Duration = Duration::from_secs(1);

/// What a published event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Document,
    Delta,
    State,
    End,
}

/// One framed Server-Sent Event shared by every watcher of a session;
/// `last` ends the stream after it.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub frame: Bytes,
    pub last: bool,
    pub kind: EventKind,
    /// The event's place among its feed's events, from 1.
    pub n: u64,
    /// The feed's document, for a watcher whose first event is not one.
    pub feed: Option<Arc<FeedState>>,
}

/// What a feed knows, shared with its watchers: the document (kept from
/// its read and the notes applied since) and the session's state. Events
/// are published while this is locked, so a snapshot taken under the lock
/// holds every event up to its `n` and none after.
pub struct FeedState {
    known: Mutex<Known>,
}

impl std::fmt::Debug for FeedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedState").finish_non_exhaustive()
    }
}

struct Known {
    /// `None` before the first read, or for a document the feed cannot keep
    /// (then `framed` is its last `document` event).
    document: Option<LiveDocument>,
    framed: Option<Bytes>,
    state: String,
    /// The revision the state was told at: a close (same revision,
    /// closed) comes after the apply that made that revision.
    state_revision: u64,
    /// Events published so far.
    n: u64,
    /// The `document` frame of `document` at event `n`, framed once for
    /// every watcher joining before the next event: joiners share its
    /// bytes instead of each holding a copy of the whole document.
    joined: Option<(u64, Arc<tokio::sync::OnceCell<Bytes>>)>,
}

impl FeedState {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            known: Mutex::new(Known {
                document: None,
                framed: None,
                state: OPEN.to_owned(),
                state_revision: 0,
                n: 0,
                joined: None,
            }),
        })
    }

    /// The stream's beginning for a watcher joining now: the document, the
    /// state when it is not `open`, and the `n` they stand for. Watchers
    /// joining at the same `n` get the same document frame.
    async fn snapshot(&self) -> Option<(Bytes, Option<Bytes>, u64)> {
        let (document, cell, framed, state, revision, n) = {
            let mut known = self.known.lock().expect("feed lock");
            let n = known.n;
            let cell = match (&known.document, &known.joined) {
                (None, _) => None,
                (Some(_), Some((at, cell))) if *at == n => Some(cell.clone()),
                (Some(_), _) => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    known.joined = Some((n, cell.clone()));
                    Some(cell)
                }
            };
            // Only the first joiner at `n` frames the document; the rest
            // wait for its frame.
            let to_frame = cell
                .as_ref()
                .filter(|cell| !cell.initialized())
                .and(known.document.clone());
            (
                to_frame,
                cell,
                known.framed.clone(),
                known.state.clone(),
                known.state_revision,
                n,
            )
        };
        let frame = match (cell, framed) {
            (Some(cell), _) => cell
                .get_or_init(|| async move {
                    let document = document.expect("a feed's document is framed once");
                    // Assembling a large document takes a while; off the
                    // worker threads that serve requests.
                    tokio::task::spawn_blocking(move || document.frame())
                        .await
                        .expect("framing does not panic")
                })
                .await
                .clone(),
            (None, Some(framed)) => framed,
            (None, None) => return None,
        };
        let state = (state != OPEN).then(|| state_event(revision, &state));
        Some((frame, state, n))
    }
}

const OPEN: &str = "open";

fn state_event(revision: u64, state: &str) -> Bytes {
    sse_event_with_id(
        "state",
        revision,
        serde_json::json!({ "state": state }).to_string().as_bytes(),
    )
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

/// One Server-Sent Event with an `id` line (the session's revision).
pub fn sse_event_with_id(name: &str, id: u64, data: &[u8]) -> Bytes {
    let event = sse_event(name, data);
    let mut frame = BytesMut::with_capacity(event.len() + 24);
    let header = name.len() + 8;
    frame.put_slice(&event[..header]);
    frame.put_slice(b"id: ");
    frame.put_slice(id.to_string().as_bytes());
    frame.put_u8(b'\n');
    frame.put_slice(&event[header..]);
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
    /// The session's state hash (its revision and state).
    pub state_key: String,
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
        let feed = Feed {
            absent_for: (self.settings.stream_absent_secs > 0)
                .then(|| Duration::from_secs(self.settings.stream_absent_secs)),
            key: request.key.clone(),
            state_key: request.state_key.clone(),
            session: request.session.as_str().to_owned(),
        };
        let watch = self.hub.watch(&request.key, move |publisher| {
            document_feed(publisher, client, subject, reads, feed)
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
            floor: None,
            queued: None,
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
    /// The `n` of the last feed event this watcher's stream holds; `None`
    /// before its first.
    floor: Option<u64>,
    /// A frame to send before the next event (a joiner's state, after its
    /// shared document frame).
    queued: Option<Bytes>,
    _slot: StreamSlot,
}

impl WatcherState {
    /// The next bytes of the stream, and whether more follow.
    async fn next_frame(&mut self) -> (Bytes, bool) {
        let ended = |reason: EndReason| {
            ::metrics::counter!(API_STREAMS_ENDED_TOTAL, "reason" => reason.as_str()).increment(1);
            (end_event(reason), false)
        };
        if let Some(frame) = self.queued.take() {
            return (frame, true);
        }
        loop {
            let event = tokio::select! {
                biased;
                () = self.closing.cancelled() => return ended(EndReason::Shutdown),
                () = sleep_until(self.end_at) => return ended(self.end_reason),
                next = self.watch.next() => match next {
                    Next::Value(event) => event,
                    Next::Lagged => return ended(EndReason::TooSlow),
                    Next::Ended => return ended(EndReason::Unavailable),
                },
                _ = self.keep_alive.tick() => return (Bytes::from_static(KEEP_ALIVE), true),
            };
            if event.last {
                return (event.frame, false);
            }
            match self.floor {
                // A stream starts with the whole document: the event when
                // it is one, else the feed's document as it is now, which
                // holds every event up to its `n`.
                None => {
                    if event.kind != EventKind::Document
                        && let Some(feed) = &event.feed
                        && let Some((frame, state, n)) = feed.snapshot().await
                    {
                        self.floor = Some(n.max(event.n));
                        self.queued = state;
                        return (frame, true);
                    }
                    self.floor = Some(event.n);
                    return (event.frame, true);
                }
                Some(floor) if event.n <= floor => continue,
                Some(_) => {
                    self.floor = Some(event.n);
                    return (event.frame, true);
                }
            }
        }
    }
}

/// The keys and the name of the session a feed follows.
struct Feed {
    /// How long the feed waits for a document that is not there.
    absent_for: Option<Duration>,
    key: String,
    state_key: String,
    session: String,
}

/// How long notes ahead of the document wait for the ones missing before
/// them (notes of two processors may pass each other) before the feed
/// reads the document instead.
const GAP_WAIT: Duration = Duration::from_millis(200);
/// Notes kept ahead of the document at most; past it the feed reads.
const MAX_PENDING_NOTES: usize = 256;
/// Notes taken at once, merged into one `delta` when they follow each other.
const NOTES_PER_ROUND: usize = 256;

/// The feed of one session: subscribe to its notes, read the document with
/// its revision, then publish each note of the next revision as a `delta`
/// (in revision order, whichever processor sent it), a change of state as
/// `state`, and read the document again (a `document`) only on a gap
/// that does not fill within [`GAP_WAIT`], a note without `changes`, or
/// a note that does not fit.
async fn document_feed(
    publisher: Publisher<LiveEvent>,
    client: async_nats::Client,
    subject: String,
    reads: Arc<ReadPool>,
    feed: Feed,
) {
    // Every line the feed logs names its session.
    let span = tracing::info_span!("live_feed", session_id = %feed.session);
    tracing::Instrument::instrument(follow_notes(publisher, client, subject, reads, feed), span)
        .await;
}

async fn follow_notes(
    publisher: Publisher<LiveEvent>,
    client: async_nats::Client,
    subject: String,
    reads: Arc<ReadPool>,
    feed: Feed,
) {
    let mut notes = match client.subscribe(subject).await {
        Ok(notes) => notes,
        Err(err) => {
            tracing::warn!(error = %err, "subscribing to update notes");
            return;
        }
    };
    let limit = reads.settings().max_document_bytes;
    let mut follow = Follow {
        publisher,
        state: FeedState::new(),
        pending: BTreeMap::new(),
        pending_states: BTreeMap::new(),
        gap_since: None,
        published_hash: None,
        limit,
    };
    let mut stale = true;
    let mut retry_at: Option<Instant> = None;
    // Until when a session without a document is waited for.
    let mut absent_until: Option<Instant> = None;
    loop {
        if stale && retry_at.is_none_or(|at| at <= Instant::now()) {
            retry_at = None;
            ::metrics::counter!(API_LIVE_READS_TOTAL).increment(1);
            match reads.read_with_revision(&feed.key, &feed.state_key).await {
                Ok(Some(document)) => {
                    absent_until = None;
                    follow.install(document).await;
                    match follow.advance() {
                        Ok(read_again) => stale = read_again,
                        Err(Ended) => return,
                    }
                }
                // No document yet: the note of its first apply brings it,
                // if it comes in time.
                Ok(None) => {
                    stale = false;
                    if absent_until.is_none() && !follow.has_document() {
                        absent_until = feed.absent_for.map(|wait| Instant::now() + wait);
                    }
                }
                Err(ReadError::TooLarge { bytes, limit }) => {
                    follow.too_large(bytes, limit);
                    return;
                }
                Err(ReadError::Unavailable(reason)) => {
                    tracing::warn!(error = %reason, "reading a document for live streams");
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
        let gap = async {
            match follow.gap_since {
                Some(since) if !stale => sleep_until(since + GAP_WAIT).await,
                _ => futures::future::pending().await,
            }
        };
        let absent = async {
            match absent_until {
                Some(at) => sleep_until(at).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            () = absent => {
                tracing::debug!("no document came; the session's streams end");
                follow.not_found();
                return;
            }
            note = notes.next() => {
                let Some(note) = note else { return };
                let mut round = vec![note.payload];
                while round.len() < NOTES_PER_ROUND {
                    match notes.next().now_or_never() {
                        Some(Some(note)) => round.push(note.payload),
                        _ => break,
                    }
                }
                for payload in round {
                    if follow.take(payload).is_err() {
                        stale = true;
                    }
                }
                if !stale {
                    match follow.advance() {
                        Ok(read_again) => stale = read_again,
                        Err(Ended) => return,
                    }
                }
                if follow.pending.len() + follow.pending_states.len() > MAX_PENDING_NOTES {
                    stale = true;
                }
            }
            () = gap => {
                tracing::debug!("a note did not come; reading the document");
                stale = true;
            }
            () = retry => {}
        }
    }
}

/// The feed stopped: its last event is published.
struct Ended;

/// A note that needs the document read.
struct ReadAgain;

/// The feed's document and the notes that came ahead of it.
struct Follow {
    publisher: Publisher<LiveEvent>,
    state: Arc<FeedState>,
    /// Apply notes past the next revision, by revision.
    pending: BTreeMap<u64, Bytes>,
    /// State notes at revisions the document has not reached.
    pending_states: BTreeMap<u64, Vec<String>>,
    /// Since when notes wait for a missing one.
    gap_since: Option<Instant>,
    /// The hash of the last `document` published, while no delta followed
    /// it: a read that finds the same bytes publishes nothing.
    published_hash: Option<u128>,
    limit: u64,
}

impl Follow {
    fn publish(&self, known: &mut Known, kind: EventKind, frame: Bytes, last: bool) {
        known.n += 1;
        self.publisher.publish(LiveEvent {
            frame,
            last,
            kind,
            n: known.n,
            feed: Some(self.state.clone()),
        });
    }

    /// Whether the feed has had a document.
    fn has_document(&self) -> bool {
        let known = self.state.known.lock().expect("feed lock");
        known.document.is_some() || known.framed.is_some()
    }

    /// Ends the streams of a session whose document did not come.
    fn not_found(&self) {
        let mut known = self.state.known.lock().expect("feed lock");
        self.publish(
            &mut known,
            EventKind::End,
            sse_event("end", br#"{"reason":"not_found"}"#),
            true,
        );
    }

    fn too_large(&self, bytes: u64, limit: u64) {
        let mut end = crate::error::too_large_body(bytes, limit);
        end["reason"] = "document_too_large".into();
        let mut known = self.state.known.lock().expect("feed lock");
        self.publish(
            &mut known,
            EventKind::End,
            sse_event("end", end.to_string().as_bytes()),
            true,
        );
    }

    /// Takes in a document read with its revision and publishes it (unless
    /// it is the one published last) and its state.
    async fn install(&mut self, document: crate::read::Document) {
        let revision = document.revision.unwrap_or(0);
        let state = document.state.clone().unwrap_or_else(|| OPEN.to_owned());
        let (bytes, slot) = document.into_parts();
        // Hashing, parsing and framing a large document take a while; off
        // the worker threads that serve requests.
        let (hash, parsed, frame) = tokio::task::spawn_blocking(move || {
            let hash = xxhash_rust::xxh3::xxh3_128(&bytes);
            let parsed = LiveDocument::parse(&bytes, revision);
            let frame = sse_event_with_id("document", revision, &bytes);
            (hash, parsed, frame)
        })
        .await
        .expect("framing does not panic");
        drop(slot);
        let shared = self.state.clone();
        let mut known = shared.known.lock().expect("feed lock");
        let kept = parsed.is_some();
        known.document = parsed;
        known.framed = (!kept).then(|| frame.clone());
        if self.published_hash != Some(hash) {
            self.published_hash = Some(hash);
            self.publish(&mut known, EventKind::Document, frame, false);
        }
        // A state told by a note after this read began stands.
        if (revision, state != OPEN) > (known.state_revision, known.state != OPEN) {
            if state != known.state {
                self.publish(
                    &mut known,
                    EventKind::State,
                    state_event(revision, &state),
                    false,
                );
            }
            known.state = state;
            known.state_revision = revision;
        }
        // What the read holds needs no note any more.
        self.pending.retain(|&r, _| r > revision);
        self.gap_since = None;
    }

    /// Files one note; `Err` when only a read can follow it.
    fn take(&mut self, payload: Bytes) -> Result<(), ReadAgain> {
        let revision = {
            let known = self.state.known.lock().expect("feed lock");
            match &known.document {
                Some(document) => document.revision,
                // A document this feed cannot keep is read after every
                // note; none read yet: the note of its first apply.
                None => return Err(ReadAgain),
            }
        };
        match Note::parse(payload) {
            Note::Unknown => Err(ReadAgain),
            Note::Unchanged => Ok(()),
            Note::State {
                revision: at,
                state,
            } => {
                self.pending_states.entry(at).or_default().push(state);
                Ok(())
            }
            // An apply that changed nothing repeats the revision; an older
            // one is already in the document.
            Note::Apply { revision: at, .. } if at <= revision => Ok(()),
            Note::Apply {
                revision: at,
                has_changes,
                payload,
                ..
            } => {
                if at == revision + 1 && !has_changes {
                    return Err(ReadAgain);
                }
                self.pending.insert(at, payload);
                Ok(())
            }
        }
    }

    /// Applies the notes that follow the document, publishing them as one
    /// `delta` (split where a state changes), then the states they reach;
    /// `Ok(true)` when a note did not fit and the document is to be read.
    fn advance(&mut self) -> Result<bool, Ended> {
        let state = self.state.clone();
        let mut known = state.known.lock().expect("feed lock");
        let Some(mut document) = known.document.take() else {
            return Ok(false);
        };
        let mut delta = Delta::default();
        let mut read_again = false;
        loop {
            self.flush_states(&mut known, document.revision, &mut delta);
            let next = document.revision + 1;
            let Some(payload) = self.pending.remove(&next) else {
                break;
            };
            let reopened = Note::parse(payload.clone());
            if let Err(Inconsistent(why)) = document.apply(&payload, &mut delta) {
                tracing::debug!(
                    why,
                    revision = next,
                    "a note did not fit; reading the document"
                );
                read_again = true;
                break;
            }
            if document.bytes > self.limit {
                self.flush(&mut known, &mut delta);
                known.document = Some(document.clone());
                drop(known);
                self.too_large(document.bytes, self.limit);
                return Err(Ended);
            }
            // A closed session changes only by opening again.
            let state = match reopened {
                Note::Apply {
                    state: Some(state), ..
                } => Some(state),
                _ if known.state != OPEN => Some(OPEN.to_owned()),
                _ => None,
            };
            if let Some(state) = state {
                self.pending_states
                    .entry(next)
                    .or_default()
                    .insert(0, state);
            }
        }
        self.flush(&mut known, &mut delta);
        known.document = Some(document);
        // What is left waits for a note before it.
        if self.pending.is_empty() && self.pending_states.is_empty() {
            self.gap_since = None;
        } else if self.gap_since.is_none() {
            self.gap_since = Some(Instant::now());
        }
        Ok(read_again)
    }

    fn flush(&mut self, known: &mut Known, delta: &mut Delta) {
        if delta.is_empty() {
            return;
        }
        let delta = std::mem::take(delta);
        self.published_hash = None;
        let frame = sse_event_with_id("delta", delta.revision, &delta.data());
        self.publish(known, EventKind::Delta, frame, false);
    }

    /// Publishes the states told at revisions up to `revision`, after the
    /// delta that reaches them.
    fn flush_states(&mut self, known: &mut Known, revision: u64, delta: &mut Delta) {
        while let Some(entry) = self.pending_states.first_entry() {
            if *entry.key() > revision {
                break;
            }
            let (at, states) = entry.remove_entry();
            for state in states {
                let later = (at, state != OPEN) > (known.state_revision, known.state != OPEN);
                if later && state != known.state {
                    self.flush(known, delta);
                    self.publish(known, EventKind::State, state_event(at, &state), false);
                }
                if later {
                    known.state = state;
                    known.state_revision = at;
                }
            }
        }
    }
}

/// Counts open streams per client address (IPv6: per /64, as the rate
/// limits do) and in all, the api-wide cap shared fairly ([`crate::fair`]).
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
        let held = per_ip.get(&ip).copied().unwrap_or(0);
        match crate::fair::admit(*total, self.max_total, held, self.max_per_ip) {
            Ok(()) => {}
            Err(crate::fair::Refused::Total) => {
                refused("total");
                return Err(ApiError::TooManyStreams { per_ip: false });
            }
            Err(crate::fair::Refused::PerAddress) => {
                refused("per_ip");
                return Err(ApiError::TooManyStreams { per_ip: true });
            }
        }
        *per_ip.entry(ip).or_insert(0) += 1;
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
/// live from `/data/stream`. Plain HTML and JavaScript, no external assets
/// ([`crate::pages`] serves it).
pub const TIMELINE_PAGE: &str = include_str!("../assets/timeline.html");

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
