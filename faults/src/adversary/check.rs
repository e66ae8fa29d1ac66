//! The checks of an adversarial run, against the producers' ledgers, the
//! event stream as JetStream holds it (read message by message with
//! `STREAM.MSG.GET`, not through the processors' consumer) and the
//! documents as the api serves them:
//!
//! 1. every acknowledged frame is stored: the stream holds, at the `seq` of
//!    its reply, exactly its bytes on its session's subject;
//! 2. nothing else is stored: every message is a frame of valid events
//!    that its session's producers sent, and no frame that had to be
//!    refused (nor `[]`) is among them;
//! 3. every reply is the one the contract asks for: the right code and
//!    `index` for a frame that can never be stored, `ok` or a transient
//!    code for one that can, `accepted` and `seq` as stored;
//! 4. the served document of every session equals, byte for byte, the
//!    oracle's fold of what the stream holds for it; lost and duplicated
//!    events are counted against the acknowledged ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::oracle::{self, StoredFrame};
use super::producer::{Expect, Reply, SentFrame};

/// One message of the event stream.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub sequence: u64,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// Every message of `stream`, in sequence order, read one by one.
pub async fn read_stream(nats_url: &str, stream: &str) -> anyhow::Result<Vec<StreamMessage>> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let client = async_nats::connect(nats_url).await?;
    let jetstream = async_nats::jetstream::new(client);
    let mut handle = jetstream.get_stream(stream).await?;
    let state = handle.info().await?.state.clone();
    let mut messages = Vec::with_capacity(state.messages as usize);
    if state.messages == 0 {
        return Ok(messages);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        let mut attempts = 0;
        loop {
            match handle.get_raw_message(sequence).await {
                Ok(message) => {
                    messages.push(StreamMessage {
                        sequence: message.sequence,
                        subject: message.subject.to_string(),
                        payload: message.payload.to_vec(),
                    });
                    break;
                }
                Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(_) if attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => return Err(err).context(format!("reading stream sequence {sequence}")),
            }
        }
    }
    Ok(messages)
}

/// The body of `GET /data` for every session (`None`: 404), as bytes.
pub async fn read_served(
    http: &reqwest::Client,
    api: SocketAddr,
    session_ids: &[String],
) -> anyhow::Result<Vec<Option<String>>> {
    let mut out = Vec::with_capacity(session_ids.len());
    for chunk in session_ids.chunks(16) {
        let reads = chunk.iter().map(|id| async move {
            let url = format!(
                "http://{api}/data?session_id={}",
                super::producer::percent_encode(id)
            );
            let response = http.get(url).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            match status.as_u16() {
                200 => Ok(Some(
                    String::from_utf8(body.to_vec()).context("a document in UTF-8")?,
                )),
                404 => Ok(None),
                other => bail!(
                    "GET /data for {id:?}: {other} {}",
                    String::from_utf8_lossy(&body)
                ),
            }
        });
        for read in futures::future::join_all(reads).await {
            out.push(read?);
        }
    }
    Ok(out)
}

/// What the ledgers and the stream say, before the documents are looked at.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub frames_sent: usize,
    /// Frames answered `ok` (`[]` included).
    pub acked: usize,
    /// Of those, empty frames (`[]`, which store nothing).
    pub acked_empty: usize,
    /// Frames refused, by code.
    pub refused: BTreeMap<String, usize>,
    /// Frames that got no reply (the connection ended first).
    pub unanswered: usize,
    /// Messages in the stream.
    pub stored: usize,
    /// Stream messages no reply names: stored without an `ok` the producer
    /// saw (a lost reply, an `unavailable` after a slow PubAck, ingest
    /// killed after publishing).
    pub stored_unacked: usize,
    /// Every break of the promise or the protocol, one line each.
    pub violations: Vec<String>,
    /// Each session's stored frames, by session index.
    pub stored_by_session: Vec<Vec<StoredFrame>>,
    /// Stream sequences some reply acknowledged.
    pub acked_sequences: HashSet<u64>,
}

fn is_transient(code: &str) -> bool {
    matches!(code, "unavailable" | "rate_limited")
}

fn describe(frame: &SentFrame) -> String {
    let bytes = frame.payload.bytes();
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(160)]);
    format!(
        "session {} producer {} connection {} frame {} ({} bytes: {shown:?}{})",
        frame.session,
        frame.producer,
        frame.connection,
        frame.number,
        bytes.len(),
        if bytes.len() > 160 { "…" } else { "" }
    )
}

