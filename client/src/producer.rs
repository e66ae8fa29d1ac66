//! A producer client for ingest's WebSocket (docs/design.md §1): it sends a
//! session's frames, matches every reply to its frame, and sends again what
//! was not acknowledged, until each frame is acknowledged, refused for good,
//! or the deadline passes.
//!
//! Guarantees, and why they make the reference fold exact:
//!
//! - **One frame of a session in flight at a time.** Frame `i + 1` is sent
//!   only once frame `i` is acknowledged, and ingest acknowledges only what
//!   JetStream stored. So the first stored copy of frame `i` always precedes
//!   every stored copy of frame `i + 1`, and the acknowledged order of a
//!   session's frames is also their first-stored order.
//! - **Resends are harmless.** A frame answered `unavailable`, or left without
//!   a reply by a dropped connection, may still have been stored; the resend
//!   stores a second copy with the same content, which the fold's
//!   de-duplication ignores (docs/design.md §2.1 rule 3). Together with the first
//!   point, the fold over the acknowledged frames in acknowledgement order
//!   ([`sessionfold_core::fold`]) is exactly the document the system builds.
//!
//! What is retried: `unavailable` and `rate_limited` replies (on the same
//! connection), refused or failed connections, connections that drop or stay
//! silent with a frame in flight (on a new connection), each after an
//! exponential backoff with jitter capped at [`ProducerConfig::max_backoff`].
//! What is not: frames refused for their content (`invalid_json`, …), which
//! are reported in [`SendReport::outcomes`], and a session_id the server
//! refuses with HTTP 4xx.
//!
//! After a frame holding `SESSION_END` is acknowledged the server closes the
//! socket with 1000 (docs/design.md §1.2); the client finishes that close and opens a
//! new connection for the next frame, which is not counted as a reconnect.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use sessionfold_client::{Producer, ProducerConfig};
//! let producer = Producer::new(ProducerConfig::new("ws://localhost:8080/websocket")?);
//! let mut session = producer.session("e6fa79ca-d142-4046-a134-5134f16a0b5e")?;
//! let report = session
//!     .send_frames([r#"[{"type":"SESSION_START","timestamp":1569972082}]"#])
//!     .await?;
//! assert_eq!(report.counters.acked, 1);
//! session.close().await;
//! # Ok(())
//! # }
//! ```

use std::hash::{BuildHasher, Hasher};
use std::ops::AddAssign;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use sessionfold_core::{
    Backoff, ErrorCode, Frame, FrameError, Limits, Reply, SeededRng, SessionId, SessionIdError,
};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a [`Producer`] connects, waits and retries.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// The WebSocket endpoint, e.g. `ws://localhost:8080/websocket`; the
    /// `session_id` query parameter is added per session.
    pub endpoint: Url,
    /// Longest wait for a connection (TCP and WebSocket handshake).
    pub connect_timeout: Duration,
    /// Longest wait for the reply to a frame before the connection is
    /// considered dead and the frame is sent again on a new one. Keep it above
    /// ingest's `PUBLISH_TIMEOUT_MS`.
    pub reply_timeout: Duration,
    /// First retry delay; it doubles on every failure in a row.
    pub initial_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
    /// Longest time one [`SessionSender::send_frames`] (or
    /// [`SessionSender::send_frame`]) call may take, retries included.
    pub deadline: Duration,
    /// Whether the server closes the socket after acknowledging a frame
    /// holding `SESSION_END` (ingest's `CLOSE_ON_SESSION_END`, on by default).
    pub close_on_session_end: bool,
    /// `Authorization: Bearer …` sent with every connection; set it with
    /// [`with_bearer_token`](Self::with_bearer_token). Marked sensitive, so
    /// `Debug` does not show it.
    authorization: Option<HeaderValue>,
}

