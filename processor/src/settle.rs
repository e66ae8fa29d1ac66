//! What becomes of one pulled message, decided from what happened to it
//! alone: a pure function, so every branch is pinned by a unit test.
//!
//! | outcome | settlement |
//! |---|---|
//! | stored (its effect is in Redis, durably as `REDIS_DURABILITY` asks) | ack |
//! | not stored: an outage, or a shutdown came first | nak, redelivered soon (outages never use up attempts) |
//! | refused by Redis, attempts left | nak with a longer delay |
//! | refused by Redis, `MAX_ATTEMPTS` deliveries used | dead letter (`refused`) |
//! | poison: cannot be decoded, no JetStream metadata | dead letter (`poison`) at once |
//! | late: its session closed longer ago than the allowed lateness | dead letter (`late`, reason `session_closed`) at once |
//!
//! While an outage lasts, the batch is kept alive with in-progress acks
//! ([`crate::worker`]); the settlement happens once it is over.

use std::time::Duration;

/// What happened to one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect is stored.
    Stored,
    /// Not stored, through no fault of its own (an outage, a shutdown).
    NotStored,
    /// Redis refused it (a full session, a key of the wrong type).
    Refused(String),
    /// It can never be applied.
    Poison(String),
    /// Its session closed longer ago than the allowed lateness.
    Late(String),
}

/// Why a message went to the dead-letter stream; labels the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind {
    Poison,
    Refused,
    Late,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Poison => "poison",
            Self::Refused => "refused",
            Self::Late => "late",
        }
    }
}

/// How a message is settled with JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Ack,
    /// Not stored: nak, redeliver after this delay.
    Redeliver(Duration),
    /// Refused with attempts left: nak, redeliver after this delay.
    RetryRefused(Duration),
    DeadLetter {
        kind: DeadLetterKind,
        reason: String,
    },
}

impl Settlement {
    /// The `outcome` label of `sessionfold_processor_messages_total`.
    pub fn metric_outcome(&self) -> &'static str {
        match self {
            Self::Ack => "acked",
            Self::Redeliver(_) => "retried",
            Self::RetryRefused(_) => "refused",
            Self::DeadLetter { .. } => "dead_lettered",
        }
    }
}

/// First redelivery delay of a message that was not stored; grows with the
/// deliveries so far, up to ten times.
const NOT_STORED_DELAY: Duration = Duration::from_millis(200);
/// First redelivery delay of a refused message.
const REFUSED_DELAY: Duration = Duration::from_millis(500);

/// Settles a message that had `outcome` on its `delivered`-th delivery.
pub fn settle(outcome: Outcome, delivered: i64, max_attempts: i64) -> Settlement {
    let times = delivered.clamp(1, 10) as u32;
    match outcome {
        Outcome::Stored => Settlement::Ack,
        Outcome::NotStored => Settlement::Redeliver(NOT_STORED_DELAY * times),
        Outcome::Refused(reason) if delivered >= max_attempts => Settlement::DeadLetter {
            kind: DeadLetterKind::Refused,
            reason,
        },
        Outcome::Refused(_) => Settlement::RetryRefused(REFUSED_DELAY * times),
        Outcome::Poison(reason) => Settlement::DeadLetter {
            kind: DeadLetterKind::Poison,
            reason,
        },
        Outcome::Late(detail) => Settlement::DeadLetter {
            kind: DeadLetterKind::Late,
            reason: late_reason(&detail),
        },
    }
}

/// The stable reason code of a late frame's dead letter.
pub const SESSION_CLOSED: &str = "session_closed";

/// `session_closed`, then what Redis said (without its error code).
fn late_reason(detail: &str) -> String {
    let detail = detail
        .split_once(crate::store::CLOSED_CODE)
        .map_or(detail, |(_, rest)| rest)
        .trim_start_matches([':', ' ', '-']);
    format!("{SESSION_CLOSED}: {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_message_is_acked() {
        assert_eq!(settle(Outcome::Stored, 1, 5), Settlement::Ack);
        assert_eq!(settle(Outcome::Stored, 99, 5), Settlement::Ack);
    }

    #[test]
    fn a_message_not_stored_is_redelivered_and_never_dead_lettered() {
        assert_eq!(
            settle(Outcome::NotStored, 1, 5),
            Settlement::Redeliver(Duration::from_millis(200))
        );
        assert_eq!(
            settle(Outcome::NotStored, 3, 5),
            Settlement::Redeliver(Duration::from_millis(600))
        );
        // However often an outage met it.
        assert_eq!(
            settle(Outcome::NotStored, 1000, 5),
            Settlement::Redeliver(Duration::from_secs(2))
        );
    }

    #[test]
    fn a_refused_message_is_retried_until_its_attempts_are_used() {
        let refused = || Outcome::Refused("SESSIONFOLD_FULL".to_owned());
        assert_eq!(
            settle(refused(), 1, 5),
            Settlement::RetryRefused(Duration::from_millis(500))
        );
        assert_eq!(
            settle(refused(), 4, 5),
            Settlement::RetryRefused(Duration::from_millis(2000))
        );
        assert_eq!(
            settle(refused(), 5, 5),
            Settlement::DeadLetter {
                kind: DeadLetterKind::Refused,
                reason: "SESSIONFOLD_FULL".to_owned()
            }
        );
        assert_eq!(settle(refused(), 1, 5).metric_outcome(), "refused");
        assert_eq!(settle(refused(), 1, 1).metric_outcome(), "dead_lettered");
    }

    #[test]
    fn poison_is_dead_lettered_at_once() {
        assert_eq!(
            settle(Outcome::Poison("not a frame".to_owned()), 1, 5),
            Settlement::DeadLetter {
                kind: DeadLetterKind::Poison,
                reason: "not a frame".to_owned()
            }
        );
    }

    #[test]
    fn a_late_frame_is_dead_lettered_at_once_as_session_closed() {
        let settlement = settle(
            Outcome::Late(
                "SESSIONFOLD_CLOSED: the session closed (idle) at 1000 and takes no frame past its allowed lateness".to_owned(),
            ),
            1,
            5,
        );
        assert_eq!(
            settlement,
            Settlement::DeadLetter {
                kind: DeadLetterKind::Late,
                reason: "session_closed: the session closed (idle) at 1000 and takes no frame past its allowed lateness".to_owned()
            }
        );
    }
}
