//! Document reads that cannot starve Redis or the api.
//!
//! Every read of a document (`GET /data` and the live streams' shared reads)
//! goes through a [`ReadPool`]:
//!
//! - **Connections of their own, a bounded number of commands on each.**
//!   Reads use dedicated Redis connections, never the connection other work
//!   shares. A small-document connection carries up to
//!   `API_READ_PIPELINE` commands at once (sent and answered together, so
//!   Redis and the api pay one system call for several reads) and a read
//!   takes the connection with the fewest, so a small reply queues behind
//!   another only when every connection is busy; a large-document
//!   connection carries one command at a time, so a large reply never
//!   queues behind another. Redis thus holds at most `API_READ_PIPELINE`
//!   replies per small-read connection and one per large-read connection
//!   in its output buffers. A connection whose command failed or ran past
//!   its deadline is dropped (closing it, once the commands still on it are
//!   done, frees what Redis still buffered for it) and replaced on next use.
//! - **Two lanes.** Small documents use `API_READ_CONNECTIONS` connections;
//!   large ones (at least `API_LARGE_READ_BYTES`) their own
//!   `API_LARGE_READS`, so big documents can never take every connection
//!   and small reads keep their capacity.
//! - **Deadlines.** Waiting for a connection and the command together get
//!   `API_READ_TIMEOUT_MS`; past it the read fails at once with
//!   [`ReadError::Unavailable`] (a 503 `unavailable`), never a hang.
//! - **Sizes.** A document's size is the size served last time (a bounded
//!   cache of [`SIZE_CACHE_ENTRIES`] keys); a document this api has not read
//!   yet is estimated from its number of children (`JSON.ARRLEN`, O(1)) at
//!   [`ESTIMATED_CHILD_BYTES`] each. Documents known to be over
//!   `API_MAX_DOCUMENT_BYTES` are refused without reading them.
//! - **Large documents held at once.** A large document holds one of
//!   `API_LARGE_RESPONSES` slots from before its read until its response
//!   body is done, so the api's memory for large bodies stays under
//!   `API_LARGE_RESPONSES × API_MAX_DOCUMENT_BYTES`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::FromRedisValue;
use sessionfold_common::redis_conn::{RedisConnection, RedisTimeouts};
use sessionfold_common::settings::RedisSettings;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};

/// Keys whose last served size is remembered.
pub const SIZE_CACHE_ENTRIES: usize = 65_536;

/// Bytes per child assumed for a document this api has not read yet (a
/// typical event is 60–100 bytes of JSON).
pub const ESTIMATED_CHILD_BYTES: u64 = 64;

/// How the api reads documents; 0 is not allowed for the counts.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ReadSettings {
    /// Redis connections for reads of small documents (each carries up to
    /// `API_READ_PIPELINE` commands at a time).
    #[arg(long, env = "API_READ_CONNECTIONS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub read_connections: u32,
    /// Commands in flight at once on each small-read connection; 1 sends
    /// one read at a time per connection.
    #[arg(long, env = "API_READ_PIPELINE", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub read_pipeline: u32,
    /// Large documents read from Redis at once, each on its own connection.
    #[arg(long, env = "API_LARGE_READS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub large_reads: u32,
    /// Size from which a document counts as large, in bytes.
    #[arg(long, env = "API_LARGE_READ_BYTES", default_value_t = 262_144)]
    pub large_read_bytes: u64,
    /// Large documents the api holds at once, from their read until their
    /// response is sent.
    #[arg(long, env = "API_LARGE_RESPONSES", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub large_responses: u32,
    /// Deadline of one read (waiting for a connection and Redis's answer),
    /// in milliseconds; past it the request gets 503 `unavailable`.
    #[arg(long, env = "API_READ_TIMEOUT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub read_timeout_ms: u64,
    /// Largest document served whole, in bytes; larger ones get 413
    /// `document_too_large`.
    #[arg(long, env = "API_MAX_DOCUMENT_BYTES", default_value_t = 8_388_608)]
    pub max_document_bytes: u64,
}

