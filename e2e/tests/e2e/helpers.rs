//! The harness: [`spawn_app`] starts nats-server, redis-server and
//! `sessionfold dev` (the all-in-one mode, one port); [`spawn_split_app`]
//! starts `sessionfold ingest` and `sessionfold api` on their own ports and
//! leaves the processors to the test. Every service is a child process of
//! the `sessionfold` binary, configured through its environment as a
//! deployment configures it; the settings a test passes are checked
//! against the variables the subcommand's `--help` lists, so that a
//! misspelt one fails the test instead of being ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use sessionfold_core::Reply;
use sessionfold_core::{Keys, Subjects};
use sessionfold_testkit::{
    BinaryDefault, NatsServer, RedisServer, RunNames, ServiceLauncher, ServiceProcess, eventually,
    free_port, init_test_tracing,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use sessionfold_harness::reference as expected_document;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// The consumer's ack wait in every test: redeliveries after a crash come
/// quickly.
pub const ACK_WAIT_SECS: u64 = 2;

/// One environment variable of a service: name and value.
pub type Setting<'a> = (&'a str, &'a str);

/// The `sessionfold` binary under test (`SESSIONFOLD_BIN`, else the build of
/// this profile, which `cargo test --workspace` builds for the `sessionfold`
/// package's own tests).
pub fn sessionfold_bin() -> PathBuf {
    sessionfold_testkit::sessionfold_bin(BinaryDefault::SameProfileAsTest)
        .expect("the sessionfold binary")
}

/// Fresh names for one test: its own stream, consumer, key prefix, dead
/// letters and updates subjects.
pub fn unique_names() -> RunNames {
    RunNames::unique("EVENTS", "events", "sf")
}

/// The shipped defaults, which the shipped ACLs name.
pub fn default_names() -> RunNames {
    let nats = sessionfold_common::settings::NatsSettings::default();
    let worker = sessionfold_processor::config::WorkerSettings::default();
    RunNames {
        stream: nats.stream_name,
        subject_prefix: nats.subject_prefix,
        key_prefix: sessionfold_common::settings::RedisSettings::default().key_prefix,
        consumer: worker.consumer_name,
        dead_stream: worker.dead_letter_stream,
        dead_subject_prefix: worker.dead_letter_subject_prefix,
        updates_subject_prefix: worker.updates_subject_prefix,
    }
}

pub struct TestApp {
    // Dropped first: the services are killed before their servers.
    services: Vec<ServiceProcess>,
    launcher: ServiceLauncher,
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub names: RunNames,
    pub ingest_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub http: reqwest::Client,
}

/// The whole system in one `sessionfold dev` process.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// `sessionfold dev` with `settings` on top of the test's names.
pub async fn spawn_app_with(settings: &[Setting<'_>]) -> TestApp {
    init_test_tracing();
    let nats = NatsServer::start().expect("starting nats-server");
    let redis = RedisServer::start().expect("starting redis-server");
    let names = unique_names();
    let launcher = launcher(&nats, &redis, &names);
    let addr = loopback();
    let mut env = vec![("LISTEN", addr.to_string())];
    env.extend(checked("dev", settings));
    let dev = launcher
        .spawn("dev", "dev", addr, &env)
        .expect("starting sessionfold dev");
    let mut app = TestApp {
        services: vec![dev],
        launcher,
        nats,
        redis,
        names,
        ingest_addr: addr,
        api_addr: addr,
        http: reqwest::Client::new(),
    };
    app.wait_until_ready().await;
    app
}

/// `sessionfold ingest` and `sessionfold api` on their own ports; no
/// processor runs until the test starts one with [`TestApp::start_processor`].
pub async fn spawn_split_app() -> TestApp {
    init_test_tracing();
    let nats = NatsServer::start().expect("starting nats-server");
    let redis = RedisServer::start().expect("starting redis-server");
    spawn_split_app_on(nats, redis, unique_names(), &[], &[]).await
}

/// `sessionfold ingest` and `sessionfold api` on the given servers with
/// `names`; `ingest` and `api` are settings of each service alone (its
/// credentials, say).
pub async fn spawn_split_app_on(
    nats: NatsServer,
    redis: RedisServer,
    names: RunNames,
    ingest: &[Setting<'_>],
    api: &[Setting<'_>],
) -> TestApp {
    let launcher = launcher(&nats, &redis, &names);
    let ingest_addr = loopback();
    let api_addr = loopback();
    let mut ingest_env = vec![("INGEST_LISTEN", ingest_addr.to_string())];
    ingest_env.extend(checked("ingest", ingest));
    let mut api_env = vec![("API_LISTEN", api_addr.to_string())];
    api_env.extend(checked("api", api));
    let services = vec![
        launcher
            .spawn("ingest", "ingest", ingest_addr, &ingest_env)
            .expect("starting sessionfold ingest"),
        launcher
            .spawn("api", "api", api_addr, &api_env)
            .expect("starting sessionfold api"),
    ];
    let mut app = TestApp {
        services,
        launcher,
        nats,
        redis,
        names,
        ingest_addr,
        api_addr,
        http: reqwest::Client::new(),
    };
    app.wait_until_ready().await;
    app
}

/// A launcher whose services use these servers and names.
fn launcher(nats: &NatsServer, redis: &RedisServer, names: &RunNames) -> ServiceLauncher {
    let mut env = vec![
        ("NATS_URL", nats.url()),
        ("REDIS_URL", redis.url()),
        ("ACK_WAIT_SECS", ACK_WAIT_SECS.to_string()),
    ];
    env.extend(names.env());
    ServiceLauncher::new(sessionfold_bin(), "e2e", env).expect("a service launcher")
}

/// A loopback address with a port nobody listens on.
fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// `settings` as environment, once every name is known to be one that
/// `sessionfold <subcommand>` reads.
fn checked<'a>(subcommand: &str, settings: &[Setting<'a>]) -> Vec<(&'a str, String)> {
    let known = environment_of(subcommand);
    settings
        .iter()
        .map(|(name, value)| {
            // RUST_LOG is the log filter, read by tracing, not a flag.
            assert!(
                known.contains(*name) || *name == "RUST_LOG",
                "sessionfold {subcommand} reads no {name}; it reads {known:?}"
            );
            (*name, (*value).to_owned())
        })
        .collect()
}

/// The environment variables `sessionfold <subcommand> --help` lists.
fn environment_of(subcommand: &str) -> BTreeSet<String> {
    static KNOWN: Mutex<BTreeMap<String, BTreeSet<String>>> = Mutex::new(BTreeMap::new());
    let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    known
        .entry(subcommand.to_owned())
        .or_insert_with(|| {
            let output = Command::new(sessionfold_bin())
                .args([subcommand, "--help"])
                .output()
                .expect("sessionfold --help");
            assert!(output.status.success(), "sessionfold {subcommand} --help");
            String::from_utf8_lossy(&output.stdout)
                .split("[env: ")
                .skip(1)
                .filter_map(|rest| rest.split(['=', ']']).next())
                .map(str::to_owned)
                .collect()
        })
        .clone()
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
    /// Waits until every service of the app answers `/readyz` with 200.
    async fn wait_until_ready(&mut self) {
        for service in &mut self.services {
            if let Err(err) = service.wait_ready(DEADLINE).await {
                panic!("{err:#}");
            }
        }
    }

    /// The last lines of every service's log.
    pub fn log_tails(&self) -> String {
        self.launcher.log_tails(40)
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
        let mut command = Command::new(sessionfold_bin());
        command
            .arg("processor")
            .env("PROCESSOR_LISTEN", "127.0.0.1:0")
            .env("NATS_URL", self.nats.url())
            .env("REDIS_URL", self.redis.url())
            .envs(self.names.env())
            .env("ACK_WAIT_SECS", ACK_WAIT_SECS.to_string())
            .env("BATCH_SIZE", "16");
        command
    }

    /// Starts `sessionfold processor` with extra environment variables.
    pub fn start_processor_with(&self, env: &[Setting<'_>]) -> ProcessorProcess {
        let log = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let child = self
            .processor_command()
            .envs(checked("processor", env))
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
            panic!(
                "document of {session_id} never became\n{expected:#}\nlast seen: {last:?}\n{}",
                self.log_tails()
            );
        }
    }

    /// Waits until `GET /data` serves `children` children.
    pub async fn wait_for_children(&self, session_id: &str, children: usize) {
        eventually(
            &format!("{session_id} has {children} children"),
            DEADLINE,
            || async move {
                let (status, body) = self.get_data(session_id).await;
                (status == StatusCode::OK
                    && body["children"].as_array().map(Vec::len) == Some(children))
                .then_some(())
            },
        )
        .await;
    }

    /// Everything a service of this app has logged so far.
    pub fn service_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.launcher.log_path(name)).unwrap_or_default()
    }

    /// The `sessionfold` command with this app's NATS settings in its environment.
    pub fn command(&self) -> Command {
        let mut command = Command::new(sessionfold_bin());
        command
            .env("NATS_URL", self.nats.url())
            .env("STREAM_NAME", &self.names.stream)
            .env("SUBJECT_PREFIX", &self.names.subject_prefix)
            .env("DEAD_LETTER_STREAM", &self.names.dead_stream);
        command
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(async_nats::connect(self.nats.url()).await.unwrap())
    }

    /// The subjects this app's services use.
    pub fn subjects(&self) -> Subjects {
        sessionfold_harness::run_subjects(&self.names)
    }

    /// The keys this app's services use.
    pub fn keys(&self) -> Keys {
        sessionfold_harness::run_keys(&self.names)
    }

    /// Where `session_id`'s frames are published.
    pub fn subject(&self, session_id: &str) -> String {
        self.subjects()
            .event(&sessionfold_core::SessionId::parse(session_id).unwrap())
    }

    /// The key of `session_id`'s document.
    pub fn doc_key(&self, session_id: &str) -> String {
        self.keys()
            .session(&sessionfold_core::SessionId::parse(session_id).unwrap())
            .doc
    }

    /// Messages the event stream holds for one session.
    pub async fn stored_frames(&self, session_id: &str) -> u64 {
        let js = self.jetstream().await;
        let stream = js.get_stream(&self.names.stream).await.unwrap();
        let info = stream
            .info_with_subjects(self.subject(session_id))
            .await
            .unwrap();
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
        let js = self.jetstream().await;
        let stream_name = self.names.stream.clone();
        let consumer_name = self.names.consumer.clone();
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
