//! moat.toml: the raw file (every key optional) and its validation into server settings.
//! Errors name the file, the key and the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use moat_server::{ListenerConfig, ListenerKind, ServerConfig};
use serde::{Deserialize, Serialize};

/// The file as written by the user.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    pub(crate) data_dir: Option<PathBuf>,
    #[serde(default)]
    pub(crate) listeners: Vec<ListenerFile>,
    pub(crate) limits: Option<LimitsFile>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerFile {
    pub(crate) name: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) bind: Option<String>,
    pub(crate) allow_anonymous: Option<bool>,
}

/// `[limits]`: the broker's protective limits. 0 is never "unlimited".
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    pub(crate) max_packet_size: Option<u32>,
    pub(crate) receive_maximum: Option<u16>,
    pub(crate) max_inflight: Option<u16>,
    pub(crate) max_queued_messages: Option<usize>,
    pub(crate) topic_alias_maximum: Option<u16>,
    pub(crate) max_keep_alive: Option<u16>,
    pub(crate) max_session_expiry: Option<u32>,
    pub(crate) max_retained_messages: Option<usize>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) connect_timeout_secs: Option<u64>,
    pub(crate) max_outbox_packets: Option<usize>,
    pub(crate) sys_interval_secs: Option<u64>,
}

/// Validated settings.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) server: ServerConfig,
    #[allow(dead_code)] // used by storage and the PKI once they land
    pub(crate) data_dir: PathBuf,
}

impl ConfigFile {
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
    }

    pub(crate) fn validate(self) -> anyhow::Result<Settings> {
        let mut server = ServerConfig::default();
        if !self.listeners.is_empty() {
            server.listeners = self
                .listeners
                .iter()
                .enumerate()
                .map(|(i, l)| l.validate(i))
                .collect::<anyhow::Result<_>>()?;
        }
        let mut names = std::collections::HashSet::new();
        for l in &server.listeners {
            if !names.insert(l.name.clone()) {
                bail!(
                    "listeners: the name {:?} is used twice; give each listener its own name",
                    l.name
                );
            }
        }
        if let Some(lim) = self.limits {
            lim.apply(&mut server)?;
        }
        Ok(Settings {
            server,
            data_dir: self.data_dir.unwrap_or_else(|| "./moat-data".into()),
        })
    }
}

impl ListenerFile {
    fn validate(&self, i: usize) -> anyhow::Result<ListenerConfig> {
        let key = |k: &str| format!("listeners[{i}].{k}");
        let kind = match self.kind.as_deref().unwrap_or("tcp") {
            "tcp" => ListenerKind::Tcp,
            k @ ("tls" | "ws" | "wss") => bail!(
                "{}: kind {k:?} is not available in this build yet; use kind = \"tcp\"",
                key("kind")
            ),
            other => bail!(
                "{}: unknown listener kind {other:?}; use one of \"tcp\", \"tls\", \"ws\", \"wss\"",
                key("kind")
            ),
        };
        let bind_text = self.bind.as_deref().unwrap_or("127.0.0.1:1883");
        let bind: SocketAddr = bind_text.parse().map_err(|_| {
            anyhow::anyhow!(
                "{}: {bind_text:?} is not an address; write IP:PORT, e.g. \"127.0.0.1:1883\" \
                 or \"[::1]:1883\"",
                key("bind")
            )
        })?;
        let name = self.name.clone().unwrap_or_else(|| format!("listener{i}"));
        if name.is_empty() {
            bail!("{}: must not be empty", key("name"));
        }
        Ok(ListenerConfig {
            name,
            kind,
            bind,
            // Anonymous access is on only where asked for, or by default on loopback.
            allow_anonymous: self.allow_anonymous.unwrap_or(bind.ip().is_loopback()),
        })
    }
}

impl LimitsFile {
    fn apply(&self, s: &mut ServerConfig) -> anyhow::Result<()> {
        fn nonzero<T: PartialEq + Default + Copy>(
            v: Option<T>,
            key: &str,
        ) -> anyhow::Result<Option<T>> {
            match v {
                Some(x) if x == T::default() => bail!(
                    "limits.{key}: 0 is not allowed (limits are never unlimited); remove the key \
                     to use the default"
                ),
                other => Ok(other),
            }
        }
        let b = &mut s.broker;
        if let Some(v) = nonzero(self.max_packet_size, "max_packet_size")? {
            b.max_packet_size = v;
        }
        if let Some(v) = nonzero(self.receive_maximum, "receive_maximum")? {
            b.receive_maximum = v;
        }
        if let Some(v) = nonzero(self.max_inflight, "max_inflight")? {
            b.max_inflight = v;
        }
        if let Some(v) = nonzero(self.max_queued_messages, "max_queued_messages")? {
            b.max_queued_messages = v;
        }
        if let Some(v) = self.topic_alias_maximum {
            b.topic_alias_maximum = v;
        }
        if let Some(v) = nonzero(self.max_keep_alive, "max_keep_alive")? {
            b.max_keep_alive = v;
        }
        if let Some(v) = self.max_session_expiry {
            b.max_session_expiry = v;
        }
        if let Some(v) = nonzero(self.max_retained_messages, "max_retained_messages")? {
            b.max_retained_messages = v;
        }
        if let Some(v) = nonzero(self.max_connections, "max_connections")? {
            s.max_connections = v;
        }
        if let Some(v) = nonzero(self.connect_timeout_secs, "connect_timeout_secs")? {
            s.connect_timeout = Duration::from_secs(v);
        }
        if let Some(v) = nonzero(self.max_outbox_packets, "max_outbox_packets")? {
            s.max_outbox_packets = v;
        }
        if let Some(v) = self.sys_interval_secs {
            s.broker.sys_interval = (v > 0).then(|| Duration::from_secs(v));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match ConfigFile::parse(text).and_then(ConfigFile::validate) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let s = ConfigFile::parse("").unwrap().validate().unwrap();
        assert_eq!(s.server, ServerConfig::default());
        assert_eq!(s.data_dir, PathBuf::from("./moat-data"));
        let l = &s.server.listeners[0];
        assert_eq!(l.bind, "127.0.0.1:1883".parse().unwrap());
        assert!(l.allow_anonymous);
    }

    #[test]
    fn anonymous_defaults_to_loopback_only() {
        let s = ConfigFile::parse(
            "[[listeners]]\nname = \"a\"\nbind = \"0.0.0.0:1883\"\n\
             [[listeners]]\nname = \"b\"\nbind = \"[::1]:1884\"\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert!(!s.server.listeners[0].allow_anonymous);
        assert!(s.server.listeners[1].allow_anonymous);
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let e = err("[[listeners]]\nbind = \"localhost\"\n");
        assert!(
            e.contains("listeners[0].bind") && e.contains("IP:PORT"),
            "{e}"
        );
        let e = err("[[listeners]]\nkind = \"udp\"\n");
        assert!(
            e.contains("listeners[0].kind") && e.contains("\"tcp\""),
            "{e}"
        );
        let e = err("[[listeners]]\nallow_anonymus = true\n");
        assert!(e.contains("allow_anonymus"), "{e}");
        let e = err("[limits]\nmax_inflight = 0\n");
        assert!(
            e.contains("limits.max_inflight") && e.contains("remove the key"),
            "{e}"
        );
        let e = err(
            "[[listeners]]\nname = \"x\"\n[[listeners]]\nname = \"x\"\nbind = \"127.0.0.1:2\"\n",
        );
        assert!(e.contains("used twice"), "{e}");
    }
}
