//! The names of everything sessionfold sends or stores: every NATS subject
//! ([`Subjects`], docs/design.md §3) and every Redis key ([`Keys`], §4),
//! built from the configured
//! prefixes and a session's [`token`](SessionId::token). Nothing else in
//! the workspace spells a subject or a key; the `DEFAULT_*` prefixes here are
//! the defaults of the flags that configure them.

use crate::session::SessionId;

/// Default name of the JetStream stream of accepted frames (`STREAM_NAME`).
pub const DEFAULT_EVENT_STREAM: &str = "SESSIONFOLD_EVENTS";
/// Default name of the dead-letter stream (`DEAD_LETTER_STREAM`).
pub const DEFAULT_DEAD_LETTER_STREAM: &str = "SESSIONFOLD_DEAD";
/// Default name of the processors' durable consumer (`CONSUMER_NAME`).
pub const DEFAULT_CONSUMER: &str = "sessionfold-processor";
/// Default subject prefix of accepted frames (`SUBJECT_PREFIX`).
pub const DEFAULT_EVENTS_PREFIX: &str = "sessionfold.events";
/// Default subject prefix of dead letters (`DEAD_LETTER_SUBJECT_PREFIX`).
pub const DEFAULT_DEAD_LETTERS_PREFIX: &str = "sessionfold.dead";
/// Default subject prefix of the notes announcing a changed document
/// (`UPDATES_SUBJECT_PREFIX`).
pub const DEFAULT_UPDATES_PREFIX: &str = "sessionfold.updates";
/// Default name of the JetStream stream of session timers (`TIMERS_STREAM`).
pub const DEFAULT_TIMERS_STREAM: &str = "SESSIONFOLD_TIMERS";
/// Default subject prefix of session timers (`TIMERS_SUBJECT_PREFIX`).
pub const DEFAULT_TIMERS_PREFIX: &str = "sessionfold.timers";
/// Default durable consumer of due timers (`TIMERS_CONSUMER_NAME`).
pub const DEFAULT_TIMERS_CONSUMER: &str = "sessionfold-timers";
/// Default name of the JetStream stream of finished sessions
/// (`SESSIONS_STREAM`).
pub const DEFAULT_SESSIONS_STREAM: &str = "SESSIONFOLD_SESSIONS";
/// Default subject prefix of finished sessions (`SESSIONS_SUBJECT_PREFIX`).
pub const DEFAULT_SESSIONS_PREFIX: &str = "sessionfold.sessions";
/// Default key-value bucket of the sessions closed for good
/// (`CLOSED_SESSIONS_BUCKET`).
pub const DEFAULT_CLOSED_BUCKET: &str = "sessionfold_closed";
/// Default prefix of every Redis key (`KEY_PREFIX`).
pub const DEFAULT_KEY_PREFIX: &str = "sf:";

/// The NATS subjects: a session's are `<prefix>.<token>` under each prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    /// Accepted frames, which the event stream holds.
    pub events_prefix: String,
    /// Frames that can never be applied, which the dead-letter stream holds.
    pub dead_letters_prefix: String,
    /// Notes the processor publishes after each apply; live views listen.
    pub updates_prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            events_prefix: DEFAULT_EVENTS_PREFIX.to_owned(),
            dead_letters_prefix: DEFAULT_DEAD_LETTERS_PREFIX.to_owned(),
            updates_prefix: DEFAULT_UPDATES_PREFIX.to_owned(),
        }
    }
}

impl Subjects {
    /// The default subjects with accepted frames under `events_prefix`.
    pub fn with_events_prefix(events_prefix: impl Into<String>) -> Self {
        Self {
            events_prefix: events_prefix.into(),
            ..Self::default()
        }
    }

    /// Where `session`'s accepted frames are published.
    pub fn event(&self, session: &SessionId) -> String {
        format!("{}.{}", self.events_prefix, session.token())
    }

    /// The wildcard subject the event stream listens on.
    pub fn events_filter(&self) -> String {
        format!("{}.*", self.events_prefix)
    }

    /// Recovers the session of an accepted frame from its subject.
    pub fn session_of_event(&self, subject: &str) -> Option<SessionId> {
        let token = subject
            .strip_prefix(self.events_prefix.as_str())?
            .strip_prefix('.')?;
        SessionId::from_token(token)
    }

    /// Where a dead letter of the session with `token` is published (the
    /// token of a message's subject, which may name no valid session).
    pub fn dead_letter(&self, token: &str) -> String {
        format!("{}.{token}", self.dead_letters_prefix)
    }

