//! Hardening II (issue #24), the api's part: each attack replayed against
//! real servers, printing what the attacker got, with its bound asserted.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

/// A session of `children` children of about `child_bytes` bytes each.
fn padded_document(session: &str, children: usize, child_bytes: usize) -> String {
    let pad = "x".repeat(child_bytes.saturating_sub(64));
    let mut text = format!(
        r#"{{"session_id":"{session}","type":"SESSION","start":1569972082,"end":null,"children":["#
    );
    for i in 0..children {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            r#"{{"type":"EVENT","timestamp":{},"name":"e{i:05}","pad":"{pad}"}}"#,
            1569972083 + i
        ));
    }
    text.push_str("]}");
    text
}

/// Attack 2: pages of 1000 children of 8 KB each (8 MB) asked for by 60
/// clients that never read. Before, Redis built each page whole and the
/// api held every one: RSS +430 to +547 MiB. Now Redis stops a page at
/// `API_CHILDREN_PAGE_BYTES` and `next` points to the rest, so a page
/// costs no more than a small document; the api holds well under the
/// large-read budget (`API_LARGE_RESPONSES × API_MAX_DOCUMENT_BYTES`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_pages_for_clients_that_never_read_stay_under_the_large_read_budget() {
    let api = start_api_alone(|_| {}).await;
    let settings = sessionfold_api::Config::default();
    let budget =
        u64::from(settings.limits.reads.large_responses) * settings.limits.reads.max_document_bytes;
    let page_bytes = settings.limits.children.children_page_bytes;
    const SESSION: &str = "wide-children";
    const CHILD_BYTES: usize = 8192;
    let document = padded_document(SESSION, 1000, CHILD_BYTES);
    api.store(SESSION, &document).await;
    let page = format!("/data/children?session_id={SESSION}&limit=1000");

    // A reader that follows `next` gets every child, in pages of bounded size.
    let mut from = 0;
    let mut children = 0;
    let mut pages = 0;
    let mut largest = 0;
    loop {
        let response = api
            .http
            .get(api.url(&format!("{page}&from={from}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = response.bytes().await.unwrap();
        largest = largest.max(body.len() as u64);
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["from"], from);
        children += parsed["children"].as_array().unwrap().len();
        pages += 1;
        match parsed["next"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(children, 1000);
    let step = u64::from(sessionfold_api::children::PAGE_STEP);
    assert!(
        largest <= page_bytes + CHILD_BYTES as u64 + 256,
        "a page of {largest} bytes (API_CHILDREN_PAGE_BYTES {page_bytes})"
    );

    let baseline_rss = rss_bytes();
    let baseline_redis = api.used_memory().await;
    let stop = CancellationToken::new();
    let rss_peak = sample_peak(stop.clone(), || async { rss_bytes() });
    let url = api.redis.url();
    let redis_peak = sample_peak(stop.clone(), move || {
        let url = url.clone();
        async move { redis_used_memory(&url).await }
    });
    let mut stalled = Vec::new();
    for _ in 0..60 {
        let mut connection = raw_connection("127.0.0.1", api.addr, Some(4096)).await;
        send_get(&mut connection, &page, "").await;
        stalled.push(connection);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let (rss_peak, redis_peak) = (rss_peak.await.unwrap(), redis_peak.await.unwrap());
    let mut ok = 0;
    for connection in &mut stalled {
        let mut head = [0u8; 16];
        if tokio::time::timeout(Duration::from_secs(5), connection.read_exact(&mut head))
            .await
            .is_ok_and(|read| read.is_ok())
            && head.starts_with(b"HTTP/1.1 200")
        {
            ok += 1;
        }
    }
    let grown = rss_peak.saturating_sub(baseline_rss);
    println!(
        "attack 2, 60 clients that never read pages of 1000 x 8 KB children: {ok} of 60 got 200; \
         api RSS +{:.1} MiB (before the fix: +430 to +547 MiB), Redis used_memory peak +{:.1} MiB; \
         a page is at most {largest} bytes ({pages} pages for 1000 children, {step} read at a time); \
         bound: under the large-read budget of {:.0} MiB",
        mib(grown),
        mib(redis_peak.saturating_sub(baseline_redis)),
        mib(budget)
    );
    assert_eq!(ok, 60, "every page is served");
    assert!(
        grown < budget / 2,
        "RSS grew by {:.1} MiB, the large-read budget is {:.0} MiB",
        mib(grown),
        mib(budget)
    );
}

async fn redis_used_memory(url: &str) -> u64 {
    let Ok(mut redis) = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
    else {
        return 0;
    };
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut redis)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}