sessionfold_common::defaults_from_flags!(ReadSettings);

impl ReadSettings {
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }
}

/// Why a read gave no document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Redis could not be read in time; the client may retry.
    #[error("{0}")]
    Unavailable(Unavailable),
    /// The document is larger than the api serves whole.
    #[error("the document is {bytes} bytes, over this api's limit of {limit}")]
    TooLarge { bytes: u64, limit: u64 },
}

/// Why Redis could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("no read connection had room within the read deadline")]
    Busy,
    #[error("too many large documents are being served; retry shortly")]
    LargeBusy,
    #[error("Redis did not answer within the read deadline")]
    Timeout,
    #[error("Redis: {0}")]
    Redis(String),
}

impl ReadError {
    /// The `reason` label of [`API_READS_REFUSED_TOTAL`](sessionfold_common::metrics::API_READS_REFUSED_TOTAL).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Unavailable(Unavailable::Busy) => "busy",
            Self::Unavailable(Unavailable::LargeBusy) => "large_busy",
            Self::Unavailable(Unavailable::Timeout) => "timeout",
            Self::Unavailable(Unavailable::Redis(_)) => "redis",
        }
    }
}

impl From<Unavailable> for ReadError {
    fn from(reason: Unavailable) -> Self {
        Self::Unavailable(reason)
    }
}

/// A document read from Redis. A large one holds its slot while this value
/// (or the response body made from it) lives.
pub struct Document {
    pub bytes: Bytes,
    /// The session's state (`open`, or its close reason), when asked for.
    pub state: Option<String>,
    /// The session's revision (docs/design.md §4.1; 0 for a document
    /// without a state hash), when asked for: read with the document in
    /// one atomic step.
    pub revision: Option<u64>,
    slot: Option<OwnedSemaphorePermit>,
}

impl Document {
    /// A document that holds no slot.
    pub fn small(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
            state: None,
            revision: None,
            slot: None,
        }
    }

    /// Whether this document holds a large-document slot.
    pub fn is_large(&self) -> bool {
        self.slot.is_some()
    }

    /// The bytes and the slot, for a body that keeps the slot until sent.
    pub fn into_parts(self) -> (Bytes, Option<OwnedSemaphorePermit>) {
        (self.bytes, self.slot)
    }
}

/// Reads documents with bounded connections, deadlines and large-read caps.
pub struct ReadPool {
    small: Lane,
    large: Lane,
    large_slots: Arc<Semaphore>,
    sizes: SizeCache,
    settings: ReadSettings,
}

impl ReadPool {
    /// A pool for `redis`; connections are opened when first needed.
    pub fn new(redis: &RedisSettings, settings: &ReadSettings) -> Self {
        Self {
            small: Lane::pipelined(
                "small",
                redis,
                settings.read_connections as usize,
                settings.read_pipeline as usize,
            ),
            large: Lane::new("large", redis, settings.large_reads as usize),
            large_slots: Arc::new(Semaphore::new(settings.large_responses as usize)),
            sizes: SizeCache::new(SIZE_CACHE_ENTRIES),
            settings: settings.clone(),
        }
    }

    pub fn settings(&self) -> &ReadSettings {
        &self.settings
    }

    /// Runs one bounded read (a page of children) on the small documents'
    /// connections, within the read deadline.
    pub(crate) async fn query_small<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, Unavailable> {
        let deadline = Instant::now() + self.settings.read_timeout();
        self.small.query(cmd, deadline).await
    }

    /// Reads the document at `key`: `None` when there is none.
    pub async fn read(&self, key: &str) -> Result<Option<Document>, ReadError> {
        self.read_with_state(key, None).await
    }

    /// Reads the document at `key` and, in the same round trip, the
    /// session's state from its state hash at `state_key` (`open` unless
    /// the hash says it closed).
    pub async fn read_with_state(
        &self,
        key: &str,
        state_key: Option<&str>,
    ) -> Result<Option<Document>, ReadError> {
        self.read_recorded(key, state_key.map(|key| (key, false)))
            .await
    }

