//! Both directions between the file and the settings: [`ConfigFile::validate_in`] (file ->
//! settings, every default filled in and every value checked) and [`Settings::effective`]
//! (settings -> file, every key written).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_auth::Proof;
use moat_core::{CertExpiryAction, ClientIdSource};
use moat_store::Durability;
use moat_tls::{ClientAuth, CrlStalePolicy, IdentitySource, SniSet, TlsSettings};

use super::{
    AdminFile, AuthFile, ConfigError, ConfigFile, LimitsFile, ListenerFile, Paths, SniFile,
    StoreFile, TlsAlarmsFile, TlsFile,
};
use crate::{AuthConfig, ListenerConfig, ListenerKind, ServerConfig, StoreConfig, TlsAlarmsConfig};

/// Validated settings: what the server runs with, and what the file's relative paths were
/// resolved against (so that [`effective`](Self::effective) writes a file that means the same
/// thing in the same folder).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// Everything [`Server::bind`](crate::Server::bind) needs; every path in it resolved.
    pub server: ServerConfig,
    /// The data directory, resolved (the PKI of a first run and the store live under it).
    pub data_dir: PathBuf,
    /// The folder the file's relative paths are relative to ("" for the working directory).
    pub base_dir: PathBuf,
    /// `[admin]`, resolved.
    pub admin: AdminSettings,
    /// `[forward]` as written (its secrets are read when the sinks are opened:
    /// [`Settings::forward_rules`]).
    pub forward: Option<moat_forward::ForwardFile>,
    /// The async runtime's worker threads.
    pub worker_threads: usize,
}

impl Settings {
    /// The forwarding rules, checked, each ready to open its sink (the password and
    /// credentials files are read now).
    ///
    /// # Errors
    /// [`ConfigError`] naming the `forward.` key, the problem and the fix.
    pub fn forward_rules(&self) -> Result<Vec<moat_forward::RuleSpec>, ConfigError> {
        let Some(f) = &self.forward else {
            return Ok(Vec::new());
        };
        let specs = f
            .validate(&self.base_dir)
            .map_err(|e| ConfigError::invalid(e.key, format!("{}; {}", e.problem, e.fix)))?;
        for (i, spec) in specs.iter().enumerate() {
            for (j, filter) in spec.filters.iter().enumerate() {
                let key = || format!("forward.rules[{i}].filters[{j}]");
                if filter.starts_with("$share/") {
                    return Err(ConfigError::invalid(
                        key(),
                        format!(
                            "{filter:?} is a shared subscription; a rule sees every accepted \
                             message: give the plain filter"
                        ),
                    ));
                }
                if let Err(e) = moat_core::topic::validate_filter(filter) {
                    return Err(ConfigError::invalid(
                        key(),
                        format!("{filter:?} is not an MQTT topic filter: {e}"),
                    ));
                }
            }
        }
        Ok(specs)
    }
}

/// The admin API's settings (`[admin]`), every path resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdminSettings {
    /// Whether the admin API runs.
    pub enabled: bool,
    /// Where it listens.
    pub bind: SocketAddr,
    /// The admin token's file.
    pub token_file: PathBuf,
    /// The viewer token's file.
    pub viewer_token_file: PathBuf,
    /// The audit log.
    pub audit_log: PathBuf,
    /// The TLS listener whose certificate the API serves with, if any.
    pub tls_listener: Option<String>,
}

/// The admin API's default address.
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:18083";

const KINDS: &[&str] = &["tcp", "tls", "ws", "wss"];
const PROOFS: &[&str] = &["password", "certificate", "either", "both"];
const CLIENT_AUTHS: &[&str] = &["none", "optional", "required"];
const IDENTITIES: &[&str] = &["none", "cn", "san", "dn"];
const CLIENT_ID_SOURCES: &[&str] = &["client", "certificate"];
const CERT_EXPIRY_ACTIONS: &[&str] = &["disconnect", "warn"];
const CRL_STALE: &[&str] = &["warn", "fail_closed"];
const DURABILITIES: &[&str] = &["group-commit", "fsync-each"];

fn not_one_of(key: String, value: &str, allowed: &'static [&'static str]) -> ConfigError {
    ConfigError::NotOneOf {
        key,
        value: value.to_owned(),
        allowed,
    }
}

/// `path` as written in a file whose relative paths are relative to `base`.
fn relative_to(base: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix(base) {
        Ok(p) if p.as_os_str().is_empty() => PathBuf::from("."),
        Ok(p) => p.to_owned(),
        Err(_) => path.to_owned(),
    }
}

/// `path` resolved against `base` (an absolute path stays as it is).
fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

