//! `sessionfold rebuild`: rebuilds every session document from the event
//! stream into a fresh key prefix.
//!
//! It runs the processor's own apply step ([`Processor`]) with a new durable
//! consumer that starts at the beginning of the stream and a key prefix that
//! holds nothing yet, waits until that consumer has nothing pending (nothing
//! undelivered, nothing unacked), stops, and deletes the consumer. Because
//! the fold depends only on the set of frames and their stream sequence
//! (docs/design.md §2.1), the rebuilt documents equal the live ones byte for byte for
//! every frame the stream still holds. The live processors keep running
//! meanwhile; frames that arrive during the rebuild are applied to both.
//!
//! The stream itself is never changed: its limits are read from JetStream
//! rather than from flags, and a `SUBJECT_PREFIX` that does not match the
//! stream is refused. Frames that could not be applied live are moved to the
//! dead-letter stream again (with the same message id, so JetStream drops
//! the copy within its duplicate window).
//!
//! Switching readers to the rebuilt prefix is a restart of the api with
//! `KEY_PREFIX=<new prefix>` (and of the processors, so they write there
//! too); the README's "Operating sessionfold" section has the procedure.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::DeliverPolicy;
use sessionfold_common::jetstream as js_setup;
use sessionfold_common::settings::{NatsSettings, RedisSettings, ShutdownSettings};
use sessionfold_core::Subjects;
use sessionfold_processor::Processor;
use sessionfold_processor::config::{LifecycleSettings, SinkSettings, WorkerSettings};
use sessionfold_processor::consumer::consumer_config;
use tokio_util::sync::CancellationToken;

/// The settings it shares with the processor take their defaults from the
/// processor's flags; the key prefix and the consumer have none, so that a
/// rebuild never writes into the live prefix or takes the live consumer.
#[derive(Debug, Clone, clap::Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub nats: NatsSettings,
    /// Redis URL (Redis ≥ 7 with RedisJSON).
    #[arg(long, env = "REDIS_URL", default_value_t = RedisSettings::default().redis_url)]
    pub redis_url: String,
    /// Key prefix to rebuild into, e.g. `sf2:`. It must hold no keys yet
    /// (see `--allow-existing-keys`). Deliberately not read from
    /// `KEY_PREFIX`, so that a rebuild never writes into the live prefix by
    /// accident.
    #[arg(long, value_parser = sessionfold_common::settings::parse_key_prefix)]
    pub key_prefix: String,
    /// Name of the temporary durable consumer; it must not exist yet and is
    /// deleted when the rebuild is done.
    #[arg(long)]
    pub consumer: String,
    /// Rebuild into a prefix that already holds keys (the apply step is
    /// idempotent, so this resumes an interrupted rebuild, or with
    /// `--from-sequence` applies the frames stored after an earlier one).
    #[arg(long)]
    pub allow_existing_keys: bool,
    /// Replay from this stream sequence on instead of from the start: after
    /// a rebuild that reached sequence N, `--from-sequence N+1
    /// --allow-existing-keys` adds only what came later.
    #[arg(long)]
    pub from_sequence: Option<u64>,
    /// Give up after this many seconds; 0 waits as long as it takes.
    #[arg(long, default_value_t = 0)]
    pub timeout_secs: u64,
    /// Most messages applied in one batch.
    #[arg(long, env = "BATCH_SIZE", default_value_t = WorkerSettings::default().batch_size)]
    pub batch_size: usize,
    /// Most children one session may hold; 0 for no limit (use the live value).
    #[arg(
        long,
        env = "MAX_CHILDREN_PER_SESSION",
        default_value_t = WorkerSettings::default().max_children_per_session
    )]
    pub max_children_per_session: u64,
    /// Document TTL in seconds; 0 for none (use the live value).
    #[arg(
        long,
        env = "DOCUMENT_TTL_SECS",
        default_value_t = WorkerSettings::default().document_ttl_secs
    )]
    pub document_ttl_secs: u64,
    /// Deliveries of a refused message before it goes to the dead-letter stream.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = WorkerSettings::default().max_attempts)]
    pub max_attempts: i64,
    /// Stream that keeps dead letters.
    #[arg(
        long,
        env = "DEAD_LETTER_STREAM",
        default_value_t = WorkerSettings::default().dead_letter_stream
    )]
    pub dead_letter_stream: String,
    /// Subject prefix of dead letters.
    #[arg(
        long,
        env = "DEAD_LETTER_SUBJECT_PREFIX",
        default_value_t = WorkerSettings::default().dead_letter_subject_prefix
    )]
    pub dead_letter_subject_prefix: String,
}

/// What a finished rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// The highest stream sequence applied.
    pub last_stream_sequence: u64,
    /// Documents under the new prefix.
    pub documents: u64,
}

