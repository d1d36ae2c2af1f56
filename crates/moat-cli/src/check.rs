//! `moat check URL`: diagnose a TLS/MQTT connection step by step.
//!
//! Steps, one line each: resolve, TCP connect, TLS handshake, the server certificate, the
//! client certificate, the WebSocket upgrade, CONNECT, and a SUBSCRIBE + PUBLISH round trip on
//! a private topic. A failed step prints its cause in plain words and the fix; the steps after
//! it that cannot run are not printed. Exit code 1 when any step failed.
//!
//! The TLS step records the chain the server presented even when verification fails, and
//! the certificate step then explains the failure from the certificates themselves (v1,
//! CN-only, the name, expiry, the chain up to the CA file), not from the verifier's one-word
//! error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use moat_client::transport::{self, BoxStream, Observer, Target, TlsObservations, TransportError};
use moat_client::{
    Client, ClientError, ConnAck, ConnectOptions, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, SubscriptionOptions,
};
use moat_pki::inspect::{CertInfo, San};

use crate::pubsub::common::{self, TlsArgs};

/// Flags of `moat check`.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// The broker: mqtt://, mqtts://, ws:// or wss:// [user[:password]@]host[:port][/path].
    url: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// User name.
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password (visible to `ps`: prefer --password-file).
    #[arg(short = 'P', long = "pw")]
    password: Option<String>,
    /// Read the password from the first line of this file.
    #[arg(long, value_name = "FILE", conflicts_with = "password")]
    password_file: Option<PathBuf>,
    /// MQTT version: mqttv5 (default; falls back to 3.1.1 if the broker refuses it), mqttv311.
    #[arg(short = 'V', long = "protocol-version", value_parser = common::parse_version)]
    version: Option<ProtocolVersion>,
    /// Client id (default moat-check-RANDOM).
    #[arg(short = 'i', long = "id")]
    id: Option<String>,
    /// Topic for the round trip (default moat/check/RANDOM).
    #[arg(short = 't', long)]
    topic: Option<String>,
    /// Seconds each step may take.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

/// Runs `moat check`.
pub(crate) fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let target = transport::parse_url(&args.url)?;
    let tls = args.tls.options()?;
    let username = args.username.clone().or_else(|| target.username.clone());
    if args.password.is_some() {
        common::warn_password_flag(false);
    }
    let password = match (&args.password, &args.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(common::read_password_file(f)?),
        (None, None) => target.password.clone(),
    };
    // Files are checked before any network step: a typo in a path is a usage error.
    let observer = Observer::new();
    let config = if target.scheme.is_tls() {
        Some(transport::client_config(&tls, Some(&observer))?)
    } else {
        None
    };
    let anchors = if target.scheme.is_tls() {
        let roots = match &tls.cafile {
            Some(p) => transport::read_certificates(p)?,
            None => Vec::new(),
        };
        roots.into_iter().map(|c| c.as_ref().to_vec()).collect()
    } else {
        Vec::new()
    };
    let checker = Checker {
        target,
        config,
        observer,
        anchors,
        cafile: tls.cafile.clone(),
        client_cert: tls.cert.clone(),
        username,
        password,
        version: args.version,
        id: args
            .id
            .clone()
            .unwrap_or_else(|| format!("moat-check-{}", common::random_suffix())),
        topic: args
            .topic
            .clone()
            .unwrap_or_else(|| format!("moat/check/{}", common::random_suffix())),
        limit: Duration::from_secs(args.timeout.max(1)),
        report: Report::default(),
    };
    let rt = common::runtime(1)?;
    let report = rt.block_on(checker.run());
    Ok(report.finish())
}

/// What was printed, and how many steps failed.
#[derive(Default)]
struct Report {
    failures: usize,
    warnings: usize,
}

impl Report {
    fn ok(&mut self, step: &str, detail: &str) {
        println!("✓ {step}: {detail}");
    }

    fn info(&mut self, step: &str, detail: &str) {
        println!("- {step}: {detail}");
    }

    fn warn(&mut self, step: &str, detail: &str) {
        self.warnings += 1;
        println!("! {step}: {detail}");
    }

    /// A failed step whose cause the next line gives (not counted twice).
    fn note_failed(&mut self, step: &str, detail: &str) {
        println!("✗ {step}: {detail}");
    }

    fn fail(&mut self, step: &str, problem: &Problem) {
        self.failures += 1;
        println!("✗ {step}: {}", problem.cause);
        if let Some(fix) = &problem.fix {
            println!("    fix: {fix}");
        }
    }

    fn finish(self) -> ExitCode {
        if self.failures == 0 {
            if self.warnings == 0 {
                println!("all checks passed");
            } else {
                println!("all checks passed, with {} warning(s)", self.warnings);
            }
            ExitCode::SUCCESS
        } else {
            println!(
                "{} problem{} found",
                self.failures,
                if self.failures == 1 { "" } else { "s" }
            );
            ExitCode::from(1)
        }
    }
}

/// A cause in plain words and its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    cause: String,
    fix: Option<String>,
}

impl Problem {
    fn new(cause: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            cause: cause.into(),
            fix: Some(fix.into()),
        }
    }

    fn bare(cause: impl Into<String>) -> Self {
        Self {
            cause: cause.into(),
            fix: None,
        }
    }
}

