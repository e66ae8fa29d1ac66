//! The api's `/data/stream` is Server-Sent Events; [`SseLines`] splits its
//! bytes into the `data` of each event (one document each).

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

#[cfg(test)]
mod tests {
    use super::SseLines;

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
