//! Misbehaving producers over raw WebSockets (tokio-tungstenite), written
//! for this test and sharing nothing with `sessionfold-client`: each one
//! follows its own seeded random course through its events and keeps a
//! ledger of every frame it sent and the reply it got.
//!
//! What a producer does, at random:
//! - batches its events into frames of 1 to 20 events, `[]`, single-object
//!   frames, frames padded with white space to exactly the frame limit or
//!   one byte over it, frames of exactly the event-count limit or one over;
//! - keeps up to 8 frames in flight on a connection, sends past a
//!   `SESSION_END` frame (which the server answers, then closes on);
//! - drops the connection with frames in flight and replies unread, closes
//!   it politely, or is dropped by the server; reconnects and sends what was
//!   not acknowledged again, the same bytes or re-batched, written with
//!   other key order, white space or escapes;
//! - connects with a shared `X-Request-Id` (the same one other sessions
//!   use), the one of its last connection, an odd one, or none;
//! - mixes in frames that can never be stored: bad JSON, binary frames,
//!   frames that are not arrays of events, invalid events, another
//!   session's `session_id`, events over the event limit, a message over 4×
//!   the frame limit (the server closes with 1009).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use sessionfold_core::SeededRng;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::plan::{ProducerPlan, Style};

/// The limits ingest runs with in this test.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    pub frame_bytes: usize,
    pub events_per_frame: usize,
    pub event_bytes: usize,
}

/// What the server must do with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Valid events within the limits: stored and answered `ok` with
    /// `accepted` = `events`, or refused with a transient code.
    Store { events: usize },
    /// Refused with `code` (permanent), naming the event `index` where
    /// there is one; never stored.
    Refuse {
        code: &'static str,
        index: Option<usize>,
    },
    /// A message over 4× the frame limit: the server closes with 1009.
    Close1009,
}

/// The reply a frame got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// None came: the connection ended first (or the frame was never read).
    None,
    Ok {
        seq: Option<u64>,
        accepted: u64,
    },
    Refused {
        code: String,
        index: Option<u64>,
    },
}

/// A frame's bytes as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Text(String),
    Binary(Vec<u8>),
}

impl Payload {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Text(text) => text.as_bytes(),
            Self::Binary(bytes) => bytes,
        }
    }
}

/// One frame in a producer's ledger.
#[derive(Debug, Clone)]
pub struct SentFrame {
    pub session: usize,
    pub producer: usize,
    /// The producer's connection it went on (1, 2, …).
    pub connection: u64,
    /// Its number on that connection, as the server counts (1, 2, …).
    pub number: u64,
    pub request_id: Option<String>,
    pub payload: Payload,
    pub expect: Expect,
    pub reply: Reply,
}

/// What one producer did.
#[derive(Debug, Clone, Default)]
pub struct ProducerReport {
    pub ledger: Vec<SentFrame>,
    pub connections: u64,
    pub connect_failures: u64,
    /// Connections this producer dropped with frames in flight.
    pub dropped_in_flight: u64,
    pub polite_closes: u64,
    /// Connections the server closed, by close code (`None`: no close frame).
    pub server_closes: Vec<Option<u16>>,
    pub reply_timeouts: u64,
    /// Events still not acknowledged when the producer gave up.
    pub unfinished: usize,
    /// Replies that break the protocol (wrong frame number, unreadable).
    pub protocol_errors: Vec<String>,
}

/// How the producers run.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// `ws://host:port/websocket`
    pub endpoint: String,
    pub limits: FrameLimits,
    /// The mean pause between two actions of a producer.
    pub pace: Duration,
    /// When a producer gives up on events not yet acknowledged.
    pub deadline: Instant,
    /// How long a producer waits for a reply before it drops the connection.
    pub reply_timeout: Duration,
    /// Every session id of the run (for `session_mismatch` frames).
    pub session_ids: Vec<String>,
}

