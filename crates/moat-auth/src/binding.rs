//! Identity-to-address bindings: the networks a certificate identity or user name may connect
//! from. Identities that are not listed are not restricted.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// The `[bindings]` table of the ACL file, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    map: HashMap<Box<str>, Box<[IpNet]>>,
}

/// Parses `10.0.0.0/8`, `192.168.1.7`, `fd00::/8` or `::1` into a network.
///
/// # Errors
/// A lower-case reason when it is neither an address nor a CIDR with a valid prefix length.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if s.contains('/') {
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a CIDR such as 10.3.0.0/24"))?;
        Ok(normalize_net(net))
    } else {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a CIDR such as 10.3.0.0/24"))?;
        Ok(IpNet::from(normalize(ip)))
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as seen on a dual-stack socket) becomes
/// the IPv4 address; other addresses are unchanged.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

fn normalize_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), n.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

impl Bindings {
    /// No bindings: everyone may connect from anywhere.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restricts `identity` to `nets` (replacing what it had). An empty list locks the identity
    /// out.
    pub fn bind(&mut self, identity: &str, nets: Vec<IpNet>) {
        self.map.insert(identity.into(), nets.into());
    }

    /// May `identity` connect from `ip`? True when the identity is not bound at all.
    pub fn check(&self, identity: &str, ip: IpAddr) -> bool {
        match self.map.get(identity) {
            None => true,
            Some(nets) => {
                let ip = normalize(ip);
                nets.iter().any(|n| n.contains(&ip))
            }
        }
    }

    /// Is `identity` bound to some addresses?
    pub fn is_bound(&self, identity: &str) -> bool {
        self.map.contains_key(identity)
    }

    /// The number of bound identities.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Are there no bindings?
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_table() {
        let mut b = Bindings::new();
        let nets = [
            "10.3.0.0/24",
            "192.168.1.7",
            "fd00::/8",
            "::ffff:172.16.0.0/112",
        ]
        .iter()
        .map(|s| parse_net(s).unwrap())
        .collect();
        b.bind("dev-001", nets);
        b.bind("locked", Vec::new());
        let cases = [
            ("dev-001", "10.3.0.9", true),
            ("dev-001", "10.3.1.9", false),
            ("dev-001", "192.168.1.7", true),
            ("dev-001", "192.168.1.8", false),
            ("dev-001", "::ffff:10.3.0.200", true),
            ("dev-001", "::ffff:10.4.0.200", false),
            ("dev-001", "fd12::1", true),
            ("dev-001", "fe80::1", false),
            ("dev-001", "172.16.3.4", true),
            ("other", "8.8.8.8", true),
            ("locked", "127.0.0.1", false),
        ];
        for (id, ip, want) in cases {
            assert_eq!(b.check(id, ip.parse().unwrap()), want, "{id} from {ip}");
        }
    }

    #[test]
    fn bad_nets() {
        for bad in ["10.0.0.0/33", "10.0.0", "host", "::1/129", ""] {
            assert!(parse_net(bad).is_err(), "{bad:?}");
        }
    }
}
