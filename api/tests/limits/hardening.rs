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

/// Attack 3: a large document changed by a delta, then 64 watchers that
/// join and never read. Before, each joiner after a delta framed its own
/// copy of the whole document: a 7.7 MB session and 64 streams cost
/// +315 to +592 MiB. Now the joiners at one event share one frame: the
/// api holds about one copy, whatever their number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_joiners_after_a_delta_share_one_copy_of_the_document() {
    let api = start_api_alone(|_| {}).await;
    const SESSION: &str = "shared-joiners";
    const CHILDREN: usize = 90_000;
    let document = document(SESSION, CHILDREN);
    {
        let session = sessionfold_core::SessionId::parse(SESSION).unwrap();
        let keys = sessionfold_core::Keys::default().session(&session);
        let mut redis = api.redis().await;
        let _: () = redis::pipe()
            .atomic()
            .cmd("JSON.SET")
            .arg(&keys.doc)
            .arg("$")
            .arg(&document)
            .ignore()
            .cmd("HSET")
            .arg(&keys.state)
            .arg("rev")
            .arg(1)
            .ignore()
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    // A watcher that reads makes the feed and sees the delta.
    let response = api
        .http
        .get(api.url(&format!("/data/stream?session_id={SESSION}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    tokio::spawn(async move {
        let mut body = futures::StreamExt::boxed(response.bytes_stream());
        let mut tail: Vec<u8> = Vec::new();
        while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
            tail.extend_from_slice(&chunk);
            for name in ["event: document", "event: delta"] {
                if count(&tail, name.as_bytes()) > 0 {
                    let _ = seen_tx.send(name);
                }
            }
            let keep = tail.len().saturating_sub(64);
            tail.drain(..keep);
        }
    });
    wait_for(&mut seen, "event: document").await;
    let client = async_nats::connect(api.nats.url()).await.unwrap();
    let subject = sessionfold_core::Subjects {
        updates_prefix: UPDATES_PREFIX.to_owned(),
        ..sessionfold_core::Subjects::default()
    }
    .update(&sessionfold_core::SessionId::parse(SESSION).unwrap());
    let note = format!(
        r#"{{"session_id":"{SESSION}","written":1,"revision":2,"changes":[{{"insert":{CHILDREN},"children":[{{"type":"EVENT","timestamp":1600000000,"name":"late"}}]}}]}}"#
    );
    client.publish(subject, note.into()).await.unwrap();
    client.flush().await.unwrap();
    wait_for(&mut seen, "event: delta").await;

    let baseline_rss = rss_bytes();
    let stop = CancellationToken::new();
    let rss_peak = sample_peak(stop.clone(), || async { rss_bytes() });
    let mut joiners = Vec::new();
    for i in 0..64 {
        // Four addresses: 16 streams each, the per-address cap.
        let source = format!("127.0.0.{}", 2 + i / 16);
        let mut connection = raw_connection(&source, api.addr, Some(4096)).await;
        send_get(
            &mut connection,
            &format!("/data/stream?session_id={SESSION}"),
            "",
        )
        .await;
        assert!(read_head(&mut connection).await.contains("200"));
        joiners.push(connection);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let grown = rss_peak.await.unwrap().saturating_sub(baseline_rss);
    let copy = document.len() as u64;
    println!(
        "attack 3, 64 joiners after a delta of a {:.1} MB document, never reading: api RSS +{:.1} MiB \
         ({:.1} copies; before the fix +315 to +592 MiB, one copy each); bound: about one copy",
        copy as f64 / 1e6,
        mib(grown),
        grown as f64 / copy as f64
    );
    assert!(
        grown < 4 * copy,
        "64 joiners grew RSS by {:.1} MiB, {:.1} copies of the document",
        mib(grown),
        grown as f64 / copy as f64
    );
    drop(joiners);
}

/// Reads a response head (status and headers) from `connection`, and
/// nothing more; its status line.
async fn read_head(connection: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), connection.read(&mut byte))
            .await
            .expect("a response head")
            .unwrap();
        assert_eq!(n, 1, "the server closed before its response head");
        head.push(byte[0]);
    }
    status_line(&head)
}

