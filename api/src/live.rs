//! Live updates: `GET /data/stream?session_id=X` is a Server-Sent Events
//! stream that pushes the session's document (event `document`) when the
//! stream opens and after every change. The processor publishes a note on
//! `<UPDATES_SUBJECT_PREFIX>.<token>` after each apply; the api subscribes
//! to the session's subject (before it reads, so no change is missed) and
//! reads the document again on each note. No polling.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use sessionfold_core::SessionId;

/// Where updates are announced.
#[derive(Debug, Clone, clap::Args)]
pub struct LiveSettings {
    /// NATS server(s) carrying update notes; without it `/data/stream` answers 503.
    #[arg(long = "nats-url", env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Subject prefix of update notes; a session's is `<prefix>.<token>`.
    #[arg(
        long,
        env = "UPDATES_SUBJECT_PREFIX",
        default_value = "sessionfold.updates"
    )]
    pub updates_subject_prefix: String,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            nats_url: None,
            updates_subject_prefix: "sessionfold.updates".to_owned(),
        }
    }
}

/// The subject on which the processor announces changes to `session`.
pub fn updates_subject(prefix: &str, session: &SessionId) -> String {
    format!("{prefix}.{}", session.token())
}

/// A live view's source: the NATS connection and the prefix.
#[derive(Clone)]
pub struct Live {
    pub client: async_nats::Client,
    pub prefix: String,
}

/// The SSE stream of one session's document.
pub async fn document_stream(
    live: Live,
    redis: sessionfold_common::redis_conn::RedisConnection,
    key: String,
    session: SessionId,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, async_nats::SubscribeError> {
    let notes = live
        .client
        .subscribe(updates_subject(&live.prefix, &session))
        .await?;
    // A first tick reads the document as it is now; every note reads it again.
    let ticks = futures::stream::once(async {}).chain(notes.map(|_| ()));
    let mut last: Option<String> = None;
    let events = ticks
        .then(move |()| {
            let key = key.clone();
            let mut redis = redis.clone();
            async move {
                redis::cmd("JSON.GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut redis)
                    .await
            }
        })
        .filter_map(move |read| {
            let event = match read {
                Ok(Some(document)) if last.as_ref() != Some(&document) => {
                    last = Some(document.clone());
                    Some(Ok(Event::default().event("document").data(document)))
                }
                Ok(_) => None,
                Err(err) => {
                    tracing::warn!(error = %err, "reading a document for a live view");
                    None
                }
            };
            futures::future::ready(event)
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The session timeline page: start, end and the children on a time axis,
/// live from `/data/stream`. Plain HTML and JavaScript, no external assets.
pub const TIMELINE_PAGE: &str = include_str!("../assets/timeline.html");

/// `GET /sessions` and `GET /sessions/{id}`: the timeline page (it reads
/// the session from its own path).
pub async fn timeline() -> axum::response::Html<&'static str> {
    axum::response::Html(TIMELINE_PAGE)
}
