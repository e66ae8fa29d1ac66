//! The api in-process on real servers (redis-server with RedisJSON and
//! nats-server from testkit), documents written straight into Redis, update
//! notes published straight on NATS, and what the tests measure: Redis
//! memory and command counts, this process's RSS, latency percentiles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sessionfold_api::Config;
use sessionfold_core::SessionId;
use sessionfold_testkit::{NatsServer, RedisServer, eventually, init_test_tracing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const UPDATES_PREFIX: &str = sessionfold_core::names::DEFAULT_UPDATES_PREFIX;

/// Tests that measure this process's memory run alone: every test holds a
/// read guard, those that measure a write guard.
static MEASURING: std::sync::LazyLock<Arc<tokio::sync::RwLock<()>>> =
    std::sync::LazyLock::new(Arc::default);

enum Turn {
    Shared(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>),
    Alone(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>),
}

pub struct Api {
    pub addr: SocketAddr,
    pub redis: RedisServer,
    pub nats: NatsServer,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _turn: Turn,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// Starts Redis, NATS and the api with `configure`d settings.
pub async fn start_api(configure: impl FnOnce(&mut Config)) -> Api {
    let turn = Turn::Shared(MEASURING.clone().read_owned().await);
    start_api_in_turn(configure, turn).await
}

/// Like [`start_api`], with no other test of this binary running while the
/// returned api lives, so that this process's memory is the test's own.
pub async fn start_api_alone(configure: impl FnOnce(&mut Config)) -> Api {
    let turn = Turn::Alone(MEASURING.clone().write_owned().await);
    start_api_in_turn(configure, turn).await
}

async fn start_api_in_turn(configure: impl FnOnce(&mut Config), turn: Turn) -> Api {
    init_test_tracing();
    let redis = RedisServer::start().expect("starting redis-server");
    let nats = NatsServer::start().expect("starting nats-server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config::local(redis.url());
    config.listen = addr;
    config.live.nats_url = Some(nats.url());
    config.live.updates_subject_prefix = UPDATES_PREFIX.to_owned();
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sessionfold_api::serve(
        config.clone(),
        listener,
        shutdown.clone(),
    ));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let api = Api {
        addr,
        redis,
        nats,
        http,
        shutdown,
        task,
        _turn: turn,
    };
    let url = format!("http://{addr}/healthz");
    let http = api.http.clone();
    eventually("the api answers /healthz", Duration::from_secs(20), || {
        let http = http.clone();
        let url = url.clone();
        async move {
            http.get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
        }
    })
    .await;
    api
}

impl Api {
    /// Starts the api's shutdown, as SIGTERM does.
    pub fn stop_serving(&self) {
        self.shutdown.cancel();
    }

    /// Waits until `serve` has returned, successfully.
    pub async fn wait_stopped(&mut self, limit: Duration) {
        tokio::time::timeout(limit, &mut self.task)
            .await
            .expect("the api stopped")
            .unwrap()
            .unwrap();
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    pub fn data_url(&self, session: &str) -> String {
        self.url(&format!("/data?session_id={session}"))
    }

    /// A connection of the test's own. Writing a large document with
    /// `appendfsync always` may take longer than the client's default
    /// response timeout, and on a loaded machine connecting longer than its
    /// connection timeout.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(30)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap()
    }

    /// Stores `document` as the session's document, as the processor would.
    pub async fn store(&self, session: &str, document: &str) {
        let key = doc_key(session);
        let mut redis = self.redis().await;
        let _: () = redis::cmd("JSON.SET")
            .arg(&key)
            .arg("$")
            .arg(document)
            .query_async(&mut redis)
            .await
            .unwrap();
    }

    /// Announces a change of `session`, as the processor does after an apply.
    pub async fn announce(&self, session: &str) {
        let client = async_nats::connect(self.nats.url()).await.unwrap();
        let session = SessionId::parse(session).unwrap();
        client
            .publish(
                sessionfold_core::Subjects {
                    updates_prefix: UPDATES_PREFIX.to_owned(),
                    ..sessionfold_core::Subjects::default()
                }
                .update(&session),
                "{}".into(),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();
    }

    /// One field of Redis's `INFO <section>`.
    pub async fn info(&self, section: &str, field: &str) -> String {
        let mut redis = self.redis().await;
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut redis)
            .await
            .unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    pub async fn used_memory(&self) -> u64 {
        self.info("memory", "used_memory").await.parse().unwrap()
    }

    /// How many `JSON.GET` Redis has run since it started.
    pub async fn json_gets(&self) -> u64 {
        let stats = self.info("commandstats", "cmdstat_json.get").await;
        stats
            .split(',')
            .find_map(|part| part.strip_prefix("calls="))
            .map_or(0, |calls| calls.parse().unwrap())
    }
}

pub fn doc_key(session: &str) -> String {
    let session = SessionId::parse(session).unwrap();
    sessionfold_core::Keys::default().session(&session).doc
}

/// A session document with `children` events of about 80 bytes each.
pub fn document(session: &str, children: usize) -> String {
    let mut text = format!(
        r#"{{"session_id":"{session}","type":"SESSION","start":1569972082,"end":null,"children":["#
    );
    for i in 0..children {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            r#"{{"type":"EVENT","timestamp":{},"name":"event_{i:08}","id":"id-{i:08}"}}"#,
            1569972083 + i
        ));
    }
    text.push_str("]}");
    text
}

/// This process's resident memory, in bytes (the api runs in it).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .map(|kb| kb.trim().parse::<u64>().unwrap() * 1024)
        .unwrap()
}

/// Samples `measure` every 20 ms until `stop`, returning the largest value.
pub fn sample_peak<F, Fut>(stop: CancellationToken, mut measure: F) -> tokio::task::JoinHandle<u64>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = u64> + Send,
{
    tokio::spawn(async move {
        let mut peak = 0;
        loop {
            peak = peak.max(measure().await);
            tokio::select! {
                () = stop.cancelled() => return peak.max(measure().await),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    })
}

/// The `p`-th percentile (0–100) of `samples`.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A raw HTTP/1.1 client connection from `source` (any 127.0.0.0/8
/// address), for clients that misbehave: never read, read slowly, come
/// from several addresses.
pub async fn raw_connection(
    source: &str,
    to: SocketAddr,
    receive_buffer: Option<u32>,
) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends a GET for `path_and_query` on `stream`.
pub async fn send_get(stream: &mut TcpStream, path_and_query: &str, headers: &str) {
    let request = format!("GET {path_and_query} HTTP/1.1\r\nHost: api\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
}

/// Reads `stream` until the server closes it or ends a chunked body, or
/// `limit` passes; returns what arrived.
pub async fn read_until_end(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    received.extend_from_slice(&buffer[..n]);
                    // The last chunk of a chunked body.
                    if received.ends_with(b"\r\n0\r\n\r\n") {
                        return;
                    }
                }
            }
        }
    })
    .await;
    received
}

pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|window| *window == needle)
        .count()
}

/// The first line of an HTTP response: its status.
pub fn status_line(response: &[u8]) -> String {
    String::from_utf8_lossy(response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}
