//! The query engine's index over session summaries (docs/design.md §4.2),
//! which `GET /sessions` searches. The apply step writes the summaries
//! (`apply.lua`, its summary section); this creates the index over them on
//! every master, once, when the processor connects. The engine's commands
//! name their index like a key, and a Redis Cluster master refuses a name
//! outside its slots (`MOVED`): so each master's index is named with a hash
//! tag of its lowest slot ([`Keys::cluster_sessions_index`]), which is also
//! how the api finds it. Without the query engine
//! (a Redis without RediSearch) there is nothing to create: the summaries are
//! still kept, and the api answers `/sessions` with 503 until an index
//! exists.

use redis::Value;
use sessionfold_common::redis_conn::RedisConnection;
use sessionfold_common::slots::tag_for_slot;
use sessionfold_core::Keys;

/// The `FT.CREATE` of the index of sessions under `keys`' prefix. Fields:
/// `state`, `names` (exact tags), `start`, `end`, `first_arrival`,
/// `last_arrival` (numbers), and, sortable but not searchable, `token` and
/// the two sort keys `sort_start` and `sort_activity`.
pub fn create_index_command(keys: &Keys, name: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("FT.CREATE");
    cmd.arg(name)
        .arg("ON")
        .arg("JSON")
        .arg("PREFIX")
        .arg(1)
        .arg(keys.summary_prefix())
        .arg("SCHEMA");
    for (path, name, kind) in [
        ("$.state", "state", &["TAG"][..]),
        ("$.names[*]", "names", &["TAG", "CASESENSITIVE"]),
        ("$.start", "start", &["NUMERIC"]),
        ("$.end", "end", &["NUMERIC"]),
        ("$.first_arrival", "first_arrival", &["NUMERIC"]),
        ("$.last_arrival", "last_arrival", &["NUMERIC"]),
        (
            "$.token",
            "token",
            &["TAG", "CASESENSITIVE", "SORTABLE", "UNF", "NOINDEX"],
        ),
        (
            "$.sort_start",
            "sort_start",
            &["TAG", "CASESENSITIVE", "SORTABLE", "UNF", "NOINDEX"],
        ),
        (
            "$.sort_activity",
            "sort_activity",
            &["TAG", "CASESENSITIVE", "SORTABLE", "UNF", "NOINDEX"],
        ),
    ] {
        cmd.arg(path).arg("AS").arg(name).arg(kind);
    }
    cmd
}

/// What creating the index found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOutcome {
    /// Created now, or there already.
    Ready,
    /// The server has no query engine; `/sessions` stays unavailable.
    NoQueryEngine,
}

/// Creates the index of sessions on every master (on a single server, that
/// server), unless it exists. Any other refusal is an error.
pub async fn ensure_index(
    connection: &mut RedisConnection,
    keys: &Keys,
) -> anyhow::Result<IndexOutcome> {
    let mut replies: Vec<Result<(), String>> = Vec::new();
    if connection.is_cluster() {
        let slots: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(connection)
            .await?;
        for master in sessionfold_common::slots::masters(&slots) {
            let slot = master.lowest_slot();
            let name = keys.cluster_sessions_index(&tag_for_slot(slot));
            let reply = connection
                .route_to_slot(&create_index_command(keys, &name), slot)
                .await;
            replies.push(reply.map_err(|err| err.to_string()).and_then(check));
        }
    } else {
        let reply: redis::RedisResult<Value> = create_index_command(keys, &keys.sessions_index())
            .query_async(connection)
            .await;
        replies.push(reply.map_err(|err| err.to_string()).and_then(check));
    }
    let mut outcome = IndexOutcome::Ready;
    for reply in replies {
        match reply {
            Ok(()) => {}
            Err(err) if err.to_ascii_lowercase().contains("index already exists") => {}
            Err(err) if err.to_ascii_lowercase().contains("unknown command") => {
                outcome = IndexOutcome::NoQueryEngine;
            }
            Err(err) => anyhow::bail!("creating the index of sessions: {err}"),
        }
    }
    Ok(outcome)
}

fn check(reply: Value) -> Result<(), String> {
    match reply {
        Value::ServerError(err) => Err(format!("{err:?}")),
        _ => Ok(()),
    }
}
