//! Starts real redis-server processes (RedisJSON loaded) and checks the
//! lifecycle: JSON round trip, AOF survival across stop/kill + restart on the
//! same port, extra args, early-exit errors, cleanup on drop.

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
