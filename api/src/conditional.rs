//! Conditional reads of a document: a strong `ETag` (the 128-bit XXH3 hash
//! of the stored bytes) on every `200`, and `304 Not Modified` without a body when
//! the request's `If-None-Match` names it (or is `*`). Documents are served
//! with `Cache-Control: no-cache`, so caches revalidate every time and a
//! reader polling a session pays for the bytes only when they changed.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_128;

use crate::read::Document;

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
/// The header telling a session's state (docs/design.md §10).
pub const SESSION_STATE_HEADER: &str = "sessionfold-session-state";

pub fn document_response(headers: &HeaderMap, document: Document) -> Response {
    let state = document
        .state
        .as_deref()
        .and_then(|state| HeaderValue::from_str(state).ok());
    let mut response = document_response_without_state(headers, document);
    if let Some(state) = state {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static(SESSION_STATE_HEADER), state);
    }
    response
}

fn document_response_without_state(headers: &HeaderMap, document: Document) -> Response {
    let (bytes, slot) = document.into_parts();
    let tag = etag(&bytes);
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
    let body = match slot {
        Some(slot) => Body::new(HeldBody::new(bytes, slot)),
        None => Body::from(bytes),
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, tag_value),
            (header::CACHE_CONTROL, no_cache),
        ],
        body,
    )
        .into_response()
}

/// Bytes sent in the second frame of a [`HeldBody`].
const TAIL_BYTES: usize = 64 * 1024;

/// A body that keeps `hold` (a large-document slot) until the body is
/// nearly sent. Its bytes go out as two frames: the server asks for the
/// second only once it has written out most of the first (it buffers a few
/// hundred KiB at most), and the hold is released with the second. Without
/// this, the slot would be freed as soon as the whole document was handed
/// to the server, while its bytes still wait for a slow client.
struct HeldBody<H> {
    head: Option<Bytes>,
    tail: Option<Bytes>,
    hold: Option<H>,
}

impl<H> HeldBody<H> {
    fn new(mut bytes: Bytes, hold: H) -> Self {
        let tail = bytes.split_off(bytes.len().saturating_sub(TAIL_BYTES));
        Self {
            head: Some(bytes).filter(|head| !head.is_empty()),
            tail: Some(tail).filter(|tail| !tail.is_empty()),
            hold: Some(hold),
        }
    }

    fn remaining(&self) -> u64 {
        let len = |part: &Option<Bytes>| part.as_ref().map_or(0, |bytes| bytes.len() as u64);
        len(&self.head) + len(&self.tail)
    }
}

impl<H: Unpin> http_body::Body for HeldBody<H> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let next = match this.head.take() {
            Some(head) => Some(head),
            None => {
                this.hold = None;
                this.tail.take()
            }
        };
        std::task::Poll::Ready(next.map(|bytes| Ok(http_body::Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.tail.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining())
    }
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
        let fresh = document_response(&HeaderMap::new(), Document::small(document.clone()));
        assert_eq!(fresh.status(), StatusCode::OK);
        assert_eq!(fresh.headers()[header::ETAG], tag.as_str());
        let cached = document_response(&with_if_none_match(&tag), Document::small(document));
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(cached.headers()[header::ETAG], tag.as_str());
        assert!(cached.headers().get(header::CONTENT_TYPE).is_none());
    }

    #[tokio::test]
    async fn a_held_body_sends_every_byte_and_releases_its_hold_with_the_last() {
        use http_body::Body as _;
        let hold = std::sync::Arc::new(());
        let bytes: Bytes = (0..200_000u32).map(|i| i as u8).collect::<Vec<u8>>().into();
        let mut body = HeldBody::new(bytes.clone(), hold.clone());
        assert_eq!(body.size_hint().exact(), Some(200_000));
        let mut sent = Vec::new();
        let mut body = std::pin::Pin::new(&mut body);
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let data = frame.unwrap().into_data().unwrap();
            if sent.is_empty() {
                assert_eq!(
                    std::sync::Arc::strong_count(&hold),
                    2,
                    "held while the head goes out"
                );
            }
            sent.extend_from_slice(&data);
        }
        assert_eq!(sent, bytes);
        assert_eq!(std::sync::Arc::strong_count(&hold), 1, "released");
        assert!(body.is_end_stream());
    }
}
