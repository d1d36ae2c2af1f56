//! Slowing down repeated authentication failures from one address.
//!
//! The tracker reads no clock: every call takes `now`, so tests drive it with made-up instants.
//!
//! The delay an address has earned is waited out *before* its next password check starts
//! ([`FailureTracker::wait_before`]), not after the refusal: with the checks of one address run
//! one at a time, parallel connections then guess no faster than one client that tries again
//! after each refusal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::binding::normalize;

/// The tuning of a [`FailureTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures within `window` that cost nothing.
    pub free_failures: u32,
    /// A failure older than this (since the last one) starts the count again.
    pub window: Duration,
    /// The delay after the first failure past the free ones; it doubles with each next one.
    pub base_delay: Duration,
    /// The largest delay.
    pub max_delay: Duration,
    /// The most addresses tracked; the least recently failing one is forgotten first.
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    /// 3 free failures per minute, then 0.5 s doubling up to 5 s, 10,000 addresses.
    fn default() -> Self {
        Self {
            free_failures: 3,
            window: Duration::from_secs(60),
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(5),
            max_entries: 10_000,
        }
    }
}

/// Counts failures per address (IPv6 per /64, so one host cannot dodge it by changing its
/// address: see [`address_key`]) and says how long that address must wait before its next
/// password check. Put it behind a `std::sync::Mutex`: every call is short.
#[derive(Debug, Clone)]
pub struct FailureTracker {
    config: ThrottleConfig,
    entries: HashMap<IpAddr, Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    count: u32,
    last: Instant,
}

impl Default for FailureTracker {
    fn default() -> Self {
        Self::new(ThrottleConfig::default())
    }
}

impl FailureTracker {
    /// An empty tracker.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            entries: HashMap::new(),
        }
    }

    /// Counts a failure from `ip` at `now` and returns the delay it earned: the next check from
    /// this address waits that long after `now` (zero for the first free failures).
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) -> Duration {
        let key = address_key(ip);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.config.max_entries {
            self.evict(now);
        }
        let window = self.config.window;
        let e = self.entries.entry(key).or_insert(Entry {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(e.last) > window {
            e.count = 0;
        }
        e.count = e.count.saturating_add(1);
        e.last = now;
        let count = e.count;
        self.delay_for(count)
    }

    /// Forgets `ip` after a successful authentication.
    pub fn record_success(&mut self, ip: IpAddr) {
        self.entries.remove(&address_key(ip));
    }

    /// How long, from `now`, `ip` must still wait before its next password check starts: the
    /// delay its last failure earned, less the time since (zero for an address with no recent
    /// failures past the free ones).
    pub fn wait_before(&self, ip: IpAddr, now: Instant) -> Duration {
        match self.entries.get(&address_key(ip)) {
            Some(e) if now.saturating_duration_since(e.last) <= self.config.window => {
                let ready = e.last.checked_add(self.delay_for(e.count));
                ready.map_or(self.config.max_delay, |r| r.saturating_duration_since(now))
            }
            _ => Duration::ZERO,
        }
    }

    /// The delay the next failure from `ip` would get, without counting anything.
    pub fn peek(&self, ip: IpAddr, now: Instant) -> Duration {
        match self.entries.get(&address_key(ip)) {
            Some(e) if now.saturating_duration_since(e.last) <= self.config.window => {
                self.delay_for(e.count.saturating_add(1))
            }
            _ => Duration::ZERO,
        }
    }

    /// The number of addresses tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Is nothing tracked?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn delay_for(&self, count: u32) -> Duration {
        let Some(over) = count.checked_sub(self.config.free_failures + 1) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(over.min(31)).unwrap_or(u32::MAX);
        self.config
            .base_delay
            .checked_mul(factor)
            .unwrap_or(self.config.max_delay)
            .min(self.config.max_delay)
    }

    /// Drops the expired entries, or if none expired the least recently failing one.
    fn evict(&mut self, now: Instant) {
        let window = self.config.window;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last) <= window);
        if self.entries.len() >= self.config.max_entries {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&oldest);
            }
        }
    }
}

