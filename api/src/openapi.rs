//! The api describes itself: an OpenAPI document generated from the code
//! with utoipa, served at `GET /openapi.json`.
//!
//! `GET /data` and `GET /data/stream` are described by the
//! `#[utoipa::path]` on their handlers ([`crate::server`]) with the
//! parameter and response types below. The
//! health, readiness and metrics routes are shared by every service
//! (`sessionfold_common::health`, `sessionfold_common::metrics`); the
//! functions here describe them for this service's document.
//!
//! The suite runs schemathesis against a live api with this document
//! (`e2e/tests/e2e/openapi.rs`), so what it says is checked against what the
//! service answers; `/data/stream` is left out of that run, since a stream
//! that is working never ends.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::routing::get;
use serde::Serialize;
use utoipa::{IntoParams, IntoResponses, OpenApi, ToSchema};

/// The OpenAPI document of the api.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sessionfold api",
        description = "Reads the document sessionfold folds from a session's events. \
            Every response carries `X-Request-Id` (the request's `X-Request-Id` when it is \
            1–64 bytes of printable ASCII, else a new id).",
    ),
    paths(
        crate::server::data,
        crate::server::data_stream,
        crate::children::page,
        crate::sessions::list,
        healthz,
        readyz,
        metrics,
        openapi_json
    ),
    components(schemas(
        SessionDocument,
        ChildrenPage,
        SessionsPage,
        SessionSummary,
        Child,
        ErrorBody,
        ErrorDetail,
        TooLargeBody,
        TooLargeDetail,
        ReadinessReport
    )),
    tags(
        (name = "documents", description = "Session documents"),
        (name = "sessions", description = "Finding sessions by their summaries"),
        (name = "operations", description = "Health, readiness, metrics and this description"),
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub fn routes() -> Router {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}

/// The query of `GET /data`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DataQuery {
    /// The session whose document to read: 1–128 bytes (`MAX_SESSION_ID_BYTES`)
    /// of UTF-8 without control characters. The schema states the printable
    /// ASCII subset, which UUIDs and most ids use; other valid ids are served
    /// alike.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = "^[ -~]+$",
        example = "e6fa79ca-d142-4046-a134-5134f16a0b5e"
    )]
    session_id: String,
    /// A bearer token, for links and browsers that cannot set
    /// `Authorization: Bearer …` (needed only when the api requires
    /// credentials, `AUTH_REQUIRED=true`).
    token: Option<String>,
}

/// Read your writes on `GET /data` (docs/design.md §1.5).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct MinSeqQuery {
    /// Answer only once every accepted frame up to this JetStream stream
    /// sequence (the `seq` of an accepted reply) is applied: the
    /// document then holds the session's frames up to it.
    #[param(minimum = 1, example = 1)]
    min_seq: Option<u64>,
    /// How long to wait for `min_seq`, in milliseconds (0, the default:
    /// check once); at most `API_MAX_WAIT_MS` (10 000 by default). Without
    /// `min_seq` it changes nothing.
    #[param(minimum = 0, maximum = 10000, example = 1000)]
    wait_ms: Option<u64>,
}

/// Conditional request headers of `GET /data`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct ConditionalHeaders {
    /// Entity tags the client holds (or `*`): when one is the document's
    /// current `ETag`, the answer is `304` without a body.
    #[param(rename = "If-None-Match")]
    if_none_match: Option<String>,
}

