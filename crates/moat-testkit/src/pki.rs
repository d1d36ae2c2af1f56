//! The one test PKI: a throwaway PKI made at test time with moat-pki's generator (root and
//! intermediate CAs, server and client certificates, CRLs) written to a temp dir, the openssl
//! CLI recipes some tests need (X.509 v1 certificates), and TLS client configurations that
//! trust them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moat_pki::generate::{self, Ca, CaOptions, Certified, ClientOptions, ServerOptions};
use moat_pki::{KeyType, Validity};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A CA in a temp dir, able to issue certificates.
pub struct TestPki {
    /// The folder holding every file.
    pub dir: tempfile::TempDir,
    /// The CA.
    pub ca: Ca,
    /// `dir/ca.pem`: the CA's certificate (for an [intermediate](TestPki::intermediate), the
    /// chain file a server presents after its own certificate).
    pub ca_pem: PathBuf,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

fn validity() -> Validity {
    Validity::days_from(SystemTime::now(), 30)
}

fn ca_options(name: &str) -> CaOptions {
    CaOptions {
        common_name: name.into(),
        key_type: KeyType::P256,
        validity: validity(),
    }
}

/// Runs the openssl CLI in `dir`.
///
/// # Panics
/// If openssl is missing or fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The openssl CLI recipe that makes an X.509 v1, CN-only server certificate (OpenSSL 3.0's
/// `x509 -req` without -extfile) under an RSA CA of its own, as vendor guides do: writes
/// `ca.pem`, `ca.key`, `server.pem` and `server.key` in `dir`.
///
/// # Panics
/// If openssl is missing or fails.
pub fn openssl_v1_server(dir: &Path, cn: &str) {
    let o = |args: &[&str]| openssl(dir, args);
    o(&["genrsa", "-out", "ca.key", "2048"]);
    o(&[
        "req",
        "-new",
        "-x509",
        "-days",
        "30",
        "-key",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=Recipe CA",
    ]);
    o(&["genrsa", "-out", "server.key", "2048"]);
    o(&[
        "req",
        "-new",
        "-key",
        "server.key",
        "-subj",
        &format!("/CN={cn}"),
        "-out",
        "server.csr",
    ]);
    openssl_v1_sign(dir, "server.csr", "server.pem");
}

/// The recipes' signing step: `openssl x509 -req` with `ca.pem` and `ca.key` in `dir` and no
/// extension file, which OpenSSL 3.0 makes an X.509 v1 certificate.
fn openssl_v1_sign(dir: &Path, csr: &str, cert: &str) {
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            cert,
        ],
    );
}

impl TestPki {
    /// A new P-256 root CA named `name`.
    ///
    /// # Panics
    /// If generation fails.
    pub fn new(name: &str) -> Self {
        let root = generate::root_ca(&ca_options(name)).expect("root CA");
        Self::in_temp_dir(Ca {
            cert_der: root.cert_der,
            key: root.key,
            chain: Vec::new(),
            root: None,
        })
    }

    /// A P-256 intermediate CA named `name`, issued by this CA, in a temp dir of its own.
    ///
    /// # Panics
    /// If generation fails.
    pub fn intermediate(&self, name: &str) -> Self {
        let made = generate::intermediate_ca(&ca_options(name), &self.ca).expect("intermediate");
        let mut chain = Vec::new();
        if self.ca.is_intermediate() {
            chain.push(self.ca.cert_der.clone());
            chain.extend(self.ca.chain.iter().cloned());
        }
        Self::in_temp_dir(Ca {
            cert_der: made.cert_der,
            key: made.key,
            chain,
            root: Some(self.ca.anchor().to_vec()),
        })
    }

