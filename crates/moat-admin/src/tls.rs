//! HTTPS for the admin API with the certificate and key of one of the broker's TLS listeners
//! (`[admin] tls_listener`), without asking for client certificates.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The acceptor for the listener's certificate and key (loaded and linted as the broker
/// loads them).
pub(crate) fn acceptor(
    settings: &moat_tls::TlsSettings,
) -> Result<TlsAcceptor, moat_tls::TlsError> {
    let mut s = settings.clone();
    s.client_auth = moat_tls::ClientAuth::None;
    s.client_ca = None;
    s.crl = Vec::new();
    s.alpn = vec![b"http/1.1".to_vec()];
    let live = moat_tls::LiveTls::load("admin", s, std::time::SystemTime::now())?;
    live.acceptor().ok_or_else(|| moat_tls::TlsError::Read {
        path: settings.cert.clone(),
        source: std::io::Error::other("no certificate"),
    })
}

/// A TCP listener whose connections are TLS-accepted before HTTP sees them. A failed handshake
/// is dropped (and logged at debug); the accept loop goes on.
pub(crate) struct TlsListener {
    inner: TcpListener,
    acceptor: TlsAcceptor,
    pending: tokio::task::JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(crate) fn new(inner: TcpListener, acceptor: TlsAcceptor) -> Self {
        Self {
            inner,
            acceptor,
            pending: tokio::task::JoinSet::new(),
        }
    }
}

/// Handshakes in progress at most; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 64;

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.inner.accept(), if self.pending.len() < MAX_HANDSHAKES => {
                    let Ok((tcp, addr)) = accepted else {
                        continue;
                    };
                    let acceptor = self.acceptor.clone();
                    self.pending.spawn(async move {
                        let hs = tokio::time::timeout(
                            std::time::Duration::from_secs(10),
                            acceptor.accept(tcp),
                        )
                        .await;
                        match hs {
                            Ok(Ok(tls)) => Some((tls, addr)),
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %addr, error = %e, "admin API: TLS handshake failed");
                                None
                            }
                            Err(_) => None,
                        }
                    });
                }
                Some(done) = self.pending.join_next(), if !self.pending.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
