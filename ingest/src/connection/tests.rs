//! The connection state machine against an in-memory publisher: replies in
//! order, `SESSION_END` gating, the in-flight bound, shutdown draining,
//! duplicate PubAcks and permanent versus transient errors. No socket, no
//! NATS: channels stand for the WebSocket, and every publish waits until the
//! test settles it.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use clap::Parser as _;
use futures::channel::mpsc;
use sessionfold_common::auth::Authenticator;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Config;
use crate::publisher::{Publish, PublishError, Stored};

type Settle = oneshot::Sender<Result<Stored, PublishError>>;

/// Holds every publish until the test settles it.
#[derive(Default)]
struct FakePublisher {
    waiting: Mutex<VecDeque<(OutgoingFrame, Settle)>>,
}

impl Publish for Arc<FakePublisher> {
    fn publish(&self, frame: OutgoingFrame) -> BoxFuture<'static, Result<Stored, PublishError>> {
        let (settle, settled) = oneshot::channel();
        self.waiting
            .lock()
            .expect("not poisoned")
            .push_back((frame, settle));
        async move {
            settled
                .await
                .unwrap_or(Err(PublishError::Unavailable("dropped".into())))
        }
        .boxed()
    }
}

impl FakePublisher {
    fn waiting(&self) -> usize {
        self.waiting.lock().expect("not poisoned").len()
    }

    /// Takes the `index`-th waiting publish (0 = oldest).
    fn take(&self, index: usize) -> (OutgoingFrame, Settle) {
        self.waiting
            .lock()
            .expect("not poisoned")
            .remove(index)
            .expect("a waiting publish")
    }
}

struct Harness {
    publisher: Arc<FakePublisher>,
    to_server: mpsc::UnboundedSender<Result<Message, axum::Error>>,
    from_server: mpsc::UnboundedReceiver<Message>,
    drain: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn config(configure: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::parse_from(["sessionfold-ingest"]);
    configure(&mut config);
    config
}

fn start(configure: impl FnOnce(&mut Config)) -> Harness {
    let config = config(configure);
    let publisher = Arc::new(FakePublisher::default());
    let drain = CancellationToken::new();
    let shared = Arc::new(Shared::new(
        &config,
        config.limits.limits(),
        Arc::new(publisher.clone()),
        Authenticator::new(&config.auth),
        drain.clone(),
    ));
    let grant = Grant::UNLIMITED;
    start_with(shared, publisher, drain, grant, false)
}

fn start_with(
    shared: Arc<Shared>,
    publisher: Arc<FakePublisher>,
    drain: CancellationToken,
    grant: Grant,
    closed_for_good: bool,
) -> Harness {
    let (to_server, source) = mpsc::unbounded();
    let (sink, from_server) = mpsc::unbounded();
    let session = SessionId::parse("s").unwrap();
    let connection = Connection::new(
        shared,
        session,
        "request-1".into(),
        Ipv4Addr::LOCALHOST.into(),
        grant,
    );
    let mut connection = connection;
    connection.closed_for_good = closed_for_good;
    let task = tokio::spawn(run(sink, source, connection));
    Harness {
        publisher,
        to_server,
        from_server,
        drain,
        task,
    }
}

const EVENT: &str = r#"[{"type":"EVENT","timestamp":1}]"#;
const END: &str = r#"[{"type":"SESSION_END","timestamp":2}]"#;

impl Harness {
    fn send(&self, text: &str) {
        self.to_server
            .unbounded_send(Ok(Message::Text(text.to_owned().into())))
            .expect("the connection reads");
    }

    async fn next(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(5), self.from_server.next())
            .await
            .expect("a message from the connection in time")
            .expect("the connection is still open")
    }