impl ProducerConfig {
    /// Defaults for `endpoint`: a ws:// or wss:// URL. A bare `host:port`
    /// base (no path) gets the contract's `/websocket` path.
    pub fn new(endpoint: &str) -> Result<Self, ConfigError> {
        let mut endpoint = Url::parse(endpoint).map_err(|err| ConfigError(err.to_string()))?;
        if !matches!(endpoint.scheme(), "ws" | "wss") {
            return Err(ConfigError(format!(
                "the endpoint must be a ws:// or wss:// URL, not {endpoint}"
            )));
        }
        if endpoint.path().is_empty() || endpoint.path() == "/" {
            endpoint.set_path("/websocket");
        }
        endpoint.set_query(None);
        Ok(Self {
            endpoint,
            connect_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(15),
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            deadline: Duration::from_secs(120),
            close_on_session_end: true,
            authorization: None,
        })
    }

    /// Sends `token` (an API key or a session token) as
    /// `Authorization: Bearer <token>` when connecting.
    pub fn with_bearer_token(mut self, token: &str) -> Result<Self, ConfigError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ConfigError("the bearer token is not a valid header value".to_owned()))?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    /// The URL of one session's connection.
    pub fn session_url(&self, session: &SessionId) -> Url {
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("session_id", session.as_str());
        url
    }
}

/// An endpoint that is not a WebSocket URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint: {0}")]
pub struct ConfigError(String);

/// Sends sessions' frames to one ingest endpoint. Cheap to clone; every
/// session gets its own [`SessionSender`] and connection.
#[derive(Debug, Clone)]
pub struct Producer {
    config: std::sync::Arc<ProducerConfig>,
}

impl Producer {
    pub fn new(config: ProducerConfig) -> Self {
        Self {
            config: std::sync::Arc::new(config),
        }
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }

    /// A sender for one session. Nothing connects until the first frame.
    pub fn session(&self, session_id: &str) -> Result<SessionSender, SessionIdError> {
        let session = SessionId::parse(session_id)?;
        let url = self.config.session_url(&session).to_string();
        // A seed of its own per sender, so that senders do not jitter alike.
        let jitter_seed = {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write(session_id.as_bytes());
            hasher.finish()
        };
        Ok(SessionSender {
            config: self.config.clone(),
            session,
            url,
            connection: None,
            recovering: false,
            counters: Counters::default(),
            jitter: SeededRng::new(jitter_seed),
        })
    }
}

/// What happened to one frame.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameOutcome {
    /// Stored by JetStream: the reply's `accepted` count of events, and the
    /// stream sequence that stores it (`None` for `[]`, or a server that
    /// does not say).
    Accepted { events: usize, seq: Option<u64> },
    /// Refused for its content; it was not stored and sending it again would
    /// not help.
    Rejected(FrameError),
}

impl FrameOutcome {
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted { .. })
    }
}

/// Counts of what a sender did. Add them up with `+=` across sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames written to a socket, resends included.
    pub attempts: u64,
    /// Frames acknowledged (`"ok":true`).
    pub acked: u64,
    /// Events in acknowledged frames, as the replies counted them.
    pub events_acked: u64,
    /// Frames refused for their content (not retried).
    pub rejected: u64,
    /// `unavailable` replies (each followed by a resend).
    pub unavailable: u64,
    /// `rate_limited` replies (each followed by a resend).
    pub rate_limited: u64,
    /// Connections opened.
    pub connections: u64,
    /// Connections opened to recover from a failure (a refused or failed
    /// connect, a dropped or silent connection); not the first one, nor the
    /// one after the server closed a session that ended.
    pub reconnects: u64,
    /// Connection attempts that failed.
    pub connect_errors: u64,
    /// Connections that broke with a frame in flight.
    pub dropped: u64,
    /// Frames whose reply did not come within `reply_timeout`.
    pub reply_timeouts: u64,
}

impl AddAssign for Counters {
    fn add_assign(&mut self, other: Self) {
        self.attempts += other.attempts;
        self.acked += other.acked;
        self.events_acked += other.events_acked;
        self.rejected += other.rejected;
        self.unavailable += other.unavailable;
        self.rate_limited += other.rate_limited;
        self.connections += other.connections;
        self.reconnects += other.reconnects;
        self.connect_errors += other.connect_errors;
        self.dropped += other.dropped;
        self.reply_timeouts += other.reply_timeouts;
    }
}

