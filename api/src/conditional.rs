//! Conditional reads of a document: a strong `ETag` (the 128-bit XXH3 hash
//! of the stored bytes) on every `200`, and `304 Not Modified` without a body when
//! the request's `If-None-Match` names it (or is `*`). Documents are served
//! with `Cache-Control: no-cache`, so caches revalidate every time and a
//! reader polling a session pays for the bytes only when they changed.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use xxhash_rust::xxh3::xxh3_128;

/// The strong entity tag of `document`: its 128-bit XXH3 hash in hex,
/// quoted. A tag only has to change when the bytes do, not resist a forger
/// (anyone who may read the document can read its tag), and XXH3 hashes a
/// document many times faster than SHA-256, which was the api's largest cost.
pub fn etag(document: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = xxh3_128(document).to_be_bytes();
    let mut tag = String::with_capacity(34);
    tag.push('"');
    for byte in digest {
        tag.push(char::from(HEX[usize::from(byte >> 4)]));
        tag.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    tag.push('"');
    tag
}

/// Whether `If-None-Match` matches `etag` (RFC 9110 §13.1.2: `*`, or a
/// list of entity tags compared weakly, so `W/"x"` matches `"x"`).
pub fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|candidate| {
            candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
        })
}

/// The response for a stored `document`: `200` with the JSON and its
/// `ETag`, or `304` when the client already holds it.
pub fn document_response(headers: &HeaderMap, document: Vec<u8>) -> Response {
    let tag = etag(&document);
    let tag_value = HeaderValue::from_str(&tag).expect("a quoted hex digest is a header value");
    let no_cache = HeaderValue::from_static("no-cache");
    if none_match(headers, &tag) {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, tag_value), (header::CACHE_CONTROL, no_cache)],
            Body::empty(),
        )
            .into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, tag_value),
            (header::CACHE_CONTROL, no_cache),
        ],
        document,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_if_none_match(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_etag_is_the_quoted_xxh3_128_of_the_bytes() {
        // The reference value, as the xxHash project's own implementation gives it.
        assert_eq!(etag(b"{}"), "\"dc7048f8f8747f561349cde127705c16\"");
        assert_ne!(etag(br#"{"a":1}"#), etag(br#"{"a":2}"#));
    }

    #[test]
    fn if_none_match_matches_its_tag_in_a_list_weakly_or_star() {
        let tag = etag(b"doc");
        assert!(none_match(&with_if_none_match(&tag), &tag));
        assert!(none_match(
            &with_if_none_match(&format!("\"other\", W/{tag}")),
            &tag
        ));
        assert!(none_match(&with_if_none_match("*"), &tag));
        assert!(!none_match(&with_if_none_match("\"other\""), &tag));
        assert!(!none_match(&HeaderMap::new(), &tag));
    }

    #[test]
    fn a_matching_request_gets_304_without_a_body() {
        let document = br#"{"session_id":"s"}"#.to_vec();
        let tag = etag(&document);
        let fresh = document_response(&HeaderMap::new(), document.clone());
        assert_eq!(fresh.status(), StatusCode::OK);
        assert_eq!(fresh.headers()[header::ETAG], tag.as_str());
        let cached = document_response(&with_if_none_match(&tag), document);
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(cached.headers()[header::ETAG], tag.as_str());
        assert!(cached.headers().get(header::CONTENT_TYPE).is_none());
    }
}