/// The answers of `GET /data`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum DataResponses {
    /// The session's document, exactly as stored.
    #[response(
        status = 200,
        content_type = "application/json",
        headers(
            ("ETag" = String, description = "Strong entity tag: the quoted 128-bit XXH3 hash (hex) of the document's bytes"),
            ("Cache-Control" = String, description = "`no-cache`: revalidate with `If-None-Match`"),
            ("Sessionfold-Session-State" = String, description = "`open`, or why the session closed: `ended`, `idle` or `max_duration`"),
            ("X-Request-Id" = String, description = "The request's id"),
        )
    )]
    Document(SessionDocument),
    /// The document has not changed since the `ETag` named in `If-None-Match`.
    #[response(
        status = 304,
        headers(
            ("ETag" = String, description = "The document's current entity tag"),
            ("Sessionfold-Session-State" = String, description = "The session's state, as on `200`"),
            ("X-Request-Id" = String, description = "The request's id"),
        )
    )]
    NotModified,
    /// `invalid_session_id`: `session_id` is missing or not a valid
    /// session id; `invalid_min_seq`, `invalid_wait_ms`: `min_seq` is not
    /// an integer from 1, `wait_ms` not one from 0 to `API_MAX_WAIT_MS`.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `unauthorized`, `invalid_token` or `token_expired`: a credential is
    /// required (only with `AUTH_REQUIRED=true`).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `forbidden`: the credential does not grant reading this session.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `not_found`: no document for this session (yet: documents appear
    /// once the processor applied the session's first frame).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// `document_too_large`: the document is larger than this api serves
    /// whole (`API_MAX_DOCUMENT_BYTES`, 8 MiB by default). Retrying does
    /// not help; such documents are read in pages from
    /// `GET /data/children`.
    #[response(status = 413)]
    TooLarge(TooLargeBody),
    /// `rate_limited`: this client made too many requests;
    /// `too_many_waiters`: `API_MAX_WAITERS_PER_IP` `min_seq` reads of
    /// this client address are waiting. Retry after `Retry-After` seconds.
    #[response(
        status = 429,
        headers(("Retry-After" = u64, description = "Seconds to wait"))
    )]
    RateLimited(ErrorBody),
    /// `unavailable`: Redis could not be read within the read deadline
    /// (`API_READ_TIMEOUT_MS`), too many large documents are being
    /// served at once, or (`min_seq`) JetStream could not be asked;
    /// `not_yet_applied`: the frames up to `min_seq` were not all applied
    /// within `wait_ms`; `too_many_waiters`: `API_MAX_WAITERS` `min_seq`
    /// reads are waiting. Retry after `Retry-After` seconds.
    #[response(
        status = 503,
        headers(("Retry-After" = u64, description = "Seconds to wait"))
    )]
    Unavailable(ErrorBody),
}

/// The answers of `GET /data/stream`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum StreamResponses {
    /// A Server-Sent Events stream (docs/design.md §3.2); each event of a
    /// revision has it as its `id`. Event `document`: the session's
    /// document (the JSON `GET /data` serves), when the stream opens and
    /// again whenever the changes could not be followed. Event `delta`:
    /// `{"start"?: number, "end"?: number, "changes": [{"insert": I,
    /// "children": […]} | {"remove": I}, …]}`, the changes to `children` in
    /// order and the bounds that moved; applied in order to the last
    /// `document` they give the document of their `id`. Event `state`:
    /// `{"state": "open" | "ended" | "idle" | "max_duration"}` when the
    /// session's state changes (after the `document` on opening when it
    /// is not `open`). Event `end`, the last: data `{"reason": …}`, one
    /// of `max_lifetime` (open for `API_STREAM_MAX_SECS`; reconnect),
    /// `token_expired` (the token that opened it expired), `too_slow` (the
    /// client fell `API_STREAM_BUFFER` events behind; reconnect),
    /// `shutdown`, `unavailable`, `not_found` (the session had no document
    /// for `API_STREAM_ABSENT_SECS`), or `document_too_large` (over
    /// `API_MAX_DOCUMENT_BYTES`; the data also holds the `error` of
    /// `GET /data`'s 413). Comment lines keep an idle stream open.
    #[response(
        status = 200,
        content_type = "text/event-stream",
        headers(("X-Request-Id" = String, description = "The request's id"))
    )]
    Events(String),
    /// `invalid_session_id`: `session_id` is missing or not a valid session id.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `unauthorized`, `invalid_token` or `token_expired` (only with
    /// `AUTH_REQUIRED=true`).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `forbidden`: the credential does not grant reading this session.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `rate_limited` (requests per second) or `too_many_streams` (this
    /// client address has `API_MAX_STREAMS_PER_IP` streams open); retry
    /// after `Retry-After` seconds.
    #[response(
        status = 429,
        headers(("Retry-After" = u64, description = "Seconds to wait"))
    )]
    TooMany(ErrorBody),
    /// `too_many_streams` (`API_MAX_STREAMS` are open in all) or
    /// `unavailable` (the api has no NATS connection for updates).
    #[response(
        status = 503,
        headers(("Retry-After" = u64, description = "Seconds to wait"))
    )]
    Unavailable(ErrorBody),
}

