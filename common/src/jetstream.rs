//! Connecting to NATS and bringing the event stream to its configured
//! settings at start-up (docs/design.md §3).

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};

use crate::settings::NatsSettings;

/// Connects to the configured NATS server(s). A comma-separated URL list
/// names the members of a cluster.
pub async fn connect(settings: &NatsSettings, name: &str) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<async_nats::ServerAddr> = settings
        .nats_url
        .split(',')
        .map(|url| url.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid NATS_URL {:?}", redacted(&settings.nats_url)))?;
    let mut options = async_nats::ConnectOptions::new().name(name);
    // Credentials ride in the URL (`nats://user:password@host`, or
    // `nats://token@host`); the client does not read them from there itself.
    if let Some(server) = servers.iter().find(|server| server.has_user_pass()) {
        let user = server.username().map(percent_decoded).unwrap_or_default();
        options = match server.password() {
            Some(password) => options.user_and_password(user, percent_decoded(password)),
            None => options.token(user),
        };
    }
    options
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {}", redacted(&settings.nats_url)))
}

/// The stream configuration sessionfold wants.
pub fn stream_config(settings: &NatsSettings) -> stream::Config {
    stream::Config {
        name: settings.stream_name.clone(),
        subjects: vec![format!("{}.*", settings.subject_prefix)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: settings.stream_max_age(),
        max_bytes: settings.stream_max_bytes,
        num_replicas: settings.stream_replicas,
        duplicate_window: settings.duplicate_window(),
        // Group commit at ingest stores frames by atomic batches.
        allow_atomic_publish: true,
        // At a limit, refuse new frames (ingest answers `unavailable`)
        // rather than drop acknowledged ones the processor may not have
        // folded yet.
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Creates the event stream, or updates it when its settings drifted from
/// the configured ones.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> anyhow::Result<stream::Stream> {
    ensure_stream_config(js, stream_config(settings)).await
}

/// Attempts of [`ensure_stream_config`] while the cluster settles.
const SETUP_ATTEMPTS: u32 = 5;

/// Creates a stream with `wanted`, or updates an existing one whose
/// sessionfold-owned settings differ. On a cluster, a request racing another
/// replica's creation of the same stream, or arriving while the new stream
/// elects its leader, can go unanswered or find the stream not there yet:
/// such answers are retried (the step is idempotent).
pub async fn ensure_stream_config(
    js: &jetstream::Context,
    wanted: stream::Config,
) -> anyhow::Result<stream::Stream> {
    let mut attempt = 1;
    loop {
        match try_ensure_stream_config(js, wanted.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(err)
                if attempt < SETUP_ATTEMPTS
                    && err.chain().any(|cause| {
                        let text = cause.to_string();
                        text.contains("timed out") || text.contains("stream not found")
                    }) =>
            {
                tracing::warn!(stream = %wanted.name, attempt, error = %format!("{err:#}"), "stream set-up not answered yet; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(250 * u64::from(attempt)))
                    .await;
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

async fn try_ensure_stream_config(
    js: &jetstream::Context,
    wanted: stream::Config,
) -> anyhow::Result<stream::Stream> {
    let mut stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .with_context(|| format!("creating stream {}", wanted.name))?;
    let current = stream
        .info()
        .await
        .with_context(|| format!("reading stream {}", wanted.name))?
        .config
        .clone();
    let drifted = current.subjects != wanted.subjects
        || current.max_age != wanted.max_age
        || current.max_bytes != wanted.max_bytes
        || current.max_messages_per_subject != wanted.max_messages_per_subject
        || current.num_replicas != wanted.num_replicas
        || current.duplicate_window != wanted.duplicate_window
        || current.allow_atomic_publish != wanted.allow_atomic_publish
        || current.discard != wanted.discard;
    if drifted {
        tracing::info!(stream = %wanted.name, "updating stream settings");
        js.update_stream(wanted.clone())
            .await
            .with_context(|| format!("updating stream {}", wanted.name))?;
        stream = js
            .get_stream(&wanted.name)
            .await
            .with_context(|| format!("reading stream {}", wanted.name))?;
    }
    Ok(stream)
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A server URL list with passwords replaced, for messages and logs.
pub fn redacted(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &url[..scheme], &url[at + 1..])
            }
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_decoded_and_hidden() {
        assert_eq!(percent_decoded("p%40ss%2Fword"), "p@ss/word");
        assert_eq!(percent_decoded("plain%"), "plain%");
        assert_eq!(
            redacted("nats://u:p@a:4222,nats://b:4222"),
            "nats://***@a:4222,nats://b:4222"
        );
    }
}