/// Checks 1–3 over every producer's `frames` and the `stream`, whose
/// subjects are `<subject_prefix>.<token>`.
pub fn check_ledger(
    session_ids: &[String],
    subject_prefix: &str,
    frames: &[SentFrame],
    stream: &[StreamMessage],
    protocol_errors: &[String],
) -> Ledger {
    let mut ledger = Ledger {
        frames_sent: frames.len(),
        stored: stream.len(),
        stored_by_session: vec![Vec::new(); session_ids.len()],
        ..Ledger::default()
    };
    let violations = &mut ledger.violations;
    violations.extend(protocol_errors.iter().map(|e| format!("protocol: {e}")));
    let by_sequence: HashMap<u64, &StreamMessage> =
        stream.iter().map(|m| (m.sequence, m)).collect();
    let subjects: Vec<String> = session_ids
        .iter()
        .map(|id| oracle::subject(subject_prefix, id))
        .collect();
    let session_of_subject: HashMap<&str, usize> = subjects
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    // What each session may have stored: the bytes of frames of valid
    // events it sent.
    let mut storable: Vec<HashSet<&[u8]>> = vec![HashSet::new(); session_ids.len()];
    let mut acked_at: HashMap<u64, usize> = HashMap::new();
    for (i, frame) in frames.iter().enumerate() {
        if matches!(frame.expect, Expect::Store { events } if events > 0) {
            storable[frame.session].insert(frame.payload.bytes());
        }
        match (&frame.reply, &frame.expect) {
            (Reply::None, _) => ledger.unanswered += 1,
            (Reply::Ok { seq, accepted }, Expect::Store { events }) => {
                ledger.acked += 1;
                if *accepted != *events as u64 {
                    violations.push(format!(
                        "accepted {accepted} for {events} events: {}",
                        describe(frame)
                    ));
                }
                match (*events, seq) {
                    (0, None) => ledger.acked_empty += 1,
                    (0, Some(seq)) => violations.push(format!(
                        "an empty frame acknowledged with seq {seq}: {}",
                        describe(frame)
                    )),
                    (_, None) => {
                        violations.push(format!("acknowledged without a seq: {}", describe(frame)))
                    }
                    (_, Some(seq)) => {
                        if let Some(other) = acked_at.insert(*seq, i) {
                            violations.push(format!(
                                "seq {seq} acknowledged twice: {} and {}",
                                describe(&frames[other]),
                                describe(frame)
                            ));
                        }
                        match by_sequence.get(seq) {
                            None => violations.push(format!(
                                "LOST: acknowledged with seq {seq}, which the stream does not hold: {}",
                                describe(frame)
                            )),
                            Some(message) if message.subject != subjects[frame.session] => {
                                violations.push(format!(
                                    "acknowledged with seq {seq}, which holds subject {} instead of {}: {}",
                                    message.subject,
                                    subjects[frame.session],
                                    describe(frame)
                                ))
                            }
                            Some(message) if message.payload != frame.payload.bytes() => {
                                violations.push(format!(
                                    "acknowledged with seq {seq}, which holds other bytes ({}): {}",
                                    String::from_utf8_lossy(
                                        &message.payload[..message.payload.len().min(160)]
                                    ),
                                    describe(frame)
                                ))
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
            (Reply::Ok { .. }, _) => {
                ledger.acked += 1;
                violations.push(format!(
                    "acknowledged, but it must be refused ({:?}): {}",
                    frame.expect,
                    describe(frame)
                ));
            }
            (Reply::Refused { code, index }, expect) => {
                *ledger.refused.entry(code.clone()).or_default() += 1;
                match expect {
                    Expect::Store { .. } if is_transient(code) => {}
                    Expect::Store { .. } => violations.push(format!(
                        "a storable frame refused with the permanent code {code}: {}",
                        describe(frame)
                    )),
                    Expect::Refuse {
                        code: wanted,
                        index: wanted_index,
                    } => {
                        if code != wanted || *index != wanted_index.map(|i| i as u64) {
                            violations.push(format!(
                                "refused with {code} (index {index:?}) instead of {wanted} (index {wanted_index:?}): {}",
                                describe(frame)
                            ));
                        }
                    }
                    Expect::Close1009 => violations.push(format!(
                        "answered {code} instead of a close with 1009: {}",
                        describe(frame)
                    )),
                }
            }
        }
    }
    for message in stream {
        let Some(&session) = session_of_subject.get(message.subject.as_str()) else {
            violations.push(format!(
                "seq {} is stored on a subject of no session: {}",
                message.sequence, message.subject
            ));
            continue;
        };
        if !storable[session].contains(message.payload.as_slice()) {
            violations.push(format!(
                "seq {} of session {session} holds bytes its producers never sent as a storable frame: {}",
                message.sequence,
                String::from_utf8_lossy(&message.payload[..message.payload.len().min(160)])
            ));
        }
        if !acked_at.contains_key(&message.sequence) {
            ledger.stored_unacked += 1;
        }
        ledger.stored_by_session[session].push(StoredFrame {
            sequence: message.sequence,
            payload: message.payload.clone(),
        });
    }
    ledger.acked_sequences = acked_at.into_keys().collect();
    ledger
}

/// The documents next to the oracle.
#[derive(Debug, Clone, Default)]
pub struct Documents {
    /// Sessions whose served document differs from the oracle's, with it.
    pub diverged: Vec<(usize, Option<String>, Option<String>)>,
    /// Events of acknowledged frames whose identity is not in the served
    /// document.
    pub lost: usize,
    /// Children served more than once (by identity).
    pub duplicated: usize,
    /// Children the oracle's documents hold, over all sessions.
    pub children: usize,
}

/// Check 4: `served` (by session) against the oracle's fold of `ledger`.
pub fn check_documents(
    session_ids: &[String],
    ledger: &Ledger,
    served: &[Option<String>],
) -> Documents {
    let mut out = Documents::default();
    for (session, id) in session_ids.iter().enumerate() {
        let stored = &ledger.stored_by_session[session];
        let expected = match oracle::fold(id, stored) {
            Ok(doc) => doc,
            Err(err) => Some(format!("(the stored frames do not fold: {err})")),
        };
        if let Some(doc) = &expected
            && let Ok(value) = serde_json::from_str::<Value>(doc)
        {
            out.children += value["children"].as_array().map_or(0, Vec::len);
        }
        let actual = served[session].clone();
        // Lost and duplicated, by identity, against what was acknowledged.
        let mut served_identities: HashMap<String, usize> = HashMap::new();
        if let Some(doc) = &actual
            && let Ok(value) = serde_json::from_str::<Value>(doc)
        {
            for child in value["children"].as_array().into_iter().flatten() {
                if let Value::Object(child) = child {
                    *served_identities
                        .entry(oracle::identity(child))
                        .or_default() += 1;
                }
            }
        }
        out.duplicated += served_identities.values().map(|n| n - 1).sum::<usize>();
        let mut acked_identities = HashSet::new();
        for frame in stored {
            if !ledger.acked_sequences.contains(&frame.sequence) {
                continue;
            }
            for event in oracle::events_of(&frame.payload).unwrap_or_default() {
                if event.get("type") == Some(&Value::String("EVENT".to_owned())) {
                    acked_identities.insert(oracle::identity(&event));
                }
            }
        }
        out.lost += acked_identities
            .iter()
            .filter(|identity| !served_identities.contains_key(*identity))
            .count();
        if actual != expected {
            out.diverged.push((session, expected, actual));
        }
    }
    out
}

/// A short account of a session that diverged: its frames in the ledger and
/// the stream, and both documents.
pub fn describe_session(
    session: usize,
    session_id: &str,
    frames: &[SentFrame],
    ledger: &Ledger,
    expected: &Option<String>,
    served: &Option<String>,
) -> String {
    let mut out = format!("session {session} {session_id:?}\n  frames sent:\n");
    for frame in frames.iter().filter(|f| f.session == session) {
        out.push_str(&format!(
            "    {} -> {:?} (expect {:?}, request id {:?})\n",
            describe(frame),
            frame.reply,
            frame.expect,
            frame.request_id
        ));
    }
    out.push_str("  stored (stream sequence, acknowledged?):\n");
    for frame in &ledger.stored_by_session[session] {
        let acked = ledger.acked_sequences.contains(&frame.sequence);
        out.push_str(&format!(
            "    seq {} ({}): {:?}\n",
            frame.sequence,
            if acked { "acked" } else { "not acked" },
            String::from_utf8_lossy(&frame.payload[..frame.payload.len().min(300)])
        ));
    }
    out.push_str(&format!(
        "  oracle: {}\n  served: {}\n",
        show(expected),
        show(served)
    ));
    out
}

fn show(doc: &Option<String>) -> String {
    match doc {
        None => "(no document)".to_owned(),
        Some(doc) if doc.len() > 4000 => {
            let cut = doc
                .char_indices()
                .map(|(i, _)| i)
                .take_while(|i| *i <= 4000)
                .last()
                .unwrap_or(0);
            format!("{}… ({} bytes)", &doc[..cut], doc.len())
        }
        Some(doc) => doc.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adversary::producer::Payload;

    fn sent(session: usize, text: &str, expect: Expect, reply: Reply) -> SentFrame {
        SentFrame {
            session,
            producer: 0,
            connection: 1,
            number: 1,
            request_id: None,
            payload: Payload::Text(text.to_owned()),
            expect,
            reply,
        }
    }

    fn message(sequence: u64, session_id: &str, text: &str) -> StreamMessage {
        StreamMessage {
            sequence,
            subject: oracle::subject("p", session_id),
            payload: text.as_bytes().to_vec(),
        }
    }

    const A: &str = r#"[{"type":"EVENT","timestamp":1,"name":"a"}]"#;
    const B: &str = r#"[{"type":"EVENT","timestamp":2,"name":"b"}]"#;

    #[test]
    fn an_acknowledged_frame_missing_from_the_stream_is_a_violation_and_lost() {
        let ids = vec!["s".to_owned()];
        let frames = vec![
            sent(
                0,
                A,
                Expect::Store { events: 1 },
                Reply::Ok {
                    seq: Some(1),
                    accepted: 1,
                },
            ),
            sent(
                0,
                B,
                Expect::Store { events: 1 },
                Reply::Ok {
                    seq: Some(2),
                    accepted: 1,
                },
            ),
        ];
        let stream = vec![message(1, "s", A)];
        let ledger = check_ledger(&ids, "p", &frames, &stream, &[]);
        assert_eq!(ledger.violations.len(), 1, "{:?}", ledger.violations);
        assert!(ledger.violations[0].starts_with("LOST"));
        let served = vec![oracle::fold("s", &ledger.stored_by_session[0]).unwrap()];
        let documents = check_documents(&ids, &ledger, &served);
        // The document equals the fold of what is stored; B was never stored,
        // so it is counted through the ledger's violation, not as lost here.
        assert!(documents.diverged.is_empty());
    }

    #[test]
    fn refused_frames_stored_and_wrong_codes_are_violations() {
        let ids = vec!["s".to_owned(), "t".to_owned()];
        let bad = r#"[{"type":"EVENT","timestamp":"1"}]"#;
        let frames = vec![
            sent(
                0,
                bad,
                Expect::Refuse {
                    code: "invalid_event",
                    index: Some(0),
                },
                Reply::Refused {
                    code: "invalid_json".to_owned(),
                    index: None,
                },
            ),
            sent(
                0,
                A,
                Expect::Store { events: 1 },
                Reply::Refused {
                    code: "invalid_event".to_owned(),
                    index: Some(0),
                },
            ),
            sent(1, B, Expect::Store { events: 1 }, Reply::None),
        ];
        let stream = vec![message(1, "s", bad), message(2, "t", B), message(3, "t", A)];
        let ledger = check_ledger(&ids, "p", &frames, &stream, &[]);
        assert_eq!(ledger.violations.len(), 4, "{:#?}", ledger.violations);
        assert_eq!(ledger.stored_unacked, 3);
        assert_eq!(ledger.unanswered, 1);
    }

    #[test]
    fn a_served_document_with_a_duplicate_or_a_gap_diverges() {
        let ids = vec!["s".to_owned()];
        let frames = vec![
            sent(
                0,
                A,
                Expect::Store { events: 1 },
                Reply::Ok {
                    seq: Some(1),
                    accepted: 1,
                },
            ),
            sent(
                0,
                B,
                Expect::Store { events: 1 },
                Reply::Ok {
                    seq: Some(2),
                    accepted: 1,
                },
            ),
        ];
        let stream = vec![message(1, "s", A), message(2, "s", B)];
        let ledger = check_ledger(&ids, "p", &frames, &stream, &[]);
        assert!(ledger.violations.is_empty());
        let good = oracle::fold("s", &ledger.stored_by_session[0])
            .unwrap()
            .unwrap();
        assert!(
            check_documents(&ids, &ledger, &[Some(good.clone())])
                .diverged
                .is_empty()
        );
        let a = r#"{"type":"EVENT","timestamp":1,"name":"a"}"#;
        let doubled = good.replace(a, &format!("{a},{a}"));
        let documents = check_documents(&ids, &ledger, &[Some(doubled)]);
        assert_eq!(
            (
                documents.diverged.len(),
                documents.duplicated,
                documents.lost
            ),
            (1, 1, 0)
        );
        let gap = good.replace(&format!("{a},"), "");
        let documents = check_documents(&ids, &ledger, &[Some(gap)]);
        assert_eq!(
            (
                documents.diverged.len(),
                documents.duplicated,
                documents.lost
            ),
            (1, 0, 1)
        );
        let documents = check_documents(&ids, &ledger, &[None]);
        assert_eq!((documents.diverged.len(), documents.lost), (1, 2));
    }
}
