//! `sessionfold sessions tail`: print finished sessions (docs/design.md §10)
//! as the processor publishes them, one JSON object per line.

use anyhow::Context as _;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt as _;
use sessionfold_common::jetstream as js_setup;
use sessionfold_common::settings::NatsSettings;
use sessionfold_core::SessionId;

#[derive(Debug, clap::Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub nats: NatsSettings,
    /// JetStream stream of finished sessions.
    #[arg(long, env = "SESSIONS_STREAM", default_value = sessionfold_core::names::DEFAULT_SESSIONS_STREAM)]
    pub sessions_stream: String,
    /// Subject prefix of finished sessions.
    #[arg(long, env = "SESSIONS_SUBJECT_PREFIX", default_value = sessionfold_core::names::DEFAULT_SESSIONS_PREFIX)]
    pub sessions_subject_prefix: String,
    #[command(subcommand)]
    pub action: SessionsAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum SessionsAction {
    /// Print finished sessions as they close, one JSON object per line.
    Tail {
        /// Start with every finished session the stream still keeps, not
        /// only the ones that close from now on.
        #[arg(long)]
        from_start: bool,
        /// Only this session's closes.
        #[arg(long)]
        session: Option<String>,
        /// Stop after this many (0: follow until interrupted).
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
}

pub async fn run(args: SessionsArgs) -> anyhow::Result<()> {
    let SessionsAction::Tail {
        from_start,
        session,
        limit,
    } = args.action;
    let filter_subject = match session {
        Some(id) => {
            let id = SessionId::parse(&id).map_err(|e| anyhow::anyhow!("--session: {e}"))?;
            format!("{}.{}", args.sessions_subject_prefix, id.token())
        }
        None => format!("{}.*", args.sessions_subject_prefix),
    };
    let client = js_setup::connect(&args.nats, "sessionfold-sessions").await?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(&args.sessions_stream)
        .await
        .with_context(|| format!("opening the stream {}", args.sessions_stream))?;
    // An ordered consumer: nothing to clean up, and it never acks, so a tail
    // takes nothing away from the durable consumers of loaders.
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject,
            deliver_policy: if from_start {
                DeliverPolicy::All
            } else {
                DeliverPolicy::New
            },
            ..Default::default()
        })
        .await
        .context("creating a consumer of finished sessions")?;
    let mut messages = consumer.messages().await?;
    let mut printed = 0u64;
    while let Some(message) = messages.next().await {
        let message = message.context("reading finished sessions")?;
        println!("{}", String::from_utf8_lossy(&message.payload));
        printed += 1;
        if limit > 0 && printed >= limit {
            break;
        }
    }
    Ok(())
}
