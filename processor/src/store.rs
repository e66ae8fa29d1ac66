//! The Redis side of the processor: the apply step (a Lua script calling
//! `JSON.*`, see `apply.lua`), its arguments, and which Redis errors are
//! outages to wait out and which refuse a batch for good.
//!
//! On one Redis server a batch's invocations go out in one pipeline. On a
//! Redis Cluster (`REDIS_CLUSTER`) each invocation is its own `EVALSHA`,
//! routed to the node that owns the session's hash slot (all three keys of a
//! session share the tag `{token}`), several at a time; a node that does not
//! know the script yet gets it by `EVAL` with the script's body.

use futures::StreamExt as _;
use redis::{ErrorKind, RedisError, ServerErrorKind};
use sessionfold_common::redis_conn::{RedisConnection, RedisTimeouts};
use sessionfold_common::settings::RedisSettings;
use sessionfold_core::event::normalized_number;
use sessionfold_core::fold::{empty_document, position_member};
use sessionfold_core::session::{Names, SessionKeys};
use sessionfold_core::{Delivery, EventKind, SessionId};

/// The atomic, idempotent apply step.
pub const APPLY_SCRIPT: &str = include_str!("apply.lua");

/// Script arguments before the four per EVENT (see the top of `apply.lua`).
const FIXED_ARGS: usize = 5;
/// Index of the document TTL among the arguments.
const TTL_ARG: usize = 4;

/// One session's part of a batch, ready for the apply step.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub keys: SessionKeys,
    pub args: Vec<String>,
}

impl Invocation {
    /// Builds the script arguments for `deliveries` of `session`, without a
    /// document TTL (see [`Invocation::with_document_ttl`]). Children go in
    /// (timestamp, position) order so that in-order arrival takes the append
    /// path.
    pub fn new(
        names: &Names,
        session: &SessionId,
        deliveries: &[Delivery],
        max_children: u64,
    ) -> Self {
        let mut start: Option<f64> = None;
        let mut end: Option<f64> = None;
        let mut children = Vec::new();
        for delivery in deliveries {
            for (index, event) in delivery.events.iter().enumerate() {
                match event.kind {
                    EventKind::SessionStart => {
                        start = Some(start.map_or(event.timestamp, |t| t.min(event.timestamp)));
                    }
                    EventKind::SessionEnd => {
                        end = Some(end.map_or(event.timestamp, |t| t.max(event.timestamp)));
                    }
                    EventKind::Event => children.push((
                        event.timestamp,
                        position_member(delivery.stream_sequence, index),
                        event,
                    )),
                }
            }
        }
        children.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let bound =
            |value: Option<f64>| value.map_or(String::new(), |t| normalized_number(t).to_string());
        let mut args = Vec::with_capacity(FIXED_ARGS + children.len() * 4);
        args.push(empty_document(session.as_str()).to_string());
        args.push(bound(start));
        args.push(bound(end));
        args.push(max_children.to_string());
        args.push("0".to_owned());
        for (timestamp, position, event) in children {
            args.push(event.identity());
            args.push(position);
            args.push(timestamp.to_string());
            args.push(event.to_json());
        }
        Self {
            keys: names.keys(session),
            args,
        }
    }

    /// Sets the document TTL: after the apply, the session's three keys
    /// expire `seconds` later (0: never).
    pub fn with_document_ttl(mut self, seconds: u64) -> Self {
        self.args[TTL_ARG] = seconds.to_string();
        self
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
            .arg(3)
            .arg(&self.keys.doc)
            .arg(&self.keys.ids)
            .arg(&self.keys.order)
            .arg(&self.args);
        cmd
    }
}

/// The fate of one invocation.
#[derive(Debug)]
pub enum Applied {
    /// Stored; the number of children written.
    Stored(i64),
    /// Redis refused it and will refuse it again (a full session, a key of
    /// the wrong type): the reason.
    Refused(String),
}

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

/// Invocations in flight at once on a Redis Cluster.
const CLUSTER_CONCURRENCY: usize = 64;

/// A connection to Redis (one server or a cluster) holding the apply script.
#[derive(Clone)]
pub struct Store {
    connection: RedisConnection,
    script: redis::Script,
}

impl Store {
    pub async fn connect(settings: &RedisSettings) -> anyhow::Result<Self> {
        let timeouts = RedisTimeouts {
            connect: Some(std::time::Duration::from_secs(2)),
            response: Some(std::time::Duration::from_secs(10)),
        };
        Ok(Self {
            connection: RedisConnection::connect(settings, timeouts).await?,
            script: redis::Script::new(APPLY_SCRIPT),
        })
    }

