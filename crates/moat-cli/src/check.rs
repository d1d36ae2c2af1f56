//! `moat check URL`: diagnose a TLS/MQTT connection step by step.
//!
//! Steps, one line each: resolve, TCP connect, TLS handshake, the server certificate, the
//! client certificate, the WebSocket upgrade, CONNECT, and a SUBSCRIBE + PUBLISH round trip on
//! a private topic. A failed step prints its cause in plain words and the fix; the steps after
//! it that cannot run are not printed. Exit code 1 when any step failed.
//!
//! The TLS step records the chain the server presented even when verification fails, and
//! the certificate step then explains the failure with [`moat_pki::diagnose`]: from the
//! certificates themselves (v1, CN-only, the name, expiry, the chain up to the CA file), not
//! from the verifier's one-word error. Each such cause ends with its code (`[name-mismatch]`),
//! the one `moat cert lint` and the broker's handshake log use for the same fact.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use moat_client::transport::{self, BoxStream, Observer, Target, TlsObservations, TransportError};
use moat_client::{
    Client, ClientError, ConnAck, ConnectOptions, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, SubscriptionOptions,
};
use moat_pki::diagnose::{self, ClientCert, Diagnosis, Rejection, ServerChain};
use moat_pki::inspect::{CertInfo, San};
use moat_pki::Purpose;

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
    /// The name to ask the broker for in the TLS handshake (SNI) and to verify its
    /// certificate against, instead of the URL's host: checks a listener's SNI certificate
    /// set while dialing another address (e.g. mqtts://127.0.0.1 --servername b.example).
    #[arg(long, value_name = "NAME")]
    servername: Option<String>,
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
        server_name: args.servername.clone(),
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

    /// A failed step explained by moat-pki's diagnosis: the cause, its code, the fix.
    fn diagnosed(&mut self, step: &str, d: &Diagnosis) {
        self.failures += 1;
        println!("✗ {step}: {} [{}]", d.cause, d.code);
        if let Some(fix) = &d.fix {
            println!("    fix: {fix}");
        }
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
    /// `--servername`: the name asked for and verified instead of the URL's host.
    server_name: Option<String>,
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
        let name = self.server_name.clone().unwrap_or_else(|| t.host.clone());
        match transport::tls_handshake(tcp, config, &name, self.limit).await {
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
                    let asked = match &self.server_name {
                        Some(n) => format!(", server name {n}"),
                        None => String::new(),
                    };
                    self.report.ok(
                        "TLS handshake",
                        &format!("{version}, {suite}{asked} ({:.1} ms)", ms(start.elapsed())),
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
                leaf.issuer_short_name(),
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
                let ca_file = self.cafile.as_ref().map(|p| p.display().to_string());
                let mut found = diagnose::server_chain(&ServerChain {
                    presented: &seen.server_chain,
                    anchors: &self.anchors,
                    ca_file: ca_file.as_deref(),
                    host: self.server_name.as_deref().unwrap_or(&t.host),
                    now: SystemTime::now(),
                });
                if let Some(asked) = &self.server_name {
                    // The diagnosis speaks of the name dialed: here it is the name asked for.
                    for d in &mut found {
                        d.cause = d.cause.replace(
                            &format!("you dialed {asked}"),
                            &format!("you asked for {asked} (--servername; dialed {})", t.host),
                        );
                    }
                }
                if found.is_empty() {
                    found.extend(
                        certificate_rejection(err).map(|r| diagnose::rejection(Purpose::Server, r)),
                    );
                }
                if found.is_empty() {
                    self.report.fail(
                        "server certificate",
                        &Problem::new(
                            format!("refused by the verifier: {err:?}"),
                            "run `moat cert lint --cert server.pem --host HOST` on the broker's files",
                        ),
                    );
                }
                for d in &found {
                    self.report.diagnosed("server certificate", d);
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
                        self.report
                            .diagnosed("client certificate", &client_cert_missing());
                        return;
                    }
                    _ => Problem::new(
                        format!(
                            "the server closed the connection during the TLS handshake ({})",
                            common::chain(e)
                        ),
                        format!(
                            "is {} a TLS port (plain MQTT is usually 1883, TLS 8883)? Does the \
                             broker offer TLS 1.2 or 1.3? Its log says why it hung up, e.g. \
                             reason=crl_stale: a listener with crl_stale = \"fail_closed\" \
                             refuses every handshake while a CRL is past its next update (sign \
                             a fresh one: `moat cert crl --ca DIR`), or \
                             reason=no_server_certificate.",
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
                self.report.diagnosed(step, &client_cert_missing());
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
                self.client_cert_refused(alert, seen);
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

    /// The broker refused the client certificate: why, from the certificate and the CAs the
    /// broker named, else from its alert.
    fn client_cert_refused(&mut self, alert: rustls::AlertDescription, seen: &TlsObservations) {
        let step = "client certificate";
        let words = common::alert_words(alert);
        let ours: Vec<Vec<u8>> = self
            .client_cert
            .as_deref()
            .and_then(|p| transport::read_certificates(p).ok())
            .map(|c| c.into_iter().map(|d| d.as_ref().to_vec()).collect())
            .unwrap_or_default();
        let mut found = diagnose::client_certificate(&ClientCert {
            presented: &ours,
            accepted_issuers: &seen.acceptable_issuers,
            now: SystemTime::now(),
        });
        if found.is_empty() {
            found.extend(alert_rejection(alert).map(|r| diagnose::rejection(Purpose::Client, r)));
        }
        let leaf = ours.first().and_then(|d| CertInfo::from_der(d).ok());
        if found.is_empty() {
            let mut cause = format!("the server refused the client certificate (alert: {words})");
            if let Some(c) = &leaf {
                cause.push_str(&format!(
                    ": {} was issued by {}",
                    c.short_name(),
                    c.issuer_short_name()
                ));
            }
            let accepted = accepted_issuers(seen);
            if !accepted.is_empty() {
                cause.push_str(&format!(
                    "; the broker accepts certificates from {accepted}"
                ));
            }
            self.report.fail(
                step,
                &Problem::new(
                    cause,
                    "use a client certificate issued by the CA in the broker's client_ca \
                     (mosquitto: cafile), valid now, with clientAuth usage: moat cert client \
                     --ca DIR --cn ID",
                ),
            );
            return;
        }
        let name = leaf
            .map(|c| format!(" {}", c.short_name()))
            .unwrap_or_default();
        self.report.note_failed(
            step,
            &format!("the server refused the client certificate{name} (alert: {words})"),
        );
        for d in &found {
            self.report.diagnosed(step, d);
        }
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
                            .diagnosed("client certificate", &client_cert_missing());
                    }
                    Some(rustls::Error::AlertReceived(a)) if seen.client_cert_sent => {
                        self.client_cert_refused(a, &seen);
                    }
                    Some(rustls::Error::AlertReceived(_))
                        if seen.client_cert_requested && !seen.client_cert_sent =>
                    {
                        self.report
                            .diagnosed("client certificate", &client_cert_missing());
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
                            .diagnosed("client certificate", &client_cert_missing());
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

    /// The short name of the client certificate given with --cert, or "the certificate".
    fn client_cert_name(&self) -> String {
        self.client_cert
            .as_deref()
            .and_then(|p| transport::read_certificates(p).ok())
            .and_then(|c| c.first().and_then(|d| CertInfo::from_der(d).ok()))
            .map_or_else(|| "the certificate".into(), |c| c.short_name())
    }

    fn client_cert_accepted(&mut self, seen: &TlsObservations) {
        let step = "client certificate";
        match (seen.client_cert_requested, seen.client_cert_sent) {
            (true, true) => {
                let name = self.client_cert_name();
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
            // A moat listener with client_id = "certificate" takes the client id from the
            // certificate: another id is refused with 0x85 (v3: 2).
            ClientError::Refused(rc)
                if *rc == ReasonCode::CLIENT_IDENTIFIER_NOT_VALID && self.client_cert.is_some() =>
            {
                let name = self.client_cert_name();
                Problem::new(
                    format!(
                        "client id {:?} refused (reason code 0x85): on a listener with \
                         client_id = \"certificate\" the client id must be the certificate's \
                         identity ({name}) or empty, so one device cannot take over another's \
                         session",
                        self.id
                    ),
                    "use the certificate's identity as the client id (-i), or send none; \
                     otherwise the broker refuses this id for another reason: its log says which",
                )
            }
            ClientError::Refused(rc)
                if *rc == ReasonCode::NOT_AUTHORIZED
                    && self.target.scheme.is_tls()
                    && self.client_cert.is_none() =>
            {
                let (cause, fix) =
                    common::refusal_with(*rc, has_credentials, self.password.is_some());
                Problem::new(
                    format!(
                        "{cause}; a listener with client_id = \"certificate\" also refuses \
                         every client without a certificate identity"
                    ),
                    format!("{fix}; or give a client certificate (--cert/--key)"),
                )
            }
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

fn client_cert_missing() -> Diagnosis {
    diagnose::rejection(Purpose::Client, Rejection::NoCertificate)
}

/// What the server's alert says about the client certificate, when it names a fact.
fn alert_rejection(alert: rustls::AlertDescription) -> Option<Rejection> {
    use rustls::AlertDescription as A;
    match alert {
        A::UnknownCA => Some(Rejection::UnknownIssuer),
        A::CertificateExpired => Some(Rejection::Expired),
        A::CertificateRevoked => Some(Rejection::Revoked),
        A::CertificateRequired => Some(Rejection::NoCertificate),
        _ => None,
    }
}

/// What this client's verifier said about the server certificate, when it names a fact.
fn certificate_rejection(e: &rustls::CertificateError) -> Option<Rejection> {
    use rustls::CertificateError as E;
    match e {
        E::UnknownIssuer => Some(Rejection::UnknownIssuer),
        E::Expired | E::ExpiredContext { .. } => Some(Rejection::Expired),
        E::NotValidYet | E::NotValidYetContext { .. } => Some(Rejection::NotYetValid),
        E::Revoked => Some(Rejection::Revoked),
        E::NotValidForName | E::NotValidForNameContext { .. } => Some(Rejection::NameMismatch),
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => Some(Rejection::WrongPurpose),
        _ => None,
    }
}

/// The names the broker accepts client certificates from (CertificateRequest hints).
fn accepted_issuers(seen: &TlsObservations) -> String {
    seen.acceptable_issuers
        .iter()
        .filter_map(|dn| moat_pki::inspect::describe_name(dn))
        .collect::<Vec<_>>()
        .join(", ")
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "SAN a, b" or "no SAN".
fn names(c: &CertInfo) -> String {
    if c.has_san {
        let sans: Vec<String> = c.sans.iter().map(San::value).collect();
        format!("SAN {}", sans.join(", "))
    } else {
        "no SAN".into()
    }
}
