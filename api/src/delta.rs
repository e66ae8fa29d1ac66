//! The document a live feed keeps, and the update notes applied to it
//! (docs/design.md §3.1, §3.2).
//!
//! A feed reads its session's document once ([`LiveDocument::parse`]),
//! then follows the notes: each note of the next revision is applied to
//! the children kept here ([`LiveDocument::apply`]) and becomes part of a
//! `delta` event, so a change costs the note's bytes, not a read of the
//! document. The children are kept as slices of the bytes they came in
//! (the document read, the notes), without copying them, so a watcher
//! that joins later gets the document assembled from them at once.
//!
//! A document is kept only when assembling its parts again gives its bytes
//! exactly; any other shape makes the feed read the document after every
//! note instead, as it did before deltas.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A session's document as a feed knows it.
#[derive(Debug, Clone)]
pub struct LiveDocument {
    session_id: Bytes,
    kind: Bytes,
    start: Bytes,
    end: Bytes,
    children: Vec<Bytes>,
    /// The revision the document is at.
    pub revision: u64,
    /// Its size assembled, in bytes.
    pub bytes: u64,
}

#[derive(Deserialize)]
struct Parts<'a> {
    #[serde(borrow)]
    session_id: &'a RawValue,
    #[serde(rename = "type", borrow)]
    kind: &'a RawValue,
    #[serde(borrow)]
    start: &'a RawValue,
    #[serde(borrow)]
    end: &'a RawValue,
    #[serde(borrow)]
    children: Vec<&'a RawValue>,
}

/// An update note, as the api reads it.
#[derive(Deserialize)]
struct NoteParts<'a> {
    revision: Option<u64>,
    #[serde(default)]
    written: u64,
    #[serde(borrow)]
    start: Option<&'a RawValue>,
    #[serde(borrow)]
    end: Option<&'a RawValue>,
    #[serde(borrow)]
    changes: Option<&'a RawValue>,
    state: Option<String>,
    /// The step changed nothing and repeats the revision it found.
    #[serde(default)]
    unchanged: bool,
}

#[derive(Deserialize)]
struct Change<'a> {
    remove: Option<usize>,
    insert: Option<usize>,
    #[serde(borrow)]
    children: Option<Vec<&'a RawValue>>,
}

/// What a note says, once read.
#[derive(Debug, Clone)]
pub enum Note {
    /// The apply that made `revision`: its bounds and changes (`None`:
    /// too many bytes for a note; the document must be read), and the
    /// state it left (`open` after a reopening) when the note says so.
    Apply {
        revision: u64,
        payload: Bytes,
        has_changes: bool,
        state: Option<String>,
    },
    /// The session's state changed at `revision` (a close).
    State { revision: u64, state: String },
    /// A step that changed nothing: the revision it names was made by
    /// another note.
    Unchanged,
    /// A note without a revision (older processors, tests): read the
    /// document.
    Unknown,
}

impl Note {
    pub fn parse(payload: Bytes) -> Self {
        let Ok(parts) = serde_json::from_slice::<NoteParts<'_>>(&payload) else {
            return Self::Unknown;
        };
        let Some(revision) = parts.revision else {
            return Self::Unknown;
        };
        if parts.unchanged {
            return Self::Unchanged;
        }
        match parts.state {
            Some(state) if parts.changes.is_none() && parts.written == 0 => {
                Self::State { revision, state }
            }
            state => {
                let has_changes = parts.changes.is_some();
                Self::Apply {
                    revision,
                    has_changes,
                    state,
                    payload,
                }
            }
        }
    }
}