    /// Applies every invocation: in one round trip on a single server, per
    /// session on a cluster. `Err` is an outage: the caller must not ack and
    /// should try again; nothing about the batch is wrong.
    pub async fn apply(&mut self, invocations: &[Invocation]) -> Result<Vec<Applied>, RedisError> {
        // A batch of poison only has nothing to apply; Redis refuses an
        // empty pipeline ("empty command"), which would read as an outage.
        if invocations.is_empty() {
            return Ok(Vec::new());
        }
        let results = if self.connection.is_cluster() {
            self.run_each(invocations).await
        } else {
            self.run_pipelined(invocations).await?
        };
        results
            .into_iter()
            .map(|result| match result {
                Ok(written) => Ok(Applied::Stored(written)),
                Err(err) if is_outage(&err) => Err(err),
                Err(err) => Ok(Applied::Refused(err.to_string())),
            })
            .collect()
    }

    /// One server: every invocation in one pipeline.
    async fn run_pipelined(
        &mut self,
        invocations: &[Invocation],
    ) -> Result<Vec<redis::RedisResult<i64>>, RedisError> {
        let mut results = self.run(invocations).await?;
        if results
            .iter()
            .any(|result| matches!(result, Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript)))
        {
            // A restarted or new server: load the script and run again; the
            // step is idempotent, so what already ran runs harmlessly twice.
            self.script
                .prepare_invoke()
                .load_async(&mut self.connection)
                .await?;
            results = self.run(invocations).await?;
        }
        Ok(results)
    }

    /// A cluster: a pipeline may not span hash slots, so each invocation
    /// goes alone to its session's node, [`CLUSTER_CONCURRENCY`] at a time.
    /// A node without the script (new, restarted, failed over) runs it by
    /// `EVAL`, which also caches it there.
    async fn run_each(&mut self, invocations: &[Invocation]) -> Vec<redis::RedisResult<i64>> {
        let started = std::time::Instant::now();
        let (connection, script) = (&self.connection, &self.script);
        // By index: a closure over `&Invocation` would make the future
        // higher-ranked over its lifetime, which `tokio::spawn` rejects.
        let results = futures::stream::iter(0..invocations.len())
            .map(|index| {
                let mut connection = connection.clone();
                let invocation = &invocations[index];
                async move {
                    match invocation
                        .command(script)
                        .query_async(&mut connection)
                        .await
                    {
                        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
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
        results
    }

    async fn run(
        &mut self,
        invocations: &[Invocation],
    ) -> Result<Vec<redis::RedisResult<i64>>, RedisError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for invocation in invocations {
            pipe.add_command(invocation.command(&self.script));
        }
        let started = std::time::Instant::now();
        let results = pipe.query_async(&mut self.connection).await;
        metrics::histogram!(sessionfold_common::metrics::APPLY_SECONDS)
            .record(started.elapsed().as_secs_f64());
        results
    }

    /// The Redis connection, for readiness checks.
    pub fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    /// Answers when Redis does.
    pub async fn ping(&mut self) -> Result<(), RedisError> {
        redis::cmd("PING").query_async(&mut self.connection).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let invocation = Invocation::new(&Names::default(), &session, &deliveries, 0);
        assert_eq!(invocation.keys.doc, "sf:doc:{s}");
        let args = &invocation.args;
        assert_eq!(
            args[0],
            r#"{"session_id":"s","type":"SESSION","start":null,"end":null,"children":[]}"#
        );
        assert_eq!(
            (
                args[1].as_str(),
                args[2].as_str(),
                args[3].as_str(),
                args[4].as_str()
            ),
            ("1", "9.5", "0", "0")
        );
        assert_eq!(args.len(), FIXED_ARGS + 2 * 4);
        assert_eq!(args[6], "00000000000000000002:0000000000");
        assert_eq!(args[7], "5");
        assert_eq!(args[8], r#"{"type":"EVENT","timestamp":5,"name":"a"}"#);
        assert_eq!(args[10], "00000000000000000007:0000000000");
        let with_ttl = invocation.with_document_ttl(60);
        assert_eq!(with_ttl.args[TTL_ARG], "60");
        assert_eq!(with_ttl.args.len(), FIXED_ARGS + 2 * 4);
    }
}