async fn wait_for(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>,
    name: &'static str,
) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while seen.recv().await != Some(name) {}
    })
    .await
    .unwrap_or_else(|_| panic!("no {name}"));
}

/// Weaknesses: the HTML pages had no CSP, X-Frame-Options or nosniff, the
/// list page wrote the API key into the address bar and every link, and a
/// malformed percent-escape in `/timeline/…` left the page stuck. Now the
/// pages, their scripts and styles carry those headers, no script is
/// inline, the key stays in the tab's sessionStorage and in request
/// headers, and a malformed escape gets 400 saying so.
#[tokio::test]
async fn html_pages_carry_security_headers_keep_the_key_out_of_links_and_refuse_bad_escapes() {
    let api = start_api(|_| {}).await;
    for path in [
        "/timeline",
        "/timeline/some%20session",
        "/assets/sessions.js",
        "/assets/timeline.js",
        "/assets/sessions.css",
        "/assets/timeline.css",
    ] {
        let response = api.http.get(api.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let csp = header("content-security-policy");
        println!(
            "{path}: content-security-policy {csp:?}, x-frame-options {:?}, x-content-type-options {:?}",
            header("x-frame-options"),
            header("x-content-type-options")
        );
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let body = response.text().await.unwrap();
        if path.starts_with("/timeline") {
            // Scripts and styles come from this origin only, none inline.
            assert!(
                !body.contains("<script>") && !body.contains("<style>"),
                "{path}"
            );
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{path}"
            );
        }
        if path == "/assets/sessions.js" {
            // The key is kept in the tab and sent as a header, never put
            // into a link or the address.
            assert!(body.contains("sessionStorage"), "{path}");
            assert!(body.contains("Authorization"), "{path}");
            assert!(!body.contains(r#""?token=""#), "{path}");
            assert!(!body.contains(r#"query.set("token""#), "{path}");
        }
    }
    for path in [
        "/timeline/%zz",
        "/timeline/a%2",
        "/timeline/%E0%A4",
        "/timeline/100%",
    ] {
        let response = api.http.get(api.url(path)).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        println!("{path}: {status} {}", body.trim());
        assert_eq!(status, 400, "{path}");
        assert!(body.contains("malformed percent-escape"), "{path}: {body}");
    }
}

/// The `FT.CREATE` of a sessions index with the fields an unselective
/// `/sessions` query touches (the processor creates the full one).
async fn create_sessions_index(api: &Api) {
    let keys = sessionfold_core::Keys::default();
    let mut redis = api.redis().await;
    let _: () = redis::cmd("FT.CREATE")
        .arg(keys.sessions_index())
        .arg("ON")
        .arg("JSON")
        .arg("PREFIX")
        .arg(1)
        .arg(keys.summary_prefix())
        .arg("SCHEMA")
        .arg("$.state")
        .arg("AS")
        .arg("state")
        .arg("TAG")
        .arg("$.token")
        .arg("AS")
        .arg("token")
        .arg(&["TAG", "CASESENSITIVE", "SORTABLE", "UNF", "NOINDEX"][..])
        .arg("$.sort_start")
        .arg("AS")
        .arg("sort_start")
        .arg(&["TAG", "CASESENSITIVE", "SORTABLE", "UNF", "NOINDEX"][..])
        .query_async(&mut redis)
        .await
        .unwrap();
}

/// `reads` sequential reads of `url`: each one's latency, and how many
/// were not 200.
async fn timed_reads(http: &reqwest::Client, url: &str, reads: usize) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::with_capacity(reads);
    let mut failed = 0;
    for _ in 0..reads {
        let started = std::time::Instant::now();
        match http.get(url).send().await {
            Ok(response) if response.status() == 200 => {
                let _ = response.bytes().await;
            }
            _ => failed += 1,
        }
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (latencies, failed)
}

/// Attack 4: one client looping over an unselective `/sessions` query
/// (every state, `limit=1`), which the query engine runs on Redis's main
/// thread at about 1.1 µs per summary. Before, with the engine timeout at
/// 1000 ms and no budget, at 100 000 sessions Redis ran at 94 % CPU and a
/// small read's p50 went 2.1 → 43 ms. Now searches share
/// `API_SEARCH_BUDGET_MS` of Redis time a second and each is cut at
/// `API_SEARCH_TIMEOUT_MS`: a small reader's p99 stays within 2× of its
/// own baseline (or 10 ms over it, on this busy machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_looping_over_unselective_session_queries_keeps_small_reads_p99_within_2x() {
    // The per-address request limit keeps the loop's refused requests from
    // taking the api's own CPU (this test's api, attacker and reader share
    // two cores); what this test bounds is the searches' cost on Redis.
    const REQUESTS_PER_SEC: u32 = 300;
    let api =
        start_api_alone(|config| config.limits.api_ip_requests_per_sec = REQUESTS_PER_SEC).await;
    let settings = sessionfold_api::Config::default().limits.sessions;
    create_sessions_index(&api).await;
    const SESSIONS: usize = 30_000;
    let keys = sessionfold_core::Keys::default();
    let mut redis = api.redis().await;
    for batch in 0..SESSIONS / 1000 {
        let mut pipe = redis::pipe();
        for i in batch * 1000..(batch + 1) * 1000 {
            let session = sessionfold_core::SessionId::parse(&format!("s{i:06}")).unwrap();
            let state = ["open", "ended", "idle"][i % 3];
            let summary = serde_json::json!({
                "session_id": session.as_str(), "token": session.as_str(),
                "state": state, "start": i, "end": null,
                "children": 1, "first_arrival": i, "last_arrival": i, "names": [],
                "names_capped": false, "sort_start": format!("{i:012}"),
                "sort_activity": format!("{i:012}"),
            });
            pipe.cmd("JSON.SET")
                .arg(keys.session(&session).summary)
                .arg("$")
                .arg(summary.to_string())
                .ignore();
        }
        let _: () = pipe.query_async(&mut redis).await.unwrap();
    }
    const SMALL: &str = "small-reader";
    api.store(SMALL, &document(SMALL, 10)).await;
    let small = api.data_url(SMALL);
    let search = api.url("/sessions?state=open,ended,idle,max_duration&limit=1");
    // One query unbudgeted, to know what the attacker asks of Redis.
    let started = std::time::Instant::now();
    let first = api.http.get(&search).send().await.unwrap();
    let one_query = started.elapsed();
    assert_eq!(first.status(), 200);

    const READS: usize = 800;
    let (mut baseline, failed) = timed_reads(&api.http, &small, READS).await;
    assert_eq!(failed, 0);
    let cpu_before = redis_cpu(&api).await;
    let wall = std::time::Instant::now();
    let stop = CancellationToken::new();
    // The attacker comes from an address of its own.
    let attacker = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 5, 1]))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let looping = {
        let (http, url, stop) = (attacker, search.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut served, mut busy, mut limited, mut other) = (0u64, 0u64, 0u64, 0u64);
            while !stop.is_cancelled() {
                match http.get(&url).send().await {
                    Ok(response) if response.status() == 200 => served += 1,
                    Ok(response) if response.status() == 429 => limited += 1,
                    Ok(response) if response.status() == 503 => {
                        let body: Value = response.json().await.unwrap_or_default();
                        if body["error"]["code"] == "search_busy" {
                            busy += 1;
                        } else {
                            other += 1;
                        }
                    }
                    _ => other += 1,
                }
            }
            (served, busy, limited, other)
        })
    };
    // The bucket starts full (one search's deadline of Redis time): the
    // loop spends it at once, then gets what refills. The reader measures
    // the loop from then on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut attacked, failed) = timed_reads(&api.http, &small, READS).await;
    stop.cancel();
    let (served, busy, limited, other) = looping.await.unwrap();
    let redis_share = (redis_cpu(&api).await - cpu_before) / wall.elapsed().as_secs_f64();
    let (base_p50, base_p99) = (
        percentile(&mut baseline, 50.0),
        percentile(&mut baseline, 99.0),
    );
    let (p50, p99) = (
        percentile(&mut attacked, 50.0),
        percentile(&mut attacked, 99.0),
    );
    println!(
        "attack 4, one client looping over every state with limit=1 at {SESSIONS} sessions \
         (one query {one_query:?}): {served} searches served, {busy} refused search_busy, {limited} rate_limited \
         (API_IP_REQUESTS_PER_SEC {REQUESTS_PER_SEC}), {other} other; \
         Redis CPU {:.0} %; small reads p50 {base_p50:?} -> {p50:?}, p99 {base_p99:?} -> {p99:?}, \
         {failed} failed (before the fix, at 100 000 sessions: Redis 94 % CPU, p50 2.1 -> 43 ms); \
         bound: p99 within max(2x, +10 ms) (API_SEARCH_BUDGET_MS {}, API_SEARCH_TIMEOUT_MS {})",
        redis_share * 100.0,
        settings.search_budget_ms,
        settings.search_timeout_ms
    );
    assert_eq!(failed, 0, "small reads failed under the search loop");
    assert!(busy > 0, "the budget refused none of the loop's searches");
    // What the budget bounds, whatever else the machine runs: the loop's
    // share of Redis (73 % without it).
    assert!(
        redis_share < 0.25,
        "the search loop took {:.0} % of Redis",
        redis_share * 100.0
    );
    // The latency bound holds only where the test runs alone, as `make
    // security` runs it (SECURITY_LATENCY_BOUNDS=1); under `make test` the
    // other tests of this binary share the two cores. Twice the baseline,
    // and at least 10 ms over it: a p99 of a few milliseconds moves by
    // that much on two cores that also serve the loop's refused requests
    // (without the budget it went 2.8 -> 28 ms here).
    if std::env::var_os("SECURITY_LATENCY_BOUNDS").is_some() {
        assert!(
            p99 <= (base_p99 * 2).max(base_p99 + Duration::from_millis(10)),
            "small reads' p99 {base_p99:?} -> {p99:?}"
        );
    }
}

