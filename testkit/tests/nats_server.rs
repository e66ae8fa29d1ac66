//! Starts real nats-server processes (JetStream) and checks the lifecycle:
//! raw protocol, JetStream data surviving stop/kill + restart on the same
//! port, extra config, cleanup on drop.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use async_nats::jetstream;
use sessionfold_testkit::{NatsOptions, NatsServer, eventually, init_test_tracing, unique_name};

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn raw_protocol_info_ping_pong() {
    init_test_tracing();
    let nats = NatsServer::start().expect("start nats");
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
    let mut s = TcpStream::connect(("127.0.0.1", nats.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut info = String::new();
    r.read_line(&mut info).unwrap();
    assert!(info.starts_with("INFO "), "{info}");
    assert!(info.contains("\"jetstream\":true"), "{info}");
    s.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .unwrap();
    let mut pong = String::new();
    r.read_line(&mut pong).unwrap();
    assert_eq!(pong, "PONG\r\n");
}

async fn stream_messages(url: &str, stream: &str) -> Option<u64> {
    let client = async_nats::connect(url).await.ok()?;
    let js = jetstream::new(client);
    let mut s = js.get_stream(stream).await.ok()?;
    Some(s.info().await.ok()?.state.messages)
}

#[tokio::test]
async fn jetstream_survives_stop_and_kill_restart_on_same_port() {
    init_test_tracing();
    let mut nats = NatsServer::start().expect("start nats");
    let (port, url) = (nats.port(), nats.url());
    let stream = unique_name("EVENTS");
    let subject = format!("{stream}.in");
    {
        let client = async_nats::connect(&url).await.unwrap();
        let js = jetstream::new(client);
        js.create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
        for i in 0..3 {
            js.publish(subject.clone(), format!("m{i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    assert_eq!(stream_messages(&url, &stream).await, Some(3));

    nats.stop();
    assert!(!nats.is_running());
    assert_eq!(stream_messages(&url, &stream).await, None);
    nats.restart().expect("restart after stop");
    assert_eq!(nats.port(), port);
    assert!(nats.is_running());
    let n = eventually("stream after restart", Duration::from_secs(5), || {
        stream_messages(&url, &stream)
    })
    .await;
    assert_eq!(n, 3);

    // A client connected across a SIGKILL + restart reconnects and publishes.
    let client = async_nats::connect(&url).await.unwrap();
    let mut js = jetstream::new(client.clone());
    // A publish racing the reconnect can be lost; retry fast instead of
    // waiting for the default 5 s ack timeout.
    js.set_timeout(Duration::from_millis(500));
    nats.kill();
    assert!(!nats.is_running());
    nats.restart().expect("restart after kill");
    eventually(
        "publish after kill+restart",
        Duration::from_secs(10),
        || {
            let js = js.clone();
            let subject = subject.clone();
            async move {
                let ack = js.publish(subject, "m3".into()).await.ok()?;
                ack.await.ok()
            }
        },
    )
    .await;
    let n = eventually("4 messages", Duration::from_secs(5), || async {
        stream_messages(&url, &stream).await.filter(|n| *n == 4)
    })
    .await;
    assert_eq!(n, 4);
}

#[tokio::test]
async fn start_with_config_auth() {
    init_test_tracing();
    let nats = NatsServer::start_with_config(
        r#"authorization { users: [ { user: "svc", password: "pw" } ] }"#,
    )
    .expect("start nats with auth");
    assert!(async_nats::connect(nats.url()).await.is_err());
    let client = async_nats::ConnectOptions::with_user_and_password("svc".into(), "pw".into())
        .connect(nats.url())
        .await
        .expect("connect with credentials");
    client.flush().await.unwrap();
}

#[test]
fn bad_config_reports_log_tail() {
    let err = match NatsServer::start_with_config("this is { not valid") {
        Ok(_) => panic!("should fail"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("exited during startup"), "{err}");
}

#[test]
fn drop_kills_the_process() {
    let nats = NatsServer::start().expect("start");
    let pid = nats.pid().expect("running");
    let dir = nats.store_dir().to_path_buf();
    assert!(dir.exists());
    drop(nats);
    assert!(!pid_alive(pid), "nats pid {pid} still alive after drop");
    assert!(!dir.exists(), "temp dir should be removed");
}

/// `/varz` of the server's monitoring port, as JSON.
async fn varz(nats: &NatsServer) -> serde_json::Value {
    reqwest::get(format!("{}/varz", nats.monitor_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn jetstream_fsyncs_every_write_unless_told_otherwise() {
    init_test_tracing();
    let nats = NatsServer::start().expect("start nats");
    let config = &varz(&nats).await["jetstream"]["config"];
    assert_eq!(config["sync_always"], true, "{config}");

    let relaxed = NatsServer::start_with(NatsOptions {
        sync_interval: Some("2m".into()),
        ..NatsOptions::default()
    })
    .expect("start nats with the default sync_interval");
    let config = &varz(&relaxed).await["jetstream"]["config"];
    assert_ne!(config["sync_always"], true, "{config}");
    assert_eq!(config["sync_interval"], 120_000_000_000u64, "{config}");
}
