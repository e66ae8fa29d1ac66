//! `GET /sessions`: find sessions by their summaries (docs/design.md §4.2,
//! §11) and list them in pages.
//!
//! The query engine's index holds one summary per session: `sf:sessions` on
//! a single server; on a Redis Cluster one per master, over the summaries
//! of its slots, named `sf:sessions:{<tag>}` with a hash tag of the
//! master's lowest slot (the engine's commands name their index like a key,
//! so a master answers only for names in its own slots). A request becomes
//! one `FT.AGGREGATE` on every index, at once: the indexed filters (start
//! and end ranges, state, an event name) in the query, the session_id
//! prefix and the cursor as `FILTER`s on sortable fields, then a
//! top-`limit + 1` sort by the unique sort key. It answers sort keys only
//! (fields the index holds itself). The api merges the masters' keys, keeps
//! the first `limit`, and reads those summaries by key (`JSON.GET`, in one
//! round trip). A cursor is the last sort key served, so the next page
//! starts strictly after it on every master: no session is served twice or
//! skipped, whatever was written in between (a session whose key moved is
//! served where it now stands).
//!
//! Every value a client sends reaches the query only as a number the api
//! formatted, one of a fixed set of words, or a token (letters, digits, `-`
//! and `_`, §3), escaped for the query syntax where it is a tag.
//!
//! The reads use RESP3 connections of their own: only RESP3 carries the
//! engine's warnings, and a query that ran into the engine's timeout
//! answers partial results with a warning, which must be a 503, never a
//! short page.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use redis::Value;
use serde_json::{Map, json};
use sessionfold_common::auth::bearer;
use sessionfold_common::rate_limit::retry_after_secs;
use sessionfold_common::settings::RedisSettings;
use sessionfold_common::slots::tag_for_slot;
use sessionfold_core::session::{escape_token, query_value, unescape_token};
use sessionfold_core::summary::MAX_NAME_BYTES;
use sessionfold_core::{Keys, SessionId};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::read::{Concurrent, Lane, Unavailable};
use crate::server::Shared;

/// The page size when a request names none.
pub const DEFAULT_LIMIT: u32 = 50;

/// Settings of `GET /sessions`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct SessionsSettings {
    /// Most sessions one page of `GET /sessions` may ask for (`limit`);
    /// more is refused with 400 `invalid_query`.
    #[arg(long, env = "API_SESSIONS_MAX_LIMIT", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub sessions_max_limit: u32,
    /// Redis connections for `GET /sessions` (each carries one query at a
    /// time, on every master).
    #[arg(long, env = "API_SEARCH_CONNECTIONS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub search_connections: u32,
    /// Deadline of one `GET /sessions`, in milliseconds, which is also the
    /// query engine's `TIMEOUT` for its search: a query that would run
    /// longer on Redis's main thread gets 503 `unavailable`.
    #[arg(long, env = "API_SEARCH_TIMEOUT_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub search_timeout_ms: u64,
    /// Milliseconds of Redis time per second that `GET /sessions` may take,
    /// shared by every client (a bucket holding at most one
    /// `API_SEARCH_TIMEOUT_MS`); a search that finds it spent gets 503
    /// `search_busy` with `Retry-After`. A search runs on Redis's main
    /// thread, where every small read waits for it: this keeps their p99
    /// whatever a looping client asks. 0: no budget.
    #[arg(long, env = "API_SEARCH_BUDGET_MS", default_value_t = 2)]
    pub search_budget_ms: u64,
}

/// The Redis time left to `GET /sessions`: a bucket of milliseconds that
/// refills at `API_SEARCH_BUDGET_MS` a second, up to one search's deadline.
/// A search may start while the bucket holds anything, and what its query
/// took (the round trip, which Redis's own time is part of) beyond
/// [`FREE_SEARCH`] is taken out after; a bucket below zero refuses
/// searches until it refills. A query that short holds up a small read by
/// no more than a small read's own time, so selective queries, which the
/// index answers in well under a millisecond, are never refused.
pub const FREE_SEARCH: Duration = Duration::from_millis(2);

pub struct SearchBudget {
    rate_per_ms: f64,
    capacity_ms: f64,
    left: std::sync::Mutex<(f64, Instant)>,
}

