//! The two ends of a run as its harness sees them: the producer that sends
//! the load to ingest, and the documents the processors stored.

use std::net::SocketAddr;
use std::time::Duration;

use sessionfold_client::{Producer, ProducerConfig};
use sessionfold_core::{Keys, SessionId};

/// Sessions whose documents one pipelined round trip reads.
const DOCUMENTS_PER_ROUND_TRIP: usize = 200;

/// A producer for a run's load, sending to the ingest at `ingest` whose
/// `PUBLISH_TIMEOUT_MS` is `publish_timeout_ms`: it waits for a reply a
/// little longer than ingest waits for JetStream.
pub fn run_producer(ingest: SocketAddr, publish_timeout_ms: u64) -> Producer {
    let mut config =
        ProducerConfig::new(&format!("ws://{ingest}/websocket")).expect("a valid endpoint");
    config.reply_timeout = Duration::from_millis(publish_timeout_ms) + Duration::from_secs(5);
    config.deadline = Duration::from_secs(120);
    Producer::new(config)
}

/// The raw `JSON.GET` text of every session's document (`None`: there is
/// none), in the order of `session_ids`, from the Redis at `redis_url`.
pub async fn read_documents(
    redis_url: &str,
    keys: &Keys,
    session_ids: &[String],
) -> anyhow::Result<Vec<Option<String>>> {
    let client = redis::Client::open(redis_url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut documents = Vec::with_capacity(session_ids.len());
    for chunk in session_ids.chunks(DOCUMENTS_PER_ROUND_TRIP) {
        let mut pipe = redis::pipe();
        for id in chunk {
            let session = SessionId::parse(id).map_err(|err| anyhow::anyhow!("{id:?}: {err}"))?;
            pipe.cmd("JSON.GET").arg(keys.session(&session).doc);
        }
        let chunk_docs: Vec<Option<String>> = pipe.query_async(&mut connection).await?;
        documents.extend(chunk_docs);
    }
    Ok(documents)
}
