//! The `[forward]` section of moat.toml as read ([`ForwardFile`]) and as checked
//! ([`RuleSpec`]): every file it names is read and every name resolved by
//! [`ForwardFile::validate`], so a running broker never meets a configuration mistake.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::jetstream::{JetStreamSink, SubjectTemplate};
use crate::postgres::{PostgresSink, TableSpec};
use crate::Sink;

/// Connect timeout when a sink sets none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one `write` may take, connect included, when a sink sets none.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The subject template of a JetStream rule that sets none.
pub const DEFAULT_SUBJECT: &str = "moat.{topic}";

/// `[forward]` as written in moat.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardFile {
    /// `[[forward.sinks]]`: connections to backends.
    #[serde(default)]
    pub sinks: Vec<SinkFile>,
    /// `[[forward.rules]]`: which messages go where.
    #[serde(default)]
    pub rules: Vec<RuleFile>,
}

/// The kind of backend a sink connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// PostgreSQL, through tokio-postgres.
    Postgres,
    /// NATS JetStream, through async-nats.
    Jetstream,
}

/// One `[[forward.sinks]]` entry: a connection. Keys that belong to one kind only are refused on
/// the other by [`ForwardFile::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkFile {
    /// The name rules refer to.
    pub name: String,
    /// `postgres` or `jetstream`.
    pub kind: SinkKind,
    /// `postgresql://user@host:port/db` or `nats://host:port`; never with a password in it.
    pub url: String,
    /// PostgreSQL only: a file whose first line is the password; relative to the config file.
    pub password_file: Option<PathBuf>,
    /// JetStream only: a file with `user = "..."` and `password = "..."`, or `token = "..."`
    /// (TOML); relative to the config file.
    pub credentials_file: Option<PathBuf>,
    /// TLS to the backend, verifying it against `ca`.
    pub tls: Option<TlsFile>,
    /// Like `"5s"`, `"500ms"`, `"1m"` (default 5 s).
    pub connect_timeout: Option<String>,
    /// How long one batch may take, connecting included (default 30 s).
    pub write_timeout: Option<String>,
}

/// `tls = { ca = "...", cert = "...", key = "..." }`: paths relative to the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM file with the CA certificate(s) the backend's certificate must chain to.
    pub ca: PathBuf,
    /// PEM client certificate chain, for backends that ask for one (with `key`).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

/// How a PostgreSQL rule stores the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadMode {
    /// Only the raw bytes, in `payload bytea`.
    #[default]
    Bytea,
    /// The raw bytes in `payload bytea`, and the payload parsed as JSON in `payload_json jsonb`
    /// (NULL when it is not JSON).
    Jsonb,
}

/// One `[[forward.rules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Unique; letters, digits, `_` and `-`. The default table name.
    pub name: String,
    /// MQTT topic filters (validated and matched by the broker).
    pub filters: Vec<String>,
    /// The `[[forward.sinks]]` name to deliver to.
    pub sink: String,
    /// PostgreSQL: the table (default: the rule name).
    pub table: Option<String>,
    /// PostgreSQL: `bytea` (default) or `jsonb`.
    pub payload: Option<PayloadMode>,
    /// PostgreSQL: column name -> dotted JSON path into the payload, stored as jsonb.
    pub columns: Option<BTreeMap<String, String>>,
    /// JetStream: the stream, created when missing.
    pub stream: Option<String>,
    /// JetStream: the subject template (default `moat.{topic}`).
    pub subject: Option<String>,
}

