//! The harness: [`spawn_app`] starts nats-server, redis-server and the
//! all-in-one mode; [`spawn_split_app`] starts ingest and api in-process and
//! leaves the processors to the test, as real child processes.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use sessionfold::dev::DevConfig;
use sessionfold_core::Reply;
use sessionfold_testkit::{NatsServer, RedisServer, eventually, init_test_tracing, unique_name};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct TestApp {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub config: DevConfig,
    pub ingest_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Settings every test gets: its own stream, consumer and key prefix, and a
/// short ack wait so that redeliveries after a crash come quickly.
pub fn test_config(nats: &NatsServer, redis: &RedisServer) -> DevConfig {
    let mut config = DevConfig::local(nats.url(), redis.url());
    config.nats.stream_name = unique_name("EVENTS");
    config.nats.subject_prefix = unique_name("events");
    config.redis.key_prefix = format!("{}:", unique_name("sf"));
    config.worker.consumer_name = unique_name("processor");
    config.worker.dead_letter_stream = unique_name("DEAD");
    config.worker.dead_letter_subject_prefix = unique_name("dead");
    config.worker.ack_wait_secs = 2;
    config.worker.updates_subject_prefix = unique_name("updates");
    config
}

/// The whole system in one process, as `sessionfold dev` runs it.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut DevConfig)) -> TestApp {
    init_test_tracing();
    let nats = NatsServer::start().expect("starting nats-server");
    let redis = RedisServer::start().expect("starting redis-server");
    let mut config = test_config(&nats, &redis);
    configure(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sessionfold::dev::serve(
        config.clone(),
        listener,
        shutdown.clone(),
    ));
    let app = TestApp {
        nats,
        redis,
        config,
        ingest_addr: addr,
        api_addr: addr,
        http: reqwest::Client::new(),
        shutdown,
        tasks: vec![task],
    };
    app.wait_until_ready(addr).await;
    app
}

/// Ingest and api in-process; no processor runs until the test starts one
/// with [`TestApp::start_processor`].
pub async fn spawn_split_app() -> TestApp {
    init_test_tracing();
    let nats = NatsServer::start().expect("starting nats-server");
    let redis = RedisServer::start().expect("starting redis-server");
    let config = test_config(&nats, &redis);
    spawn_split_app_on(nats, redis, config, |_, _| {}).await
}

/// Ingest and api in-process on the given servers; `configure` may change
/// each service's settings (its credentials, say) before it starts.
pub async fn spawn_split_app_on(
    nats: NatsServer,
    redis: RedisServer,
    config: DevConfig,
    configure: impl FnOnce(&mut sessionfold_ingest::Config, &mut sessionfold_api::Config),
) -> TestApp {
    let shutdown = CancellationToken::new();
    let ingest_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest_addr = ingest_listener.local_addr().unwrap();
    let api_addr = api_listener.local_addr().unwrap();
    let mut ingest_config = sessionfold_ingest::Config {
        listen: ingest_addr,
        nats: config.nats.clone(),
        limits: config.limits.clone(),
        connection: config.connection.clone(),
        shutdown: config.shutdown.clone(),
        auth: config.auth.clone(),
        client_ip: config.client_ip.clone(),
        guard: config.guard.clone(),
        http: config.http.clone(),
    };
    let mut api_config = sessionfold_api::Config {
        listen: api_addr,
        redis: config.redis.clone(),
        max_session_id_bytes: config.limits.max_session_id_bytes,
        shutdown: config.shutdown.clone(),
        auth: config.auth.clone(),
        client_ip: config.client_ip.clone(),
        limits: config.api_limits.clone(),
        live: sessionfold_api::live::LiveSettings {
            nats_url: Some(config.nats.nats_url.clone()),
            updates_subject_prefix: config.worker.updates_subject_prefix.clone(),
        },
        http: config.http.clone(),
    };
    configure(&mut ingest_config, &mut api_config);
    let tasks = vec![
        tokio::spawn(sessionfold_ingest::serve(
            ingest_config,
            ingest_listener,
            shutdown.clone(),
        )),
        tokio::spawn(sessionfold_api::serve(
            api_config,
            api_listener,
            shutdown.clone(),
        )),
    ];
    let app = TestApp {
        nats,
        redis,
        config,
        ingest_addr,
        api_addr,
        http: reqwest::Client::new(),
        shutdown,
        tasks,
    };
    app.wait_until_ready(ingest_addr).await;
    app
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A processor running as its own process (`sessionfold processor`).
pub struct ProcessorProcess {
    child: Child,
}

impl ProcessorProcess {
    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM the processor");
        self.child.wait().expect("reap the processor")
    }

    /// Kills it with SIGKILL: no shutdown, no final acks.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the processor");
        self.child.wait().expect("reap the processor");
    }
}

