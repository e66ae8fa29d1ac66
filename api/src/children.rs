//! `GET /data/children`: a session's children in pages (docs/design.md
//! §11.2), for documents too large to read whole and for readers that want
//! a part.
//!
//! A page is chosen by position (`from`, `limit`) or by timestamp (`since`,
//! `until`, both inclusive, and `limit`). One read-only script
//! ([`PAGE_SCRIPT`], run with `EVAL_RO`, which the api's Redis user may
//! run) reads it atomically: the number of children (`JSON.ARRLEN`, O(1)),
//! for a range of timestamps the positions of its bounds by binary search
//! (children are ordered by timestamp, §2.1; each probe is one O(1)
//! `JSON.GET $.children[i].timestamp`, about 2·log₂ n of them), then the
//! slice `$.children[a:b]`. So a page costs O(log n + page), never the
//! session's size. The children are served as RedisJSON writes them, the
//! bytes `GET /data` serves for them, spliced into the answer unparsed.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::ApiError;
use crate::server::Shared;
use crate::sessions::{invalid, number, param};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// Settings of `GET /data/children`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ChildrenSettings {
    /// Most children one page of `GET /data/children` may ask for (`limit`,
    /// also the page size when none is named); more is refused with 400
    /// `invalid_query`.
    #[arg(long, env = "API_CHILDREN_MAX_PAGE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub children_max_page: u32,
    /// Most bytes of children one page holds: Redis stops building a page
    /// once it passes this (with at least one child), and `next` says
    /// where the rest begins. So a page costs Redis and the api no more
    /// than a small document does, whatever `limit` asks.
    #[arg(long, env = "API_CHILDREN_PAGE_BYTES", default_value_t = 262_144,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub children_page_bytes: u64,
}

sessionfold_common::defaults_from_flags!(ChildrenSettings);

/// The page read, atomically. `KEYS[1]`: the document. `ARGV`: `pos`,
/// from, limit, max bytes, step; or `time`, since (or empty), until (or
/// empty), from, limit, max bytes, step (the page starts at `from` or where
/// the range starts, whichever is later).
/// Answers nil for no document, else `{total, from, to, range_end, slice}`:
/// the children at positions `from..to`, of the `from..range_end` the
/// request covers. The slice is read [`PAGE_STEP`] children at a time and
/// ends where it passes max bytes (then one child at a time, to find
/// where): Redis never builds more than max bytes and one step of children,
/// however large they are.
pub const PAGE_SCRIPT: &str = r"
local key = KEYS[1]
local n = redis.call('JSON.ARRLEN', key, '.children')
if not n then return false end
local function ts(i)
  local v = redis.call('JSON.GET', key, '$.children[' .. i .. '].timestamp')
  return tonumber(string.sub(v, 2, -2))
end
-- The first position in [0, n) whose timestamp passes test (n if none):
-- children are ordered by timestamp.
local function first(test)
  local lo, hi = 0, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if test(ts(mid)) then hi = mid else lo = mid + 1 end
  end
  return lo
end
local from, range_end, limit, max_bytes
if ARGV[1] == 'pos' then
  from = math.min(tonumber(ARGV[2]), n)
  range_end = n
  limit = tonumber(ARGV[3])
  max_bytes = tonumber(ARGV[4])
else
  local since, till = tonumber(ARGV[2]), tonumber(ARGV[3])
  from = since and first(function(t) return t >= since end) or 0
  range_end = till and first(function(t) return t > till end) or n
  from = math.max(from, math.min(tonumber(ARGV[4]), range_end))
  if range_end < from then range_end = from end
  limit = tonumber(ARGV[5])
  max_bytes = tonumber(ARGV[6])
