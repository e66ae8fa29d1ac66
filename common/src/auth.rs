//! Who may write or read which session.
//!
//! Two kinds of bearer credential, both optional and both checked here so
//! that ingest and api agree:
//!
//! - **API keys** from configuration: full access to every session, for
//!   trusted back ends.
//! - **Session tokens**: `sf1.<payload>.<signature>`, where the payload is
//!   base64url JSON `{"sid": "...", "prefix": false, "scope": "write", "exp": 1700000000}`
//!   and the signature is base64url HMAC-SHA256 over `sf1.<payload>` with the
//!   configured secret (at least [`MIN_SECRET_BYTES`] bytes). A token names
//!   one session, or with `prefix` every session below a boundary: a prefix
//!   token states its separator (`"sep": "/"`) and its `sid` ends with it
//!   (`"tenant-a/"`), so `"a/"` opens `a/1` but never `admin`; an empty
//!   `sid` with a separator opens every session (issued only on explicit
//!   request). It says what it may do (`write`, `read` or `read_write`) and
//!   when it expires (Unix seconds). Issue them with `sessionfold token` or
//!   any HMAC library.
//!
//! Missing, malformed, tampered or expired credentials are 401; a valid
//! token for another session or scope is 403. [`Authenticator::authorize`]
//! returns the [`Grant`], whose expiry long-lived connections (WebSockets,
//! SSE streams) enforce while they are open.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const TOKEN_VERSION: &str = "sf1";

/// Shortest accepted signing secret, in bytes (256 bits, the size of the
/// HMAC-SHA256 output).
pub const MIN_SECRET_BYTES: usize = 32;

/// What a credential is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Write,
    Read,
}

/// What a session token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Write,
    Read,
    ReadWrite,
}

impl Scope {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Scope::ReadWrite, _) | (Scope::Write, Access::Write) | (Scope::Read, Access::Read)
        )
    }
}

/// The signed claims of a session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The session_id, or a prefix of session ids when `prefix` is true.
    pub sid: String,
    #[serde(default)]
    pub prefix: bool,
    /// The separator a prefix token's `sid` ends with; required for prefix
    /// tokens, so that a prefix only matches at a boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sep: Option<String>,
    pub scope: Scope,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

impl Claims {
    /// Whether these claims name `session_id`. A prefix token without a
    /// separator, or whose `sid` does not end with it, names nothing.
    /// The all-sessions token: the empty prefix at a separator.
    pub fn opens_every_session(&self) -> bool {
        self.prefix && self.sid.is_empty() && self.sep.as_deref().is_some_and(|sep| !sep.is_empty())
    }

    pub fn covers(&self, session_id: &str) -> bool {
        if !self.prefix {
            return session_id == self.sid;
        }
        match self.sep.as_deref() {
            Some(sep) if !sep.is_empty() && (self.sid.is_empty() || self.sid.ends_with(sep)) => {
                session_id.len() > self.sid.len() && session_id.starts_with(&self.sid)
            }
            _ => false,
        }
    }
}

/// What an accepted credential grants, for as long as it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// When the grant ends, Unix seconds; `None` for API keys and for
    /// requests let through without a credential (`AUTH_REQUIRED=false`).
    pub expires_at: Option<u64>,
    /// The prefix of session ids a prefix token covers, by digest: what
    /// ingest counts the sessions of one prefix by. `None` for a token of
    /// one session, an API key and no credential.
    pub prefix: Option<PrefixDigest>,
}

/// A prefix token's prefix (with its separator), as the first 16 bytes of
/// its SHA-256: the same prefix always gives the same digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrefixDigest(pub [u8; 16]);

impl PrefixDigest {
    fn of(claims: &Claims) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(claims.sid.as_bytes());
        hasher.update([0]);
        hasher.update(claims.sep.as_deref().unwrap_or("").as_bytes());
        let digest: [u8; 32] = hasher.finalize().into();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        Self(first)
    }
}

impl Grant {
    /// A grant that does not expire.
    pub const UNLIMITED: Grant = Grant {
        expires_at: None,
        prefix: None,
    };