struct Checker {
    target: Target,
    config: Option<std::sync::Arc<rustls::ClientConfig>>,
    observer: Observer,
    /// The CA file's certificates (empty: the system bundle, or no TLS).
    anchors: Vec<Vec<u8>>,
    cafile: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    username: Option<String>,
    password: Option<String>,
    version: Option<ProtocolVersion>,
    id: String,
    topic: String,
    limit: Duration,
    report: Report,
}

impl Checker {
    async fn run(mut self) -> Report {
        println!("moat check {}", self.target);
        let Some(io) = self.open(true).await else {
            return self.report;
        };
        let Some(client) = self.connect(io).await else {
            return self.report;
        };
        self.round_trip(&client).await;
        let _ = client.disconnect().await;
        self.report
    }

    /// Resolve, TCP, TLS (with the certificate steps) and WebSocket; `None` after a failure.
    /// With `loud` false (a reconnect) only failures are printed.
    async fn open(&mut self, loud: bool) -> Option<BoxStream> {
        let t = self.target.clone();
        let t = &t;
        let start = Instant::now();
        let addrs = match transport::resolve(&t.host, t.port, self.limit).await {
            Ok(a) => a,
            Err(e) => {
                let p = match &e {
                    TransportError::Timeout { .. } => Problem::new(
                        format!("no answer from the resolver for {} in time", t.host),
                        "check the DNS servers of this machine, or dial an IP address",
                    ),
                    _ => Problem::new(
                        format!("{}: {}", t.host, common::chain(&e)),
                        "check the spelling, /etc/hosts or DNS; or dial the broker's IP address",
                    ),
                };
                self.report.fail("resolve", &p);
                return None;
            }
        };
        if loud {
            let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            self.report
                .ok("resolve", &format!("{} -> {}", t.host, list.join(", ")));
        }
        let tcp = match transport::connect_tcp(&addrs, self.limit).await {
            Ok(s) => s,
            Err(e) => {
                let p = match &e {
                    TransportError::Connect { addr, source }
                        if source.kind() == std::io::ErrorKind::ConnectionRefused =>
                    {
                        Problem::new(
                            format!(
                                "connection refused by {addr}: nothing listens on port {}",
                                t.port
                            ),
                            format!(
                                "start the broker, or check the port: {} is usual for {}://",
                                t.scheme.default_port(),
                                t.scheme
                            ),
                        )
                    }
                    TransportError::Timeout { .. } => Problem::new(
                        format!(
                            "no answer from {} within {} s",
                            t.authority(),
                            self.limit.as_secs()
                        ),
                        "a firewall may drop the packets, or the address is wrong",
                    ),
                    _ => Problem::bare(common::chain(&e)),
                };
                self.report.fail("TCP connect", &p);
                return None;
            }
        };
        if loud {
            let peer = tcp
                .peer_addr()
                .map_or_else(|_| t.authority(), |a| a.to_string());
            self.report.ok(
                "TCP connect",
                &format!("{peer} ({:.1} ms)", ms(start.elapsed())),
            );
        }
        if !t.scheme.is_tls() {
            return if t.scheme.is_ws() {
                self.upgrade(tcp, loud).await
            } else {
                Some(Box::new(tcp))
            };
        }
        let config = self.config.clone()?;
        let start = Instant::now();
        match transport::tls_handshake(tcp, config, &t.host, self.limit).await {
            Ok(tls) => {
                if loud {
                    let (_, conn) = tls.get_ref();
                    let version = conn
                        .protocol_version()
                        .map_or_else(|| "TLS".into(), |v| format!("{v:?}").replace('_', "."));
                    let suite = conn
                        .negotiated_cipher_suite()
                        .map(|s| format!("{:?}", s.suite()))
                        .unwrap_or_default();
                    self.report.ok(
                        "TLS handshake",
                        &format!("{version}, {suite} ({:.1} ms)", ms(start.elapsed())),
                    );
                    self.certificate_ok();
                }
                if t.scheme.is_ws() {
                    self.upgrade(tls, loud).await
                } else {
                    Some(Box::new(tls))
                }
            }
            Err(e) => {
                self.tls_failed(&e);
                None
            }
        }
    }

