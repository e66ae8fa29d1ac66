//! The attacks of the hardening audit, replayed against a real ingest and
//! nats-server: each test runs the attack, shows that it now fails, and
//! prints what the attacker got (connections held, memory) and what a
//! well-behaved producer saw meanwhile (its ack latency). `make security`
//! runs this module alone; `SECURITY_SCALE` (default 1) multiplies the
//! attack sizes.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use sessionfold_common::auth::{Claims, Scope, issue_token, now};
use sessionfold_core::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{DEADLINE, Producer, TestIngest, frame, spawn_ingest_with};

/// How many times the default attack sizes to run.
fn scale() -> usize {
    std::env::var("SECURITY_SCALE")
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|scale| *scale > 0)
        .unwrap_or(1)
}

/// This process's resident memory, in bytes (ingest runs in it).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

const MIB: u64 = 1024 * 1024;

/// The latencies a well-behaved producer saw.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }

    fn report(&self, what: &str) {
        println!(
            "{what}: well-behaved producer, {} acks: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.0.len(),
            self.percentile(0.5).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.percentile(1.0).as_secs_f64() * 1e3,
        );
    }
}

/// A producer that sends one small frame at a time while `attack` runs and
/// stops when it ends; every frame must be acknowledged.
async fn well_behaved_during<F: Future>(ingest: &TestIngest, attack: F) -> (F::Output, Latencies) {
    let mut producer = ingest.connect("well-behaved").await;
    let done = tokio_util::sync::CancellationToken::new();
    let stop = done.clone();
    let produce = async {
        let mut latencies = Vec::new();
        let mut n = 0u64;
        while !stop.is_cancelled() || latencies.len() < 20 {
            n += 1;
            let started = Instant::now();
            let reply = producer.send_and_reply(&frame(&format!("ok-{n}"))).await;
            latencies.push(started.elapsed());
            assert!(
                reply.is_ok(),
                "the well-behaved producer was refused: {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Latencies(latencies)
    };
    let attack = async {
        let output = attack.await;
        done.cancel();
        output
    };
    tokio::join!(attack, produce)
}

/// Whether the server has closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn slowloris_connections_are_closed_by_the_header_timeout() {
    let ingest = spawn_ingest_with("", |config| config.http.http_header_timeout_secs = 1).await;
    let attackers = 200 * scale();
    let addr = ingest.addr;
    let rss_before = rss_bytes();
    let (survivals, latencies) = well_behaved_during(&ingest, async move {
        let tasks = (0..attackers).map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let opened = Instant::now();
                // One header byte every 100 ms, as long as the server lets it.
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
                    .iter()
                    .cycle()
                    .take(300)
                {
                    if stream.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    if closed_within(&mut stream, Duration::from_millis(100)).await {
                        break;
                    }
                }
                opened.elapsed()
            })
        });
        futures::future::join_all(tasks).await
    })
    .await;
    let survivals: Vec<Duration> = survivals.into_iter().map(Result::unwrap).collect();
    let longest = survivals.iter().max().copied().unwrap_or_default();
    let held = survivals
        .iter()
        .filter(|held| **held >= Duration::from_secs(10))
        .count();
    println!(
        "slowloris: {attackers} connections, each closed after at most {:.1} s; held past 10 s: {held}; RSS {} → {} MiB",
        longest.as_secs_f64(),
        rss_before / MIB,
        rss_bytes() / MIB
    );
    latencies.report("slowloris");
    assert_eq!(held, 0, "slowloris connections were held");
    assert!(
        longest < Duration::from_secs(5),
        "a slow header lasted {longest:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let ingest = spawn_ingest_with("", |config| config.http.http_header_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(ingest.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = vec![0u8; 1024];
    let read = stream.read(&mut response).await.unwrap();
    assert!(String::from_utf8_lossy(&response[..read]).starts_with("HTTP/1.1 200"));
    // Nothing more is sent: the keep-alive connection is closed.
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn the_connection_cap_counts_http_and_websockets_alike() {
    const CAP: usize = 20;
    let ingest = spawn_ingest_with("", |config| {
        config.http.http_max_connections = CAP;
        config.http.http_header_timeout_secs = 30;
    })
    .await;
    // Half the cap in WebSockets, the rest in idle HTTP connections.
    let mut sockets = Vec::new();
    for n in 0..CAP / 2 {
        sockets.push(ingest.connect(&format!("s{n}")).await);
    }
    let mut idle = Vec::new();
    for _ in 0..CAP / 2 {
        idle.push(TcpStream::connect(ingest.addr).await.unwrap());
    }
    // Every connection past the cap is closed at once.
    let mut refused = 0;
    for _ in 0..CAP {
        let mut extra = TcpStream::connect(ingest.addr).await.unwrap();
        if closed_within(&mut extra, Duration::from_secs(2)).await {
            refused += 1;
        }
    }
    println!("connection cap {CAP}: {refused} of {CAP} connections past it closed at once");
    assert_eq!(refused, CAP);
    // The WebSockets still work, and once places free up, HTTP is served.
    let reply = sockets[0].send_and_reply(&frame("x")).await;
    assert!(reply.is_ok());
    drop(idle);
    let url = format!("http://{}/healthz", ingest.addr);
    sessionfold_testkit::eventually_ok("healthz is served again", DEADLINE, || async {
        reqwest::get(&url).await?.error_for_status()
    })
    .await;
}

/// The series on `/metrics` that made-up methods or paths could touch
/// (the recorder is the process's, shared with the tests running beside
/// this one, so only these are counted), and the size of the page; fails if
/// a made-up value ever appears as a label.
async fn metric_series(ingest: &TestIngest) -> (usize, usize) {
    let page = reqwest::get(format!("http://{}/metrics", ingest.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("M000") && !page.contains("/made-up"),
        "a client-chosen value became a label"
    );
    let series = page
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.contains(r#"method="other""#) || line.contains(r#"route="other""#))
        .count();
    (series, page.len())
}

#[tokio::test]
async fn made_up_methods_and_paths_do_not_grow_metrics() {
    let ingest = spawn_ingest_with("", |_| {}).await;
    let client = reqwest::Client::new();
    let request = |method: &str, path: &str| {
        client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("http://{}{path}", ingest.addr),
            )
            .send()
    };
    // One of each kind first, so that their series exist.
    request("M0", "/healthz").await.unwrap();
    request("GET", "/p0").await.unwrap();
    request("M1", "/p1").await.unwrap();
    let (series_before, bytes_before) = metric_series(&ingest).await;
    let requests = 10_000 * scale();
    let rss_before = rss_bytes();
    futures::stream::iter(0..requests)
        .for_each_concurrent(32, |n| {
            let (method, path) = (format!("M{n:08}"), format!("/made-up/{n}"));
            let request = &request;
            async move {
                let response = if n % 2 == 0 {
                    request(&method, "/healthz").await
                } else {
                    request("GET", &path).await
                };
                response.unwrap();
            }
        })
        .await;
    let (series_after, bytes_after) = metric_series(&ingest).await;
    println!(
        "metrics: {requests} made-up methods and paths; series {series_before} → {series_after}, \
         /metrics {bytes_before} → {bytes_after} bytes; RSS {} → {} MiB",
        rss_before / MIB,
        rss_bytes() / MIB
    );
    assert!(series_before > 0);
    assert_eq!(series_after, series_before, "the label sets grew");
    // Counters got longer numbers; nothing else may grow (other tests in
    // this process add their own series, a few KiB at most).
    assert!(
        bytes_after < bytes_before + 16 * 1024,
        "/metrics grew from {bytes_before} to {bytes_after} bytes"
    );
}

/// A raw WebSocket client socket, after a handshake by hand.
async fn raw_websocket(ingest: &TestIngest, session: &str) -> TcpStream {
    let mut stream = TcpStream::connect(ingest.addr).await.unwrap();
    stream
        .write_all(upgrade_request(&format!("session_id={session}")).as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

fn upgrade_request(query: &str) -> String {
    format!(
        "GET /websocket?{query} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A masked client frame header (mask key 0, so the payload goes as is).
fn frame_header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
    let mut header = vec![(u8::from(fin) << 7) | opcode];
    match len {
        0..=125 => header.push(0x80 | len as u8),
        126..=65535 => {
            header.push(0x80 | 126);
            header.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            header.push(0x80 | 127);
            header.extend_from_slice(&len.to_be_bytes());
        }
    }
    header.extend_from_slice(&[0, 0, 0, 0]);
    header
}

/// Sends pings without ever reading; returns how many went out before the
/// server cut the connection off, and whether it did within the deadline.
async fn ping_flood(mut stream: TcpStream, max_pings: usize) -> (usize, bool) {
    let started = Instant::now();
    let outcome = flood(&mut stream, max_pings).await;
    println!(
        "ping flood: {} pings in {:.1} s",
        outcome.0,
        started.elapsed().as_secs_f64()
    );
    outcome
}

async fn flood(stream: &mut TcpStream, max_pings: usize) -> (usize, bool) {
    let ping: Vec<u8> = frame_header(0x9, true, 125)
        .into_iter()
        .chain(std::iter::repeat_n(b'p', 125))
        .collect();
    let started = Instant::now();
    for sent in 0..max_pings {
        let write = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&ping)).await;
        match write {
            Ok(Ok(())) => {}
            // The server stopped reading or closed: the flood is over.
            Ok(Err(_)) | Err(_) => return (sent, started.elapsed() < DEADLINE),
        }
    }
    (max_pings, false)
}

#[tokio::test]
async fn a_ping_flood_from_a_client_that_never_reads_is_cut_off() {
    let ingest = spawn_ingest_with("", |config| config.guard.max_pings_per_sec = 10).await;
    let rss_before = rss_bytes();
    let attacker = raw_websocket(&ingest, "flood").await;
    let ((sent, cut_off), latencies) =
        well_behaved_during(&ingest, ping_flood(attacker, 2_000_000 * scale())).await;
    println!(
        "ping flood (limit 10/s): {sent} pings sent before the cut-off; RSS {} → {} MiB",
        rss_before / MIB,
        rss_bytes() / MIB
    );
    latencies.report("ping flood");
    assert!(cut_off, "the flood was never cut off");
}

#[tokio::test]
async fn without_a_ping_limit_a_flood_still_gains_no_memory() {
    let ingest = spawn_ingest_with("", |config| config.guard.max_pings_per_sec = 0).await;
    let rss_before = rss_bytes();
    let attacker = raw_websocket(&ingest, "flood").await;
    let ((sent, cut_off), latencies) =
        well_behaved_during(&ingest, ping_flood(attacker, 400_000 * scale())).await;
    let grown = rss_bytes().saturating_sub(rss_before);
    println!(
        "ping flood (no ping limit): {sent} pings ({} MiB) sent before the cut-off; RSS grew {} MiB",
        sent as u64 * 131 / MIB,
        grown / MIB
    );
    latencies.report("ping flood, no ping limit");
    // Pongs to a client that does not read replace each other, and the
    // write buffer is capped: the flood costs CPU, never memory.
    let _ = cut_off;
    assert!(grown < 64 * MIB, "RSS grew {} MiB", grown / MIB);
}

#[tokio::test]
async fn half_sent_large_messages_are_bounded_by_the_read_budget() {
    const BUDGET: usize = 16 * 1024 * 1024;
    let ingest = spawn_ingest_with("", |config| {
        config.http.http_max_buffered_bytes = BUDGET;
        config.limits.max_frame_bytes = 1 << 20;
    })
    .await;
    let attackers = 60 * scale();
    // Under the hard cap (4× the frame limit), so the server must buffer it.
    let message = 3u64 << 20;
    let rss_before = rss_bytes();
    let mut streams = Vec::new();
    for n in 0..attackers {
        streams.push(raw_websocket(&ingest, &format!("half-{n}")).await);
    }
    let half = vec![b' '; (message / 2) as usize];
    let ((written, closed), latencies) = well_behaved_during(&ingest, async {
        // Every attacker announces a 4 MiB text frame and sends half of it.
        let sends = streams.into_iter().map(|mut stream| {
            let half = half.clone();
            async move {
                stream
                    .write_all(&frame_header(0x1, true, message))
                    .await
                    .ok()?;
                let mut written = 0usize;
                for chunk in half.chunks(64 * 1024) {
                    match tokio::time::timeout(Duration::from_secs(1), stream.write_all(chunk))
                        .await
                    {
                        Ok(Ok(())) => written += chunk.len(),
                        _ => break,
                    }
                }
                Some((written, stream))
            }
        });
        let sent: Vec<_> = futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect();
        let buffered_rss = rss_bytes();
        let written: usize = sent.iter().map(|(written, _)| written).sum();
        // Those left waiting for budget are closed.
        let closed =
            futures::future::join_all(sent.into_iter().map(|(_, mut stream)| async move {
                closed_within(&mut stream, Duration::from_secs(8)).await
            }))
            .await
            .into_iter()
            .filter(|closed| *closed)
            .count();
        println!(
            "half-sent messages: RSS with {attackers} of them buffered: {} MiB",
            buffered_rss / MIB
        );
        (written, closed)
    })
    .await;
    let grown = rss_bytes().saturating_sub(rss_before);
    println!(
        "half-sent messages: {attackers} attackers wrote {} MiB of 1.5 MiB halves; {closed} closed for want of budget; \
         RSS grew {} MiB (budget {} MiB)",
        written as u64 / MIB,
        grown / MIB,
        BUDGET as u64 / MIB
    );
    latencies.report("half-sent messages");
    assert!(closed > 0, "nobody waited for budget");
    assert!(grown < 128 * MIB, "RSS grew {} MiB", grown / MIB);
}

const SECRET: &str = "security-test-secret-of-32-bytes!";

fn token(sid: &str, prefix: bool, exp: u64) -> String {
    issue_token(
        SECRET.as_bytes(),
        &Claims {
            sid: sid.into(),
            prefix,
            sep: prefix.then(|| "/".to_owned()),
            scope: Scope::Write,
            exp,
        },
    )
}

async fn spawn_secured() -> TestIngest {
    spawn_ingest_with("", |config| {
        config.auth.auth_required = true;
        config.auth.auth_token_secret = Some(SECRET.into());
    })
    .await
}

/// The status of a WebSocket upgrade with `token`.
async fn upgrade_status(ingest: &TestIngest, session: &str, token: &str) -> u16 {
    let url = format!("{}&token={token}", ingest.websocket_url(session));
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected WebSocket error: {other:?}"),
    }
}

#[tokio::test]
async fn an_expiring_token_closes_its_open_websocket() {
    let ingest = spawn_secured().await;
    let url = format!(
        "{}&token={}",
        ingest.websocket_url("expiring"),
        token("expiring", false, now() + 2)
    );
    let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut producer = Producer { socket };
    assert!(producer.send_and_reply(&frame("before")).await.is_ok());
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match producer.socket.next().await {
                Some(Ok(Message::Close(Some(close)))) => return Some(close),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the socket is closed when the token expires");
    let close = closed.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.reason.as_str(), "token expired");
}

#[tokio::test]
async fn a_prefix_token_opens_only_sessions_below_its_separator() {
    let ingest = spawn_secured().await;
    let later = now() + 600;
    assert_eq!(
        upgrade_status(&ingest, "admin", &token("a", true, later)).await,
        403
    );
    assert_eq!(
        upgrade_status(&ingest, "ab-victim", &token("a", true, later)).await,
        403
    );
    assert_eq!(
        upgrade_status(&ingest, "a/1", &token("a/", true, later)).await,
        101
    );
    assert_eq!(
        upgrade_status(&ingest, "admin", &token("a/", true, later)).await,
        403
    );
}

/// The HTTP status of an upgrade request whose raw query is `query`.
async fn raw_upgrade_status(ingest: &TestIngest, query: &str) -> u16 {
    let mut stream = TcpStream::connect(ingest.addr).await.unwrap();
    stream
        .write_all(upgrade_request(query).as_bytes())
        .await
        .unwrap();
    let mut response = vec![0u8; 512];
    let read = stream.read(&mut response).await.unwrap();
    let head = String::from_utf8_lossy(&response[..read]);
    head.split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn session_ids_that_are_not_utf8_or_hold_invisible_characters_are_refused() {
    let ingest = spawn_ingest_with("", |_| {}).await;
    for refused in [
        "session_id=%ff%fe",
        "session_id=%C0%AE",
        "session_id=abc%E2%80%AEgpj",
        "session_id=a%E2%80%8Bb",
        "session_id=%zz",
        "session_id=a&session_id=b",
    ] {
        assert_eq!(raw_upgrade_status(&ingest, refused).await, 400, "{refused}");
    }
    assert_eq!(
        raw_upgrade_status(&ingest, "session_id=%C3%A9t%C3%A9").await,
        101
    );
}

#[tokio::test]
async fn rotating_ipv6_addresses_within_one_64_share_the_per_address_caps() {
    let ingest = spawn_ingest_with("", |config| {
        config.client_ip.trust_proxy_headers = true;
        config.guard.max_connections_per_ip = 2;
    })
    .await;
    let open = |address: String| {
        let url = ingest.websocket_url("v6");
        async move {
            let mut request =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                    .unwrap();
            request
                .headers_mut()
                .insert("x-forwarded-for", address.parse().unwrap());
            tokio_tungstenite::connect_async(request).await
        }
    };
    let mut held = Vec::new();
    for n in 1..=2 {
        held.push(
            open(format!("2001:db8:7:7::{n}"))
                .await
                .expect("within the cap"),
        );
    }
    let mut refused = 0;
    for n in 3..=50 {
        if open(format!("2001:db8:7:7:{n:x}::{n:x}")).await.is_err() {
            refused += 1;
        }
    }
    println!("IPv6 /64 rotation: 48 rotated addresses, {refused} refused");
    assert_eq!(refused, 48, "rotated addresses escaped the per-address cap");
    open("2001:db8:7:8::1".to_owned())
        .await
        .expect("another /64 is another client");
}

#[tokio::test]
async fn throttled_frames_get_rate_limited_which_is_transient() {
    let ingest = spawn_ingest_with("", |config| config.guard.session_frames_per_sec = 1).await;
    let mut producer = ingest.connect("throttled").await;
    assert!(producer.send_and_reply(&frame("1")).await.is_ok());
    let second = producer.send_and_reply(&frame("2")).await;
    assert_eq!(second.error_code(), Some(ErrorCode::RateLimited));
    assert!(ErrorCode::RateLimited.is_transient());
    producer.socket.send(Message::Close(None)).await.unwrap();
}

/// Hardening II: a producer that sends only frames ingest refuses or that
/// store nothing (`x`, `[]`, a binary frame) cannot keep its socket: the
/// idle close counts only frames with events to store.
#[tokio::test]
async fn a_socket_sending_only_refused_or_empty_frames_is_closed_when_idle() {
    const IDLE_SECS: u64 = 2;
    let ingest = spawn_ingest_with("", |config| config.guard.idle_timeout_secs = IDLE_SECS).await;
    let mut producer = ingest.connect("keeps-nothing").await;
    let opened = Instant::now();
    let mut refused = 0;
    let closed_after = loop {
        let junk = if refused % 2 == 0 { "x" } else { "[]" };
        if producer.socket.send(Message::text(junk)).await.is_err() {
            break opened.elapsed();
        }
        match tokio::time::timeout(DEADLINE, producer.socket.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => refused += 1,
            Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => break opened.elapsed(),
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("no reply and no close within {DEADLINE:?}"),
        }
        assert!(
            opened.elapsed() < Duration::from_secs(IDLE_SECS * 5),
            "still open after {refused} refused or empty frames"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "refused and empty frames: before, each reset the idle timer (the socket stayed open forever); now closed after {:.1} s and {refused} of them (IDLE_TIMEOUT_SECS={IDLE_SECS})",
        closed_after.as_secs_f64()
    );
    assert!(closed_after >= Duration::from_secs(IDLE_SECS));
    assert!(closed_after < Duration::from_secs(IDLE_SECS * 3));

    // A frame with an event still keeps a socket open past the timeout.
    let mut producer = ingest.connect("keeps-something").await;
    let opened = Instant::now();
    while opened.elapsed() < Duration::from_secs(IDLE_SECS * 2) {
        let reply = producer.send_and_reply(&frame("alive")).await;
        assert!(reply.is_ok(), "{reply:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The refusal of a WebSocket upgrade: its status, error code and
/// `Retry-After`.
async fn upgrade_refusal(url: String) -> Option<(u16, String, Option<u64>)> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((mut socket, _)) => {
            let _ = socket.close(None).await;
            None
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            let code = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|json| json["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or(body);
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok()?.parse().ok());
            Some((response.status().as_u16(), code, retry_after))
        }
        Err(other) => panic!("unexpected WebSocket error: {other:?}"),
    }
}

/// Tries `attempts` sessions `tenant/<n>` with one prefix token of
/// `tenant/`; how many opened (every refusal must be `too_many_sessions`).
async fn open_tenant_sessions(ingest: &TestIngest, attempts: usize) -> usize {
    let prefix = token("tenant/", true, now() + 600);
    let mut opened = 0;
    for n in 0..attempts {
        let session = format!("tenant/{n}");
        match upgrade_refusal(format!("{}&token={prefix}", ingest.websocket_url(&session))).await {
            None => opened += 1,
            Some((status, code, _)) => {
                assert_eq!((status, code.as_str()), (429, "too_many_sessions"))
            }
        }
    }
    opened
}

/// Hardening II, attack 5: one address, or one prefix token from many
/// sessions, opened sessions without end (2.4 KB of Redis each, up to
/// 70 KB). Now each may open a capped number within the window and gets
/// `429 too_many_sessions` with `Retry-After` past it; sessions it already
/// opened stay open to it.
#[tokio::test]
async fn one_address_or_one_prefix_opens_a_capped_number_of_sessions() {
    const PER_IP: usize = 8;
    const PER_PREFIX: usize = 5;
    let attempts = 40 * scale();
    let ingest = spawn_ingest_with("", |config| {
        config.guard.max_sessions_per_ip = PER_IP;
        config.guard.max_sessions_per_prefix = PER_PREFIX;
        config.auth.auth_token_secret = Some(SECRET.into());
    })
    .await;
    // Anonymous (AUTH_REQUIRED=false): counted per address.
    let mut opened = 0;
    let mut refusals = Vec::new();
    for n in 0..attempts {
        match upgrade_refusal(ingest.websocket_url(&format!("flood-{n}"))).await {
            None => opened += 1,
            Some(refusal) => refusals.push(refusal),
        }
    }
    println!(
        "sessions from one address: before, {attempts} of {attempts} opened; now {opened} (MAX_SESSIONS_PER_IP={PER_IP}), {} refused",
        refusals.len()
    );
    assert_eq!(opened, PER_IP);
    for (status, code, retry_after) in &refusals {
        assert_eq!((*status, code.as_str()), (429, "too_many_sessions"));
        assert!(retry_after.is_some_and(|secs| secs > 0 && secs <= 3600));
    }
    // A session the address already opened still takes its frames.
    let mut producer = ingest.connect("flood-0").await;
    assert!(producer.send_and_reply(&frame("again")).await.is_ok());

    // A prefix token is counted across addresses: its own cap, from
    // 127.0.0.1 as well as from any other.
    let opened = open_tenant_sessions(&ingest, attempts).await;
    println!(
        "sessions of one prefix token: before, {attempts} of {attempts}; now {opened} (MAX_SESSIONS_PER_PREFIX={PER_PREFIX}, the address's cap already reached)"
    );
    // The address's cap was used up above, so nothing new opens at all.
    assert_eq!(opened, 0);
}

#[tokio::test]
async fn a_prefix_token_is_capped_on_its_own_from_an_uncapped_address() {
    const PER_PREFIX: usize = 5;
    let ingest = spawn_ingest_with("", |config| {
        config.guard.max_sessions_per_ip = 0;
        config.guard.max_sessions_per_prefix = PER_PREFIX;
        config.auth.auth_token_secret = Some(SECRET.into());
    })
    .await;
    let opened = open_tenant_sessions(&ingest, 20).await;
    assert_eq!(opened, PER_PREFIX);
    // Another prefix has its own count; a token of one session is not
    // counted per token.
    let other = token("other/", true, now() + 600);
    let url = format!("{}&token={other}", ingest.websocket_url("other/1"));
    assert_eq!(upgrade_refusal(url).await, None);
    let single = token("tenant/99", false, now() + 600);
    let url = format!("{}&token={single}", ingest.websocket_url("tenant/99"));
    assert_eq!(upgrade_refusal(url).await, None);
}

/// Hardening II: a full event stream (`STREAM_MAX_BYTES`) dropped its
/// oldest frames to take new ones, acknowledged frames the processor may
/// not have folded yet among them. Now it refuses new frames, answered
/// `unavailable` (send it again later), and keeps every acknowledged one.
#[tokio::test]
async fn a_full_event_stream_refuses_new_frames_and_keeps_every_acknowledged_one() {
    const MAX_BYTES: i64 = 16 * 1024;
    let ingest = spawn_ingest_with("", |config| config.nats.stream_max_bytes = MAX_BYTES).await;
    let mut producer = ingest.connect("filling").await;
    let mut acknowledged = Vec::new();
    let mut unavailable = 0;
    for n in 0..400 {
        let sent = frame(&format!("filling-{n:04}-{}", "x".repeat(100)));
        let reply = producer.send_and_reply(&sent).await;
        if reply.is_ok() {
            acknowledged.push((reply, sent));
        } else {
            assert_eq!(
                reply.error_code(),
                Some(ErrorCode::Unavailable),
                "{reply:?}"
            );
            unavailable += 1;
        }
    }
    for (reply, sent) in &acknowledged {
        ingest.assert_stored(reply, "filling", sent).await;
    }
    let stored = ingest.stream_messages().await;
    println!(
        "full stream ({MAX_BYTES} B): {} frames acknowledged, all {stored} still stored; {unavailable} refused as unavailable (before: the oldest were dropped to take them)",
        acknowledged.len()
    );
    assert_eq!(stored, acknowledged.len() as u64);
    assert!(unavailable > 0, "the stream never filled");
}

/// Hardening II, decided: an acknowledgement's `seq` is the stream's own
/// sequence (what read-your-writes waits for), so on a shared stream it
/// tells a producer how many frames everyone sent. Tenants who must not
/// learn each other's volume get a stream each (`STREAM_NAME`,
/// `SUBJECT_PREFIX`): then one tenant's sequences do not move with the
/// other's traffic.
#[tokio::test]
async fn a_stream_per_tenant_keeps_one_tenants_sequences_blind_to_anothers_traffic() {
    let tenant_a = crate::helpers::spawn_ingest().await;
    // Tenant B on the same nats-server, with its own stream and subjects.
    let mut config_b = crate::helpers::test_config(&tenant_a.nats);
    config_b.listen = "127.0.0.1:0".parse().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr_b = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(sessionfold_ingest::serve(
        config_b.clone(),
        listener,
        shutdown.clone(),
    ));
    let url_b = format!("ws://{addr_b}/websocket?session_id=b");
    let mut producer_b = sessionfold_testkit::eventually_ok("tenant B's ingest", DEADLINE, || {
        let url = url_b.clone();
        async move {
            Ok::<_, anyhow::Error>(Producer {
                socket: tokio_tungstenite::connect_async(url).await?.0,
            })
        }
    })
    .await;

    let mut producer_a = tenant_a.connect("a").await;
    let mut sequences_a = Vec::new();
    let mut shared_sequences = Vec::new();
    for round in 0..5 {
        let reply = producer_a
            .send_and_reply(&frame(&format!("a-{round}")))
            .await;
        sequences_a.push(reply.seq().unwrap());
        // Tenant B sends 20 frames between two of A's.
        for n in 0..20 {
            let reply = producer_b
                .send_and_reply(&frame(&format!("b-{round}-{n}")))
                .await;
            assert!(reply.is_ok(), "{reply:?}");
            shared_sequences.push(reply.seq().unwrap());
        }
    }
    println!(
        "tenant A's sequences on its own stream: {sequences_a:?}, while tenant B sent 100 frames (B's last seq {})",
        shared_sequences.last().unwrap()
    );
    assert_eq!(sequences_a, vec![1, 2, 3, 4, 5]);
    shutdown.cancel();
    let _ = task.await;
}
