//! The update note the processor publishes after each apply that stored
//! a session's frames (docs/design.md §3, "Update notes"): what changed, so
//! that the api's live streams push deltas instead of reading the document
//! again.
//!
//! `{"session_id":…,"written":N,"revision":R,"start":S,"end":E,"changes":[…]}`:
//! `revision` is the session's revision after the apply (one more than
//! before it when the apply changed the document); `start` and `end` are
//! the apply's own smallest `SESSION_START` and largest `SESSION_END`
//! timestamps, present when it had one (the document's bound moves when
//! it beats the current one); `changes` lists what happened to `children`,
//! in order: `{"remove":I}` took out the child at position `I` (an earlier
//! arrival replacing it), `{"insert":I,"children":[…]}` put these children
//! in at positions `I`, `I+1`, …, each exactly as the document holds it.
//! When the inserted children would pass [`MAX_NOTE_CHILDREN_BYTES`],
//! `changes` is left out and readers read the document again. An apply
//! that opened a closed session again says `"state":"open"`; one that
//! changed nothing (it repeats the revision it found) says
//! `"unchanged":true`.

use crate::store::{ChildOp, Invocation, Stored};

/// The most bytes of children one note carries (NATS refuses messages
/// over its `max_payload`, 1 MiB by default).
pub const MAX_NOTE_CHILDREN_BYTES: usize = 512 * 1024;

/// The note of one stored apply of `session_id`.
pub fn update_note(session_id: &str, invocation: &Invocation, stored: &Stored) -> Vec<u8> {
    let mut note = Vec::with_capacity(128);
    note.extend_from_slice(b"{\"session_id\":");
    note.extend_from_slice(
        serde_json::to_string(session_id)
            .expect("a string serializes")
            .as_bytes(),
    );
    note.extend_from_slice(
        format!(
            ",\"written\":{},\"revision\":{}",
            stored.written, stored.revision
        )
        .as_bytes(),
    );
    // A step that changed nothing repeats the revision it found: live views
    // must not take it for the step that made that revision.
    if !stored.changed {
        note.extend_from_slice(b",\"unchanged\":true");
    }
    // A closed session changes only by opening again: live views are told.
    if stored.reopened {
        note.extend_from_slice(b",\"state\":\"open\"");
    }
    for (name, bound) in [
        ("start", invocation.start_candidate()),
        ("end", invocation.end_candidate()),
    ] {
        if let Some(bound) = bound {
            note.extend_from_slice(format!(",\"{name}\":").as_bytes());
            note.extend_from_slice(bound);
        }
    }
    if let Some(changes) = changes(invocation, &stored.ops) {
        note.extend_from_slice(b",\"changes\":");
        note.extend_from_slice(&changes);
    }
    note.push(b'}');
    note
}

/// The `changes` array of `ops`, or `None` when its children are too many
/// bytes for one note.
fn changes(invocation: &Invocation, ops: &[ChildOp]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    let mut children_bytes = 0usize;
    out.push(b'[');
    // The rank the next insert continues at, while an insert is open.
    let mut open_insert: Option<u32> = None;
    let mut first = true;
    for op in ops {
        match *op {
            ChildOp::Inserted { rank, child } => {
                let json = invocation.child_json(child as usize);
                children_bytes += json.len();
                if children_bytes > MAX_NOTE_CHILDREN_BYTES {
                    return None;
                }
                if open_insert == Some(rank) {
                    out.push(b',');
                } else {
                    if open_insert.is_some() {
                        out.extend_from_slice(b"]}");
                    }
                    if !first {
                        out.push(b',');
                    }
                    out.extend_from_slice(format!("{{\"insert\":{rank},\"children\":[").as_bytes());
                }
                out.extend_from_slice(json);
                open_insert = Some(rank + 1);
            }
            ChildOp::Removed { rank } => {
                if open_insert.take().is_some() {
                    out.extend_from_slice(b"]}");
                }
                if !first {
                    out.push(b',');
                }
                out.extend_from_slice(format!("{{\"remove\":{rank}}}").as_bytes());
            }
        }
        first = false;
    }
    if open_insert.is_some() {
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use sessionfold_core::{Delivery, Frame, Keys, Limits, SessionId};

    fn invocation(text: &str) -> Invocation {
        let session = SessionId::parse("s").unwrap();
        let delivery = Delivery {
            stream_sequence: 1,
            events: Frame::parse(text, &session, &Limits::default())
                .unwrap()
                .events,
        };
        Invocation::new(&Keys::default(), &session, &[delivery], 0)
    }

    #[test]
    fn consecutive_inserts_share_one_change_and_removals_stand_alone() {
        let invocation = invocation(
            r#"[{"type":"SESSION_START","timestamp":1.0},{"type":"EVENT","timestamp":2,"name":"a"},{"type":"EVENT","timestamp":3,"name":"b"},{"type":"EVENT","timestamp":4,"name":"c"}]"#,
        );
        let stored = Stored {
            written: 3,
            revision: 7,
            changed: true,
            ops: vec![
                ChildOp::Removed { rank: 4 },
                ChildOp::Inserted { rank: 0, child: 0 },
                ChildOp::Inserted { rank: 1, child: 1 },
                ChildOp::Inserted { rank: 9, child: 2 },
            ],
            ..Stored::default()
        };
        let note: Value = serde_json::from_slice(&update_note("s", &invocation, &stored)).unwrap();
        assert_eq!(
            note,
            json!({"session_id": "s", "written": 3, "revision": 7, "start": 1,
                "changes": [
                    {"remove": 4},
                    {"insert": 0, "children": [
                        {"type": "EVENT", "timestamp": 2, "name": "a"},
                        {"type": "EVENT", "timestamp": 3, "name": "b"}]},
                    {"insert": 9, "children": [{"type": "EVENT", "timestamp": 4, "name": "c"}]}]})
        );
    }

    #[test]
    fn a_note_without_changes_keeps_its_revision_and_children_are_sent_as_stored() {
        let invocation = invocation(r#"[{"type":"EVENT","timestamp":2,"x":[1,2.50]}]"#);
        let stored = Stored {
            revision: 3,
            changed: true,
            ops: vec![ChildOp::Inserted { rank: 5, child: 0 }],
            ..Stored::default()
        };
        let note = String::from_utf8(update_note("s", &invocation, &stored)).unwrap();
        assert!(
            note.contains(r#"[{"type":"EVENT","timestamp":2,"x":[1,2.5]}]"#),
            "{note}"
        );
        let none = Stored {
            revision: 3,
            ..Stored::default()
        };
        let note: Value = serde_json::from_slice(&update_note("s", &invocation, &none)).unwrap();
        assert_eq!(note["changes"], json!([]));
        assert_eq!(
            note["unchanged"], true,
            "a step that changed nothing says so"
        );
    }

    #[test]
    fn children_past_the_note_limit_leave_the_changes_out() {
        let big = "x".repeat(60 * 1024);
        let events: Vec<String> = (0..10)
            .map(|i| json!({"type": "EVENT", "timestamp": i, "pad": big}).to_string())
            .collect();
        let invocation = invocation(&format!("[{}]", events.join(",")));
        let stored = Stored {
            revision: 1,
            ops: (0..10)
                .map(|i| ChildOp::Inserted { rank: i, child: i })
                .collect(),
            ..Stored::default()
        };
        let note: Value = serde_json::from_slice(&update_note("s", &invocation, &stored)).unwrap();
        assert_eq!(note["revision"], 1);
        assert!(note.get("changes").is_none());
    }
}