/// The result of a [`SessionSender::send_frames`] call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendReport {
    /// One outcome per frame, in the order given. Frames are sent one at a
    /// time, so the accepted ones are listed in acknowledgement order.
    pub outcomes: Vec<FrameOutcome>,
    /// What this call did.
    pub counters: Counters,
}

impl SendReport {
    /// Indexes (into the frames given) of the acknowledged frames, in
    /// acknowledgement order.
    pub fn acked(&self) -> impl Iterator<Item = usize> + '_ {
        self.outcomes
            .iter()
            .enumerate()
            .filter(|(_, outcome)| outcome.is_accepted())
            .map(|(index, _)| index)
    }
}

/// Why a call stopped before every frame had an outcome.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendErrorKind {
    #[error("frame {index} was not acknowledged within {deadline:?}; last problem: {last_problem}")]
    Deadline {
        index: usize,
        deadline: Duration,
        last_problem: String,
    },
    #[error("the server refused the session: HTTP {status}: {body}")]
    SessionRefused { status: u16, body: String },
}

/// A call that stopped early; `report` holds the outcomes of the frames
/// before the one that failed (those are final: acknowledged frames stay
/// stored).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}")]
pub struct SendError {
    pub kind: SendErrorKind,
    pub report: SendReport,
}

/// One open connection and how many frames it has carried (replies count
/// from 1 per connection).
struct Connection {
    socket: Socket,
    frames: u64,
}

/// Why a connection attempt failed.
enum ConnectFailure {
    /// Worth retrying: refused, reset, timed out, 5xx, 429.
    Transient(String),
    /// The server refused this session for good (HTTP 4xx).
    Refused { status: u16, body: String },
}

/// Why no reply came.
enum ReplyFailure {
    Timeout,
    Broken(String),
}

/// Sends one session's frames, one at a time, over a connection it
/// re-opens as needed.
pub struct SessionSender {
    config: std::sync::Arc<ProducerConfig>,
    session: SessionId,
    url: String,
    connection: Option<Connection>,
    /// The next connection recovers from a failure.
    recovering: bool,
    counters: Counters,
    /// Seeds each frame's backoff jitter.
    jitter: SeededRng,
}

/// Limits for recognising `SESSION_END` in a frame the server will check.
const NO_LIMITS: Limits = Limits {
    max_frame_bytes: usize::MAX,
    max_events_per_frame: usize::MAX,
    max_event_bytes: usize::MAX,
};

impl SessionSender {
    pub fn session_id(&self) -> &str {
        self.session.as_str()
    }

