//! How many distinct sessions one client may open: per client address
//! (IPv6: per /64) and per prefix token, within a sliding window
//! (docs/design.md §6).
//!
//! Every session costs Redis a document, its state, a summary and its
//! names (2.4 KB for a one-event session, up to about 70 KB for one frame
//! of many long names), and stays until it closes. Without a cap, one
//! address, or one prefix token handed to browsers, could make Redis hold
//! sessions without end. A token of one session opens only that session,
//! and an API key is the operator's own credential: neither is counted
//! per credential (their connections still count per address).
//!
//! A session counts for a client from the moment it connects to it until
//! `window` after its last connection from that client; connecting to a
//! session already counted is always allowed. The table is bounded: at
//! most `per_client` sessions a client and [`MAX_TRACKED`] in all. When
//! it is full of sessions still in their window, a new session is refused
//! as `unavailable` (try later) rather than forgetting a counted one.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sessionfold_common::auth::PrefixDigest;
use sessionfold_common::rate_limit::IpKey;
use sessionfold_core::SessionId;

/// Most (client, session) pairs remembered at once.
pub const MAX_TRACKED: usize = 250_000;
/// How often expired pairs are swept from the whole table.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Who a session counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    Address(IpKey),
    Prefix(PrefixDigest),
}

/// Why a new session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCapCrossed {
    /// The address opened its cap of sessions in the window; the oldest
    /// leaves it after `retry_after`.
    PerAddress { retry_after: Duration },
    /// The prefix token's prefix did.
    PerPrefix { retry_after: Duration },
    /// The table is full of sessions within their window.
    Full,
}

pub struct SessionCaps {
    window: Duration,
    per_address: usize,
    per_prefix: usize,
    /// Keyed by a random seed, so that no client can aim at collisions.
    hasher: RandomState,
    table: Mutex<Table>,
}

struct Table {
    /// Client → session digest → when the client last connected to it.
    seen: HashMap<Client, HashMap<u64, Instant>>,
    tracked: usize,
    last_sweep: Option<Instant>,
}

impl SessionCaps {
    /// A cap of 0 is no cap.
    pub fn new(window: Duration, per_address: usize, per_prefix: usize) -> Self {
        let cap = |n: usize| if n == 0 { usize::MAX } else { n };
        Self {
            window,
            per_address: cap(per_address),
            per_prefix: cap(per_prefix),
            hasher: RandomState::new(),
            table: Mutex::new(Table {
                seen: HashMap::new(),
                tracked: 0,
                last_sweep: None,
            }),
        }
    }

    fn off(&self) -> bool {
        self.window.is_zero() || (self.per_address == usize::MAX && self.per_prefix == usize::MAX)
    }

    /// Counts a connection from `ip` (with a prefix token's `prefix`) to
    /// `session` at `now`, or says which cap it would cross.
    pub fn admit(
        &self,
        ip: IpAddr,
        prefix: Option<PrefixDigest>,
        session: &SessionId,
        now: Instant,
    ) -> Result<(), SessionCapCrossed> {
        if self.off() {
            return Ok(());
        }
        let digest = self.hasher.hash_one(session.as_str().as_bytes());
        let mut clients = vec![(Client::Address(IpKey::of(ip)), self.per_address)];
        if let Some(prefix) = prefix {
            clients.push((Client::Prefix(prefix), self.per_prefix));
        }
        clients.retain(|(_, cap)| *cap != usize::MAX);
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let table: &mut Table = &mut guard;
        table.sweep_if_due(now, self.window);
        // Check every cap before counting against any.
        let mut new_for = Vec::new();
        for &(client, cap) in &clients {
            let sessions = table.seen.entry(client).or_default();
            let before = sessions.len();
            sessions.retain(|_, last| now.duration_since(*last) < self.window);
            table.tracked -= before - sessions.len();
            if sessions.contains_key(&digest) {
                continue;
            }
            if sessions.len() >= cap {
                let oldest = sessions.values().min().copied().unwrap_or(now);
                let retry_after = self.window.saturating_sub(now.duration_since(oldest));
                return Err(match client {
                    Client::Address(_) => SessionCapCrossed::PerAddress { retry_after },
                    Client::Prefix(_) => SessionCapCrossed::PerPrefix { retry_after },
                });
            }
            new_for.push(client);
        }
        if table.tracked + new_for.len() > MAX_TRACKED {
            table.sweep(now, self.window);
            if table.tracked + new_for.len() > MAX_TRACKED {
                return Err(SessionCapCrossed::Full);
            }
        }
        for (client, _) in clients {
            let sessions = table.seen.entry(client).or_default();
            if sessions.insert(digest, now).is_none() {
                table.tracked += 1;
            }
        }
        Ok(())
    }

