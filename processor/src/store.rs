//! The Redis side of the processor: the apply step (a Lua script calling
//! `JSON.*`, see `apply.lua`), its arguments, and which Redis errors are
//! outages to wait out and which refuse a batch for good.
//!
//! On one Redis server a batch's invocations go out in one pipeline. On a
//! Redis Cluster (`REDIS_CLUSTER`) each invocation is its own `EVALSHA`,
//! routed to the node that owns the session's hash slot (all three keys of a
//! session share the tag `{token}`), several at a time; a node that does not
//! know the script yet gets it by `EVAL` with the script's body.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use redis::{ErrorKind, RedisError, ServerErrorKind};
use sessionfold_common::redis_conn::{RedisConnection, RedisTimeouts};
use sessionfold_common::settings::RedisSettings;
use sessionfold_core::event::normalized_number;
use sessionfold_core::fold::empty_document;
use sessionfold_core::{Delivery, EventKind, SessionId};
use sessionfold_core::{Keys, SessionKeys};
use tokio::sync::Semaphore;

use crate::durability::Durability;

/// The atomic, idempotent apply step (layout 2), after the lifecycle's
/// functions it shares with the close step.
pub const APPLY_SCRIPT: &str = concat!(include_str!("lifecycle.lua"), include_str!("apply.lua"));

/// Script arguments before the children (see the top of `apply.lua`).
const FIXED_ARGS: usize = 13;
/// Index of the batch's earliest arrival among the arguments; the latest
/// arrival, the latest SESSION_END arrival and the lifecycle settings follow.
const ARRIVALS_ARG: usize = 8;
/// Index of what the session's summary needs of the batch.
pub const SUMMARY_ARG: usize = 12;
/// Index of the document TTL among the arguments.
const TTL_ARG: usize = 4;
/// The largest index of an event in a frame that a position can hold.
pub const MAX_FRAME_INDEX: usize = u16::MAX as usize;
/// The largest stream sequence a position can hold (6 bytes).
pub const MAX_STREAM_SEQUENCE: u64 = (1 << 48) - 1;

/// One session's part of a batch, ready for the apply step.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub keys: SessionKeys,
    /// Binary-safe: the records argument holds raw bytes.
    pub args: Vec<Vec<u8>>,
}

/// One child for the apply step: its identity digest, position,
/// timestamp and JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    pub identity: [u8; 16],
    pub stream_sequence: u64,
    pub index: usize,
    pub timestamp: f64,
    pub json: String,
}

/// The three columns `apply.lua` reads: identities (16 bytes a child),
/// positions (8) and order records (timestamp 8, position 8).
#[derive(Debug, Default)]
struct Columns {
    identities: Vec<u8>,
    positions: Vec<u8>,
    order: Vec<u8>,
}

impl Columns {
    fn with_capacity(children: usize) -> Self {
        Self {
            identities: Vec::with_capacity(children * 16),
            positions: Vec::with_capacity(children * 8),
            order: Vec::with_capacity(children * 16),
        }
    }

    fn push(&mut self, child: &Child) {
        let position = position_bytes(child.stream_sequence, child.index);
        self.identities.extend_from_slice(&child.identity);
        self.positions.extend_from_slice(&position);
        self.order.extend_from_slice(&child.timestamp.to_be_bytes());
        self.order.extend_from_slice(&position);
    }
}

/// A position as the apply step stores it: the stream sequence in 6 bytes,
/// then the index in the frame in 2, big-endian, so that byte order is
/// stream order.
pub fn position_bytes(stream_sequence: u64, index: usize) -> [u8; 8] {
    debug_assert!(stream_sequence <= MAX_STREAM_SEQUENCE && index <= MAX_FRAME_INDEX);
    let mut bytes = [0u8; 8];
    bytes[..6].copy_from_slice(&stream_sequence.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&(index as u16).to_be_bytes());
    bytes
}

/// Marks an EVENT without a name in the summary's column.
const NO_NAME: u16 = u16::MAX;
/// Marks an EVENT whose name the summary cannot keep (too long, or past
/// the 65 533 distinct names one batch can number).
const NAME_LEFT_OUT: u16 = u16::MAX - 1;

/// The `name` of a child's JSON, if it has one.
fn name_of(json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        name: Option<serde_json::Value>,
    }
    serde_json::from_str::<Named>(json)
        .ok()?
        .name?
        .as_str()
        .map(str::to_owned)
}