    /// Everything this sender did so far, over all calls.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Sends `frames` in order, each once acknowledged or refused before the
    /// next; retries as described in the module docs. The whole call may take
    /// at most [`ProducerConfig::deadline`].
    pub async fn send_frames<I>(&mut self, frames: I) -> Result<SendReport, SendError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let deadline = Instant::now() + self.config.deadline;
        let before = self.counters;
        let mut outcomes = Vec::new();
        for (index, frame) in frames.into_iter().enumerate() {
            let text = Utf8Bytes::from(frame.into());
            match self.send_until(&text, index, deadline).await {
                Ok(outcome) => outcomes.push(outcome),
                Err(kind) => {
                    let report = SendReport {
                        outcomes,
                        counters: self.since(before),
                    };
                    return Err(SendError { kind, report });
                }
            }
        }
        Ok(SendReport {
            outcomes,
            counters: self.since(before),
        })
    }

    /// Sends one frame until it is acknowledged or refused, within
    /// [`ProducerConfig::deadline`].
    pub async fn send_frame(&mut self, frame: &str) -> Result<FrameOutcome, SendErrorKind> {
        let deadline = Instant::now() + self.config.deadline;
        self.send_until(&Utf8Bytes::from(frame.to_owned()), 0, deadline)
            .await
    }

    /// Closes the connection politely, if one is open.
    pub async fn close(mut self) {
        if let Some(mut connection) = self.connection.take() {
            let _ =
                tokio::time::timeout(self.config.connect_timeout, connection.socket.close(None))
                    .await;
        }
    }

    fn since(&self, before: Counters) -> Counters {
        let now = self.counters;
        Counters {
            attempts: now.attempts - before.attempts,
            acked: now.acked - before.acked,
            events_acked: now.events_acked - before.events_acked,
            rejected: now.rejected - before.rejected,
            unavailable: now.unavailable - before.unavailable,
            rate_limited: now.rate_limited - before.rate_limited,
            connections: now.connections - before.connections,
            reconnects: now.reconnects - before.reconnects,
            connect_errors: now.connect_errors - before.connect_errors,
            dropped: now.dropped - before.dropped,
            reply_timeouts: now.reply_timeouts - before.reply_timeouts,
        }
    }

    async fn send_until(
        &mut self,
        text: &Utf8Bytes,
        index: usize,
        deadline: Instant,
    ) -> Result<FrameOutcome, SendErrorKind> {
        let mut backoff = backoff(&self.config, &mut self.jitter);
        let mut last_problem = String::from("none");
        loop {
            if Instant::now() >= deadline {
                return Err(SendErrorKind::Deadline {
                    index,
                    deadline: self.config.deadline,
                    last_problem,
                });
            }
            if self.connection.is_none() {
                match self.connect(deadline).await {
                    Ok(connection) => self.connection = Some(connection),
                    Err(ConnectFailure::Refused { status, body }) => {
                        return Err(SendErrorKind::SessionRefused { status, body });
                    }
                    Err(ConnectFailure::Transient(problem)) => {
                        self.counters.connect_errors += 1;
                        self.recovering = true;
                        last_problem = problem;
                        sleep_backoff(&mut backoff, deadline).await;
                        continue;
                    }
                }
            }
            let connection = self.connection.as_mut().expect("connected above");
            connection.frames += 1;
            let number = connection.frames;
            self.counters.attempts += 1;
            if let Err(err) = connection.socket.send(Message::Text(text.clone())).await {
                last_problem = format!("sending: {err}");
                self.broken();
                sleep_backoff(&mut backoff, deadline).await;
                continue;
            }
            let wait = self
                .config
                .reply_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            match reply(&mut connection.socket, number, wait).await {
                Ok(Reply::Accepted { accepted, seq, .. }) => {
                    self.counters.acked += 1;
                    self.counters.events_acked += accepted as u64;
                    if self.config.close_on_session_end && ends_session(text, &self.session) {
                        self.finish_closed_session().await;
                    }
                    return Ok(FrameOutcome::Accepted {
                        events: accepted,
                        seq,
                    });
                }
                Ok(Reply::Rejected { error, .. }) => match error.code {
                    // Only the transient codes are worth sending again.
                    code if code.is_transient() => {
                        if error.code == ErrorCode::Unavailable {
                            self.counters.unavailable += 1;
                        } else {
                            self.counters.rate_limited += 1;
                        }
                        last_problem = format!("{}: {}", error.code.as_str(), error.message);
                        sleep_backoff(&mut backoff, deadline).await;
                    }
                    _ => {
                        self.counters.rejected += 1;
                        return Ok(FrameOutcome::Rejected(error));
                    }
                },
                Err(ReplyFailure::Timeout) => {
                    self.counters.reply_timeouts += 1;
                    last_problem = format!("no reply within {wait:?}");
                    self.broken();
                    sleep_backoff(&mut backoff, deadline).await;
                }
                Err(ReplyFailure::Broken(problem)) => {
                    last_problem = problem;
                    self.broken();
                    sleep_backoff(&mut backoff, deadline).await;
                }
            }
        }
    }

    /// Drops a connection that failed with a frame in flight.
    fn broken(&mut self) {
        self.counters.dropped += 1;
        self.connection = None;
        self.recovering = true;
    }

    async fn connect(&mut self, deadline: Instant) -> Result<Connection, ConnectFailure> {
        let wait = self
            .config
            .connect_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let mut request = match self.url.as_str().into_client_request() {
            Ok(request) => request,
            Err(err) => return Err(ConnectFailure::Transient(format!("request: {err}"))),
        };
        if let Some(authorization) = &self.config.authorization {
            request
                .headers_mut()
                .insert(AUTHORIZATION, authorization.clone());
        }
        let attempt = tokio_tungstenite::connect_async_with_config(request, None, true);
        let result = match tokio::time::timeout(wait, attempt).await {
            Err(_) => {
                return Err(ConnectFailure::Transient(format!(
                    "connect timed out after {wait:?}"
                )));
            }
            Ok(result) => result,
        };
        match result {
            Ok((socket, _)) => {
                self.counters.connections += 1;
                if std::mem::take(&mut self.recovering) {
                    self.counters.reconnects += 1;
                }
                Ok(Connection { socket, frames: 0 })
            }
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_deref()
                    .map(|body| String::from_utf8_lossy(body).into_owned())
                    .unwrap_or_default();
                if (400..500).contains(&status) && status != 408 && status != 429 {
                    Err(ConnectFailure::Refused { status, body })
                } else {
                    Err(ConnectFailure::Transient(format!("HTTP {status}: {body}")))
                }
            }
            Err(err) => Err(ConnectFailure::Transient(format!("connecting: {err}"))),
        }
    }

    /// The server closes the socket once a frame with `SESSION_END` is
    /// acknowledged: answer its close, then forget the connection.
    async fn finish_closed_session(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            let drain = async { while let Some(Ok(_)) = connection.socket.next().await {} };
            let _ = tokio::time::timeout(self.config.connect_timeout, drain).await;
        }
    }
}