/// Request ids that several sessions and connections send.
const SHARED_REQUEST_IDS: [&str; 3] = ["adv-shared", "adv-shared-2", "x:1"];

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum Incoming {
    Text(String),
    Close(Option<u16>),
    Gone,
    Other,
}

/// A part of what is still to be stored: events (indices into the plan),
/// and the exact text they were last sent as, to send it again as it was.
struct Unit {
    events: Vec<usize>,
    verbatim: Option<String>,
}

struct InFlight {
    ledger: usize,
    events: Vec<usize>,
    text: Option<String>,
}

struct Connection {
    sink: SplitSink<Socket, Message>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    reader: JoinHandle<()>,
    number: u64,
    in_flight: VecDeque<InFlight>,
    max_in_flight: usize,
    request_id: Option<String>,
    /// A frame holding `SESSION_END` was acknowledged: the server must
    /// answer nothing more and close with 1000.
    session_ended: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// How a connection ended.
enum End {
    /// Everything was acknowledged.
    Done,
    /// Go on with a new connection.
    Reconnect,
}

struct Producer<'a> {
    index: usize,
    plan: &'a ProducerPlan,
    behaviour: &'a Behaviour,
    rng: SeededRng,
    pending: VecDeque<Unit>,
    acked: Vec<bool>,
    sent_before: Vec<bool>,
    report: ProducerReport,
    last_request_id: Option<String>,
    throwaway: u64,
}

/// Runs producer `index` of the run until all its events are acknowledged
/// or the deadline passes.
pub async fn run(index: usize, plan: &ProducerPlan, behaviour: &Behaviour) -> ProducerReport {
    let mut producer = Producer {
        index,
        plan,
        behaviour,
        rng: SeededRng::new(plan.seed),
        pending: VecDeque::from([Unit {
            events: (0..plan.events.len()).collect(),
            verbatim: None,
        }]),
        acked: vec![false; plan.events.len()],
        sent_before: vec![false; plan.events.len()],
        report: ProducerReport::default(),
        last_request_id: None,
        throwaway: 0,
    };
    // Producers do not all start at once.
    tokio::time::sleep(producer.pause()).await;
    loop {
        if producer.all_acked() {
            break;
        }
        if Instant::now() >= behaviour.deadline {
            break;
        }
        match producer.connect().await {
            Some(connection) => {
                if let End::Done = producer.drive(connection).await {
                    break;
                }
            }
            None => tokio::time::sleep(producer.rng.millis(50, 400)).await,
        }
    }
    producer.report.unfinished = producer.acked.iter().filter(|a| !**a).count();
    producer.report
}

/// `s` percent-encoded: every byte but `A-Z a-z 0-9 - . _ ~`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