/// What the summary section of the apply step reads (see the top of
/// `apply.lua`): the session, the batch's distinct names as tokens, how
/// many names a summary lists, and each EVENT's name.
fn summary_input<'a>(session_id: &str, names: impl Iterator<Item = Option<&'a str>>) -> Vec<u8> {
    use sessionfold_core::session::escape_token;
    use sessionfold_core::summary::{MAX_NAME_BYTES, MAX_NAMES};
    let names: Vec<Option<&str>> = names.collect();
    let mut tokens: Vec<String> = names
        .iter()
        .flatten()
        .filter(|name| name.len() <= MAX_NAME_BYTES)
        .map(|name| escape_token(name))
        .collect();
    tokens.sort();
    tokens.dedup();
    // A u16 numbers them; a batch with more distinct names leaves the rest
    // out (the summary then says its names are capped).
    tokens.truncate(usize::from(NAME_LEFT_OUT));
    let mut input = Vec::with_capacity(64 + names.len() * 2);
    let text = |input: &mut Vec<u8>, bytes: &[u8]| {
        input.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        input.extend_from_slice(bytes);
    };
    text(&mut input, session_id.as_bytes());
    text(&mut input, escape_token(session_id).as_bytes());
    input.extend_from_slice(&(tokens.len() as u16).to_be_bytes());
    for token in &tokens {
        text(&mut input, token.as_bytes());
    }
    input.extend_from_slice(&(MAX_NAMES as u16).to_be_bytes());
    for name in names {
        let mark = match name {
            None => NO_NAME,
            Some(name) if name.len() > MAX_NAME_BYTES => NAME_LEFT_OUT,
            Some(name) => tokens
                .binary_search(&escape_token(name))
                .map_or(NAME_LEFT_OUT, |at| at as u16),
        };
        input.extend_from_slice(&mark.to_be_bytes());
    }
    input
}

/// A child with its event name, for the summary.
type NamedChild = (Child, Option<String>);

/// Children in the order the apply step takes them: by timestamp, then by
/// position in the stream.
fn sort_children(children: &mut [NamedChild]) {
    children.sort_by(|(a, _), (b, _)| {
        a.timestamp
            .total_cmp(&b.timestamp)
            .then_with(|| (a.stream_sequence, a.index).cmp(&(b.stream_sequence, b.index)))
    });
}

impl Invocation {
    /// Builds the script arguments for `deliveries` of `session`, without a
    /// document TTL (see [`Invocation::with_document_ttl`]). Children go in
    /// (timestamp, position) order so that in-order arrival takes the append
    /// path.
    pub fn new(
        keys: &Keys,
        session: &SessionId,
        deliveries: &[Delivery],
        max_children: u64,
    ) -> Self {
        let (start, end, children) = Self::children_of(deliveries);
        Self::assemble(
            keys.session(session),
            empty_document(session.as_str()).to_string(),
            Some(session.as_str()),
            start,
            end,
            children,
            max_children,
        )
    }

    /// The invocations of `deliveries` in slices of at most `max_events`
    /// EVENTs each (0: one invocation), so that no single step holds Redis
    /// for long (docs/design.md §9, "Slices"). Frames stay whole when a
    /// children limit is set (the frame that would pass it is refused
    /// whole); otherwise a frame larger than a slice is cut too. Each slice
    /// carries the batch's bounds; the slices' children, in (timestamp,
    /// position) order, are consecutive runs of the batch's.
    pub fn slices(
        keys: &Keys,
        session: &SessionId,
        deliveries: &[Delivery],
        max_children: u64,
        max_events: usize,
    ) -> Vec<Self> {
        let events = |delivery: &Delivery| {
            delivery
                .events
                .iter()
                .filter(|event| event.kind == EventKind::Event)
                .count()
        };
        let total: usize = deliveries.iter().map(events).sum();
        if max_events == 0 || total <= max_events {
            return vec![Self::new(keys, session, deliveries, max_children)];
        }
        let (start, end, _) = Self::children_of(deliveries);
        let build = |children: Vec<NamedChild>| {
            Self::assemble(
                keys.session(session),
                empty_document(session.as_str()).to_string(),
                Some(session.as_str()),
                start,
                end,
                children,
                max_children,
            )
        };
        let mut groups: Vec<&[Delivery]> = Vec::new();
        let mut from = 0;
        let mut in_group = 0;
        for (at, delivery) in deliveries.iter().enumerate() {
            let count = events(delivery);
            if at > from && in_group + count > max_events {
                groups.push(&deliveries[from..at]);
                from = at;
                in_group = 0;
            }
            in_group += count;
        }
        groups.push(&deliveries[from..]);
        let mut slices = Vec::new();
        for group in groups {
            let (_, _, mut children) = Self::children_of(group);
            if max_children > 0 || children.len() <= max_events {
                slices.push(build(children));
                continue;
            }
            sort_children(&mut children);
            while !children.is_empty() {
                let rest = children.split_off(children.len().min(max_events));
                slices.push(build(std::mem::replace(&mut children, rest)));
            }
        }
        slices
    }

    /// The batch's bounds and its EVENTs as children, each with its name.
    fn children_of(deliveries: &[Delivery]) -> (Option<f64>, Option<f64>, Vec<NamedChild>) {
        let mut start: Option<f64> = None;
        let mut end: Option<f64> = None;
        let mut children = Vec::new();
        let mut names = Vec::new();
        for delivery in deliveries {
            for (index, event) in delivery.events.iter().enumerate() {
                match event.kind {
                    EventKind::SessionStart => {
                        start = Some(start.map_or(event.timestamp, |t| t.min(event.timestamp)));
                    }
                    EventKind::SessionEnd => {
                        end = Some(end.map_or(event.timestamp, |t| t.max(event.timestamp)));
                    }
                    EventKind::Event => {
                        children.push(Child {
                            identity: event.identity_digest(),
                            stream_sequence: delivery.stream_sequence,
                            index,
                            timestamp: event.timestamp,
                            json: event.to_json(),
                        });
                        names.push(
                            event
                                .body
                                .get("name")
                                .and_then(serde_json::Value::as_str)
                                .map(str::to_owned),
                        );
                    }
                }
            }
        }
        (start, end, children.into_iter().zip(names).collect())
    }