/// Redis's CPU time so far (user and system), in seconds.
async fn redis_cpu(api: &Api) -> f64 {
    let user: f64 = api.info("cpu", "used_cpu_user").await.parse().unwrap();
    let sys: f64 = api.info("cpu", "used_cpu_sys").await.parse().unwrap();
    user + sys
}

/// Sends `path` on a new connection from `source` and waits up to
/// `within` for the response's status line; `None` when none came (the
/// request is waiting, or streaming with nothing read yet).
async fn ask_from(
    api: &Api,
    source: &str,
    path: &str,
    within: Duration,
) -> (tokio::net::TcpStream, Option<String>) {
    let mut connection = raw_connection(source, api.addr, Some(4096)).await;
    send_get(&mut connection, path, "").await;
    let mut head = [0u8; 12];
    let status = match tokio::time::timeout(within, connection.read_exact(&mut head)).await {
        Ok(Ok(_)) => Some(String::from_utf8_lossy(&head[9..12]).into_owned()),
        _ => None,
    };
    (connection, status)
}

/// Attack 6: streams on sessions that do not exist and `min_seq` waiters
/// that never complete, from a few addresses, filling the api-wide caps.
/// Before, 64 addresses × 16 streams gave everyone else 503
/// `too_many_streams` for up to an hour, and 32 × 32 waiters made 18 of 20
/// legitimate `min_seq` reads get 503. Now, past half of a cap an address
/// gets more only while it holds fewer than 2, a stream on a session with
/// no document ends after `API_STREAM_ABSENT_SECS` (`not_found`), and a
/// `min_seq` past the stream's last sequence ends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_addresses_cannot_fill_the_global_caps_and_waits_on_nothing_end_early() {
    const MAX: usize = 64;
    let api = start_api(|config| {
        config.limits.streams.max_streams = MAX;
        config.limits.streams.max_streams_per_ip = 16;
        config.limits.streams.stream_absent_secs = 3;
        config.limits.waits.max_waiters = MAX;
        config.limits.waits.max_waiters_per_ip = 16;
    })
    .await;
    // Eight attacking addresses ask for 16 streams each, on sessions that
    // do not exist: before, they took all 64 places.
    let mut held = Vec::new();
    for address in 0..8 {
        for i in 0..16 {
            let source = format!("127.0.1.{}", address + 1);
            let path = format!("/data/stream?session_id=ghost-{address}-{i}");
            let (connection, status) = ask_from(&api, &source, &path, Duration::from_secs(5)).await;
            if status.as_deref() == Some("200") {
                held.push(connection);
            }
        }
    }
    let (mut legit, status) = ask_from(
        &api,
        "127.0.2.1",
        "/data/stream?session_id=someone-else",
        Duration::from_secs(5),
    )
    .await;
    println!(
        "attack 6, 8 addresses x 16 streams on sessions that do not exist (cap {MAX}): the attacker holds {} \
         (before the fix: all {MAX}); another address's stream: {status:?} (before: 503 too_many_streams)",
        held.len()
    );
    assert!(held.len() <= MAX / 2 + 8 * sessionfold_api::fair::PAST_HALF_PER_ADDRESS);
    assert_eq!(
        status.as_deref(),
        Some("200"),
        "another address gets a stream"
    );
    // The streams on nothing end by themselves, saying why.
    let started = std::time::Instant::now();
    let ended = read_until_end(&mut held[0], Duration::from_secs(20)).await;
    let took = started.elapsed();
    println!(
        "a stream on a session that does not exist ended after {took:?} (API_STREAM_ABSENT_SECS 3; before: up to 3600 s)"
    );
    assert!(
        count(&ended, br#""reason":"not_found""#) == 1,
        "{}",
        String::from_utf8_lossy(&ended)
    );
    assert!(took < Duration::from_secs(15));
    drop(held);
    let _ = read_until_end(&mut legit, Duration::from_secs(10)).await;

    // A stream whose processors' consumer has delivered one message and
    // acked none: `min_seq=1` waits.
    let client = async_nats::connect(api.nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let names = sessionfold_api::applied::ConsumerNames::default();
    let stream = jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: names.stream_name.clone(),
            subjects: vec!["hardening.events.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    jetstream
        .publish("hardening.events.one", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(names.consumer_name.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    let _unacked = futures::StreamExt::next(&mut batch).await.unwrap().unwrap();

    // All at once: each waits its whole wait_ms.
    let asks = (0..8).flat_map(|address| {
        let api = &api;
        (0..16).map(move |_| async move {
            let source = format!("127.0.3.{}", address + 1);
            ask_from(
                api,
                &source,
                "/data?session_id=ghost&min_seq=1&wait_ms=8000",
                Duration::from_millis(1500),
            )
            .await
        })
    });
    let waiting: Vec<_> = futures::future::join_all(asks)
        .await
        .into_iter()
        .filter(|(_, status)| status.is_none())
        .map(|(connection, _)| connection)
        .collect();
    // Another address (the test's client, 127.0.0.1) still finds a place:
    // it waits its wait_ms and says so, never too_many_waiters.
    let response = api
        .http
        .get(api.url("/data?session_id=someone-else&min_seq=1&wait_ms=1000"))
        .send()
        .await
        .unwrap();
    let legit_status = response.status();
    let legit_body: Value = response.json().await.unwrap();
    let legit = format!("{legit_status} {}", legit_body["error"]["code"]);
    // A sequence no producer was given ends at once.
    let asked = std::time::Instant::now();
    let response = api
        .http
        .get(api.url("/data?session_id=ghost&min_seq=1000000&wait_ms=8000"))
        .send()
        .await
        .unwrap();
    let answered = asked.elapsed();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    println!(
        "8 addresses x 16 min_seq waiters (cap {MAX}): the attacker holds {} (before: all {MAX}); \
         another address's waiter: {legit} after its wait (before: 503 too_many_waiters); \
         min_seq past the stream's last sequence: {status} {} after {answered:?} (before: its whole wait_ms)",
        waiting.len(),
        body["error"]["code"]
    );
    assert!(waiting.len() <= MAX / 2 + 8 * sessionfold_api::fair::PAST_HALF_PER_ADDRESS);
    assert_eq!(legit_body["error"]["code"], "not_yet_applied", "{legit}");
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "not_yet_applied");
    assert!(answered < Duration::from_secs(4), "{answered:?}");
}
