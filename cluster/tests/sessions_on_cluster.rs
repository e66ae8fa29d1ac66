//! `GET /sessions` on a Redis Cluster: each master indexes the summaries of
//! its own slots, the api asks every master and merges, and its cursor
//! pages cross the masters without a duplicate or a gap. Small: three NATS
//! nodes with an R1 stream, three Redis masters with the shipped ACL, one
//! processor.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::time::Duration;

use serde_json::Value;
use sessionfold_cluster::{ClusterOptions, ClusterSystem};
use sessionfold_testkit::{eventually, init_test_tracing};

const SESSIONS: u32 = 30;

/// Every page of `GET /sessions?<query>`, followed by cursor: the session ids in order.
async fn all_pages(
    http: &reqwest::Client,
    api: std::net::SocketAddr,
    query: &str,
) -> Option<Vec<String>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(cursor) => format!("http://{api}/sessions?{query}&cursor={cursor}"),
            None => format!("http://{api}/sessions?{query}"),
        };
        let body: Value = http.get(url).send().await.ok()?.json().await.ok()?;
        for item in body["sessions"].as_array()? {
            ids.push(item["session_id"].as_str()?.to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Some(ids),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_every_master_are_found_and_paged_across_them() {
    init_test_tracing();
    let system = ClusterSystem::start(ClusterOptions {
        stream_replicas: 1,
        processors: 1,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let producer = system.producer();
    // Starts in reverse of the ids, so the order by start is not the
    // order of the keys or of the slots.
    let ids: Vec<String> = (0..SESSIONS).map(|i| format!("cluster-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let start = 1_000 - i;
        let name = if i % 2 == 0 { "even" } else { "odd" };
        let frame = format!(
            r#"[{{"type":"SESSION_START","timestamp":{start}}},{{"type":"EVENT","timestamp":{},"name":"{name}"}}]"#,
            start + 1
        );
        let mut sender = producer.session(id).unwrap();
        assert!(sender.send_frame(&frame).await.unwrap().is_accepted());
        sender.close().await;
    }
    // The sessions are spread over every master.
    for master in 0..system.redis.masters() {
        assert!(
            system.redis.keys_on(master).await.unwrap() > 0,
            "master {master} holds no session"
        );
    }

    let http = reqwest::Client::new();
    let mut by_start = ids.clone();
    by_start.reverse();
    let found = eventually(
        "every session is listed, by start, in pages of 4",
        Duration::from_secs(30),
        || {
            let http = &http;
            let expected = &by_start;
            async move {
                let found = all_pages(http, system.api_addr, "limit=4").await?;
                (&found == expected).then_some(found)
            }
        },
    )
    .await;
    assert_eq!(found.len(), SESSIONS as usize);

    // Filters and the other order cross the masters the same way.
    let even: Vec<String> = by_start
        .iter()
        .filter(|id| id[8..].parse::<u32>().unwrap() % 2 == 0)
        .cloned()
        .collect();
    assert_eq!(
        all_pages(&http, system.api_addr, "name=even&limit=3")
            .await
            .unwrap(),
        even
    );
    let mut descending = by_start.clone();
    descending.reverse();
    assert_eq!(
        all_pages(&http, system.api_addr, "order=desc&limit=7")
            .await
            .unwrap(),
        descending
    );
    let prefixed: Vec<String> = by_start
        .iter()
        .filter(|id| id.starts_with("cluster-1"))
        .cloned()
        .collect();
    assert_eq!(
        all_pages(&http, system.api_addr, "prefix=cluster-1&limit=2")
            .await
            .unwrap(),
        prefixed
    );
}
