//! Rate limits keyed by client IP or session, on governor's GCRA limiters,
//! and how a client's IP is found.
//!
//! Client addresses are keyed by [`IpKey`]: an IPv4 address as it is, an
//! IPv6 address by its /64 (one subscriber's network), so that rotating
//! addresses within one /64 does not escape a limit. Limiters forget keys
//! whose budget is full again by themselves, at most every
//! [`SWEEP_INTERVAL`], so memory follows the active clients only.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Where the client address comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientIpSettings {
    /// Take the client IP from the last `X-Forwarded-For` entry (set this only
    /// behind a reverse proxy that writes it).
    #[arg(long, env = "TRUST_PROXY_HEADERS", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_proxy_headers: bool,
}

crate::defaults_from_flags!(ClientIpSettings);

impl ClientIpSettings {
    /// The client IP of a request.
    pub fn client_ip(&self, peer: SocketAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        if self.trust_proxy_headers {
            // The last entry is the one our own proxy appended.
            let forwarded = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .next_back()
                .and_then(|entry| entry.trim().parse::<IpAddr>().ok());
            if let Some(ip) = forwarded {
                return ip;
            }
        }
        peer.ip()
    }
}

/// A client address as limits count it: IPv4 as is, IPv6 by its /64 (an
/// IPv4-mapped IPv6 address counts as its IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(IpAddr);

impl IpKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let network = u128::from(v6) & !u128::from(u64::MAX);
                    Self(IpAddr::V6(Ipv6Addr::from(network)))
                }
            },
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.0
    }
}

/// How a key is counted: client addresses by [`IpKey`], everything else as
/// it is.
pub trait LimitKey: Hash + Eq + Clone {
    fn counted(&self) -> Self;
}

impl LimitKey for IpAddr {
    fn counted(&self) -> Self {
        IpKey::of(*self).addr()
    }
}

impl LimitKey for IpKey {
    fn counted(&self) -> Self {
        *self
    }
}

impl LimitKey for String {
    fn counted(&self) -> Self {
        self.clone()
    }
}

impl LimitKey for &str {
    fn counted(&self) -> Self {
        self
    }
}

/// Least time between two sweeps of a limiter's idle keys.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Count and volume limits for one kind of key: `events` per second (frames
/// or requests) and bytes per second; 0 turns a limit off.
pub struct KeyedLimit<K: LimitKey> {
    count: Option<DefaultKeyedRateLimiter<K>>,
    bytes: Option<DefaultKeyedRateLimiter<K>>,
    last_sweep: Mutex<Instant>,
}

impl<K: LimitKey> KeyedLimit<K> {
    /// `per_second` units per second with a burst of one second's worth;
    /// `bytes_per_second` likewise, its burst at least `largest_unit` so that
    /// one largest allowed frame always fits.
    pub fn new(per_second: u32, bytes_per_second: u32, largest_unit: usize) -> Self {
        let limiter = |rate: u32, burst: u32| {
            NonZeroU32::new(rate).map(|rate| {
                let burst = NonZeroU32::new(burst.max(rate.get())).expect("burst ≥ rate > 0");
                RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
            })
        };
        let largest = u32::try_from(largest_unit).unwrap_or(u32::MAX);
        Self {
            count: limiter(per_second, per_second),
            bytes: limiter(bytes_per_second, largest),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Takes one unit of `bytes` for `key`; `Err` carries how long to wait.
    pub fn check(&self, key: &K, bytes: usize) -> Result<(), Duration> {
        self.sweep_now_and_then();
        let key = &key.counted();
        // Only a refusal needs the time; a new clock costs a calibration
        // look-up, too much for every frame and request.
        let now = || DefaultClock::default().now();
        if let Some(count) = &self.count {
            count
                .check_key(key)
                .map_err(|not_until| not_until.wait_time_from(now()))?;
        }
        if let (Some(volume), Some(bytes)) = (&self.bytes, NonZeroU32::new(bytes as u32)) {
            match volume.check_key_n(key, bytes) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => return Err(not_until.wait_time_from(now())),
                // Larger than the burst: never fits; ask for a full second.
                Err(_) => return Err(Duration::from_secs(1)),
            }
        }
        Ok(())
    }

    /// Forgets keys whose limits are back at full capacity, so memory
    /// follows active clients only.
    pub fn forget_idle(&self) {
        for limiter in [&self.count, &self.bytes].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// How many keys the limiter remembers now.
    pub fn remembered_keys(&self) -> usize {
        [&self.count, &self.bytes]
            .into_iter()
            .flatten()
            .map(|limiter| limiter.len())
            .max()
            .unwrap_or(0)
    }

    fn sweep_now_and_then(&self) {
        if self.count.is_none() && self.bytes.is_none() {
            return;
        }
        let due = {
            let Ok(mut last) = self.last_sweep.try_lock() else {
                return;
            };
            if last.elapsed() < SWEEP_INTERVAL {
                false
            } else {
                *last = Instant::now();
                true
            }
        };
        if due {
            self.forget_idle();
        }
    }
}

/// Seconds for a `Retry-After` header: at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_limited_per_key() {
        let limit = KeyedLimit::new(2, 0, 0);
        assert!(limit.check(&"a", 10).is_ok());
        assert!(limit.check(&"a", 10).is_ok());
        assert!(limit.check(&"a", 10).is_err());
        assert!(limit.check(&"b", 10).is_ok(), "keys are independent");
    }

    #[test]
    fn bytes_are_limited_but_one_largest_unit_always_fits() {
        let limit = KeyedLimit::new(0, 100, 1000);
        assert!(limit.check(&"a", 1000).is_ok());
        let wait = limit.check(&"a", 50).unwrap_err();
        assert!(wait > Duration::ZERO);
        assert!(limit.check(&"a", 5000).is_err());
    }

    #[test]
    fn zero_turns_limits_off() {
        let limit = KeyedLimit::new(0, 0, 0);
        for _ in 0..10_000 {
            assert!(limit.check(&"a", 1 << 20).is_ok());
        }
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_a_limit() {
        let limit = KeyedLimit::new(2, 0, 0);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limit.check(&a, 0).is_ok());
        assert!(limit.check(&b, 0).is_ok());
        assert!(limit.check(&a, 0).is_err(), "a rotated address escaped");
        assert!(
            limit.check(&other, 0).is_ok(),
            "another /64 is another client"
        );
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(IpKey::of(mapped), IpKey::of("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn idle_keys_are_forgotten_without_being_asked() {
        // The api's attack: 200 000 distinct client addresses.
        let limit = KeyedLimit::new(1000, 0, 0);
        for n in 0..200_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            assert!(limit.check(&ip, 0).is_ok());
        }
        assert_eq!(limit.remembered_keys(), 200_000);
        // One request per key leaves every budget full again within a
        // millisecond at 1000/s; the next check after the sweep interval
        // forgets them all.
        std::thread::sleep(Duration::from_millis(5));
        *limit.last_sweep.lock().unwrap() -= SWEEP_INTERVAL;
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limit.check(&client, 0).is_ok());
        assert!(limit.remembered_keys() <= 1, "{}", limit.remembered_keys());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn proxy_headers_count_only_when_trusted() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        let untrusted = ClientIpSettings::default();
        assert_eq!(untrusted.client_ip(peer, &headers), peer.ip());
        let trusted = ClientIpSettings {
            trust_proxy_headers: true,
        };
        assert_eq!(
            trusted.client_ip(peer, &headers),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
    }
}
