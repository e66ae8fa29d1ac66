//! The api's `/data/stream` is Server-Sent Events (docs/design.md §3.2):
//! [`SseLines`] splits its bytes into the `data` of each event,
//! [`SseEvents`] into whole events (name, id, data), and [`LiveReplica`]
//! replays them into the session's document, byte for byte as `GET /data`
//! serves it.

use serde_json::value::RawValue;

/// Splits a Server-Sent Events byte stream into the `data` of its events.
#[derive(Debug, Default)]
pub struct SseLines {
    buffer: String,
    data: Vec<String>,
}

impl SseLines {
    /// Feeds bytes; returns the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.push_str(&String::from_utf8_lossy(bytes));
        let mut complete = Vec::new();
        while let Some(end) = self.buffer.find('\n') {
            let line: String = self.buffer.drain(..=end).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    complete.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(data) = line.strip_prefix("data:") {
                self.data
                    .push(data.strip_prefix(' ').unwrap_or(data).to_owned());
            }
        }
        complete
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:`; `message` when the event has none.
    pub name: String,
    /// `id:` (the session's revision, for the api's events).
    pub id: Option<String>,
    pub data: String,
}

/// Splits a Server-Sent Events byte stream into events; comment lines
/// (keep-alives) are skipped.
#[derive(Debug, Default)]
pub struct SseEvents {
    buffer: Vec<u8>,
    name: Option<String>,
    id: Option<String>,
    data: Vec<String>,
}

impl SseEvents {
    /// Feeds bytes; returns every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut complete = Vec::new();
        let mut start = 0;
        while let Some(end) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.buffer[start..start + end]).into_owned();
            start += end + 1;
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                if !self.data.is_empty() || self.name.is_some() {
                    complete.push(SseEvent {
                        name: self.name.take().unwrap_or_else(|| "message".to_owned()),
                        id: self.id.take(),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "event" => self.name = Some(value),
                "id" => self.id = Some(value),
                "data" => self.data.push(value),
                _ => {}
            }
        }
        self.buffer.drain(..start);
        complete
    }
}

/// Why a replica could not take an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("a delta before any document")]
    NoDocument,
    #[error("a delta for revision {got} after revision {at}")]
    OutOfOrder { at: u64, got: u64 },
    #[error("an event that does not parse: {0}")]
    Malformed(String),
    #[error("a change out of range")]
    OutOfRange,
}

/// A session's document rebuilt from its live stream: `document` events
/// replace it, `delta` events change it, `state` events set its state.
#[derive(Debug, Default, Clone)]
pub struct LiveReplica {
    parts: Option<ReplicaParts>,
    /// The revision of the last `document` or `delta`.
    pub revision: u64,
    /// The session's state: `open` until a `state` event says otherwise.
    pub state: Option<String>,
}

#[derive(Debug, Clone)]
struct ReplicaParts {
    session_id: String,
    kind: String,
    start: String,
    end: String,
    children: Vec<String>,
}

#[derive(serde::Deserialize)]
struct DocumentParts<'a> {
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

#[derive(serde::Deserialize)]
struct DeltaParts<'a> {
    #[serde(borrow)]
    start: Option<&'a RawValue>,
    #[serde(borrow)]
    end: Option<&'a RawValue>,
    #[serde(borrow)]
    changes: Vec<ChangeParts<'a>>,
}

#[derive(serde::Deserialize)]
struct ChangeParts<'a> {
    remove: Option<usize>,
    insert: Option<usize>,
    #[serde(borrow)]
    children: Option<Vec<&'a RawValue>>,
}

impl LiveReplica {
    /// Takes one event of the stream; events other than `document`,
    /// `delta` and `state` change nothing.
    pub fn apply(&mut self, event: &SseEvent) -> Result<(), ReplayError> {
        let malformed = |err: serde_json::Error| ReplayError::Malformed(err.to_string());
        let revision = event.id.as_deref().and_then(|id| id.parse::<u64>().ok());
        match event.name.as_str() {
            "document" => {
                let parts: DocumentParts<'_> =
                    serde_json::from_str(&event.data).map_err(malformed)?;
                self.parts = Some(ReplicaParts {
                    session_id: parts.session_id.get().to_owned(),
                    kind: parts.kind.get().to_owned(),
                    start: parts.start.get().to_owned(),
                    end: parts.end.get().to_owned(),
                    children: parts.children.iter().map(|c| c.get().to_owned()).collect(),
                });
                self.revision = revision.unwrap_or(0);
            }
            "delta" => {
                let parts = self.parts.as_mut().ok_or(ReplayError::NoDocument)?;
                let got = revision.ok_or_else(|| ReplayError::Malformed("no id".to_owned()))?;
                if got <= self.revision {
                    return Err(ReplayError::OutOfOrder {
                        at: self.revision,
                        got,
                    });
                }
                let delta: DeltaParts<'_> = serde_json::from_str(&event.data).map_err(malformed)?;
                for change in delta.changes {
                    match (change.remove, change.insert, change.children) {
                        (Some(at), None, None) if at < parts.children.len() => {
                            parts.children.remove(at);
                        }
                        (None, Some(at), Some(children)) if at <= parts.children.len() => {
                            parts
                                .children
                                .splice(at..at, children.iter().map(|c| c.get().to_owned()));
                        }
                        _ => return Err(ReplayError::OutOfRange),
                    }
                }
                if let Some(start) = delta.start {
                    parts.start = start.get().to_owned();
                }
                if let Some(end) = delta.end {
                    parts.end = end.get().to_owned();
                }
                self.revision = got;
            }
            "state" => {
                let value: serde_json::Value =
                    serde_json::from_str(&event.data).map_err(malformed)?;
                self.state = value["state"].as_str().map(str::to_owned);
            }
            _ => {}
        }
        Ok(())
    }

    /// The document's bytes, as `GET /data` serves them; `None` before the
    /// first `document` event.
    pub fn document(&self) -> Option<String> {
        let parts = self.parts.as_ref()?;
        Some(format!(
            r#"{{"session_id":{},"type":{},"start":{},"end":{},"children":[{}]}}"#,
            parts.session_id,
            parts.kind,
            parts.start,
            parts.end,
            parts.children.join(",")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_replays_documents_and_deltas() {
        let mut events = SseEvents::default();
        let stream = concat!(
            "event: document\nid: 3\ndata: {\"session_id\":\"s\",\"type\":\"SESSION\",\"start\":null,\"end\":null,\"children\":[{\"a\":1}]}\n\n",
            ": keep-alive\n\n",
            "event: delta\nid: 4\ndata: {\"start\":2,\"changes\":[{\"insert\":0,\"children\":[{\"b\":2},{\"c\":3}]},{\"remove\":2}]}\n\n",
            "event: state\nid: 4\ndata: {\"state\":\"idle\"}\n\n",
        );
        let mut replica = LiveReplica::default();
        // Split anywhere, the events are the same.
        let (one, two) = stream.as_bytes().split_at(50);
        let parsed: Vec<SseEvent> = events
            .push(one)
            .into_iter()
            .chain(events.push(two))
            .collect();
        assert_eq!(parsed.len(), 3);
        for event in &parsed {
            replica.apply(event).unwrap();
        }
        assert_eq!(
            replica.document().unwrap(),
            r#"{"session_id":"s","type":"SESSION","start":2,"end":null,"children":[{"b":2},{"c":3}]}"#
        );
        assert_eq!(replica.revision, 4);
        assert_eq!(replica.state.as_deref(), Some("idle"));
        assert_eq!(
            replica.apply(&parsed[1]),
            Err(ReplayError::OutOfOrder { at: 4, got: 4 })
        );
    }

    #[test]
    fn events_are_split_across_chunks() {
        let mut lines = SseLines::default();
        assert!(lines.push(b"event: document\ndata: {\"a\"").is_empty());
        assert_eq!(
            lines.push(b":1}\n\n: keep-alive\n\ndata: x\n\n"),
            vec!["{\"a\":1}", "x"]
        );
    }
}