    async fn upgrade<IO>(&mut self, io: IO, loud: bool) -> Option<BoxStream>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match transport::websocket(io, &self.target, self.limit).await {
            Ok(s) => {
                if loud {
                    self.report.ok(
                        "WebSocket upgrade",
                        &format!("{} (subprotocol mqtt)", self.target.path),
                    );
                }
                Some(s)
            }
            Err(e) => {
                let p =
                    Problem::new(
                        common::chain(&e),
                        format!(
                        "check the path ({} now: most brokers use /mqtt) and that port {} is a \
                         WebSocket listener{}",
                        self.target.path,
                        self.target.port,
                        if self.target.scheme.is_tls() { "" } else { " (for TLS use wss://)" }
                    ),
                    );
                self.report.fail("WebSocket upgrade", &p);
                None
            }
        }
    }

    /// The certificate step after a handshake that verified.
    fn certificate_ok(&mut self) {
        let seen = self.observer.snapshot();
        let Some(leaf) = seen
            .server_chain
            .first()
            .and_then(|d| CertInfo::from_der(d).ok())
        else {
            self.report
                .ok("server certificate", "verified (it could not be described)");
            return;
        };
        let now = now_unix();
        let days = (leaf.not_after_unix - now) / 86_400;
        self.report.ok(
            "server certificate",
            &format!(
                "{} for {}, issued by {}, valid until {} ({days} days)",
                leaf.short_name(),
                names(&leaf),
                issuer_name(&leaf),
                leaf.not_after
            ),
        );
        if days < 30 {
            self.report.warn(
                "server certificate",
                &format!("expires in {days} days: renew it soon"),
            );
        }
    }

    /// The TLS step failed: say why, from the recorded chain when there is one.
    fn tls_failed(&mut self, e: &TransportError) {
        let seen = self.observer.snapshot();
        let t = self.target.clone();
        match e.tls_error() {
            Some(rustls::Error::InvalidCertificate(err)) => {
                self.report.note_failed(
                    "TLS handshake",
                    "this client refused the server certificate (see below)",
                );
                let problems = diagnose(
                    &seen.server_chain,
                    &self.anchors,
                    self.cafile.as_deref(),
                    &t.host,
                    now_unix(),
                );
                if problems.is_empty() {
                    self.report.fail(
                        "server certificate",
                        &Problem::new(
                            format!("refused by the verifier: {err:?}"),
                            "run `moat cert lint --cert server.pem --host HOST` on the broker's files",
                        ),
                    );
                }
                for p in problems {
                    self.report.fail("server certificate", &p);
                }
            }
            Some(rustls::Error::AlertReceived(alert)) => {
                self.report_alert_in_handshake(*alert, &seen);
            }
            Some(rustls::Error::InvalidMessage(_)) => self.report.fail(
                "TLS handshake",
                &Problem::new(
                    format!("the server on {} does not answer with TLS", t.authority()),
                    format!(
                        "this looks like a plain MQTT port: use mqtt://{} , or the broker's TLS \
                         port (usually 8883)",
                        t.authority()
                    ),
                ),
            ),
            Some(rustls::Error::PeerIncompatible(why)) => self.report.fail(
                "TLS handshake",
                &Problem::new(
                    format!("the server and this client have nothing in common: {why:?}"),
                    "the broker must offer TLS 1.2 or 1.3 with modern cipher suites",
                ),
            ),
            Some(other) => self.report.fail(
                "TLS handshake",
                &Problem::bare(format!("TLS error: {other}")),
            ),
            None => {
                let p = match e {
                    TransportError::Timeout { .. } => Problem::new(
                        format!("no TLS answer from {} in time", t.authority()),
                        "is this a TLS port? A plain MQTT port waits for CONNECT and never \
                         answers a TLS hello",
                    ),
                    TransportError::InvalidUrl { .. } => Problem::bare(common::chain(e)),
                    _ if seen.client_cert_requested && !seen.client_cert_sent => {
                        client_cert_missing()
                    }
                    _ => Problem::new(
                        format!(
                            "the server closed the connection during the TLS handshake ({})",
                            common::chain(e)
                        ),
                        format!(
                            "is {} a TLS port (plain MQTT is usually 1883, TLS 8883)? Does the \
                             broker offer TLS 1.2 or 1.3? Its log says why it hung up.",
                            t.authority()
                        ),
                    ),
                };
                self.report.fail("TLS handshake", &p);
            }
        }
    }

    fn report_alert_in_handshake(
        &mut self,
        alert: rustls::AlertDescription,
        seen: &TlsObservations,
    ) {
        use rustls::AlertDescription as A;
        let words = common::alert_words(alert);
        if seen.client_cert_requested {
            let step = "client certificate";
            if !seen.client_cert_sent {
                self.report.fail(step, &client_cert_missing());
                return;
            }
            if matches!(
                alert,
                A::UnknownCA
                    | A::BadCertificate
                    | A::CertificateExpired
                    | A::CertificateRevoked
                    | A::CertificateUnknown
                    | A::UnsupportedCertificate
                    | A::AccessDenied
                    | A::HandshakeFailure
                    | A::DecryptError
            ) {
                self.report
                    .fail(step, &self.client_cert_refused(&words, seen));
                return;
            }
        }
        let p = match alert {
            A::ProtocolVersion => Problem::new(
                "the server refused the TLS version (alert: protocol version)",
                "the broker must allow TLS 1.2 or 1.3 (older versions are not offered)",
            ),
            A::HandshakeFailure => Problem::new(
                "the server refused the handshake (alert: handshake failure)",
                "no common cipher suite or signature scheme, or the broker wants a client \
                 certificate: check its TLS settings and log",
            ),
            A::NoApplicationProtocol => Problem::new(
                "the server wants an ALPN protocol this client does not offer",
                "check the broker's ALPN settings",
            ),
            _ => Problem::bare(format!("the server ended the handshake (alert: {words})")),
        };
        self.report.fail("TLS handshake", &p);
    }

    fn client_cert_refused(&self, words: &str, seen: &TlsObservations) -> Problem {
        let ours = self
            .client_cert
            .as_deref()
            .and_then(|p| transport::read_certificates(p).ok())
            .and_then(|c| c.first().and_then(|d| CertInfo::from_der(d).ok()));
        let mut cause = format!("the server refused the client certificate (alert: {words})");
        if let Some(c) = &ours {
            cause.push_str(&format!(
                ": {} was issued by {}",
                c.short_name(),
                issuer_name(c)
            ));
            if c.not_after_unix < now_unix() {
                cause.push_str(&format!(" and expired on {}", c.not_after));
            }
        }
        let accepted = accepted_issuers(seen);
        if !accepted.is_empty() {
            cause.push_str(&format!(
                "; the broker accepts certificates from {accepted}"
            ));
        }
        Problem::new(
            cause,
            "use a client certificate issued by the CA in the broker's client_ca (mosquitto: \
             cafile), valid now, with clientAuth usage: moat cert client --ca DIR --cn ID",
        )
    }

    /// CONNECT (v5 first unless -V says otherwise); also decides the client certificate step.
    async fn connect(&mut self, io: BoxStream) -> Option<Client> {
        let version = self.version.unwrap_or(ProtocolVersion::V5);
        let mut result = self.try_connect(io, version).await;
        let mut used = version;
        if self.version.is_none()
            && matches!(
                result,
                Err(ClientError::Refused(
                    ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
                ))
            )
        {
            self.report
                .info("CONNECT", "the broker does not speak MQTT 5; trying 3.1.1");
            let io = self.open(false).await?;
            used = ProtocolVersion::V3_1_1;
            result = self.try_connect(io, used).await;
        }
        let seen = self.observer.snapshot();
        let tls = self.target.scheme.is_tls();
        match result {
            Ok((client, connack, elapsed)) => {
                if tls {
                    self.client_cert_accepted(&seen);
                }
                let mut detail = format!(
                    "accepted, MQTT {used}, as {} ({:.1} ms)",
                    self.who(),
                    ms(elapsed)
                );
                if let Some(id) = &connack.properties.assigned_client_identifier {
                    detail.push_str(&format!(", assigned client id {id}"));
                }
                self.report.ok("CONNECT", &detail);
                Some(client)
            }
            Err(ClientError::Io(e)) if transport::rustls_error(&e).is_some() => {
                let alert = transport::rustls_error(&e).cloned();
                match alert {
                    Some(rustls::Error::AlertReceived(
                        rustls::AlertDescription::CertificateRequired,
                    )) => {
                        self.report
                            .fail("client certificate", &client_cert_missing());
                    }
                    Some(rustls::Error::AlertReceived(a)) if seen.client_cert_sent => {
                        let words = common::alert_words(a);
                        let p = self.client_cert_refused(&words, &seen);
                        self.report.fail("client certificate", &p);
                    }
                    Some(rustls::Error::AlertReceived(a))
                        if seen.client_cert_requested && !seen.client_cert_sent =>
                    {
                        let _ = a;
                        self.report
                            .fail("client certificate", &client_cert_missing());
                    }
                    Some(other) => self
                        .report
                        .fail("CONNECT", &Problem::bare(common::explain_tls_alert(&other))),
                    None => {}
                }
                None
            }
            Err(e) => {
                if tls && seen.client_cert_requested && !seen.client_cert_sent {
                    // A broker that closes without an alert after asking for a certificate
                    // (TLS 1.2 implementations, some proxies).
                    if matches!(e, ClientError::Disconnected(None) | ClientError::Io(_)) {
                        self.report
                            .fail("client certificate", &client_cert_missing());
                        return None;
                    }
                }
                if tls {
                    self.client_cert_accepted(&seen);
                }
                let p = self.connect_problem(&e, used);
                self.report.fail("CONNECT", &p);
                None
            }
        }
    }

    async fn try_connect(
        &self,
        io: BoxStream,
        version: ProtocolVersion,
    ) -> Result<(Client, ConnAck, Duration), ClientError> {
        let mut opts = ConnectOptions::new(self.id.clone())
            .protocol(version)
            .keep_alive(30);
        opts.connect_timeout = self.limit;
        opts.username.clone_from(&self.username);
        opts.password = self.password.clone().map(Bytes::from);
        let start = Instant::now();
        let (client, connack) = Client::connect(io, opts).await?;
        Ok((client, connack, start.elapsed()))
    }

    fn who(&self) -> String {
        match &self.username {
            Some(u) => format!("user {u:?}, client id {}", self.id),
            None => format!("client id {} (no user name)", self.id),
        }
    }

    fn client_cert_accepted(&mut self, seen: &TlsObservations) {
        let step = "client certificate";
        match (seen.client_cert_requested, seen.client_cert_sent) {
            (true, true) => {
                let name = self
                    .client_cert
                    .as_deref()
                    .and_then(|p| transport::read_certificates(p).ok())
                    .and_then(|c| c.first().and_then(|d| CertInfo::from_der(d).ok()))
                    .map_or_else(|| "the certificate".into(), |c| c.short_name());
                self.report.ok(step, &format!("{name} sent and accepted"));
            }
            (true, false) => self.report.info(
                step,
                "the broker asks for one (optional) and none was given; it went on without",
            ),
            (false, _) if self.client_cert.is_some() => self.report.warn(
                step,
                "the broker did not ask for a client certificate: --cert was not used",
            ),
            (false, _) => self.report.info(step, "not requested by the broker"),
        }
    }

    fn connect_problem(&self, e: &ClientError, version: ProtocolVersion) -> Problem {
        let has_credentials = self.username.is_some() || self.client_cert.is_some();
        match e {
            ClientError::Refused(rc) => {
                let (cause, fix) =
                    common::refusal_with(*rc, has_credentials, self.password.is_some());
                Problem::new(cause, fix)
            }
            ClientError::Timeout(_) => Problem::new(
                format!("no CONNACK within {} s", self.limit.as_secs()),
                if self.target.scheme.is_tls() {
                    "the broker accepted TLS but does not answer MQTT: check its log".to_owned()
                } else {
                    "is this an MQTT port? A TLS port waits for a TLS hello: try mqtts://"
                        .to_owned()
                },
            ),
            ClientError::Decode(_) | ClientError::Protocol(_) if !self.target.scheme.is_tls() => {
                Problem::new(
                    "the server answered with something that is not MQTT",
                    format!(
                        "if {} is a TLS port, use mqtts://{}",
                        self.target.authority(),
                        self.target.authority()
                    ),
                )
            }
            ClientError::Disconnected(None) | ClientError::Io(_) => Problem::new(
                format!(
                    "the broker closed the connection after CONNECT without a CONNACK ({})",
                    common::chain(e)
                ),
                format!(
                    "the broker may refuse MQTT {version} (try -V mqttv311), this client id, or \
                     {}: its log says which",
                    if self.target.scheme.is_tls() {
                        "this client certificate"
                    } else {
                        "plain connections on this port (is it a TLS port? try mqtts://)"
                    }
                ),
            ),
            other => Problem::bare(common::chain(other)),
        }
    }

    /// SUBSCRIBE + PUBLISH on the private topic, and wait for the message.
    async fn round_trip(&mut self, client: &Client) {
        let step = "round trip";
        let topic = self.topic.clone();
        let start = Instant::now();
        let opts = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..SubscriptionOptions::default()
        };
        let suback =
            match tokio::time::timeout(self.limit, client.subscribe(&[(topic.as_str(), opts)]))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    self.report.fail(
                        step,
                        &Problem::bare(format!("SUBSCRIBE failed: {}", common::chain(&e))),
                    );
                    return;
                }
                Err(_) => {
                    self.report.fail(
                        step,
                        &Problem::new(
                            format!("no SUBACK within {} s", self.limit.as_secs()),
                            "the broker is overloaded or stuck: check its log",
                        ),
                    );
                    return;
                }
            };
        if let Some(rc) = suback.reason_codes.first().filter(|rc| rc.is_error()) {
            let what = if *rc == ReasonCode::NOT_AUTHORIZED || rc.0 == 0x80 {
                "not authorized: denied by the broker's ACL"
            } else {
                rc.description()
            };
            self.report.fail(
                step,
                &Problem::new(
                    format!(
                        "SUBSCRIBE to {topic} refused ({what}, reason code 0x{:02X})",
                        rc.0
                    ),
                    format!(
                        "the broker's ACL does not let {} subscribe to {topic}: allow moat/check/# \
                         for it (mosquitto acl_file: `topic readwrite moat/check/#`), or pass -t \
                         with a topic it may use",
                        self.who()
                    ),
                ),
            );
            return;
        }
        let payload = Bytes::from(format!("moat check {}", common::random_suffix()));
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.clone(),
            packet_id: None,
            properties: Properties::default(),
            payload: payload.clone(),
        };
        let outcome = match tokio::time::timeout(self.limit, client.publish_with(publish)).await {
            Ok(Err(ClientError::PublishRejected(rc))) => Ok(Ok(rc)),
            other => other,
        };
        match outcome {
            Ok(Ok(rc)) if rc.is_error() => {
                self.report.fail(
                    step,
                    &Problem::new(
                        format!(
                            "PUBLISH to {topic} refused ({}, reason code 0x{:02X}): denied by \
                             the broker's ACL",
                            rc.description(),
                            rc.0
                        ),
                        format!(
                            "the broker's ACL does not let {} publish to {topic}: allow it, or \
                             pass -t with a topic it may use",
                            self.who()
                        ),
                    ),
                );
                return;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                self.report.fail(
                    step,
                    &Problem::bare(format!("PUBLISH failed: {}", common::chain(&e))),
                );
                return;
            }
            Err(_) => {
                self.report.fail(
                    step,
                    &Problem::new(
                        format!("no PUBACK within {} s", self.limit.as_secs()),
                        "the broker is overloaded or stuck: check its log",
                    ),
                );
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + self.limit;
        loop {
            match tokio::time::timeout_at(deadline, client.recv()).await {
                Ok(Ok(Some(m))) if m.topic == topic && m.payload == payload => {
                    self.report.ok(
                        step,
                        &format!(
                            "SUBSCRIBE + PUBLISH on {topic} (QoS 1): the message came back in \
                             {:.1} ms",
                            ms(start.elapsed())
                        ),
                    );
                    let _ = client.unsubscribe(&[topic.as_str()]).await;
                    return;
                }
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) | Ok(Err(_)) => {
                    self.report.fail(
                        step,
                        &Problem::bare("the broker closed the connection during the round trip"),
                    );
                    return;
                }
                Err(_) => {
                    self.report.fail(
                        step,
                        &Problem::new(
                            format!(
                                "the message published to {topic} did not come back within {} s \
                                 (denied by the broker's ACL? mosquitto drops denied publishes \
                                 silently)",
                                self.limit.as_secs()
                            ),
                            format!(
                                "check that the ACL lets {} both publish and subscribe to {topic}",
                                self.who()
                            ),
                        ),
                    );
                    return;
                }
            }
        }
    }
}

