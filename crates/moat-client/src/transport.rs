//! Opening a connection to a broker from a URL: TCP, TLS (rustls with the *ring* provider) and
//! WebSocket over either, for `moat pub`, `sub`, `check` and `bench`.
//!
//! - [`parse_url`] turns `mqtt://`, `mqtts://`, `ws://` and `wss://` URLs into a [`Target`].
//! - [`client_config`] builds a rustls client configuration from [`TlsOptions`] (CA file,
//!   client certificate and key, `--insecure`), optionally with an [`Observer`] that records
//!   what the handshake saw: the server's certificate chain (even when verification fails) and
//!   whether the server asked for a client certificate. `moat check` diagnoses from that.
//! - [`open`] does it all: resolve, TCP connect, TLS handshake, WebSocket upgrade; the steps
//!   are public too ([`resolve`], [`connect_tcp`], [`tls_handshake`], [`websocket`]).
//!
//! Every network step has a timeout. Nothing here speaks MQTT: pass the stream to
//! [`Client::connect`](crate::Client::connect) or [`Framed::new`](crate::Framed::new).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::ClientError;

/// How long each network step may take by default (resolve, TCP connect, TLS handshake,
/// WebSocket upgrade).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where system CA bundles usually live; the first one that exists is used when no CA file is
/// given.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The transport a URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// MQTT over TCP (`mqtt://`, port 1883).
    Mqtt,
    /// MQTT over TLS (`mqtts://`, port 8883).
    Mqtts,
    /// MQTT over WebSocket (`ws://`, port 8083).
    Ws,
    /// MQTT over WebSocket over TLS (`wss://`, port 8084).
    Wss,
}

impl Scheme {
    /// The URL scheme.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Mqtts => "mqtts",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }

    /// The usual port: 1883, 8883, 8083 or 8084.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Mqtt => 1883,
            Self::Mqtts => 8883,
            Self::Ws => 8083,
            Self::Wss => 8084,
        }
    }

    /// True for `mqtts` and `wss`.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Mqtts | Self::Wss)
    }

    /// True for `ws` and `wss`.
    pub fn is_ws(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }

    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => Some(Self::Mqtt),
            "mqtts" | "ssl" | "tls" | "mqtt+ssl" => Some(Self::Mqtts),
            "ws" => Some(Self::Ws),
            "wss" => Some(Self::Wss),
            _ => None,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A broker to connect to, as a URL describes it.
///
/// `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// The transport.
    pub scheme: Scheme,
    /// Host name or IP address, without brackets.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The WebSocket path (`/mqtt` unless the URL names one); unused for `mqtt` and `mqtts`.
    pub path: String,
    /// User name from the URL's user info.
    pub username: Option<String>,
    /// Password from the URL's user info.
    pub password: Option<String>,
    /// The topic from an `mqtt://host/topic` or `mqtts://host/topic` URL (percent-decoded).
    pub topic: Option<String>,
}

impl Target {
    /// A target with the scheme's defaults: no credentials, no topic, path `/mqtt`.
    pub fn new(scheme: Scheme, host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map_or(host.clone(), str::to_owned);
        Self {
            scheme,
            host,
            port,
            path: "/mqtt".into(),
            username: None,
            password: None,
            topic: None,
        }
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// True when the host is an IP address rather than a name.
    pub fn host_is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority())?;
        if self.scheme.is_ws() {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("scheme", &self.scheme)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("topic", &self.topic)
            .finish()
    }
}