/// The page of `GET /data/children`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ChildrenQuery {
    /// The first child's position, from 0 (default 0); a position past
    /// the last child gives an empty page. With `since`/`until`, the page
    /// starts here or where the range starts, whichever is later (`next`
    /// of the previous page continues the range).
    #[param(minimum = 0, maximum = 1_000_000_000_000_i64)]
    from: Option<u64>,
    /// By timestamp: children whose `timestamp` is at least this.
    since: Option<f64>,
    /// By timestamp: children whose `timestamp` is at most this (below
    /// `since`, the range is empty).
    until: Option<f64>,
    /// Most children in the page: 1 to `API_CHILDREN_MAX_PAGE` (1000 by
    /// default), which is also the default. A page stops early once its
    /// children pass `API_CHILDREN_PAGE_BYTES` (256 KiB); `next` says where
    /// the rest begins.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The answers of `GET /data/children`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ChildrenResponses {
    /// A page of the session's children, each exactly as `GET /data` serves it.
    #[response(
        status = 200,
        content_type = "application/json",
        headers(("X-Request-Id" = String, description = "The request's id"))
    )]
    Page(ChildrenPage),
    /// `invalid_session_id` or `invalid_query` (a parameter that is not a
    /// number, or out of its range).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `unauthorized`, `invalid_token` or `token_expired` (only with
    /// `AUTH_REQUIRED=true`).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `forbidden`: the credential does not grant reading this session.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `not_found`: no document for this session.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// `page_too_large`: the page's children are over
    /// `API_MAX_DOCUMENT_BYTES`; ask for fewer.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `rate_limited`; retry after `Retry-After` seconds.
    #[response(
        status = 429,
        headers(("Retry-After" = u64, description = "Seconds to wait"))
    )]
    RateLimited(ErrorBody),
    /// `unavailable`: Redis could not be read within the read deadline.
    #[response(
        status = 503,
        headers(("Retry-After" = u64, description = "Seconds to wait"))
    )]
    Unavailable(ErrorBody),
}

/// A page of a session's children.
#[derive(ToSchema)]
#[schema(example = json!({"total": 3, "from": 1, "next": 2, "children": [
    {"type": "EVENT", "timestamp": 1569972083, "name": "first_event"}
]}))]
#[allow(dead_code)]
pub struct ChildrenPage {
    /// Children in the whole document now.
    #[schema(minimum = 0)]
    total: u64,
    /// The position of the page's first child.
    #[schema(minimum = 0)]
    from: u64,
    /// Where the asked range goes on (the `from` of the next page), or
    /// `null` when this page ends it.
    #[schema(required = true, minimum = 0)]
    next: Option<u64>,
    /// The children `from`, `from + 1`, …
    children: Vec<Child>,
}

/// The query of `GET /sessions`. Every filter is optional; they combine
/// with AND.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SessionsQuery {
    /// Sessions whose `start` is at least this (a range whose low end is
    /// above its high end finds nothing).
    start_from: Option<f64>,
    /// Sessions whose `start` is at most this.
    start_to: Option<f64>,
    /// Sessions whose `end` is at least this.
    end_from: Option<f64>,
    /// Sessions whose `end` is at most this.
    end_to: Option<f64>,
    /// Sessions in one of these states, comma-separated: `open`, `ended`,
    /// `idle`, `max_duration`.
    #[param(pattern = "^(open|ended|idle|max_duration)(,(open|ended|idle|max_duration))*$")]
    state: Option<String>,
    /// Sessions with an event of this `name` among the names their summary
    /// lists (`names`; with `names_capped`, a session may have more). A
    /// name over 128 bytes, which no summary lists, finds nothing.
    #[param(min_length = 1)]
    name: Option<String>,
    /// Sessions whose session_id starts with this. One longer than
    /// `MAX_SESSION_ID_BYTES` finds nothing.
    #[param(min_length = 1)]
    prefix: Option<String>,
    /// `start` (sessions with a start by it, then the others by first
    /// arrival) or `last_activity` (latest arrival); ties by session.
    /// Default `start`.
    #[param(pattern = "^(start|last_activity)$")]
    sort: Option<String>,
    /// `asc` (default) or `desc`.
    #[param(pattern = "^(asc|desc)$")]
    order: Option<String>,
    /// Sessions in the page: 1 to `API_SESSIONS_MAX_LIMIT` (500 by
    /// default); default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page, with the same `sort` and `order`
    /// (opaque; it names the last session served, so the next page starts
    /// right after it).
    #[param(min_length = 1, max_length = 3200, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
    /// An API key, for links and browsers that cannot set
    /// `Authorization: Bearer …` (only with `AUTH_REQUIRED=true`).
    token: Option<String>,
}

