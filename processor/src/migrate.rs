//! Migrating a session written by the first layout (an identity hash and a
//! position sorted set beside the document; see [`crate::legacy`]) to the
//! current one, on its first touch.
//!
//! The apply step refuses a layout-1 session with `SESSIONFOLD_MIGRATE`.
//! The store then reads the old keys and the document's children, and
//! sends one invocation in `migrate` mode that holds every child with its
//! identity, position and timestamp: the step drops the old keys, empties
//! `children` and applies them all, in the same atomic call, so the
//! document keeps its bytes and the new state says what the old one did.
//! Concurrent migrations of one session are harmless: the second finds the
//! new state and migrates nothing. The session's invocation then runs as
//! usual.
//!
//! Old identities convert without the events: `sha:<hex>` is the hex of
//! the first 16 bytes of the SHA-256 the new layout stores, and `id:<x>`
//! becomes the SHA-256 of those same bytes (see
//! [`sessionfold_core::Event::identity_digest`]).

use std::collections::HashMap;

use redis::RedisError;
use serde_json::value::RawValue;
use sessionfold_common::redis_conn::RedisConnection;
use sha2::{Digest, Sha256};

use crate::store::{Child, Invocation};

/// The migrating invocation for the session of `invocation`, built from
/// its layout-1 keys.
pub async fn migration(
    connection: &mut RedisConnection,
    invocation: &Invocation,
) -> Result<Invocation, RedisError> {
    let keys = &invocation.keys;
    let order: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(&keys.order)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(connection)
        .await?;
    let identities: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&keys.ids)
        .query_async(connection)
        .await?;
    let children_json: Option<String> = redis::cmd("JSON.GET")
        .arg(&keys.doc)
        .arg("$.children")
        .query_async(connection)
        .await?;
    let children = parse_children(children_json.as_deref())?;
    let identity_of: HashMap<&str, &str> = identities
        .iter()
        .map(|(identity, position)| (position.as_str(), identity.as_str()))
        .collect();
    if children.len() != order.len() {
        return Err(corrupt(format!(
            "{} holds {} children, {} orders {}",
            keys.doc,
            children.len(),
            keys.order,
            order.len()
        )));
    }
    let mut migrated = Vec::with_capacity(children.len());
    for ((member, timestamp), json) in order.iter().zip(children) {
        let (stream_sequence, index) = parse_position(member)
            .ok_or_else(|| corrupt(format!("{} holds the position {member:?}", keys.order)))?;
        let identity = identity_of
            .get(member.as_str())
            .and_then(|identity| identity_digest(identity))
            .ok_or_else(|| corrupt(format!("{} has no identity for {member}", keys.ids)))?;
        migrated.push(Child {
            identity,
            stream_sequence,
            index,
            timestamp: *timestamp,
            json,
        });
    }
    let empty = String::from_utf8_lossy(invocation.empty_document()).into_owned();
    Ok(
        Invocation::from_parts(keys.clone(), empty, None, None, migrated, 0)
            .with_document_ttl(invocation.document_ttl())
            .migrating(),
    )
}

/// The texts of the children of `$.children` (a JSON array of one array).
fn parse_children(json: Option<&str>) -> Result<Vec<String>, RedisError> {
    let Some(json) = json else {
        return Ok(Vec::new());
    };
    let outer: Vec<Vec<Box<RawValue>>> = serde_json::from_str(json)
        .map_err(|err| corrupt(format!("the children are not a JSON array: {err}")))?;
    Ok(outer
        .into_iter()
        .next()
        .unwrap_or_default()
        .into_iter()
        .map(|child| child.get().to_owned())
        .collect())
}

/// `"<20 digits>:<10 digits>"`: the stream sequence and the index.
pub fn parse_position(member: &str) -> Option<(u64, usize)> {
    let (sequence, index) = member.split_once(':')?;
    Some((sequence.parse().ok()?, index.parse().ok()?))
}

/// The 16-byte identity of a layout-1 identity string.
pub fn identity_digest(identity: &str) -> Option<[u8; 16]> {
    if let Some(hex) = identity.strip_prefix("sha:") {
        if hex.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        return Some(bytes);
    }
    identity.strip_prefix("id:")?;
    let digest = Sha256::digest(identity.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Some(bytes)
}

fn corrupt(message: String) -> RedisError {
    redis::make_extension_error("SESSIONFOLD_CORRUPT".to_owned(), Some(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sessionfold_core::{Event, EventKind};

    fn event(value: serde_json::Value) -> Event {
        let body = value.as_object().unwrap().clone();
        Event {
            kind: EventKind::Event,
            timestamp: body["timestamp"].as_f64().unwrap(),
            body,
        }
    }

    #[test]
    fn old_identities_become_the_new_digests() {
        let content = event(json!({"type":"EVENT","timestamp":1,"name":"x"}));
        assert_eq!(
            identity_digest(&content.identity()),
            Some(content.identity_digest())
        );
        let with_id = event(json!({"type":"EVENT","timestamp":1,"id":"a:b"}));
        assert_eq!(with_id.identity(), "id:a:b");
        assert_eq!(
            identity_digest(&with_id.identity()),
            Some(with_id.identity_digest())
        );
        assert_eq!(identity_digest("sha:zz"), None);
        assert_eq!(identity_digest("other"), None);
    }

    #[test]
    fn positions_and_children_parse() {
        assert_eq!(
            parse_position("00000000000000000042:0000000007"),
            Some((42, 7))
        );
        assert_eq!(parse_position("x"), None);
        assert_eq!(
            parse_children(Some(r#"[[{"a":1},{"b":[2]}]]"#)).unwrap(),
            [r#"{"a":1}"#, r#"{"b":[2]}"#]
        );
        assert!(parse_children(None).unwrap().is_empty());
    }
}
