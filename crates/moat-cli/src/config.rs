//! moat.toml: the raw file (every key optional) and its validation into server settings.
//! Errors name the file, the key and the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use moat_server::{
    AuthConfig, ClientAuth, Durability, IdentitySource, ListenerConfig, ListenerKind, Proof,
    ServerConfig, StoreConfig, TlsSettings,
};
use serde::{Deserialize, Serialize};

/// The file as written by the user.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    pub(crate) data_dir: Option<PathBuf>,
    #[serde(default)]
    pub(crate) listeners: Vec<ListenerFile>,
    pub(crate) auth: Option<AuthFile>,
    pub(crate) store: Option<StoreFile>,
    pub(crate) limits: Option<LimitsFile>,
}

/// `[store]`: the durable store under data_dir.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreFile {
    /// false keeps sessions and retained messages in memory only.
    pub(crate) enabled: Option<bool>,
    pub(crate) path: Option<PathBuf>,
    /// "group-commit" (default) or "fsync-each".
    pub(crate) durability: Option<String>,
}

/// `[auth]`. Relative paths are relative to `data_dir`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthFile {
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) acl_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerFile {
    pub(crate) name: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) bind: Option<String>,
    pub(crate) allow_anonymous: Option<bool>,
    /// Which proofs a non-anonymous client needs: password | certificate | either | both.
    pub(crate) auth: Option<String>,
    /// WebSocket path (ws, wss).
    pub(crate) path: Option<String>,
    pub(crate) tls: Option<TlsFile>,
}

/// `[listeners.tls]`. Relative paths are relative to the config file's folder.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    pub(crate) cert: Option<PathBuf>,
    pub(crate) chain: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) key_passphrase_file: Option<PathBuf>,
    pub(crate) client_auth: Option<String>,
    pub(crate) client_ca: Option<PathBuf>,
    #[serde(default)]
    pub(crate) crl: Vec<PathBuf>,
    pub(crate) identity: Option<String>,
    pub(crate) accept_v1_client_certs: Option<bool>,
}

/// `[limits]`: the broker's protective limits. 0 is never "unlimited".
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    pub(crate) max_packet_size: Option<u32>,
    pub(crate) receive_maximum: Option<u16>,
    pub(crate) max_inflight: Option<u16>,
    pub(crate) max_queued_messages: Option<usize>,
    pub(crate) max_queued_bytes: Option<usize>,
    pub(crate) flow_control_queued: Option<usize>,
    pub(crate) topic_alias_maximum: Option<u16>,
    pub(crate) max_keep_alive: Option<u16>,
    pub(crate) max_session_expiry: Option<u32>,
    pub(crate) max_retained_messages: Option<usize>,
    pub(crate) max_retained_bytes: Option<usize>,
    pub(crate) max_topic_levels: Option<usize>,
    pub(crate) max_topic_length: Option<usize>,
    pub(crate) max_subscriptions_per_client: Option<usize>,
    pub(crate) max_connections: Option<usize>,
    /// Password checks (argon2id, 19 MiB each) at once; default 2 per CPU, 2 to 32.
    pub(crate) max_concurrent_auth: Option<usize>,
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
        self.validate_in(Path::new(""))
    }

    /// Validates, resolving relative file paths against `base` (the config file's folder).
    pub(crate) fn validate_in(self, base: &Path) -> anyhow::Result<Settings> {
        let mut server = ServerConfig::default();
        if !self.listeners.is_empty() {
            server.listeners = self
                .listeners
                .iter()
                .enumerate()
                .map(|(i, l)| l.validate(i, base))
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
        // data_dir, like every relative path in the file, is relative to the file's folder;
        // the password file and the ACL are relative to data_dir.
        let data_dir = self.data_dir.unwrap_or_else(|| "moat-data".into());
        let data_dir = if data_dir.is_absolute() {
            data_dir
        } else {
            base.join(data_dir)
        };
        let auth = self.auth.unwrap_or_default();
        let in_data = |p: PathBuf| if p.is_absolute() { p } else { data_dir.join(p) };
        let store = self.store.unwrap_or_default();
        if store.enabled.unwrap_or(true) {
            let durability = match store.durability.as_deref().unwrap_or("group-commit") {
                "group-commit" => Durability::GroupCommit,
                "fsync-each" => Durability::FsyncEach,
                other => bail!(
                    "store.durability: {other:?} is not one of \"group-commit\", \"fsync-each\""
                ),
            };
            server.store = Some(StoreConfig {
                dir: in_data(store.path.unwrap_or_else(|| "store".into())),
                durability,
            });
        }
        server.auth = AuthConfig {
            password_file: Some(in_data(
                auth.password_file.unwrap_or_else(|| "passwd".into()),
            )),
            acl_file: auth.acl_file.map(in_data),
        };
        Ok(Settings { server, data_dir })
    }
}

