//! The sessionfold domain, shared by every service: what a session is, what a
//! frame may contain, and how a session's events fold into one document.
//!
//! - [`session`]: [`SessionId`], the validated session identifier, and the
//!   injective token that names its NATS subjects and Redis keys.
//! - [`names`]: [`Subjects`] and [`Keys`], every NATS subject and Redis key
//!   sessionfold uses, and their default prefixes.
//! - [`frame`]: parsing and validating one WebSocket text frame ([`Frame::parse`]).
//! - [`event`]: one validated event and its de-duplication identity.
//! - [`protocol`]: the reply frames sent back to producers and their error codes.
//! - [`fold`]: the fold rules (docs/design.md §2.1): a batch reference fold and the
//!   incremental fold that the processor's Redis step implements.
//! - [`limits`]: the configurable input limits.
//! - [`summary`]: session summaries, which `GET /sessions` lists: the
//!   names they keep, their sort keys and the reference [`summary::summarize`].
//! - [`backoff`] and [`rng`]: the one retry schedule and the one seeded
//!   random number generator, shared by the services, the client and the
//!   harnesses.
//! - `strategies` (feature `proptest`): generators of frame streams and
//!   delivery schedules for property tests.

pub mod backoff;
pub mod event;
pub mod fold;
pub mod frame;
pub mod limits;
pub mod names;
pub mod protocol;
pub mod rng;
pub mod session;
#[cfg(any(test, feature = "proptest"))]
pub mod strategies;
pub mod summary;

pub use backoff::Backoff;
pub use event::{Event, EventKind};
pub use fold::{Delivery, IncrementalFold, fold};
pub use frame::Frame;
pub use limits::Limits;
pub use names::{Keys, LifecycleSubjects, SessionKeys, Subjects};
pub use protocol::{ErrorCode, FrameError, Reply};
pub use rng::SeededRng;
pub use session::{SessionId, SessionIdError};
