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
//!   configured secret. A token names one session (or, with `prefix`, every
//!   session whose id starts with `sid`), what it may do (`write`, `read` or
//!   `read_write`) and when it expires (Unix seconds). Issue them with
//!   `sessionfold token` or any HMAC library.
//!
//! Missing, malformed, tampered or expired credentials are 401; a valid
//! token for another session or scope is 403.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const TOKEN_VERSION: &str = "sf1";

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
    pub scope: Scope,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// Authentication settings of a service.
#[derive(Debug, Clone, Default, clap::Args)]
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
    /// Secret that signs session tokens (HMAC-SHA256).
    #[arg(long, env = "AUTH_TOKEN_SECRET", hide_env_values = true)]
    pub auth_token_secret: Option<String>,
}

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
    /// SHA-256 of each API key, so that comparisons leak nothing useful.
    api_key_digests: Vec<[u8; 32]>,
    secret: Option<Vec<u8>>,
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            required: settings.auth_required,
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

    /// Decides whether `credential` (the bearer value, if any) may `access`
    /// `session_id`.
    pub fn authorize(
        &self,
        credential: Option<&str>,
        session_id: &str,
        access: Access,
    ) -> Result<(), AuthError> {
        let Some(credential) = credential.filter(|value| !value.is_empty()) else {
            return if self.required {
                Err(AuthError::Missing)
            } else {
                Ok(())
            };
        };
        let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
        if self.api_key_digests.contains(&digest) {
            return Ok(());
        }
        let claims = self.verify(credential, now())?;
        let matches = if claims.prefix {
            session_id.starts_with(&claims.sid)
        } else {
            session_id == claims.sid
        };
        if matches && claims.scope.allows(access) {
            Ok(())
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
            auth_token_secret: Some("secret".into()),
        })
    }

    fn token(sid: &str, prefix: bool, scope: Scope, exp: u64) -> String {
        issue_token(
            b"secret",
            &Claims {
                sid: sid.into(),
                prefix,
                scope,
                exp,
            },
        )
    }

    #[test]
    fn nothing_is_needed_when_auth_is_off() {
        let open = Authenticator::new(&AuthSettings::default());
        assert_eq!(open.authorize(None, "s", Access::Write), Ok(()));
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
        assert_eq!(auth.authorize(Some("key-1"), "any", Access::Write), Ok(()));
        assert_eq!(
            auth.authorize(Some("key-2"), "any", Access::Write),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn a_token_opens_its_session_for_its_scope() {
        let auth = authenticator();
        let write = token("s1", false, Scope::Write, now() + 60);
        assert_eq!(auth.authorize(Some(&write), "s1", Access::Write), Ok(()));
        assert_eq!(
            auth.authorize(Some(&write), "s1", Access::Read),
            Err(AuthError::Forbidden)
        );
        assert_eq!(
            auth.authorize(Some(&write), "s2", Access::Write),
            Err(AuthError::Forbidden)
        );
        let both = token("s1", false, Scope::ReadWrite, now() + 60);
        assert_eq!(auth.authorize(Some(&both), "s1", Access::Read), Ok(()));
    }

    #[test]
    fn a_prefix_token_opens_every_session_under_it() {
        let auth = authenticator();
        let tenant = token("tenant-a/", true, Scope::Read, now() + 60);
        assert_eq!(
            auth.authorize(Some(&tenant), "tenant-a/s9", Access::Read),
            Ok(())
        );
        assert_eq!(
            auth.authorize(Some(&tenant), "tenant-b/s9", Access::Read),
            Err(AuthError::Forbidden)
        );
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
            b"other",
            &Claims {
                sid: "s1".into(),
                prefix: false,
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