    /// How long the grant still lasts at `now` (Unix seconds): `None` when
    /// it does not expire, zero once it has.
    pub fn remaining(&self, now: u64) -> Option<std::time::Duration> {
        self.expires_at
            .map(|exp| std::time::Duration::from_secs(exp.saturating_sub(now)))
    }
}

/// Why authentication settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error("AUTH_TOKEN_SECRET must be at least {MIN_SECRET_BYTES} bytes, got {0}")]
    SecretTooShort(usize),
}

/// Clap parser of a signing secret: at least [`MIN_SECRET_BYTES`] bytes.
pub fn parse_secret(text: &str) -> Result<String, String> {
    if text.len() < MIN_SECRET_BYTES {
        Err(AuthConfigError::SecretTooShort(text.len()).to_string())
    } else {
        Ok(text.to_owned())
    }
}

/// Authentication settings of a service.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthSettings {
    /// Require a credential on `/websocket` and `/data`.
    #[arg(long, env = "AUTH_REQUIRED", default_value_t = false, action = clap::ArgAction::Set)]
    pub auth_required: bool,
    /// Static API keys with access to every session, comma-separated.
    #[arg(
        long,
        env = "AUTH_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_api_keys: Vec<String>,
    /// Secret that signs session tokens (HMAC-SHA256), at least 32 bytes.
    #[arg(long, env = "AUTH_TOKEN_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub auth_token_secret: Option<String>,
    /// Answer `/metrics`, `/readyz` and `/openapi.json` only with an API key
    /// (`Authorization: Bearer`); `/healthz` stays open for liveness probes.
    #[arg(long, env = "OPS_REQUIRE_API_KEY", default_value_t = false, action = clap::ArgAction::Set)]
    pub ops_require_api_key: bool,
}

crate::defaults_from_flags!(AuthSettings);

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer credential is required")]
    Missing,
    #[error("the credential is not valid")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    #[error("the token does not grant this access to this session")]
    Forbidden,
}

impl AuthError {
    /// HTTP status: 401 for who-are-you, 403 for not-allowed.
    pub fn status(&self) -> axum::http::StatusCode {
        match self {
            Self::Forbidden => axum::http::StatusCode::FORBIDDEN,
            _ => axum::http::StatusCode::UNAUTHORIZED,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "unauthorized",
            Self::Invalid => "invalid_token",
            Self::Expired => "token_expired",
            Self::Forbidden => "forbidden",
        }
    }
}

/// Checks credentials against the configuration.
#[derive(Clone)]
pub struct Authenticator {
    required: bool,
    /// The operators' routes need an API key.
    ops_protected: bool,
    /// SHA-256 of each API key, so that comparisons leak nothing useful.
    api_key_digests: Vec<[u8; 32]>,
    secret: Option<Vec<u8>>,
}

