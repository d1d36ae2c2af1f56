//! TLS to the backends with rustls and the *ring* provider: the client configuration built
//! from `tls = { ca, cert, key }`, and the small `MakeTlsConnect` tokio-postgres needs.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::config::{err as config_err, ForwardConfigError, TlsFile};

/// Reads the CA (and the client certificate and key, when given) into a rustls client config.
pub(crate) fn client_config(
    t: &TlsFile,
    base: &Path,
    key: &str,
) -> Result<Arc<rustls::ClientConfig>, ForwardConfigError> {
    let fix_pem =
        "point it at a readable PEM file (relative paths start from the config file's folder)";
    let ca_path = base.join(&t.ca);
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca_path)
        .and_then(Iterator::collect)
        .map_err(|e| {
            config_err(
                format!("{key}.ca"),
                format!("cannot read {}: {e}", ca_path.display()),
                fix_pem,
            )
        })?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(config_err(
            format!("{key}.ca"),
            format!("{} holds no usable CA certificate", ca_path.display()),
            "point it at the PEM file of the CA that signed the server's certificate",
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            config_err(
                key,
                format!("TLS setup failed: {e}"),
                "report this as a bug",
            )
        })?
        .with_root_certificates(roots);
    let config = match (&t.cert, &t.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(pkey)) => {
            let cert_path = base.join(cert);
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
                .and_then(Iterator::collect)
                .map_err(|e| {
                    config_err(
                        format!("{key}.cert"),
                        format!("cannot read {}: {e}", cert_path.display()),
                        fix_pem,
                    )
                })?;
            let key_path = base.join(pkey);
            let private = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
                config_err(
                    format!("{key}.key"),
                    format!("cannot read {}: {e}", key_path.display()),
                    fix_pem,
                )
            })?;
            builder.with_client_auth_cert(chain, private).map_err(|e| {
                config_err(
                    format!("{key}.key"),
                    format!("does not fit the certificate: {e}"),
                    "give the key that belongs to cert",
                )
            })?
        }
        _ => {
            return Err(config_err(
                key,
                "has one of cert and key without the other",
                "give both cert and key for a client certificate, or neither",
            ))
        }
    };
    Ok(Arc::new(config))
}

/// tokio-postgres TLS over tokio-rustls.
#[derive(Clone)]
pub(crate) struct RustlsConnect(pub(crate) Arc<rustls::ClientConfig>);

pub(crate) struct RustlsConnectOne {
    config: Arc<rustls::ClientConfig>,
    name: Result<ServerName<'static>, String>,
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnectOne;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnectOne, io::Error> {
        Ok(RustlsConnectOne {
            config: Arc::clone(&self.0),
            name: ServerName::try_from(domain.to_owned()).map_err(|_| domain.to_owned()),
        })
    }
}

impl<S> TlsConnect<S> for RustlsConnectOne
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.map_err(|d| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{d:?} is not a TLS server name"),
                )
            })?;
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream to PostgreSQL.
pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM then runs without channel binding (tokio-postgres's default, `prefer`).
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
