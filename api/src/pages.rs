//! The HTML pages (the session list at `/timeline`, a session's timeline
//! at `/timeline/{session_id}`) and their scripts and styles, served with
//! headers that keep them to themselves: a `Content-Security-Policy` that
//! allows scripts, styles and requests from this origin only (no inline
//! script, nothing from elsewhere, no framing), `X-Frame-Options: DENY`,
//! `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.

use axum::extract::{OriginalUri, Path};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What the pages may load and where they may connect: this origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

const SESSIONS_JS: &str = include_str!("../assets/sessions.js");
const SESSIONS_CSS: &str = include_str!("../assets/sessions.css");
const TIMELINE_JS: &str = include_str!("../assets/timeline.js");
const TIMELINE_CSS: &str = include_str!("../assets/timeline.css");

/// `body` as `content_type`, with the pages' security headers.
fn page(status: StatusCode, content_type: &'static str, body: &'static str) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

const HTML: &str = "text/html; charset=utf-8";

/// `GET /timeline`: the session list page.
pub(crate) async fn list() -> Response {
    page(StatusCode::OK, HTML, crate::sessions::LIST_PAGE)
}

/// `GET /timeline/{session_id}`: the timeline page (it reads the session
/// from its own path). A path whose percent-escapes do not decode to UTF-8
/// names no session: 400, saying so, instead of a page that cannot start.
pub(crate) async fn timeline(OriginalUri(uri): OriginalUri) -> Response {
    let session = uri.path().strip_prefix("/timeline/").unwrap_or_default();
    if !decodes_strictly(session) {
        return page(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "400 malformed percent-escape in the session of /timeline/{session_id}: \
             every % must begin an escape of two hex digits, and the escapes must decode to UTF-8\n",
        );
    }
    page(StatusCode::OK, HTML, crate::live::TIMELINE_PAGE)
}

/// `GET /assets/{name}`: the pages' scripts and styles.
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    let (content_type, body) = match name.as_str() {
        "sessions.js" => ("text/javascript; charset=utf-8", SESSIONS_JS),
        "timeline.js" => ("text/javascript; charset=utf-8", TIMELINE_JS),
        "sessions.css" => ("text/css; charset=utf-8", SESSIONS_CSS),
        "timeline.css" => ("text/css; charset=utf-8", TIMELINE_CSS),
        _ => return page(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "404\n"),
    };
    page(StatusCode::OK, content_type, body)
}

/// Whether `text`'s percent-escapes are all `%` and two hex digits, and
/// what they decode to is UTF-8.
pub fn decodes_strictly(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(high), Some(low)) => decoded.push((high * 16 + low) as u8),
                _ => return false,
            }
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

#[cfg(test)]
mod tests {
    use super::decodes_strictly;

    #[test]
    fn only_whole_escapes_of_utf8_decode() {
        for good in ["plain", "a%20b", "%C3%A9t%C3%A9", "", "%41"] {
            assert!(decodes_strictly(good), "{good}");
        }
        for bad in ["%", "%2", "%zz", "a%g1", "%C3", "%FF", "100%"] {
            assert!(!decodes_strictly(bad), "{bad}");
        }
    }
}