impl Drop for ProcessorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestApp {
    async fn wait_until_ready(&self, addr: SocketAddr) {
        self.wait_for_readiness(
            &format!("http://{addr}/readyz"),
            StatusCode::OK,
            "the service is ready",
        )
        .await;
    }

    /// Polls the `/readyz` at `url` until it answers `status`.
    pub async fn wait_for_readiness(&self, url: &str, status: StatusCode, what: &str) {
        let http = self.http.clone();
        eventually(what, DEADLINE, || {
            let http = http.clone();
            let url = url.to_owned();
            async move {
                let response = http.get(&url).send().await.ok()?;
                (response.status() == status).then_some(())
            }
        })
        .await;
    }

    pub fn start_processor(&self) -> ProcessorProcess {
        self.start_processor_with(&[])
    }

    /// `sessionfold processor` with this app's servers and names.
    pub fn processor_command(&self) -> Command {
        let config = &self.config;
        let mut command = Command::new(env!("CARGO_BIN_EXE_sessionfold"));
        command
            .arg("processor")
            .env("PROCESSOR_LISTEN", "127.0.0.1:0")
            .env("NATS_URL", self.nats.url())
            .env("REDIS_URL", self.redis.url())
            .env("STREAM_NAME", &config.nats.stream_name)
            .env("SUBJECT_PREFIX", &config.nats.subject_prefix)
            .env("KEY_PREFIX", &config.redis.key_prefix)
            .env("CONSUMER_NAME", &config.worker.consumer_name)
            .env("DEAD_LETTER_STREAM", &config.worker.dead_letter_stream)
            .env(
                "DEAD_LETTER_SUBJECT_PREFIX",
                &config.worker.dead_letter_subject_prefix,
            )
            .env("ACK_WAIT_SECS", config.worker.ack_wait_secs.to_string())
            .env("BATCH_SIZE", "16")
            .env(
                "UPDATES_SUBJECT_PREFIX",
                &config.worker.updates_subject_prefix,
            );
        command
    }

    /// Starts `sessionfold processor` with extra environment variables.
    pub fn start_processor_with(&self, env: &[(&str, &str)]) -> ProcessorProcess {
        let log = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let child = self
            .processor_command()
            .envs(env.iter().copied())
            .stdout(log)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting sessionfold processor");
        ProcessorProcess { child }
    }

    pub fn websocket_url(&self, session_id: &str) -> String {
        let mut url = Url::parse(&format!("ws://{}/websocket", self.ingest_addr)).unwrap();
        url.query_pairs_mut().append_pair("session_id", session_id);
        url.to_string()
    }

    pub fn data_url(&self, session_id: Option<&str>) -> Url {
        let mut url = Url::parse(&format!("http://{}/data", self.api_addr)).unwrap();
        if let Some(session_id) = session_id {
            url.query_pairs_mut().append_pair("session_id", session_id);
        }
        url
    }

    pub async fn connect(&self, session_id: &str) -> Producer {
        let (socket, _) = tokio_tungstenite::connect_async(self.websocket_url(session_id))
            .await
            .expect("WebSocket connection");
        Producer { socket }
    }

    /// `GET /data` for a session: status and parsed body.
    pub async fn get_data(&self, session_id: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(self.data_url(Some(session_id)))
            .send()
            .await
            .expect("GET /data");
        let status = response.status();
        (status, response.json().await.expect("a JSON body"))
    }

