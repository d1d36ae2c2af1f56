//! Choosing the certificate of a handshake by the name the client asks for (SNI).
//!
//! The rules: names compare case-insensitively and without a trailing dot; an exact name wins
//! over a wildcard; `*.example.com` matches exactly one label (`a.example.com`, not
//! `example.com` nor `a.b.example.com`, RFC 6125 6.4.3); no SNI, or a name no set has, gets
//! the default certificate. A set whose files are gone is absent: its names get the default.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A name in the form the resolver compares: ASCII lower case, no trailing dot. `None` when it
/// cannot be a DNS name a client asks for (empty, not ASCII, spaces, or a `*` other than a
/// whole first label).
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut labels = name.split('.');
    let first = labels.next()?;
    let first_ok = first == "*" || valid_label(first);
    let rest: Vec<&str> = labels.collect();
    let wildcard_ok = first != "*" || !rest.is_empty();
    (first_ok && wildcard_ok && rest.iter().all(|l| valid_label(l)) && name.len() <= 253)
        .then_some(name)
}

/// The names of a listener's SNI sets: name -> index of the set.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    exact: HashMap<String, usize>,
    /// `*.example.com` is kept as `example.com`.
    wildcard: HashMap<String, usize>,
}

impl Names {
    /// Adds `name` (normalized) for `set`.
    ///
    /// # Errors
    /// The index of the set that already has the name.
    pub(crate) fn insert(&mut self, name: &str, set: usize) -> Result<(), usize> {
        let map = match name.strip_prefix("*.") {
            Some(_) => &mut self.wildcard,
            None => &mut self.exact,
        };
        let key = name.strip_prefix("*.").unwrap_or(name).to_owned();
        match map.get(&key) {
            Some(&other) if other != set => Err(other),
            _ => {
                map.insert(key, set);
                Ok(())
            }
        }
    }

    /// The set for `server_name`; `None`: the default.
    pub(crate) fn pick(&self, server_name: Option<&str>) -> Option<usize> {
        let name = server_name?;
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if let Some(&set) = self.exact.get(&name) {
            return Some(set);
        }
        let (label, parent) = name.split_once('.')?;
        if label.is_empty() || parent.is_empty() {
            return None;
        }
        self.wildcard.get(parent).copied()
    }
}

/// One certificate as the resolver serves it.
#[derive(Debug)]
pub(crate) struct Entry {
    plain: Arc<CertifiedKey>,
    /// The same with an OCSP response stapled, and the response's nextUpdate (Unix seconds).
    stapled: Option<(Arc<CertifiedKey>, Option<i64>)>,
}

impl Entry {
    pub(crate) fn new(plain: Arc<CertifiedKey>, staple: Option<(Vec<u8>, Option<i64>)>) -> Self {
        let stapled = staple.map(|(der, next)| {
            let mut key = CertifiedKey::clone(&plain);
            key.ocsp = Some(der);
            (Arc::new(key), next)
        });
        Self { plain, stapled }
    }

    /// What to send at `now`: with the staple until its nextUpdate, then without (clients
    /// refuse a stale response; the poll logs it).
    fn at(&self, now: i64) -> Arc<CertifiedKey> {
        match &self.stapled {
            Some((key, next)) if next.is_none_or(|n| n >= now) => Arc::clone(key),
            _ => Arc::clone(&self.plain),
        }
    }
}

/// Every certificate of one listener's configuration (a new one is built when any changes).
#[derive(Debug)]
pub(crate) struct Resolver {
    pub(crate) default: Entry,
    /// By the index of the set in the settings; `None` while its files are gone.
    pub(crate) sets: Vec<Option<Entry>>,
    pub(crate) names: Names,
}

impl Resolver {
    /// The set a handshake for `server_name` gets; `None`: the default.
    pub(crate) fn chosen(&self, server_name: Option<&str>) -> Option<usize> {
        self.names
            .pick(server_name)
            .filter(|&i| self.sets.get(i).is_some_and(Option::is_some))
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let entry = self
            .chosen(hello.server_name())
            .and_then(|i| self.sets.get(i)?.as_ref())
            .unwrap_or(&self.default);
        Some(entry.at(crate::live::unix(SystemTime::now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[(&str, usize)]) -> Names {
        let mut n = Names::default();
        for (name, set) in list {
            n.insert(&normalize_name(name).unwrap(), *set).unwrap();
        }
        n
    }

    #[test]
    fn exact_names_win_and_wildcards_match_one_label() {
        let n = names(&[
            ("a.example", 0),
            ("*.example.com", 1),
            ("special.example.com", 2),
        ]);
        let table = [
            (Some("a.example"), Some(0)),
            (Some("A.Example."), Some(0)),
            (Some("x.example.com"), Some(1)),
            (Some("X.EXAMPLE.COM"), Some(1)),
            (Some("special.example.com"), Some(2)),
            (Some("example.com"), None),
            (Some("a.b.example.com"), None),
            (Some(".example.com"), None),
            (Some("b.example"), None),
            (None, None),
        ];
        for (asked, set) in table {
            assert_eq!(n.pick(asked), set, "{asked:?}");
        }
    }

    #[test]
    fn a_name_belongs_to_one_set() {
        let mut n = names(&[("a.example", 0)]);
        assert_eq!(n.insert("a.example", 1), Err(0));
        assert_eq!(n.insert("a.example", 0), Ok(()));
        assert_eq!(n.insert("*.example", 1), Ok(()));
        assert_eq!(n.insert("*.example", 2), Err(1));
    }

    #[test]
    fn names_are_normalized_or_refused() {
        assert_eq!(normalize_name("B.Example.").as_deref(), Some("b.example"));
        assert_eq!(
            normalize_name("*.Example.com").as_deref(),
            Some("*.example.com")
        );
        for bad in [
            "",
            "*",
            "a.*.com",
            "f*.example",
            "a b",
            "é.example",
            "a..b",
            "*.",
        ] {
            assert_eq!(normalize_name(bad), None, "{bad:?}");
        }
    }
}