impl Settings {
    /// Reads, parses and validates a config file; its relative paths are relative to its
    /// folder. Every error names the file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, else [`ConfigError::File`] around
    /// what is wrong in it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        ConfigFile::load(path)?
            .validate_in(base)
            .map_err(|e| e.in_file(path))
    }

    /// The settings in force, written back as a config file with every key (the output of
    /// `moat serve --print-config`). Paths are written as the file would hold them: relative to
    /// [`base_dir`](Self::base_dir) (the password file, the ACL and the store relative to
    /// `data_dir`) where they are inside it, else as they are; validating the result in the
    /// same folder gives these settings again.
    pub fn effective(&self) -> ConfigFile {
        let s = &self.server;
        let base = |p: &PathBuf| relative_to(&self.base_dir, p);
        let in_data = |p: &Path| relative_to(&self.data_dir, p);
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
                client_id: Some(
                    match l.client_id {
                        ClientIdSource::Client => "client",
                        ClientIdSource::Certificate => "certificate",
                    }
                    .into(),
                ),
                on_client_cert_expiry: Some(
                    match l.on_client_cert_expiry {
                        CertExpiryAction::Disconnect => "disconnect",
                        CertExpiryAction::Warn => "warn",
                    }
                    .into(),
                ),
                tls: l.tls.as_ref().map(|t| TlsFile {
                    cert: Some(base(&t.cert)),
                    chain: t.chain.as_ref().map(base),
                    key: Some(base(&t.key)),
                    key_passphrase_file: t.key_passphrase_file.as_ref().map(base),
                    client_auth: Some(
                        match t.client_auth {
                            ClientAuth::None => "none",
                            ClientAuth::Optional => "optional",
                            ClientAuth::Required => "required",
                        }
                        .into(),
                    ),
                    client_ca: t.client_ca.as_ref().map(|ca| {
                        Paths::of(base(ca), t.extra_client_ca.iter().map(base).collect())
                    }),
                    crl: t.crl.iter().map(base).collect(),
                    crl_stale: Some(
                        match t.crl_stale {
                            CrlStalePolicy::Warn => "warn",
                            CrlStalePolicy::FailClosed => "fail_closed",
                        }
                        .into(),
                    ),
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
                    ocsp: t.ocsp.as_ref().map(base),
                    sni: t
                        .sni
                        .iter()
                        .map(|set| SniFile {
                            cert: Some(base(&set.cert)),
                            chain: set.chain.as_ref().map(base),
                            key: Some(base(&set.key)),
                            key_passphrase_file: set.key_passphrase_file.as_ref().map(base),
                            ocsp: set.ocsp.as_ref().map(base),
                            names: set.names.clone(),
                        })
                        .collect(),
                }),
            })
            .collect();
        let b = &s.broker;
        ConfigFile {
            data_dir: Some(base(&self.data_dir)),
            worker_threads: Some(self.worker_threads),
            listeners,
            store: Some(match &s.store {
                None => StoreFile {
                    enabled: Some(false),
                    path: None,
                    durability: None,
                },
                Some(st) => StoreFile {
                    enabled: Some(true),
                    path: Some(in_data(&st.dir)),
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
                password_file: s.auth.password_file.as_deref().map(in_data),
                acl_file: s.auth.acl_file.as_deref().map(in_data),
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
                forward_spool_messages: Some(s.forward.spool_max_messages),
                forward_spool_bytes: Some(s.forward.spool_max_bytes),
                forward_batch: Some(s.forward.batch),
            }),
            admin: Some(AdminFile {
                enabled: Some(self.admin.enabled),
                bind: Some(self.admin.bind.to_string()),
                token_file: Some(in_data(&self.admin.token_file)),
                viewer_token_file: Some(in_data(&self.admin.viewer_token_file)),
                audit_log: Some(in_data(&self.admin.audit_log)),
                tls_listener: self.admin.tls_listener.clone(),
            }),
            tls_alarms: Some(TlsAlarmsFile {
                warn_days: Some(
                    s.tls_alarms
                        .warn_before
                        .iter()
                        .map(|d| d.as_secs_f64() / DAY_SECS)
                        .collect(),
                ),
                check_interval_secs: Some(s.tls_alarms.check_interval.as_secs()),
            }),
            forward: self.forward.clone(),
        }
    }
}