impl SearchBudget {
    pub fn new(budget_ms_per_sec: u64, capacity_ms: u64) -> Self {
        let capacity_ms = capacity_ms as f64;
        Self {
            rate_per_ms: budget_ms_per_sec as f64 / 1000.0,
            capacity_ms,
            left: std::sync::Mutex::new((capacity_ms, Instant::now())),
        }
    }

    /// `Ok` when a search may start now, else the seconds until it may.
    pub fn admit(&self) -> Result<(), u64> {
        if self.rate_per_ms == 0.0 {
            return Ok(());
        }
        let mut left = self.left.lock().expect("search budget lock");
        let now = Instant::now();
        let refilled = now.duration_since(left.1).as_secs_f64() * 1000.0 * self.rate_per_ms;
        left.0 = (left.0 + refilled).min(self.capacity_ms);
        left.1 = now;
        if left.0 > 0.0 {
            return Ok(());
        }
        let wait_ms = -left.0 / self.rate_per_ms;
        Err(((wait_ms / 1000.0).ceil() as u64).max(1))
    }

    /// Takes what a search's query took, beyond [`FREE_SEARCH`], out of
    /// the bucket.
    pub fn spend(&self, took: Duration) {
        let took = took.saturating_sub(FREE_SEARCH);
        if self.rate_per_ms == 0.0 || took.is_zero() {
            return;
        }
        self.left.lock().expect("search budget lock").0 -= took.as_secs_f64() * 1000.0;
    }
}

sessionfold_common::defaults_from_flags!(SessionsSettings);

/// What `sort` orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// `start`, then sessions without one by first arrival; ties by token.
    Start,
    /// The latest arrival; ties by token.
    LastActivity,
}

impl Sort {
    /// The summary field holding this order's unique key.
    fn field(self) -> &'static str {
        match self {
            Self::Start => "sort_start",
            Self::LastActivity => "sort_activity",
        }
    }
}

/// The states a summary can be in (§10.3).
pub const STATES: [&str; 4] = ["open", "ended", "idle", "max_duration"];

/// A parsed, validated `GET /sessions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionQuery {
    pub start: (Option<f64>, Option<f64>),
    pub end: (Option<f64>, Option<f64>),
    pub states: Vec<&'static str>,
    pub name: Option<String>,
    pub prefix: Option<String>,
    pub sort: Sort,
    pub descending: bool,
    pub limit: u32,
    /// The sort key of the last session served before this page.
    pub after: Option<String>,
    /// No session can pass the filters: the page is empty without a query.
    pub impossible: bool,
}

/// A 400 `invalid_query` saying what is wrong.
pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidQuery(message.into())
}

/// The query parameter `name`, decoded strictly, given at most once.
pub(crate) fn param(query: &str, name: &str) -> Result<Option<String>, ApiError> {
    query_value(query, name).map_err(|err| invalid(format!("{name}: {err}")))
}

/// The query parameter `name` as a finite number.
pub(crate) fn number(query: &str, name: &str) -> Result<Option<f64>, ApiError> {
    let Some(text) = param(query, name)? else {
        return Ok(None);
    };
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(Some(value)),
        _ => Err(invalid(format!("{name} must be a finite number"))),
    }
}