/// A mistake in `[forward]`: which key, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}; {fix}")]
pub struct ForwardConfigError {
    /// The key, like `forward.rules[1].sink`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

pub(crate) fn err(
    key: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ForwardConfigError {
    ForwardConfigError {
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// A checked rule, ready to open its sink.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// The rule's name.
    pub name: String,
    /// Its MQTT topic filters, as written.
    pub filters: Vec<String>,
    /// Where it writes.
    pub target: Target,
}

/// Where a rule writes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Target {
    /// A PostgreSQL table.
    Postgres {
        /// The connection.
        conn: Arc<PostgresConn>,
        /// The table and its columns.
        table: TableSpec,
    },
    /// A JetStream stream.
    JetStream {
        /// The connection.
        conn: Arc<NatsConn>,
        /// The stream name.
        stream: String,
        /// How MQTT topics become subjects.
        subject: SubjectTemplate,
    },
}

impl RuleSpec {
    /// The sink for this rule. It does not connect: its first [`Sink::write`] does, and an
    /// unreachable backend is then [`crate::SinkError::Unavailable`].
    pub fn open(&self) -> Box<dyn Sink> {
        match &self.target {
            Target::Postgres { conn, table } => {
                Box::new(PostgresSink::new(Arc::clone(conn), table.clone()))
            }
            Target::JetStream {
                conn,
                stream,
                subject,
            } => Box::new(JetStreamSink::new(
                Arc::clone(conn),
                self.name.clone(),
                stream.clone(),
                subject.clone(),
            )),
        }
    }
}

/// A checked PostgreSQL connection. `Debug` never shows the password.
#[derive(Clone)]
pub struct PostgresConn {
    /// The sink's name.
    pub name: String,
    /// Parsed from `url`, without password and TLS mode (set at connect).
    pub(crate) config: tokio_postgres::Config,
    pub(crate) password: Option<Zeroizing<String>>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) write_timeout: Duration,
}

impl PostgresConn {
    /// `name (postgres user@host:port/db)`: what logs show.
    pub fn describe(&self) -> String {
        let host = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "{} (postgres {}@{}:{}/{}{})",
            self.name,
            self.config.get_user().unwrap_or("?"),
            host,
            port,
            self.config.get_dbname().unwrap_or(""),
            if self.tls.is_some() { ", tls" } else { "" }
        )
    }
}

impl fmt::Debug for PostgresConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConn")
            .field("target", &self.describe())
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

/// NATS credentials from `credentials_file`.
#[derive(Clone)]
pub(crate) enum NatsAuth {
    UserPassword(String, Zeroizing<String>),
    Token(Zeroizing<String>),
}

/// A checked NATS connection. `Debug` never shows credentials.
#[derive(Clone)]
pub struct NatsConn {
    /// The sink's name.
    pub name: String,
    pub(crate) url: String,
    pub(crate) auth: Option<NatsAuth>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) connect_timeout: Duration,
    pub(crate) write_timeout: Duration,
}

impl NatsConn {
    /// `name (jetstream nats://host:port)`: what logs show.
    pub fn describe(&self) -> String {
        format!(
            "{} (jetstream {}{})",
            self.name,
            self.url,
            if self.tls.is_some() { ", tls" } else { "" }
        )
    }
}

impl fmt::Debug for NatsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            None => "none",
            Some(NatsAuth::UserPassword(..)) => "user and <redacted> password",
            Some(NatsAuth::Token(_)) => "<redacted> token",
        };
        f.debug_struct("NatsConn")
            .field("target", &self.describe())
            .field("auth", &auth)
            .field("connect_timeout", &self.connect_timeout)
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

enum CheckedSink {
    Postgres(Arc<PostgresConn>),
    Nats(Arc<NatsConn>),
}

