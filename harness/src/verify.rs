//! Every session's document against the reference fold
//! ([`sessionfold_core::fold`]) of the frames the producer got acknowledged,
//! in acknowledgement order (the order the client guarantees is also their
//! first-stored order, see [`sessionfold_client::producer`]).

use std::collections::HashMap;

use serde_json::Value;
use sessionfold_client::loadgen::{LoadReport, Workload};
use sessionfold_core::event::write_canonical;
use sessionfold_core::{Delivery, Frame, Limits, SessionId};

/// What the documents look like next to the reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    pub sessions: usize,
    /// Sessions with acknowledged frames but no document.
    pub documents_missing: usize,
    /// Children the reference documents hold, over all sessions.
    pub expected_children: usize,
    /// Children of the reference missing from the documents.
    pub lost: usize,
    /// Children present more often than in the reference.
    pub duplicated: usize,
    /// Children that are not in the reference at all.
    pub unexpected: usize,
    /// Sessions whose `start` differs from the reference.
    pub start_mismatched: usize,
    /// Sessions whose `end` differs from the reference.
    pub end_mismatched: usize,
    /// Sessions holding the right children in the wrong order.
    pub misordered: usize,
    /// Sessions whose document differs from the reference in any way.
    pub unequal: usize,
    /// A few differences, for the failure message.
    pub examples: Vec<String>,
}

impl Verification {
    /// Whether every document is exactly the reference.
    pub fn is_exact(&self) -> bool {
        self.documents_missing == 0
            && self.lost == 0
            && self.duplicated == 0
            && self.unexpected == 0
            && self.start_mismatched == 0
            && self.end_mismatched == 0
            && self.misordered == 0
            && self.unequal == 0
    }
}

/// The reference document of one session: the fold of `frames` with stream
/// sequences 1, 2, … in the order given.
pub fn reference(session_id: &str, frames: &[&str]) -> Value {
    let session = SessionId::parse(session_id).expect("a valid session id");
    let deliveries: Vec<Delivery> = frames
        .iter()
        .enumerate()
        .map(|(i, text)| Delivery {
            stream_sequence: i as u64 + 1,
            events: Frame::parse(text, &session, &Limits::default())
                .expect("an acknowledged frame is valid")
                .events,
        })
        .collect();
    sessionfold_core::fold(session_id, &deliveries)
}

fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(&mut out, value);
    out
}

/// Compares `documents` (raw `JSON.GET` text per session, in the
/// workload's order) with the reference of each session's acknowledged
/// frames.
pub fn verify(
    workload: &Workload,
    report: &LoadReport,
    documents: &[Option<String>],
) -> Verification {
    let mut verification = Verification {
        sessions: workload.sessions.len(),
        ..Verification::default()
    };
    for ((load, result), raw) in workload
        .sessions
        .iter()
        .zip(&report.sessions)
        .zip(documents)
    {
        let frames = result.acked_frames(load);
        let expected = reference(&load.session_id, &frames);
        let expected_children = expected["children"].as_array().expect("children");
        verification.expected_children += expected_children.len();
        let actual: Value = match raw {
            Some(text) => serde_json::from_str(text).expect("JSON.GET returns JSON"),
            None if frames.is_empty() => continue,
            None => {
                verification.documents_missing += 1;
                verification.lost += expected_children.len();
                verification.unequal += 1;
                note(
                    &mut verification,
                    format!("{}: no document", load.session_id),
                );
                continue;
            }
        };
        if actual == expected {
            continue;
        }
        verification.unequal += 1;
        let empty = Vec::new();
        let actual_children = actual["children"].as_array().unwrap_or(&empty);
        let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
        for child in expected_children {
            counts.entry(canonical(child)).or_default().0 += 1;
        }
        for child in actual_children {
            counts.entry(canonical(child)).or_default().1 += 1;
        }
        let (mut lost, mut duplicated, mut unexpected) = (0, 0, 0);
        for (want, have) in counts.values().copied() {
            if want == 0 {
                unexpected += have;
            } else if have > want {
                duplicated += have - want;
            } else {
                lost += want - have;
            }
        }
        verification.lost += lost;
        verification.duplicated += duplicated;
        verification.unexpected += unexpected;
        let start_differs = actual["start"] != expected["start"];
        let end_differs = actual["end"] != expected["end"];
        verification.start_mismatched += usize::from(start_differs);
        verification.end_mismatched += usize::from(end_differs);
        let misordered =
            lost == 0 && duplicated == 0 && unexpected == 0 && actual_children != expected_children;
        verification.misordered += usize::from(misordered);
        note(
            &mut verification,
            format!(
                "{}: lost {lost}, duplicated {duplicated}, unexpected {unexpected}, start {} vs {}, end {} vs {}, misordered {misordered}",
                load.session_id, actual["start"], expected["start"], actual["end"], expected["end"]
            ),
        );
    }
    verification
}

fn note(verification: &mut Verification, example: String) {
    if verification.examples.len() < 5 {
        verification.examples.push(example);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sessionfold_client::Counters;
    use sessionfold_client::loadgen::{SessionResult, WorkloadSpec};

    fn all_acked(workload: &Workload) -> LoadReport {
        LoadReport {
            sessions: workload
                .sessions
                .iter()
                .map(|s| SessionResult {
                    session_id: s.session_id.clone(),
                    acked: (0..s.frames.len()).collect(),
                    rejected: Vec::new(),
                    error: None,
                    counters: Counters::default(),
                })
                .collect(),
            totals: Counters::default(),
            events_acked: 0,
            elapsed: Default::default(),
        }
    }

    #[test]
    fn counts_lost_duplicated_and_mismatched_bounds() {
        let workload = Workload::generate(&WorkloadSpec::new(5, 3, 4, 6));
        let report = all_acked(&workload);
        let mut documents: Vec<Option<String>> = workload
            .sessions
            .iter()
            .zip(&report.sessions)
            .map(|(load, result)| {
                Some(reference(&load.session_id, &result.acked_frames(load)).to_string())
            })
            .collect();
        assert!(verify(&workload, &report, &documents).is_exact());

        let mut broken: Value = serde_json::from_str(documents[0].as_ref().unwrap()).unwrap();
        let children = broken["children"].as_array_mut().unwrap();
        let first = children.remove(0);
        let second = children[0].clone();
        children.push(second);
        children.push(json!({"type": "EVENT", "timestamp": 1, "name": "stray"}));
        broken["start"] = json!(0);
        documents[0] = Some(broken.to_string());
        documents[1] = None;
        let mut swapped: Value = serde_json::from_str(documents[2].as_ref().unwrap()).unwrap();
        swapped["children"].as_array_mut().unwrap().swap(0, 1);
        documents[2] = Some(swapped.to_string());
        let _ = first;

        let verification = verify(&workload, &report, &documents);
        let second_session_children = reference(
            &workload.sessions[1].session_id,
            &report.sessions[1].acked_frames(&workload.sessions[1]),
        )["children"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(verification.lost, 1 + second_session_children);
        assert_eq!(verification.duplicated, 1);
        assert_eq!(verification.unexpected, 1);
        assert_eq!(verification.start_mismatched, 1);
        assert_eq!(verification.documents_missing, 1);
        assert_eq!(verification.misordered, 1);
        assert_eq!(verification.unequal, 3);
        assert!(!verification.is_exact());
    }
}