    /// Reads the document at `key` with the session's state and revision
    /// from its state hash at `state_key`, all three in one atomic step (a
    /// read-only script), so the revision is the document's.
    pub async fn read_with_revision(
        &self,
        key: &str,
        state_key: &str,
    ) -> Result<Option<Document>, ReadError> {
        self.read_recorded(key, Some((state_key, true))).await
    }

    async fn read_recorded(
        &self,
        key: &str,
        state_key: Option<(&str, bool)>,
    ) -> Result<Option<Document>, ReadError> {
        let read = self.read_unrecorded(key, state_key).await;
        if let Err(err) = &read {
            ::metrics::counter!(
                sessionfold_common::metrics::API_READS_REFUSED_TOTAL,
                "reason" => err.reason()
            )
            .increment(1);
        }
        read
    }

    async fn read_unrecorded(
        &self,
        key: &str,
        state_key: Option<(&str, bool)>,
    ) -> Result<Option<Document>, ReadError> {
        let deadline = Instant::now() + self.settings.read_timeout();
        let limit = self.settings.max_document_bytes;
        let size = match self.sizes.get(key) {
            Some(bytes) if bytes > limit => return Err(ReadError::TooLarge { bytes, limit }),
            Some(bytes) => bytes,
            None => self.estimate(key, deadline).await?,
        };
        let large = size >= self.settings.large_read_bytes;
        let slot = if large {
            let slots = self.large_slots.clone();
            Some(
                timeout_at(deadline, slots.acquire_owned())
                    .await
                    .map_err(|_| Unavailable::LargeBusy)?
                    .expect("the large-document semaphore is never closed"),
            )
        } else {
            None
        };
        let lane = if large { &self.large } else { &self.small };
        let mut get = redis::cmd("JSON.GET");
        get.arg(key);
        // Bytes, not a String: RedisJSON writes UTF-8, and checking it again
        // would cost a pass over every document served.
        let mut revision = None;
        let (document, state): (Option<Vec<u8>>, Option<String>) = match state_key {
            Some((state_key, true)) => {
                let mut script = redis::cmd("EVAL_RO");
                script
                    .arg(READ_WITH_REVISION)
                    .arg(2)
                    .arg(key)
                    .arg(state_key);
                let read: Option<(Vec<u8>, String, String)> = lane.query(&script, deadline).await?;
                match read {
                    None => (None, None),
                    Some((document, rev, state)) => {
                        revision = Some(rev.parse().unwrap_or(0));
                        let state = if state.is_empty() {
                            "open".to_owned()
                        } else {
                            state
                        };
                        (Some(document), Some(state))
                    }
                }
            }
            Some((state_key, false)) => {
                let mut pipe = redis::pipe();
                pipe.add_command(get).cmd("HGET").arg(state_key).arg("st");
                let (document, state): (Option<Vec<u8>>, Option<String>) =
                    lane.query(&pipe, deadline).await?;
                (document, Some(state.unwrap_or_else(|| "open".to_owned())))
            }
            None => (lane.query(&get, deadline).await?, None),
        };
        let Some(document) = document else {
            self.sizes.forget(key);
            return Ok(None);
        };
        let bytes = document.len() as u64;
        self.sizes.insert(key, bytes);
        if bytes > limit {
            return Err(ReadError::TooLarge { bytes, limit });
        }
        // A document that grew past the threshold since it was last sized
        // takes a slot if one is free; it is already read either way.
        let slot = match slot {
            None if bytes >= self.settings.large_read_bytes => {
                self.large_slots.clone().try_acquire_owned().ok()
            }
            slot => slot,
        };
        Ok(Some(Document {
            bytes: Bytes::from(document),
            state,
            revision,
            slot,
        }))
    }