impl ForwardFile {
    /// Checks every sink and rule, reads the files they name (relative to `base`, the config
    /// file's folder) and returns the rules in order.
    ///
    /// # Errors
    /// The first mistake found, naming its key, the problem and the fix.
    pub fn validate(&self, base: &Path) -> Result<Vec<RuleSpec>, ForwardConfigError> {
        let mut sinks: HashMap<&str, CheckedSink> = HashMap::new();
        for (i, s) in self.sinks.iter().enumerate() {
            let key = format!("forward.sinks[{i}]");
            if s.name.is_empty() {
                return Err(err(
                    format!("{key}.name"),
                    "is empty",
                    "give the sink a name",
                ));
            }
            if sinks.contains_key(s.name.as_str()) {
                return Err(err(
                    format!("{key}.name"),
                    format!("a sink named {:?} is defined twice", s.name),
                    "give each [[forward.sinks]] its own name",
                ));
            }
            let checked = match s.kind {
                SinkKind::Postgres => {
                    CheckedSink::Postgres(Arc::new(check_postgres(s, &key, base)?))
                }
                SinkKind::Jetstream => CheckedSink::Nats(Arc::new(check_nats(s, &key, base)?)),
            };
            sinks.insert(&s.name, checked);
        }

        let mut names = Vec::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            let key = format!("forward.rules[{i}]");
            check_rule_name(&r.name, &format!("{key}.name"))?;
            if names.contains(&r.name.as_str()) {
                return Err(err(
                    format!("{key}.name"),
                    format!("a rule named {:?} is defined twice", r.name),
                    "give each [[forward.rules]] its own name",
                ));
            }
            names.push(&r.name);
            if r.filters.is_empty() {
                return Err(err(
                    format!("{key}.filters"),
                    "is empty, so the rule would forward nothing",
                    "list at least one MQTT topic filter, like [\"devices/+/telemetry\"]",
                ));
            }
            let Some(sink) = sinks.get(r.sink.as_str()) else {
                let mut known: Vec<&str> = sinks.keys().copied().collect();
                known.sort_unstable();
                return Err(err(
                    format!("{key}.sink"),
                    format!("there is no sink named {:?}", r.sink),
                    if known.is_empty() {
                        "define it in a [[forward.sinks]] entry".to_owned()
                    } else {
                        format!("use one of: {}", known.join(", "))
                    },
                ));
            };
            let target = match sink {
                CheckedSink::Postgres(conn) => {
                    for (k, set) in [
                        ("stream", r.stream.is_some()),
                        ("subject", r.subject.is_some()),
                    ] {
                        if set {
                            return Err(wrong_kind(&key, k, "jetstream", &r.sink, "postgres"));
                        }
                    }
                    Target::Postgres {
                        conn: Arc::clone(conn),
                        table: TableSpec::from_rule(r, &key)?,
                    }
                }
                CheckedSink::Nats(conn) => {
                    for (k, set) in [
                        ("table", r.table.is_some()),
                        ("payload", r.payload.is_some()),
                        ("columns", r.columns.is_some()),
                    ] {
                        if set {
                            return Err(wrong_kind(&key, k, "postgres", &r.sink, "jetstream"));
                        }
                    }
                    let Some(stream) = r.stream.clone() else {
                        return Err(err(
                            format!("{key}.stream"),
                            "is missing",
                            "name the JetStream stream to write to, like stream = \"MOAT_EVENTS\" (it is created when missing)",
                        ));
                    };
                    check_stream_name(&stream, &format!("{key}.stream"))?;
                    let template = r.subject.as_deref().unwrap_or(DEFAULT_SUBJECT);
                    let subject = SubjectTemplate::parse(template)
                        .map_err(|problem| err(format!("{key}.subject"), problem, "write tokens separated by '.', with {topic} as the whole last token, like \"moat.{topic}\""))?;
                    Target::JetStream {
                        conn: Arc::clone(conn),
                        stream,
                        subject,
                    }
                }
            };
            rules.push(RuleSpec {
                name: r.name.clone(),
                filters: r.filters.clone(),
                target,
            });
        }
        Ok(rules)
    }
}

fn wrong_kind(key: &str, k: &str, for_kind: &str, sink: &str, kind: &str) -> ForwardConfigError {
    err(
        format!("{key}.{k}"),
        format!("only applies to a {for_kind} sink, and {sink:?} is {kind}"),
        format!("remove {k}, or point the rule at a {for_kind} sink"),
    )
}

fn check_rule_name(name: &str, key: &str) -> Result<(), ForwardConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(err(
            key,
            format!("{name:?} is not a rule name"),
            "use 1 to 63 letters, digits, '_' or '-'",
        ))
    }
}