    /// Writes `ca.pem` and `ca.key` to a new temp dir.
    fn in_temp_dir(ca: Ca) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, moat_pki::decode::cert_pem(&ca.cert_der)).expect("write ca.pem");
        std::fs::write(dir.path().join("ca.key"), ca.key.to_pkcs8_pem().as_bytes())
            .expect("write ca.key");
        Self { dir, ca, ca_pem }
    }

    /// Makes an X.509 v1 client certificate the way the openssl recipes do
    /// (`openssl x509 -req` without extensions); writes `{cn}.pem` and `{cn}.key`.
    ///
    /// # Panics
    /// If openssl is missing or fails.
    pub fn openssl_v1_client(&self, cn: &str) -> (PathBuf, PathBuf) {
        let dir = self.path();
        let key = dir.join(format!("{cn}.key"));
        let csr = dir.join(format!("{cn}.csr"));
        let cert = dir.join(format!("{cn}.pem"));
        let (k, r, c) = (
            key.to_str().unwrap_or_default(),
            csr.to_str().unwrap_or_default(),
            cert.to_str().unwrap_or_default(),
        );
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                k,
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                r,
            ],
        );
        openssl_v1_sign(dir, r, c);
        (cert, key)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a server certificate for `hosts`; writes `{stem}.pem` and `{stem}.key`.
    ///
    /// # Panics
    /// If generation fails.
    pub fn server(&self, stem: &str, hosts: &[&str]) -> (PathBuf, PathBuf) {
        self.server_with_validity(stem, hosts, validity())
    }

    /// Issues a server certificate for `hosts` valid over `validity` (in the past, say);
    /// writes `{stem}.pem` and `{stem}.key`.
    ///
    /// # Panics
    /// If generation fails.
    pub fn server_with_validity(
        &self,
        stem: &str,
        hosts: &[&str],
        validity: Validity,
    ) -> (PathBuf, PathBuf) {
        let c = self.issue_server(hosts, validity);
        self.write(stem, &c)
    }

    /// Issues a server certificate for `hosts` valid over `validity`, without writing files:
    /// for tests that work on DER.
    ///
    /// # Panics
    /// If generation fails.
    pub fn issue_server(&self, hosts: &[&str], validity: Validity) -> Certified {
        generate::server(
            &ServerOptions {
                hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
                key_type: KeyType::P256,
                validity,
            },
            &self.ca,
        )
        .expect("server certificate")
    }

    /// Issues a client certificate with CN `cn`; writes `{cn}.pem` and `{cn}.key`.
    ///
    /// # Panics
    /// If generation fails.
    pub fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        self.client_with_validity(cn, validity())
    }

    /// Issues a client certificate with CN `cn` valid over `validity` (one that expires in a
    /// few seconds, say); writes `{cn}.pem` and `{cn}.key`.
    ///
    /// # Panics
    /// If generation fails.
    pub fn client_with_validity(&self, cn: &str, validity: Validity) -> (PathBuf, PathBuf) {
        let c = generate::client(
            &ClientOptions {
                common_name: cn.into(),
                key_type: KeyType::P256,
                validity,
            },
            &self.ca,
        )
        .expect("client certificate");
        self.write(cn, &c)
    }

    fn write(&self, stem: &str, c: &Certified) -> (PathBuf, PathBuf) {
        let cert = self.path().join(format!("{stem}.pem"));
        let key = self.path().join(format!("{stem}.key"));
        std::fs::write(&cert, c.cert_pem()).expect("write cert");
        std::fs::write(&key, c.key.to_pkcs8_pem().as_bytes()).expect("write key");
        (cert, key)
    }

    /// Writes a CRL signed by this CA revoking the certificate in `cert_pem_path`; returns its
    /// path.
    ///
    /// # Panics
    /// If the files cannot be read or signed.
    pub fn crl_revoking(&self, cert_pem_path: &Path, out: &str) -> PathBuf {
        let pem = std::fs::read(cert_pem_path).expect("read cert");
        let der = moat_pki::decode::decode(&pem)
            .expect("decode")
            .certificates()
            .remove(0);
        let serial = moat_tls::PeerIdentity::from_der(&der)
            .expect("parse")
            .serial;
        let key = rcgen::KeyPair::from_pem(&self.ca.key.to_pkcs8_pem()).expect("CA key");
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(self.ca.cert_der.clone()), key)
                .expect("issuer");
        let now = time_now();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&serial),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&issuer).expect("sign CRL");
        let path = self.path().join(out);
        std::fs::write(&path, crl.pem().expect("CRL pem")).expect("write CRL");
        path
    }

    /// A TLS client configuration trusting this CA, with an optional client certificate.
    ///
    /// # Panics
    /// If the files cannot be read.
    pub fn client_config(&self, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca_pem, client)
    }
}

fn time_now() -> time::OffsetDateTime {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A TLS client configuration trusting the CA in `ca_pem`, with an optional client certificate
/// (`cert`, `key` files).
///
/// # Panics
/// If the files cannot be read.
pub fn client_config(ca_pem: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(ca_pem).expect("read CA");
    for der in moat_pki::decode::decode(&ca)
        .expect("CA pem")
        .certificates()
    {
        roots.add(CertificateDer::from(der)).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let cert_pem = std::fs::read(cert).expect("read cert");
            let chain = moat_pki::decode::decode(&cert_pem)
                .expect("cert pem")
                .certificates()
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            let key =
                moat_pki::key::load(&std::fs::read(key).expect("read key"), None).expect("key");
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
            // A resolver rather than with_client_auth_cert: the latter parses our own
            // certificate with webpki, which refuses the X.509 v1 ones some tests present.
            let signing = rustls::crypto::ring::default_provider()
                .key_provider
                .load_private_key(key)
                .expect("client key");
            let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, signing));
            builder.with_client_cert_resolver(Arc::new(FixedClientCert(certified)))
        }
    };
    Arc::new(config)
}

/// Connects with TLS to `addr`, verifying the server as `server_name`.
///
/// # Errors
/// The handshake's error.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    // With TLS 1.3 the server's verdict on a client certificate arrives after the client's
    // handshake finished: a read surfaces it. The caller sees it on its first recv.
    let _ = &mut tls;
    Ok(tls)
}

#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