impl ConfigFile {
    /// Validates relative to the working directory: relative paths stay relative.
    ///
    /// # Errors
    /// As [`validate_in`](Self::validate_in).
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        self.validate_in(Path::new(""))
    }

    /// Validates, filling in every default and resolving relative paths against `base` (the
    /// config file's folder; the password file, the ACL and the store against `data_dir`).
    /// Reads no file: TLS material, the password file and the ACL are loaded by
    /// [`Server::bind`](crate::Server::bind).
    ///
    /// # Errors
    /// The first invalid key: [`ConfigError::NotOneOf`], [`ConfigError::ZeroLimit`] or
    /// [`ConfigError::Invalid`], each naming the key and the fix.
    pub fn validate_in(&self, base: &Path) -> Result<Settings, ConfigError> {
        let mut server = ServerConfig::default();
        if !self.listeners.is_empty() {
            server.listeners = self
                .listeners
                .iter()
                .enumerate()
                .map(|(i, l)| l.validate(i, base))
                .collect::<Result<_, _>>()?;
        }
        let mut names = HashMap::new();
        for (i, l) in server.listeners.iter().enumerate() {
            if let Some(first) = names.insert(l.name.as_str(), i) {
                return Err(ConfigError::invalid(
                    format!("listeners[{i}].name"),
                    format!(
                        "the name {:?} is used twice (also by listeners[{first}]); give each \
                         listener its own name",
                        l.name
                    ),
                ));
            }
        }
        if let Some(lim) = &self.limits {
            lim.apply(&mut server)?;
        }
        // data_dir, like every relative path in the file, is relative to the file's folder;
        // the password file, the ACL and the store are relative to data_dir.
        let data_dir = resolve(
            base,
            self.data_dir.as_deref().unwrap_or(Path::new("moat-data")),
        );
        let auth = self.auth.clone().unwrap_or_default();
        let in_data = |p: &Path| resolve(&data_dir, p);
        let store = self.store.clone().unwrap_or_default();
        if store.enabled.unwrap_or(true) {
            let durability = match store.durability.as_deref().unwrap_or("group-commit") {
                "group-commit" => Durability::GroupCommit,
                "fsync-each" => Durability::FsyncEach,
                other => return Err(not_one_of("store.durability".into(), other, DURABILITIES)),
            };
            server.store = Some(StoreConfig {
                dir: in_data(store.path.as_deref().unwrap_or(Path::new("store"))),
                durability,
            });
        }
        server.auth = AuthConfig {
            password_file: Some(in_data(
                auth.password_file.as_deref().unwrap_or(Path::new("passwd")),
            )),
            acl_file: auth.acl_file.as_deref().map(in_data),
        };
        let admin = self.admin.clone().unwrap_or_default();
        let bind = admin.bind.as_deref().unwrap_or(DEFAULT_ADMIN_BIND);
        let bind: SocketAddr = bind.parse().map_err(|_| {
            ConfigError::invalid(
                "admin.bind",
                format!("{bind:?} is not IP:PORT; for example \"{DEFAULT_ADMIN_BIND}\""),
            )
        })?;
        if let Some(name) = &admin.tls_listener {
            if !server
                .listeners
                .iter()
                .any(|l| &l.name == name && l.tls.is_some())
            {
                return Err(ConfigError::invalid(
                    "admin.tls_listener",
                    format!(
                        "no tls or wss listener is named {name:?}; name one whose certificate \
                         the admin API should serve, or remove the key for plain HTTP"
                    ),
                ));
            }
        }
        let admin = AdminSettings {
            enabled: admin.enabled.unwrap_or(true),
            bind,
            token_file: in_data(
                admin
                    .token_file
                    .as_deref()
                    .unwrap_or(Path::new("admin.token")),
            ),
            viewer_token_file: in_data(
                admin
                    .viewer_token_file
                    .as_deref()
                    .unwrap_or(Path::new("viewer.token")),
            ),
            audit_log: in_data(admin.audit_log.as_deref().unwrap_or(Path::new("audit.log"))),
            tls_listener: admin.tls_listener,
        };
        server.tls_state_dir = in_data(Path::new("tls"));
        if let Some(alarms) = &self.tls_alarms {
            server.tls_alarms = alarms.validate()?;
        }
        let worker_threads = match self.worker_threads {
            None => crate::config::default_worker_threads(),
            Some(n @ 1..=1024) => n,
            Some(n) => {
                return Err(ConfigError::invalid(
                    "worker_threads",
                    format!("{n} is not 1 to 1024; remove the key for the default"),
                ))
            }
        };
        let mut settings = Settings {
            server,
            data_dir,
            base_dir: base.to_owned(),
            admin,
            forward: self.forward.clone(),
            worker_threads,
        };
        settings.server.forward.rules = settings
            .forward_rules()?
            .into_iter()
            .map(|r| crate::ForwardRule {
                name: r.name,
                filters: r.filters,
            })
            .collect();
        if !settings.server.forward.rules.is_empty() && settings.server.store.is_none() {
            return Err(ConfigError::invalid(
                "forward.rules",
                "forwarding needs the durable store (its spool keeps every message until the \
                 sink confirms it): set [store] enabled = true or remove the rules",
            ));
        }
        Ok(settings)
    }
}

