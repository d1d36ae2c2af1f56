//! What `moat pub`, `sub`, `check` and `bench` share: the TLS flags, the protocol version
//! flag, opening a connection, and plain-words explanations of what went wrong.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use moat_client::transport::{self, Target, TlsOptions, TransportError};
use moat_client::{ClientError, ProtocolVersion, QoS, ReasonCode};

/// `--cafile`, `--cert`, `--key`, `--insecure`, as mosquitto_pub has them.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct TlsArgs {
    /// PEM file of the CA certificate(s) that signed the broker's certificate; turns TLS on.
    #[arg(long, value_name = "FILE")]
    pub(crate) cafile: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; turns TLS on.
    #[arg(long, value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// Private key of the client certificate.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// File holding the passphrase of an encrypted --key.
    #[arg(long, value_name = "FILE")]
    pub(crate) key_passphrase_file: Option<PathBuf>,
    /// Do not check that the broker's certificate names the host dialed; without --cafile, do
    /// not verify the certificate at all. For tests only.
    #[arg(long)]
    pub(crate) insecure: bool,
}

impl TlsArgs {
    /// The options for the transport.
    pub(crate) fn options(&self) -> anyhow::Result<TlsOptions> {
        let key_passphrase = match &self.key_passphrase_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .as_bytes()
                    .to_vec(),
            ),
            None => None,
        };
        Ok(TlsOptions {
            cafile: self.cafile.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            key_passphrase,
            insecure: self.insecure,
            alpn: Vec::new(),
            resumption: false,
        })
    }
}

/// `-V`: `mqttv5`/`5`, `mqttv311`/`311`, `mqttv31`/`31`.
pub(crate) fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s.to_ascii_lowercase().as_str() {
        "mqttv5" | "5" | "v5" | "5.0" => Ok(ProtocolVersion::V5),
        "mqttv311" | "311" | "v311" | "3.1.1" => Ok(ProtocolVersion::V3_1_1),
        "mqttv31" | "31" | "v31" | "3.1" => Ok(ProtocolVersion::V3_1),
        _ => Err("use mqttv5, mqttv311 or mqttv31".into()),
    }
}

/// `-q`: 0, 1 or 2.
pub(crate) fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| "QoS is 0, 1 or 2".into())
}

/// A short random suffix for client ids and topics (not for secrets).
pub(crate) fn random_suffix() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// The target from `-L URL`, or from `-h`/`-p` (TLS when any TLS flag is given).
pub(crate) fn target(
    url: Option<&str>,
    host: &str,
    port: Option<u16>,
    tls: &TlsOptions,
) -> anyhow::Result<Target> {
    if let Some(url) = url {
        let mut t = transport::parse_url(url)?;
        if let Some(p) = port {
            t.port = p;
        }
        return Ok(t);
    }
    let scheme = if tls.is_set() {
        transport::Scheme::Mqtts
    } else {
        transport::Scheme::Mqtt
    };
    Ok(Target::new(scheme, host, port.unwrap_or(1883)))
}

/// Reads a password from a file (the first line).
pub(crate) fn read_password_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read password file {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// A single-threaded Tokio runtime for one tool run.
pub(crate) fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    rt.context("cannot start the async runtime")
}