fn check_stream_name(name: &str, key: &str) -> Result<(), ForwardConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'));
    if ok {
        Ok(())
    } else {
        Err(err(
            key,
            format!("{name:?} is not a JetStream stream name"),
            "use printable ASCII without spaces, '.', '*', '>', '/' or '\\', like MOAT_EVENTS",
        ))
    }
}

/// A simple SQL identifier: a letter or `_`, then letters, digits or `_`, at most 63 bytes.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.len() <= 63
}

/// Parses `"5s"`, `"500ms"`, `"2m"`, `"1h"`: a whole number and a unit, more than zero.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

fn duration(
    value: Option<&str>,
    default: Duration,
    key: String,
) -> Result<Duration, ForwardConfigError> {
    match value {
        None => Ok(default),
        Some(v) => parse_duration(v).ok_or_else(|| {
            err(
                key,
                format!("{v:?} is not a duration"),
                "write a whole number and a unit (ms, s, m, h) more than zero, like \"5s\"",
            )
        }),
    }
}

fn read_secret_file(
    base: &Path,
    file: &Path,
    key: &str,
) -> Result<Zeroizing<String>, ForwardConfigError> {
    let path = base.join(file);
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
        err(
            key,
            format!("cannot read {}: {e}", path.display()),
            "point it at a readable file (relative paths start from the config file's folder)",
        )
    })?);
    Ok(text)
}