impl ListenerFile {
    fn validate(&self, i: usize, base: &Path) -> Result<ListenerConfig, ConfigError> {
        let key = |k: &str| format!("listeners[{i}].{k}");
        let kind = match self.kind.as_deref().unwrap_or("tcp") {
            "tcp" => ListenerKind::Tcp,
            "tls" => ListenerKind::Tls,
            "ws" => ListenerKind::Ws,
            "wss" => ListenerKind::Wss,
            other => return Err(not_one_of(key("kind"), other, KINDS)),
        };
        let default_bind = match kind {
            ListenerKind::Tcp => "127.0.0.1:1883",
            ListenerKind::Tls => "0.0.0.0:8883",
            ListenerKind::Ws => "127.0.0.1:8083",
            ListenerKind::Wss => "0.0.0.0:8084",
        };
        let bind_text = self.bind.as_deref().unwrap_or(default_bind);
        let bind: SocketAddr = bind_text.parse().map_err(|_| {
            ConfigError::invalid(
                key("bind"),
                format!(
                    "{bind_text:?} is not an address; write IP:PORT, e.g. \"127.0.0.1:1883\" \
                     or \"[::1]:1883\""
                ),
            )
        })?;
        let name = self.name.clone().unwrap_or_else(|| format!("listener{i}"));
        if name.is_empty() {
            return Err(ConfigError::invalid(key("name"), "must not be empty"));
        }
        let mut tls =
            match (&self.tls, kind.is_tls()) {
                (Some(t), true) => Some(t.validate(&key("tls"), base)?),
                (None, true) => {
                    return Err(ConfigError::invalid(
                        key("tls"),
                        format!(
                            "a {} listener needs [listeners.tls] with cert and key, e.g. \
                         tls = {{ cert = \"pki/server.pem\", key = \"pki/server.key\" }}",
                            self.kind.as_deref().unwrap_or("tls")
                        ),
                    ))
                }
                (Some(_), false) => return Err(ConfigError::invalid(
                    key("tls"),
                    "only tls and wss listeners take TLS settings; set kind = \"tls\" or \"wss\"",
                )),
                (None, false) => None,
            };
        if let (Some(t), ListenerKind::Wss) = (&mut tls, kind) {
            t.alpn = vec![b"http/1.1".to_vec()];
        }
        let path = self.path.clone().unwrap_or_else(|| "/mqtt".into());
        if !path.starts_with('/') {
            return Err(ConfigError::invalid(
                key("path"),
                format!("{path:?} must start with '/', e.g. \"/mqtt\""),
            ));
        }
        let client_certs = tls
            .as_ref()
            .is_some_and(|t| t.client_auth != ClientAuth::None);
        let proof = match self.auth.as_deref() {
            None if client_certs => Proof::Either,
            None | Some("password") => Proof::Password,
            Some("certificate") => Proof::Certificate,
            Some("either") => Proof::Either,
            Some("both") => Proof::Both,
            Some(other) => return Err(not_one_of(key("auth"), other, PROOFS)),
        };
        if matches!(proof, Proof::Certificate | Proof::Both) && !client_certs {
            return Err(ConfigError::invalid(
                key("auth"),
                format!(
                    "auth = {:?} needs client certificates: set tls.client_auth = \"required\" \
                     (or \"optional\") and tls.client_ca",
                    self.auth.as_deref().unwrap_or_default()
                ),
            ));
        }
        let client_id = match self.client_id.as_deref().unwrap_or("client") {
            "client" => ClientIdSource::Client,
            "certificate" => ClientIdSource::Certificate,
            other => return Err(not_one_of(key("client_id"), other, CLIENT_ID_SOURCES)),
        };
        if client_id == ClientIdSource::Certificate {
            let identity = tls.as_ref().map(|t| t.identity);
            if !client_certs || identity == Some(IdentitySource::None) {
                return Err(ConfigError::invalid(
                    key("client_id"),
                    "client_id = \"certificate\" needs verified client certificates with an \
                     identity: kind = \"tls\" or \"wss\", tls.client_auth = \"required\", \
                     tls.client_ca, and tls.identity = \"cn\", \"san\" or \"dn\"",
                ));
            }
        }
        let on_client_cert_expiry = match self
            .on_client_cert_expiry
            .as_deref()
            .unwrap_or("disconnect")
        {
            "disconnect" => CertExpiryAction::Disconnect,
            "warn" => CertExpiryAction::Warn,
            other => {
                return Err(not_one_of(
                    key("on_client_cert_expiry"),
                    other,
                    CERT_EXPIRY_ACTIONS,
                ))
            }
        };
        Ok(ListenerConfig {
            name,
            kind,
            bind,
            proof,
            client_id,
            on_client_cert_expiry,
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
    fn validate(&self, key: &str, base: &Path) -> Result<TlsSettings, ConfigError> {
        let path = |p: &PathBuf| resolve(base, p);
        let Some(cert) = self.cert.as_ref() else {
            return Err(ConfigError::invalid(
                format!("{key}.cert"),
                "missing; give the server certificate file (PEM), e.g. \"pki/server.pem\"",
            ));
        };
        let Some(k) = self.key.as_ref() else {
            return Err(ConfigError::invalid(
                format!("{key}.key"),
                "missing; give the private key file (PEM), e.g. \"pki/server.key\"",
            ));
        };
        let mut s = TlsSettings::new(path(cert), path(k));
        s.chain = self.chain.as_ref().map(path);
        s.key_passphrase_file = self.key_passphrase_file.as_ref().map(path);
        if let Some(cas) = &self.client_ca {
            let Some((first, more)) = cas.paths().split_first() else {
                return Err(ConfigError::invalid(
                    format!("{key}.client_ca"),
                    "an empty list; give at least one CA file, e.g. client_ca = [\"pki/ca.pem\"]",
                ));
            };
            s.client_ca = Some(path(first));
            s.extra_client_ca = more.iter().map(path).collect();
        }
        s.crl = self.crl.iter().map(path).collect();
        s.crl_stale = match self.crl_stale.as_deref().unwrap_or("warn") {
            "warn" => CrlStalePolicy::Warn,
            "fail_closed" => CrlStalePolicy::FailClosed,
            other => return Err(not_one_of(format!("{key}.crl_stale"), other, CRL_STALE)),
        };
        s.client_auth = match self.client_auth.as_deref().unwrap_or("none") {
            "none" => ClientAuth::None,
            "optional" => ClientAuth::Optional,
            "required" => ClientAuth::Required,
            other => {
                return Err(not_one_of(
                    format!("{key}.client_auth"),
                    other,
                    CLIENT_AUTHS,
                ))
            }
        };
        if s.client_auth != ClientAuth::None && s.client_ca.is_none() {
            return Err(ConfigError::invalid(
                format!("{key}.client_ca"),
                format!(
                    "client_auth = {:?} needs the CA that signed the client certificates, \
                     e.g. client_ca = \"pki/ca.pem\"",
                    self.client_auth.as_deref().unwrap_or_default()
                ),
            ));
        }
        s.identity = match self.identity.as_deref().unwrap_or("cn") {
            "none" => IdentitySource::None,
            "cn" => IdentitySource::Cn,
            "san" => IdentitySource::San,
            "dn" => IdentitySource::Dn,
            other => return Err(not_one_of(format!("{key}.identity"), other, IDENTITIES)),
        };
        s.accept_v1_client_certs = self.accept_v1_client_certs.unwrap_or(false);
        s.ocsp = self.ocsp.as_ref().map(path);
        s.sni = validate_sni(&self.sni, key, base)?;
        Ok(s)
    }
}

/// Seconds in a day, for `warn_days`.
const DAY_SECS: f64 = 86_400.0;

/// The most days `warn_days` takes (100 years: beyond any certificate worth warning about).
const MAX_WARN_DAYS: f64 = 36_500.0;

/// The most thresholds `warn_days` takes (each is a metric label value).
const MAX_WARN_THRESHOLDS: usize = 8;

impl TlsAlarmsFile {
    fn validate(&self) -> Result<TlsAlarmsConfig, ConfigError> {
        let mut c = TlsAlarmsConfig::default();
        if let Some(days) = &self.warn_days {
            let mut secs = Vec::with_capacity(days.len());
            for d in days {
                if !(d.is_finite() && *d > 0.0 && *d <= MAX_WARN_DAYS) {
                    return Err(ConfigError::invalid(
                        "tls_alarms.warn_days",
                        format!(
                            "{d} is not a number of days above 0 and at most {MAX_WARN_DAYS}; \
                             write e.g. [30, 7, 1], or [0.5] for 12 hours, or [] for no warnings"
                        ),
                    ));
                }
                let s = (d * DAY_SECS).round();
                if s < 1.0 {
                    return Err(ConfigError::invalid(
                        "tls_alarms.warn_days",
                        format!("{d} days is less than a second; warn at least a second ahead"),
                    ));
                }
                // Finite, between 1 and 36,500 days in seconds: fits a u64.
                secs.push(s as u64);
            }
            secs.sort_unstable_by(|a, b| b.cmp(a));
            secs.dedup();
            if secs.len() > MAX_WARN_THRESHOLDS {
                return Err(ConfigError::invalid(
                    "tls_alarms.warn_days",
                    format!(
                        "{} thresholds; give at most {MAX_WARN_THRESHOLDS} (e.g. [30, 7, 1])",
                        secs.len()
                    ),
                ));
            }
            c.warn_before = secs.into_iter().map(Duration::from_secs).collect();
        }
        match self.check_interval_secs {
            Some(0) => {
                return Err(ConfigError::invalid(
                    "tls_alarms.check_interval_secs",
                    "must be at least 1 (seconds between checks; default 60)",
                ))
            }
            Some(v) => c.check_interval = Duration::from_secs(v),
            None => {}
        }
        Ok(c)
    }
}

/// The SNI sets of one listener: each with a certificate and a key, at most
/// [`moat_tls::MAX_SNI_SETS`], and no name in two sets.
fn validate_sni(sets: &[SniFile], key: &str, base: &Path) -> Result<Vec<SniSet>, ConfigError> {
    if sets.len() > moat_tls::MAX_SNI_SETS {
        return Err(ConfigError::invalid(
            format!("{key}.sni"),
            format!(
                "{} certificate sets is more than {}, the most one listener may have; split \
                 them over several listeners",
                sets.len(),
                moat_tls::MAX_SNI_SETS
            ),
        ));
    }
    let path = |p: &PathBuf| resolve(base, p);
    // name -> the set that has it, to name both when a second one does.
    let mut owners: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        let at = |k: &str| format!("{key}.sni[{i}].{k}");
        let (Some(cert), Some(k)) = (&set.cert, &set.key) else {
            let missing = if set.cert.is_none() { "cert" } else { "key" };
            return Err(ConfigError::invalid(
                at(missing),
                "missing; each SNI set needs its certificate and key, e.g. \
                 { cert = \"pki/b.pem\", key = \"pki/b.key\", names = [\"b.example\"] }",
            ));
        };
        let mut names = Vec::with_capacity(set.names.len());
        for name in &set.names {
            let Some(n) = moat_tls::normalize_name(name) else {
                return Err(ConfigError::invalid(
                    at("names"),
                    format!(
                        "{name:?} is not a DNS name a client can ask for; write e.g. \
                         \"b.example.com\" or \"*.example.com\" (a wildcard is a whole first \
                         label)"
                    ),
                ));
            };
            if let Some(first) = owners.insert(n.clone(), i) {
                if first != i {
                    return Err(ConfigError::invalid(
                        at("names"),
                        format!(
                            "{name:?} is also a name of {key}.sni[{first}]; give each name to \
                             one set"
                        ),
                    ));
                }
            }
            names.push(n);
        }
        out.push(SniSet {
            cert: path(cert),
            chain: set.chain.as_ref().map(path),
            key: path(k),
            key_passphrase_file: set.key_passphrase_file.as_ref().map(path),
            ocsp: set.ocsp.as_ref().map(path),
            names,
        });
    }
    Ok(out)
}

/// A limit's value, refusing 0 (no limit is ever "unlimited").
fn nonzero<T: PartialEq + Default + Copy>(
    v: Option<T>,
    key: &str,
) -> Result<Option<T>, ConfigError> {
    match v {
        Some(x) if x == T::default() => Err(ConfigError::ZeroLimit {
            key: format!("limits.{key}"),
        }),
        other => Ok(other),
    }
}

impl LimitsFile {
    fn apply(&self, s: &mut ServerConfig) -> Result<(), ConfigError> {
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
                return Err(ConfigError::invalid(
                    "limits.max_topic_levels",
                    format!("{v} is more than {cap}, the most Moat allows"),
                ));
            }
            b.max_topic_levels = v;
        }
        if let Some(v) = nonzero(self.max_topic_length, "max_topic_length")? {
            if v > 65_535 {
                return Err(ConfigError::invalid(
                    "limits.max_topic_length",
                    format!("{v} is more than 65535, the longest topic MQTT can carry"),
                ));
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
        if let Some(v) = nonzero(self.forward_spool_messages, "forward_spool_messages")? {
            s.forward.spool_max_messages = v;
        }
        if let Some(v) = nonzero(self.forward_spool_bytes, "forward_spool_bytes")? {
            s.forward.spool_max_bytes = v;
        }
        if let Some(v) = nonzero(self.forward_batch, "forward_batch")? {
            if v > 10_000 {
                return Err(ConfigError::invalid(
                    "limits.forward_batch",
                    format!("{v} is more than 10000 records per write"),
                ));
            }
            s.forward.batch = v;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn err(text: &str) -> String {
        match ConfigFile::from_str(text).and_then(|f| f.validate()) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => crate::Chain(&e).to_string(),
        }
    }

    /// The example in README.md is a valid config (guards against doc drift).
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../../../README.md");
        let start = readme
            .find("```toml\ndata_dir")
            .expect("README has the config example");
        let body = &readme[start + "```toml\n".len()..];
        let end = body.find("```").expect("closed block");
        let file = ConfigFile::from_str(&body[..end]).expect("README example parses");
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
        let s = ConfigFile::from_str(text).unwrap().validate().unwrap();
        let printed = s.effective().to_toml_string().unwrap();
        let again = ConfigFile::from_str(&printed).unwrap().validate().unwrap();
        assert_eq!(again.server, s.server, "{printed}");
        assert!(printed.contains("max_inflight = 7"), "{printed}");
    }

    /// Every key set to something other than its default.
    const EVERY_KEY: &str = r#"
data_dir = "var/moat"

[[listeners]]
name = "plain"
kind = "tcp"
bind = "[::1]:1884"
allow_anonymous = false
auth = "password"

[[listeners]]
name = "web"
kind = "ws"
bind = "127.0.0.1:8090"
path = "/ws"

[[listeners]]
name = "secure"
kind = "tls"
bind = "0.0.0.0:8883"
allow_anonymous = false
auth = "both"
client_id = "certificate"
on_client_cert_expiry = "warn"
tls = { cert = "pki/server.pem", chain = "pki/chain.pem", key = "pki/server.key", key_passphrase_file = "/run/secrets/pass", client_auth = "required", client_ca = "../shared/ca.pem", crl = ["pki/a.crl", "/etc/crl/b.crl"], identity = "san", accept_v1_client_certs = true, ocsp = "pki/server.ocsp", sni = [{ cert = "pki/b.pem", chain = "pki/b-chain.pem", key = "pki/b.key", key_passphrase_file = "/run/secrets/b", ocsp = "/var/ocsp/b.der", names = ["b.example", "*.b.example"] }, { cert = "pki/c.pem", key = "pki/c.key" }] }

[[listeners]]
kind = "wss"
bind = "0.0.0.0:8084"
path = "/mqtt/wss"
auth = "certificate"
tls = { cert = "pki/server.pem", key = "pki/server.key", client_auth = "optional", client_ca = ["pki/ca.pem", "pki/old-ca.pem"], identity = "dn" }

[auth]
password_file = "users"
acl_file = "/etc/moat/acl.toml"

[store]
path = "db"
durability = "fsync-each"

[limits]
max_packet_size = 65536
receive_maximum = 10
max_inflight = 5
max_queued_messages = 50
max_queued_bytes = 100000
flow_control_queued = 20
topic_alias_maximum = 0
max_keep_alive = 30
max_session_expiry = 0
max_retained_messages = 9
max_retained_bytes = 9000
max_topic_levels = 8
max_topic_length = 200
max_subscriptions_per_client = 3
max_connections = 77
max_concurrent_auth = 3
connect_timeout_secs = 4
max_outbox_packets = 64
sys_interval_secs = 0

[admin]
enabled = false
bind = "[::1]:18084"
token_file = "secrets/admin.token"
viewer_token_file = "/run/moat/viewer.token"
audit_log = "log/audit.jsonl"
tls_listener = "secure"

[tls_alarms]
warn_days = [0.5, 14]
check_interval_secs = 5
"#;

    /// file -> validate -> effective -> TOML -> parse -> validate gives the same settings,
    /// for a file in the working directory, in a relative folder and in an absolute one; and
    /// printing the result again gives the same text.
    #[test]
    fn effective_round_trips_through_toml() {
        let readme = include_str!("../../../../README.md");
        let start = readme.find("```toml\ndata_dir").unwrap() + "```toml\n".len();
        let example = &readme[start..start + readme[start..].find("```").unwrap()];
        let no_store = "[store]\nenabled = false\n[auth]\npassword_file = \"/abs/passwd\"\n";
        for text in ["", EVERY_KEY, example, no_store] {
            for base in ["", ".", "conf", "/etc/moat"] {
                let base = Path::new(base);
                let s = ConfigFile::from_str(text)
                    .unwrap()
                    .validate_in(base)
                    .unwrap();
                let printed = s.effective().to_toml_string().unwrap();
                let again = ConfigFile::from_str(&printed)
                    .unwrap()
                    .validate_in(base)
                    .unwrap();
                assert_eq!(again, s, "base {base:?}:\n{printed}");
                assert_eq!(
                    again.effective().to_toml_string().unwrap(),
                    printed,
                    "base {base:?}"
                );
            }
        }
    }

    #[test]
    fn effective_writes_paths_as_the_file_does() {
        let s = ConfigFile::from_str(EVERY_KEY)
            .unwrap()
            .validate_in(Path::new("/etc/moat"))
            .unwrap();
        let tls = s.server.listeners[2].tls.as_ref().unwrap();
        assert_eq!(tls.cert, Path::new("/etc/moat/pki/server.pem"));
        assert_eq!(
            tls.client_ca.as_deref(),
            // Joined, not normalised: ".." is the file system's to follow.
            Some(Path::new("/etc/moat/../shared/ca.pem"))
        );
        // Several client CAs: the first is the one uploads replace, all are trusted.
        let rotating = s.server.listeners[3].tls.as_ref().unwrap();
        assert_eq!(
            rotating.client_ca.as_deref(),
            Some(Path::new("/etc/moat/pki/ca.pem"))
        );
        assert_eq!(
            rotating.extra_client_ca,
            [Path::new("/etc/moat/pki/old-ca.pem")]
        );
        assert_eq!(s.data_dir, Path::new("/etc/moat/var/moat"));
        assert_eq!(
            s.server.auth.password_file.as_deref(),
            Some(Path::new("/etc/moat/var/moat/users"))
        );
        let e = s.effective();
        assert_eq!(e.data_dir.as_deref(), Some(Path::new("var/moat")));
        let t = e.listeners[2].tls.as_ref().unwrap();
        assert_eq!(t.cert.as_deref(), Some(Path::new("pki/server.pem")));
        assert_eq!(
            t.client_ca,
            Some(Paths::One(PathBuf::from("../shared/ca.pem")))
        );
        assert_eq!(
            e.listeners[3].tls.as_ref().unwrap().client_ca,
            Some(Paths::Several(vec![
                PathBuf::from("pki/ca.pem"),
                PathBuf::from("pki/old-ca.pem")
            ]))
        );
        assert_eq!(
            t.key_passphrase_file.as_deref(),
            Some(Path::new("/run/secrets/pass"))
        );
        let auth = e.auth.unwrap();
        assert_eq!(auth.password_file.as_deref(), Some(Path::new("users")));
        assert_eq!(
            auth.acl_file.as_deref(),
            Some(Path::new("/etc/moat/acl.toml"))
        );
    }

    #[test]
    fn load_resolves_against_the_files_folder_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat.toml");
        std::fs::write(&path, "data_dir = \"d\"\n").unwrap();
        let s = Settings::load(&path).unwrap();
        assert_eq!(s.data_dir, dir.path().join("d"));
        assert_eq!(s.base_dir, dir.path());

        std::fs::write(&path, "[[listeners]]\nbind = \"localhost:1883\"\n").unwrap();
        let e = Settings::load(&path).unwrap_err();
        assert_eq!(e.key(), Some("listeners[0].bind"));
        let text = crate::Chain(&e).to_string();
        assert!(
            text.starts_with(&format!(
                "config file {}: listeners[0].bind: ",
                path.display()
            )),
            "{text}"
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let s = ConfigFile::from_str("").unwrap().validate().unwrap();
        assert_eq!(s.server.listeners, ServerConfig::default().listeners);
        assert_eq!(s.server.broker, ServerConfig::default().broker);
        assert_eq!(
            s.server.max_concurrent_auth,
            crate::default_max_concurrent_auth()
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
        let s = ConfigFile::from_str(
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
        let e = err("[[listeners]]\nclient_id = \"certificate\"\n");
        assert!(
            e.contains("listeners[0].client_id") && e.contains("client_auth"),
            "{e}"
        );
        let tls = "kind = \"tls\"\ntls = { cert = \"c\", key = \"k\", client_auth = \"required\", \
                   client_ca = \"ca\", identity = \"none\" }\n";
        let e = err(&format!(
            "[[listeners]]\nclient_id = \"certificate\"\n{tls}"
        ));
        assert!(e.contains("tls.identity"), "{e}");
        let e = err("[[listeners]]\nclient_id = \"cn\"\n");
        assert!(e.contains("\"certificate\""), "{e}");
        let e = err("[[listeners]]\non_client_cert_expiry = \"close\"\n");
        assert!(
            e.contains("listeners[0].on_client_cert_expiry") && e.contains("\"warn\""),
            "{e}"
        );
    }

    const SNI_TABLES: &str = r#"
[[listeners]]
name = "secure"
kind = "tls"

[listeners.tls]
cert = "pki/a.pem"
key = "pki/a.key"
ocsp = "pki/a.ocsp"

[[listeners.tls.sni]]
cert = "pki/b.pem"
key = "pki/b.key"
names = ["B.Example.", "*.b.example"]

[[listeners.tls.sni]]
cert = "/etc/c.pem"
key = "/etc/c.key"
ocsp = "c.der"
"#;

    #[test]
    fn sni_sets_and_ocsp_parse_in_both_forms() {
        let s = ConfigFile::from_str(SNI_TABLES)
            .unwrap()
            .validate_in(Path::new("/etc/moat"))
            .unwrap();
        let tls = s.server.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.ocsp.as_deref(), Some(Path::new("/etc/moat/pki/a.ocsp")));
        assert_eq!(tls.sni.len(), 2);
        assert_eq!(tls.sni[0].cert, Path::new("/etc/moat/pki/b.pem"));
        // Names are kept the way they are compared.
        assert_eq!(tls.sni[0].names, ["b.example", "*.b.example"]);
        assert!(tls.sni[1].names.is_empty());
        assert_eq!(
            tls.sni[1].ocsp.as_deref(),
            Some(Path::new("/etc/moat/c.der"))
        );
        // The inline form means the same.
        let inline = "[[listeners]]\nname = \"secure\"\nkind = \"tls\"\n\
                      tls = { cert = \"pki/a.pem\", key = \"pki/a.key\", ocsp = \"pki/a.ocsp\", \
                      sni = [{ cert = \"pki/b.pem\", key = \"pki/b.key\", names = [\"b.example\", \"*.b.example\"] }, \
                      { cert = \"/etc/c.pem\", key = \"/etc/c.key\", ocsp = \"c.der\" }] }\n";
        let t = ConfigFile::from_str(inline)
            .unwrap()
            .validate_in(Path::new("/etc/moat"))
            .unwrap();
        assert_eq!(t.server.listeners[0].tls.as_ref(), Some(tls));
        // Debug shows paths, never more.
        assert!(format!("{tls:?}").contains("b.pem"));
    }

    #[test]
    fn sni_errors_name_the_key_and_the_fix() {
        let listener = |sets: &str| {
            format!(
                "[[listeners]]\nkind = \"tls\"\ntls = {{ cert = \"a.pem\", key = \"a.key\", \
                 sni = [{sets}] }}\n"
            )
        };
        let e = err(&listener(
            "{ cert = \"b.pem\", key = \"b.key\", names = [\"x.example\"] }, \
             { cert = \"c.pem\", key = \"c.key\", names = [\"X.example\"] }",
        ));
        assert!(
            e.contains("listeners[0].tls.sni[1].names")
                && e.contains("listeners[0].tls.sni[0]")
                && e.contains("\"X.example\""),
            "{e}"
        );
        let e = err(&listener(
            "{ cert = \"b.pem\", key = \"b.key\", name = \"b\" }",
        ));
        assert!(e.contains("name"), "{e}");
        let e = err(&listener("{ cert = \"b.pem\" }"));
        assert!(e.contains("listeners[0].tls.sni[0].key"), "{e}");
        let e = err(&listener(
            "{ cert = \"b.pem\", key = \"b.key\", names = [\"a.*.example\"] }",
        ));
        assert!(e.contains("sni[0].names") && e.contains("wildcard"), "{e}");
        let many = vec!["{ cert = \"b.pem\", key = \"b.key\" }"; moat_tls::MAX_SNI_SETS + 1];
        let e = err(&listener(&many.join(", ")));
        assert!(
            e.contains("listeners[0].tls.sni") && e.contains("64"),
            "{e}"
        );
        let e = err(
            "[[listeners]]\nkind = \"tls\"\ntls = { cert = \"a\", key = \"k\", oscp = \"r\" }\n",
        );
        assert!(e.contains("oscp"), "{e}");
    }

    #[test]
    fn tls_alarms_parse_sort_and_refuse_nonsense() {
        let day = Duration::from_secs(86_400);
        let parse = |t: &str| ConfigFile::from_str(t).unwrap().validate().unwrap();
        let s = parse("");
        assert_eq!(s.server.tls_alarms, TlsAlarmsConfig::default());
        assert_eq!(
            s.server.tls_alarms.warn_before,
            vec![30 * day, 7 * day, day]
        );
        assert_eq!(s.server.tls_alarms.check_interval, Duration::from_secs(60));
        let s = parse("[tls_alarms]\nwarn_days = [1, 30, 0.5, 7, 1.0]\ncheck_interval_secs = 1\n");
        assert_eq!(
            s.server.tls_alarms.warn_before,
            vec![30 * day, 7 * day, day, day / 2]
        );
        assert_eq!(s.server.tls_alarms.check_interval, Duration::from_secs(1));
        let s = parse("[tls_alarms]\nwarn_days = []\n");
        assert!(s.server.tls_alarms.warn_before.is_empty());
        let s = ConfigFile::from_str(EVERY_KEY).unwrap().validate().unwrap();
        assert_eq!(s.server.tls_alarms.warn_before, vec![14 * day, day / 2]);
        assert_eq!(s.server.tls_alarms.check_interval, Duration::from_secs(5));

        for bad in [
            "[0]",
            "[-1]",
            "[nan]",
            "[inf]",
            "[0.000001]",
            "[1, 2, 3, 4, 5, 6, 7, 8, 9]",
        ] {
            let e = err(&format!("[tls_alarms]\nwarn_days = {bad}\n"));
            assert!(e.contains("tls_alarms.warn_days"), "{bad}: {e}");
        }
        let e = err("[tls_alarms]\ncheck_interval_secs = 0\n");
        assert!(e.contains("tls_alarms.check_interval_secs"), "{e}");
        let e = err("[tls_alarms]\nwarn_day = [1]\n");
        assert!(e.contains("warn_day"), "{e}");
        let e = err("[tls_alarms]\nwarn_days = [\"7d\"]\n");
        assert!(e.contains("warn_days"), "{e}");
    }

    #[test]
    fn certificate_client_ids_and_expiry_policy_parse() {
        let s = ConfigFile::from_str(EVERY_KEY).unwrap().validate().unwrap();
        let secure = &s.server.listeners[2];
        assert_eq!(secure.client_id, ClientIdSource::Certificate);
        assert_eq!(secure.on_client_cert_expiry, CertExpiryAction::Warn);
        let plain = &s.server.listeners[0];
        assert_eq!(plain.client_id, ClientIdSource::Client);
        assert_eq!(plain.on_client_cert_expiry, CertExpiryAction::Disconnect);
    }
}
