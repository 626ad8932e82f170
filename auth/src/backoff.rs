//! Slows down password and token guessing: after `max_failures` failed attempts for one key
//! (a user name or a client address), each further attempt must wait, doubling from 1 s up to
//! 60 s, until a success or 15 quiet minutes reset the key. MQTT logins and the HTTPS
//! endpoint count under the same keys ([`address_key`], [`user_key`]), so a guesser has one
//! budget per address whichever way it tries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Keys remembered at most; the oldest half is dropped beyond it.
const MAX_KEYS: usize = 100_000;

/// The key of a client address: one per IPv4 address, one per IPv6 /64 (what one host or
/// subscriber line holds; per address, a guesser on IPv6 would have 2^64 budgets). An IPv4
/// address mapped into IPv6 counts as the IPv4 address.
pub fn address_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(a) => format!("ip:{a}"),
        IpAddr::V6(a) => {
            let s = a.segments();
            format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The key of a user name.
pub fn user_key(user: &str) -> String {
    format!("user:{user}")
}

pub struct Backoff {
    max_failures: u32,
    keys: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Backoff {
    pub fn new(max_failures: u32) -> Backoff {
        Backoff {
            max_failures,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` if `key` must wait before its next attempt.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let keys = self.keys.lock();
        let Some(&(n, last)) = keys.get(key) else {
            return Ok(());
        };
        if n < self.max_failures || last.elapsed() > FORGET_AFTER {
            return Ok(());
        }
        let wait = Duration::from_secs(1u64 << (n - self.max_failures).min(6)).min(MAX_WAIT);
        let since = last.elapsed();
        if since >= wait {
            Ok(())
        } else {
            Err(wait - since)
        }
    }

    pub fn fail(&self, key: &str) {
        let mut keys = self.keys.lock();
        if keys.len() >= MAX_KEYS {
            let mut by_age: Vec<(String, Instant)> =
                keys.iter().map(|(k, (_, t))| (k.clone(), *t)).collect();
            by_age.sort_by_key(|(_, t)| *t);
            for (k, _) in by_age.into_iter().take(MAX_KEYS / 2) {
                keys.remove(&k);
            }
        }
        let e = keys.entry(key.to_string()).or_insert((0, Instant::now()));
        if e.1.elapsed() > FORGET_AFTER {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = Instant::now();
    }

    pub fn succeed(&self, key: &str) {
        self.keys.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_per_ipv4_address_and_per_ipv6_64() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("192.0.2.7"), "ip:192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "ip:192.0.2.7");
        assert_eq!(key("2001:db8:1:2::1"), "ip:2001:db8:1:2::/64");
        assert_eq!(
            key("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            key("2001:db8:1:2::1")
        );
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[test]
    fn waits_after_the_allowed_failures_and_resets_on_success() {
        let b = Backoff::new(2);
        assert!(b.check("ip").is_ok());
        b.fail("ip");
        b.fail("ip");
        let wait = b.check("ip").unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(500));
        assert!(b.check("other").is_ok());
        b.succeed("ip");
        assert!(b.check("ip").is_ok());
    }
}
