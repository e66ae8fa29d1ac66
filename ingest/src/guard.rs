//! What stands between the internet and the stream: connection counts,
//! Origin checks and rate limits per client IP and per session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sessionfold_common::rate_limit::{IpKey, KeyedLimit};

use crate::config::GuardSettings;

/// Connection counts, total and per client address (IPv6: per /64).
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpKey, usize>)>,
}

/// Which connection limit a new connection would cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossed {
    Total,
    PerIp,
}

/// One counted connection; dropping it frees its place.
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpKey,
}

impl ConnectionLimits {
    /// 0 means no limit.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: if max_total == 0 {
                usize::MAX
            } else {
                max_total
            },
            max_per_ip: if max_per_ip == 0 {
                usize::MAX
            } else {
                max_per_ip
            },
            open: Mutex::new((0, HashMap::new())),
        })
    }

    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Crossed> {
        let ip = IpKey::of(ip);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.0 >= self.max_total {
            return Err(Crossed::Total);
        }
        let per_ip = open.1.entry(ip).or_insert(0);
        if *per_ip >= self.max_per_ip {
            return Err(Crossed::PerIp);
        }
        *per_ip += 1;
        open.0 += 1;
        Ok(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.0 -= 1;
        if let Some(count) = open.1.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// Frame rate limits per client IP and per session.
pub struct FrameLimits {
    per_ip: KeyedLimit<IpAddr>,
    per_session: KeyedLimit<String>,
}

impl FrameLimits {
    /// Keyed limiters forget idle keys by themselves (see
    /// `sessionfold_common::rate_limit`).
    pub fn new(settings: &GuardSettings, max_frame_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            per_ip: KeyedLimit::new(
                settings.ip_frames_per_sec,
                settings.ip_bytes_per_sec,
                max_frame_bytes,
            ),
            per_session: KeyedLimit::new(
                settings.session_frames_per_sec,
                settings.session_bytes_per_sec,
                max_frame_bytes,
            ),
        })
    }

    /// Takes a frame of `bytes` from both budgets; `Err` is how long to wait.
    pub fn check(&self, ip: IpAddr, session: &str, bytes: usize) -> Result<(), Duration> {
        self.per_ip.check(&ip, bytes)?;
        self.per_session.check(&session.to_owned(), bytes)
    }
}

/// Whether a browser's `Origin` may open a connection. Clients that send no
/// Origin (not browsers) are not restricted by it.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        None => true,
        Some(_) if allowed.is_empty() => true,
        Some(origin) => allowed
            .iter()
            .any(|candidate| candidate == "*" || candidate.eq_ignore_ascii_case(origin)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_count_and_free_places() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.try_open(a).unwrap();
        let _second = limits.try_open(a).unwrap();
        assert_eq!(limits.try_open(a).err(), Some(Crossed::PerIp));
        let _third = limits.try_open(b).unwrap();
        assert_eq!(limits.try_open(b).err(), Some(Crossed::Total));
        drop(first);
        assert!(limits.try_open(a).is_ok());
    }

    #[test]
    fn ipv6_connections_count_per_64() {
        let limits = ConnectionLimits::new(0, 1);
        let _held = limits.try_open("2001:db8::1".parse().unwrap()).unwrap();
        assert_eq!(
            limits.try_open("2001:db8::2".parse().unwrap()).err(),
            Some(Crossed::PerIp)
        );
        assert!(limits.try_open("2001:db8:0:1::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn origins_are_checked_only_when_listed_and_sent() {
        let allowed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(&allowed, None));
        assert!(origin_allowed(&allowed, Some("https://app.example")));
        assert!(!origin_allowed(&allowed, Some("https://evil.example")));
        assert!(origin_allowed(&[], Some("https://evil.example")));
    }
}
