//! A pulled batch, decoded and grouped by session.

use std::collections::BTreeMap;

use sessionfold_core::Subjects;
use sessionfold_core::{Delivery, Frame, Limits, SessionId};

/// Limits for re-reading stored frames: ingest validated them with the limits
/// in force then, which may have been larger than today's.
const STORED_FRAME_LIMITS: Limits = Limits {
    max_frame_bytes: usize::MAX,
    max_events_per_frame: usize::MAX,
    max_event_bytes: usize::MAX,
};

/// Why a stored message can never be applied.
#[derive(Debug, thiserror::Error)]
pub enum Poison {
    #[error("subject {0:?} names no session")]
    UnknownSubject(String),
    #[error("payload is not a valid frame: {0}")]
    InvalidFrame(String),
}

/// Decodes a stored message into its session and events.
pub fn decode(
    subjects: &Subjects,
    subject: &str,
    payload: &[u8],
    stream_sequence: u64,
) -> Result<(SessionId, Delivery), Poison> {
    let session = subjects
        .session_of_event(subject)
        .ok_or_else(|| Poison::UnknownSubject(subject.to_owned()))?;
    let text = std::str::from_utf8(payload).map_err(|err| Poison::InvalidFrame(err.to_string()))?;
    let frame = Frame::parse(text, &session, &STORED_FRAME_LIMITS)
        .map_err(|err| Poison::InvalidFrame(err.to_string()))?;
    Ok((
        session,
        Delivery {
            stream_sequence,
            events: frame.events,
        },
    ))
}

/// The deliveries of one session in a batch, with the indexes of the
/// messages they came from.
#[derive(Debug, Default)]
pub struct SessionBatch {
    pub deliveries: Vec<Delivery>,
    pub messages: Vec<usize>,
}

/// Groups decoded messages by session.
pub fn group(decoded: Vec<(usize, SessionId, Delivery)>) -> BTreeMap<SessionId, SessionBatch> {
    let mut sessions: BTreeMap<SessionId, SessionBatch> = BTreeMap::new();
    for (message, session, delivery) in decoded {
        let batch = sessions.entry(session).or_default();
        batch.deliveries.push(delivery);
        batch.messages.push(message);
    }
    sessions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_frame_decodes_with_its_session() {
        let subjects = Subjects::default();
        let session = SessionId::parse("a.b").unwrap();
        let subject = subjects.event(&session);
        let (decoded, delivery) =
            decode(&subjects, &subject, br#"{"type":"EVENT","timestamp":1}"#, 9).unwrap();
        assert_eq!(decoded, session);
        assert_eq!(delivery.stream_sequence, 9);
        assert_eq!(delivery.events.len(), 1);
    }

    #[test]
    fn undecodable_messages_are_poison() {
        let subjects = Subjects::default();
        let stored = subjects.event(&SessionId::parse("s").unwrap());
        assert!(matches!(
            decode(&subjects, "elsewhere.x", b"[]", 1),
            Err(Poison::UnknownSubject(_))
        ));
        assert!(matches!(
            decode(&subjects, &stored, b"[1]", 1),
            Err(Poison::InvalidFrame(_))
        ));
        assert!(matches!(
            decode(&subjects, &stored, &[0xff, 0xfe], 1),
            Err(Poison::InvalidFrame(_))
        ));
    }

    #[test]
    fn grouping_keeps_each_sessions_messages() {
        let subjects = Subjects::default();
        let decoded = ["a", "b", "a"]
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let session = SessionId::parse(id).unwrap();
                let (session, delivery) =
                    decode(&subjects, &subjects.event(&session), b"[]", i as u64 + 1).unwrap();
                (i, session, delivery)
            })
            .collect();
        let sessions = group(decoded);
        assert_eq!(
            sessions[&SessionId::parse("a").unwrap()].messages,
            vec![0, 2]
        );
        assert_eq!(sessions[&SessionId::parse("b").unwrap()].messages, vec![1]);
    }
}