    /// Waits until `GET /data` answers exactly `expected`.
    pub async fn wait_for_document(&self, session_id: &str, expected: &Value) {
        let mut last = None;
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                let (status, body) = self.get_data(session_id).await;
                if status == StatusCode::OK && &body == expected {
                    return;
                }
                last = Some((status, body));
                tokio::time::sleep(sessionfold_testkit::POLL_INTERVAL).await;
            }
        })
        .await;
        if found.is_err() {
            panic!("document of {session_id} never became\n{expected:#}\nlast seen: {last:?}");
        }
    }

    /// The `sessionfold` command with this app's NATS settings in its environment.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sessionfold"));
        command
            .env("NATS_URL", self.nats.url())
            .env("STREAM_NAME", &self.config.nats.stream_name)
            .env("SUBJECT_PREFIX", &self.config.nats.subject_prefix)
            .env("DEAD_LETTER_STREAM", &self.config.worker.dead_letter_stream);
        command
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(async_nats::connect(self.nats.url()).await.unwrap())
    }

    pub fn subject(&self, session_id: &str) -> String {
        let names = sessionfold_core::session::Names {
            events_subject_prefix: self.config.nats.subject_prefix.clone(),
            key_prefix: self.config.redis.key_prefix.clone(),
        };
        names.subject(&sessionfold_core::SessionId::parse(session_id).unwrap())
    }

    /// Messages the event stream holds for one session.
    pub async fn stored_frames(&self, session_id: &str) -> u64 {
        let client = async_nats::connect(self.nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(&self.config.nats.stream_name).await.unwrap();
        let names = sessionfold_core::session::Names {
            events_subject_prefix: self.config.nats.subject_prefix.clone(),
            key_prefix: self.config.redis.key_prefix.clone(),
        };
        let subject = names.subject(&sessionfold_core::SessionId::parse(session_id).unwrap());
        let info = stream.info_with_subjects(&subject).await.unwrap();
        let mut total = 0;
        let mut subjects = info;
        while let Some(entry) = subjects.next().await {
            let (_, count) = entry.unwrap();
            total += count as u64;
        }
        total
    }

    /// Waits until every stored frame is acked by the processors.
    pub async fn wait_until_consumed(&self) {
        let client = async_nats::connect(self.nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream_name = self.config.nats.stream_name.clone();
        let consumer_name = self.config.worker.consumer_name.clone();
        eventually("every frame is acked", DEADLINE, || {
            let js = js.clone();
            let stream_name = stream_name.clone();
            let consumer_name = consumer_name.clone();
            async move {
                let stream = js.get_stream(&stream_name).await.ok()?;
                let info = stream.consumer_info(&consumer_name).await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            }
        })
        .await;
    }
}

/// A producer's WebSocket connection.
pub struct Producer {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Producer {
    pub async fn send(&mut self, frame: &str) {
        self.socket
            .send(Message::text(frame))
            .await
            .expect("sending a frame");
    }

    /// The next message from the server, within the deadline.
    pub async fn next_message(&mut self) -> Option<Message> {
        tokio::time::timeout(DEADLINE, self.socket.next())
            .await
            .expect("the server answers in time")
            .map(|message| message.expect("a WebSocket message"))
    }

    pub async fn reply(&mut self) -> Reply {
        match self.next_message().await {
            Some(Message::Text(text)) => serde_json::from_str(text.as_str())
                .unwrap_or_else(|err| panic!("reply {text} does not parse: {err}")),
            other => panic!("expected a reply frame, got {other:?}"),
        }
    }

    pub async fn send_and_reply(&mut self, frame: &str) -> Reply {
        self.send(frame).await;
        self.reply().await
    }

    /// Sends a frame and expects it accepted with `accepted` events.
    pub async fn send_accepted(&mut self, frame: &str) {
        let reply = self.send_and_reply(frame).await;
        assert!(reply.is_ok(), "frame {frame} was rejected: {reply:?}");
    }

    /// Sends a frame again and again, as a client does after `unavailable`,
    /// until it is accepted.
    pub async fn send_until_accepted(&mut self, frame: &str) {
        let accepted = tokio::time::timeout(DEADLINE, async {
            loop {
                let reply = self.send_and_reply(frame).await;
                if reply.is_ok() {
                    return;
                }
                assert_eq!(
                    reply.error_code(),
                    Some(sessionfold_core::ErrorCode::Unavailable)
                );
                tokio::time::sleep(sessionfold_testkit::POLL_INTERVAL).await;
            }
        })
        .await;
        assert!(accepted.is_ok(), "frame {frame} was never accepted");
    }

    /// Expects the server to close the connection with `code`.
    pub async fn expect_close(&mut self, code: u16) {
        match self.next_message().await {
            Some(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), code),
            other => panic!("expected a close frame with {code}, got {other:?}"),
        }
    }
}

/// The fold of the given frames computed by the reference implementation,
/// with stream sequences in the order given.
pub fn expected_document(session_id: &str, frames: &[&str]) -> Value {
    let session = sessionfold_core::SessionId::parse(session_id).unwrap();
    let deliveries: Vec<_> = frames
        .iter()
        .enumerate()
        .map(|(i, text)| sessionfold_core::Delivery {
            stream_sequence: i as u64 + 1,
            events: sessionfold_core::Frame::parse(
                text,
                &session,
                &sessionfold_core::Limits::default(),
            )
            .unwrap()
            .events,
        })
        .collect();
    sessionfold_core::fold(session_id, &deliveries)
}