impl ListenerFile {
    fn validate(&self, i: usize, base: &Path) -> anyhow::Result<ListenerConfig> {
        let key = |k: &str| format!("listeners[{i}].{k}");
        let kind = match self.kind.as_deref().unwrap_or("tcp") {
            "tcp" => ListenerKind::Tcp,
            "tls" => ListenerKind::Tls,
            "ws" => ListenerKind::Ws,
            "wss" => ListenerKind::Wss,
            other => bail!(
                "{}: unknown listener kind {other:?}; use one of \"tcp\", \"tls\", \"ws\", \"wss\"",
                key("kind")
            ),
        };
        let default_bind = match kind {
            ListenerKind::Tcp => "127.0.0.1:1883",
            ListenerKind::Tls => "0.0.0.0:8883",
            ListenerKind::Ws => "127.0.0.1:8083",
            ListenerKind::Wss => "0.0.0.0:8084",
        };
        let bind_text = self.bind.as_deref().unwrap_or(default_bind);
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
        let tls = match (&self.tls, kind.is_tls()) {
            (Some(t), true) => Some(t.validate(&key("tls"), base)?),
            (None, true) => bail!(
                "{}: a {} listener needs [listeners.tls] with cert and key, e.g. \
                 tls = {{ cert = \"pki/server.pem\", key = \"pki/server.key\" }}",
                key("tls"),
                self.kind.as_deref().unwrap_or("tls")
            ),
            (Some(_), false) => bail!(
                "{}: only tls and wss listeners take TLS settings; set kind = \"tls\" or \"wss\"",
                key("tls")
            ),
            (None, false) => None,
        };
        let mut tls = tls;
        if let (Some(t), ListenerKind::Wss) = (&mut tls, kind) {
            t.alpn = vec![b"http/1.1".to_vec()];
        }
        let path = self.path.clone().unwrap_or_else(|| "/mqtt".into());
        if !path.starts_with('/') {
            bail!(
                "{}: {path:?} must start with '/', e.g. \"/mqtt\"",
                key("path")
            );
        }
        let proof = match self.auth.as_deref() {
            None if tls
                .as_ref()
                .is_some_and(|t| t.client_auth != ClientAuth::None) =>
            {
                Proof::Either
            }
            None | Some("password") => Proof::Password,
            Some("certificate") => Proof::Certificate,
            Some("either") => Proof::Either,
            Some("both") => Proof::Both,
            Some(other) => bail!(
                "{}: {other:?} is not one of \"password\", \"certificate\", \"either\", \"both\"",
                key("auth")
            ),
        };
        if matches!(proof, Proof::Certificate | Proof::Both)
            && !tls
                .as_ref()
                .is_some_and(|t| t.client_auth != ClientAuth::None)
        {
            bail!(
                "{}: auth = {:?} needs client certificates: set tls.client_auth = \"required\" \
                 (or \"optional\") and tls.client_ca",
                key("auth"),
                self.auth.as_deref().unwrap_or_default()
            );
        }
        Ok(ListenerConfig {
            name,
            kind,
            bind,
            proof,
            // Anonymous access is on only where asked for, or by default on loopback plain TCP.
            allow_anonymous: self
                .allow_anonymous
                .unwrap_or(kind == ListenerKind::Tcp && bind.ip().is_loopback()),
            tls,
            path,
        })
    }
}