    /// Pairs remembered now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).tracked
    }
}

impl Table {
    fn sweep_if_due(&mut self, now: Instant, window: Duration) {
        if self
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= SWEEP_INTERVAL)
        {
            self.sweep(now, window);
        }
    }

    /// Drops every pair past its window, and clients left with none.
    fn sweep(&mut self, now: Instant, window: Duration) {
        self.last_sweep = Some(now);
        let mut tracked = 0;
        self.seen.retain(|_, sessions| {
            sessions.retain(|_, last| now.duration_since(*last) < window);
            tracked += sessions.len();
            !sessions.is_empty()
        });
        self.tracked = tracked;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn session(n: usize) -> SessionId {
        SessionId::parse(&format!("s{n}")).unwrap()
    }

    #[test]
    fn an_address_opens_its_cap_of_sessions_then_is_refused_until_the_oldest_leaves_the_window() {
        let caps = SessionCaps::new(HOUR, 3, 0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for n in 0..3 {
            caps.admit(ip, None, &session(n), t0 + Duration::from_secs(n as u64))
                .unwrap();
        }
        // Reconnecting to a counted session is always allowed.
        caps.admit(ip, None, &session(1), t0 + Duration::from_secs(10))
            .unwrap();
        let refused = caps.admit(ip, None, &session(3), t0 + Duration::from_secs(10));
        assert_eq!(
            refused,
            Err(SessionCapCrossed::PerAddress {
                retry_after: HOUR - Duration::from_secs(10)
            })
        );
        // Another address has its own cap.
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        caps.admit(other, None, &session(3), t0).unwrap();
        // Session 0 leaves the window an hour after its connection.
        caps.admit(ip, None, &session(3), t0 + HOUR).unwrap();
    }

    #[test]
    fn an_ipv6_client_counts_per_64() {
        let caps = SessionCaps::new(HOUR, 2, 0);
        let now = Instant::now();
        caps.admit("2001:db8::1".parse().unwrap(), None, &session(0), now)
            .unwrap();
        caps.admit("2001:db8::ffff".parse().unwrap(), None, &session(1), now)
            .unwrap();
        assert!(matches!(
            caps.admit("2001:db8::abcd".parse().unwrap(), None, &session(2), now),
            Err(SessionCapCrossed::PerAddress { .. })
        ));
    }

    #[test]
    fn a_prefix_token_counts_its_sessions_from_every_address() {
        let caps = SessionCaps::new(HOUR, 0, 2);
        let prefix = Some(PrefixDigest([7; 16]));
        let now = Instant::now();
        caps.admit("192.0.2.1".parse().unwrap(), prefix, &session(0), now)
            .unwrap();
        caps.admit("198.51.100.1".parse().unwrap(), prefix, &session(1), now)
            .unwrap();
        assert!(matches!(
            caps.admit("203.0.113.1".parse().unwrap(), prefix, &session(2), now),
            Err(SessionCapCrossed::PerPrefix { .. })
        ));
        // The same addresses without the prefix token are not capped.
        caps.admit("203.0.113.1".parse().unwrap(), None, &session(2), now)
            .unwrap();
    }

    #[test]
    fn a_refusal_by_one_cap_counts_against_no_other() {
        let caps = SessionCaps::new(HOUR, 1, 5);
        let prefix = Some(PrefixDigest([1; 16]));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let now = Instant::now();
        caps.admit(ip, prefix, &session(0), now).unwrap();
        assert!(caps.admit(ip, prefix, &session(1), now).is_err());
        assert_eq!(
            caps.tracked(),
            2,
            "one pair for the address, one for the prefix"
        );
    }

    #[test]
    fn expired_pairs_are_swept_so_memory_follows_the_window() {
        let caps = SessionCaps::new(Duration::from_secs(60), 1000, 0);
        let t0 = Instant::now();
        for n in 0..500 {
            let ip = IpAddr::from([10, 0, (n / 256) as u8, (n % 256) as u8]);
            caps.admit(ip, None, &session(n), t0).unwrap();
        }
        assert_eq!(caps.tracked(), 500);
        caps.admit(
            "192.0.2.1".parse().unwrap(),
            None,
            &session(0),
            t0 + Duration::from_secs(61),
        )
        .unwrap();
        assert_eq!(caps.tracked(), 1);
    }

    #[test]
    fn no_caps_track_nothing() {
        let caps = SessionCaps::new(HOUR, 0, 0);
        let now = Instant::now();
        for n in 0..100 {
            caps.admit("192.0.2.1".parse().unwrap(), None, &session(n), now)
                .unwrap();
        }
        assert_eq!(caps.tracked(), 0);
    }
}