fn check_postgres(
    s: &SinkFile,
    key: &str,
    base: &Path,
) -> Result<PostgresConn, ForwardConfigError> {
    if s.credentials_file.is_some() {
        return Err(err(
            format!("{key}.credentials_file"),
            "only applies to a jetstream sink",
            "for PostgreSQL use password_file",
        ));
    }
    if !(s.url.starts_with("postgresql://") || s.url.starts_with("postgres://")) {
        return Err(err(
            format!("{key}.url"),
            format!("{:?} is not a PostgreSQL URL", s.url),
            "write postgresql://USER@HOST:PORT/DATABASE",
        ));
    }
    let mut config = tokio_postgres::Config::from_str(&s.url).map_err(|e| {
        err(
            format!("{key}.url"),
            format!("cannot be read: {e}"),
            "write postgresql://USER@HOST:PORT/DATABASE",
        )
    })?;
    if config.get_password().is_some() {
        return Err(err(
            format!("{key}.url"),
            "holds a password, which would end up in logs and backups of the config",
            "remove it from the URL and put it in a file named by password_file",
        ));
    }
    if config.get_user().is_none() {
        return Err(err(
            format!("{key}.url"),
            "names no user",
            "write postgresql://USER@HOST:PORT/DATABASE",
        ));
    }
    let password = match &s.password_file {
        None => None,
        Some(file) => {
            let text = read_secret_file(base, file, &format!("{key}.password_file"))?;
            let first = Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
            if first.is_empty() {
                return Err(err(
                    format!("{key}.password_file"),
                    "its first line is empty",
                    "write the password on the first line",
                ));
            }
            Some(first)
        }
    };
    let connect_timeout = duration(
        s.connect_timeout.as_deref(),
        DEFAULT_CONNECT_TIMEOUT,
        format!("{key}.connect_timeout"),
    )?;
    config.connect_timeout(connect_timeout);
    config.application_name("moat");
    let tls = s
        .tls
        .as_ref()
        .map(|t| crate::tls::client_config(t, base, &format!("{key}.tls")))
        .transpose()?;
    Ok(PostgresConn {
        name: s.name.clone(),
        config,
        password,
        tls,
        write_timeout: duration(
            s.write_timeout.as_deref(),
            DEFAULT_WRITE_TIMEOUT,
            format!("{key}.write_timeout"),
        )?,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    user: Option<String>,
    password: Option<Zeroizing<String>>,
    token: Option<Zeroizing<String>>,
}

fn check_nats(s: &SinkFile, key: &str, base: &Path) -> Result<NatsConn, ForwardConfigError> {
    if s.password_file.is_some() {
        return Err(err(
            format!("{key}.password_file"),
            "only applies to a postgres sink",
            "for JetStream use credentials_file",
        ));
    }
    let addr = async_nats::ServerAddr::from_str(&s.url).map_err(|e| {
        err(
            format!("{key}.url"),
            format!("{:?} is not a NATS URL: {e}", s.url),
            "write nats://HOST:PORT",
        )
    })?;
    if addr.has_user_pass() || s.url.contains('@') {
        return Err(err(
            format!("{key}.url"),
            "holds credentials, which would end up in logs and backups of the config",
            "remove them from the URL and put them in a file named by credentials_file",
        ));
    }
    let auth = match &s.credentials_file {
        None => None,
        Some(file) => {
            let ckey = format!("{key}.credentials_file");
            let text = read_secret_file(base, file, &ckey)?;
            let fix = "write either user = \"NAME\" and password = \"SECRET\", or token = \"SECRET\" (TOML)";
            let c: CredentialsFile = toml::from_str(&text)
                // The parse error may quote the file: never show it.
                .map_err(|_| err(&ckey, "is not a credentials file", fix))?;
            Some(match c {
                CredentialsFile {
                    user: Some(user),
                    password: Some(password),
                    token: None,
                } => NatsAuth::UserPassword(user, password),
                CredentialsFile {
                    user: None,
                    password: None,
                    token: Some(token),
                } => NatsAuth::Token(token),
                _ => {
                    return Err(err(
                        &ckey,
                        "holds neither a user and a password nor a token alone",
                        fix,
                    ))
                }
            })
        }
    };
    let tls = s
        .tls
        .as_ref()
        .map(|t| crate::tls::client_config(t, base, &format!("{key}.tls")))
        .transpose()?;
    Ok(NatsConn {
        name: s.name.clone(),
        url: s.url.clone(),
        auth,
        tls,
        connect_timeout: duration(
            s.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
            format!("{key}.connect_timeout"),
        )?,
        write_timeout: duration(
            s.write_timeout.as_deref(),
            DEFAULT_WRITE_TIMEOUT,
            format!("{key}.write_timeout"),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ForwardFile {
        #[derive(Deserialize)]
        struct Top {
            forward: ForwardFile,
        }
        toml::from_str::<Top>(text)
            .expect("test config parses")
            .forward
    }

    const GOOD: &str = r#"
        [[forward.sinks]]
        name = "db"
        kind = "postgres"
        url = "postgresql://moat@127.0.0.1:5432/iot"
        password_file = "pg.pass"
        connect_timeout = "5s"

        [[forward.sinks]]
        name = "queue"
        kind = "jetstream"
        url = "nats://127.0.0.1:4222"

        [[forward.rules]]
        name = "telemetry"
        filters = ["devices/+/telemetry"]
        sink = "db"
        payload = "jsonb"
        columns = { temperature = "temp", site = "meta.site" }

        [[forward.rules]]
        name = "events"
        filters = ["devices/+/events/#"]
        sink = "queue"
        stream = "MOAT_EVENTS"
        subject = "moat.{topic}"
    "#;

    fn dir_with_password() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pg.pass"), "s3cret\nignored\n").expect("write");
        dir
    }

    fn first_error(text: &str) -> ForwardConfigError {
        let dir = dir_with_password();
        parse(text)
            .validate(dir.path())
            .expect_err("config is refused")
    }

    #[test]
    fn a_good_file_gives_rules_and_debug_hides_the_password() {
        let dir = dir_with_password();
        let rules = parse(GOOD).validate(dir.path()).expect("valid");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].name, "telemetry");
        assert_eq!(rules[1].filters, ["devices/+/events/#"]);
        let Target::Postgres { conn, table } = &rules[0].target else {
            panic!("postgres target expected")
        };
        assert_eq!(conn.password.as_deref().map(String::as_str), Some("s3cret"));
        assert_eq!(table.name, "telemetry");
        let debug = format!("{:?}", rules);
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(rules[0]
            .open()
            .describe()
            .contains("db (postgres moat@127.0.0.1:5432/iot)"));
        assert!(!rules[0].open().describe().contains("s3cret"));
        assert!(rules[1].open().describe().contains("MOAT_EVENTS"));
    }

    #[test]
    fn empty_section_is_valid() {
        assert!(ForwardFile::default()
            .validate(Path::new("."))
            .expect("valid")
            .is_empty());
    }

    #[test]
    fn mistakes_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "sink = \"db\"\n        payload",
                "sink = \"dbx\"\n        payload",
                "forward.rules[0].sink",
            ),
            ("name = \"queue\"", "name = \"db\"", "forward.sinks[1].name"),
            (
                "name = \"events\"",
                "name = \"telemetry\"",
                "forward.rules[1].name",
            ),
            ("stream = \"MOAT_EVENTS\"", "", "forward.rules[1].stream"),
            (
                "stream = \"MOAT_EVENTS\"",
                "stream = \"A.B\"",
                "forward.rules[1].stream",
            ),
            (
                "moat@127.0.0.1",
                "moat:pw@127.0.0.1",
                "forward.sinks[0].url",
            ),
            ("pg.pass", "missing.pass", "forward.sinks[0].password_file"),
            (
                "connect_timeout = \"5s\"",
                "connect_timeout = \"5\"",
                "forward.sinks[0].connect_timeout",
            ),
            (
                "subject = \"moat.{topic}\"",
                "subject = \"moat.{topic}.x\"",
                "forward.rules[1].subject",
            ),
            (
                "subject = \"moat.{topic}\"",
                "subject = \"moat..x\"",
                "forward.rules[1].subject",
            ),
            (
                "subject = \"moat.{topic}\"",
                "table = \"t\"",
                "forward.rules[1].table",
            ),
            (
                "payload = \"jsonb\"",
                "stream = \"S\"",
                "forward.rules[0].stream",
            ),
            (
                "site = \"meta.site\"",
                "site = \"meta..site\"",
                "forward.rules[0].columns.site",
            ),
            (
                "site = \"meta.site\"",
                "topic = \"meta.site\"",
                "forward.rules[0].columns.topic",
            ),
            (
                "site = \"meta.site\"",
                "\"a b\" = \"x\"",
                "forward.rules[0].columns.a b",
            ),
            (
                "payload = \"jsonb\"",
                "table = \"drop table\"",
                "forward.rules[0].table",
            ),
            (
                "url = \"nats://127.0.0.1:4222\"",
                "url = \"nats://127.0.0.1:4222\"\n password_file = \"pg.pass\"",
                "forward.sinks[1].password_file",
            ),
            (
                "filters = [\"devices/+/telemetry\"]",
                "filters = []",
                "forward.rules[0].filters",
            ),
        ];
        for (from, to, key) in cases {
            assert!(GOOD.contains(from), "{from}");
            let e = first_error(&GOOD.replacen(from, to, 1));
            assert_eq!(&e.key, key, "{from} -> {to}: {e}");
            assert!(!e.fix.is_empty());
            assert!(!e.to_string().contains("s3cret"));
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_serde() {
        let text = GOOD.replace("connect_timeout = \"5s\"", "connect_timout = \"5s\"");
        #[derive(Deserialize)]
        struct Top {
            #[allow(dead_code)]
            forward: ForwardFile,
        }
        assert!(toml::from_str::<Top>(&text).is_err());
    }

    #[test]
    fn nats_credentials_are_read_and_checked() {
        let dir = dir_with_password();
        std::fs::write(
            dir.path().join("nats.creds"),
            "user = \"u\"\npassword = \"pw\"\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("bad.creds"), "user = \"u\"\n").expect("write");
        let good = GOOD.replace(
            "url = \"nats://127.0.0.1:4222\"",
            "url = \"nats://127.0.0.1:4222\"\n credentials_file = \"nats.creds\"",
        );
        let rules = parse(&good).validate(dir.path()).expect("valid");
        assert!(!format!("{rules:?}").contains("pw\""));
        let bad = good.replace("nats.creds", "bad.creds");
        let e = parse(&bad).validate(dir.path()).expect_err("refused");
        assert_eq!(e.key, "forward.sinks[1].credentials_file");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }
}