    /// The invocation of explicit `children` (sorted here) and bounds.
    pub fn with_children(
        keys: &Keys,
        session: &SessionId,
        start: Option<f64>,
        end: Option<f64>,
        children: Vec<Child>,
        max_children: u64,
    ) -> Self {
        Self::from_parts(
            keys.session(session),
            empty_document(session.as_str()).to_string(),
            start,
            end,
            children,
            max_children,
        )
    }

    /// The invocation on `keys` of explicit `children` (sorted here),
    /// bounds, and the empty document a new session starts from. The
    /// summary's event names are read from the children's JSON.
    pub fn from_parts(
        keys: SessionKeys,
        empty: String,
        start: Option<f64>,
        end: Option<f64>,
        children: Vec<Child>,
        max_children: u64,
    ) -> Self {
        // The empty document names the session.
        let session_id = serde_json::from_str::<serde_json::Value>(&empty)
            .ok()
            .and_then(|empty| empty["session_id"].as_str().map(str::to_owned));
        let named = children
            .into_iter()
            .map(|child| {
                let name = name_of(&child.json);
                (child, name)
            })
            .collect();
        Self::assemble(
            keys,
            empty,
            session_id.as_deref(),
            start,
            end,
            named,
            max_children,
        )
    }

    /// The arguments of `children` (each with its event name), sorted here;
    /// without a `session_id` the step keeps no summary.
    fn assemble(
        keys: SessionKeys,
        empty: String,
        session_id: Option<&str>,
        start: Option<f64>,
        end: Option<f64>,
        mut children: Vec<NamedChild>,
        max_children: u64,
    ) -> Self {
        sort_children(&mut children);
        let bound = |value: Option<f64>| {
            value.map_or(Vec::new(), |t| {
                normalized_number(t).to_string().into_bytes()
            })
        };
        let mut columns = Columns::with_capacity(children.len());
        for (child, _) in &children {
            columns.push(child);
        }
        let summary = session_id.map_or(Vec::new(), |session_id| {
            summary_input(session_id, children.iter().map(|(_, name)| name.as_deref()))
        });
        let mut args = Vec::with_capacity(FIXED_ARGS + children.len());
        args.push(empty.into_bytes());
        args.push(bound(start));
        args.push(bound(end));
        args.push(max_children.to_string().into_bytes());
        args.push(b"0".to_vec());
        args.push(columns.identities);
        args.push(columns.positions);
        args.push(columns.order);
        // The arrivals and the lateness, then the summary's input.
        args.extend([Vec::new(), Vec::new(), Vec::new(), Vec::new(), summary]);
        args.extend(
            children
                .into_iter()
                .map(|(child, _)| child.json.into_bytes()),
        );
        Self { keys, args }
    }

    /// The empty document argument.
    pub fn empty_document(&self) -> &[u8] {
        &self.args[0]
    }

    /// The batch's smallest `SESSION_START` timestamp, as the step gets it
    /// (a normalized JSON number), if it has one.
    pub fn start_candidate(&self) -> Option<&[u8]> {
        Some(&self.args[1][..]).filter(|bound| !bound.is_empty())
    }

    /// The batch's largest `SESSION_END` timestamp, as the step gets it.
    pub fn end_candidate(&self) -> Option<&[u8]> {
        Some(&self.args[2][..]).filter(|bound| !bound.is_empty())
    }

    /// The document TTL argument, in seconds.
    pub fn document_ttl(&self) -> u64 {
        std::str::from_utf8(&self.args[TTL_ARG])
            .ok()
            .and_then(|ttl| ttl.parse().ok())
            .unwrap_or(0)
    }

    /// Sets the document TTL: after the apply, the session's keys expire
    /// `seconds` later (0: never).
    pub fn with_document_ttl(mut self, seconds: u64) -> Self {
        self.args[TTL_ARG] = seconds.to_string().into_bytes();
        self
    }

    /// The batch's arrivals at ingest (JetStream timestamps, milliseconds):
    /// its earliest and latest frame, and its latest frame holding a
    /// SESSION_END.
    pub fn with_arrivals(mut self, first: u64, last: u64, session_end: Option<u64>) -> Self {
        self.args[ARRIVALS_ARG] = first.to_string().into_bytes();
        self.args[ARRIVALS_ARG + 1] = last.to_string().into_bytes();
        self.args[ARRIVALS_ARG + 2] =
            session_end.map_or(Vec::new(), |t| t.to_string().into_bytes());
        self
    }

    /// The lifecycle settings the step arms timers and takes late frames
    /// by (`None`: sessions never close by themselves).
    pub fn with_lifecycle(mut self, lifecycle: Option<&LifecycleSpec>) -> Self {
        self.args[ARRIVALS_ARG + 3] =
            lifecycle.map_or(Vec::new(), |spec| spec.to_arg().into_bytes());
        self
    }

    /// Keeps no summary for this step (`SESSION_SUMMARIES=false`): a summary
    /// written before stays as it was.
    pub fn without_summary(mut self) -> Self {
        self.args[SUMMARY_ARG] = Vec::new();
        self
    }

    /// The children in it.
    pub fn children(&self) -> usize {
        self.args.len() - FIXED_ARGS
    }