/// How often the consumer's progress is read.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often progress is reported on stderr.
const REPORT_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(args: RebuildArgs) -> anyhow::Result<()> {
    let key_prefix = args.key_prefix.clone();
    let consumer = args.consumer.clone();
    let rebuilt = rebuild(args).await?;
    println!(
        "rebuilt {} documents from stream sequences up to {} into key prefix {key_prefix:?}; consumer {consumer} deleted",
        rebuilt.documents, rebuilt.last_stream_sequence
    );
    Ok(())
}

/// Rebuilds every document into `args.key_prefix` and deletes the
/// temporary consumer (also when the rebuild fails after creating it).
pub async fn rebuild(args: RebuildArgs) -> anyhow::Result<Rebuilt> {
    if args.key_prefix.is_empty() {
        bail!("--key-prefix must not be empty");
    }
    let client = js_setup::connect(&args.nats, "sessionfold-rebuild").await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(&args.nats.stream_name)
        .await
        .with_context(|| format!("opening the event stream {}", args.nats.stream_name))?;
    let stream_info = stream.info().await?.clone();
    let nats = matching_settings(&args.nats, &stream_info.config)?;
    // Likewise the dead-letter stream: a wrong prefix must not re-point it,
    // and the limits it has are kept (the defaults could be lower, and
    // lowering them drops letters).
    let mut dead_limits = None;
    if let Ok(mut dead) = js.get_stream(&args.dead_letter_stream).await {
        let config = dead.info().await?.config.clone();
        dead_limits = Some((config.max_age.as_secs(), config.max_bytes));
        let subjects = config.subjects;
        let dead_letters = Subjects {
            dead_letters_prefix: args.dead_letter_subject_prefix.clone(),
            ..Subjects::default()
        };
        let wanted = vec![dead_letters.dead_letters_filter()];
        if subjects != wanted {
            bail!(
                "dead-letter stream {} listens on {subjects:?}, not {wanted:?}: set DEAD_LETTER_SUBJECT_PREFIX to the live value",
                args.dead_letter_stream
            );
        }
    }
    if stream.consumer_info(&args.consumer).await.is_ok() {
        bail!(
            "consumer {} already exists on {}; choose a new name (or delete it first)",
            args.consumer,
            args.nats.stream_name
        );
    }
    let redis = redis::Client::open(args.redis_url.as_str())
        .with_context(|| format!("invalid REDIS_URL {:?}", args.redis_url))?;
    let mut connection = redis
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {}", args.redis_url))?;
    if !args.allow_existing_keys && count_keys(&mut connection, &args.key_prefix, 1).await? > 0 {
        bail!(
            "key prefix {:?} already holds keys; rebuild into a fresh prefix (or pass --allow-existing-keys to resume)",
            args.key_prefix
        );
    }

    let config = sessionfold_processor::Config {
        listen: "127.0.0.1:0".parse().expect("a valid address"),
        nats,
        redis: RedisSettings {
            redis_url: args.redis_url.clone(),
            key_prefix: args.key_prefix.clone(),
            redis_cluster: false,
        },
        worker: WorkerSettings {
            consumer_name: args.consumer.clone(),
            batch_size: args.batch_size,
            max_attempts: args.max_attempts,
            dead_letter_stream: args.dead_letter_stream.clone(),
            dead_letter_subject_prefix: args.dead_letter_subject_prefix.clone(),
            max_children_per_session: args.max_children_per_session,
            document_ttl_secs: args.document_ttl_secs,
            dead_letter_max_age_secs: dead_limits.map_or(
                WorkerSettings::default().dead_letter_max_age_secs,
                |(age, _)| age,
            ),
            dead_letter_max_bytes: dead_limits.map_or(
                WorkerSettings::default().dead_letter_max_bytes,
                |(_, bytes)| bytes,
            ),
            ..WorkerSettings::default()
        },
        // The rebuild replays the whole stream itself; the live processors
        // repair the live prefix.
        // Nor does it close sessions or keep their timers: its documents
        // are a copy (docs/design.md "Session lifecycle" says what that
        // means after switching to it).
        lifecycle: LifecycleSettings {
            session_lifecycle: false,
            ..LifecycleSettings::default()
        },
        sink: SinkSettings {
            repair_check_interval_ms: 0,
            ..SinkSettings::default()
        },
        shutdown: ShutdownSettings::default(),
        http: sessionfold_common::http::HttpLimits::default(),
    };
    let processor = Processor::build(config.clone()).await?;
    // Created here rather than by the processor, so that it can start at
    // `--from-sequence`; the processor then finds and uses it.
    let mut wanted = consumer_config(&config.worker);
    if let Some(start_sequence) = args.from_sequence {
        wanted.deliver_policy = DeliverPolicy::ByStartSequence { start_sequence };
    }
    stream
        .create_consumer(wanted)
        .await
        .with_context(|| format!("creating the consumer {}", args.consumer))?;
    let stop = CancellationToken::new();
    let mut running = tokio::spawn(processor.run(stop.clone()));
    tracing::info!(
        consumer = %args.consumer,
        key_prefix = %args.key_prefix,
        last_stream_sequence = stream_info.state.last_sequence,
        "rebuilding"
    );

    let deadline =
        (args.timeout_secs > 0).then(|| Instant::now() + Duration::from_secs(args.timeout_secs));
    let caught_up = async {
        let mut last_report = Instant::now();
        loop {
            tokio::select! {
                finished = &mut running => {
                    finished??;
                    bail!("the rebuild's processor stopped early");
                }
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                bail!(
                    "the rebuild did not catch up within {} s",
                    args.timeout_secs
                );
            }
            // The consumer appears once the processor created it.
            let Ok(info) = stream.consumer_info(&args.consumer).await else {
                continue;
            };
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return Ok(info.ack_floor.stream_sequence);
            }
            if last_report.elapsed() >= REPORT_INTERVAL {
                eprintln!(
                    "rebuild: {} frames applied, {} to go",
                    info.ack_floor.consumer_sequence,
                    info.num_pending + info.num_ack_pending as u64
                );
                last_report = Instant::now();
            }
        }
    };
    let outcome = caught_up.await;
    stop.cancel();
    if !running.is_finished() {
        match tokio::time::timeout(Duration::from_secs(30), &mut running).await {
            Ok(Ok(Err(err))) => {
                tracing::warn!(error = %err, "the rebuild's processor failed while stopping")
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "the rebuild's processor panicked"),
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                running.abort();
                tracing::warn!("the rebuild's processor did not stop in time");
            }
        }
    }
    let deleted = stream.delete_consumer(&args.consumer).await;
    let last_stream_sequence = outcome?;
    deleted.with_context(|| format!("deleting the consumer {}", args.consumer))?;
    let documents = count_keys(
        &mut connection,
        &format!("{}doc:", args.key_prefix),
        u64::MAX,
    )
    .await?;
    Ok(Rebuilt {
        last_stream_sequence,
        documents,
    })
}

