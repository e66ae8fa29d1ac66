//! Sessions closed for good (docs/design.md §10). Under
//! `LATE_EVENTS=reject`, a connection looks its session up once, when it
//! opens; the frames of a session closed for good are then answered
//! `session_closed` instead of being published.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::FutureExt;
use futures::future::BoxFuture;
use sessionfold_core::SessionId;
use tokio::sync::OnceCell;

/// How long a look-up may take; past it the session counts as open (the
/// processor then dead-letters what it must).
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether a session takes frames no more.
pub trait ClosedSessions: Send + Sync + 'static {
    fn is_closed(&self, session: &SessionId) -> BoxFuture<'_, bool>;
}

/// The processor's key-value bucket of sessions closed for good.
pub struct ClosedBucket {
    js: jetstream::Context,
    bucket: String,
    store: OnceCell<kv::Store>,
}

impl ClosedBucket {
    pub fn new(js: jetstream::Context, bucket: impl Into<String>) -> Self {
        Self {
            js,
            bucket: bucket.into(),
            store: OnceCell::new(),
        }
    }

    async fn lookup(&self, session: &SessionId) -> Result<bool, String> {
        let store = self
            .store
            .get_or_try_init(|| async {
                self.js
                    .get_key_value(&self.bucket)
                    .await
                    .map_err(|err| err.to_string())
            })
            .await?;
        let entry = store
            .get(session.token())
            .await
            .map_err(|err| err.to_string())?;
        Ok(entry.is_some())
    }
}

impl ClosedSessions for ClosedBucket {
    fn is_closed(&self, session: &SessionId) -> BoxFuture<'_, bool> {
        let session = session.clone();
        async move {
            match tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup(&session)).await {
                Ok(Ok(closed)) => closed,
                Ok(Err(err)) => {
                    // No bucket yet (no processor closed anything), or NATS
                    // is out: publishing will tell.
                    tracing::debug!(session_id = %session, error = %err, "closed-sessions look-up failed");
                    false
                }
                Err(_) => {
                    tracing::debug!(session_id = %session, "closed-sessions look-up timed out");
                    false
                }
            }
        }
        .boxed()
    }
}