    /// The JSON of its `index`-th child (in the step's order), as the
    /// [`ChildOp`]s of its apply number them.
    pub fn child_json(&self, index: usize) -> &[u8] {
        &self.args[FIXED_ARGS + index]
    }

    /// `EVALSHA` of the loaded script.
    fn command(&self, script: &redis::Script) -> redis::Cmd {
        self.call("EVALSHA", script.get_hash())
    }

    /// `EVAL` with the script's body: runs (and caches) the script on the
    /// node owning the keys, whatever that node has loaded.
    fn eval_command(&self) -> redis::Cmd {
        self.call("EVAL", APPLY_SCRIPT)
    }

    fn call(&self, command: &str, script: &str) -> redis::Cmd {
        let mut cmd = redis::cmd(command);
        cmd.arg(script)
            .arg(4)
            .arg(&self.keys.doc)
            .arg(&self.keys.state)
            .arg(&self.keys.summary)
            .arg(&self.keys.names)
            .arg(&self.args);
        cmd
    }
}

/// What one stored invocation did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stored {
    /// Children written.
    pub written: i64,
    /// The session's revision after the step (counts the steps that changed
    /// it).
    pub revision: u64,
    /// What changed in `children`, in order.
    pub ops: Vec<ChildOp>,
    /// The session's arrivals after the step, for its timers.
    pub arrivals: Arrivals,
    /// This step made the session.
    pub created: bool,
    /// The session is closed, and this step (which changed nothing) left it
    /// so.
    pub still_closed: bool,
    /// The session was closed and this batch came within its lateness: it is
    /// open again.
    pub reopened: bool,
    /// The session's timer after the step.
    pub timer: Option<Timer>,
    /// The step changed the document (and so made `revision`); a step
    /// that changed nothing repeats the revision it found.
    pub changed: bool,
}

/// A session's pending timer, as the state keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    /// When it is due (milliseconds, JetStream clock).
    pub due_ms: u64,
    /// The step armed it: no schedule is known to exist for it yet.
    pub armed: bool,
}

/// The lifecycle settings as both Lua steps read them (`parse_lifecycle`
/// in `lifecycle.lua`), in milliseconds; 0 turns `idle_ms` or `max_ms`
/// off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleSpec {
    pub lateness_ms: u64,
    pub idle_ms: u64,
    pub grace_ms: u64,
    pub max_ms: u64,
}

impl LifecycleSpec {
    pub fn to_arg(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.lateness_ms, self.idle_ms, self.grace_ms, self.max_ms
        )
    }
}

/// When a session's frames arrived at ingest (JetStream timestamps, in
/// milliseconds), as the apply step keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arrivals {
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// The latest frame holding a SESSION_END.
    pub session_end: Option<u64>,
}

/// One change to a document's `children`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildOp {
    /// The invocation's `child`-th child (0-based) went in at `rank`.
    Inserted { rank: u32, child: u32 },
    /// The child at `rank` was taken out (an earlier arrival replaced it).
    Removed { rank: u32 },
}

impl Stored {
    fn parse(reply: redis::Value) -> Result<Self, RedisError> {
        let values: Vec<redis::Value> = redis::from_redis_value(reply)?;
        let mut values = values.into_iter();
        let mut next = || values.next().unwrap_or(redis::Value::Nil);
        let written: i64 = redis::from_redis_value(next())?;
        let revision: u64 = redis::from_redis_value(next())?;
        let ops: Vec<u8> = redis::from_redis_value(next())?;
        let skipped: Vec<u8> = redis::from_redis_value(next())?;
        let millis = |value: redis::Value| -> Result<Option<u64>, RedisError> {
            let text: Option<String> = redis::from_redis_value(value)?;
            Ok(text.and_then(|text| text.parse().ok()))
        };
        let arrivals = Arrivals {
            first: millis(next())?,
            last: millis(next())?,
            session_end: millis(next())?,
        };
        let state: Option<String> = redis::from_redis_value(next())?;
        let reopened = state.as_deref() == Some("reopened");
        let created = state.as_deref() == Some("new");
        let still_closed = state.as_deref() == Some("closed");
        let due_ms = millis(next())?;
        let armed: Option<String> = redis::from_redis_value(next())?;
        let timer = due_ms.map(|due_ms| Timer {
            due_ms,
            armed: armed.as_deref() == Some("1"),
        });
        let changed: Option<String> = redis::from_redis_value(next())?;
        let changed = changed.as_deref() == Some("1");
        let skipped: std::collections::HashSet<u32> = skipped
            .chunks_exact(4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]))
            .collect();
        // The written children, in order: every child but the skipped ones.
        let mut written_children = (0u32..).filter(|child| !skipped.contains(child));
        let mut expanded = Vec::new();
        for op in ops.chunks_exact(9) {
            let rank = u32::from_be_bytes([op[1], op[2], op[3], op[4]]);
            let count = u32::from_be_bytes([op[5], op[6], op[7], op[8]]);
            match op[0] {
                b'i' => {
                    for offset in 0..count {
                        let child = written_children.next().unwrap_or(u32::MAX);
                        expanded.push(ChildOp::Inserted {
                            rank: rank + offset,
                            child,
                        });
                    }
                }
                _ => expanded.push(ChildOp::Removed { rank }),
            }
        }
        Ok(Self {
            written,
            revision,
            ops: expanded,
            arrivals,
            created,
            reopened,
            still_closed,
            timer,
            changed,
        })
    }
}