    /// The size of a document not read before, from its number of children.
    /// A probe that fails for any reason but Redis being unreachable (an
    /// absent key, a document without `children`) estimates 0: the read
    /// that follows finds out what is there.
    async fn estimate(&self, key: &str, deadline: Instant) -> Result<u64, ReadError> {
        let mut arrlen = redis::cmd("JSON.ARRLEN");
        arrlen.arg(key).arg("$.children");
        match self
            .small
            .query::<Vec<Option<u64>>, _>(&arrlen, deadline)
            .await
        {
            Ok(lengths) => {
                let children = lengths.into_iter().flatten().next().unwrap_or(0);
                Ok(children.saturating_mul(ESTIMATED_CHILD_BYTES))
            }
            Err(Unavailable::Redis(_)) => Ok(0),
            Err(reason) => Err(reason.into()),
        }
    }
}

/// The document, the revision and the state of a session in one atomic
/// step (`EVAL_RO`: the api's Redis user may run read-only scripts only);
/// a missing document gives nil, a missing field an empty string.
const READ_WITH_REVISION: &str = "local d = redis.call('JSON.GET', KEYS[1]) \
     if not d then return false end \
     return {d, redis.call('HGET', KEYS[2], 'rev') or '', redis.call('HGET', KEYS[2], 'st') or ''}";

/// Connections of one lane: at most `size`, each carrying at most `depth`
/// commands at a time (one for the large documents' and the searches'
/// lanes).
pub(crate) struct Lane {
    name: &'static str,
    /// `size × depth`: a command waits here until some connection has room.
    permits: Semaphore,
    depth: usize,
    /// Commands in flight on each slot's connection; a command takes the
    /// slot with the fewest, so a reply queues behind another only when
    /// every connection already carries one.
    in_flight: Mutex<Vec<usize>>,
    slots: Vec<Slot>,
    /// Tells connections apart, so that a command forgets only the
    /// connection it failed on, never its replacement.
    opened: AtomicU64,
    redis: RedisSettings,
}

/// One connection of a lane, opened when first needed and shared by the
/// commands in flight on it (each holds a clone of the multiplexed
/// connection; forgetting it closes it once the last of them is done).
struct Slot {
    open: Mutex<Option<OpenConnection>>,
    /// Held while the slot connects, so that commands arriving meanwhile
    /// wait for that connection instead of opening more.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct OpenConnection {
    id: u64,
    connection: RedisConnection,
}

/// A command's place on a slot, given back when dropped.
struct InFlight<'a> {
    lane: &'a Lane,
    slot: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.lane.in_flight.lock().expect("lane lock")[self.slot] -= 1;
    }
}

impl Lane {
    /// A lane whose connections carry one command at a time.
    pub(crate) fn new(name: &'static str, redis: &RedisSettings, size: usize) -> Self {
        Self::pipelined(name, redis, size, 1)
    }

    /// A lane of `size` connections, each carrying up to `depth` commands
    /// at a time.
    pub(crate) fn pipelined(
        name: &'static str,
        redis: &RedisSettings,
        size: usize,
        depth: usize,
    ) -> Self {
        let size = size.max(1);
        let depth = depth.max(1);
        Self {
            name,
            permits: Semaphore::new(size * depth),
            depth,
            in_flight: Mutex::new(vec![0; size]),
            slots: (0..size)
                .map(|_| Slot {
                    open: Mutex::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                })
                .collect(),
            opened: AtomicU64::new(0),
            redis: redis.clone(),
        }
    }

    /// Runs `cmd` (a command or a pipeline) on a connection of this lane by
    /// `deadline`.
    pub(crate) async fn query<T: FromRedisValue, Q: Query>(
        &self,
        cmd: &Q,
        deadline: Instant,
    ) -> Result<T, Unavailable> {
        let _permit = timeout_at(deadline, self.permits.acquire())
            .await
            .map_err(|_| Unavailable::Busy)?
            .expect("a lane's semaphore is never closed");
        let place = self.take_place();
        let slot = &self.slots[place.slot];
        // A connection that sat open may have been closed by Redis (a
        // restart, a failover); then the read is tried once more on a new
        // one, within the same deadline.
        let mut retried = false;
        loop {
            let (mut open, fresh) = self.connection(slot, deadline).await?;
            match timeout_at(deadline, cmd.run::<T>(&mut open.connection)).await {
                Ok(Ok(value)) => return Ok(value),
                // An error reply leaves the connection in step.
                Ok(Err(err))
                    if matches!(
                        err.kind(),
                        redis::ErrorKind::Server(_) | redis::ErrorKind::UnexpectedReturnType
                    ) =>
                {
                    return Err(Unavailable::Redis(err.to_string()));
                }
                // Anything else (I/O, a closed connection) does not: it is
                // forgotten.
                Ok(Err(err)) => {
                    tracing::debug!(lane = self.name, error = %err, "dropping a read connection");
                    slot.forget(open.id);
                    if fresh || retried {
                        return Err(Unavailable::Redis(err.to_string()));
                    }
                    retried = true;
                }
                // Forgotten with its command in flight: closing the
                // connection (once no other command uses it) discards the
                // reply Redis may still be producing for it.
                Err(_) => {
                    tracing::debug!(
                        lane = self.name,
                        "read past its deadline; connection dropped"
                    );
                    slot.forget(open.id);
                    return Err(Unavailable::Timeout);
                }
            }
        }
    }

