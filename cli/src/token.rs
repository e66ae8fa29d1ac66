//! `sessionfold token`: issue a signed session token (see
//! `sessionfold_common::auth`).

use anyhow::{Context as _, bail};
use sessionfold_common::auth::{Claims, Scope, issue_token, now, parse_secret};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The session_id the token opens; with `--prefix`, the prefix of the
    /// session ids it opens (the separator is appended when it is missing).
    #[arg(long, default_value = "")]
    pub session: String,
    /// Open every session whose id continues `--session` past `--separator`.
    #[arg(long)]
    pub prefix: bool,
    /// The boundary a prefix token matches at: `--session tenant-a --prefix`
    /// opens `tenant-a/…`, never `tenant-ab`.
    #[arg(long, default_value = "/")]
    pub separator: String,
    /// Open every session there is. Needed instead of an empty prefix, so
    /// that such a token is never issued by accident.
    #[arg(long, conflicts_with_all = ["prefix"])]
    pub all_sessions: bool,
    /// What the token allows.
    #[arg(long, value_enum, default_value_t = Scope::Write)]
    pub scope: Scope,
    /// Lifetime, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
    /// The signing secret; the services' `AUTH_TOKEN_SECRET` (at least 32 bytes).
    #[arg(long, env = "AUTH_TOKEN_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub secret: String,
}

/// The claims `args` ask for at `now` (Unix seconds).
pub fn claims(args: &TokenArgs, now: u64) -> anyhow::Result<Claims> {
    let exp = now
        .checked_add(args.ttl_secs)
        .context("--ttl-secs is too large: the expiry does not fit in 64 bits")?;
    let (sid, prefix, sep) = if args.all_sessions {
        if !args.session.is_empty() {
            bail!("--all-sessions opens every session; drop --session");
        }
        (String::new(), true, Some(args.separator.clone()))
    } else if args.prefix {
        if args.session.is_empty() {
            bail!("an empty --prefix opens every session: say --all-sessions if that is meant");
        }
        if args.separator.is_empty() {
            bail!("--separator must not be empty");
        }
        let mut sid = args.session.clone();
        if !sid.ends_with(&args.separator) {
            sid.push_str(&args.separator);
        }
        (sid, true, Some(args.separator.clone()))
    } else {
        if args.session.is_empty() {
            bail!("--session is required (or --all-sessions)");
        }
        (args.session.clone(), false, None)
    };
    Ok(Claims {
        sid,
        prefix,
        sep,
        scope: args.scope,
        exp,
    })
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let claims = claims(&args, now())?;
    println!("{}", issue_token(args.secret.as_bytes(), &claims));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(session: &str) -> TokenArgs {
        TokenArgs {
            session: session.to_owned(),
            prefix: false,
            separator: "/".to_owned(),
            all_sessions: false,
            scope: Scope::Write,
            ttl_secs: 60,
            secret: "x".repeat(32),
        }
    }

    #[test]
    fn the_largest_ttl_is_an_error_not_a_panic() {
        let mut huge = args("s");
        huge.ttl_secs = u64::MAX;
        assert!(claims(&huge, 1_700_000_000).is_err());
    }

    #[test]
    fn an_empty_prefix_needs_the_explicit_flag() {
        let mut empty = args("");
        empty.prefix = true;
        assert!(claims(&empty, 0).is_err());
        let mut everything = args("");
        everything.all_sessions = true;
        let all = claims(&everything, 0).unwrap();
        assert!(all.covers("admin"));
    }

    #[test]
    fn a_prefix_gets_its_separator() {
        let mut tenant = args("a");
        tenant.prefix = true;
        let claims = claims(&tenant, 0).unwrap();
        assert_eq!(claims.sid, "a/");
        assert!(claims.covers("a/1"));
        assert!(!claims.covers("admin"));
    }

    #[test]
    fn an_empty_session_is_refused() {
        assert!(claims(&args(""), 0).is_err());
    }
}