/// The fate of one invocation.
#[derive(Debug, Clone)]
pub enum Applied {
    /// Stored.
    Stored(Stored),
    /// Redis refused it and will refuse it again (a full session, a key of
    /// the wrong type): the reason.
    Refused(String),
    /// The session closed longer ago than its allowed lateness (or was
    /// compacted): it takes no frame again. The reason.
    Late(String),
}

/// The error code of a frame for a session closed past its lateness.
pub const CLOSED_CODE: &str = "SESSIONFOLD_CLOSED";

/// Whether a Redis error means "try again later" (the server is down,
/// loading, failing over, out of memory) rather than "this batch is wrong".
pub fn is_outage(err: &RedisError) -> bool {
    match err.kind() {
        // A missing module or script command is a deployment fault, not the batch's.
        ErrorKind::Server(ServerErrorKind::ResponseError) => {
            err.to_string().contains("unknown command")
        }
        ErrorKind::Server(ServerErrorKind::ExecAbort) => false,
        ErrorKind::Extension => !err
            .code()
            .is_some_and(|code| code.starts_with("SESSIONFOLD_") || code == "WRONGTYPE"),
        _ => true,
    }
}

/// Why a batch was not stored. Nothing about the batch is wrong: keep it,
/// do not ack, try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Outage {
    /// Redis could not be reached or could not run the step.
    #[error("Redis unavailable: {0}")]
    Unreachable(String),
    /// The step ran, but the durability guarantee (`REDIS_DURABILITY`) does
    /// not hold yet.
    #[error("not durable yet: {0}")]
    NotDurable(String),
}

impl From<RedisError> for Outage {
    fn from(err: RedisError) -> Self {
        Self::Unreachable(err.to_string())
    }
}

/// Where the apply step runs: the seam between the processor's decisions
/// and Redis. [`RedisStore`] is the real one; tests of the worker's
/// decisions use an in-memory fake.
pub trait Store: Clone + Send + Sync + 'static {
    /// Applies every invocation and waits for the durability guarantee.
    /// `Ok` has one [`Applied`] per invocation, in order; `Err` is an
    /// outage: the caller must not ack and should try again.
    fn apply(
        &self,
        invocations: &[Invocation],
    ) -> impl Future<Output = Result<Vec<Applied>, Outage>> + Send;
}

/// Invocations in flight at once on a Redis Cluster.
const CLUSTER_CONCURRENCY: usize = 64;

/// Connections to Redis (one server or a cluster) holding the apply script.
///
/// It keeps several independent connections, one per batch in flight: the
/// durability wait blocks the connection it is sent on, and must only count
/// that batch's own writes.
#[derive(Clone)]
pub struct RedisStore {
    pool: Arc<Pool>,
    script: redis::Script,
    durability: Durability,
    durability_timeout: Duration,
}

/// Connections handed out one at a time.
struct Pool {
    idle: Mutex<Vec<RedisConnection>>,
    available: Semaphore,
    /// For readiness checks and repair bookkeeping.
    shared: RedisConnection,
}

/// A connection taken from the pool, given back on drop.
struct Lease<'a> {
    pool: &'a Pool,
    connection: Option<RedisConnection>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool
                .idle
                .lock()
                .expect("not poisoned")
                .push(connection);
        }
    }
}

impl Lease<'_> {
    fn connection(&mut self) -> &mut RedisConnection {
        self.connection.as_mut().expect("held until drop")
    }
}

/// How a [`RedisStore`] connects and waits.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Independent connections (one per batch in flight).
    pub connections: usize,
    pub durability: Durability,
    /// How long one durability wait may take before the batch counts as
    /// not durable yet.
    pub durability_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            connections: 2,
            durability: Durability::None,
            durability_timeout: Duration::from_secs(1),
        }
    }
}

impl RedisStore {
    /// Connects with the default options (no durability wait).
    pub async fn connect(settings: &RedisSettings) -> anyhow::Result<Self> {
        Self::connect_with(settings, StoreOptions::default()).await
    }

    pub async fn connect_with(
        settings: &RedisSettings,
        options: StoreOptions,
    ) -> anyhow::Result<Self> {
        let timeouts = RedisTimeouts {
            connect: Some(Duration::from_secs(2)),
            // A durability wait may take its whole timeout.
            response: Some(Duration::from_secs(10) + options.durability_timeout),
        };
        let count = options.connections.max(1);
        let mut idle = Vec::with_capacity(count);
        for _ in 0..count {
            idle.push(RedisConnection::connect(settings, timeouts).await?);
        }
        let shared = idle[0].clone();
        check_durability_support(&mut idle[0].clone(), options.durability).await?;
        let keys = Keys::new(settings.key_prefix.as_str());
        match crate::summary::ensure_index(&mut idle[0].clone(), &keys).await {
            Ok(crate::summary::IndexOutcome::Ready) => {
                tracing::debug!(index = %keys.sessions_index(), "index of sessions ready");
            }
            Ok(crate::summary::IndexOutcome::NoQueryEngine) => tracing::info!(
                "Redis has no query engine (RediSearch): session summaries are kept, but GET /sessions answers 503"
            ),
            Err(err) => tracing::warn!(
                error = %format!("{err:#}"),
                "the index of sessions was not created; GET /sessions answers 503 until a processor creates it"
            ),
        }
        Ok(Self {
            pool: Arc::new(Pool {
                idle: Mutex::new(idle),
                available: Semaphore::new(count),
                shared,
            }),
            script: redis::Script::new(APPLY_SCRIPT),
            durability: options.durability,
            durability_timeout: options.durability_timeout,
        })
    }