fn client_cert_missing() -> Problem {
    Problem::new(
        "the broker requires a client certificate and none was given",
        "add --cert CLIENT.pem --key CLIENT.key, issued by the CA the broker trusts for clients \
         (moat cert client --ca DIR --cn ID)",
    )
}

/// The names the broker accepts client certificates from (CertificateRequest hints).
fn accepted_issuers(seen: &TlsObservations) -> String {
    seen.acceptable_issuers
        .iter()
        .filter_map(|dn| describe_dn(dn))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A DER distinguished name in words (CN if any), best effort: find the CN attribute
/// (OID 2.5.4.3) and take its string.
fn describe_dn(dn: &[u8]) -> Option<String> {
    const CN_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let at = dn.windows(CN_OID.len()).position(|w| w == CN_OID)?;
    let rest = dn.get(at + CN_OID.len()..)?;
    let (_tag, len) = (rest.first()?, usize::from(*rest.get(1)?));
    if len >= 0x80 {
        return None;
    }
    let value = rest.get(2..2 + len)?;
    Some(format!("CN={}", String::from_utf8_lossy(value)))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "SAN a, b" or "CN only".
fn names(c: &CertInfo) -> String {
    if c.has_san {
        let sans: Vec<String> = c.sans.iter().map(san_value).collect();
        format!("SAN {}", sans.join(", "))
    } else {
        "no SAN".into()
    }
}

fn san_value(s: &San) -> String {
    match s {
        San::Dns(d) => d.clone(),
        San::Ip(ip) => ip.to_string(),
        other => other.to_string(),
    }
}

fn issuer_name(c: &CertInfo) -> String {
    let cn = c
        .issuer
        .split(',')
        .map(str::trim)
        .find_map(|part| part.strip_prefix("CN="));
    match cn {
        Some(cn) => format!("CN={cn}"),
        None => c.issuer.clone(),
    }
}

/// The hosts a certificate should be reissued for: the one dialed first, then those it
/// already names.
fn reissue_hosts(dialed: &str, c: &CertInfo) -> String {
    let mut hosts = vec![dialed.to_owned()];
    for h in c
        .sans
        .iter()
        .filter(|s| matches!(s, San::Dns(_) | San::Ip(_)))
        .map(san_value)
        .chain(c.common_names.iter().cloned())
    {
        if !hosts.iter().any(|x| x.eq_ignore_ascii_case(&h)) {
            hosts.push(h);
        }
    }
    hosts
        .iter()
        .map(|h| format!("--host {h}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn date(unix: i64) -> String {
    moat_pki::inspect::rfc3339(unix)
}

/// Why the server's chain is not acceptable for `host`, from the certificates themselves:
/// every problem found, most basic first.
fn diagnose(
    chain: &[Vec<u8>],
    anchors: &[Vec<u8>],
    cafile: Option<&Path>,
    host: &str,
    now: i64,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(leaf_der) = chain.first() else {
        problems.push(Problem::bare("the server presented no certificate"));
        return problems;
    };
    let leaf = match CertInfo::from_der(leaf_der) {
        Ok(c) => c,
        Err(e) => {
            problems.push(Problem::new(
                format!("the server certificate cannot be parsed: {e}"),
                "reissue it: moat cert server --ca DIR --host HOST",
            ));
            return problems;
        }
    };
    let reissue = format!(
        "reissue with moat cert server --ca DIR {}",
        reissue_hosts(host, &leaf)
    );
    if leaf.version < 3 {
        problems.push(Problem::new(
            format!(
                "the server certificate ({}) is X.509 v{}, made without extensions (as `openssl \
                 x509 -req` does without -extfile): rustls, Go and browsers refuse v1 \
                 certificates, and a v1 certificate cannot carry a SAN",
                leaf.short_name(),
                leaf.version
            ),
            format!("{reissue} (or openssl x509 -req ... -extfile with subjectAltName)"),
        ));
    }
    if !moat_pki::lint::covers(&leaf, host) {
        let cn = leaf.common_names.first().cloned().unwrap_or_default();
        let p = if !leaf.has_san && cn.eq_ignore_ascii_case(host) {
            Problem::new(
                format!(
                    "the server certificate names {host} only in its CN and has no SAN: modern \
                     TLS clients ignore the CN"
                ),
                reissue.clone(),
            )
        } else if !leaf.has_san {
            Problem::new(
                format!(
                    "name mismatch: the server certificate names {} in its CN and has no SAN; \
                     you dialed {host}",
                    if cn.is_empty() { "nothing" } else { &cn }
                ),
                reissue.clone(),
            )
        } else {
            let sans: Vec<String> = leaf.sans.iter().map(san_value).collect();
            Problem::new(
                format!(
                    "name mismatch: the server certificate is for {} (SAN); you dialed {host}",
                    sans.join(", ")
                ),
                format!("dial one of those names, or {reissue}"),
            )
        };
        problems.push(p);
    }
    if leaf.not_after_unix < now {
        problems.push(Problem::new(
            format!(
                "the server certificate expired on {} ({} days ago)",
                date(leaf.not_after_unix),
                (now - leaf.not_after_unix) / 86_400
            ),
            format!("renew it and give the broker the new file: {reissue}"),
        ));
    } else if leaf.not_before_unix > now {
        problems.push(Problem::new(
            format!(
                "the server certificate is not valid yet: not before {}",
                date(leaf.not_before_unix)
            ),
            "check the clocks of the broker's machine, the CA's and this one",
        ));
    }
    if let Some(eku) = &leaf.extended_key_usage {
        if !eku.server_auth && !eku.any {
            problems.push(Problem::new(
                "the server certificate lacks the serverAuth extended key usage (it is a client \
                 certificate?)",
                reissue.clone(),
            ));
        }
    }
    if let Some(p) = chain_problem(&leaf, chain, anchors, cafile, now) {
        problems.push(p);
    }
    problems
}

/// Walks from the leaf through the presented intermediates to a certificate of the CA file.
fn chain_problem(
    leaf: &CertInfo,
    chain: &[Vec<u8>],
    anchors: &[Vec<u8>],
    cafile: Option<&Path>,
    now: i64,
) -> Option<Problem> {
    let presented: Vec<CertInfo> = chain
        .iter()
        .skip(1)
        .filter_map(|d| CertInfo::from_der(d).ok())
        .collect();
    let trusted: Vec<CertInfo> = anchors
        .iter()
        .filter_map(|d| CertInfo::from_der(d).ok())
        .collect();
    let ca_words = match cafile {
        Some(p) => format!("your CA file {}", p.display()),
        None => "the system CA bundle (no --cafile given)".into(),
    };
    let holds = if trusted.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = trusted.iter().map(CertInfo::short_name).collect();
        format!(" (it holds {})", names.join(", "))
    };
    if leaf.self_signed {
        if trusted.iter().any(|t| t.der() == leaf.der()) {
            return None;
        }
        return Some(Problem::new(
            format!(
                "the server certificate {} is self-signed: no CA issued it, so {ca_words} \
                 cannot vouch for it",
                leaf.short_name()
            ),
            "issue the broker's certificate from a CA (moat cert ca, then moat cert server) and \
             give that CA with --cafile; or, to trust this one certificate, pass it as --cafile",
        ));
    }
    let mut current = leaf.clone();
    for _ in 0..=presented.len() {
        if trusted.iter().any(|t| current.issued_by(t)) {
            // Trusted: an intermediate in the chain may still have expired.
            return presented.iter().find(|c| c.not_after_unix < now).map(|c| {
                Problem::new(
                    format!(
                        "the intermediate CA {} in the broker's chain expired on {}",
                        c.short_name(),
                        date(c.not_after_unix)
                    ),
                    "renew the intermediate CA and reissue the broker's chain file",
                )
            });
        }
        if let Some(same_name) = trusted.iter().find(|t| t.subject == current.issuer) {
            return Some(Problem::new(
                format!(
                    "unknown CA: {} names {} as its issuer, and {ca_words} has a CA of that \
                     name, but a different key signed it (was the CA made again?)",
                    current.short_name(),
                    same_name.short_name()
                ),
                "give the CA that really issued the broker's certificate with --cafile, or \
                 reissue the broker's certificate from this CA",
            ));
        }
        match presented
            .iter()
            .find(|p| current.issued_by(p) && p.der() != current.der())
        {
            Some(next) => current = next.clone(),
            None => break,
        }
    }
    let issuer = issuer_name(&current);
    if current.self_signed {
        return Some(Problem::new(
            format!(
                "unknown CA: the broker's chain ends at the root CA {}, which is not in \
                 {ca_words}{holds}",
                current.short_name()
            ),
            format!(
                "give that root CA ({}) with --cafile (ask the broker's operator for it)",
                current.short_name()
            ),
        ));
    }
    if current.der() != leaf.der() {
        return Some(Problem::new(
            format!(
                "unknown CA: the broker's chain ends at {}, issued by {issuer}, which is not in \
                 {ca_words}{holds}",
                current.short_name()
            ),
            format!("give the root CA of {issuer} with --cafile (ask the broker's operator)"),
        ));
    }
    // Only the leaf was sent and its issuer is not trusted: either an intermediate is
    // missing (the broker must send it) or the CA is another one. The issuer's name decides
    // which comes first.
    let lower = issuer.to_ascii_lowercase();
    let looks_intermediate = ["intermediate", "issuing", "sub ca", "subca", "sub-ca"]
        .iter()
        .any(|w| lower.contains(w));
    if looks_intermediate && !trusted.is_empty() {
        Some(Problem::new(
            format!(
                "chain incomplete: the broker sent only its certificate, issued by {issuer}, an \
                 intermediate CA it did not send; {ca_words}{holds} cannot link it to a root"
            ),
            format!(
                "make the broker send the intermediate: moat `chain = \"chain.pem\"` in \
                 [listeners.tls] (mosquitto: append it to certfile after the leaf); or add \
                 {issuer} to --cafile. If {issuer} is not under your CA, the CA is unknown: give \
                 the right one with --cafile"
            ),
        ))
    } else {
        Some(Problem::new(
            format!(
                "unknown CA: the server certificate was issued by {issuer}, which is not in \
                 {ca_words}{holds}"
            ),
            format!(
                "give the CA that signed the broker's certificate ({issuer}) with --cafile; if \
                 {issuer} is an intermediate CA, the chain is incomplete: the broker must send \
                 it (moat: chain = \"chain.pem\"; mosquitto: certfile with leaf then \
                 intermediate)"
            ),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::cloned_ref_to_slice_refs)]
mod tests {
    use std::time::SystemTime;

    use moat_pki::generate::{self, Ca, CaOptions, ServerOptions};
    use moat_pki::{KeyType, Validity};

    use super::*;

    fn ca(name: &str) -> Ca {
        let root = generate::root_ca(&CaOptions {
            common_name: name.into(),
            key_type: KeyType::P256,
            validity: Validity::days_from(SystemTime::now(), 30),
        })
        .unwrap();
        Ca {
            cert_der: root.cert_der,
            key: root.key,
            chain: Vec::new(),
            root: None,
        }
    }

    fn server(ca: &Ca, hosts: &[&str], validity: Validity) -> Vec<u8> {
        generate::server(
            &ServerOptions {
                hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
                key_type: KeyType::P256,
                validity,
            },
            ca,
        )
        .unwrap()
        .cert_der
    }

    fn causes(p: &[Problem]) -> String {
        p.iter()
            .map(|p| format!("{} / {}", p.cause, p.fix.clone().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_good_chain_has_no_problem() {
        let ca = ca("Test CA");
        let leaf = server(
            &ca,
            &["broker.local", "127.0.0.1"],
            Validity::days_from(SystemTime::now(), 30),
        );
        let p = diagnose(
            &[leaf],
            &[ca.cert_der.clone()],
            None,
            "127.0.0.1",
            now_unix(),
        );
        assert!(p.is_empty(), "{}", causes(&p));
    }

    #[test]
    fn name_mismatch_names_the_fix() {
        let ca = ca("Test CA");
        let leaf = server(
            &ca,
            &["other.example"],
            Validity::days_from(SystemTime::now(), 30),
        );
        let p = diagnose(
            &[leaf],
            &[ca.cert_der.clone()],
            None,
            "broker.local",
            now_unix(),
        );
        let text = causes(&p);
        assert!(text.contains("name mismatch"), "{text}");
        assert!(
            text.contains("--host broker.local --host other.example"),
            "{text}"
        );
    }

    #[test]
    fn expired_and_unknown_ca() {
        let ca1 = ca("Test CA");
        let ca2 = ca("Other CA");
        let now = SystemTime::now();
        let old = Validity {
            not_before: now - Duration::from_secs(20 * 86_400),
            not_after: now - Duration::from_secs(10 * 86_400),
        };
        let leaf = server(&ca1, &["127.0.0.1"], old);
        let text = causes(&diagnose(
            &[leaf.clone()],
            &[ca1.cert_der.clone()],
            None,
            "127.0.0.1",
            now_unix(),
        ));
        assert!(text.contains("expired on"), "{text}");
        let text = causes(&diagnose(
            &[leaf],
            &[ca2.cert_der.clone()],
            None,
            "127.0.0.1",
            now_unix(),
        ));
        assert!(text.contains("unknown CA"), "{text}");
        assert!(text.contains("CN=Other CA"), "{text}");
    }

    #[test]
    fn same_name_other_key_is_an_unknown_ca() {
        let ca1 = ca("Test CA");
        let ca2 = ca("Test CA");
        let leaf = server(
            &ca1,
            &["127.0.0.1"],
            Validity::days_from(SystemTime::now(), 30),
        );
        let text = causes(&diagnose(
            &[leaf],
            &[ca2.cert_der.clone()],
            None,
            "127.0.0.1",
            now_unix(),
        ));
        assert!(text.contains("different key"), "{text}");
    }

    #[test]
    fn missing_intermediate_is_an_incomplete_chain() {
        let root = ca("Test Root CA");
        let inter = generate::intermediate_ca(
            &CaOptions {
                common_name: "Test Intermediate CA".into(),
                key_type: KeyType::P256,
                validity: Validity::days_from(SystemTime::now(), 30),
            },
            &root,
        )
        .unwrap();
        let inter = Ca {
            cert_der: inter.cert_der,
            key: inter.key,
            chain: Vec::new(),
            root: Some(root.cert_der.clone()),
        };
        let leaf = server(
            &inter,
            &["127.0.0.1"],
            Validity::days_from(SystemTime::now(), 30),
        );
        let text = causes(&diagnose(
            &[leaf.clone()],
            &[root.cert_der.clone()],
            None,
            "127.0.0.1",
            now_unix(),
        ));
        assert!(text.contains("chain incomplete"), "{text}");
        let full = [leaf, inter.cert_der.clone()];
        let p = diagnose(
            &full,
            &[root.cert_der.clone()],
            None,
            "127.0.0.1",
            now_unix(),
        );
        assert!(p.is_empty(), "{}", causes(&p));
        let other = ca("Other Root");
        let text = causes(&diagnose(
            &full,
            &[other.cert_der.clone()],
            None,
            "127.0.0.1",
            now_unix(),
        ));
        assert!(
            text.contains("unknown CA: the broker's chain ends at CN=Test Intermediate CA"),
            "{text}"
        );
    }

    #[test]
    fn distinguished_names_in_words() {
        // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3, UTF8String "Test CA" } } }
        let dn = [
            0x30, 0x12, 0x31, 0x10, 0x30, 0x0e, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x07, b'T',
            b'e', b's', b't', b' ', b'C', b'A',
        ];
        assert_eq!(describe_dn(&dn).as_deref(), Some("CN=Test CA"));
    }
}
