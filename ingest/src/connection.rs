//! One producer connection. Frames are validated as they arrive; valid ones
//! are published, and up to `max_in_flight_per_connection` of them wait for
//! their PubAck at once. Replies leave in frame order, whatever order the
//! PubAcks come back in.
//!
//! Where the connection is in its life is one [`State`]; its methods are the
//! only transitions, so the rules (nothing is read while a `SESSION_END`
//! frame waits for its reply, every frame read is answered before a close,
//! a client that left gets no more replies) live in one place and are unit
//! tested without a socket.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, close_code};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use sessionfold_common::auth::Grant;
use sessionfold_common::http::ReadCredit;
use sessionfold_common::metrics;
use sessionfold_common::rate_limit::retry_after_secs;
use sessionfold_core::{ErrorCode, Frame, FrameError, Reply, SessionId};

use crate::publisher::{ConnectionId, OutgoingFrame};
use crate::server::Shared;

/// How long a closing connection waits for the client's close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most messages read while waiting for the client's close frame, so that a
/// client that floods the socket cannot keep the server reading.
const CLOSE_HANDSHAKE_MESSAGES: usize = 64;

/// Close code when the connection's token expires (policy violation).
pub const TOKEN_EXPIRED_CLOSE_CODE: u16 = close_code::POLICY;
/// Close code when a client sends pings faster than allowed.
pub const TOO_MANY_PINGS_CLOSE_CODE: u16 = close_code::POLICY;

/// What one connection knows about itself.
pub struct Connection {
    shared: Arc<Shared>,
    session: SessionId,
    subject: String,
    id: ConnectionId,
    request_id: String,
    client_ip: IpAddr,
    grant: Grant,
    frames_received: u64,
    /// This connection's account with the listener's read budget: every
    /// complete message returns what its bytes took.
    pub(crate) read_credit: Option<ReadCredit>,
    /// The session was closed for good when the connection opened, and
    /// late frames are rejected (`LATE_EVENTS=reject`).
    pub(crate) closed_for_good: bool,
}

/// A frame's reply, once known.
struct Outcome {
    reply: Reply,
    ends_session: bool,
}

/// A text frame read: its reply to come, and what it means for the
/// connection.
struct Accepted {
    outcome: BoxFuture<'static, Outcome>,
    /// A valid frame holding `SESSION_END`.
    ends_session: bool,
    /// It holds events and is being published.
    stores: bool,
}