    async fn reply(&mut self) -> Reply {
        match self.next().await {
            Message::Text(text) => serde_json::from_str(text.as_str()).expect("a reply"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    async fn close_code(&mut self) -> u16 {
        match self.next().await {
            Message::Close(Some(frame)) => frame.code,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Waits until `count` publishes wait.
    async fn publishes(&self, count: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while self.publisher.waiting() < count {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the publishes in time");
    }

    /// Whether anything arrives within a short while.
    async fn is_quiet(&mut self) -> bool {
        tokio::time::timeout(Duration::from_millis(50), self.from_server.next())
            .await
            .is_err()
    }
}

fn stored(sequence: u64) -> Result<Stored, PublishError> {
    Ok(Stored {
        sequence,
        duplicate: false,
    })
}

#[tokio::test]
async fn replies_leave_in_frame_order_whatever_order_the_acks_come_in() {
    let mut h = start(|_| {});
    for _ in 0..3 {
        h.send(EVENT);
    }
    h.publishes(3).await;
    // Settle the third, then the first, then the second.
    let (_, third) = h.publisher.take(2);
    third.send(stored(30)).unwrap();
    assert!(h.is_quiet().await, "frame 3 must wait for frames 1 and 2");
    let (_, first) = h.publisher.take(0);
    first.send(stored(10)).unwrap();
    assert_eq!(h.reply().await, Reply::stored(1, 1, 10));
    let (_, second) = h.publisher.take(0);
    second.send(stored(20)).unwrap();
    assert_eq!(h.reply().await, Reply::stored(2, 1, 20));
    assert_eq!(h.reply().await, Reply::stored(3, 1, 30));
}

#[tokio::test]
async fn a_session_closed_for_good_has_its_valid_frames_answered_session_closed_unpublished() {
    let config = config(|_| {});
    let publisher = Arc::new(FakePublisher::default());
    let drain = CancellationToken::new();
    let shared = Arc::new(Shared::new(
        &config,
        config.limits.limits(),
        Arc::new(publisher.clone()),
        Authenticator::new(&config.auth),
        drain.clone(),
    ));
    let mut h = start_with(shared, publisher, drain, Grant::UNLIMITED, true);
    h.send(EVENT);
    let reply = h.reply().await;
    assert_eq!(
        reply.error_code(),
        Some(ErrorCode::SessionClosed),
        "{reply:?}"
    );
    // An invalid frame still gets its own error first.
    h.send("not json");
    assert_eq!(h.reply().await.error_code(), Some(ErrorCode::InvalidJson));
    assert_eq!(h.publisher.waiting(), 0, "nothing was published");
}

#[tokio::test]
async fn message_ids_are_the_connections_own_and_count_frames() {
    let h = start(|_| {});
    h.send(EVENT);
    h.send(EVENT);
    h.publishes(2).await;
    let (first, _a) = h.publisher.take(0);
    let (second, _b) = h.publisher.take(0);
    let (id, number) = first.message_id.split_once(':').unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(number, "1");
    assert_eq!(second.message_id, format!("{id}:2"));
    assert_eq!(first.request_id, "request-1");
    assert!(!first.message_id.contains("request-1"));
}

#[tokio::test]
async fn nothing_is_read_while_a_session_end_frame_waits_and_its_ack_closes() {
    let mut h = start(|_| {});
    h.send(END);
    h.send(EVENT);
    h.publishes(1).await;
    assert!(h.is_quiet().await);
    assert_eq!(
        h.publisher.waiting(),
        1,
        "the frame after SESSION_END was read"
    );
    let (_, end) = h.publisher.take(0);
    end.send(stored(1)).unwrap();
    assert_eq!(h.reply().await, Reply::stored(1, 1, 1));
    assert_eq!(h.close_code().await, close_code::NORMAL);
    assert_eq!(h.publisher.waiting(), 0);
}

#[tokio::test]
async fn a_refused_session_end_frame_resumes_reading() {
    let mut h = start(|_| {});
    h.send(END);
    h.send(EVENT);
    h.publishes(1).await;
    let (_, end) = h.publisher.take(0);
    end.send(Err(PublishError::Disconnected)).unwrap();
    assert_eq!(h.reply().await.error_code(), Some(ErrorCode::Unavailable));
    h.publishes(1).await;
    let (_, next) = h.publisher.take(0);
    next.send(stored(2)).unwrap();
    assert_eq!(h.reply().await, Reply::stored(2, 1, 2));
}

#[tokio::test]
async fn at_most_the_in_flight_bound_waits_for_acks() {
    let mut h = start(|config| config.connection.max_in_flight_per_connection = 2);
    for _ in 0..5 {
        h.send(EVENT);
    }
    h.publishes(2).await;
    assert!(h.is_quiet().await);
    assert_eq!(
        h.publisher.waiting(),
        2,
        "a third frame was read past the bound"
    );
    let (_, first) = h.publisher.take(0);
    first.send(stored(1)).unwrap();
    assert_eq!(h.reply().await, Reply::stored(1, 1, 1));
    h.publishes(2).await;
    assert_eq!(h.publisher.waiting(), 2);
}

#[tokio::test]
async fn the_total_in_flight_bound_answers_unavailable() {
    let mut h = start(|config| config.connection.max_in_flight_total = 1);
    h.send(EVENT);
    h.send(EVENT);
    h.publishes(1).await;
    let (_, first) = h.publisher.take(0);
    first.send(stored(1)).unwrap();
    assert_eq!(h.reply().await, Reply::stored(1, 1, 1));
    let second = h.reply().await;
    assert_eq!(second.frame(), 2);
    assert_eq!(second.error_code(), Some(ErrorCode::Unavailable));
}

#[tokio::test]
async fn shutdown_answers_every_frame_read_then_closes_with_1001() {
    let mut h = start(|_| {});
    h.send(EVENT);
    h.send(EVENT);
    h.publishes(2).await;
    h.drain.cancel();
    h.send(EVENT);
    assert!(h.is_quiet().await);
    let (_, first) = h.publisher.take(0);
    first.send(stored(1)).unwrap();
    let (_, second) = h.publisher.take(0);
    second.send(stored(2)).unwrap();
    assert_eq!(h.reply().await, Reply::stored(1, 1, 1));
    assert_eq!(h.reply().await, Reply::stored(2, 1, 2));
    assert_eq!(h.close_code().await, close_code::AWAY);
    assert_eq!(
        h.publisher.waiting(),
        0,
        "a frame was read after the shutdown"
    );
}

#[tokio::test]
async fn a_verified_duplicate_is_acknowledged_with_the_original_sequence() {
    let mut h = start(|_| {});
    h.send(EVENT);
    h.publishes(1).await;
    let (_, settle) = h.publisher.take(0);
    settle
        .send(Ok(Stored {
            sequence: 7,
            duplicate: true,
        }))
        .unwrap();
    assert_eq!(h.reply().await, Reply::stored(1, 1, 7));
}

#[tokio::test]
async fn an_unverified_duplicate_is_never_acknowledged() {
    let mut h = start(|_| {});
    h.send(EVENT);
    h.publishes(1).await;
    let (_, settle) = h.publisher.take(0);
    settle
        .send(Err(PublishError::UnverifiedDuplicate {
            sequence: 7,
            reason: "its payload differs".into(),
        }))
        .unwrap();
    let reply = h.reply().await;
    assert!(!reply.is_ok());
    assert_eq!(reply.error_code(), Some(ErrorCode::Unavailable));
}

#[tokio::test]
async fn a_frame_too_large_for_the_broker_is_a_permanent_refusal() {
    let mut h = start(|_| {});
    h.send(EVENT);
    h.send(EVENT);
    h.publishes(2).await;
    let (_, first) = h.publisher.take(0);
    first
        .send(Err(PublishError::TooLarge("max payload".into())))
        .unwrap();
    let (_, second) = h.publisher.take(0);
    second
        .send(Err(PublishError::Timeout(Duration::from_secs(5))))
        .unwrap();
    let permanent = h.reply().await;
    assert_eq!(permanent.error_code(), Some(ErrorCode::FrameTooLarge));
    assert!(!ErrorCode::FrameTooLarge.is_transient());
    let transient = h.reply().await;
    assert_eq!(transient.error_code(), Some(ErrorCode::Unavailable));
}

#[tokio::test]
async fn empty_and_invalid_frames_publish_nothing() {
    let mut h = start(|_| {});
    h.send("[]");
    h.send("{nope");
    assert_eq!(h.reply().await, Reply::accepted(1, 0));
    assert_eq!(h.reply().await.error_code(), Some(ErrorCode::InvalidJson));
    assert_eq!(h.publisher.waiting(), 0);
}

#[tokio::test]
async fn a_client_that_leaves_gets_its_publishes_finished_and_nothing_sent() {
    let mut h = start(|_| {});
    h.send(EVENT);
    h.publishes(1).await;
    h.to_server.close_channel();
    // The connection sees the client leave, but still waits for the publish.
    assert!(h.is_quiet().await);
    assert!(!h.task.is_finished(), "the publish under way was abandoned");
    let (_, settle) = h.publisher.take(0);
    settle.send(stored(1)).unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut h.task)
        .await
        .expect("the connection ends")
        .unwrap();
    assert_eq!(h.from_server.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn an_expiring_token_closes_the_connection_with_1008() {
    let config = config(|_| {});
    let publisher = Arc::new(FakePublisher::default());
    let drain = CancellationToken::new();
    let shared = Arc::new(Shared::new(
        &config,
        config.limits.limits(),
        Arc::new(publisher.clone()),
        Authenticator::new(&config.auth),
        drain.clone(),
    ));
    let grant = Grant {
        expires_at: Some(sessionfold_common::auth::now() + 30),
        prefix: None,
    };
    let mut h = start_with(shared, publisher, drain, grant, false);
    h.send("[]");
    assert_eq!(h.reply().await, Reply::accepted(1, 0));
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(h.close_code().await, TOKEN_EXPIRED_CLOSE_CODE);
}

#[tokio::test]
async fn a_ping_flood_closes_the_connection() {
    let mut h = start(|config| config.guard.max_pings_per_sec = 3);
    for _ in 0..10 {
        h.to_server
            .unbounded_send(Ok(Message::Ping(Bytes::from_static(b"x"))))
            .unwrap();
    }
    assert_eq!(h.close_code().await, TOO_MANY_PINGS_CLOSE_CODE);
}

#[test]
fn state_transitions_follow_the_rules() {
    let close = || close_frame(close_code::AWAY, "x");
    assert_eq!(
        State::Reading.frame_read(true, true),
        State::AwaitingSessionEnd
    );
    assert_eq!(State::Reading.frame_read(true, false), State::Reading);
    assert!(!State::AwaitingSessionEnd.may_read());
    assert_eq!(
        State::AwaitingSessionEnd.replied(false, true, true),
        State::Reading
    );
    assert!(matches!(
        State::AwaitingSessionEnd.replied(true, true, true),
        State::Closed { close: Some(_) }
    ));
    assert_eq!(
        State::Reading.stop(close()),
        State::Draining { close: close() }
    );
    assert_eq!(
        State::Draining { close: close() }.settle(false),
        State::Draining { close: close() }
    );
    assert_eq!(
        State::Draining { close: close() }.settle(true),
        State::Closed {
            close: Some(close())
        }
    );
    assert_eq!(State::ClientGone.stop(close()), State::ClientGone);
    assert_eq!(
        State::ClientGone.settle(true),
        State::Closed { close: None }
    );
}

#[test]
fn capacity_errors_are_recognised_by_type() {
    use tungstenite::error::{CapacityError, Error as WsError};
    let too_big = axum::Error::new(WsError::Capacity(CapacityError::MessageTooLong {
        size: 10,
        max_size: 5,
    }));
    assert!(is_message_too_big(&too_big));
    let other = axum::Error::new(WsError::ConnectionClosed);
    assert!(!is_message_too_big(&other));
    let text_alike = axum::Error::new(std::io::Error::other("Space limit exceeded: too long"));
    assert!(!is_message_too_big(&text_alike));
}
