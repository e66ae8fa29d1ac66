//! Log lines, read from the real binaries with `LOG_FORMAT=json`: a
//! request's and a connection's lines carry its `request_id` and
//! `session_id`, the processor's carry the `stream_sequence`, and nothing is
//! logged per event at info level.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use futures::SinkExt;
use reqwest::StatusCode;
use serde_json::{Map, Value};
use sessionfold_testkit::{NatsServer, RedisServer, eventually, free_port, unique_name};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{DEADLINE, expected_document, spawn_split_app};

/// A `sessionfold` subcommand whose stdout (the JSON log) is collected.
struct Logged {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Logged {
    fn start(command: &mut Command) -> Self {
        let mut child = command
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting sessionfold");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|err| panic!("a log line is not JSON ({err}): {line}"));
                sink.lock().unwrap().push(value);
            }
        });
        Self { child, lines }
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a line with `message` was logged, and returns it.
    async fn line(&self, message: &str) -> Value {
        eventually(&format!("a log line {message:?}"), DEADLINE, || {
            let found = self
                .lines()
                .into_iter()
                .find(|line| line["message"] == message);
            async move { found }
        })
        .await
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of a line's spans and of the line itself, innermost last.
fn fields(line: &Value) -> Map<String, Value> {
    let mut fields = Map::new();
    for span in line["spans"].as_array().into_iter().flatten() {
        fields.extend(span.as_object().cloned().unwrap_or_default());
    }
    fields.extend(line["span"].as_object().cloned().unwrap_or_default());
    fields.extend(line.as_object().cloned().unwrap_or_default());
    fields
}

async fn wait_healthy(base: &str) {
    let http = reqwest::Client::new();
    eventually("the service answers", DEADLINE, || {
        let http = http.clone();
        let url = format!("{base}/healthz");
        async move {
            let response = http.get(url).send().await.ok()?;
            (response.status() == StatusCode::OK).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_connections_lines_carry_its_ids_and_nothing_is_logged_per_event() {
    let nats = NatsServer::start().expect("starting nats-server");
    let listen = format!("127.0.0.1:{}", free_port());
    let ingest = Logged::start(
        Command::new(crate::helpers::sessionfold_bin())
            .arg("ingest")
            .env("RUST_LOG", "info")
            .env("INGEST_LISTEN", &listen)
            .env("NATS_URL", nats.url())
            .env("STREAM_NAME", unique_name("EVENTS"))
            .env("SUBJECT_PREFIX", unique_name("events")),
    );
    wait_healthy(&format!("http://{listen}")).await;

    let mut request = format!("ws://{listen}/websocket?session_id=logged-session")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-request-id", "conn-req-7".parse().unwrap());
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "conn-req-7");
    let events: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"type":"EVENT","timestamp":{i},"name":"e{i}"}}"#))
        .collect();
    socket
        .send(Message::text(format!("[{}]", events.join(","))))
        .await
        .unwrap();
    socket.send(Message::text("not json")).await.unwrap();
    socket.close(None).await.unwrap();

    let closed = ingest.line("connection closed").await;
    let connection: Vec<Value> = ingest
        .lines()
        .into_iter()
        .filter(|line| fields(line).get("request_id") == Some(&Value::from("conn-req-7")))
        .collect();
    let messages: Vec<&str> = connection
        .iter()
        .map(|line| line["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        messages,
        ["connection opened", "rejected a frame", "connection closed"],
        "one line per open, rejected frame and close; none for the 50 accepted events"
    );
    for line in &connection {
        assert_eq!(fields(line)["session_id"], "logged-session", "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
    }
    assert_eq!(fields(&closed)["frames"], 2);
}

#[tokio::test]
async fn a_requests_lines_carry_its_request_id_and_session_id() {
    let redis = RedisServer::start().expect("starting redis-server");
    let listen = format!("127.0.0.1:{}", free_port());
    let api = Logged::start(
        Command::new(crate::helpers::sessionfold_bin())
            .arg("api")
            .env("RUST_LOG", "info,sessionfold_common=debug")
            .env("API_LISTEN", &listen)
            .env("REDIS_URL", redis.url())
            .env("KEY_PREFIX", format!("{}:", unique_name("sf"))),
    );
    wait_healthy(&format!("http://{listen}")).await;
    let response = reqwest::Client::new()
        .get(format!("http://{listen}/data?session_id=asked-for"))
        .header("x-request-id", "read-req-9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["x-request-id"], "read-req-9");

    let answered = eventually("the request's line", DEADLINE, || {
        let found = api.lines().into_iter().find(|line| {
            line["message"] == "request answered"
                && fields(line).get("request_id") == Some(&Value::from("read-req-9"))
        });
        async move { found }
    })
    .await;
    let fields = fields(&answered);
    assert_eq!(fields["session_id"], "asked-for", "{answered}");
    assert_eq!(fields["route"], "/data", "{answered}");
    assert_eq!(fields["status"], 404, "{answered}");
}

#[tokio::test]
async fn processor_lines_carry_the_stream_sequence() {
    let app = spawn_split_app().await;
    let processor = Logged::start(
        app.processor_command()
            .env("RUST_LOG", "info,sessionfold_processor=debug"),
    );
    let frame = r#"[{"type":"EVENT","timestamp":1,"name":"sequenced"}]"#;
    let mut producer = app.connect("sequenced").await;
    producer.send_accepted(frame).await;
    app.wait_for_document("sequenced", &expected_document("sequenced", &[frame]))
        .await;
    let applied = processor.line("applied").await;
    let fields = fields(&applied);
    assert_eq!(fields["stream_sequence"], 1, "{applied}");
    assert_eq!(fields["session_id"], "sequenced", "{applied}");
    // Nothing at info level per message.
    assert!(
        processor
            .lines()
            .iter()
            .filter(|line| line["level"] == "INFO")
            .all(|line| line["message"] != "applied")
    );
}