/// Whether `text` is a valid frame of `session` holding `SESSION_END`.
fn ends_session(text: &str, session: &SessionId) -> bool {
    Frame::parse(text, session, &NO_LIMITS).is_ok_and(|frame| frame.has_session_end())
}

/// Waits for the reply to the connection's `number`-th frame.
async fn reply(socket: &mut Socket, number: u64, wait: Duration) -> Result<Reply, ReplyFailure> {
    let read = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let reply: Reply = serde_json::from_str(text.as_str()).map_err(|err| {
                        ReplyFailure::Broken(format!("unreadable reply {text}: {err}"))
                    })?;
                    if reply.frame() != number {
                        return Err(ReplyFailure::Broken(format!(
                            "reply to frame {} while waiting for frame {number}",
                            reply.frame()
                        )));
                    }
                    return Ok(reply);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(ReplyFailure::Broken(format!(
                        "the server closed the connection: {frame:?}"
                    )));
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(ReplyFailure::Broken(format!("reading: {err}"))),
                None => return Err(ReplyFailure::Broken("the connection ended".to_owned())),
            }
        }
    };
    tokio::time::timeout(wait, read)
        .await
        .unwrap_or(Err(ReplyFailure::Timeout))
}

/// The retry schedule of one frame: exponential from
/// [`ProducerConfig::initial_backoff`] to [`ProducerConfig::max_backoff`],
/// jittered so that many senders failing together do not retry in
/// lockstep.
fn backoff(config: &ProducerConfig, jitter: &mut SeededRng) -> Backoff {
    Backoff::new(config.initial_backoff, config.max_backoff)
        .with_jitter(SeededRng::new(jitter.next_u64()))
}