impl Accepted {
    fn refused(outcome: BoxFuture<'static, Outcome>) -> Self {
        Self {
            outcome,
            ends_session: false,
            stores: false,
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// Frames are read, as long as fewer than the in-flight bound wait.
    Reading,
    /// A frame with `SESSION_END` waits for its reply; nothing more is read
    /// until it is answered.
    AwaitingSessionEnd,
    /// Reading has stopped (idle, shutdown, expiry, abuse): every frame read
    /// is answered, then the socket is closed with `close`.
    Draining { close: CloseFrame },
    /// The client is gone: publishes under way finish, nothing is sent.
    ClientGone,
    /// Finished; close the socket with the frame, if there is one.
    Closed { close: Option<CloseFrame> },
}

impl State {
    /// Whether the next frame may be read (the in-flight bound aside).
    pub(crate) fn may_read(&self) -> bool {
        matches!(self, Self::Reading)
    }

    /// Whether the connection still runs normally (not stopping, not done).
    pub(crate) fn is_live(&self) -> bool {
        matches!(self, Self::Reading | Self::AwaitingSessionEnd)
    }

    /// A valid frame was read; a `SESSION_END` frame (when the session's end
    /// closes the socket) stops reading until its reply.
    pub(crate) fn frame_read(self, ends_session: bool, close_on_session_end: bool) -> Self {
        match self {
            Self::Reading if ends_session && close_on_session_end => Self::AwaitingSessionEnd,
            other => other,
        }
    }

    /// A reply was sent. An acknowledged `SESSION_END` frame closes the
    /// socket at once (nothing after it was read); a refused one resumes
    /// reading.
    pub(crate) fn replied(self, ok: bool, ends_session: bool, close_on_session_end: bool) -> Self {
        if !ends_session {
            return self;
        }
        match self {
            Self::AwaitingSessionEnd | Self::Draining { .. } if ok && close_on_session_end => {
                Self::Closed {
                    close: Some(close_frame(close_code::NORMAL, "session ended")),
                }
            }
            Self::AwaitingSessionEnd => Self::Reading,
            other => other,
        }
    }

    /// Reading stops for `close`; frames read are still answered.
    pub(crate) fn stop(self, close: CloseFrame) -> Self {
        match self {
            Self::Reading | Self::AwaitingSessionEnd => Self::Draining { close },
            other => other,
        }
    }

    /// The client left or the socket failed.
    pub(crate) fn client_left(self) -> Self {
        match self {
            Self::Closed { .. } => Self::Closed { close: None },
            _ => Self::ClientGone,
        }
    }

    /// Once nothing is pending, a draining connection closes.
    pub(crate) fn settle(self, nothing_pending: bool) -> Self {
        match self {
            Self::Draining { close } if nothing_pending => Self::Closed { close: Some(close) },
            Self::ClientGone if nothing_pending => Self::Closed { close: None },
            other => other,
        }
    }
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

impl Connection {
    pub(crate) fn new(
        shared: Arc<Shared>,
        session: SessionId,
        request_id: String,
        client_ip: IpAddr,
        grant: Grant,
    ) -> Self {
        let subject = shared.subjects.event(&session);
        Self {
            shared,
            session,
            subject,
            id: ConnectionId::random(),
            request_id,
            client_ip,
            grant,
            frames_received: 0,
            read_credit: None,
            closed_for_good: false,
        }
    }

    /// Validates a text frame and, when valid, starts publishing it.
    fn accept_frame(&mut self, text: Utf8Bytes) -> Accepted {
        self.frames_received += 1;
        let frame_number = self.frames_received;
        if let Err(wait) =
            self.shared
                .frame_limits
                .check(self.client_ip, self.session.as_str(), text.len())
        {
            let error = FrameError::new(
                ErrorCode::RateLimited,
                format!(
                    "rate limit reached; retry after {} s",
                    retry_after_secs(wait)
                ),
            );
            return Accepted::refused(ready_rejection(frame_number, error));
        }
        let mut frame = match Frame::parse(text.as_str(), &self.session, &self.shared.limits) {
            Ok(frame) => frame,
            Err(error) => return Accepted::refused(ready_rejection(frame_number, error)),
        };
        if self.closed_for_good {
            metrics::late_frame("rejected");
            let error = FrameError::new(
                ErrorCode::SessionClosed,
                "the session closed longer ago than its allowed lateness and takes no frames",
            );
            return Accepted::refused(ready_rejection(frame_number, error));
        }
        let accepted = frame.events.len();
        let ends_session = frame.has_session_end();
        if accepted == 0 {
            metrics::frame_accepted(0);
            let reply = Reply::accepted(frame_number, 0);
            return Accepted {
                outcome: futures::future::ready(Outcome {
                    reply,
                    ends_session,
                })
                .boxed(),
                ends_session,
                stores: false,
            };
        }
        let payload = match self.shared.redaction.as_ref() {
            Some(redaction) => match redaction.redact_frame(&mut frame.events) {
                Some(redacted) if redacted.len() > self.shared.limits.max_frame_bytes => {
                    // Hashes are longer than most values; sizes only, never
                    // the values, go into the message.
                    let error = FrameError::new(
                        ErrorCode::FrameTooLarge,
                        format!(
                            "the frame is {} bytes once redacted, the limit is {}",
                            redacted.len(),
                            self.shared.limits.max_frame_bytes
                        ),
                    );
                    metrics::events_rejected(error.code.as_str(), accepted);
                    return Accepted::refused(ready_rejection(frame_number, error));
                }
                Some(redacted) => Bytes::from(redacted),
                None => Bytes::from(text),
            },
            None => Bytes::from(text),
        };
        let Ok(permit) = self.shared.in_flight_total.clone().try_acquire_owned() else {
            let error = FrameError::new(
                ErrorCode::Unavailable,
                "ingest is at capacity; send the frame again later",
            );
            metrics::events_rejected(error.code.as_str(), accepted);
            return Accepted::refused(ready_rejection(frame_number, error));
        };
        let publishing = self.shared.publisher.publish(OutgoingFrame {
            subject: self.subject.clone(),
            payload,
            message_id: self.id.message_id(frame_number),
            request_id: self.request_id.clone(),
        });
        let publish = async move {
            let result = publishing.await;
            drop(permit);
            match result {
                Ok(stored) => {
                    tracing::debug!(
                        frame = frame_number,
                        sequence = stored.sequence,
                        duplicate = stored.duplicate,
                        "frame stored"
                    );
                    metrics::frame_accepted(accepted);
                    Outcome {
                        reply: Reply::stored(frame_number, accepted, stored.sequence),
                        ends_session,
                    }
                }
                Err(err) => {
                    tracing::warn!(frame = frame_number, error = %err, "frame not stored");
                    let code = err.code();
                    metrics::events_rejected(code.as_str(), accepted);
                    let message = if code.is_transient() {
                        format!("{err}; send the frame again")
                    } else {
                        format!("{err}; it cannot be stored as it is")
                    };
                    let mut outcome = rejection(frame_number, FrameError::new(code, message));
                    // A SESSION_END frame stops reading until it is answered:
                    // its reply, stored or not, must resume it.
                    outcome.ends_session = ends_session;
                    outcome
                }
            }
        };
        Accepted {
            outcome: publish.boxed(),
            ends_session,
            stores: true,
        }
    }

    fn binary_frame(&mut self) -> BoxFuture<'static, Outcome> {
        self.frames_received += 1;
        ready_rejection(
            self.frames_received,
            FrameError::new(
                ErrorCode::InvalidJson,
                "frames must be text frames holding JSON",
            ),
        )
    }
}

fn rejection(frame_number: u64, error: FrameError) -> Outcome {
    tracing::info!(
        frame = frame_number,
        code = error.code.as_str(),
        index = error.index,
        reason = %error.message,
        "rejected a frame"
    );
    metrics::frame_rejected(error.code.as_str(), usize::from(error.index.is_some()));
    Outcome {
        reply: Reply::rejected(frame_number, error),
        ends_session: false,
    }
}

fn ready_rejection(frame_number: u64, error: FrameError) -> BoxFuture<'static, Outcome> {
    futures::future::ready(rejection(frame_number, error)).boxed()
}

/// A timer far enough away to stand for "never" without overflowing.
fn deadline_after(duration: Option<Duration>) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(u32::MAX as u64);
    tokio::time::Instant::now() + duration.unwrap_or(FAR).min(FAR)
}

