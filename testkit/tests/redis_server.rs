//! Starts real redis-server processes (RedisJSON loaded) and checks the
//! lifecycle: JSON round trip, AOF survival across stop/kill + restart on the
//! same port, extra args, early-exit errors, cleanup on drop.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use sessionfold_testkit::{RedisServer, eventually_ok, init_test_tracing, unique_name};

/// Sends one command as a RESP array over raw TCP; returns the first reply line
/// (plus the payload line for bulk strings).
fn raw(port: u16, args: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    if line.starts_with('$') && !line.starts_with("$-1") {
        let mut payload = String::new();
        r.read_line(&mut payload).unwrap();
        line.push_str(&payload);
    }
    line
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn raw_resp_ping_and_json() {
    init_test_tracing();
    let redis = RedisServer::start().expect("start redis");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(raw(redis.port(), &["PING"]), "+PONG\r\n");
    let key = unique_name("raw");
    assert_eq!(
        raw(
            redis.port(),
            &["JSON.SET", &key, "$", r#"{"a":1,"b":[true]}"#]
        ),
        "+OK\r\n"
    );
    assert_eq!(
        raw(redis.port(), &["JSON.GET", &key, "$.a"]),
        "$3\r\n[1]\r\n"
    );
    // Configured as requested.
    assert!(raw(redis.port(), &["CONFIG", "GET", "appendfsync"]).starts_with('*'));
}

async fn json_get(url: &str, key: &str) -> redis::RedisResult<Option<String>> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    redis::cmd("JSON.GET").arg(key).query_async(&mut con).await
}

#[tokio::test]
async fn json_survives_stop_and_kill_restart_on_same_port() {
    init_test_tracing();
    let mut redis = RedisServer::start().expect("start redis");
    let port = redis.port();
    let url = redis.url();
    let key = unique_name("session");
    let doc = r#"{"id":"s1","events":[1,2,3]}"#;
    {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let () = redis::cmd("JSON.SET")
            .arg(&key)
            .arg("$")
            .arg(doc)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    assert_eq!(json_get(&url, &key).await.unwrap().as_deref(), Some(doc));

    // Graceful stop + restart.
    redis.stop();
    assert!(!redis.is_running());
    assert!(json_get(&url, &key).await.is_err(), "server should be down");
    redis.restart().expect("restart after stop");
    assert!(redis.is_running());
    assert_eq!(redis.port(), port);
    assert_eq!(json_get(&url, &key).await.unwrap().as_deref(), Some(doc));

    // Write more, then SIGKILL: appendfsync always must keep it.
    let key2 = unique_name("session");
    assert_eq!(
        raw(port, &["JSON.SET", &key2, "$", r#"{"n":42}"#]),
        "+OK\r\n"
    );
    redis.kill();
    assert!(!redis.is_running());
    redis.restart().expect("restart after kill");
    let got = eventually_ok("key2 after kill+restart", Duration::from_secs(5), || {
        json_get(&url, &key2)
    })
    .await;
    assert_eq!(got.as_deref(), Some(r#"{"n":42}"#));
    assert_eq!(json_get(&url, &key).await.unwrap().as_deref(), Some(doc));
}

#[test]
fn start_with_args_requirepass() {
    init_test_tracing();
    let redis = RedisServer::start_with_args(&["--requirepass", "s3cret"]).expect("start");
    assert!(raw(redis.port(), &["PING"]).starts_with("-NOAUTH"));
    let mut s = TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    s.write_all(b"AUTH s3cret\r\nPING\r\n").unwrap();
    let mut r = BufReader::new(s);
    let (mut a, mut b) = (String::new(), String::new());
    r.read_line(&mut a).unwrap();
    r.read_line(&mut b).unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("+OK\r\n", "+PONG\r\n"));
}

#[test]
fn early_exit_reports_log_tail() {
    init_test_tracing();
    let err = match RedisServer::start_with_args(&["--loadmodule", "/nonexistent/module.so"]) {
        Ok(_) => panic!("should fail to start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("exited during startup"), "{err}");
    assert!(err.contains("/nonexistent/module.so"), "{err}");
}

#[test]
fn drop_kills_the_process() {
    let redis = RedisServer::start().expect("start");
    let pid = redis.pid().expect("running");
    let dir = redis.data_dir().to_path_buf();
    assert!(pid_alive(pid));
    drop(redis);
    assert!(!pid_alive(pid), "redis pid {pid} still alive after drop");
    assert!(!dir.exists(), "temp dir should be removed");
}

fn json_set(port: u16, key: &str, doc: &str) {
    assert_eq!(raw(port, &["JSON.SET", key, "$", doc]), "+OK\r\n");
}

#[test]
fn restart_from_snapshot_brings_back_exactly_the_data_of_that_moment() {
    init_test_tracing();
    let mut redis = RedisServer::start().expect("start redis");
    let port = redis.port();
    json_set(port, "before", r#"{"n":1}"#);
    let snapshot = redis.snapshot().expect("snapshot");
    json_set(port, "after", r#"{"n":2}"#);
    json_set(port, "before", r#"{"n":3}"#);

    redis
        .restart_from(&snapshot)
        .expect("restart from snapshot");
    assert_eq!(redis.port(), port, "same port after restart_from");
    assert_eq!(raw(port, &["JSON.GET", "before"]), "$7\r\n{\"n\":1}\r\n");
    assert_eq!(raw(port, &["EXISTS", "after"]), ":0\r\n");

    // The server writes on from the restored data, and the snapshot can be
    // used again.
    json_set(port, "later", r#"{"n":4}"#);
    redis
        .restart_from(&snapshot)
        .expect("second restart from snapshot");
    assert_eq!(raw(port, &["EXISTS", "later"]), ":0\r\n");
    assert_eq!(raw(port, &["EXISTS", "before"]), ":1\r\n");
}

#[test]
fn snapshot_taken_while_writes_run_restores_a_prefix_of_them() {
    init_test_tracing();
    let mut redis = RedisServer::start().expect("start redis");
    let port = redis.port();
    let writer = std::thread::spawn(move || {
        for i in 0..400 {
            assert_eq!(
                raw(port, &["RPUSH", "log", &i.to_string()]),
                format!(":{}\r\n", i + 1)
            );
        }
    });
    // Let some writes land first, so the copy is neither empty nor complete
    // by construction.
    let mut snapshot = None;
    for _ in 0..500 {
        if raw(port, &["LLEN", "log"]) != ":0\r\n" {
            snapshot = Some(redis.snapshot().expect("snapshot"));
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    writer.join().unwrap();
    let snapshot = snapshot.expect("writes began");
    redis
        .restart_from(&snapshot)
        .expect("restart from snapshot");
    let len: usize = raw(port, &["LLEN", "log"])
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    assert!((1..=400).contains(&len), "restored {len} of 400 writes");
    // A prefix: the elements are 0..len in order.
    for i in [0, len / 2, len - 1] {
        let got = raw(port, &["LINDEX", "log", &i.to_string()]);
        assert_eq!(got, format!("${}\r\n{i}\r\n", i.to_string().len()));
    }
}

#[tokio::test]
async fn default_server_answers_waitaof_and_has_the_query_engine() {
    init_test_tracing();
    let redis = RedisServer::start().expect("start redis");
    let port = redis.port();
    json_set(port, "doc:1", r#"{"n":5}"#);
    // WAITAOF 1 0 0: one local fsync, no replicas, no timeout. Redis < 7.2
    // answers "unknown command".
    let reply = raw(port, &["WAITAOF", "1", "0", "0"]);
    assert!(reply.starts_with("*2"), "WAITAOF answered {reply:?}");
    if sessionfold_testkit::search_module().unwrap().is_some() {
        assert_eq!(
            raw(
                port,
                &[
                    "FT.CREATE",
                    "idx",
                    "ON",
                    "JSON",
                    "PREFIX",
                    "1",
                    "doc:",
                    "SCHEMA",
                    "$.n",
                    "AS",
                    "n",
                    "NUMERIC"
                ]
            ),
            "+OK\r\n"
        );
        let found = eventually_ok(
            "FT.SEARCH finds the document",
            Duration::from_secs(5),
            || async {
                let reply = raw(port, &["FT.SEARCH", "idx", "@n:[5 5]", "NOCONTENT"]);
                if reply == "*2\r\n" {
                    Ok(reply)
                } else {
                    Err(format!("FT.SEARCH answered {reply:?}"))
                }
            },
        );
        found.await;
    }
}