    /// The wildcard subject the dead-letter stream listens on.
    pub fn dead_letters_filter(&self) -> String {
        format!("{}.>", self.dead_letters_prefix)
    }

    /// Where changes to `session`'s document are announced.
    pub fn update(&self, session: &SessionId) -> String {
        format!("{}.{}", self.updates_prefix, session.token())
    }
}

/// The subjects of the session lifecycle (docs/design.md "Session
/// lifecycle"). A session's timer is one scheduled message:
/// `<timers>.open.<token>` while it is open (its close), or
/// `<timers>.closed.<token>` once closed (its compaction); when it fires the
/// server publishes `<timers>.due.<token>`. Its finished message is
/// `<sessions>.<token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleSubjects {
    pub timers_prefix: String,
    pub sessions_prefix: String,
}

impl Default for LifecycleSubjects {
    fn default() -> Self {
        Self {
            timers_prefix: DEFAULT_TIMERS_PREFIX.to_owned(),
            sessions_prefix: DEFAULT_SESSIONS_PREFIX.to_owned(),
        }
    }
}

impl LifecycleSubjects {
    /// Where an open `session`'s close is scheduled (one message: a new
    /// schedule replaces the pending one).
    pub fn open_timer(&self, session: &SessionId) -> String {
        format!("{}.open.{}", self.timers_prefix, session.token())
    }

    /// Where a closed `session`'s compaction is scheduled.
    pub fn closed_timer(&self, session: &SessionId) -> String {
        format!("{}.closed.{}", self.timers_prefix, session.token())
    }

    /// The open sessions' timers (one each: counting them counts the
    /// sessions whose close is pending).
    pub fn open_timers_filter(&self) -> String {
        format!("{}.open.*", self.timers_prefix)
    }

    /// Where the server publishes `session`'s timer when it fires.
    pub fn timer_due(&self, session: &SessionId) -> String {
        format!("{}.due.{}", self.timers_prefix, session.token())
    }

    /// The subjects the timers stream listens on.
    pub fn timers_filter(&self) -> String {
        format!("{}.>", self.timers_prefix)
    }

    /// The fired timers, which the processors consume.
    pub fn timers_due_filter(&self) -> String {
        format!("{}.due.*", self.timers_prefix)
    }

    /// Recovers the session of a fired timer from its subject.
    pub fn session_of_timer_due(&self, subject: &str) -> Option<SessionId> {
        let token = subject
            .strip_prefix(self.timers_prefix.as_str())?
            .strip_prefix(".due.")?;
        SessionId::from_token(token)
    }

    /// Where `session`'s finished message is published.
    pub fn finished(&self, session: &SessionId) -> String {
        format!("{}.{}", self.sessions_prefix, session.token())
    }

    /// The subjects the finished-sessions stream listens on.
    pub fn finished_filter(&self) -> String {
        format!("{}.*", self.sessions_prefix)
    }
}

/// The Redis keys, all under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Prefix of every key, e.g. `sf:`; never holds `{` or `}`, which would
    /// move the hash tag.
    pub prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_KEY_PREFIX)
    }
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The keys of one session.
    pub fn session(&self, session: &SessionId) -> SessionKeys {
        let token = session.token();
        let prefix = &self.prefix;
        SessionKeys {
            doc: format!("{prefix}doc:{{{token}}}"),
            state: format!("{prefix}st:{{{token}}}"),
            summary: format!("{prefix}sum:{{{token}}}"),
            names: format!("{prefix}nm:{{{token}}}"),
        }
    }

    /// What every session summary's key starts with: the prefix the query
    /// engine's index of sessions covers.
    pub fn summary_prefix(&self) -> String {
        format!("{}sum:", self.prefix)
    }

    /// The name of the query engine's index over the session summaries
    /// (docs/design.md §4.2) on a single server; on a Redis Cluster every
    /// master holds its own, [`cluster_sessions_index`](Self::cluster_sessions_index).
    pub fn sessions_index(&self) -> String {
        format!("{}sessions", self.prefix)
    }

    /// The index of sessions of one Redis Cluster master, `tag` a hash tag
    /// of one of its slots: the query engine's commands name their index
    /// like a key, so a master answers only for names in its own slots.
    pub fn cluster_sessions_index(&self, tag: &str) -> String {
        format!("{}sessions:{{{tag}}}", self.prefix)
    }

    /// The applied-floor marker of a single Redis server (the processor's
    /// repair reads it to tell lost writes).
    pub fn applied_marker(&self) -> String {
        format!("{}applied", self.prefix)
    }

    /// The applied-floor marker of one Redis Cluster master: `tag` is a
    /// hash tag of the master's lowest slot, so the marker lives there.
    pub fn cluster_applied_marker(&self, tag: &str) -> String {
        format!("{}applied:{{{tag}}}", self.prefix)
    }
}