/// The answers of `GET /sessions`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum SessionsResponses {
    /// A page of sessions.
    #[response(
        status = 200,
        content_type = "application/json",
        headers(("X-Request-Id" = String, description = "The request's id"))
    )]
    Page(SessionsPage),
    /// `invalid_query`: a parameter is malformed or out of its range.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `unauthorized`, `invalid_token` or `token_expired` (only with
    /// `AUTH_REQUIRED=true`).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `forbidden`: a session token, which names sessions, cannot list
    /// them all; an API key can.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `rate_limited`; retry after `Retry-After` seconds.
    #[response(
        status = 429,
        headers(("Retry-After" = u64, description = "Seconds to wait"))
    )]
    RateLimited(ErrorBody),
    /// `search_unavailable` (this Redis has no query engine or no index of
    /// sessions yet; every other route works), `search_busy` (searches used
    /// their share of Redis's time, `API_SEARCH_BUDGET_MS`) or `unavailable`
    /// (Redis could not answer within `API_SEARCH_TIMEOUT_MS`).
    #[response(
        status = 503,
        headers(("Retry-After" = u64, description = "Seconds to wait"))
    )]
    Unavailable(ErrorBody),
}

/// A page of sessions.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SessionsPage {
    sessions: Vec<SessionSummary>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// One session, from its summary (docs/design.md §4.2).
#[derive(ToSchema)]
#[schema(example = json!({"session_id": "e6fa79ca-d142-4046-a134-5134f16a0b5e", "state": "open",
    "start": 1569972082, "end": null, "children": 3, "first_arrival": 1_764_601_200_000_i64,
    "last_arrival": 1_764_601_200_480_i64, "names": ["first_event", "last_event"], "names_capped": false}))]
#[allow(dead_code)]
pub struct SessionSummary {
    session_id: String,
    /// `open`, `ended`, `idle` or `max_duration`.
    #[schema(pattern = "^(open|ended|idle|max_duration)$")]
    state: String,
    /// The document's `start`.
    #[schema(required = true)]
    start: Option<f64>,
    /// The document's `end`.
    #[schema(required = true)]
    end: Option<f64>,
    /// Children in the document.
    #[schema(minimum = 0)]
    children: u64,
    /// When its first frame reached the event stream, ms since the Unix epoch.
    #[schema(required = true)]
    first_arrival: Option<u64>,
    /// When its latest frame did.
    #[schema(required = true)]
    last_arrival: Option<u64>,
    /// Its distinct event names: at most 32, of at most 128 bytes each.
    names: Vec<String>,
    /// Whether it has names `names` leaves out.
    names_capped: bool,
}

/// A session's document (docs/design.md §2): its bounds and its events in order.
#[derive(ToSchema)]
#[schema(example = json!({
    "session_id": "e6fa79ca-d142-4046-a134-5134f16a0b5e",
    "type": "SESSION",
    "start": 1569972082,
    "end": 1569972086,
    "children": [
        {"type": "EVENT", "timestamp": 1569972083, "name": "middle_event"},
        {"type": "EVENT", "timestamp": 1569972085, "name": "last_event"}
    ]
}))]
#[allow(dead_code)]
pub struct SessionDocument {
    /// The session.
    session_id: String,
    /// Always `SESSION`.
    #[schema(rename = "type", value_type = String, pattern = "^SESSION$")]
    kind: String,
    /// The smallest `SESSION_START` timestamp; `null` while there is none.
    #[schema(required = true)]
    start: Option<f64>,
    /// The largest `SESSION_END` timestamp; `null` while there is none.
    #[schema(required = true)]
    end: Option<f64>,
    /// Every `EVENT` of the session exactly as sent, by timestamp; equal
    /// timestamps keep arrival order.
    children: Vec<Child>,
}

