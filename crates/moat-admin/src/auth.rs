//! Who is asking: bearer tokens (admin and viewer, made on the first start, 0600), console
//! sessions (an HttpOnly SameSite=Strict cookie plus a CSRF token), and the slow-down of
//! failed attempts per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;
use zeroize::Zeroizing;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Read and change.
    Admin,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Admin => "admin",
        }
    }
}

/// 32 random bytes, base64url.
pub(crate) fn random_token() -> std::io::Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut bytes[..]).map_err(std::io::Error::other)?;
    Ok(Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..]),
    ))
}

/// Reads a token file, making it (0600) with a new random token when it does not exist.
/// Returns the token and whether it was made now.
pub(crate) fn load_or_create_token(path: &Path) -> std::io::Result<(Zeroizing<String>, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let token = text.trim();
            if token.len() < 16 {
                return Err(std::io::Error::other(format!(
                    "{}: the token is shorter than 16 characters; delete the file to have a new \
                     one made",
                    path.display()
                )));
            }
            Ok((Zeroizing::new(token.to_owned()), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let token = random_token()?;
            let mut line = Zeroizing::new(token.as_bytes().to_vec());
            line.push(b'\n');
            moat_pki::store::write_file(path, &line, true, false)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok((token, true))
        }
        Err(e) => Err(e),
    }
}

/// Equal in time independent of where they differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The two tokens.
pub(crate) struct Tokens {
    pub(crate) admin: Zeroizing<String>,
    pub(crate) viewer: Zeroizing<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { .. }")
    }
}

impl Tokens {
    pub(crate) fn role_of(&self, token: &str) -> Option<Role> {
        // Both compared, so the time does not say which one matched.
        let admin = same(token.as_bytes(), self.admin.as_bytes());
        let viewer = same(token.as_bytes(), self.viewer.as_bytes());
        if admin {
            Some(Role::Admin)
        } else if viewer {
            Some(Role::Viewer)
        } else {
            None
        }
    }
}

/// How long a console session lives.
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Console sessions at most (the oldest goes first).
const MAX_SESSIONS: usize = 1024;

pub(crate) struct Session {
    pub(crate) role: Role,
    pub(crate) csrf: Zeroizing<String>,
    expires: Instant,
}

/// Console sessions by their cookie value.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions { .. }")
    }
}

impl Sessions {
    /// Starts a session; returns (cookie value, csrf token).
    pub(crate) fn start(
        &self,
        role: Role,
        now: Instant,
    ) -> std::io::Result<(Zeroizing<String>, Zeroizing<String>)> {
        let id = random_token()?;
        let csrf = random_token()?;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.to_string(),
            Session {
                role,
                csrf: csrf.clone(),
                expires: now + SESSION_LIFETIME,
            },
        );
        Ok((id, csrf))
    }

    /// The role and CSRF token of a live session.
    pub(crate) fn get(&self, id: &str, now: Instant) -> Option<(Role, Zeroizing<String>)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|s| s.expires > now)
            .map(|s| (s.role, s.csrf.clone()))
    }

    pub(crate) fn end(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// Failures before an address is slowed down.
const FREE_FAILURES: u32 = 5;
/// The longest wait.
const MAX_DELAY: Duration = Duration::from_secs(300);
/// Addresses remembered at most (the map cannot grow without bound).
const MAX_TRACKED: usize = 10_000;

struct Failures {
    count: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

/// Failed logins and bad tokens per address: after [`FREE_FAILURES`] each further failure
/// blocks the address for 1 s, 2 s, 4 s ... up to 5 minutes; a success clears it.
#[derive(Default)]
pub(crate) struct Throttle {
    map: Mutex<HashMap<IpAddr, Failures>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Throttle { .. }")
    }
}

impl Throttle {
    /// Seconds the address must still wait, if it is blocked.
    pub(crate) fn blocked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let until = map.get(&ip)?.blocked_until?;
        (until > now).then(|| (until - now).as_secs().max(1))
    }

    /// Records a failure; returns the seconds the address is now blocked for, if any.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            // Forget addresses quiet for longer than the longest wait first.
            map.retain(|_, f| now.duration_since(f.last) < MAX_DELAY);
            if map.len() >= MAX_TRACKED {
                if let Some(oldest) = map.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let f = map.entry(ip).or_insert(Failures {
            count: 0,
            blocked_until: None,
            last: now,
        });
        // An address quiet for the longest wait starts over.
        if now.duration_since(f.last) >= MAX_DELAY {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count <= FREE_FAILURES {
            return None;
        }
        let exp = (f.count - FREE_FAILURES - 1).min(16);
        let delay = Duration::from_secs(1u64 << exp).min(MAX_DELAY);
        f.blocked_until = Some(now + delay);
        Some(delay.as_secs())
    }

    pub(crate) fn succeeded(&self, ip: IpAddr) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_doubles_after_five_and_clears_on_success() {
        let t = Throttle::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(t.failed(ip, now), None);
        }
        assert_eq!(t.failed(ip, now), Some(1));
        assert_eq!(t.failed(ip, now), Some(2));
        assert_eq!(t.failed(ip, now), Some(4));
        assert!(t.blocked(ip, now).is_some());
        assert_eq!(t.blocked(ip, now + Duration::from_secs(5)), None);
        t.succeeded(ip);
        assert_eq!(t.blocked(ip, now), None);
        for _ in 0..30 {
            t.failed(ip, now);
        }
        assert_eq!(t.blocked(ip, now), Some(300));
    }

    #[test]
    fn tokens_are_told_apart_and_never_printed() {
        let t = Tokens {
            admin: Zeroizing::new("a".repeat(43)),
            viewer: Zeroizing::new("v".repeat(43)),
        };
        assert_eq!(t.role_of(&"a".repeat(43)), Some(Role::Admin));
        assert_eq!(t.role_of(&"v".repeat(43)), Some(Role::Viewer));
        assert_eq!(t.role_of("a"), None);
        assert!(!format!("{t:?}").contains("aaa"));
    }
}