/// The Redis keys of one session. All carry the hash tag `{<token>}`, so they
/// share one Redis Cluster slot and one atomic script may touch them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// The RedisJSON document served by the api.
    pub doc: String,
    /// Hash: the session's state beside its document (identities for
    /// de-duplication, the order of the children, counters); see the apply
    /// step's layout in docs/design.md §4.
    pub state: String,
    /// RedisJSON: the session's summary (bounds, state, counts, arrivals,
    /// event names), which the apply step rewrites whole and the query
    /// engine indexes for `GET /sessions`.
    pub summary: String,
    /// Sorted set: the distinct event names of the session's children (as
    /// tokens, all scores 0, so in byte order), from which the summary
    /// lists the first ones.
    pub names: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(raw: &str) -> SessionId {
        SessionId::parse(raw).unwrap()
    }

    #[test]
    fn every_subject_of_a_session_is_its_token_under_a_prefix() {
        let subjects = Subjects::default();
        let id = session("a.b");
        assert_eq!(subjects.event(&id), "sessionfold.events.a_2eb");
        assert_eq!(subjects.events_filter(), "sessionfold.events.*");
        assert_eq!(subjects.dead_letter(&id.token()), "sessionfold.dead.a_2eb");
        assert_eq!(subjects.dead_letters_filter(), "sessionfold.dead.>");
        assert_eq!(subjects.update(&id), "sessionfold.updates.a_2eb");
        assert_eq!(
            subjects.session_of_event("sessionfold.events.a_2eb"),
            Some(id)
        );
    }

    #[test]
    fn a_sessions_timer_fires_on_a_subject_that_names_it_and_no_other_timer() {
        let subjects = LifecycleSubjects::default();
        let id = session("a.b");
        assert_eq!(subjects.open_timer(&id), "sessionfold.timers.open.a_2eb");
        assert_eq!(
            subjects.closed_timer(&id),
            "sessionfold.timers.closed.a_2eb"
        );
        assert_eq!(subjects.timer_due(&id), "sessionfold.timers.due.a_2eb");
        assert_eq!(subjects.finished(&id), "sessionfold.sessions.a_2eb");
        assert_eq!(
            subjects.session_of_timer_due("sessionfold.timers.due.a_2eb"),
            Some(id.clone())
        );
        // Schedules are never taken for fired timers.
        assert_eq!(
            subjects.session_of_timer_due(&subjects.open_timer(&id)),
            None
        );
        assert_eq!(
            subjects.session_of_timer_due(&subjects.closed_timer(&id)),
            None
        );
    }

    #[test]
    fn only_the_events_prefix_names_an_event_subject() {
        let subjects = Subjects::with_events_prefix("run.events");
        assert_eq!(
            subjects.session_of_event("run.events.s"),
            Some(session("s"))
        );
        assert_eq!(subjects.session_of_event("sessionfold.events.s"), None);
        assert_eq!(subjects.session_of_event("run.eventss"), None);
        assert_eq!(subjects.updates_prefix, DEFAULT_UPDATES_PREFIX);
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::default().session(&session("s}{1"));
        assert_eq!(keys.doc, "sf:doc:{s_7d_7b1}");
        assert_eq!(keys.state, "sf:st:{s_7d_7b1}");
        assert_eq!(keys.summary, "sf:sum:{s_7d_7b1}");
        assert_eq!(keys.names, "sf:nm:{s_7d_7b1}");
        assert!(keys.summary.starts_with(&Keys::default().summary_prefix()));
        assert_eq!(Keys::new("run:").sessions_index(), "run:sessions");
        assert_eq!(
            Keys::new("run:").cluster_sessions_index("s7"),
            "run:sessions:{s7}"
        );
        assert_eq!(Keys::new("run:").session(&session("s")).doc, "run:doc:{s}");
        assert_eq!(Keys::default().applied_marker(), "sf:applied");
        assert_eq!(
            Keys::default().cluster_applied_marker("s7"),
            "sf:applied:{s7}"
        );
    }
}