/// Cause and fix for a CONNACK refusal.
///
/// `has_credentials`: a user name (or a client certificate) was given; `has_password`: a
/// password was given. mosquitto answers a wrong password with "not authorized", so with a
/// password that code is worded as the likely bad password.
pub(crate) fn refusal_with(
    rc: ReasonCode,
    has_credentials: bool,
    has_password: bool,
) -> (String, String) {
    let mut cause = format!(
        "the broker refused the connection: {} (reason code 0x{:02X})",
        rc.description(),
        rc.0
    );
    if rc == ReasonCode::NOT_AUTHORIZED && has_password {
        cause.push_str(
            ": most likely a bad user name or password (mosquitto answers a wrong password so), \
             or the broker refuses this user",
        );
        let fix = "check the user name and password (-u/-P); on moat reset it with \
                   `moat user passwd NAME`, on mosquitto with `mosquitto_passwd`; then check that \
                   the broker allows this user"
            .to_owned();
        return (cause, fix);
    }
    let fix = match rc {
        ReasonCode::BAD_USER_NAME_OR_PASSWORD => {
            "check the user name and password (-u/-P); on moat add or reset the user with \
             `moat user add NAME`, on mosquitto with `mosquitto_passwd`"
                .to_owned()
        }
        ReasonCode::NOT_AUTHORIZED if !has_credentials => {
            "the broker does not allow anonymous clients here: give -u/-P, or a client certificate \
             (--cert/--key) on a listener that accepts them"
                .to_owned()
        }
        ReasonCode::NOT_AUTHORIZED => {
            "not authorized: the broker's ACL, anonymous setting or certificate identity rules \
             refuse this client; check the user's rights on the broker"
                .to_owned()
        }
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => {
            "the broker does not speak this MQTT version: try -V mqttv311 (or -V mqttv5)".to_owned()
        }
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => {
            "the broker refuses this client id: pick another with -i (letters and digits, at most \
             23 characters for old brokers)"
                .to_owned()
        }
        ReasonCode::SERVER_UNAVAILABLE | ReasonCode::SERVER_BUSY => {
            "the broker is up but cannot take clients now: retry later and check its log".to_owned()
        }
        ReasonCode::BANNED => "this client is banned by the broker's operator".to_owned(),
        ReasonCode::BAD_AUTHENTICATION_METHOD => {
            "the broker wants another authentication method (v5 enhanced authentication)".to_owned()
        }
        ReasonCode::QUOTA_EXCEEDED | ReasonCode::CONNECTION_RATE_EXCEEDED => {
            "the broker's connection limits were hit: slow down or raise them".to_owned()
        }
        ReasonCode::USE_ANOTHER_SERVER | ReasonCode::SERVER_MOVED => {
            "the broker redirects clients elsewhere: see its server reference".to_owned()
        }
        ReasonCode::PACKET_TOO_LARGE => {
            "the CONNECT was too large for the broker (a big will message?)".to_owned()
        }
        _ => "see the broker's log for why it refused".to_owned(),
    };
    (cause, fix)
}

/// Plain words (with a fix where there is one) for a failure of an established or
/// establishing MQTT connection.
pub(crate) fn explain_client_error(
    err: &ClientError,
    has_credentials: bool,
    has_password: bool,
) -> String {
    match err {
        ClientError::Refused(rc) => {
            let (cause, fix) = refusal_with(*rc, has_credentials, has_password);
            format!("{cause}\n  fix: {fix}")
        }
        ClientError::Io(e) => match transport::rustls_error(e) {
            Some(tls) => explain_tls_alert(tls),
            None => format!("connection lost: {e}"),
        },
        ClientError::Disconnected(None) => "the broker closed the connection without an answer \
             (it may refuse this protocol version, client id or client certificate; see its log)"
            .to_owned(),
        ClientError::Timeout(what) => format!(
            "no {what} from the broker in time: is this an MQTT port (and TLS vs plain right)?"
        ),
        other => other.to_string(),
    }
}

/// Plain words for a TLS error seen after the handshake (a refused client certificate in TLS
/// 1.3 arrives as an alert on the first read).
pub(crate) fn explain_tls_alert(e: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::AlertReceived(A::CertificateRequired) => {
            "the broker requires a client certificate and none was given\n  fix: add --cert and \
             --key (make one with `moat cert client --ca DIR --cn ID`)"
                .to_owned()
        }
        rustls::Error::AlertReceived(
            alert @ (A::UnknownCA
            | A::BadCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::AccessDenied
            | A::DecryptError),
        ) => format!(
            "the broker refused the client certificate (TLS alert: {})\n  fix: use a client \
             certificate issued by the CA the broker trusts (its client_ca / mosquitto cafile), \
             valid now and with clientAuth usage",
            alert_words(*alert)
        ),
        rustls::Error::AlertReceived(alert) => {
            format!("the broker ended TLS with alert: {}", alert_words(*alert))
        }
        other => format!("TLS error: {other}"),
    }
}