    /// The slot with the fewest commands in flight; the permit held by the
    /// caller guarantees it has room for one more.
    fn take_place(&self) -> InFlight<'_> {
        let mut in_flight = self.in_flight.lock().expect("lane lock");
        let (slot, count) = in_flight
            .iter_mut()
            .enumerate()
            .min_by_key(|(_, count)| **count)
            .expect("a lane has at least one slot");
        debug_assert!(*count < self.depth, "more commands than permits");
        *count += 1;
        InFlight { lane: self, slot }
    }

    /// The slot's connection, opened if it has none; whether this call
    /// opened it.
    async fn connection(
        &self,
        slot: &Slot,
        deadline: Instant,
    ) -> Result<(OpenConnection, bool), Unavailable> {
        if let Some(open) = slot.current() {
            return Ok((open, false));
        }
        let _connecting = timeout_at(deadline, slot.connecting.lock())
            .await
            .map_err(|_| Unavailable::Timeout)?;
        if let Some(open) = slot.current() {
            return Ok((open, false));
        }
        let open = OpenConnection {
            id: self.opened.fetch_add(1, Ordering::Relaxed),
            connection: self.connect(deadline).await?,
        };
        *slot.open.lock().expect("slot lock") = Some(open.clone());
        Ok((open, true))
    }

    async fn connect(&self, deadline: Instant) -> Result<RedisConnection, Unavailable> {
        let timeouts = RedisTimeouts {
            connect: Some(deadline.saturating_duration_since(Instant::now())),
            // The lane enforces its own deadline and drops the connection
            // past it; the client's own response timeout would keep it.
            response: None,
        };
        match timeout_at(
            deadline,
            RedisConnection::connect_direct(&self.redis, timeouts),
        )
        .await
        {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(err)) => Err(Unavailable::Redis(format!("{err:#}"))),
            Err(_) => Err(Unavailable::Timeout),
        }
    }
}

impl Slot {
    fn current(&self) -> Option<OpenConnection> {
        self.open.lock().expect("slot lock").clone()
    }

    /// Forgets the connection `id` if it is still this slot's.
    fn forget(&self, id: u64) {
        let mut open = self.open.lock().expect("slot lock");
        if open.as_ref().is_some_and(|open| open.id == id) {
            *open = None;
        }
    }
}

/// A command or a pipeline: what one lane round trip sends.
pub(crate) trait Query {
    fn run<T: FromRedisValue>(
        &self,
        connection: &mut RedisConnection,
    ) -> impl Future<Output = redis::RedisResult<T>>;
}

