//! About 10 000 random and malformed frames against a live ingest, over
//! several connections at once, with valid sessions sent alongside: every
//! frame gets the reply core's own validation gives it, the server keeps
//! answering, and the valid sessions come out exact.
//!
//! The frames come from a seeded generator; set `HOSTILE_SEED` to replay a
//! run (the seed is in every failure message).

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessionfold_core::{ErrorCode, Frame, Limits, Reply, SeededRng, SessionId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::helpers::{DEADLINE, Producer, TestApp, expected_document, spawn_app};

const HOSTILE_CONNECTIONS: usize = 6;
const FRAMES_PER_HOSTILE_CONNECTION: usize = 1650;
const VALID_SESSIONS: usize = 3;
const FRAMES_PER_VALID_SESSION: usize = 40;
const DEFAULT_SEED: u64 = 0x5e55_10f0_1d00_0001;

/// Test input from the workspace's seeded generator.
struct Rng(SeededRng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.index(n)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize, alphabet: Option<&[u8]>) -> Vec<u8> {
        (0..len)
            .map(|_| match alphabet {
                Some(alphabet) => *self.pick(alphabet),
                None => self.next() as u8,
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
}

/// The reply a frame must get, as core's validation decides it.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Accepted(usize),
    Rejected(ErrorCode, Option<usize>),
}

fn expected_reply(frame: &Outgoing, session: &SessionId) -> Expected {
    match frame {
        Outgoing::Binary(_) => Expected::Rejected(ErrorCode::InvalidJson, None),
        Outgoing::Text(text) => match Frame::parse(text, session, &Limits::default()) {
            Ok(frame) => Expected::Accepted(frame.events.len()),
            Err(err) => Expected::Rejected(err.code, err.index),
        },
    }
}

fn observed(reply: &Reply) -> Expected {
    match reply {
        Reply::Accepted { accepted, .. } => Expected::Accepted(*accepted),
        Reply::Rejected { error, .. } => Expected::Rejected(error.code, error.index),
    }
}

/// A valid frame of `session` without SESSION_END: 1–4 events with
/// timestamps of their own (`base`…), unicode and nested fields, sometimes
/// an `id` that repeats across frames.
fn valid_frame(rng: &mut Rng, session: &str, base: u64, with_session_id: bool) -> String {
    let count = 1 + rng.below(4);
    let events: Vec<Value> = (0..count)
        .map(|i| {
            let timestamp = base * 10 + i as u64;
            let mut event = match rng.below(6) {
                0 => json!({"type": "SESSION_START", "timestamp": timestamp}),
                1 => json!({"type": "EVENT", "timestamp": timestamp as f64 + 0.25,
                            "name": "ü☃🦀", "extra": {"nested": [1, {"deep": [null, true]}]}}),
                2 => json!({"type": "EVENT", "timestamp": timestamp,
                            "name": "dup", "id": format!("dup-{}", rng.below(3))}),
                _ => json!({"type": "EVENT", "timestamp": timestamp,
                            "name": format!("e{base}-{i}")}),
            };
            if with_session_id {
                event["session_id"] = json!(session);
            }
            event
        })
        .collect();
    if count == 1 && rng.below(2) == 0 {
        events[0].to_string()
    } else {
        Value::Array(events).to_string()
    }
}

fn nested(depth: usize, open: &str, inner: &str, close: &str) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

const JSONISH: &[u8] = b"[]{}\",:0123456789.-+eE truefalsn\\/u\t\r\n";

const WRONG_TYPES: &[&str] = &[
    "null",
    "true",
    "0",
    "-1",
    "\"frame\"",
    "[null]",
    "[1,2,3]",
    "[[]]",
    "[\"EVENT\"]",
    "{}",
    "[{}]",
    "[]",
    " \n [ ] \t",
    "\u{feff}[]",
    "[,]",
    "[1,]",
    "Infinity",
    r#"{"type":null,"timestamp":1}"#,
    r#"{"type":["EVENT"],"timestamp":1}"#,
    r#"{"type":"event","timestamp":1}"#,
    r#"{"type":"EVENT ","timestamp":1}"#,
    r#"{"type":"EVENT","timestamp":true}"#,
    r#"{"type":"EVENT","timestamp":null}"#,
    r#"{"type":"EVENT","timestamp":[1]}"#,
    r#"{"type":"EVENT","timestamp":{"$gt":0}}"#,
    r#"{"type":"EVENT","timestamp":-0.5}"#,
    r#"{"type":"EVENT","timestamp":NaN}"#,
    r#"{"type":"EVENT","timestamp":1,}"#,
    r#"{"type":"EVENT","timestamp":1,"name":1}"#,
    r#"{"type":"EVENT","timestamp":1,"name":null}"#,
    r#"{"type":"EVENT","timestamp":1,"id":7}"#,
    r#"{"type":"EVENT","timestamp":1,"session_id":null}"#,
    r#"{"type":"EVENT","timestamp":1,"session_id":["x"]}"#,
    r#"[{"type":"EVENT","timestamp":1},{"type":"SESSION_END","timestamp":"2"}]"#,
    r#"[{"type":"SESSION_END","timestamp":2},{"type":"EVENT"}]"#,
    r#"[{"type":"EVENT","timestamp":1,"name":"\ud800"}]"#,
    r#"[{"type":"EVENT","timestamp":1,"name":"\x41"}]"#,
    "[{\"type\":\"EVENT\",\"timestamp\":1,\"name\":\"raw\u{1}control\"}]",
    r#"[{"type":"EVENT","timestamp":1}]]"#,
    r#"[{"type":"EVENT","timestamp":1}] trailing"#,
];

const HUGE_NUMBERS: &[&str] = &[
    "1e400",
    "-1e400",
    "1e-400",
    "1.7976931348623157e308",
    "123456789012345678901234567890",
    "18446744073709551616",
    "-9223372036854775809",
    "0.000000000000000000000000000000000000000001",
    "-0.0",
    "-1",
];

/// One malformed (or now and then valid) frame for a connection of `own`;
/// `other` is another connection's session.
fn hostile_frame(rng: &mut Rng, own: &str, other: &str, next_base: &mut u64) -> Outgoing {
    let text = match rng.below(100) {
        0..=20 => {
            let len = rng.below(200);
            let alphabet = if rng.below(2) == 0 {
                Some(JSONISH)
            } else {
                None
            };
            String::from_utf8_lossy(&rng.bytes(len, alphabet)).into_owned()
        }
        21..=27 => (0..rng.below(60))
            .filter_map(|_| char::from_u32(rng.next() as u32 % 0x11_0000))
            .collect(),
        28..=36 => {
            let valid = valid_frame(rng, own, 1_000_000, false);
            let cut = rng.below(valid.len());
            let cut = (0..=cut)
                .rev()
                .find(|&i| valid.is_char_boundary(i))
                .unwrap();
            valid[..cut].to_owned()
        }
        37..=44 => {
            let number = if rng.below(4) == 0 {
                // Past f64's range. (Shorter long numbers are accepted, and
                // RedisJSON may store them 1 ulp off: see the report.)
                let digits = 310 + rng.below(20_000);
                format!(
                    "9{}",
                    String::from_utf8(rng.bytes(digits, Some(b"0123456789"))).unwrap()
                )
            } else {
                (*rng.pick(HUGE_NUMBERS)).to_owned()
            };
            match rng.below(3) {
                0 => format!(r#"[{{"type":"EVENT","timestamp":{number}}}]"#),
                1 => format!(r#"{{"type":"EVENT","timestamp":1,"n":{number}}}"#),
                _ => format!("[{number}]"),
            }
        }
        45..=50 => {
            let depth = *rng.pick(&[10_000, 2_000, 200, 130, 129, 128, 127, 126]);
            match rng.below(5) {
                0 => nested(depth, "[", "", "]"),
                1 => nested(depth, r#"{"a":"#, "1", "}"),
                2 => "[".repeat(depth),
                3 => format!("{}{}", "{\"a\":".repeat(depth), "["),
                // An event nesting past serde_json's recursion limit (128).
                _ => format!(
                    r#"[{{"type":"EVENT","timestamp":1,"x":{}}}]"#,
                    nested(depth.max(127), "[", "", "]")
                ),
            }
        }
        51..=65 => (*rng.pick(WRONG_TYPES)).to_owned(),
        66..=75 => {
            // A frame that is valid for the other session.
            let base = 2_000_000 + rng.below(1000) as u64;
            valid_frame(rng, other, base, true)
        }
        76..=83 => {
            let bytes = if rng.below(2) == 0 {
                let len = rng.below(300);
                rng.bytes(len, None)
            } else {
                valid_frame(rng, own, 3_000_000, false).into_bytes()
            };
            return Outgoing::Binary(bytes);
        }
        84..=95 => match rng.below(100) {
            0 => format!(r#"["{}"]"#, "x".repeat(Limits::default().max_frame_bytes)),
            1..=10 => format!("[{}]", ["{}"; 10_001].join(",")),
            11..=30 => format!(
                r#"[{{"type":"EVENT","timestamp":1,"name":"{}"}}]"#,
                "x".repeat(Limits::default().max_event_bytes)
            ),
            _ => format!("[{}]", ["\"x\""; 40].join(&" ".repeat(rng.below(4000)))),
        },
        _ => {
            *next_base += 1;
            let with_session_id = rng.below(2) == 0;
            valid_frame(rng, own, *next_base, with_session_id)
        }
    };
    Outgoing::Text(text)
}

/// Sends every frame on one connection while reading the replies, and checks
/// each reply against `expected` in order.
async fn pipeline(
    app: &TestApp,
    session: &str,
    frames: Vec<Outgoing>,
    expected: Vec<Expected>,
    seed: u64,
) {
    let Producer { socket } = app.connect(session).await;
    let (mut sink, mut source) = socket.split();
    let total = frames.len();
    let send = async move {
        for frame in frames {
            let message = match frame {
                Outgoing::Text(text) => Message::text(text),
                Outgoing::Binary(bytes) => Message::binary(bytes),
            };
            sink.feed(message).await.expect("sending a frame");
        }
        sink.flush().await.expect("flushing frames");
        sink
    };
    let receive = async {
        for (i, want) in expected.iter().enumerate() {
            let frame = i + 1;
            let text = match tokio::time::timeout(DEADLINE, source.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(other) => panic!("{session}: frame {frame} got {other:?} (seed {seed:#x})"),
                Err(_) => panic!("{session}: no reply to frame {frame} (seed {seed:#x})"),
            };
            let reply: Reply = serde_json::from_str(text.as_str())
                .unwrap_or_else(|err| panic!("reply {text} does not parse: {err}"));
            assert_eq!(reply.frame(), frame as u64, "{session} (seed {seed:#x})");
            assert_eq!(
                &observed(&reply),
                want,
                "{session}: frame {frame} got {text} (seed {seed:#x})"
            );
        }
    };
    let (mut sink, ()) = tokio::join!(send, receive);
    let _ = sink.close().await;
    tracing::info!(session, frames = total, "every frame answered");
}

/// The frames of a connection and the session's expected document.
struct Plan {
    session: String,
    frames: Vec<Outgoing>,
    expected: Vec<Expected>,
    /// Frames that are stored (accepted with at least one event), in order.
    stored: Vec<String>,
    /// Whether an accepted SESSION_END may end the connection (last frame).
    may_end: bool,
}

impl Plan {
    fn new(session: String, may_end: bool) -> Self {
        Self {
            session,
            frames: Vec::new(),
            expected: Vec::new(),
            stored: Vec::new(),
            may_end,
        }
    }

    fn push(&mut self, frame: Outgoing) {
        let session = SessionId::parse(&self.session).unwrap();
        let expected = expected_reply(&frame, &session);
        if let (Expected::Accepted(events), Outgoing::Text(text)) = (&expected, &frame) {
            let parsed = Frame::parse(text, &session, &Limits::default()).unwrap();
            assert!(
                !parsed.has_session_end() || self.may_end,
                "hostile connections must stay open: {text:.80}"
            );
            if *events > 0 {
                self.stored.push(text.clone());
            }
        }
        self.frames.push(frame);
        self.expected.push(expected);
    }

    fn document(&self) -> Value {
        let stored: Vec<&str> = self.stored.iter().map(String::as_str).collect();
        expected_document(&self.session, &stored)
    }
}

fn hostile_plans(rng: &mut Rng) -> Vec<Plan> {
    let sessions: Vec<String> = (0..HOSTILE_CONNECTIONS)
        .map(|c| format!("hostile.{c} *>{{}}"))
        .collect();
    sessions
        .iter()
        .enumerate()
        .map(|(c, own)| {
            let other = &sessions[(c + 1) % sessions.len()];
            let mut plan = Plan::new(own.clone(), false);
            let mut next_base = 0;
            while plan.frames.len() < FRAMES_PER_HOSTILE_CONNECTION {
                let frame = hostile_frame(rng, own, other, &mut next_base);
                plan.push(frame);
            }
            plan
        })
        .collect()
}

/// Valid sessions: ties and `-0.0` within a frame, duplicates across
/// frames, SESSION_END last.
fn valid_plans(rng: &mut Rng) -> Vec<Plan> {
    (0..VALID_SESSIONS)
        .map(|v| {
            let mut plan = Plan::new(format!("valid-{v}"), true);
            plan.push(Outgoing::Text(
                r#"[{"type":"SESSION_START","timestamp":0},{"type":"EVENT","timestamp":0,"name":"zero"},{"type":"EVENT","timestamp":-0.0,"name":"minus zero"},{"type":"EVENT","timestamp":0.0,"name":"zero again"}]"#
                    .to_owned(),
            ));
            for base in 1..FRAMES_PER_VALID_SESSION as u64 - 1 {
                let with_session_id = rng.below(2) == 0;
                let frame = valid_frame(rng, &plan.session, base, with_session_id);
                plan.push(Outgoing::Text(frame));
            }
            plan.push(Outgoing::Text(
                r#"[{"type":"EVENT","timestamp":1e308,"name":"last"},{"type":"SESSION_END","timestamp":1e308}]"#
                    .to_owned(),
            ));
            plan
        })
        .collect()
}

fn seed() -> u64 {
    std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|raw| {
            let raw = raw.trim_start_matches("0x");
            u64::from_str_radix(raw, 16).ok()
        })
        .unwrap_or(DEFAULT_SEED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_frames_leave_the_server_up_and_valid_sessions_exact() {
    let app = spawn_app().await;
    let seed = seed();
    let mut rng = Rng(SeededRng::new(seed));
    let hostile = hostile_plans(&mut rng);
    let valid = valid_plans(&mut rng);
    let total: usize = hostile.iter().chain(&valid).map(|p| p.frames.len()).sum();
    assert!(total >= 10_000, "{total} frames");
    let rejected = hostile
        .iter()
        .flat_map(|plan| &plan.expected)
        .filter(|want| matches!(want, Expected::Rejected(..)))
        .count();
    assert!(rejected > 9_000, "only {rejected} malformed frames");

    let app = &app;
    let runs = hostile.iter().chain(&valid).map(|plan| {
        pipeline(
            app,
            &plan.session,
            plan.frames.clone(),
            plan.expected.clone(),
            seed,
        )
    });
    futures::future::join_all(runs).await;

    // Still answering: health, a new connection, the api.
    for path in ["/healthz", "/readyz"] {
        let response = app
            .http
            .get(format!("http://{}{path}", app.ingest_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let after = r#"[{"type":"EVENT","timestamp":1,"name":"after the storm"}]"#;
    app.connect("after").await.send_accepted(after).await;

    for plan in hostile.iter().chain(&valid) {
        app.wait_for_document(&plan.session, &plan.document()).await;
    }
    app.wait_for_document("after", &expected_document("after", &[after]))
        .await;
    app.wait_until_consumed().await;
    for plan in hostile.iter().chain(&valid) {
        assert_eq!(
            app.stored_frames(&plan.session).await,
            plan.stored.len() as u64,
            "{}: rejected frames were stored (seed {seed:#x})",
            plan.session
        );
    }
}

#[tokio::test]
async fn garbage_below_the_websocket_layer_only_ends_its_own_connection() {
    let app = spawn_app().await;
    let mut rng = Rng(SeededRng::new(seed()));

    // Not HTTP at all.
    let mut tcp = tokio::net::TcpStream::connect(app.ingest_addr)
        .await
        .unwrap();
    let _ = tcp.write_all(&rng.bytes(64 * 1024, None)).await;
    let mut sink = Vec::new();
    let read = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the server kept a garbage connection open");

    // A text frame that is not UTF-8: the connection fails, the server does not.
    let mut producer = app.connect("not-utf8").await;
    producer
        .send_accepted(r#"[{"type":"EVENT","timestamp":1,"name":"before"}]"#)
        .await;
    let invalid = RawFrame::message(vec![b'[', 0xff, 0xfe, b']'], OpCode::Data(Data::Text), true);
    producer.socket.send(Message::Frame(invalid)).await.unwrap();
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match producer.socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let reply: Reply = serde_json::from_str(text.as_str()).unwrap();
                    assert!(!reply.is_ok(), "invalid UTF-8 was accepted: {text}");
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the connection stayed open after invalid UTF-8"
    );

    let mut producer = app.connect("not-utf8").await;
    producer
        .send_accepted(r#"[{"type":"EVENT","timestamp":2,"name":"after"}]"#)
        .await;
    let response = app
        .http
        .get(format!("http://{}/healthz", app.ingest_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.wait_for_document(
        "not-utf8",
        &expected_document(
            "not-utf8",
            &[
                r#"[{"type":"EVENT","timestamp":1,"name":"before"}]"#,
                r#"[{"type":"EVENT","timestamp":2,"name":"after"}]"#,
            ],
        ),
    )
    .await;
}