impl Authenticator {
    /// An authenticator for `settings`, refusing a signing secret shorter
    /// than [`MIN_SECRET_BYTES`] (flags and environment are checked by clap
    /// already; this covers settings built in code).
    pub fn try_new(settings: &AuthSettings) -> Result<Self, AuthConfigError> {
        if let Some(secret) = settings.auth_token_secret.as_ref()
            && !secret.is_empty()
            && secret.len() < MIN_SECRET_BYTES
        {
            return Err(AuthConfigError::SecretTooShort(secret.len()));
        }
        Ok(Self::new(settings))
    }

    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            required: settings.auth_required,
            ops_protected: settings.ops_require_api_key,
            api_key_digests: settings
                .auth_api_keys
                .iter()
                .filter(|key| !key.is_empty())
                .map(|key| Sha256::digest(key.as_bytes()).into())
                .collect(),
            secret: settings
                .auth_token_secret
                .as_ref()
                .filter(|secret| !secret.is_empty())
                .map(|secret| secret.as_bytes().to_vec()),
        }
    }

    pub fn is_required(&self) -> bool {
        self.required
    }

    /// Whether `credential` is one of the API keys.
    pub fn is_api_key(&self, credential: Option<&str>) -> bool {
        credential.is_some_and(|credential| {
            let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
            self.api_key_digests.contains(&digest)
        })
    }

    /// `router` (the operators' routes: metrics, readiness, the API
    /// description) behind an API key when `OPS_REQUIRE_API_KEY` is set.
    pub fn guard_ops(&self, router: axum::Router) -> axum::Router {
        if !self.ops_protected {
            return router;
        }
        router.layer(axum::middleware::from_fn_with_state(
            self.clone(),
            require_api_key,
        ))
    }

    /// Decides whether `credential` (the bearer value, if any) may `access`
    /// `session_id`, and until when.
    pub fn authorize(
        &self,
        credential: Option<&str>,
        session_id: &str,
        access: Access,
    ) -> Result<Grant, AuthError> {
        let credential = match self.without_token(credential) {
            Ok(credential) => credential,
            Err(decided) => return decided,
        };
        let claims = self.verify(credential, now())?;
        if claims.covers(session_id) && claims.scope.allows(access) {
            Ok(Grant {
                expires_at: Some(claims.exp),
                prefix: claims.prefix.then(|| PrefixDigest::of(&claims)),
            })
        } else {
            Err(AuthError::Forbidden)
        }
    }

    /// The decision for no credential or an API key (`Err`), else the
    /// credential, a session token to verify.
    fn without_token<'a>(
        &self,
        credential: Option<&'a str>,
    ) -> Result<&'a str, Result<Grant, AuthError>> {
        let Some(credential) = credential.filter(|value| !value.is_empty()) else {
            return Err(if self.required {
                Err(AuthError::Missing)
            } else {
                Ok(Grant::UNLIMITED)
            });
        };
        let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
        if self.api_key_digests.contains(&digest) {
            return Err(Ok(Grant::UNLIMITED));
        }
        Ok(credential)
    }

    /// Decides whether `credential` may read every session (a listing of
    /// them): an API key may, anyone when no credential is required, and
    /// an all-sessions token (`sessionfold token --all-sessions`) that may
    /// read, since it may read each session anyway. A token of one session
    /// or of a prefix names some sessions, not all of them, so it may not.
    pub fn authorize_all(&self, credential: Option<&str>) -> Result<Grant, AuthError> {
        let credential = match self.without_token(credential) {
            Ok(credential) => credential,
            Err(decided) => return decided,
        };
        let claims = self.verify(credential, now())?;
        if claims.opens_every_session() && claims.scope.allows(Access::Read) {
            Ok(Grant {
                expires_at: Some(claims.exp),
                prefix: Some(PrefixDigest::of(&claims)),
            })
        } else {
            Err(AuthError::Forbidden)
        }
    }

    /// Verifies a token's signature and expiry at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let secret = self.secret.as_deref().ok_or(AuthError::Invalid)?;
        let mut parts = token.split('.');
        let (Some(TOKEN_VERSION), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Invalid);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::Invalid)?;
        let mut mac = hmac_of(secret);
        mac.update(TOKEN_VERSION.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::Invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthError::Invalid)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| AuthError::Invalid)?;
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }
}

