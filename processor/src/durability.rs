//! How durable an apply must be before its messages are acked
//! (`REDIS_DURABILITY`).
//!
//! - `none`: acked once Redis answered the apply step. A Redis crash may
//!   lose the last writes (up to `appendfsync everysec`'s second); automatic
//!   repair ([`crate::repair`]) re-applies them from the stream.
//! - `fsync`: `WAITAOF 1 0` after the batch: acked once Redis has written
//!   the batch to its append-only file and fsynced it. Needs `appendonly
//!   yes`.
//! - `replica`: `WAIT 1` after the batch: acked once at least one replica
//!   has received the batch, so a failover to that replica keeps it.
//!
//! The wait is sent on the connection that applied the batch (both commands
//! only count that client's own writes); a reply that does not show the
//! guarantee, a timeout included, means "not durable yet": the caller keeps
//! the batch, applies it again (the step is idempotent) and waits again,
//! without acking.

use std::time::Duration;

use redis::Value;

/// The guarantee the processor waits for before acking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// Ack once Redis answered.
    #[default]
    None,
    /// Ack once the batch is fsynced to Redis's append-only file (`WAITAOF 1 0`).
    Fsync,
    /// Ack once at least one replica has the batch (`WAIT 1`).
    Replica,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Fsync => "fsync",
            Self::Replica => "replica",
        }
    }

    /// The command that waits for the guarantee, `None` for [`Durability::None`].
    pub fn wait_command(self, timeout: Duration) -> Option<redis::Cmd> {
        let millis = timeout.as_millis().max(1) as u64;
        match self {
            Self::None => None,
            Self::Fsync => {
                let mut cmd = redis::cmd("WAITAOF");
                cmd.arg(1).arg(0).arg(millis);
                Some(cmd)
            }
            Self::Replica => {
                let mut cmd = redis::cmd("WAIT");
                cmd.arg(1).arg(millis);
                Some(cmd)
            }
        }
    }

    /// Whether one server's reply to [`wait_command`](Self::wait_command)
    /// shows the guarantee. `Err` says what the reply showed instead.
    pub fn check_reply(self, reply: &Value) -> Result<(), String> {
        match (self, reply) {
            (Self::None, _) => Ok(()),
            // WAITAOF answers [local fsynced, replicas fsynced].
            (Self::Fsync, Value::Array(counts)) => match counts.first() {
                Some(Value::Int(local)) if *local >= 1 => Ok(()),
                Some(Value::Int(_)) => {
                    Err("WAITAOF: the append-only file is not fsynced yet".to_owned())
                }
                _ => Err(format!("WAITAOF answered {reply:?}")),
            },
            (Self::Replica, Value::Int(replicas)) if *replicas >= 1 => Ok(()),
            (Self::Replica, Value::Int(_)) => Err("WAIT: no replica has the batch yet".to_owned()),
            (_, Value::ServerError(err)) => {
                Err(format!("{} refused: {err:?}", self.command_name()))
            }
            (_, other) => Err(format!("{} answered {other:?}", self.command_name())),
        }
    }

    /// Checks a Redis Cluster's answer: a map from each master's address to
    /// its reply, every one of which must show the guarantee.
    pub fn check_cluster_reply(self, reply: &Value) -> Result<(), String> {
        match reply {
            Value::Map(per_node) if !per_node.is_empty() => {
                for (node, reply) in per_node {
                    self.check_reply(reply).map_err(|err| {
                        let node = match node {
                            Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                            other => format!("{other:?}"),
                        };
                        format!("{node}: {err}")
                    })?;
                }
                Ok(())
            }
            // A cluster of one answers like a single server.
            other => self.check_reply(other),
        }
    }

    fn command_name(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Fsync => "WAITAOF",
            Self::Replica => "WAIT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_waits_for_nothing() {
        assert!(
            Durability::None
                .wait_command(Duration::from_secs(1))
                .is_none()
        );
        assert_eq!(Durability::None.check_reply(&Value::Nil), Ok(()));
    }

    #[test]
    fn fsync_needs_the_local_count() {
        let cmd = Durability::Fsync
            .wait_command(Duration::from_millis(250))
            .unwrap();
        assert_eq!(
            cmd.args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
                    other => panic!("unexpected argument {other:?}"),
                })
                .collect::<Vec<_>>(),
            ["WAITAOF", "1", "0", "250"]
        );
        let reply = |local, replicas| Value::Array(vec![Value::Int(local), Value::Int(replicas)]);
        assert_eq!(Durability::Fsync.check_reply(&reply(1, 0)), Ok(()));
        assert!(Durability::Fsync.check_reply(&reply(0, 1)).is_err());
        assert!(Durability::Fsync.check_reply(&Value::Int(1)).is_err());
    }

    #[test]
    fn replica_needs_one_replica_on_every_master() {
        assert_eq!(Durability::Replica.check_reply(&Value::Int(2)), Ok(()));
        assert!(Durability::Replica.check_reply(&Value::Int(0)).is_err());
        let node = |name: &str, count| {
            (
                Value::BulkString(name.as_bytes().to_vec()),
                Value::Int(count),
            )
        };
        let all = Value::Map(vec![node("a:1", 1), node("b:2", 1)]);
        assert_eq!(Durability::Replica.check_cluster_reply(&all), Ok(()));
        let lagging = Value::Map(vec![node("a:1", 1), node("b:2", 0)]);
        let err = Durability::Replica
            .check_cluster_reply(&lagging)
            .unwrap_err();
        assert!(err.starts_with("b:2:"), "{err}");
    }
}
