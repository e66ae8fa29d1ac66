//! Service processes and the JetStream probe. The "services" are small
//! shell scripts (run as `/bin/sh <script>`, the script taking the place of
//! the subcommand), with a stand-in `/readyz` where one is needed.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use sessionfold_testkit::{
    JetStreamProbe, NatsServer, RunNames, ServiceLauncher, free_port, init_test_tracing,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn launcher() -> ServiceLauncher {
    ServiceLauncher::new(
        PathBuf::from("/bin/sh"),
        "testkit",
        vec![("GREETING", "hello".to_owned())],
    )
    .expect("a launcher")
}

/// A script in the launcher's log directory (removed with it).
fn script(launcher: &ServiceLauncher, name: &str, body: &str) -> String {
    let path = launcher.log_dir().join(format!("{name}.sh"));
    std::fs::write(&path, body).expect("writing the script");
    path.display().to_string()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Answers every request on `addr` with `200 OK`.
async fn serve_ready(addr: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("binding");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
}

#[test]
fn run_names_are_unique_and_make_the_service_environment() {
    let a = RunNames::unique("EVENTS", "events", "sf");
    let b = RunNames::unique("EVENTS", "events", "sf");
    assert_ne!(a.stream, b.stream);
    assert!(a.stream.starts_with("EVENTS_"));
    assert!(a.subject_prefix.starts_with("events_"));
    assert!(a.key_prefix.starts_with("sf_") && a.key_prefix.ends_with(':'));
    assert!(a.consumer.starts_with("processor_"));
    assert_eq!(
        a.stream_env(),
        [
            ("STREAM_NAME", a.stream.clone()),
            ("SUBJECT_PREFIX", a.subject_prefix.clone()),
        ]
    );
    assert_eq!(
        a.processor_env(),
        [
            ("KEY_PREFIX", a.key_prefix.clone()),
            ("CONSUMER_NAME", a.consumer.clone()),
            ("DEAD_LETTER_STREAM", a.dead_stream.clone()),
            ("DEAD_LETTER_SUBJECT_PREFIX", a.dead_subject_prefix.clone()),
        ]
    );
}

#[tokio::test]
async fn a_service_that_exits_is_reported_with_its_log() {
    init_test_tracing();
    let launcher = launcher();
    let script = script(
        &launcher,
        "exits",
        "echo \"started with NO_COLOR=$NO_COLOR GREETING=$GREETING LISTEN=$LISTEN\"\nexit 3\n",
    );
    let addr = loopback(free_port());
    let mut service = launcher
        .spawn("exits", &script, addr, &[("LISTEN", addr.to_string())])
        .expect("spawning");
    assert_eq!(service.name(), "exits");
    assert_eq!(service.addr(), addr);
    assert_eq!(service.log_path(), launcher.log_path("exits"));
    let err = service
        .wait_ready(Duration::from_secs(10))
        .await
        .expect_err("the service exits");
    let message = format!("{err:#}");
    assert!(
        message.starts_with("exits exited before it was ready"),
        "{message}"
    );
    let greeting = format!("started with NO_COLOR=1 GREETING=hello LISTEN={addr}");
    assert!(message.contains(&greeting), "{message}");
    assert!(launcher.log_tails(5).contains(&greeting));
}

#[tokio::test]
async fn a_service_never_ready_times_out_and_is_killed_on_drop() {
    init_test_tracing();
    let launcher = launcher();
    let script = script(&launcher, "silent", "exec sleep 30\n");
    let mut service = launcher
        .spawn("silent", &script, loopback(free_port()), &[])
        .expect("spawning");
    let pid = service.pid();
    let err = service
        .wait_ready(Duration::from_millis(200))
        .await
        .expect_err("nothing answers /readyz");
    assert!(
        format!("{err:#}").starts_with("silent not ready after 200ms (last /readyz: "),
        "{err:#}"
    );
    assert!(pid_alive(pid));
    drop(service);
    assert!(!pid_alive(pid));
}

#[tokio::test]
async fn a_ready_service_is_waited_for_and_can_be_killed() {
    init_test_tracing();
    let launcher = launcher();
    let script = script(&launcher, "ready", "exec sleep 30\n");
    let addr = loopback(free_port());
    serve_ready(addr).await;
    let mut service = launcher
        .spawn("ready", &script, addr, &[])
        .expect("spawning");
    service
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("ready");
    let pid = service.pid();
    service.kill().expect("SIGKILL");
    assert!(!pid_alive(pid));
}

#[test]
fn kept_logs_stay() {
    let launcher = launcher();
    std::fs::write(launcher.log_path("kept"), "a line\n").expect("writing a log");
    let dir = launcher.keep_logs();
    assert_eq!(
        std::fs::read_to_string(dir.join("kept.log")).expect("the kept log"),
        "a line\n"
    );
    std::fs::remove_dir_all(dir).expect("removing the kept logs");
}

#[tokio::test]
async fn the_probe_sees_the_stream_the_consumer_and_no_dead_letters() {
    init_test_tracing();
    let nats = NatsServer::start().expect("start nats");
    let names = RunNames::unique("EVENTS", "events", "sf");
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connecting"));
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: names.stream.clone(),
            subjects: vec![format!("{}.>", names.subject_prefix)],
            ..Default::default()
        })
        .await
        .expect("creating the stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(names.consumer.clone()),
            ..Default::default()
        })
        .await
        .expect("creating the consumer");
    for i in 0..3 {
        js.publish(format!("{}.s{i}", names.subject_prefix), "frame".into())
            .await
            .expect("publishing")
            .await
            .expect("stored");
    }
    let probe = JetStreamProbe::new(js, &names.stream, &names.consumer, &names.dead_stream)
        .polling_every(Duration::from_millis(10));
    assert_eq!(probe.stream_messages().await.expect("stream info"), 3);
    assert_eq!(probe.dead_letters().await.expect("no dead letters"), 0);
    assert_eq!(probe.consumer_state().await.expect("consumer info"), (3, 0));
    let err = probe
        .wait_drained(Duration::from_millis(100))
        .await
        .expect_err("nothing consumes");
    assert_eq!(
        err.to_string(),
        "the consumer was not drained after 100ms; last (pending, ack pending): (3, 0)"
    );

    let mut batch = consumer
        .fetch()
        .max_messages(3)
        .messages()
        .await
        .expect("fetching");
    let mut acked = 0;
    while let Some(message) = batch.next().await {
        message.expect("a message").ack().await.expect("acking");
        acked += 1;
    }
    assert_eq!(acked, 3);
    probe
        .wait_drained(Duration::from_secs(10))
        .await
        .expect("drained");
}