/// Parses `scheme://[user[:password]@]host[:port][/path]`.
///
/// Schemes: `mqtt` (also `tcp`), `mqtts` (also `ssl`, `tls`), `ws`, `wss`. Without a port the
/// scheme's usual one applies. For `mqtt` and `mqtts` the path, if any, is a topic
/// (percent-decoded, so `%23` is `#`); for `ws` and `wss` it is the WebSocket path (default
/// `/mqtt`). IPv6 addresses go in brackets.
///
/// ```
/// use moat_client::transport::{parse_url, Scheme};
///
/// let t = parse_url("mqtts://alice:s3cret@broker.local/sensors/%23").unwrap();
/// assert_eq!(t.scheme, Scheme::Mqtts);
/// assert_eq!((t.host.as_str(), t.port), ("broker.local", 8883));
/// assert_eq!(t.topic.as_deref(), Some("sensors/#"));
/// assert_eq!(parse_url("ws://127.0.0.1:9001").unwrap().path, "/mqtt");
/// ```
///
/// # Errors
/// [`TransportError::InvalidUrl`] with the reason.
pub fn parse_url(url: &str) -> Result<Target, TransportError> {
    let bad = |reason: &str| TransportError::InvalidUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://host, e.g. mqtt://127.0.0.1:1883"))?;
    let scheme = Scheme::parse(scheme)
        .ok_or_else(|| bad("the scheme is not one of mqtt, mqtts, ws, wss"))?;
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address needs a closing ']'"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(bad("unexpected characters after ']'")),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
        None => scheme.default_port(),
    };
    let mut target = Target::new(scheme, host, port);
    if let Some(userinfo) = userinfo {
        let (user, pass) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        target.username =
            Some(percent_decode(user).ok_or_else(|| bad("bad %-escape in the user name"))?);
        target.password = pass
            .map(|p| percent_decode(p).ok_or_else(|| bad("bad %-escape in the password")))
            .transpose()?;
    }
    if scheme.is_ws() {
        if !path.is_empty() {
            if !path.starts_with('/') {
                return Err(bad("the WebSocket path must start with '/'"));
            }
            target.path = path.to_owned();
        }
    } else if let Some(topic) = path.strip_prefix('/') {
        if !topic.is_empty() {
            target.topic =
                Some(percent_decode(topic).ok_or_else(|| bad("bad %-escape in the topic"))?);
        }
    } else if !path.is_empty() {
        return Err(bad("expected /topic after the host"));
    }
    Ok(target)
}

/// The URL with any password replaced, for error messages.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{}", &rest[end..])
        }
        None => url.to_owned(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// TLS settings in the words of `mosquitto_pub`: `--cafile`, `--cert`, `--key`, `--insecure`.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// PEM file of the CA certificates to trust. `None`: the system's CA bundle.
    pub cafile: Option<PathBuf>,
    /// The client certificate (PEM; the leaf first, then any intermediates).
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (any format `openssl` writes).
    pub key: Option<PathBuf>,
    /// Passphrase of an encrypted key.
    pub key_passphrase: Option<Vec<u8>>,
    /// Do not check that the server certificate names the host dialed. Without a CA file, do
    /// not verify the server certificate at all (handshake signatures are still checked).
    pub insecure: bool,
    /// ALPN protocols to offer (none by default).
    pub alpn: Vec<Vec<u8>>,
    /// Allow TLS session resumption (default `false` leaves rustls' in-memory cache off, so
    /// that each connection makes a full handshake).
    pub resumption: bool,
}

impl TlsOptions {
    /// True when any TLS setting was given (so plain `-h`/`-p` should use TLS).
    pub fn is_set(&self) -> bool {
        self.cafile.is_some() || self.cert.is_some() || self.key.is_some() || self.insecure
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("cafile", &self.cafile)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field(
                "key_passphrase",
                &self.key_passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("insecure", &self.insecure)
            .field("alpn", &self.alpn)
            .field("resumption", &self.resumption)
            .finish()
    }
}

/// What a TLS handshake showed, recorded by an [`Observer`].
#[derive(Debug, Clone, Default)]
pub struct TlsObservations {
    /// The certificates the server presented, DER, leaf first (recorded before verification,
    /// so also when it fails).
    pub server_chain: Vec<Vec<u8>>,
    /// The server sent a CertificateRequest.
    pub client_cert_requested: bool,
    /// The CA names (DER distinguished names) the server said it accepts for client
    /// certificates.
    pub acceptable_issuers: Vec<Vec<u8>>,
    /// A client certificate was sent.
    pub client_cert_sent: bool,
    /// Server certificates verified: one per full handshake (a resumed TLS handshake presents
    /// none), so that a caller can tell how many of its handshakes resumed.
    pub server_certs_verified: u64,
}

/// Records what TLS handshakes made with a configuration from [`client_config`] showed.
/// Cloning shares the record.
#[derive(Debug, Clone, Default)]
pub struct Observer(Arc<Mutex<TlsObservations>>);

impl Observer {
    /// A new, empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// What was recorded so far.
    pub fn snapshot(&self) -> TlsObservations {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut TlsObservations)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// The crypto provider: *ring*.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA certificates in `cafile`, or the system's CA bundle when `None`.
///
/// # Errors
/// [`TransportError::File`] when the file cannot be read, holds no certificate, or no system
/// bundle exists.
pub fn load_roots(cafile: Option<&Path>) -> Result<RootCertStore, TransportError> {
    let path = match cafile {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| TransportError::File {
                path: PathBuf::from(SYSTEM_CA_BUNDLES[0]),
                reason: "no system CA bundle found: give the CA with --cafile".into(),
            })?,
    };
    let certs = read_certificates(&path)?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TransportError::File {
            path,
            reason: "holds no usable CA certificate".into(),
        });
    }
    Ok(roots)
}