    async fn lease(&self) -> Lease<'_> {
        let permit = self
            .pool
            .available
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let connection = self.pool.idle.lock().expect("not poisoned").pop();
        Lease {
            pool: &self.pool,
            connection,
            _permit: permit,
        }
    }

    /// One server: every invocation and the durability wait in one pipeline
    /// on one connection, so the wait counts exactly these writes.
    async fn run_pipelined(
        &self,
        connection: &mut RedisConnection,
        invocations: &[Invocation],
    ) -> Result<Vec<redis::RedisResult<redis::Value>>, Outage> {
        let (mut results, mut wait) = self.run(connection, invocations).await?;
        if results
            .iter()
            .any(|result| matches!(result, Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript)))
        {
            // A restarted or new server: load the script and run again; the
            // step is idempotent, so what already ran runs harmlessly twice.
            // What ran the first time keeps its first answer: the second
            // finds its work done, and would not say that it armed a timer.
            self.script
                .prepare_invoke()
                .load_async(connection)
                .await?;
            let first = results;
            (results, wait) = self.run(connection, invocations).await?;
            for (result, first) in results.iter_mut().zip(first) {
                if first.is_ok() {
                    *result = first;
                }
            }
        }
        if let Some(reply) = wait {
            self.durability
                .check_reply(&reply)
                .map_err(Outage::NotDurable)?;
        }
        Ok(results)
    }

    async fn run(
        &self,
        connection: &mut RedisConnection,
        invocations: &[Invocation],
    ) -> Result<(Vec<redis::RedisResult<redis::Value>>, Option<redis::Value>), Outage> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for invocation in invocations {
            pipe.add_command(invocation.command(&self.script));
        }
        let wait = self.durability.wait_command(self.durability_timeout);
        if let Some(wait) = &wait {
            pipe.add_command(wait.clone());
        }
        let started = std::time::Instant::now();
        let mut replies: Vec<redis::Value> = pipe.query_async(connection).await?;
        metrics::histogram!(sessionfold_common::metrics::APPLY_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let wait_reply = wait.map(|_| replies.pop().unwrap_or(redis::Value::Nil));
        let results = replies
            .into_iter()
            .map(|reply| match reply {
                redis::Value::ServerError(err) => Err(RedisError::from(err)),
                other => Ok(other),
            })
            .collect();
        Ok((results, wait_reply))
    }

    /// A cluster: a pipeline may not span hash slots, so each invocation
    /// goes alone to its session's node, [`CLUSTER_CONCURRENCY`] at a time.
    /// A node without the script (new, restarted, failed over) runs it by
    /// `EVAL`, which also caches it there. The durability wait then goes to
    /// every master on the same connections.
    async fn run_each(
        &self,
        connection: &mut RedisConnection,
        invocations: &[Invocation],
    ) -> Result<Vec<redis::RedisResult<redis::Value>>, Outage> {
        let started = std::time::Instant::now();
        let script = &self.script;
        let shared = &*connection;
        // By index: a closure over `&Invocation` would make the future
        // higher-ranked over its lifetime, which `tokio::spawn` rejects.
        let results: Vec<redis::RedisResult<redis::Value>> =
            futures::stream::iter(0..invocations.len())
                .map(|index| {
                    let mut connection = shared.clone();
                    let invocation = &invocations[index];
                    async move {
                        match invocation
                            .command(script)
                            .query_async(&mut connection)
                            .await
                        {
                            Err(err)
                                if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
                            {
                                invocation.eval_command().query_async(&mut connection).await
                            }
                            result => result,
                        }
                    }
                })
                .buffered(CLUSTER_CONCURRENCY)
                .collect()
                .await;
        metrics::histogram!(sessionfold_common::metrics::APPLY_SECONDS)
            .record(started.elapsed().as_secs_f64());
        if results
            .iter()
            .any(|result| matches!(result, Err(err) if is_outage(err)))
        {
            // The caller retries the whole batch; no need to wait.
            return Ok(results);
        }
        if let Some(wait) = self.durability.wait_command(self.durability_timeout) {
            let reply = connection.route_to_all_masters(&wait).await?;
            self.durability
                .check_cluster_reply(&reply)
                .map_err(Outage::NotDurable)?;
        }
        Ok(results)
    }

    /// A connection shared with readiness checks and repair bookkeeping.
    pub fn connection(&self) -> RedisConnection {
        self.pool.shared.clone()
    }

    /// Answers when Redis does.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut connection = self.connection();
        redis::cmd("PING").query_async(&mut connection).await
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }
}

