//! An in-process ingest ([`sessionfold_ingest::serve`]) on its own stream,
//! WebSocket producers, and reading back what JetStream stored.

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use futures::{SinkExt, StreamExt};
use sessionfold_core::Reply;
use sessionfold_ingest::Config;
use sessionfold_testkit::{NatsServer, eventually_ok, init_test_tracing, unique_name};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct TestIngest {
    pub nats: NatsServer,
    pub config: Config,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Settings of a test: its own stream and subjects.
pub fn test_config(nats: &NatsServer) -> Config {
    let mut config = Config::local(nats.url());
    config.nats.stream_name = unique_name("EVENTS");
    config.nats.subject_prefix = unique_name("events");
    config
}

pub async fn spawn_ingest() -> TestIngest {
    spawn_ingest_with("", |_| {}).await
}

/// Ingest on a nats-server started with `nats_config` appended to its
/// configuration, with `configure` applied to ingest's settings.
pub async fn spawn_ingest_with(
    nats_config: &str,
    configure: impl FnOnce(&mut Config),
) -> TestIngest {
    init_test_tracing();
    let nats = NatsServer::start_with_config(nats_config).expect("starting nats-server");
    let mut config = test_config(&nats);
    configure(&mut config);
    spawn_ingest_on(nats, config).await
}

pub async fn spawn_ingest_on(nats: NatsServer, config: Config) -> TestIngest {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sessionfold_ingest::serve(
        config.clone(),
        listener,
        shutdown.clone(),
    ));
    let ingest = TestIngest {
        nats,
        config,
        addr,
        shutdown,
        task,
    };
    let url = format!("http://{addr}/readyz");
    eventually_ok("ingest is ready", DEADLINE, || async {
        let status = reqwest::get(&url).await?.status();
        anyhow::ensure!(status.is_success(), "readyz {status}");
        Ok(())
    })
    .await;
    ingest
}

impl Drop for TestIngest {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

impl TestIngest {
    pub fn websocket_url(&self, session_id: &str) -> String {
        let mut url = reqwest::Url::parse(&format!("ws://{}/websocket", self.addr)).unwrap();
        url.query_pairs_mut().append_pair("session_id", session_id);
        url.to_string()
    }

    pub async fn connect(&self, session_id: &str) -> Producer {
        self.connect_with(session_id, &[]).await
    }

    /// Connects with extra request headers (`X-Request-Id`, say).
    pub async fn connect_with(&self, session_id: &str, headers: &[(&str, &str)]) -> Producer {
        let mut request = self
            .websocket_url(session_id)
            .into_client_request()
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("the WebSocket opens");
        Producer { socket }
    }

    /// A JetStream context on the test's server.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(self.nats.url()).await.unwrap())
    }

    /// The stream's message at `sequence`: its subject and payload.
    pub async fn stored(&self, sequence: u64) -> (String, Vec<u8>) {
        let js = self.jetstream().await;
        let stream = js.get_stream(&self.config.nats.stream_name).await.unwrap();
        let message = stream
            .get_raw_message(sequence)
            .await
            .unwrap_or_else(|err| {
                panic!("the stream holds no message at sequence {sequence}: {err}")
            });
        (message.subject.to_string(), message.payload.to_vec())
    }

    /// How many messages the stream holds.
    pub async fn stream_messages(&self) -> u64 {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(&self.config.nats.stream_name).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// The subject of a session's frames.
    pub fn subject(&self, session_id: &str) -> String {
        let session = sessionfold_core::SessionId::parse(session_id).unwrap();
        sessionfold_core::Subjects::with_events_prefix(self.config.nats.subject_prefix.as_str())
            .event(&session)
    }

    /// Expects the frame acknowledged at `reply`'s sequence to be `frame`,
    /// stored under `session_id`'s subject.
    pub async fn assert_stored(&self, reply: &Reply, session_id: &str, frame: &str) {
        let sequence = reply
            .seq()
            .unwrap_or_else(|| panic!("an acknowledged reply without seq: {reply:?}"));
        let (subject, payload) = self.stored(sequence).await;
        assert_eq!(subject, self.subject(session_id), "sequence {sequence}");
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            frame,
            "sequence {sequence}"
        );
    }
}

pub struct Producer {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Producer {
    pub async fn send(&mut self, frame: &str) {
        self.socket
            .send(Message::text(frame.to_owned()))
            .await
            .unwrap();
    }

    pub async fn reply(&mut self) -> Reply {
        let message = tokio::time::timeout(DEADLINE, async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("a reply in time");
        match message {
            Some(Ok(Message::Text(text))) => serde_json::from_str(text.as_str())
                .unwrap_or_else(|err| panic!("reply {text} does not parse: {err}")),
            other => panic!("expected a reply frame, got {other:?}"),
        }
    }

    /// Sends every frame at once, then reads their replies (in order).
    pub async fn send_all_then_replies(&mut self, frames: Vec<String>) -> Vec<(String, Reply)> {
        for frame in &frames {
            self.send(frame).await;
        }
        let mut replies = Vec::with_capacity(frames.len());
        for frame in frames {
            let reply = self.reply().await;
            replies.push((frame, reply));
        }
        replies
    }

    pub async fn send_and_reply(&mut self, frame: &str) -> Reply {
        self.send(frame).await;
        self.reply().await
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        while let Some(Ok(_)) = self.socket.next().await {}
    }
}

/// A frame of one event named `name`.
pub fn frame(name: &str) -> String {
    format!(r#"[{{"type":"EVENT","timestamp":1,"name":"{name}"}}]"#)
}