/// An alert in words.
pub(crate) fn alert_words(alert: rustls::AlertDescription) -> String {
    use rustls::AlertDescription as A;
    match alert {
        A::UnknownCA => "unknown CA".into(),
        A::BadCertificate => "bad certificate".into(),
        A::CertificateRequired => "certificate required".into(),
        A::CertificateExpired => "certificate expired".into(),
        A::CertificateRevoked => "certificate revoked".into(),
        A::CertificateUnknown => "certificate unknown".into(),
        A::UnsupportedCertificate => "unsupported certificate".into(),
        A::HandshakeFailure => "handshake failure".into(),
        A::ProtocolVersion => "protocol version".into(),
        A::DecryptError => "decrypt error".into(),
        A::AccessDenied => "access denied".into(),
        A::InternalError => "internal error".into(),
        A::NoApplicationProtocol => "no application protocol (ALPN)".into(),
        other => format!("{other:?}"),
    }
}

/// Plain words for a failure to open the transport.
pub(crate) fn explain_transport_error(err: &TransportError, target: &Target) -> String {
    match err {
        TransportError::Connect { addr, source }
            if source.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            format!(
                "nothing accepts connections on {addr} (connection refused)\n  fix: is the broker \
                 running, and listening on this address and port?"
            )
        }
        TransportError::Handshake(io) => match err.tls_error() {
            Some(rustls::Error::InvalidCertificate(c)) => format!(
                "the broker's certificate was not accepted: {c:?}\n  fix: run `moat check {}` \
                 for the cause",
                target
            ),
            Some(rustls::Error::InvalidMessage(_)) => {
                format!(
                    "the server on {} does not speak TLS\n  fix: use mqtt:// (no TLS flags) for a \
                     plain port, or the broker's TLS port (usually 8883)",
                    target.authority()
                )
            }
            Some(tls) => format!("TLS handshake failed: {}", explain_tls_alert(tls)),
            None => format!(
                "the TLS handshake failed: {io}\n  fix: is {} a TLS port? (plain MQTT is usually \
                 1883, TLS 8883)",
                target.authority()
            ),
        },
        other => chain(other),
    }
}

/// An error and its sources, joined by ": ".
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Warns that `-P` shows the password to `ps`, unless quiet.
pub(crate) fn warn_password_flag(quiet: bool) {
    if !quiet && std::io::stderr().is_terminal() {
        eprintln!(
            "moat: warning: a password given with -P is visible to other users (ps); \
             prefer --password-file"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_qos() {
        assert_eq!(parse_version("mqttv5"), Ok(ProtocolVersion::V5));
        assert_eq!(parse_version("311"), Ok(ProtocolVersion::V3_1_1));
        assert_eq!(parse_version("mqttv31"), Ok(ProtocolVersion::V3_1));
        assert!(parse_version("6").is_err());
        assert_eq!(parse_qos("2"), Ok(QoS::ExactlyOnce));
        assert!(parse_qos("3").is_err());
    }

    #[test]
    fn refusals_in_plain_words() {
        let (cause, fix) = refusal_with(ReasonCode::BAD_USER_NAME_OR_PASSWORD, true, true);
        assert!(cause.contains("bad user name or password"), "{cause}");
        assert!(fix.contains("moat user add"), "{fix}");
        let (cause, fix) = refusal_with(ReasonCode::NOT_AUTHORIZED, false, false);
        assert!(cause.contains("not authorized"), "{cause}");
        assert!(fix.contains("anonymous"), "{fix}");
    }
}
