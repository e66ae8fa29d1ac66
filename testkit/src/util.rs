//! Small helpers: ports, names, polling, test tracing.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::fmt::Debug;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

/// Poll interval of [`eventually`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// 64 random bits (std's randomly keyed SipHash over a counter, pid and time).
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

/// `"<prefix>_<16 random hex digits>"`, usable as a NATS stream/consumer name
/// or a Redis key prefix.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{:016x}", random_u64())
}

/// The kernel's ephemeral port range (`ip_local_port_range`).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A currently free TCP port on 127.0.0.1.
///
/// Found by binding `127.0.0.1:<port>` and dropping the listener. Ports are
/// picked at random *below* the kernel's ephemeral range (when there is room),
/// so that outgoing connections — notably a client reconnecting in a loop to a
/// stopped server, which can TCP-self-connect — never occupy a server's port
/// while it is being restarted. Falls back to binding port 0. A port is never
/// handed out twice by one process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);

    let (eph_lo, _) = ephemeral_range();
    const LOW: u16 = 10_000;
    if eph_lo > LOW + 1_000 {
        let span = u64::from(eph_lo - LOW);
        for _ in 0..200 {
            let port = LOW + (random_u64() % span) as u16;
            if handed_out.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.insert(port);
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding 127.0.0.1:0");
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Polls `check` every ~20 ms until it returns `Some(value)`; panics with
/// `what` once `timeout` has passed. `check` runs at least once, and once more
/// after the deadline.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let past_deadline = tokio::time::Instant::now() >= deadline;
        if let Some(v) = check().await {
            return v;
        }
        if past_deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Like [`eventually`], but `check` returns a `Result`; on timeout the panic
/// message includes the last error observed (the "last observed state").
pub async fn eventually_ok<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let past_deadline = tokio::time::Instant::now() >= deadline;
        match check().await {
            Ok(v) => return v,
            Err(e) if past_deadline => {
                panic!("timed out after {timeout:?} waiting for: {what}; last observed: {e:?}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Installs a global tracing subscriber writing to the test output, only when
/// `TEST_LOG` is set (filter from `RUST_LOG`, default `info`). Idempotent, and
/// harmless if another subscriber is already installed.
pub fn init_test_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_none() {
            return;
        }
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_have_prefix() {
        let a = unique_name("s");
        let b = unique_name("s");
        assert_ne!(a, b);
        assert!(a.starts_with("s_"));
        assert_eq!(a.len(), 2 + 16);
        assert!(a[2..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
        for p in ports {
            TcpListener::bind(("127.0.0.1", p)).expect("port should be free");
        }
    }
}