/// One event of a session, exactly as its producer sent it: the fields
/// below and any others.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Child {
    /// Always `EVENT`.
    #[schema(rename = "type", value_type = String, pattern = "^EVENT$")]
    kind: String,
    /// When it happened (epoch; the examples use seconds).
    #[schema(minimum = 0)]
    timestamp: f64,
    /// What happened.
    name: Option<String>,
    /// Its identity for de-duplication.
    id: Option<String>,
    /// The session, when the producer named it.
    session_id: Option<String>,
}

/// An error answer.
#[derive(ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "no document for this session_id"}}))]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_session_id`, `invalid_query`,
    /// `not_found`, `unavailable`, `search_unavailable`, `search_busy`,
    /// `page_too_large`,
    /// `unauthorized`, `invalid_token`, `token_expired`, `forbidden`,
    /// `rate_limited`, `too_many_streams`, `invalid_min_seq`,
    /// `invalid_wait_ms`, `not_yet_applied`, `too_many_waiters`.
    code: String,
    /// For people.
    message: String,
}

/// The answer for a document over the size limit.
#[derive(ToSchema)]
#[schema(example = json!({"error": {
    "code": "document_too_large",
    "message": "the document is 9437184 bytes, over this api's limit of 8388608 (API_MAX_DOCUMENT_BYTES); read its children in pages from GET /data/children?session_id=…&from=0&limit=…",
    "document_bytes": 9437184,
    "max_document_bytes": 8388608
}}))]
#[allow(dead_code)]
pub struct TooLargeBody {
    error: TooLargeDetail,
}

/// How large the document is, and the limit.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TooLargeDetail {
    /// `document_too_large`.
    #[schema(pattern = "^document_too_large$")]
    code: String,
    /// For people; names the limit and where to read the document instead.
    message: String,
    /// The document's size in bytes, as last read.
    #[schema(minimum = 0)]
    document_bytes: u64,
    /// `API_MAX_DOCUMENT_BYTES`.
    #[schema(minimum = 0)]
    max_document_bytes: u64,
}

/// The body of `/readyz`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ready", "checks": {"redis": "ok"}}))]
#[allow(dead_code)]
pub struct ReadinessReport {
    /// `ready` or `not_ready`.
    status: String,
    /// Each dependency check: `ok` or why it failed (`shutdown`: stopping).
    checks: BTreeMap<String, String>,
}

/// Liveness: `ok` while the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain"))
)]
#[allow(dead_code)]
fn healthz() {}

/// Readiness: Redis answers and no shutdown is under way. Results are cached
/// for one second.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = ReadinessReport),
        (status = 503, description = "Not ready: a check failed or the service is stopping", body = ReadinessReport),
    )
)]
#[allow(dead_code)]
fn readyz() {}

/// Prometheus metrics of the process, in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"))
)]
#[allow(dead_code)]
fn metrics() {}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document of the api", body = Object, content_type = "application/json"))
)]
#[allow(dead_code)]
fn openapi_json() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_route_and_the_error_schema() {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = document["paths"].as_object().unwrap();
        for path in [
            "/data",
            "/data/stream",
            "/data/children",
            "/sessions",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(paths.contains_key(path), "{path} is not described");
        }
        let data = &paths["/data"]["get"];
        for status in ["200", "304", "400", "404", "413", "429", "503"] {
            assert!(data["responses"].get(status).is_some(), "{status}");
        }
        let stream = &paths["/data/stream"]["get"];
        for status in ["200", "400", "429", "503"] {
            assert!(stream["responses"].get(status).is_some(), "{status}");
        }
        assert!(
            stream["responses"]["200"]["content"]
                .get("text/event-stream")
                .is_some()
        );
        assert!(data["responses"]["200"]["headers"].get("ETag").is_some());
        let schemas = document["components"]["schemas"].as_object().unwrap();
        assert!(schemas.contains_key("ErrorBody"));
        assert!(schemas.contains_key("SessionDocument"));
        assert_eq!(
            schemas["SessionDocument"]["properties"]["type"]["pattern"],
            "^SESSION$"
        );
    }
}
