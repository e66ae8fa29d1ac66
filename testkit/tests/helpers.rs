//! `eventually`, `eventually_ok`, `free_port`, `unique_name`, tracing init.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sessionfold_testkit::{eventually, eventually_ok, free_port, init_test_tracing, unique_name};

#[tokio::test]
async fn eventually_returns_once_check_succeeds() {
    init_test_tracing();
    init_test_tracing(); // idempotent
    let calls = Arc::new(AtomicU32::new(0));
    let v = eventually("third call", Duration::from_secs(5), || {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            (n >= 3).then_some(n)
        }
    })
    .await;
    assert_eq!(v, 3);
}

#[tokio::test]
#[should_panic(expected = "timed out after 100ms waiting for: never")]
async fn eventually_panics_on_timeout() {
    eventually::<(), _, _>("never", Duration::from_millis(100), || async { None }).await;
}

#[tokio::test]
#[should_panic(expected = "last observed: \"state 1\"")]
async fn eventually_ok_reports_last_state() {
    let n = AtomicU32::new(0);
    eventually_ok::<(), _, _, _>("never", Duration::from_millis(100), || {
        let i = n.fetch_add(1, Ordering::SeqCst).min(1);
        async move { Err(format!("state {i}")) }
    })
    .await;
}

#[test]
fn ports_and_names() {
    let a = free_port();
    let b = free_port();
    assert_ne!(a, b);
    std::net::TcpListener::bind(("127.0.0.1", a)).unwrap();
    assert_ne!(unique_name("x"), unique_name("x"));
}
