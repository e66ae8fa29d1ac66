//! One producer connection. Frames are validated as they arrive; valid ones
//! are published, and up to `max_in_flight_per_connection` of them wait for
//! their PubAck at once. Replies leave in frame order, whatever order the
//! PubAcks come back in.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use sessionfold_common::metrics;
use sessionfold_common::rate_limit::retry_after_secs;
use sessionfold_core::{ErrorCode, Frame, FrameError, Reply, SessionId};

use crate::server::Shared;

/// How long a closing connection waits for the client's close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one connection knows about itself.
pub struct Connection {
    shared: Arc<Shared>,
    session: SessionId,
    subject: String,
    request_id: String,
    client_ip: IpAddr,
    frames_received: u64,
}

/// A frame's reply, once known.
struct Outcome {
    reply: Reply,
    ends_session: bool,
}

impl Connection {
    pub(crate) fn new(
        shared: Arc<Shared>,
        session: SessionId,
        request_id: String,
        client_ip: IpAddr,
    ) -> Self {
        let subject = shared.names.subject(&session);
        Self {
            shared,
            session,
            subject,
            request_id,
            client_ip,
            frames_received: 0,
        }
    }

    /// Validates a text frame and, when valid, starts publishing it. The
    /// returned future resolves to the frame's reply; the flag tells whether
    /// it is a valid frame that ends the session.
    fn accept_frame(&mut self, text: Utf8Bytes) -> (BoxFuture<'static, Outcome>, bool) {
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
            return (ready_rejection(frame_number, error), false);
        }
        let frame = match Frame::parse(text.as_str(), &self.session, &self.shared.limits) {
            Ok(frame) => frame,
            Err(error) => return (ready_rejection(frame_number, error), false),
        };
        let accepted = frame.events.len();
        let ends_session = frame.has_session_end();
        if accepted == 0 {
            metrics::frame_accepted(0);
            let reply = Reply::accepted(frame_number, 0);
            return (
                futures::future::ready(Outcome {
                    reply,
                    ends_session,
                })
                .boxed(),
                ends_session,
            );
        }
        let Ok(permit) = self.shared.in_flight_total.clone().try_acquire_owned() else {
            let error = FrameError::new(
                ErrorCode::Unavailable,
                "ingest is at capacity; send the frame again later",
            );
            metrics::events_rejected(error.code.as_str(), accepted);
            return (ready_rejection(frame_number, error), false);
        };
        let publisher = self.shared.publisher.clone();
        let subject = self.subject.clone();
        let message_id = format!("{}:{frame_number}", self.request_id);
        let request_id = self.request_id.clone();
        let payload = Bytes::from(text);
        let publish = async move {
            let result = publisher
                .publish(subject, payload, message_id, &request_id)
                .await;
            drop(permit);
            match result {
                Ok(sequence) => {
                    tracing::debug!(frame = frame_number, sequence, "frame stored");
                    metrics::frame_accepted(accepted);
                    Outcome {
                        reply: Reply::accepted(frame_number, accepted),
                        ends_session,
                    }
                }
                Err(err) => {
                    tracing::warn!(frame = frame_number, error = %err, "frame not stored");
                    metrics::events_rejected(ErrorCode::Unavailable.as_str(), accepted);
                    let mut outcome = rejection(
                        frame_number,
                        FrameError::new(
                            ErrorCode::Unavailable,
                            format!("{err}; send the frame again"),
                        ),
                    );
                    // A SESSION_END frame stops reading until it is answered:
                    // its reply, stored or not, must resume it.
                    outcome.ends_session = ends_session;
                    outcome
                }
            }
        };
        (publish.boxed(), ends_session)
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

/// Serves one connection until the client leaves, the session ends or the
/// service shuts down.
pub(crate) async fn run(socket: WebSocket, mut connection: Connection) {
    tracing::info!("connection opened");
    let _open = metrics::OpenConnection::open();
    let shared = connection.shared.clone();
    let max_in_flight = shared.connection.max_in_flight_per_connection.max(1);
    let (mut sink, mut source) = socket.split();
    let mut pending: FuturesOrdered<BoxFuture<'static, Outcome>> = FuturesOrdered::new();
    // A frame with SESSION_END waiting for its PubAck: read nothing more
    // until it is answered.
    let mut awaiting_session_end = false;
    let mut client_gone = false;
    let mut stopping = false;
    let mut close: Option<CloseFrame> = None;
    let mut replies_sent = 0u64;
    let idle_timeout = match shared.guard.idle_timeout_secs {
        0 => Duration::MAX,
        secs => Duration::from_secs(secs),
    };
    let idle = tokio::time::sleep(idle_timeout.min(Duration::from_secs(u32::MAX.into())));
    tokio::pin!(idle);

    loop {
        if (client_gone || stopping) && pending.is_empty() {
            break;
        }
        let may_read =
            !client_gone && !stopping && !awaiting_session_end && pending.len() < max_in_flight;
        tokio::select! {
            biased;
            Some(outcome) = pending.next(), if !pending.is_empty() => {
                let ok = outcome.reply.is_ok();
                if sink.send(Message::Text(outcome.reply.to_json().into())).await.is_err() {
                    client_gone = true;
                    continue;
                }
                replies_sent += 1;
                if outcome.ends_session {
                    awaiting_session_end = false;
                    if ok && shared.connection.close_on_session_end {
                        close = Some(CloseFrame { code: close_code::NORMAL, reason: "session ended".into() });
                        break;
                    }
                }
            }
            () = &mut idle, if !stopping && pending.is_empty() => {
                tracing::info!("idle timeout");
                stopping = true;
                close = Some(CloseFrame { code: close_code::NORMAL, reason: "idle timeout".into() });
            }
            _ = shared.shutdown.cancelled(), if !stopping => {
                stopping = true;
                close = Some(CloseFrame { code: close_code::AWAY, reason: "server shutting down".into() });
            }
            message = source.next(), if may_read => match message {
                Some(Ok(Message::Text(text))) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout.min(Duration::from_secs(u32::MAX.into())));
                    let (outcome, ends_session) = connection.accept_frame(text);
                    pending.push_back(outcome);
                    // Its own reply decides whether reading resumes.
                    awaiting_session_end = ends_session && shared.connection.close_on_session_end;
                }
                Some(Ok(Message::Binary(_))) => {
                    connection.frames_received += 1;
                    pending.push_back(ready_rejection(
                        connection.frames_received,
                        FrameError::new(ErrorCode::InvalidJson, "frames must be text frames holding JSON"),
                    ));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => client_gone = true,
                Some(Err(err)) if is_message_too_big(&err) => {
                    tracing::info!(error = %err, "message over the hard size cap");
                    stopping = true;
                    close = Some(CloseFrame { code: close_code::SIZE, reason: "message too big".into() });
                }
                Some(Err(err)) => {
                    tracing::info!(error = %err, "connection failed");
                    client_gone = true;
                }
            },
        }
    }
    if let Some(frame) = close.filter(|_| !client_gone) {
        let _ = sink.send(Message::Close(Some(frame))).await;
        // Finish the closing handshake: dropping the socket while the client
        // still sends would make the kernel reset the connection, and the
        // client would lose the close frame and the replies before it.
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
            while let Some(Ok(message)) = source.next().await {
                if matches!(message, Message::Close(_)) {
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
/// capacity error, which axum only exposes as text.
fn is_message_too_big(err: &axum::Error) -> bool {
    let text = err.to_string();
    text.contains("Space limit exceeded") || text.contains("too long")
}