/// Signs `claims` with `secret` into a session token.
pub fn issue_token(secret: &[u8], claims: &Claims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let mut mac = hmac_of(secret);
    mac.update(TOKEN_VERSION.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{TOKEN_VERSION}.{payload}.{signature}")
}

fn hmac_of(secret: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// The bearer credential of a request: the `Authorization: Bearer …` header,
/// else (for browsers, which cannot set headers on a WebSocket) the `token`
/// query parameter.
async fn require_api_key(
    axum::extract::State(authenticator): axum::extract::State<Authenticator>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if authenticator.is_api_key(bearer(request.headers(), None)) {
        return next.run(request).await;
    }
    let body = serde_json::json!({
        "error": {"code": "unauthorized", "message": "this route needs an API key"}
    });
    (axum::http::StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

pub fn bearer<'a>(
    headers: &'a axum::http::HeaderMap,
    query_token: Option<&'a str>,
) -> Option<&'a str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or(query_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        Authenticator::new(&AuthSettings {
            auth_required: true,
            auth_api_keys: vec!["key-1".into()],
            auth_token_secret: Some(SECRET.into()),
            ops_require_api_key: false,
        })
    }

    const SECRET: &str = "a-test-secret-of-thirty-two-bytes";

    fn token(sid: &str, prefix: bool, scope: Scope, exp: u64) -> String {
        issue_token(
            SECRET.as_bytes(),
            &Claims {
                sid: sid.into(),
                prefix,
                sep: prefix.then(|| "/".to_owned()),
                scope,
                exp,
            },
        )
    }

    #[test]
    fn nothing_is_needed_when_auth_is_off() {
        let open = Authenticator::new(&AuthSettings::default());
        assert_eq!(
            open.authorize(None, "s", Access::Write),
            Ok(Grant::UNLIMITED)
        );
    }

    #[test]
    fn a_missing_credential_is_401_when_required() {
        let err = authenticator()
            .authorize(None, "s", Access::Read)
            .unwrap_err();
        assert_eq!(err, AuthError::Missing);
        assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn api_keys_open_every_session() {
        let auth = authenticator();
        assert_eq!(
            auth.authorize(Some("key-1"), "any", Access::Write),
            Ok(Grant::UNLIMITED)
        );
        assert_eq!(
            auth.authorize(Some("key-2"), "any", Access::Write),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn an_api_key_or_an_all_sessions_reader_lists_every_session() {
        let auth = authenticator();
        assert_eq!(auth.authorize_all(Some("key-1")), Ok(Grant::UNLIMITED));
        assert_eq!(auth.authorize_all(None), Err(AuthError::Missing));
        assert_eq!(auth.authorize_all(Some("key-2")), Err(AuthError::Invalid));
        let exp = now() + 60;
        let everything = token("", true, Scope::Read, exp);
        assert_eq!(
            auth.authorize_all(Some(&everything))
                .map(|grant| grant.expires_at),
            Ok(Some(exp))
        );
        let writer = token("", true, Scope::Write, exp);
        assert_eq!(auth.authorize_all(Some(&writer)), Err(AuthError::Forbidden));
        for some in [
            token("tenant-a/", true, Scope::Read, exp),
            token("s1", false, Scope::Read, exp),
        ] {
            assert_eq!(auth.authorize_all(Some(&some)), Err(AuthError::Forbidden));
        }
        let open = Authenticator::new(&AuthSettings::default());
        assert_eq!(open.authorize_all(None), Ok(Grant::UNLIMITED));
    }

    #[test]
    fn a_token_opens_its_session_for_its_scope() {
        let auth = authenticator();
        let exp = now() + 60;
        let write = token("s1", false, Scope::Write, exp);
        assert_eq!(
            auth.authorize(Some(&write), "s1", Access::Write),
            Ok(Grant {
                expires_at: Some(exp),
                prefix: None,
            })
        );
        assert_eq!(
            auth.authorize(Some(&write), "s1", Access::Read),
            Err(AuthError::Forbidden)
        );
        assert_eq!(
            auth.authorize(Some(&write), "s2", Access::Write),
            Err(AuthError::Forbidden)
        );
        let both = token("s1", false, Scope::ReadWrite, now() + 60);
        assert!(auth.authorize(Some(&both), "s1", Access::Read).is_ok());
    }

    #[test]
    fn a_prefix_token_opens_every_session_under_it() {
        let auth = authenticator();
        let tenant = token("tenant-a/", true, Scope::Read, now() + 60);
        let grant = auth
            .authorize(Some(&tenant), "tenant-a/s9", Access::Read)
            .unwrap();
        // Every session it opens counts against the same prefix; another
        // token of the same prefix counts against it too.
        let again = token("tenant-a/", true, Scope::Read, now() + 120);
        let other = token("tenant-b/", true, Scope::Read, now() + 60);
        assert!(grant.prefix.is_some());
        assert_eq!(
            auth.authorize(Some(&again), "tenant-a/s10", Access::Read)
                .unwrap()
                .prefix,
            grant.prefix
        );
        assert_ne!(
            auth.authorize(Some(&other), "tenant-b/s9", Access::Read)
                .unwrap()
                .prefix,
            grant.prefix
        );
        for other in ["tenant-b/s9", "tenant-a", "tenant-a/", "tenant-ab/s9"] {
            assert_eq!(
                auth.authorize(Some(&tenant), other, Access::Read),
                Err(AuthError::Forbidden),
                "{other}"
            );
        }
    }

    #[test]
    fn a_prefix_matches_only_at_its_stated_separator() {
        let auth = authenticator();
        // "a" without a separator boundary opens nothing, not `admin`.
        let no_boundary = token("a", true, Scope::Write, now() + 60);
        for session in ["admin", "ab-victim", "a/1", "a"] {
            assert_eq!(
                auth.authorize(Some(&no_boundary), session, Access::Write),
                Err(AuthError::Forbidden),
                "{session}"
            );
        }
        // A prefix token that states no separator opens nothing either.
        let unstated = issue_token(
            SECRET.as_bytes(),
            &Claims {
                sid: "a/".into(),
                prefix: true,
                sep: None,
                scope: Scope::Write,
                exp: now() + 60,
            },
        );
        assert_eq!(
            auth.authorize(Some(&unstated), "a/1", Access::Write),
            Err(AuthError::Forbidden)
        );
        let bounded = token("a/", true, Scope::Write, now() + 60);
        assert!(auth.authorize(Some(&bounded), "a/1", Access::Write).is_ok());
        assert_eq!(
            auth.authorize(Some(&bounded), "admin", Access::Write),
            Err(AuthError::Forbidden)
        );
        // An empty prefix with a separator is the explicit all-sessions token.
        let everything = token("", true, Scope::Write, now() + 60);
        assert!(
            auth.authorize(Some(&everything), "admin", Access::Write)
                .is_ok()
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(
            parse_secret("x"),
            Err(AuthConfigError::SecretTooShort(1).to_string())
        );
        assert!(parse_secret(SECRET).is_ok());
        let short = AuthSettings {
            auth_token_secret: Some("secret".into()),
            ..AuthSettings::default()
        };
        assert_eq!(
            Authenticator::try_new(&short).err(),
            Some(AuthConfigError::SecretTooShort(6))
        );
        assert!(Authenticator::try_new(&AuthSettings::default()).is_ok());
    }

    #[test]
    fn a_grant_reports_what_is_left_of_it() {
        let grant = Grant {
            expires_at: Some(100),
            prefix: None,
        };
        assert_eq!(
            grant.remaining(40),
            Some(std::time::Duration::from_secs(60))
        );
        assert_eq!(grant.remaining(200), Some(std::time::Duration::ZERO));
        assert_eq!(Grant::UNLIMITED.remaining(40), None);
    }

    #[test]
    fn expired_and_tampered_tokens_are_refused() {
        let auth = authenticator();
        let expired = token("s1", false, Scope::Write, now() - 1);
        assert_eq!(
            auth.authorize(Some(&expired), "s1", Access::Write),
            Err(AuthError::Expired)
        );

        let valid = token("s1", false, Scope::Write, now() + 60);
        let forged_claims = URL_SAFE_NO_PAD
            .encode(br#"{"sid":"s2","prefix":false,"scope":"write","exp":9999999999}"#);
        let mut parts: Vec<&str> = valid.split('.').collect();
        parts[1] = &forged_claims;
        let tampered = parts.join(".");
        assert_eq!(
            auth.authorize(Some(&tampered), "s2", Access::Write),
            Err(AuthError::Invalid)
        );

        let other_secret = issue_token(
            b"another-secret-of-thirty-two-bytes",
            &Claims {
                sid: "s1".into(),
                prefix: false,
                sep: None,
                scope: Scope::Write,
                exp: now() + 60,
            },
        );
        assert_eq!(
            auth.authorize(Some(&other_secret), "s1", Access::Write),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            auth.authorize(Some("sf1.x"), "s1", Access::Write),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            auth.authorize(Some("garbage"), "s1", Access::Write),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn the_bearer_comes_from_the_header_before_the_query() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(bearer(&headers, Some("q")), Some("q"));
        headers.insert("authorization", "Bearer h".parse().unwrap());
        assert_eq!(bearer(&headers, Some("q")), Some("h"));
    }
}