/// Whether `text` is a token: what a sort key and a cursor may hold.
fn is_token(text: &str) -> bool {
    text.bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

impl SessionQuery {
    /// Parses the query string of `GET /sessions`; `max_limit` caps
    /// `limit`, `max_prefix_bytes` the prefix.
    pub fn parse(
        query: Option<&str>,
        max_limit: u32,
        max_prefix_bytes: usize,
    ) -> Result<Self, ApiError> {
        let query = query.unwrap_or("");
        // A range whose low end is above its high end finds nothing.
        let range = |from: &str, to: &str| -> Result<(Option<f64>, Option<f64>), ApiError> {
            Ok((number(query, from)?, number(query, to)?))
        };
        let start = range("start_from", "start_to")?;
        let end = range("end_from", "end_to")?;
        let mut states = Vec::new();
        if let Some(list) = param(query, "state")? {
            for word in list.split(',') {
                let Some(state) = STATES.iter().find(|state| **state == word) else {
                    return Err(invalid(
                        "state must be a comma-separated list of open, ended, idle, max_duration",
                    ));
                };
                if !states.contains(state) {
                    states.push(*state);
                }
            }
        }
        // A name or prefix no session can have (a name longer than any
        // summary lists, a prefix longer than any session_id) finds nothing;
        // only an empty one is an error.
        let name = param(query, "name")?;
        let prefix = param(query, "prefix")?;
        for (what, value) in [("name", &name), ("prefix", &prefix)] {
            if value.as_deref() == Some("") {
                return Err(invalid(format!("{what} must not be empty")));
            }
        }
        let impossible = name
            .as_ref()
            .is_some_and(|name| name.len() > MAX_NAME_BYTES)
            || prefix
                .as_ref()
                .is_some_and(|prefix| prefix.len() > max_prefix_bytes);
        let sort = match param(query, "sort")?.as_deref() {
            None | Some("start") => Sort::Start,
            Some("last_activity") => Sort::LastActivity,
            Some(_) => return Err(invalid("sort must be start or last_activity")),
        };
        let descending = match param(query, "order")?.as_deref() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(_) => return Err(invalid("order must be asc or desc")),
        };
        let limit = match param(query, "limit")? {
            None => DEFAULT_LIMIT.min(max_limit),
            Some(text) => match text.parse::<u32>() {
                Ok(limit) if (1..=max_limit).contains(&limit) => limit,
                _ => {
                    return Err(invalid(format!(
                        "limit must be an integer from 1 to {max_limit} (API_SESSIONS_MAX_LIMIT)"
                    )));
                }
            },
        };
        let after = match param(query, "cursor")? {
            None => None,
            Some(cursor) => Some(decode_cursor(&cursor)?),
        };
        Ok(Self {
            start,
            end,
            states,
            name,
            prefix,
            sort,
            descending,
            limit,
            after,
            impossible,
        })
    }

    /// The query of the indexed filters, in the engine's syntax.
    pub fn query_text(&self) -> String {
        let mut parts = Vec::new();
        for (field, (low, high)) in [("start", self.start), ("end", self.end)] {
            if low.is_some() || high.is_some() {
                parts.push(format!(
                    "@{field}:[{} {}]",
                    low.map_or("-inf".to_owned(), |value| value.to_string()),
                    high.map_or("+inf".to_owned(), |value| value.to_string())
                ));
            }
        }
        if !self.states.is_empty() {
            parts.push(format!("@state:{{{}}}", self.states.join(" | ")));
        }
        if let Some(name) = &self.name {
            parts.push(format!("@names:{{{}}}", escape_tag(&escape_token(name))));
        }
        if parts.is_empty() {
            "*".to_owned()
        } else {
            parts.join(" ")
        }
    }

    /// The `FT.AGGREGATE` of one page on the index `index`: the sort keys
    /// of the first `limit + 1` sessions. Only sortable fields, which the
    /// index holds itself: on a Redis Cluster master the engine loads
    /// nothing from the keys.
    pub fn command(&self, index: &str, timeout: Duration) -> redis::Cmd {
        let field = self.sort.field();
        let mut cmd = redis::cmd("FT.AGGREGATE");
        cmd.arg(index).arg(self.query_text());
        if let Some(prefix) = &self.prefix {
            // A token has no quote or backslash: it stands in quotes as is.
            cmd.arg("FILTER")
                .arg(format!("startswith(@token, '{}')", escape_token(prefix)));
        }
        if let Some(after) = &self.after {
            let op = if self.descending { "<" } else { ">" };
            cmd.arg("FILTER").arg(format!("@{field} {op} '{after}'"));
        }
        cmd.arg("SORTBY")
            .arg(2)
            .arg(format!("@{field}"))
            .arg(if self.descending { "DESC" } else { "ASC" })
            .arg("MAX")
            .arg(self.limit + 1)
            .arg("TIMEOUT")
            .arg(timeout.as_millis().max(1) as u64);
        cmd
    }
}

