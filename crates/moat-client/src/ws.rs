//! MQTT over WebSocket (RFC 6455; MQTT 5.0 section 6): [`connect`] performs the client's
//! HTTP upgrade on a connected stream (TCP, or TLS for `wss`), and [`WsStream`] carries MQTT
//! bytes in binary messages, so it can be passed to [`Client::connect`](crate::Client::connect)
//! or [`Framed::new`](crate::Framed::new).
//!
//! ```no_run
//! use moat_client::{ws, Client, ConnectOptions};
//! use tokio::net::TcpStream;
//!
//! # async fn run() -> Result<(), moat_client::ClientError> {
//! let tcp = TcpStream::connect("127.0.0.1:8080").await?;
//! let stream = ws::connect(tcp, "127.0.0.1:8080", "/mqtt").await?;
//! let (client, _connack) = Client::connect(stream, ConnectOptions::new("example")).await?;
//! # Ok(())
//! # }
//! ```

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error;

use crate::ClientError;

/// Performs the WebSocket upgrade on `io`, an already connected stream, for
/// `ws://{host}{path}`, offering the "mqtt" subprotocol (MQTT 3.1.1 and 5.0).
///
/// `host` goes into the `Host` header: a name or address with an optional port
/// (`"broker.local:8083"`, `"[::1]:8083"`). There is no timeout: put the call under one.
///
/// # Errors
/// [`ClientError::WebSocket`] when the server refuses the upgrade (with its HTTP status),
/// selects a subprotocol other than "mqtt" or selects none, or does not speak WebSocket;
/// [`ClientError::Io`] when the transport fails.
pub async fn connect<IO>(io: IO, host: &str, path: &str) -> Result<WsStream<IO>, ClientError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let uri = format!("ws://{host}{path}");
    let mut request = uri
        .as_str()
        .into_client_request()
        .map_err(handshake_error)?;
    request
        .headers_mut()
        .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("mqtt"));
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024);
    // tungstenite checks the answer: a subprotocol other than "mqtt", or none at all, fails
    // the handshake.
    let (ws, _response) = tokio_tungstenite::client_async_with_config(request, io, Some(config))
        .await
        .map_err(handshake_error)?;
    Ok(WsStream::new(ws))
}

fn handshake_error(e: Error) -> ClientError {
    match e {
        Error::Io(e) => e.into(),
        Error::Http(response) => ClientError::WebSocket(format!(
            "the server refused the upgrade with HTTP {}",
            response.status()
        )),
        e => ClientError::WebSocket(e.to_string()),
    }
}

pub use moat_ws::WsStream;