impl Producer<'_> {
    fn all_acked(&self) -> bool {
        self.acked.iter().all(|a| *a)
    }

    /// The pause before the next action: none at times (frames in a burst,
    /// in flight together), else up to twice the mean.
    fn pause(&mut self) -> Duration {
        if self.rng.chance(40) {
            return Duration::ZERO;
        }
        let mean = self.behaviour.pace.as_millis() as u64;
        self.rng.millis(0, 10 * mean / 3)
    }

    fn choose_request_id(&mut self) -> Option<String> {
        let id = match self.rng.below(100) {
            0..=34 => Some(SHARED_REQUEST_IDS[self.rng.index(SHARED_REQUEST_IDS.len())].to_owned()),
            35..=54 => self.last_request_id.clone(),
            55..=59 => Some("r".repeat(100)),
            60..=64 => Some(format!("{}:{}", self.plan.session_id.len(), self.index)),
            _ => None,
        };
        if id.is_some() {
            self.last_request_id.clone_from(&id);
        }
        id
    }

    async fn connect(&mut self) -> Option<Connection> {
        let url = format!(
            "{}?session_id={}",
            self.behaviour.endpoint,
            percent_encode(&self.plan.session_id)
        );
        let request_id = self.choose_request_id();
        let mut request = url.into_client_request().ok()?;
        if let Some(id) = &request_id
            && let Ok(value) = HeaderValue::from_str(id)
        {
            request.headers_mut().insert("x-request-id", value);
        }
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(request),
        )
        .await;
        let Ok(Ok((socket, _))) = connected else {
            self.report.connect_failures += 1;
            return None;
        };
        self.report.connections += 1;
        let (sink, mut stream) = socket.split();
        let (tx, incoming) = mpsc::unbounded_channel();
        let mut reader_rng = SeededRng::new(self.rng.next_u64());
        let reader = tokio::spawn(async move {
            loop {
                // Now and then a slow reader.
                if reader_rng.chance(5) {
                    tokio::time::sleep(reader_rng.millis(0, 300)).await;
                }
                let message = match stream.next().await {
                    Some(Ok(Message::Text(text))) => Incoming::Text(text.as_str().to_owned()),
                    Some(Ok(Message::Close(frame))) => {
                        Incoming::Close(frame.map(|f| u16::from(f.code)))
                    }
                    Some(Ok(_)) => Incoming::Other,
                    Some(Err(_)) | None => Incoming::Gone,
                };
                let last = matches!(message, Incoming::Close(_) | Incoming::Gone);
                if tx.send(message).is_err() || last {
                    return;
                }
            }
        });
        let max_in_flight = 1 + self.rng.index(8);
        Some(Connection {
            sink,
            incoming,
            reader,
            number: 0,
            in_flight: VecDeque::new(),
            max_in_flight,
            request_id,
            session_ended: false,
        })
    }

    /// Sends and receives on `connection` until it ends.
    async fn drive(&mut self, mut connection: Connection) -> End {
        loop {
            // What has arrived meanwhile.
            loop {
                match connection.incoming.try_recv() {
                    Ok(message) => {
                        if let Some(end) = self.receive(&mut connection, message) {
                            return end;
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        return self.lost(&mut connection, None);
                    }
                }
            }
            if self.all_acked() && connection.in_flight.is_empty() {
                let _ = connection.sink.send(Message::Close(None)).await;
                self.report.polite_closes += 1;
                return End::Done;
            }
            if Instant::now() >= self.behaviour.deadline {
                return self.drop_connection(&mut connection);
            }
            let must_wait =
                connection.in_flight.len() >= connection.max_in_flight || self.pending.is_empty();
            if must_wait {
                if let Some(end) = self.await_reply(&mut connection).await {
                    return end;
                }
                continue;
            }
            let roll = self.rng.below(100);
            let sent = match roll {
                0..=3 if !connection.in_flight.is_empty() => {
                    return self.drop_connection(&mut connection);
                }
                // A frame, and the connection dropped at once: the frame in
                // flight, its reply never read.
                0..=3 => {
                    if !self.send_batch(&mut connection).await {
                        return self.lost(&mut connection, None);
                    }
                    return self.drop_connection(&mut connection);
                }
                4..=5 => return self.close_politely(&mut connection).await,
                6..=15 => self.send_refusable(&mut connection).await,
                16..=18 => {
                    let text = ["[]", "[ ]", " [\n] "][self.rng.index(3)].to_owned();
                    self.send(
                        &mut connection,
                        Payload::Text(text),
                        Expect::Store { events: 0 },
                        Vec::new(),
                    )
                    .await
                }
                19..=23 => self.send_at_the_limits(&mut connection).await,
                24 => self.send_oversized(&mut connection).await,
                _ => self.send_batch(&mut connection).await,
            };
            if !sent {
                return self.lost(&mut connection, None);
            }
            let pause = self.pause();
            tokio::time::sleep(pause).await;
        }
    }

    /// Waits for the next message; drops the connection when none comes
    /// within the reply timeout.
    async fn await_reply(&mut self, connection: &mut Connection) -> Option<End> {
        match tokio::time::timeout(self.behaviour.reply_timeout, connection.incoming.recv()).await {
            Ok(Some(message)) => self.receive(connection, message),
            Ok(None) => Some(self.lost(connection, None)),
            Err(_) => {
                self.report.reply_timeouts += 1;
                Some(self.drop_connection(connection))
            }
        }
    }

    fn receive(&mut self, connection: &mut Connection, message: Incoming) -> Option<End> {
        match message {
            Incoming::Text(text) => {
                self.reply(connection, &text);
                None
            }
            Incoming::Close(code) => Some(self.lost(connection, code)),
            Incoming::Gone => Some(self.lost(connection, None)),
            Incoming::Other => None,
        }
    }

    fn reply(&mut self, connection: &mut Connection, text: &str) {
        let Some(front) = connection.in_flight.pop_front() else {
            self.report
                .protocol_errors
                .push(format!("a reply with no frame in flight: {text}"));
            return;
        };
        if connection.session_ended {
            self.report.protocol_errors.push(format!(
                "a reply after an acknowledged SESSION_END frame: {text}"
            ));
        }
        let entry = &mut self.report.ledger[front.ledger];
        let parsed: Result<Value, _> = serde_json::from_str(text);
        let Ok(value) = parsed else {
            self.report
                .protocol_errors
                .push(format!("an unreadable reply: {text}"));
            self.requeue(front);
            return;
        };
        if value["frame"].as_u64() != Some(entry.number) {
            self.report.protocol_errors.push(format!(
                "a reply for frame {} came when frame {} was the oldest in flight: {text}",
                value["frame"], entry.number
            ));
        }
        if value["ok"] == Value::Bool(true) {
            entry.reply = Reply::Ok {
                seq: value["seq"].as_u64(),
                accepted: value["accepted"].as_u64().unwrap_or(u64::MAX),
            };
            for event in front.events {
                self.acked[event] = true;
                connection.session_ended |= self.plan.events[event].ends_session;
            }
        } else {
            let code = value["error"]["code"].as_str().unwrap_or("").to_owned();
            let transient = matches!(code.as_str(), "unavailable" | "rate_limited");
            entry.reply = Reply::Refused {
                code,
                index: value["error"]["index"].as_u64(),
            };
            let mut front = front;
            if !transient {
                // Sent again, but never in these bytes.
                front.text = None;
            }
            self.requeue(front);
        }
    }

    /// Events of a frame that was not stored go back to the front of what is
    /// left, to be sent again.
    fn requeue(&mut self, frame: InFlight) {
        if frame.events.is_empty() {
            return;
        }
        self.pending.push_front(Unit {
            events: frame.events,
            verbatim: frame.text,
        });
    }

    /// The connection is over: everything in flight is unanswered and goes
    /// back to be sent again.
    /// The server ended the connection, with a close frame's `code` or
    /// without one.
    fn lost(&mut self, connection: &mut Connection, code: Option<u16>) -> End {
        self.report.server_closes.push(code);
        if connection.session_ended && code.is_some_and(|c| c != 1000) {
            self.report.protocol_errors.push(format!(
                "closed with {code:?} instead of 1000 after an acknowledged SESSION_END frame"
            ));
        }
        let oversized_in_flight = connection
            .in_flight
            .iter()
            .any(|f| self.report.ledger[f.ledger].expect == Expect::Close1009);
        if code == Some(1009) && !oversized_in_flight {
            self.report
                .protocol_errors
                .push("closed with 1009 with no message over the hard cap in flight".to_owned());
        }
        self.abandon(connection);
        End::Reconnect
    }

    fn abandon(&mut self, connection: &mut Connection) {
        while let Some(frame) = connection.in_flight.pop_back() {
            self.requeue(frame);
        }
    }

    fn drop_connection(&mut self, connection: &mut Connection) -> End {
        if !connection.in_flight.is_empty() {
            self.report.dropped_in_flight += 1;
        }
        self.abandon(connection);
        End::Reconnect
    }

    async fn close_politely(&mut self, connection: &mut Connection) -> End {
        while !connection.in_flight.is_empty() {
            if let Some(end) = self.await_reply(connection).await {
                return end;
            }
        }
        let _ = connection.sink.send(Message::Close(None)).await;
        self.report.polite_closes += 1;
        End::Reconnect
    }

    /// Sends one frame and records it; false when the socket is gone.
    async fn send(
        &mut self,
        connection: &mut Connection,
        payload: Payload,
        expect: Expect,
        events: Vec<usize>,
    ) -> bool {
        connection.number += 1;
        // Only a frame that may be stored as it is is sent again as it was.
        let text = match (&payload, &expect) {
            (Payload::Text(text), Expect::Store { .. }) => Some(text.clone()),
            _ => None,
        };
        let message = match &payload {
            Payload::Text(text) => Message::text(text.clone()),
            Payload::Binary(bytes) => Message::binary(bytes.clone()),
        };
        for event in &events {
            self.sent_before[*event] = true;
        }
        self.report.ledger.push(SentFrame {
            session: self.plan.session,
            producer: self.index,
            connection: self.report.connections,
            number: connection.number,
            request_id: connection.request_id.clone(),
            payload,
            expect,
            reply: Reply::None,
        });
        connection.in_flight.push_back(InFlight {
            ledger: self.report.ledger.len() - 1,
            events,
            text,
        });
        connection.sink.send(message).await.is_ok()
    }

    /// How event `event` is written this time: as first planned, or, when
    /// it was sent before, now and then in another style.
    fn event_text(&mut self, event: usize) -> String {
        let planned = &self.plan.events[event];
        if self.sent_before[event] && self.rng.chance(25) {
            let style = Style {
                reversed_keys: self.rng.chance(50),
                spaced: self.rng.chance(50),
                escape_non_ascii: self.rng.chance(50),
            };
            planned.value.render(style)
        } else {
            planned.text()
        }
    }

    /// Up to `count` events from the front of what is left, in order.
    fn take(&mut self, count: usize) -> Vec<usize> {
        let mut taken = Vec::new();
        while taken.len() < count {
            let Some(mut unit) = self.pending.pop_front() else {
                break;
            };
            let want = count - taken.len();
            if unit.events.len() > want {
                let rest = unit.events.split_off(want);
                self.pending.push_front(Unit {
                    events: rest,
                    verbatim: None,
                });
            }
            taken.extend(unit.events);
        }
        taken
    }

    /// Joins event texts into a frame with random white space.
    fn frame_of(&mut self, texts: &[String], single_object: bool) -> String {
        if single_object && texts.len() == 1 {
            return texts[0].clone();
        }
        let separator = [",", ", ", ",\n", " ,\t"][self.rng.index(4)];
        let (open, close) = [("[", "]"), (" [", "] "), ("[\n", "\n]")][self.rng.index(3)];
        format!("{open}{}{close}", texts.join(separator))
    }

    /// Events with their texts, and which of them fit into one frame within
    /// the limits (the rest go back).
    fn batch_texts(&mut self, events: Vec<usize>) -> (Vec<usize>, Vec<String>) {
        let limits = self.behaviour.limits;
        let mut kept = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        let mut bytes = 8;
        let mut back = Vec::new();
        for event in events {
            let text = self.event_text(event);
            if !back.is_empty()
                || texts.len() + 1 >= limits.events_per_frame
                || bytes + text.len() + 4 > limits.frame_bytes
            {
                back.push(event);
                continue;
            }
            bytes += text.len() + 4;
            kept.push(event);
            texts.push(text);
        }
        if !back.is_empty() {
            self.pending.push_front(Unit {
                events: back,
                verbatim: None,
            });
        }
        (kept, texts)
    }

    /// A frame of what is left: sent again exactly as last time, or a new
    /// batch (at times with one event twice).
    async fn send_batch(&mut self, connection: &mut Connection) -> bool {
        if self.pending.front().is_some_and(|u| u.verbatim.is_some()) && self.rng.chance(60) {
            let unit = self.pending.pop_front().expect("a unit at the front");
            let text = unit.verbatim.expect("its text");
            let count = serde_json::from_str::<Value>(&text)
                .map(|v| v.as_array().map_or(1, Vec::len))
                .unwrap_or(0);
            return self
                .send(
                    connection,
                    Payload::Text(text),
                    Expect::Store { events: count },
                    unit.events,
                )
                .await;
        }
        let count = match self.rng.below(10) {
            0..=2 => 1,
            3..=7 => 2 + self.rng.index(4),
            _ => 6 + self.rng.index(15),
        };
        let events = self.take(count);
        let (events, mut texts) = self.batch_texts(events);
        if events.is_empty() {
            return true;
        }
        if self.rng.chance(4) && texts.len() + 2 < self.behaviour.limits.events_per_frame {
            let again = texts[self.rng.index(texts.len())].clone();
            texts.push(again);
        }
        let single = self.rng.chance(40);
        let text = self.frame_of(&texts, single);
        let expect = Expect::Store {
            events: texts.len(),
        };
        self.send(connection, Payload::Text(text), expect, events)
            .await
    }

    /// A frame padded with white space to exactly the frame limit, or one
    /// byte over it; or exactly the event-count limit, or one over.
    async fn send_at_the_limits(&mut self, connection: &mut Connection) -> bool {
        let limits = self.behaviour.limits;
        match self.rng.below(4) {
            over @ (0 | 1) => {
                let count = 1 + self.rng.index(10);
                let events = self.take(count);
                let (events, texts) = self.batch_texts(events);
                if events.is_empty() {
                    return true;
                }
                let inner = texts.join(",");
                let target = limits.frame_bytes + over as usize;
                let pad = target.saturating_sub(inner.len() + 2);
                let text = format!("[{}{inner}]", " ".repeat(pad));
                let expect = if over == 1 {
                    Expect::Refuse {
                        code: "frame_too_large",
                        index: None,
                    }
                } else {
                    Expect::Store {
                        events: texts.len(),
                    }
                };
                self.send(connection, Payload::Text(text), expect, events)
                    .await
            }
            2 => {
                // Exactly the event-count limit, filled with repeats of its
                // own events (de-duplicated) when fewer are left.
                let events = self.take(limits.events_per_frame);
                let (events, mut texts) = self.batch_texts(events);
                if texts.is_empty() {
                    return true;
                }
                let mut bytes: usize = texts.iter().map(|t| t.len() + 1).sum();
                let mut k = 0;
                while texts.len() < limits.events_per_frame {
                    let again = texts[k % events.len()].clone();
                    bytes += again.len() + 1;
                    if bytes + 2 > limits.frame_bytes {
                        break;
                    }
                    texts.push(again);
                    k += 1;
                }
                let text = format!("[{}]", texts.join(","));
                let expect = Expect::Store {
                    events: texts.len(),
                };
                self.send(connection, Payload::Text(text), expect, events)
                    .await
            }
            _ => {
                let texts: Vec<String> = (0..=limits.events_per_frame)
                    .map(|_| self.throwaway_event())
                    .collect();
                let text = format!("[{}]", texts.join(","));
                let expect = Expect::Refuse {
                    code: "too_many_events",
                    index: None,
                };
                self.send(connection, Payload::Text(text), expect, Vec::new())
                    .await
            }
        }
    }

    /// A valid event that is sent only in a frame that must be refused, so
    /// it must never be stored.
    fn throwaway_event(&mut self) -> String {
        self.throwaway += 1;
        format!(
            r#"{{"type":"EVENT","timestamp":{},"name":"never-{}-{}"}}"#,
            1 + self.rng.below(1000),
            self.index,
            self.throwaway
        )
    }

    /// A frame that can never be stored, with the code it must get.
    async fn send_refusable(&mut self, connection: &mut Connection) -> bool {
        let limits = self.behaviour.limits;
        let (payload, code, index) = match self.rng.below(13) {
            0 => (
                Payload::Text(r#"[{"type":"EVENT","timestamp":1"#.to_owned()),
                "invalid_json",
                None,
            ),
            1 => (
                Payload::Text(r#"[{"type":"EVENT","timestamp":1,}]"#.to_owned()),
                "invalid_json",
                None,
            ),
            2 => {
                let text = self.throwaway_event();
                (
                    Payload::Binary(format!("[{text}]").into_bytes()),
                    "invalid_json",
                    None,
                )
            }
            3 => (
                Payload::Text(["42", "\"events\"", "null", "true"][self.rng.index(4)].to_owned()),
                "invalid_frame",
                None,
            ),
            4 => {
                let other =
                    &self.behaviour.session_ids[self.rng.index(self.behaviour.session_ids.len())];
                let other = if *other == self.plan.session_id {
                    format!("{other}-not")
                } else {
                    other.clone()
                };
                let bad = format!(
                    r#"{{"type":"EVENT","timestamp":3,"session_id":{}}}"#,
                    Value::String(other)
                );
                let (text, index) = self.with_bad_event(bad);
                (Payload::Text(text), "session_mismatch", Some(index))
            }
            5 => {
                let bad = format!(
                    r#"{{"type":"EVENT","timestamp":4,"pad":"{}"}}"#,
                    "x".repeat(2 * limits.event_bytes)
                );
                let (text, index) = self.with_bad_event(bad);
                (Payload::Text(text), "event_too_large", Some(index))
            }
            6 => {
                let depth = 80;
                let bad = format!(
                    r#"{{"type":"EVENT","timestamp":5,"deep":{}{}}}"#,
                    "[".repeat(depth),
                    "]".repeat(depth)
                );
                let (text, index) = self.with_bad_event(bad);
                (Payload::Text(text), "invalid_event", Some(index))
            }
            kind => {
                let bad = match kind {
                    7 => r#"{"type":"BOGUS","timestamp":1}"#,
                    8 => r#"{"type":"EVENT","timestamp":"5"}"#,
                    9 => r#"{"type":"EVENT","timestamp":-1}"#,
                    10 => r#"{"type":"EVENT","name":"no timestamp"}"#,
                    11 => r#"{"type":"EVENT","timestamp":1,"name":5}"#,
                    _ => r#"{"type":"EVENT","timestamp":1,"id":7}"#,
                };
                let (text, index) = self.with_bad_event(bad.to_owned());
                (Payload::Text(text), "invalid_event", Some(index))
            }
        };
        let expect = Expect::Refuse { code, index };
        self.send(connection, payload, expect, Vec::new()).await
    }

    /// `bad` among valid throwaway events (or alone, as a single-object
    /// frame); returns the frame and `bad`'s index.
    fn with_bad_event(&mut self, bad: String) -> (String, usize) {
        if self.rng.chance(20) {
            return (bad, 0);
        }
        let mut texts: Vec<String> = (0..self.rng.index(4))
            .map(|_| self.throwaway_event())
            .collect();
        let index = self.rng.index(texts.len() + 1);
        texts.insert(index, bad);
        (format!("[{}]", texts.join(",")), index)
    }

    /// A message over 4× the frame limit: the server must close with 1009.
    async fn send_oversized(&mut self, connection: &mut Connection) -> bool {
        if !self.rng.chance(25) {
            return true;
        }
        let pad = "y".repeat(4 * self.behaviour.limits.frame_bytes + 64);
        let text = format!(r#"[{{"type":"EVENT","timestamp":6,"pad":"{pad}"}}]"#);
        self.send(
            connection,
            Payload::Text(text),
            Expect::Close1009,
            Vec::new(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_leaves_only_unreserved_bytes() {
        assert_eq!(percent_encode("a b+c/é\"%"), "a%20b%2Bc%2F%C3%A9%22%25");
        assert_eq!(percent_encode("A-z.0_~"), "A-z.0_~");
    }
}