/// Escapes a tag value for the query syntax: every byte but letters and
/// digits gets a backslash (a token holds only ASCII).
pub fn escape_tag(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len() * 2);
    for c in value.chars() {
        if !c.is_ascii_alphanumeric() {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The longest cursor accepted, in bytes (a sort key is 17 bytes and a
/// token of at most 3 × 1024).
pub const MAX_CURSOR_BYTES: usize = 3_200;

/// The cursor after the session with sort key `key`: the key itself.
/// Clients treat it as opaque; any token is a position in the order, so a
/// cursor of another sort or order is a position too, never an error.
pub fn encode_cursor(key: &str) -> String {
    key.to_owned()
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    // The key goes into a FILTER expression in quotes: only a token may.
    if cursor.is_empty() || cursor.len() > MAX_CURSOR_BYTES || !is_token(cursor) {
        return Err(invalid(
            "cursor must be a next_cursor this api gave (letters, digits, - and _)",
        ));
    }
    Ok(cursor.to_owned())
}

/// Why a page could not be read.
#[derive(Debug)]
enum SearchError {
    /// No index on some master, or no query engine.
    NoIndex(String),
    Unavailable(Unavailable),
}

impl From<SearchError> for ApiError {
    fn from(err: SearchError) -> Self {
        match err {
            SearchError::NoIndex(reason) => ApiError::SearchUnavailable(reason),
            SearchError::Unavailable(reason) => ApiError::Unavailable(reason),
        }
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn field<'a>(map: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(key, _)| text(key).as_deref() == Some(name))
        .map(|(_, value)| value)
}

/// A refusal of the query: no index (or no query engine at all) is
/// [`SearchError::NoIndex`], anything else Redis failing.
fn refused(message: String) -> SearchError {
    let lower = message.to_ascii_lowercase();
    if lower.contains("no such index")
        || lower.contains("unknown index")
        || lower.contains("unknown command")
    {
        SearchError::NoIndex(message)
    } else {
        SearchError::Unavailable(Unavailable::Redis(message))
    }
}

/// The sort keys of one master's RESP3 `FT.AGGREGATE` reply.
fn parse_reply(reply: &Value, sort: Sort) -> Result<Vec<String>, SearchError> {
    let map = match reply {
        Value::Map(map) => map,
        Value::ServerError(err) => return Err(refused(format!("{err:?}"))),
        other => {
            return Err(SearchError::Unavailable(Unavailable::Redis(format!(
                "unexpected FT.AGGREGATE reply: {other:?}"
            ))));
        }
    };
    if let Some(Value::Array(warnings)) = field(map, "warning")
        && let Some(warning) = warnings.first()
    {
        // A partial answer (the engine's timeout) must not pass for a page.
        let warning = text(warning).unwrap_or_default();
        return Err(SearchError::Unavailable(
            if warning.to_ascii_lowercase().contains("timeout") {
                Unavailable::Timeout
            } else {
                Unavailable::Redis(warning)
            },
        ));
    }
    let Some(Value::Array(results)) = field(map, "results") else {
        return Ok(Vec::new());
    };
    Ok(results
        .iter()
        .filter_map(|result| match result {
            Value::Map(result) => match field(result, "extra_attributes") {
                Some(Value::Map(attributes)) => field(attributes, sort.field()).and_then(text),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// The session token at the end of a sort key (§4.2: a letter and 16 hex
/// digits for `start`, 16 hex digits for `last_activity`).
fn token_of(key: &str, sort: Sort) -> Option<&str> {
    let skip = match sort {
        Sort::Start => 17,
        Sort::LastActivity => 16,
    };
    key.get(skip..)
        .filter(|token| !token.is_empty() && is_token(token))
}

/// The listed item of a stored summary: what `sessionfold_core::summary::
/// summarize` gives, with the names back from their tokens.
fn item(summary: &serde_json::Value) -> serde_json::Value {
    let names: Vec<serde_json::Value> = summary["names"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|name| name.as_str())
                .map(|token| json!(unescape_token(token).unwrap_or_else(|| token.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let mut item = Map::new();
    for name in [
        "session_id",
        "state",
        "start",
        "end",
        "children",
        "first_arrival",
        "last_arrival",
    ] {
        item.insert(name.to_owned(), summary[name].clone());
    }
    item.insert("names".to_owned(), serde_json::Value::Array(names));
    item.insert("names_capped".to_owned(), summary["names_capped"].clone());
    serde_json::Value::Object(item)
}

/// Reads pages of sessions on connections of their own.
pub struct SessionSearch {
    lane: Lane,
    cluster: bool,
    keys: Keys,
    settings: SessionsSettings,
    timeout: Duration,
    budget: SearchBudget,
}

/// `redis` with RESP3 asked for on every URL.
fn resp3(redis: &RedisSettings) -> RedisSettings {
    let urls: Vec<String> = redis
        .urls()
        .into_iter()
        .map(|url| {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}protocol=resp3")
        })
        .collect();
    RedisSettings {
        redis_url: urls.join(","),
        ..redis.clone()
    }
}

impl SessionSearch {
    pub fn new(redis: &RedisSettings, settings: &SessionsSettings) -> Self {
        Self {
            lane: Lane::new(
                "search",
                &resp3(redis),
                settings.search_connections as usize,
            ),
            cluster: redis.is_cluster(),
            keys: Keys::new(redis.key_prefix.as_str()),
            settings: settings.clone(),
            timeout: Duration::from_millis(settings.search_timeout_ms),
            budget: SearchBudget::new(settings.search_budget_ms, settings.search_timeout_ms),
        }
    }

    pub fn settings(&self) -> &SessionsSettings {
        &self.settings
    }

    /// The indexes to ask, each with the slot of its master: on a single
    /// server its one index, on a cluster one per master, named for its
    /// lowest slot.
    async fn indexes(&self, deadline: Instant) -> Result<Vec<(u16, String)>, SearchError> {
        if !self.cluster {
            return Ok(vec![(0, self.keys.sessions_index())]);
        }
        let mut slots = redis::cmd("CLUSTER");
        slots.arg("SLOTS");
        let slots: Value = self
            .lane
            .query(&slots, deadline)
            .await
            .map_err(SearchError::Unavailable)?;
        Ok(sessionfold_common::slots::masters(&slots)
            .iter()
            .map(|master| {
                let slot = master.lowest_slot();
                (slot, self.keys.cluster_sessions_index(&tag_for_slot(slot)))
            })
            .collect())
    }

    /// One page, `{"sessions":[…],"next_cursor":…}`, within the budget of
    /// Redis time.
    async fn page(&self, query: &SessionQuery) -> Result<serde_json::Value, ApiError> {
        if query.impossible {
            return Ok(json!({"sessions": [], "next_cursor": null}));
        }
        self.budget.admit().map_err(ApiError::SearchBusy)?;
        Ok(self.page_unbudgeted(query).await?)
    }

    async fn page_unbudgeted(
        &self,
        query: &SessionQuery,
    ) -> Result<serde_json::Value, SearchError> {
        let deadline = Instant::now() + self.timeout;
        let searches = self
            .indexes(deadline)
            .await?
            .into_iter()
            .map(|(slot, index)| (Some(slot), query.command(&index, self.timeout)))
            .collect();
        let started = Instant::now();
        let replies: Result<Vec<Value>, Unavailable> =
            self.lane.query(&Concurrent(searches), deadline).await;
        self.budget.spend(started.elapsed());
        let replies = replies.map_err(|reason| match reason {
            Unavailable::Redis(message) => refused(message),
            other => SearchError::Unavailable(other),
        })?;
        let mut found = Vec::new();
        for reply in &replies {
            found.extend(parse_reply(reply, query.sort)?);
        }
        // Each master's keys are its first after the cursor; merged, the
        // first `limit` of all are the page.
        found.sort();
        if query.descending {
            found.reverse();
        }
        let more = found.len() > query.limit as usize;
        found.truncate(query.limit as usize);
        let next_cursor = match found.last() {
            Some(last) if more => json!(encode_cursor(last)),
            _ => serde_json::Value::Null,
        };
        // The summaries themselves, read by key in one round trip.
        let reads = found
            .iter()
            .filter_map(|key| token_of(key, query.sort))
            .filter_map(SessionId::from_token)
            .map(|session| {
                let mut get = redis::cmd("JSON.GET");
                get.arg(self.keys.session(&session).summary);
                (None, get)
            })
            .collect();
        let summaries: Vec<Option<String>> = self
            .lane
            .query(&Concurrent(reads), deadline)
            .await
            .map_err(SearchError::Unavailable)?;
        // A summary gone since the search (its session expired) is left out.
        let sessions: Vec<serde_json::Value> = summaries
            .into_iter()
            .flatten()
            .filter_map(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .map(|summary| item(&summary))
            .collect();
        Ok(json!({"sessions": sessions, "next_cursor": next_cursor}))
    }
}

/// The session list page: the filters of `GET /sessions`, its pages, and a
/// link from each session to its timeline (`/timeline/{session_id}`). Plain
/// HTML and JavaScript, nothing loaded from elsewhere ([`crate::pages`]).
pub const LIST_PAGE: &str = include_str!("../assets/sessions.html");

#[utoipa::path(
    get,
    path = "/sessions",
    tag = "sessions",
    params(crate::openapi::SessionsQuery),
    responses(crate::openapi::SessionsResponses)
)]
/// Sessions found by their summaries, in pages.
pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let client_ip = shared.client_ip.client_ip(peer, &headers);
    shared
        .per_ip
        .check(&client_ip, 0)
        .map_err(|wait| ApiError::RateLimited(retry_after_secs(wait)))?;
    let token = query_value(query.as_deref().unwrap_or(""), "token")
        .map_err(|_| ApiError::Auth(sessionfold_common::auth::AuthError::Invalid))?;
    shared
        .authenticator
        .authorize_all(bearer(&headers, token.as_deref()))?;
    let search = &shared.search;
    let parsed = SessionQuery::parse(
        query.as_deref(),
        search.settings().sessions_max_limit,
        shared.max_session_id_bytes,
    )?;
    let page = search.page(&parsed).await?;
    tracing::debug!(
        sessions = page["sessions"].as_array().map_or(0, Vec::len),
        "sessions listed"
    );
    Ok(Json(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<SessionQuery, ApiError> {
        SessionQuery::parse(Some(query), 100, 128)
    }

    #[test]
    fn filters_become_one_query_of_indexed_fields() {
        let query = parse("start_from=1.5&end_to=20&state=idle,ended&name=a%20b").unwrap();
        assert_eq!(
            query.query_text(),
            r"@start:[1.5 +inf] @end:[-inf 20] @state:{idle | ended} @names:{a\_20b}"
        );
        assert_eq!(parse("").unwrap().query_text(), "*");
    }

    #[test]
    fn hostile_values_reach_the_query_only_as_tokens_and_numbers() {
        let query = parse("name=%7D%20%7C%20%40state%3A%7Bopen&prefix=x'%29%20").unwrap();
        let text = query.query_text();
        // The name's braces, bar and at-sign are escaped bytes of a token.
        assert_eq!(text, r"@names:{\_7d\_20\_7c\_20\_40state\_3a\_7bopen}");
        let cmd = query.command("sf:sessions", Duration::from_secs(1));
        let args: Vec<String> = cmd
            .args_iter()
            .filter_map(|arg| match arg {
                redis::Arg::Simple(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
                _ => None,
            })
            .collect();
        assert!(
            args.contains(&"startswith(@token, 'x_27_29_20')".to_owned()),
            "{args:?}"
        );
        for bad in [
            "start_from=nan",
            "start_from=inf",
            "start_from=1e999",
            "state=closed",
            "sort=token",
            "order=up",
            "limit=0",
            "limit=101",
            "limit=-1",
            "cursor=%27",
            "name=",
            "prefix=",
            "state=open&state=idle",
        ] {
            assert!(
                matches!(parse(bad), Err(ApiError::InvalidQuery(_))),
                "{bad} should be refused"
            );
        }
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(parse(&format!("name={long}")).unwrap().impossible);
        assert!(
            parse(&format!("prefix={}", "p".repeat(129)))
                .unwrap()
                .impossible
        );
        assert!(!parse("name=x&prefix=y").unwrap().impossible);
    }

    #[test]
    fn a_cursor_is_a_token_and_nothing_else() {
        let cursor = encode_cursor("s4000000000000000abc");
        let query = parse(&format!("cursor={cursor}")).unwrap();
        assert_eq!(query.after.as_deref(), Some("s4000000000000000abc"));
        for forged in ["x'%20||%201%20==%201", "a%5C", "", "%C3%A9"] {
            assert!(parse(&format!("cursor={forged}")).is_err(), "{forged}");
        }
        assert!(parse(&format!("cursor={}", "a".repeat(MAX_CURSOR_BYTES + 1))).is_err());
    }
}

#[cfg(test)]
mod budget_tests {
    use super::SearchBudget;
    use std::time::Duration;

    #[test]
    fn a_spent_budget_refuses_until_it_refills_and_zero_is_no_budget() {
        let budget = SearchBudget::new(10, 100);
        assert!(budget.admit().is_ok());
        budget.spend(Duration::from_millis(152));
        // 50 ms below zero at 10 ms a second: about 5 s.
        assert_eq!(budget.admit(), Err(5));
        // A short query costs nothing.
        let cheap = SearchBudget::new(10, 1);
        for _ in 0..1000 {
            cheap.spend(super::FREE_SEARCH);
        }
        assert!(cheap.admit().is_ok());
        let off = SearchBudget::new(0, 100);
        off.spend(Duration::from_secs(10));
        assert!(off.admit().is_ok());
    }
}