end
local to = math.min(range_end, from + limit)
local parts, size, at, step = {}, 0, from, tonumber(ARGV[#ARGV])
while at < to do
  local j = math.min(to, at + step)
  local s = redis.call('JSON.GET', key, '$.children[' .. at .. ':' .. j .. ']')
  if size + #s > max_bytes and (j - at > 1 or #parts > 0) then
    if j - at == 1 then break end
    step = 1
  else
    parts[#parts + 1] = string.sub(s, 2, -2)
    size = size + #s - 1
    at = j
  end
end
return {n, from, at, range_end, '[' .. table.concat(parts, ',') .. ']'}
";

/// Children read at once while a page is built.
pub const PAGE_STEP: u32 = 32;

/// Which children a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Range {
    Position {
        from: u64,
    },
    /// Children with `since <= timestamp <= until`, from position `from`
    /// on (the next page of the same range).
    Time {
        since: Option<f64>,
        until: Option<f64>,
        from: u64,
    },
}

/// A parsed page request.
#[derive(Debug, Clone, PartialEq)]
pub struct PageQuery {
    pub range: Range,
    pub limit: u32,
}

impl PageQuery {
    pub fn parse(query: Option<&str>, max_page: u32) -> Result<Self, ApiError> {
        let query = query.unwrap_or("");
        let from = match param(query, "from")? {
            None => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| {
                invalid("from must be a non-negative integer (a position in children)")
            })?),
        };
        let since = number(query, "since")?;
        let until = number(query, "until")?;
        // `since` after `until` is an empty range, not an error.
        let range = match (since, until) {
            (None, None) => Range::Position {
                from: from.unwrap_or(0),
            },
            (since, until) => Range::Time {
                since,
                until,
                from: from.unwrap_or(0),
            },
        };
        let limit = match param(query, "limit")? {
            None => max_page,
            Some(text) => match text.parse::<u32>() {
                Ok(limit) if (1..=max_page).contains(&limit) => limit,
                _ => {
                    return Err(invalid(format!(
                        "limit must be an integer from 1 to {max_page} (API_CHILDREN_MAX_PAGE)"
                    )));
                }
            },
        };
        Ok(Self { range, limit })
    }

    /// The script's call on the document at `key`, for a page of at most
    /// `max_bytes` of children (and at least one child).
    pub fn command(&self, key: &str, max_bytes: u64) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL_RO");
        cmd.arg(PAGE_SCRIPT).arg(1).arg(key);
        match &self.range {
            Range::Position { from } => {
                cmd.arg("pos").arg(from.to_string());
            }
            Range::Time { since, until, from } => {
                let bound = |value: &Option<f64>| value.map_or(String::new(), |v| v.to_string());
                cmd.arg("time")
                    .arg(bound(since))
                    .arg(bound(until))
                    .arg(from.to_string());
            }
        }
        cmd.arg(self.limit).arg(max_bytes).arg(PAGE_STEP);
        cmd
    }
}

/// The answer's body: `{"total":…,"from":…,"next":…,"children":[…]}` with
/// the slice's bytes as Redis gave them.
pub fn body(total: u64, from: u64, next: Option<u64>, slice: &[u8]) -> Vec<u8> {
    let next = next.map_or("null".to_owned(), |next| next.to_string());
    let head = format!(r#"{{"total":{total},"from":{from},"next":{next},"children":"#);
    let mut body = Vec::with_capacity(head.len() + slice.len() + 1);
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(slice);
    body.push(b'}');
    body
}

#[utoipa::path(
    get,
    path = "/data/children",
    tag = "documents",
    params(crate::openapi::DataQuery, crate::openapi::ChildrenQuery),
    responses(crate::openapi::ChildrenResponses)
)]
/// A page of a session's children, by position or by timestamp.
pub(crate) async fn page(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let admitted = crate::server::admit(&shared, peer, &headers, query.as_deref())?;
    let parsed = PageQuery::parse(query.as_deref(), shared.children.children_max_page)?;
    let keys = shared.keys.session(&admitted.session);
    let reply: Option<(u64, u64, u64, u64, Vec<u8>)> = shared
        .reads
        .query_small(&parsed.command(&keys.doc, shared.children.children_page_bytes))
        .await
        .map_err(ApiError::Unavailable)?;
    let Some((total, from, to, range_end, slice)) = reply else {
        return Err(ApiError::NotFound);
    };
    let limit = shared.reads.settings().max_document_bytes;
    if slice.len() as u64 > limit {
        return Err(ApiError::PageTooLarge {
            bytes: slice.len() as u64,
            limit,
        });
    }
    // The range goes on past this page where `limit` or the page's bytes
    // cut it.
    let next = (to < range_end).then_some(to);
    tracing::debug!(
        session_id = %admitted.session.as_str(),
        total,
        from,
        "children page read"
    );
    let mut response = body(total, from, next, &slice).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_by_position_or_by_timestamp_from_a_position() {
        assert_eq!(
            PageQuery::parse(None, 10).unwrap(),
            PageQuery {
                range: Range::Position { from: 0 },
                limit: 10
            }
        );
        assert_eq!(
            PageQuery::parse(Some("since=1.5&limit=3"), 10)
                .unwrap()
                .range,
            Range::Time {
                since: Some(1.5),
                until: None,
                from: 0
            }
        );
        assert_eq!(
            PageQuery::parse(Some("until=2&from=7"), 10).unwrap().range,
            Range::Time {
                since: None,
                until: Some(2.0),
                from: 7
            }
        );
        for bad in [
            "from=-1",
            "from=x",
            "since=nan",
            "until=inf",
            "limit=0",
            "limit=11",
            "from=1&from=2",
        ] {
            assert!(
                matches!(
                    PageQuery::parse(Some(bad), 10),
                    Err(ApiError::InvalidQuery(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_body_splices_the_children_bytes_unchanged() {
        let slice = br#"[{"timestamp":1.50,"x":1e3}]"#;
        assert_eq!(
            body(3, 1, Some(2), slice),
            br#"{"total":3,"from":1,"next":2,"children":[{"timestamp":1.50,"x":1e3}]}"#
        );
    }
}
