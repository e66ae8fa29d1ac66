//! Input limits (docs/design.md §6). Every limit is configurable by the services.

/// Limits applied to producers' input before anything is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted text frame, in bytes.
    pub max_frame_bytes: usize,
    /// Most events one frame may carry.
    pub max_events_per_frame: usize,
    /// Largest single event, in bytes of its JSON text as received.
    pub max_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1024 * 1024,
            max_events_per_frame: 10_000,
            max_event_bytes: 64 * 1024,
        }
    }
}