/// Refuses to start with a durability mode the server cannot give: without
/// `WAITAOF` (Redis before 7.2) or without an append-only file, every batch
/// would wait forever.
async fn check_durability_support(
    connection: &mut RedisConnection,
    durability: Durability,
) -> anyhow::Result<()> {
    let probe = match durability {
        Durability::None => return Ok(()),
        // Refused without an append-only file; a client without writes has
        // nothing to wait for.
        Durability::Fsync => {
            let mut cmd = redis::cmd("WAITAOF");
            cmd.arg(1).arg(0).arg(1);
            cmd
        }
        // No replica may be connected yet: ask for none, to see that the
        // command exists.
        Durability::Replica => {
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(0).arg(1);
            cmd
        }
    };
    let reply = connection.route_to_all_masters(&probe).await;
    let refusal = match &reply {
        Err(err) => Some(err.to_string()),
        Ok(redis::Value::ServerError(err)) => Some(format!("{err:?}")),
        Ok(redis::Value::Map(per_node)) => per_node.iter().find_map(|(_, reply)| match reply {
            redis::Value::ServerError(err) => Some(format!("{err:?}")),
            _ => None,
        }),
        Ok(_) => None,
    };
    if let Some(refusal) = refusal {
        anyhow::bail!(
            "REDIS_DURABILITY={} needs {} (Redis ≥ 7.2 or Valkey ≥ 8{}); the server answered: {refusal}",
            durability.as_str(),
            if durability == Durability::Fsync {
                "WAITAOF"
            } else {
                "WAIT"
            },
            if durability == Durability::Fsync {
                ", with appendonly yes"
            } else {
                ""
            },
        );
    }
    Ok(())
}

impl Store for RedisStore {
    /// Applies every invocation: in one round trip on a single server, per
    /// session on a cluster; then waits for the durability guarantee.
    async fn apply(&self, invocations: &[Invocation]) -> Result<Vec<Applied>, Outage> {
        // A batch of poison only has nothing to apply; Redis refuses an
        // empty pipeline ("empty command"), which would read as an outage.
        if invocations.is_empty() {
            return Ok(Vec::new());
        }
        let mut lease = self.lease().await;
        let connection = lease.connection();
        let results = self.run_any(connection, invocations).await?;
        results
            .into_iter()
            .map(|result| match result {
                Ok(reply) => Stored::parse(reply)
                    .map(Applied::Stored)
                    .map_err(Outage::from),
                Err(err) if is_outage(&err) => Err(Outage::from(err)),
                Err(err) if err.code() == Some(CLOSED_CODE) => Ok(Applied::Late(err.to_string())),
                Err(err) => Ok(Applied::Refused(err.to_string())),
            })
            .collect()
    }
}

/// The close step: the lifecycle's shared functions, then the step itself.
pub const CLOSE_SCRIPT: &str = concat!(include_str!("lifecycle.lua"), include_str!("close.lua"));

impl RedisStore {
    /// Runs `script` (whose body is `body`) on `keys`' node, then waits for
    /// the durability guarantee as the apply step does: a close that a
    /// failover loses would close the session a second time.
    pub async fn run_durably(
        &self,
        script: &redis::Script,
        body: &str,
        keys: &[&str],
        args: &[String],
    ) -> Result<redis::Value, Outage> {
        let invoke = |command: &str, script: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        let evalsha = invoke("EVALSHA", script.get_hash());
        let mut lease = self.lease().await;
        let connection = lease.connection();
        let reply = match evalsha.query_async::<redis::Value>(connection).await {
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                invoke("EVAL", body).query_async(connection).await
            }
            reply => reply,
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) if is_outage(&err) => return Err(Outage::from(err)),
            Err(err) => return Err(Outage::Unreachable(format!("the script failed: {err}"))),
        };
        if let Some(wait) = self.durability.wait_command(self.durability_timeout) {
            if connection.is_cluster() {
                let reply = connection.route_to_all_masters(&wait).await?;
                self.durability
                    .check_cluster_reply(&reply)
                    .map_err(Outage::NotDurable)?;
            } else {
                let reply: redis::Value = wait.query_async(connection).await?;
                self.durability
                    .check_reply(&reply)
                    .map_err(Outage::NotDurable)?;
            }
        }
        Ok(reply)
    }
}