impl TlsFile {
    fn validate(&self, key: &str, base: &Path) -> anyhow::Result<TlsSettings> {
        let path = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        let Some(cert) = self.cert.as_ref() else {
            bail!("{key}.cert: missing; give the server certificate file (PEM), e.g. \"pki/server.pem\"")
        };
        let Some(k) = self.key.as_ref() else {
            bail!("{key}.key: missing; give the private key file (PEM), e.g. \"pki/server.key\"")
        };
        let mut s = TlsSettings::new(path(cert), path(k));
        s.chain = self.chain.as_ref().map(path);
        s.key_passphrase_file = self.key_passphrase_file.as_ref().map(path);
        s.client_ca = self.client_ca.as_ref().map(path);
        s.crl = self.crl.iter().map(path).collect();
        s.client_auth = match self.client_auth.as_deref().unwrap_or("none") {
            "none" => ClientAuth::None,
            "optional" => ClientAuth::Optional,
            "required" => ClientAuth::Required,
            other => bail!(
                "{key}.client_auth: {other:?} is not one of \"none\", \"optional\", \"required\""
            ),
        };
        if s.client_auth != ClientAuth::None && s.client_ca.is_none() {
            bail!(
                "{key}.client_ca: client_auth = {:?} needs the CA that signed the client \
                 certificates, e.g. client_ca = \"pki/ca.pem\"",
                self.client_auth.as_deref().unwrap_or_default()
            );
        }
        s.identity = match self.identity.as_deref().unwrap_or("cn") {
            "none" => IdentitySource::None,
            "cn" => IdentitySource::Cn,
            "san" => IdentitySource::San,
            "dn" => IdentitySource::Dn,
            other => {
                bail!("{key}.identity: {other:?} is not one of \"none\", \"cn\", \"san\", \"dn\"")
            }
        };
        s.accept_v1_client_certs = self.accept_v1_client_certs.unwrap_or(false);
        Ok(s)
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
        if let Some(v) = nonzero(self.max_queued_bytes, "max_queued_bytes")? {
            b.max_queued_bytes = v;
        }
        if let Some(v) = nonzero(self.flow_control_queued, "flow_control_queued")? {
            b.flow_control_queued = v;
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
        if let Some(v) = nonzero(self.max_retained_bytes, "max_retained_bytes")? {
            b.max_retained_bytes = v;
        }
        if let Some(v) = nonzero(self.max_topic_levels, "max_topic_levels")? {
            let cap = moat_core::MAX_TOPIC_LEVELS_CAP;
            if v > cap {
                bail!("limits.max_topic_levels: {v} is more than {cap}, the most Moat allows");
            }
            b.max_topic_levels = v;
        }
        if let Some(v) = nonzero(self.max_topic_length, "max_topic_length")? {
            if v > 65_535 {
                bail!("limits.max_topic_length: {v} is more than 65535, the longest topic MQTT can carry");
            }
            b.max_topic_length = v;
        }
        if let Some(v) = nonzero(
            self.max_subscriptions_per_client,
            "max_subscriptions_per_client",
        )? {
            b.max_subscriptions_per_client = v;
        }
        if let Some(v) = nonzero(self.max_connections, "max_connections")? {
            s.max_connections = v;
        }
        if let Some(v) = nonzero(self.max_concurrent_auth, "max_concurrent_auth")? {
            s.max_concurrent_auth = v;
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

impl Settings {
    /// `path` as written in `[auth]`: relative to data_dir where it is inside it.
    fn relative_to_data(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.data_dir)
            .map_or_else(|_| path.to_owned(), Path::to_owned)
    }

    /// The settings in force, written back as a config file with every key (the output of
    /// `moat serve --print-config`).
    pub(crate) fn effective(&self) -> ConfigFile {
        let s = &self.server;
        let listeners = s
            .listeners
            .iter()
            .map(|l| ListenerFile {
                name: Some(l.name.clone()),
                kind: Some(
                    match l.kind {
                        ListenerKind::Tcp => "tcp",
                        ListenerKind::Tls => "tls",
                        ListenerKind::Ws => "ws",
                        ListenerKind::Wss => "wss",
                    }
                    .into(),
                ),
                bind: Some(l.bind.to_string()),
                allow_anonymous: Some(l.allow_anonymous),
                auth: Some(
                    match l.proof {
                        Proof::Password => "password",
                        Proof::Certificate => "certificate",
                        Proof::Either => "either",
                        Proof::Both => "both",
                    }
                    .into(),
                ),
                path: l.kind.is_ws().then(|| l.path.clone()),
                tls: l.tls.as_ref().map(|t| TlsFile {
                    cert: Some(t.cert.clone()),
                    chain: t.chain.clone(),
                    key: Some(t.key.clone()),
                    key_passphrase_file: t.key_passphrase_file.clone(),
                    client_auth: Some(
                        match t.client_auth {
                            ClientAuth::None => "none",
                            ClientAuth::Optional => "optional",
                            ClientAuth::Required => "required",
                        }
                        .into(),
                    ),
                    client_ca: t.client_ca.clone(),
                    crl: t.crl.clone(),
                    identity: Some(
                        match t.identity {
                            IdentitySource::None => "none",
                            IdentitySource::Cn => "cn",
                            IdentitySource::San => "san",
                            IdentitySource::Dn => "dn",
                        }
                        .into(),
                    ),
                    accept_v1_client_certs: Some(t.accept_v1_client_certs),
                }),
            })
            .collect();
        let b = &s.broker;
        ConfigFile {
            data_dir: Some(self.data_dir.clone()),
            listeners,
            store: Some(match &s.store {
                None => StoreFile {
                    enabled: Some(false),
                    path: None,
                    durability: None,
                },
                Some(st) => StoreFile {
                    enabled: Some(true),
                    path: Some(self.relative_to_data(&st.dir)),
                    durability: Some(
                        if st.durability == Durability::FsyncEach {
                            "fsync-each"
                        } else {
                            "group-commit"
                        }
                        .into(),
                    ),
                },
            }),
            auth: Some(AuthFile {
                password_file: s
                    .auth
                    .password_file
                    .as_deref()
                    .map(|p| self.relative_to_data(p)),
                acl_file: s.auth.acl_file.as_deref().map(|p| self.relative_to_data(p)),
            }),
            limits: Some(LimitsFile {
                max_packet_size: Some(b.max_packet_size),
                receive_maximum: Some(b.receive_maximum),
                max_inflight: Some(b.max_inflight),
                max_queued_messages: Some(b.max_queued_messages),
                max_queued_bytes: Some(b.max_queued_bytes),
                flow_control_queued: Some(b.flow_control_queued),
                topic_alias_maximum: Some(b.topic_alias_maximum),
                max_keep_alive: Some(b.max_keep_alive),
                max_session_expiry: Some(b.max_session_expiry),
                max_retained_messages: Some(b.max_retained_messages),
                max_retained_bytes: Some(b.max_retained_bytes),
                max_topic_levels: Some(b.max_topic_levels),
                max_topic_length: Some(b.max_topic_length),
                max_subscriptions_per_client: Some(b.max_subscriptions_per_client),
                max_connections: Some(s.max_connections),
                max_concurrent_auth: Some(s.max_concurrent_auth),
                connect_timeout_secs: Some(s.connect_timeout.as_secs()),
                max_outbox_packets: Some(s.max_outbox_packets),
                sys_interval_secs: Some(b.sys_interval.map_or(0, |d| d.as_secs())),
            }),
        }
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

    /// The example in README.md is a valid config (guards against doc drift).
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```toml\ndata_dir")
            .expect("README has the config example");
        let body = &readme[start + "```toml\n".len()..];
        let end = body.find("```").expect("closed block");
        let file = ConfigFile::parse(&body[..end]).expect("README example parses");
        let s = file.validate().expect("README example validates");
        assert_eq!(s.server.listeners.len(), 3);
        assert_eq!(s.server.broker.max_keep_alive, 60);
        // The README shows the default of a 2-CPU machine.
        assert_eq!(s.server.max_concurrent_auth, 4);
    }

    #[test]
    fn print_config_round_trips() {
        let text = "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:1884\"\n\
                    [[listeners]]\nname = \"s\"\nkind = \"wss\"\nbind = \"0.0.0.0:8084\"\n\
                    tls = { cert = \"c.pem\", key = \"k.pem\", client_auth = \"optional\", client_ca = \"ca.pem\" }\n\
                    [limits]\nmax_inflight = 7\n";
        let s = ConfigFile::parse(text).unwrap().validate().unwrap();
        let printed = toml::to_string(&s.effective()).unwrap();
        let again = ConfigFile::parse(&printed).unwrap().validate().unwrap();
        assert_eq!(again.server, s.server, "{printed}");
        assert!(printed.contains("max_inflight = 7"), "{printed}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let s = ConfigFile::parse("").unwrap().validate().unwrap();
        assert_eq!(s.server.listeners, ServerConfig::default().listeners);
        assert_eq!(s.server.broker, ServerConfig::default().broker);
        assert_eq!(
            s.server.max_concurrent_auth,
            moat_server::default_max_concurrent_auth()
        );
        assert!((2..=32).contains(&s.server.max_concurrent_auth));
        assert_eq!(s.data_dir, PathBuf::from("moat-data"));
        assert_eq!(
            s.server.auth.password_file,
            Some(PathBuf::from("moat-data/passwd"))
        );
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
        let e = err("[limits]\nmax_concurrent_auth = 0\n");
        assert!(e.contains("limits.max_concurrent_auth"), "{e}");
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
