//! The shipped Redis settings: every place that starts or deploys Redis
//! carries the client output-buffer limit, and with it a client that asks
//! for large replies and never reads them is disconnected instead of
//! growing Redis's memory.

use std::time::Duration;

use sessionfold_testkit::eventually;
use tokio::io::AsyncWriteExt;

use crate::harness::*;

const LIMIT_LINE: &str = "client-output-buffer-limit normal 32mb 16mb 30";

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("{}: {err}", full.display()))
}

#[test]
fn every_shipped_redis_configuration_sets_the_output_buffer_limit() {
    let conf = repo_file("deploy/redis/sessionfold.conf");
    assert!(conf.lines().any(|line| line.trim() == LIMIT_LINE), "{conf}");
    let k8s = repo_file("deploy/k8s/redis-config.yaml");
    assert!(k8s.lines().any(|line| line.trim() == LIMIT_LINE), "{k8s}");
    assert!(repo_file("deploy/k8s/kustomization.yaml").contains("redis-config.yaml"));
    let compose = repo_file("compose.yaml");
    assert!(
        compose.contains("--include /etc/redis/sessionfold.conf")
            && compose.contains("./deploy/redis/sessionfold.conf:/etc/redis/sessionfold.conf:ro"),
        "compose.yaml loads deploy/redis/sessionfold.conf"
    );
    let run_local = repo_file("scripts/run-local.sh");
    assert!(
        run_local.contains(r#"--include "$ROOT/deploy/redis/sessionfold.conf""#),
        "make run loads deploy/redis/sessionfold.conf"
    );
}

#[tokio::test]
async fn a_client_that_never_reads_large_replies_is_disconnected_by_redis() {
    let api = start_api(|_| {}).await;
    let mut redis = api.redis().await;
    let limits: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("client-output-buffer-limit")
        .query_async::<Vec<String>>(&mut redis)
        .await
        .unwrap();
    assert!(
        limits[1].contains("normal 33554432 16777216 30"),
        "testkit's Redis runs with the shipped limit: {limits:?}"
    );

    let big = document("greedy", 40_000);
    api.store("greedy", &big).await;
    let baseline = api.used_memory().await;
    // 40 pipelined reads of a ~3 MB document, never read: ~130 MB of replies.
    let redis_addr = format!("127.0.0.1:{}", api.redis.port()).parse().unwrap();
    let mut greedy = raw_connection("127.0.0.1", redis_addr, Some(4096)).await;
    let greedy_addr = format!("addr={} ", greedy.local_addr().unwrap());
    let key = doc_key("greedy");
    let command = format!("*2\r\n$8\r\nJSON.GET\r\n${}\r\n{key}\r\n", key.len());
    for _ in 0..40 {
        greedy.write_all(command.as_bytes()).await.unwrap();
    }
    greedy.flush().await.unwrap();
    eventually(
        "Redis disconnects the client that does not read",
        Duration::from_secs(20),
        || async {
            let mut redis = api.redis().await;
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut redis)
                .await
                .unwrap();
            (!clients.contains(&greedy_addr)).then_some(())
        },
    )
    .await;
    let after = api.used_memory().await;
    println!(
        "greedy client disconnected; Redis used_memory {:.1} MiB before, {:.1} MiB after",
        mib(baseline),
        mib(after)
    );
    assert!(
        after < baseline + (16 << 20),
        "Redis let go of the buffered replies: {after} vs {baseline}"
    );
}