/// The NATS settings that describe `current` exactly, so that setting up
/// the processor changes nothing about the stream. Refuses a subject prefix
/// that the stream does not listen on.
fn matching_settings(
    wanted: &NatsSettings,
    current: &async_nats::jetstream::stream::Config,
) -> anyhow::Result<NatsSettings> {
    let subjects = vec![format!("{}.*", wanted.subject_prefix)];
    if current.subjects != subjects {
        bail!(
            "stream {} listens on {:?}, not {:?}: set SUBJECT_PREFIX to the live value",
            current.name,
            current.subjects,
            subjects
        );
    }
    Ok(NatsSettings {
        stream_max_age_secs: current.max_age.as_secs(),
        stream_max_bytes: current.max_bytes,
        stream_replicas: current.num_replicas,
        stream_duplicate_window_secs: current.duplicate_window.as_secs(),
        ..wanted.clone()
    })
}

/// Keys starting with `prefix`, counted up to `limit`.
async fn count_keys(
    connection: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    limit: u64,
) -> anyhow::Result<u64> {
    let pattern = format!("{}*", escape_glob(prefix));
    let mut cursor: u64 = 0;
    let mut count = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await
            .context("scanning Redis keys")?;
        count += keys.len() as u64;
        if next == 0 || count >= limit {
            return Ok(count);
        }
        cursor = next;
    }
}

/// `prefix` with Redis glob characters escaped.
fn escape_glob(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_in_a_prefix_are_escaped() {
        assert_eq!(escape_glob("sf:"), "sf:");
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn settings_follow_the_stream_and_refuse_other_subjects() {
        let wanted = NatsSettings::local("nats://127.0.0.1:4222");
        let current = async_nats::jetstream::stream::Config {
            name: sessionfold_core::names::DEFAULT_EVENT_STREAM.to_owned(),
            subjects: vec![Subjects::default().events_filter()],
            max_age: Duration::from_secs(3600),
            max_bytes: 1 << 30,
            num_replicas: 3,
            duplicate_window: Duration::from_secs(60),
            ..Default::default()
        };
        let settings = matching_settings(&wanted, &current).unwrap();
        assert_eq!(
            js_setup::stream_config(&settings).max_age,
            Duration::from_secs(3600)
        );
        assert_eq!(settings.stream_max_bytes, 1 << 30);
        assert_eq!(settings.stream_replicas, 3);
        assert_eq!(settings.stream_duplicate_window_secs, 60);

        let other = NatsSettings {
            subject_prefix: "elsewhere".to_owned(),
            ..wanted
        };
        assert!(matching_settings(&other, &current).is_err());
    }
}