/// The key an address is counted and throttled under: an IPv4 address (IPv4-mapped IPv6 as
/// IPv4) as it is, an IPv6 address as its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match normalize(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn delays_grow_then_cap_then_reset() {
        let mut t = FailureTracker::default();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let got: Vec<u64> = (0..9)
            .map(|i| t.record_failure(a, t0 + Duration::from_secs(i)).as_millis() as u64)
            .collect();
        assert_eq!(got, [0, 0, 0, 500, 1000, 2000, 4000, 5000, 5000]);
        // Another address is not affected.
        assert_eq!(t.record_failure(ip("192.0.2.2"), t0), Duration::ZERO);
        assert_eq!(
            t.peek(a, t0 + Duration::from_secs(9)),
            Duration::from_secs(5)
        );
        // A quiet minute starts again.
        let later = t0 + Duration::from_secs(8 + 61);
        assert_eq!(t.peek(a, later), Duration::ZERO);
        assert_eq!(t.record_failure(a, later), Duration::ZERO);
        // Success forgets.
        for _ in 0..5 {
            t.record_failure(a, later);
        }
        t.record_success(a);
        assert_eq!(t.record_failure(a, later), Duration::ZERO);
    }

    #[test]
    fn wait_before_counts_from_the_last_failure() {
        let mut t = FailureTracker::default();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let ms = |d: Duration| d.as_millis() as u64;
        assert_eq!(t.wait_before(a, t0), Duration::ZERO);
        for _ in 0..3 {
            t.record_failure(a, t0);
            assert_eq!(t.wait_before(a, t0), Duration::ZERO);
        }
        // The 4th failure earns 0.5 s, counted from that failure.
        t.record_failure(a, t0);
        assert_eq!(ms(t.wait_before(a, t0)), 500);
        assert_eq!(ms(t.wait_before(a, t0 + Duration::from_millis(200))), 300);
        assert_eq!(
            t.wait_before(a, t0 + Duration::from_secs(1)),
            Duration::ZERO
        );
        // The 5th, at 1 s, earns 1 s more.
        let t1 = t0 + Duration::from_secs(1);
        t.record_failure(a, t1);
        assert_eq!(ms(t.wait_before(a, t1)), 1000);
        // Other addresses and the same /64 in IPv6.
        assert_eq!(t.wait_before(ip("192.0.2.2"), t1), Duration::ZERO);
        for _ in 0..4 {
            t.record_failure(ip("2001:db8::1"), t0);
        }
        assert_eq!(ms(t.wait_before(ip("2001:db8::2"), t0)), 500);
        assert_eq!(address_key(ip("2001:db8::2")), ip("2001:db8::"));
        assert_eq!(address_key(ip("::ffff:192.0.2.9")), ip("192.0.2.9"));
        // A success forgets.
        t.record_success(a);
        assert_eq!(t.wait_before(a, t1), Duration::ZERO);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_is_v4() {
        let mut t = FailureTracker::default();
        let now = Instant::now();
        for i in 0..4 {
            t.record_failure(ip(&format!("2001:db8::{i}")), now);
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.peek(ip("2001:db8::ffff"), now), Duration::from_secs(1));
        t.record_failure(ip("::ffff:192.0.2.9"), now);
        assert_eq!(t.peek(ip("192.0.2.9"), now), Duration::ZERO);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn bounded() {
        let mut t = FailureTracker::new(ThrottleConfig {
            max_entries: 100,
            ..ThrottleConfig::default()
        });
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let a = IpAddr::from(i.to_be_bytes());
            t.record_failure(a, t0 + Duration::from_millis(u64::from(i)));
            assert!(t.len() <= 100);
        }
        // The most recent addresses are kept.
        assert_eq!(t.len(), 100);
        let recent = IpAddr::from(999u32.to_be_bytes());
        assert!(t.entries.contains_key(&recent));
    }
}
