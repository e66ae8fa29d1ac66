//! `/healthz` and `/readyz` for every service.
//!
//! `/healthz` answers 200 while the process serves HTTP at all. `/readyz`
//! answers 200 only when every dependency the service uses is reachable and
//! set up (NATS connected, Redis answering `PING`, the stream and the durable
//! consumer present), and 503 as soon as a shutdown starts. The dependency
//! checks are cached for [`CACHE_TTL`], so frequent probes stay cheap; the
//! shutdown gate is read on every probe. The body tells which check failed:
//! `{"status":"ready"|"not_ready","checks":{"nats":"ok","redis":"...",...}}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use serde_json::json;

/// How long a readiness result is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// Longest one dependency check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;
type Gate = Arc<dyn Fn() -> bool + Send + Sync>;

/// A service's readiness: dependency checks (cached) and shutdown gates (not
/// cached). Cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(String, Check)>,
    gates: Vec<Gate>,
    cache: Arc<tokio::sync::Mutex<Option<(Instant, Report)>>>,
}

/// One readiness evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub ready: bool,
    /// Each check's outcome: `ok` or why it failed; `shutdown` when stopping.
    pub checks: BTreeMap<String, String>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a dependency check named `name`.
    pub fn check<F, Fut>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: Check = Arc::new(move || Box::pin(check()));
        self.checks.push((name.into(), check));
        self
    }

    /// Not ready whenever `is_stopping` says so; read on every probe.
    pub fn unless_stopping(
        mut self,
        is_stopping: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        self.gates.push(Arc::new(is_stopping));
        self
    }

    /// Every check and gate of `self` and `other` (the dev mode's readiness
    /// is all of its services').
    pub fn and(mut self, other: Readiness) -> Self {
        for (name, check) in other.checks {
            if !self.checks.iter().any(|(known, _)| *known == name) {
                self.checks.push((name, check));
            }
        }
        self.gates.extend(other.gates);
        self
    }

    /// Evaluates readiness, reusing a result younger than [`CACHE_TTL`].
    pub async fn report(&self) -> Report {
        if self.gates.iter().any(|is_stopping| is_stopping()) {
            return Report {
                ready: false,
                checks: BTreeMap::from([("shutdown".to_owned(), "stopping".to_owned())]),
            };
        }
        // Held while checking, so concurrent probes share one evaluation.
        let mut cache = self.cache.lock().await;
        if let Some((at, report)) = cache.as_ref()
            && at.elapsed() < CACHE_TTL
        {
            return report.clone();
        }
        let outcomes = futures::future::join_all(self.checks.iter().map(|(name, check)| {
            let check = check();
            async move {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                    Ok(Ok(())) => "ok".to_owned(),
                    Ok(Err(reason)) => reason,
                    Err(_) => format!("no answer within {CHECK_TIMEOUT:?}"),
                };
                (name.clone(), outcome)
            }
        }))
        .await;
        let report = Report {
            ready: outcomes.iter().all(|(_, outcome)| outcome == "ok"),
            checks: outcomes.into_iter().collect(),
        };
        if !report.ready {
            tracing::debug!(checks = ?report.checks, "not ready");
        }
        *cache = Some((Instant::now(), report.clone()));
        report
    }

    /// Adds a check that the NATS connection is up.
    pub fn nats(self, client: async_nats::Client) -> Self {
        self.check("nats", move || {
            let state = client.connection_state();
            async move {
                match state {
                    async_nats::connection::State::Connected => Ok(()),
                    other => Err(format!("NATS is {other}")),
                }
            }
        })
    }

    /// Adds a check that the JetStream stream `stream` exists.
    pub fn stream(self, js: jetstream::Context, stream: String) -> Self {
        self.check("stream", move || {
            let js = js.clone();
            let stream = stream.clone();
            async move {
                js.get_stream(&stream)
                    .await
                    .map(drop)
                    .map_err(|err| format!("stream {stream}: {err}"))
            }
        })
    }

    /// Adds a check that the durable consumer `consumer` of `stream` exists.
    pub fn consumer(self, js: jetstream::Context, stream: String, consumer: String) -> Self {
        self.check("consumer", move || {
            let js = js.clone();
            let stream = stream.clone();
            let consumer = consumer.clone();
            async move {
                let stream_handle = js
                    .get_stream(&stream)
                    .await
                    .map_err(|err| format!("stream {stream}: {err}"))?;
                stream_handle
                    .consumer_info(&consumer)
                    .await
                    .map(drop)
                    .map_err(|err| format!("consumer {consumer}: {err}"))
            }
        })
    }

    /// Adds a check that Redis answers `PING` (on a cluster: every primary).
    pub fn redis<C>(self, connection: C) -> Self
    where
        C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
    {
        self.check("redis", move || {
            let mut connection = connection.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<()>(&mut connection)
                    .await
                    .map_err(|err| format!("Redis: {err}"))
            }
        })
    }
}

/// `GET /healthz` and `GET /readyz` for `readiness`.
pub fn routes(readiness: Readiness) -> Router {
    liveness_routes().merge(readiness_routes(readiness))
}

/// `GET /healthz`: the process answers. Always open, for liveness probes.
pub fn liveness_routes() -> Router {
    Router::new().route("/healthz", get(|| async { "ok" }))
}

/// `GET /readyz`: what `readiness` finds of the service's dependencies.
pub fn readiness_routes(readiness: Readiness) -> Router {
    Router::new().route(
        "/readyz",
        get(move || {
            let readiness = readiness.clone();
            async move {
                let report = readiness.report().await;
                let (status, word) = if report.ready {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
                };
                (
                    status,
                    Json(json!({"status": word, "checks": report.checks})),
                )
                    .into_response()
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[tokio::test]
    async fn checks_are_cached_and_the_shutdown_gate_is_not() {
        let calls = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let counted = calls.clone();
        let gate = stopping.clone();
        let readiness = Readiness::new()
            .check("dependency", move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })
            .unless_stopping(move || gate.load(Ordering::SeqCst));
        for _ in 0..5 {
            assert!(readiness.report().await.ready);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one check within the cache time"
        );
        stopping.store(true, Ordering::SeqCst);
        let report = readiness.report().await;
        assert!(!report.ready);
        assert_eq!(report.checks["shutdown"], "stopping");
    }

    #[tokio::test]
    async fn a_failing_check_names_its_reason() {
        let readiness = Readiness::new()
            .check("good", || async { Ok(()) })
            .check("bad", || async { Err("down".to_owned()) });
        let report = readiness.report().await;
        assert!(!report.ready);
        assert_eq!(report.checks["good"], "ok");
        assert_eq!(report.checks["bad"], "down");
    }
}
