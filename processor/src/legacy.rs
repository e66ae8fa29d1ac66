//! The first layout's apply step (`apply_v1.lua`: an identity hash and a
//! sorted set of positions beside the document), kept runnable: the bench
//! measures it side by side with the current step, and the migration tests
//! write sessions with it.

use redis::RedisError;
use sessionfold_common::redis_conn::RedisConnection;
use sessionfold_core::event::normalized_number;
use sessionfold_core::fold::{empty_document, position_member};
use sessionfold_core::{Delivery, EventKind, SessionId};
use sessionfold_core::{Keys, SessionKeys};

/// The layout-1 apply step.
pub const APPLY_V1_SCRIPT: &str = include_str!("apply_v1.lua");

/// One session's part of a batch for the layout-1 step.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyInvocation {
    pub keys: SessionKeys,
    pub args: Vec<String>,
}

impl LegacyInvocation {
    /// The layout-1 arguments for `deliveries` of `session`: bounds, the
    /// limit, no TTL, then identity, position, timestamp and JSON per EVENT
    /// in (timestamp, position) order.
    pub fn new(
        keys: &Keys,
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
        let mut args = Vec::with_capacity(5 + children.len() * 4);
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
            keys: keys.session(session),
            args,
        }
    }
}

/// Applies `invocations` with the layout-1 step in one pipeline (a single
/// server); one result per invocation: the children written, or Redis's
/// refusal.
pub async fn apply_v1(
    connection: &mut RedisConnection,
    invocations: &[LegacyInvocation],
) -> Result<Vec<redis::RedisResult<i64>>, RedisError> {
    if invocations.is_empty() {
        return Ok(Vec::new());
    }
    let script = redis::Script::new(APPLY_V1_SCRIPT);
    script.prepare_invoke().load_async(connection).await?;
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for invocation in invocations {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(3)
            .arg(&invocation.keys.doc)
            .arg(&invocation.keys.ids)
            .arg(&invocation.keys.order)
            .arg(&invocation.args);
        pipe.add_command(cmd);
    }
    let replies: Vec<redis::Value> = pipe.query_async(connection).await?;
    Ok(replies
        .into_iter()
        .map(|reply| match reply {
            redis::Value::ServerError(err) => Err(RedisError::from(err)),
            other => redis::from_redis_value(other).map_err(RedisError::from),
        })
        .collect())
}