/// Counts pings in one-second windows.
struct PingBudget {
    per_second: u32,
    window_start: tokio::time::Instant,
    in_window: u32,
}

impl PingBudget {
    fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window_start: tokio::time::Instant::now(),
            in_window: 0,
        }
    }

    /// Takes one ping; `false` once the client is past the limit (0: none).
    fn take(&mut self) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.in_window = 0;
        }
        self.in_window += 1;
        self.in_window <= self.per_second
    }
}

/// Serves one connection until the client leaves, the session ends or the
/// service shuts down. `sink` and `source` are the two halves of the
/// WebSocket (channels in the unit tests).
pub(crate) async fn run<Tx, Rx>(mut sink: Tx, mut source: Rx, mut connection: Connection)
where
    Tx: Sink<Message> + Unpin,
    Rx: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    tracing::info!(connection_id = %connection.id, "connection opened");
    let _open = metrics::OpenConnection::open();
    let shared = connection.shared.clone();
    let close_on_session_end = shared.connection.close_on_session_end;
    let max_in_flight = shared.connection.max_in_flight_per_connection.max(1);
    let mut pending: FuturesOrdered<BoxFuture<'static, Outcome>> = FuturesOrdered::new();
    let mut state = State::Reading;
    let mut replies_sent = 0u64;
    let mut pings = PingBudget::new(shared.guard.max_pings_per_sec);
    let idle_timeout = match shared.guard.idle_timeout_secs {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    };
    let idle = tokio::time::sleep_until(deadline_after(idle_timeout));
    tokio::pin!(idle);
    let expiry = tokio::time::sleep_until(deadline_after(
        connection.grant.remaining(sessionfold_common::auth::now()),
    ));
    tokio::pin!(expiry);

    let close = loop {
        state = state.settle(pending.is_empty());
        if let State::Closed { close } = state {
            break close;
        }
        let may_read = state.may_read() && pending.len() < max_in_flight;
        tokio::select! {
            biased;
            Some(outcome) = pending.next(), if !pending.is_empty() => {
                if matches!(state, State::ClientGone) {
                    continue;
                }
                let ok = outcome.reply.is_ok();
                if sink.send(Message::Text(outcome.reply.to_json().into())).await.is_err() {
                    state = state.client_left();
                    continue;
                }
                replies_sent += 1;
                state = state.replied(ok, outcome.ends_session, close_on_session_end);
            }
            () = &mut idle, if state.is_live() && pending.is_empty() => {
                tracing::info!("idle timeout");
                state = state.stop(close_frame(close_code::NORMAL, "idle timeout"));
            }
            () = &mut expiry, if state.is_live() => {
                tracing::info!("token expired");
                state = state.stop(close_frame(TOKEN_EXPIRED_CLOSE_CODE, "token expired"));
            }
            _ = shared.shutdown.cancelled(), if state.is_live() => {
                state = state.stop(close_frame(close_code::AWAY, "server shutting down"));
            }
            message = source.next(), if may_read => {
                if let Some(credit) = &connection.read_credit {
                    credit.release();
                }
                match message {
                Some(Ok(Message::Text(text))) => {
                    let accepted = connection.accept_frame(text);
                    // Only a frame with something to store keeps the
                    // connection open: refused and empty frames do not.
                    if accepted.stores {
                        idle.as_mut().reset(deadline_after(idle_timeout));
                    }
                    pending.push_back(accepted.outcome);
                    state = state.frame_read(accepted.ends_session, close_on_session_end);
                }
                Some(Ok(Message::Binary(_))) => {
                    pending.push_back(connection.binary_frame());
                }
                Some(Ok(Message::Ping(_))) => {
                    if !pings.take() {
                        tracing::info!("too many pings");
                        state = state.stop(close_frame(TOO_MANY_PINGS_CLOSE_CODE, "too many pings"));
                    }
                }
                Some(Ok(Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => state = state.client_left(),
                Some(Err(err)) if is_message_too_big(&err) => {
                    tracing::info!(error = %err, "message over the hard size cap");
                    state = state.stop(close_frame(close_code::SIZE, "message too big"));
                }
                Some(Err(err)) => {
                    tracing::info!(error = %err, "connection failed");
                    state = state.client_left();
                }
            }},
        }
    };
    if let Some(frame) = close {
        let _ = sink.send(Message::Close(Some(frame))).await;
        // Finish the closing handshake: dropping the socket while the client
        // still sends would make the kernel reset the connection, and the
        // client would lose the close frame and the replies before it.
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
            let mut read = 0;
            while let Some(Ok(message)) = source.next().await {
                read += 1;
                if matches!(message, Message::Close(_)) || read >= CLOSE_HANDSHAKE_MESSAGES {
                    break;
                }
            }
        })
        .await;
    }
    tracing::info!(
        frames = connection.frames_received,
        replies = replies_sent,
        "connection closed"
    );
}

/// A message over the hard cap is refused by the WebSocket layer with a
/// capacity error (tungstenite's `MessageTooLong`, or a frame over the frame
/// size limit), which axum wraps in its own error type.
pub(crate) fn is_message_too_big(err: &axum::Error) -> bool {
    use std::error::Error as _;
    use tungstenite::error::{CapacityError, Error as WsError};
    err.source()
        .and_then(|source| source.downcast_ref::<WsError>())
        .is_some_and(|ws| matches!(ws, WsError::Capacity(CapacityError::MessageTooLong { .. })))
}

#[cfg(test)]
mod tests;