/// The certificates (DER) in a PEM or DER file.
///
/// # Errors
/// [`TransportError::File`] when it cannot be read or holds no certificate.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let file_err = |reason: String| TransportError::File {
        path: path.to_path_buf(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    let decoded = moat_pki::decode::decode(&data).map_err(|e| file_err(e.to_string()))?;
    let certs: Vec<_> = decoded
        .certificates()
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    if certs.is_empty() {
        return Err(file_err("holds no certificate".into()));
    }
    Ok(certs)
}

/// Loads a client certificate chain and its key.
///
/// # Errors
/// [`TransportError::File`] when a file cannot be read or parsed, the key is encrypted and no
/// (or a wrong) passphrase is given, or the key does not match the certificate.
pub fn load_client_cert(
    cert: &Path,
    key: &Path,
    passphrase: Option<&[u8]>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    let chain = read_certificates(cert)?;
    let data = std::fs::read(key).map_err(|e| TransportError::File {
        path: key.to_path_buf(),
        reason: format!("cannot read: {e}"),
    })?;
    let private = moat_pki::key::load(&data, passphrase).map_err(|e| TransportError::File {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    if private.matches_certificate(&chain[0]) == Some(false) {
        return Err(TransportError::File {
            path: key.to_path_buf(),
            reason: format!(
                "this key does not belong to the certificate in {}",
                cert.display()
            ),
        });
    }
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(private.pkcs8_der().to_vec()));
    Ok((chain, der))
}

/// A rustls client configuration from `opts`, recording into `observer` when given.
///
/// Without `insecure`, the server certificate is verified by webpki against the CA file (or
/// the system bundle). With `insecure` and a CA file the chain is still verified but not the
/// name; with `insecure` alone any certificate is accepted.
///
/// # Errors
/// [`TransportError::File`] for unreadable files, a `--cert` without `--key` (or the reverse)
/// and a key that does not match; [`TransportError::Config`] when rustls refuses the
/// material.
pub fn client_config(
    opts: &TlsOptions,
    observer: Option<&Observer>,
) -> Result<Arc<ClientConfig>, TransportError> {
    let provider = crypto_provider();
    let verify_chain = !opts.insecure || opts.cafile.is_some();
    let webpki = if verify_chain {
        let roots = Arc::new(load_roots(opts.cafile.as_deref())?);
        Some(
            WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| TransportError::Config(e.to_string()))?,
        )
    } else {
        None
    };
    let verifier = Arc::new(Verifier {
        webpki,
        ignore_name: opts.insecure,
        provider: Arc::clone(&provider),
        observer: observer.cloned(),
    });
    let key = match (&opts.cert, &opts.key) {
        (Some(cert), Some(key)) => {
            let (chain, key) = load_client_cert(cert, key, opts.key_passphrase.as_deref())?;
            Some(Arc::new(
                CertifiedKey::from_der(chain, key, &provider)
                    .map_err(|e| TransportError::Config(format!("client certificate: {e}")))?,
            ))
        }
        (Some(cert), None) => {
            return Err(TransportError::File {
                path: cert.clone(),
                reason: "a client certificate needs its key: add --key".into(),
            })
        }
        (None, Some(key)) => {
            return Err(TransportError::File {
                path: key.clone(),
                reason: "a client key needs its certificate: add --cert".into(),
            })
        }
        (None, None) => None,
    };
    let resolver = Arc::new(ClientCert {
        key,
        observer: observer.cloned(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver);
    config.alpn_protocols.clone_from(&opts.alpn);
    if !opts.resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// Verifies with webpki (or not at all), recording the presented chain first.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    ignore_name: bool,
    provider: Arc<CryptoProvider>,
    observer: Option<Observer>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(observer) = &self.observer {
            observer.update(|o| {
                o.server_chain = std::iter::once(end_entity)
                    .chain(intermediates)
                    .map(|c| c.as_ref().to_vec())
                    .collect();
                o.server_certs_verified += 1;
            });
        }
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.ignore_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Offers the client certificate when asked, recording that the server asked.
#[derive(Debug)]
struct ClientCert {
    key: Option<Arc<CertifiedKey>>,
    observer: Option<Observer>,
}

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        if let Some(observer) = &self.observer {
            observer.update(|o| {
                o.client_cert_requested = true;
                o.acceptable_issuers = root_hint_subjects.iter().map(|s| s.to_vec()).collect();
                o.client_cert_sent = self.key.is_some();
            });
        }
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A connected transport: TCP, TLS or WebSocket.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed [`Stream`], ready for [`Client::connect`](crate::Client::connect).
pub type BoxStream = Box<dyn Stream>;

/// Resolves `host` (a name or an IP address) to socket addresses.
///
/// # Errors
/// [`TransportError::Resolve`], [`TransportError::NoAddress`] or [`TransportError::Timeout`].
pub async fn resolve(
    host: &str,
    port: u16,
    limit: Duration,
) -> Result<Vec<SocketAddr>, TransportError> {
    let addrs = timeout(limit, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| TransportError::Timeout {
            what: "name resolution",
            after: limit,
        })?
        .map_err(|source| TransportError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .collect::<Vec<_>>();
    if addrs.is_empty() {
        return Err(TransportError::NoAddress {
            host: host.to_owned(),
        });
    }
    Ok(addrs)
}

/// Connects to the first of `addrs` that answers (with `TCP_NODELAY`), each try within
/// `limit`.
///
/// # Errors
/// The last address's [`TransportError::Connect`] or [`TransportError::Timeout`].
pub async fn connect_tcp(
    addrs: &[SocketAddr],
    limit: Duration,
) -> Result<TcpStream, TransportError> {
    let mut last = TransportError::NoAddress {
        host: String::new(),
    };
    for addr in addrs {
        match timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Ok(Err(source)) => {
                last = TransportError::Connect {
                    addr: *addr,
                    source,
                }
            }
            Err(_) => {
                last = TransportError::Timeout {
                    what: "the TCP connection",
                    after: limit,
                }
            }
        }
    }
    Err(last)
}

/// The TLS client handshake over `io`, checking the certificate against `host`.
///
/// # Errors
/// [`TransportError::Handshake`] (see [`TransportError::tls_error`] for rustls' reason),
/// [`TransportError::InvalidUrl`] for a host that is no valid server name, or
/// [`TransportError::Timeout`].
pub async fn tls_handshake<IO>(
    io: IO,
    config: Arc<ClientConfig>,
    host: &str,
    limit: Duration,
) -> Result<tokio_rustls::client::TlsStream<IO>, TransportError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(host.to_owned()).map_err(|_| TransportError::InvalidUrl {
        url: host.to_owned(),
        reason: "not a valid DNS name or IP address for TLS".into(),
    })?;
    timeout(limit, TlsConnector::from(config).connect(name, io))
        .await
        .map_err(|_| TransportError::Timeout {
            what: "the TLS handshake",
            after: limit,
        })?
        .map_err(TransportError::Handshake)
}

/// The WebSocket client handshake (subprotocol `mqtt`) over `io`.
///
/// # Errors
/// [`TransportError::WebSocket`] or [`TransportError::Timeout`].
pub async fn websocket<IO>(
    io: IO,
    target: &Target,
    limit: Duration,
) -> Result<BoxStream, TransportError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = timeout(
        limit,
        crate::ws::connect(io, &target.authority(), &target.path),
    )
    .await
    .map_err(|_| TransportError::Timeout {
        what: "the WebSocket upgrade",
        after: limit,
    })?
    .map_err(TransportError::WebSocket)?;
    Ok(Box::new(ws))
}

/// Opens a transport to `target`: resolve, TCP, TLS for `mqtts`/`wss` (configured from
/// `tls`), WebSocket for `ws`/`wss`. Each step gets [`DEFAULT_TIMEOUT`].
///
/// # Errors
/// As the steps: see [`TransportError`].
pub async fn open(target: &Target, tls: &TlsOptions) -> Result<BoxStream, TransportError> {
    let config = if target.scheme.is_tls() {
        Some(client_config(tls, None)?)
    } else {
        None
    };
    open_with(target, config.as_ref(), DEFAULT_TIMEOUT).await
}

/// [`open`] with a ready TLS configuration (required for `mqtts` and `wss`, ignored
/// otherwise) and a per-step timeout.
///
/// # Errors
/// As [`open`]; [`TransportError::Config`] when TLS is needed and `config` is `None`.
pub async fn open_with(
    target: &Target,
    config: Option<&Arc<ClientConfig>>,
    limit: Duration,
) -> Result<BoxStream, TransportError> {
    let addrs = resolve(&target.host, target.port, limit).await?;
    let tcp = connect_tcp(&addrs, limit).await?;
    if !target.scheme.is_tls() {
        return if target.scheme.is_ws() {
            websocket(tcp, target, limit).await
        } else {
            Ok(Box::new(tcp))
        };
    }
    let config = config
        .cloned()
        .ok_or_else(|| TransportError::Config("a TLS configuration is needed".into()))?;
    let tls = tls_handshake(tcp, config, &target.host, limit).await?;
    if target.scheme.is_ws() {
        websocket(tls, target, limit).await
    } else {
        Ok(Box::new(tls))
    }
}

/// The rustls error inside an I/O error from a TLS stream, if that is what it is.
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Why a transport could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL (or host) cannot be used.
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, with any password hidden.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Name resolution failed.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The name resolved to no address.
    #[error("{host} resolves to no address")]
    NoAddress {
        /// The host name.
        host: String,
    },
    /// The TCP connection failed.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// A step took too long.
    #[error("timed out after {} s waiting for {what}", after.as_secs_f64())]
    Timeout {
        /// The step.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// A certificate, key or CA file cannot be used.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The TLS handshake failed.
    #[error("TLS handshake failed")]
    Handshake(#[source] io::Error),
    /// The WebSocket upgrade failed.
    #[error("WebSocket upgrade failed")]
    WebSocket(#[source] ClientError),
    /// Another socket error.
    #[error("i/o error")]
    Io(#[from] io::Error),
}

impl TransportError {
    /// The rustls error behind a failed handshake, if any.
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            Self::Handshake(e) => rustls_error(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("mqtt://127.0.0.1").unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port),
            (Scheme::Mqtt, "127.0.0.1", 1883)
        );
        assert_eq!(t.topic, None);

        let t = parse_url("mqtts://u%40x:p%3Aw@broker.local:8884/a/%2B/b").unwrap();
        assert_eq!(t.port, 8884);
        assert_eq!(t.username.as_deref(), Some("u@x"));
        assert_eq!(t.password.as_deref(), Some("p:w"));
        assert_eq!(t.topic.as_deref(), Some("a/+/b"));
        assert!(!format!("{t:?}").contains("p:w"));
        assert_eq!(t.to_string(), "mqtts://broker.local:8884");

        let t = parse_url("wss://[::1]/ws").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8084, "/ws")
        );
        assert_eq!(t.authority(), "[::1]:8084");
        assert_eq!(t.to_string(), "wss://[::1]:8084/ws");

        let t = parse_url("ws://localhost:9001").unwrap();
        assert_eq!(t.path, "/mqtt");
        assert_eq!(parse_url("tcp://h:1").unwrap().scheme, Scheme::Mqtt);
        assert_eq!(parse_url("ssl://h").unwrap().scheme, Scheme::Mqtts);
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("127.0.0.1:1883", "expected scheme://host"),
            ("http://h", "not one of"),
            ("mqtt://", "host is missing"),
            ("mqtt://h:0", "port"),
            ("mqtt://h:99999", "port"),
            ("mqtt://[::1", "closing"),
            ("ws://h:1?x", "must start with '/'"),
        ] {
            let err = parse_url(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
        let err = parse_url("http://bob:secret@h").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn tls_options_need_cert_and_key_together() {
        let dir = tempfile::tempdir().unwrap();
        let opts = TlsOptions {
            cert: Some(dir.path().join("c.pem")),
            insecure: true,
            ..TlsOptions::default()
        };
        // The certificate file is checked first: it does not exist.
        assert!(client_config(&opts, None).is_err());
        let opts = TlsOptions {
            key: Some(dir.path().join("k.pem")),
            insecure: true,
            ..TlsOptions::default()
        };
        let err = client_config(&opts, None).unwrap_err().to_string();
        assert!(err.contains("add --cert"), "{err}");
        let opts = TlsOptions {
            insecure: true,
            ..TlsOptions::default()
        };
        assert!(client_config(&opts, None).is_ok());
    }
}