impl RedisStore {
    async fn run_any(
        &self,
        connection: &mut RedisConnection,
        invocations: &[Invocation],
    ) -> Result<Vec<redis::RedisResult<redis::Value>>, Outage> {
        if connection.is_cluster() {
            self.run_each(connection, invocations).await
        } else {
            self.run_pipelined(connection, invocations).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apply_step_counts_as_many_names_as_core_says() {
        let line = format!(
            "local MAX_COUNTED_NAMES = {}\n",
            sessionfold_core::summary::MAX_COUNTED_NAMES
        );
        assert!(APPLY_SCRIPT.contains(&line), "apply.lua lacks {line:?}");
    }

    /// The script reads its arguments by position (Lua counts from 1):
    /// the indices here must be the ones it reads.
    #[test]
    fn the_argument_indices_are_those_apply_lua_reads() {
        for line in [
            format!("local ttl = tonumber(ARGV[{}])", TTL_ARG + 1),
            format!(
                "local first_arrival, last_arrival = tonumber(ARGV[{}]), tonumber(ARGV[{}])",
                ARRIVALS_ARG + 1,
                ARRIVALS_ARG + 2
            ),
            format!("local end_arrival = tonumber(ARGV[{}])", ARRIVALS_ARG + 3),
            format!(
                "local lifecycle = parse_lifecycle(ARGV[{}])",
                ARRIVALS_ARG + 4
            ),
            format!("local summary_input = ARGV[{}]", SUMMARY_ARG + 1),
            format!("local FIRST_CHILD = {}", FIXED_ARGS + 1),
            "local summary, names_key = KEYS[3], KEYS[4]".to_owned(),
        ] {
            assert!(APPLY_SCRIPT.contains(&line), "apply.lua lacks {line:?}");
        }
    }
    use sessionfold_core::{Frame, Limits};

    #[test]
    fn arguments_carry_bounds_and_children_in_timestamp_order() {
        let session = SessionId::parse("s").unwrap();
        let frame = |text: &str| {
            Frame::parse(text, &session, &Limits::default())
                .unwrap()
                .events
        };
        let deliveries = [
            Delivery {
                stream_sequence: 7,
                events: frame(
                    r#"[{"type":"EVENT","timestamp":5,"name":"b"},{"type":"SESSION_START","timestamp":3},{"type":"SESSION_START","timestamp":1.0}]"#,
                ),
            },
            Delivery {
                stream_sequence: 2,
                events: frame(
                    r#"[{"type":"EVENT","timestamp":5,"name":"a"},{"type":"SESSION_END","timestamp":9.5}]"#,
                ),
            },
        ];
        let invocation = Invocation::new(&Keys::default(), &session, &deliveries, 0);
        assert_eq!(invocation.keys.doc, "sf:doc:{s}");
        assert_eq!(invocation.keys.state, "sf:st:{s}");
        let text = |arg: &Vec<u8>| String::from_utf8(arg.clone()).unwrap();
        let args = &invocation.args;
        assert_eq!(
            text(&args[0]),
            r#"{"session_id":"s","type":"SESSION","start":null,"end":null,"children":[]}"#
        );
        assert_eq!(
            [&args[1], &args[2], &args[3], &args[4]].map(text),
            ["1", "9.5", "0", "0"]
        );
        assert_eq!(args.len(), FIXED_ARGS + 2);
        assert_eq!(invocation.children(), 2);
        // The columns: sequence 2 before 7 at the same timestamp.
        let (identities, positions, order) = (&args[5], &args[6], &args[7]);
        assert_eq!(identities.len(), 2 * 16);
        assert_eq!(&positions[..8], &position_bytes(2, 0));
        assert_eq!(&positions[8..], &position_bytes(7, 0));
        assert_eq!(&order[..8], &5f64.to_be_bytes());
        assert_eq!(&order[8..16], &position_bytes(2, 0));
        assert_eq!(&order[16 + 8..], &position_bytes(7, 0));
        assert_eq!(
            text(&args[FIXED_ARGS]),
            r#"{"type":"EVENT","timestamp":5,"name":"a"}"#
        );
        assert_eq!(
            invocation.child_json(1),
            br#"{"type":"EVENT","timestamp":5,"name":"b"}"#
        );
        let with_ttl = invocation.with_document_ttl(60);
        assert_eq!(text(&with_ttl.args[TTL_ARG]), "60");
    }

    #[test]
    fn positions_order_like_stream_order() {
        assert_eq!(position_bytes(1, 2), [0, 0, 0, 0, 0, 1, 0, 2]);
        assert!(position_bytes(1, 65535) < position_bytes(2, 0));
        assert!(position_bytes(0x0102_0304_0506, 7) > position_bytes(0x0102_0304_0505, 9));
    }

    #[test]
    fn the_reply_gives_written_revision_and_each_childs_rank() {
        let op = |kind: u8, rank: u32, count: u32| {
            let mut op = vec![kind];
            op.extend_from_slice(&rank.to_be_bytes());
            op.extend_from_slice(&count.to_be_bytes());
            op
        };
        // Child 1 is a repeat; 0 and 2 go in at 3 and 4, then one removal,
        // then child 3 is appended at 9.
        let ops = [op(b'i', 3, 2), op(b'r', 5, 1), op(b'i', 9, 1)].concat();
        let reply = redis::Value::Array(vec![
            redis::Value::Int(3),
            redis::Value::Int(12),
            redis::Value::BulkString(ops),
            redis::Value::BulkString(1u32.to_be_bytes().to_vec()),
            redis::Value::BulkString(b"1000".to_vec()),
            redis::Value::BulkString(b"2500".to_vec()),
            redis::Value::BulkString(Vec::new()),
            redis::Value::BulkString(b"reopened".to_vec()),
            redis::Value::BulkString(b"3600000".to_vec()),
            redis::Value::BulkString(b"1".to_vec()),
            redis::Value::BulkString(b"1".to_vec()),
        ]);
        assert_eq!(
            Stored::parse(reply).unwrap(),
            Stored {
                written: 3,
                revision: 12,
                ops: vec![
                    ChildOp::Inserted { rank: 3, child: 0 },
                    ChildOp::Inserted { rank: 4, child: 2 },
                    ChildOp::Removed { rank: 5 },
                    ChildOp::Inserted { rank: 9, child: 3 },
                ],
                arrivals: Arrivals {
                    first: Some(1000),
                    last: Some(2500),
                    session_end: None,
                },
                created: false,
                reopened: true,
                still_closed: false,
                timer: Some(Timer {
                    due_ms: 3_600_000,
                    armed: true
                }),
                changed: true,
            }
        );
    }
}