/// Sleeps for the next delay of `backoff`, never past `deadline`.
async fn sleep_backoff(backoff: &mut Backoff, deadline: Instant) {
    let until = (Instant::now() + backoff.next_delay()).min(deadline);
    tokio::time::sleep_until(until).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_websocket_path_and_session_query() {
        let config = ProducerConfig::new("ws://127.0.0.1:8080").unwrap();
        assert_eq!(config.endpoint.as_str(), "ws://127.0.0.1:8080/websocket");
        let session = SessionId::parse("a b&c={x}").unwrap();
        assert_eq!(
            config.session_url(&session).as_str(),
            "ws://127.0.0.1:8080/websocket?session_id=a+b%26c%3D%7Bx%7D"
        );
        let explicit = ProducerConfig::new("ws://h:1/custom?x=1").unwrap();
        assert_eq!(explicit.endpoint.as_str(), "ws://h:1/custom");
        assert!(ProducerConfig::new("http://h:1/websocket").is_err());
        assert!(ProducerConfig::new("not a url").is_err());
    }

    #[test]
    fn session_end_is_recognised_anywhere_in_a_valid_frame() {
        let session = SessionId::parse("s").unwrap();
        assert!(ends_session(
            r#"[{"type":"EVENT","timestamp":1},{"type":"SESSION_END","timestamp":2},{"type":"EVENT","timestamp":3}]"#,
            &session
        ));
        assert!(ends_session(
            r#"{"type":"SESSION_END","timestamp":2}"#,
            &session
        ));
        assert!(!ends_session(
            r#"[{"type":"EVENT","timestamp":1,"name":"SESSION_END"}]"#,
            &session
        ));
        assert!(!ends_session(r#"[{"type":"SESSION_END"}]"#, &session));
    }

    #[test]
    fn counters_add_up_and_subtract() {
        let mut total = Counters::default();
        let one = Counters {
            attempts: 3,
            acked: 2,
            unavailable: 1,
            reconnects: 1,
            ..Counters::default()
        };
        total += one;
        total += one;
        assert_eq!(total.attempts, 6);
        assert_eq!(total.reconnects, 2);
    }

    #[tokio::test]
    async fn backoff_doubles_up_to_the_cap() {
        let mut config = ProducerConfig::new("ws://h:1").unwrap();
        config.initial_backoff = Duration::from_millis(20);
        config.max_backoff = Duration::from_millis(80);
        let mut backoff = backoff(&config, &mut SeededRng::new(1));
        let far = Instant::now() + Duration::from_secs(60);
        for cap in [20, 40, 80, 80] {
            let start = Instant::now();
            sleep_backoff(&mut backoff, far).await;
            let waited = start.elapsed();
            let cap = Duration::from_millis(cap);
            assert!(waited >= cap / 2, "{waited:?} vs {cap:?}");
            assert!(
                waited <= cap + Duration::from_millis(50),
                "{waited:?} vs {cap:?}"
            );
        }
        let start = Instant::now();
        sleep_backoff(&mut backoff, start + Duration::from_millis(5)).await;
        assert!(start.elapsed() < Duration::from_millis(60));
    }

    /// A scripted ingest: per connection, the replies to give, in order.
    enum Step {
        Ok(usize),
        Unavailable,
        /// Drop the TCP connection without replying.
        Drop,
        /// Reply ok, then close with 1000 as ingest does after SESSION_END.
        OkThenClose(usize),
    }

    async fn scripted_server(
        script: Vec<Vec<Step>>,
    ) -> (String, tokio::task::JoinHandle<Vec<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/websocket", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut received = Vec::new();
            for steps in script {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
                let mut frames = Vec::new();
                for (number, step) in steps.into_iter().enumerate() {
                    let number = number as u64 + 1;
                    let Some(Ok(Message::Text(text))) = socket.next().await else {
                        panic!("expected frame {number}");
                    };
                    frames.push(text.to_string());
                    let reply = match step {
                        Step::Ok(events) | Step::OkThenClose(events) => {
                            Reply::accepted(number, events)
                        }
                        Step::Unavailable => {
                            Reply::rejected(number, FrameError::new(ErrorCode::Unavailable, "down"))
                        }
                        Step::Drop => break,
                    };
                    socket.send(Message::text(reply.to_json())).await.unwrap();
                    if matches!(step, Step::OkThenClose(_)) {
                        socket.close(None).await.unwrap();
                    }
                }
                received.push(frames);
            }
            received
        });
        (url, server)
    }

    #[tokio::test]
    async fn unacknowledged_frames_are_sent_again_in_order() {
        let a = r#"[{"type":"SESSION_START","timestamp":1},{"type":"EVENT","timestamp":2}]"#;
        let b = r#"[{"type":"EVENT","timestamp":3},{"type":"SESSION_END","timestamp":4}]"#;
        let c = r#"{"type":"EVENT","timestamp":5}"#;
        let (url, server) = scripted_server(vec![
            vec![Step::Ok(2), Step::Unavailable, Step::Drop],
            vec![Step::OkThenClose(2)],
            vec![Step::Ok(1)],
        ])
        .await;
        let mut config = ProducerConfig::new(&url).unwrap();
        config.initial_backoff = Duration::from_millis(1);
        config.deadline = Duration::from_secs(10);
        let producer = Producer::new(config);
        let mut sender = producer.session("s-1").unwrap();
        let report = sender.send_frames([a, b, c]).await.unwrap();
        sender.close().await;
        assert_eq!(report.acked().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(
            report.counters,
            Counters {
                attempts: 5,
                acked: 3,
                events_acked: 5,
                unavailable: 1,
                connections: 3,
                reconnects: 1,
                dropped: 1,
                ..Counters::default()
            }
        );
        let received = server.await.unwrap();
        assert_eq!(received, vec![vec![a, b, b], vec![b], vec![c]]);
    }

    #[tokio::test]
    async fn content_refusals_are_reported_not_retried() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/websocket", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let _ = socket.next().await;
            let error = FrameError::at(ErrorCode::InvalidEvent, 0, "type is required");
            socket
                .send(Message::text(Reply::rejected(1, error).to_json()))
                .await
                .unwrap();
            let _ = socket.next().await;
            socket
                .send(Message::text(Reply::accepted(2, 1).to_json()))
                .await
                .unwrap();
            let _ = socket.next().await;
        });
        let producer = Producer::new(ProducerConfig::new(&url).unwrap());
        let mut sender = producer.session("s").unwrap();
        let report = sender
            .send_frames([r#"[{"timestamp":1}]"#, r#"{"type":"EVENT","timestamp":1}"#])
            .await
            .unwrap();
        assert!(
            matches!(&report.outcomes[0], FrameOutcome::Rejected(e) if e.code == ErrorCode::InvalidEvent)
        );
        assert_eq!(
            report.outcomes[1],
            FrameOutcome::Accepted {
                events: 1,
                seq: None
            }
        );
        assert_eq!((report.counters.rejected, report.counters.attempts), (1, 2));
    }

    #[tokio::test]
    async fn the_deadline_bounds_a_call_against_a_dead_endpoint() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut config = ProducerConfig::new(&format!("ws://127.0.0.1:{port}")).unwrap();
        config.deadline = Duration::from_millis(300);
        config.max_backoff = Duration::from_millis(50);
        let mut sender = Producer::new(config).session("s").unwrap();
        let error = sender
            .send_frames([r#"{"type":"EVENT","timestamp":1}"#])
            .await
            .unwrap_err();
        assert!(
            matches!(error.kind, SendErrorKind::Deadline { index: 0, .. }),
            "{error}"
        );
        assert!(error.report.counters.connect_errors >= 2);
        assert_eq!(error.report.counters.connections, 0);
    }

    #[tokio::test]
    async fn a_bearer_token_is_sent_and_hidden_from_debug() {
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/websocket", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut seen = None;
            // The handshake callback's signature is tungstenite's.
            #[allow(clippy::result_large_err)]
            let callback = |request: &Request, response: Response| {
                seen = request
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                Ok(response)
            };
            let mut socket = tokio_tungstenite::accept_hdr_async(tcp, callback)
                .await
                .unwrap();
            let _ = socket.next().await;
            socket
                .send(Message::text(Reply::accepted(1, 1).to_json()))
                .await
                .unwrap();
            let _ = socket.next().await;
            seen
        });
        let config = ProducerConfig::new(&url)
            .unwrap()
            .with_bearer_token("secret-key")
            .unwrap();
        assert!(!format!("{config:?}").contains("secret-key"));
        let mut sender = Producer::new(config).session("s").unwrap();
        let outcome = sender
            .send_frame(r#"{"type":"EVENT","timestamp":1}"#)
            .await
            .unwrap();
        assert!(outcome.is_accepted());
        sender.close().await;
        assert_eq!(server.await.unwrap().as_deref(), Some("Bearer secret-key"));
        assert!(
            ProducerConfig::new(&url)
                .unwrap()
                .with_bearer_token("line\nbreak")
                .is_err()
        );
    }
}