impl Query for redis::Cmd {
    fn run<T: FromRedisValue>(
        &self,
        connection: &mut RedisConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> {
        self.query_async(connection)
    }
}

impl Query for redis::Pipeline {
    fn run<T: FromRedisValue>(
        &self,
        connection: &mut RedisConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> {
        self.query_async(connection)
    }
}

/// Commands sent at once on one connection, each to the master serving
/// its slot when one is given (the query engine's, whose key the client
/// cannot see) or as the client routes it; the replies in order, or the
/// first error.
pub(crate) struct Concurrent(pub Vec<(Option<u16>, redis::Cmd)>);

impl Query for Concurrent {
    async fn run<T: FromRedisValue>(
        &self,
        connection: &mut RedisConnection,
    ) -> redis::RedisResult<T> {
        let replies = futures::future::join_all(self.0.iter().map(|(slot, cmd)| {
            let mut connection = connection.clone();
            async move {
                match slot {
                    Some(slot) => connection.route_to_slot(cmd, *slot).await,
                    None => cmd.query_async::<redis::Value>(&mut connection).await,
                }
            }
        }))
        .await;
        let replies = replies
            .into_iter()
            .collect::<redis::RedisResult<Vec<_>>>()?;
        Ok(T::from_redis_value(redis::Value::Array(replies))?)
    }
}

/// The last served size of recently read documents, bounded: two
/// generations of at most `capacity / 2` keys each; when the newer one is
/// full it becomes the older and the older is forgotten. Keys are stored as
/// 64-bit hashes, so an entry costs ~16 bytes whatever the key's length.
struct SizeCache {
    generations: Mutex<(HashMap<u64, u64>, HashMap<u64, u64>)>,
    half: usize,
}

impl SizeCache {
    fn new(capacity: usize) -> Self {
        Self {
            generations: Mutex::new((HashMap::new(), HashMap::new())),
            half: (capacity / 2).max(1),
        }
    }

    fn hash(key: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    }

    fn get(&self, key: &str) -> Option<u64> {
        let hash = Self::hash(key);
        let generations = self.generations.lock().expect("size cache lock");
        generations
            .0
            .get(&hash)
            .or_else(|| generations.1.get(&hash))
            .copied()
    }

    fn insert(&self, key: &str, bytes: u64) {
        let hash = Self::hash(key);
        let mut generations = self.generations.lock().expect("size cache lock");
        let (newer, older) = &mut *generations;
        older.remove(&hash);
        if newer.len() >= self.half && !newer.contains_key(&hash) {
            *older = std::mem::take(newer);
        }
        newer.insert(hash, bytes);
    }

    fn forget(&self, key: &str) {
        let hash = Self::hash(key);
        let mut generations = self.generations.lock().expect("size cache lock");
        generations.0.remove(&hash);
        generations.1.remove(&hash);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let generations = self.generations.lock().expect("size cache lock");
        generations.0.len() + generations.1.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        reads: ReadSettings,
    }

    #[test]
    fn the_defaults_are_the_flags_defaults() {
        let parsed = Flags::try_parse_from(["api"]).unwrap().reads;
        assert_eq!(parsed, ReadSettings::default());
    }

    #[test]
    fn zero_connections_are_refused() {
        assert!(Flags::try_parse_from(["api", "--read-connections", "0"]).is_err());
        assert!(Flags::try_parse_from(["api", "--large-reads", "0"]).is_err());
        assert!(Flags::try_parse_from(["api", "--read-pipeline", "0"]).is_err());
    }

    #[test]
    fn the_size_cache_remembers_recent_sizes_and_stays_bounded() {
        let cache = SizeCache::new(100);
        cache.insert("a", 1);
        assert_eq!(cache.get("a"), Some(1));
        cache.insert("a", 2);
        assert_eq!(cache.get("a"), Some(2));
        for i in 0..10_000 {
            cache.insert(&format!("k{i}"), i);
            assert!(cache.len() <= 100, "{}", cache.len());
        }
        assert_eq!(cache.get("k9999"), Some(9999));
        assert_eq!(cache.get("a"), None, "long forgotten");
        cache.forget("k9999");
        assert_eq!(cache.get("k9999"), None);
    }

    #[test]
    fn a_size_read_again_moves_to_the_newer_generation() {
        let cache = SizeCache::new(4);
        cache.insert("old", 7);
        cache.insert("x", 1);
        // "old" and "x" fill the newer generation; the next new key moves
        // them to the older one.
        cache.insert("y", 1);
        cache.insert("old", 8);
        cache.insert("z", 1);
        assert_eq!(cache.get("old"), Some(8));
    }
}
