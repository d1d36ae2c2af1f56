//! HTTPS for the admin API with the certificate and key of one of the broker's TLS listeners
//! (`[admin] tls_listener`), without asking for client certificates.

use moat_server::BrokerHandle;
use moat_tls::Borrowed;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// What the admin API's HTTPS offers by ALPN.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"http/1.1".to_vec()]
}

/// The certificates of the broker's TLS listener `listener`, as served now (no client
/// certificate asked for).
pub(crate) fn borrow(broker: &BrokerHandle, listener: &str) -> Result<Borrowed, String> {
    match broker.borrow_tls(listener, None, &alpn()) {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(format!("the listener {listener:?} serves no certificate")),
        Err(e) => Err(moat_server::Chain(&e).to_string()),
    }
}

/// A TCP listener whose connections are TLS-accepted before HTTP sees them, with the
/// certificates the broker's listener serves at the time of each connection: a reload, an
/// upload or a rotation in the console reaches the admin API's HTTPS too. While the
/// listener's certificate is removed, the last one goes on being served here, so the console
/// stays reachable to install a new one. A failed handshake is dropped (and logged at debug);
/// the accept loop goes on.
pub(crate) struct TlsListener {
    inner: TcpListener,
    broker: BrokerHandle,
    listener: String,
    current: Borrowed,
    /// Whether the removal of the listener's certificate has been logged.
    removal_noted: bool,
    pending: tokio::task::JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(crate) fn new(
        inner: TcpListener,
        broker: BrokerHandle,
        listener: String,
        current: Borrowed,
    ) -> Self {
        Self {
            inner,
            broker,
            listener,
            current,
            removal_noted: false,
            pending: tokio::task::JoinSet::new(),
        }
    }

    /// The acceptor for the certificates the listener serves now (a read lock and a
    /// comparison, unless they changed).
    fn acceptor(&mut self) -> TlsAcceptor {
        match self
            .broker
            .borrow_tls(&self.listener, Some(&self.current), &alpn())
        {
            Ok(Some(b)) => {
                if b.leaf() != self.current.leaf() {
                    tracing::info!(
                        listener = %self.listener,
                        "admin API: HTTPS serves the listener's new certificate"
                    );
                }
                self.current = b;
                self.removal_noted = false;
            }
            Ok(None) => {
                if !self.removal_noted {
                    tracing::warn!(
                        listener = %self.listener,
                        "admin API: the listener's certificate is removed; HTTPS goes on with \
                         the last one until a new one is installed"
                    );
                    self.removal_noted = true;
                }
            }
            Err(e) => tracing::warn!(
                listener = %self.listener,
                error = %moat_server::Chain(&e),
                "admin API: HTTPS cannot use the listener's certificates; it goes on with the last ones"
            ),
        }
        self.current.acceptor().clone()
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
                    let acceptor = self.acceptor();
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
