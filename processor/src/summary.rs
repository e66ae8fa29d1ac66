//! The query engine's index over session summaries (docs/design.md §4.2),
//! which `GET /sessions` searches. The apply step writes the summaries
//! (`apply.lua`, its summary section); this creates the index over them on
//! every master, once, when the processor connects. Without the query engine
//! (a Redis without RediSearch) there is nothing to create: the summaries are
//! still kept, and the api answers `/sessions` with 503 until an index
//! exists.

use redis::Value;
use sessionfold_common::redis_conn::RedisConnection;
use sessionfold_core::Keys;

/// The `FT.CREATE` of the index of sessions under `keys`' prefix. Fields:
/// `state`, `names` (exact tags), `start`, `end`, `first_arrival`,
/// `last_arrival` (numbers), and, sortable but not searchable, `token` and
/// the two sort keys `sort_start` and `sort_activity`.
pub fn create_index_command(keys: &Keys) -> redis::Cmd {
    let mut cmd = redis::cmd("FT.CREATE");
    cmd.arg(keys.sessions_index())
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
    let reply = connection
        .route_to_all_masters(&create_index_command(keys))
        .await;
    let replies: Vec<Result<(), String>> = match reply {
        Err(err) => vec![Err(err.to_string())],
        Ok(Value::Map(per_node)) => per_node
            .into_iter()
            .map(|(_, reply)| check(reply))
            .collect(),
        Ok(other) => vec![check(other)],
    };
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
