//! `sessionfold token`: issue a signed session token (see
//! `sessionfold_common::auth`).

use sessionfold_common::auth::{Claims, Scope, issue_token, now};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The session_id the token opens (or a prefix with `--prefix`).
    #[arg(long)]
    pub session: String,
    /// Open every session whose id starts with `--session`.
    #[arg(long)]
    pub prefix: bool,
    /// What the token allows.
    #[arg(long, value_enum, default_value_t = Scope::Write)]
    pub scope: Scope,
    /// Lifetime, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
    /// The signing secret; the services' `AUTH_TOKEN_SECRET`.
    #[arg(long, env = "AUTH_TOKEN_SECRET", hide_env_values = true)]
    pub secret: String,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.secret.is_empty(), "the signing secret is empty");
    let claims = Claims {
        sid: args.session,
        prefix: args.prefix,
        scope: args.scope,
        exp: now() + args.ttl_secs,
    };
    println!("{}", issue_token(args.secret.as_bytes(), &claims));
    Ok(())
}