/// The part of a `delta` event one or more applied notes make.
#[derive(Debug, Default)]
pub struct Delta {
    /// The revision after the last note in it.
    pub revision: u64,
    start: Option<Bytes>,
    end: Option<Bytes>,
    /// The notes' `changes` arrays, in order.
    changes: Vec<Bytes>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.revision == 0
    }

    /// The event's data: `{"start":…,"end":…,"changes":[…]}`, the bounds
    /// only when they moved.
    pub fn data(&self) -> Vec<u8> {
        let inner: usize = self.changes.iter().map(Bytes::len).sum();
        let mut out = Vec::with_capacity(inner + 64);
        out.push(b'{');
        for (name, bound) in [("start", &self.start), ("end", &self.end)] {
            if let Some(bound) = bound {
                out.extend_from_slice(format!("\"{name}\":").as_bytes());
                out.extend_from_slice(bound);
                out.push(b',');
            }
        }
        out.extend_from_slice(b"\"changes\":[");
        let mut first = true;
        for changes in &self.changes {
            // Each is a JSON array: its elements go into the one array.
            let elements = changes[1..changes.len() - 1].trim_ascii();
            if elements.is_empty() {
                continue;
            }
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(elements);
            first = false;
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// Why a note could not be applied: the feed reads the document instead.
#[derive(Debug, PartialEq, Eq)]
pub struct Inconsistent(pub &'static str);

impl LiveDocument {
    /// The document's parts, when assembling them gives `bytes` again.
    pub fn parse(bytes: &Bytes, revision: u64) -> Option<Self> {
        let parts: Parts<'_> = serde_json::from_slice(bytes).ok()?;
        let slice = |raw: &RawValue| bytes.slice_ref(raw.get().as_bytes());
        let document = Self {
            session_id: slice(parts.session_id),
            kind: slice(parts.kind),
            start: slice(parts.start),
            end: slice(parts.end),
            children: parts.children.into_iter().map(slice).collect(),
            revision,
            bytes: bytes.len() as u64,
        };
        (document.assemble() == bytes[..]).then_some(document)
    }

    /// The document's bytes, as `GET /data` serves them.
    pub fn assemble(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes as usize + 16);
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut impl BufMut) {
        out.put_slice(b"{\"session_id\":");
        out.put_slice(&self.session_id);
        out.put_slice(b",\"type\":");
        out.put_slice(&self.kind);
        out.put_slice(b",\"start\":");
        out.put_slice(&self.start);
        out.put_slice(b",\"end\":");
        out.put_slice(&self.end);
        out.put_slice(b",\"children\":[");
        for (i, child) in self.children.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(child);
        }
        out.put_slice(b"]}");
    }

    /// The Server-Sent Event `document` of this document.
    pub fn frame(&self) -> Bytes {
        let mut frame = BytesMut::with_capacity(self.bytes as usize + 48);
        frame.put_slice(b"event: document\nid: ");
        frame.put_slice(self.revision.to_string().as_bytes());
        frame.put_slice(b"\ndata: ");
        self.write(&mut frame);
        frame.put_slice(b"\n\n");
        frame.freeze()
    }

    /// Applies the note of the next revision (`payload`, whose `changes`
    /// are there) and adds it to `delta`.
    pub fn apply(&mut self, payload: &Bytes, delta: &mut Delta) -> Result<(), Inconsistent> {
        let note: NoteParts<'_> =
            serde_json::from_slice(payload).map_err(|_| Inconsistent("unreadable note"))?;
        let revision = note.revision.ok_or(Inconsistent("no revision"))?;
        if revision != self.revision + 1 {
            return Err(Inconsistent("not the next revision"));
        }
        let changes_raw = note.changes.ok_or(Inconsistent("no changes"))?;
        let changes: Vec<Change<'_>> = serde_json::from_str(changes_raw.get())
            .map_err(|_| Inconsistent("unreadable changes"))?;
        // Checked before anything changes, so a bad note leaves the
        // document as it was.
        let mut len = self.children.len();
        for change in &changes {
            match (change.remove, change.insert, &change.children) {
                (Some(at), None, None) if at < len => len -= 1,
                (None, Some(at), Some(children)) if at <= len => len += children.len(),
                _ => return Err(Inconsistent("a change out of range")),
            }
        }
        let slice = |raw: &RawValue| payload.slice_ref(raw.get().as_bytes());
        let mut bytes = self.bytes as i64;
        for change in changes {
            if let Some(at) = change.remove {
                let removed = self.children.remove(at);
                bytes -= removed.len() as i64 + 1;
            } else if let (Some(at), Some(children)) = (change.insert, change.children) {
                bytes += children
                    .iter()
                    .map(|c| c.get().len() as i64 + 1)
                    .sum::<i64>();
                self.children
                    .splice(at..at, children.into_iter().map(slice));
            }
        }
        for (candidate, which) in [(note.start, Bound::Start), (note.end, Bound::End)] {
            let Some(candidate) = candidate else { continue };
            let candidate = slice(candidate);
            let current = match which {
                Bound::Start => &mut self.start,
                Bound::End => &mut self.end,
            };
            if moves(which, current, &candidate) {
                bytes += candidate.len() as i64 - current.len() as i64;
                *current = candidate.clone();
                match which {
                    Bound::Start => delta.start = Some(candidate),
                    Bound::End => delta.end = Some(candidate),
                }
            }
        }
        self.bytes = bytes.max(0) as u64;
        self.revision = revision;
        delta.revision = revision;
        delta.changes.push(slice(changes_raw));
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Bound {
    Start,
    End,
}

/// Whether `candidate` replaces the bound `current` (`null`, or a number):
/// the smallest start and the largest end win.
fn moves(which: Bound, current: &[u8], candidate: &[u8]) -> bool {
    let number = |raw: &[u8]| {
        std::str::from_utf8(raw)
            .ok()
            .and_then(|text| text.parse::<f64>().ok())
    };
    let Some(candidate) = number(candidate) else {
        return false;
    };
    match number(current) {
        None => true,
        Some(current) => match which {
            Bound::Start => candidate < current,
            Bound::End => candidate > current,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"session_id":"s","type":"SESSION","start":null,"end":5,"children":[{"type":"EVENT","timestamp":1,"name":"a"},{"type":"EVENT","timestamp":3,"name":"c"}]}"#;

    #[test]
    fn a_document_is_kept_when_its_parts_give_its_bytes_again() {
        let doc = LiveDocument::parse(&Bytes::from_static(DOC.as_bytes()), 4).unwrap();
        assert_eq!(doc.assemble(), DOC.as_bytes());
        assert_eq!(doc.bytes, DOC.len() as u64);
        // Another shape (white space, other fields) is not kept.
        for other in [
            r#"{"session_id":"s", "type":"SESSION","start":null,"end":null,"children":[]}"#,
            r#"{"type":"SESSION","session_id":"s","start":null,"end":null,"children":[]}"#,
            r#"{"session_id":"s","type":"SESSION","start":null,"end":null,"children":[],"x":1}"#,
        ] {
            assert!(
                LiveDocument::parse(&Bytes::from(other), 1).is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn notes_of_the_next_revisions_give_the_next_documents() {
        let mut doc = LiveDocument::parse(&Bytes::from_static(DOC.as_bytes()), 4).unwrap();
        let mut delta = Delta::default();
        let first = Bytes::from_static(
            br#"{"session_id":"s","written":2,"revision":5,"start":0.5,"changes":[{"insert":1,"children":[{"type":"EVENT","timestamp":2,"name":"b"}]},{"insert":3,"children":[{"type":"EVENT","timestamp":9}]}]}"#,
        );
        let second = Bytes::from_static(
            br#"{"session_id":"s","written":1,"revision":6,"start":0.7,"end":9,"changes":[{"remove":0},{"insert":0,"children":[{"type":"EVENT","timestamp":1,"name":"a0"}]}]}"#,
        );
        doc.apply(&first, &mut delta).unwrap();
        doc.apply(&second, &mut delta).unwrap();
        let expected = r#"{"session_id":"s","type":"SESSION","start":0.5,"end":9,"children":[{"type":"EVENT","timestamp":1,"name":"a0"},{"type":"EVENT","timestamp":2,"name":"b"},{"type":"EVENT","timestamp":3,"name":"c"},{"type":"EVENT","timestamp":9}]}"#;
        assert_eq!(String::from_utf8(doc.assemble()).unwrap(), expected);
        assert_eq!(doc.bytes, expected.len() as u64);
        assert_eq!(doc.revision, 6);
        assert_eq!(delta.revision, 6);
        assert_eq!(
            String::from_utf8(delta.data()).unwrap(),
            r#"{"start":0.5,"end":9,"changes":[{"insert":1,"children":[{"type":"EVENT","timestamp":2,"name":"b"}]},{"insert":3,"children":[{"type":"EVENT","timestamp":9}]},{"remove":0},{"insert":0,"children":[{"type":"EVENT","timestamp":1,"name":"a0"}]}]}"#
        );
    }

    #[test]
    fn a_note_that_does_not_fit_leaves_the_document_as_it_was() {
        let mut doc = LiveDocument::parse(&Bytes::from_static(DOC.as_bytes()), 4).unwrap();
        let mut delta = Delta::default();
        for note in [
            r#"{"revision":6,"changes":[]}"#,
            r#"{"revision":5}"#,
            r#"{"revision":5,"changes":[{"remove":2}]}"#,
            r#"{"revision":5,"changes":[{"remove":0},{"insert":3,"children":[1]}]}"#,
        ] {
            assert!(doc.apply(&Bytes::from(note), &mut delta).is_err(), "{note}");
            assert_eq!(doc.assemble(), DOC.as_bytes());
        }
        assert!(delta.is_empty());
    }

    #[test]
    fn notes_are_told_apart() {
        let parse = |text: &'static str| Note::parse(Bytes::from_static(text.as_bytes()));
        assert!(matches!(parse("{}"), Note::Unknown));
        assert!(matches!(
            parse(r#"{"written":0,"revision":3,"changes":[],"unchanged":true}"#),
            Note::Unchanged
        ));
        assert!(matches!(parse("nope"), Note::Unknown));
        assert!(matches!(
            parse(r#"{"written":0,"revision":3,"state":"idle"}"#),
            Note::State { revision: 3, ref state } if state == "idle"
        ));
        assert!(matches!(
            parse(r#"{"written":1,"revision":4,"state":"open","changes":[]}"#),
            Note::Apply { revision: 4, has_changes: true, state: Some(ref s), .. } if s == "open"
        ));
        assert!(matches!(
            parse(r#"{"written":1,"revision":4}"#),
            Note::Apply {
                has_changes: false,
                ..
            }
        ));
    }
}
