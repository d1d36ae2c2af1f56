//! MQTT over WebSocket (RFC 6455; MQTT 5.0 section 6): the HTTP upgrade, and [`WsStream`],
//! which turns the binary messages of a WebSocket connection back into a byte stream for
//! `connection::serve`.
//!
//! What it does not do: TLS (a `wss` listener passes its TLS stream in as `IO`), timeouts (the
//! caller puts the handshake under its own), or MQTT framing (a message may hold several
//! packets or part of one; the byte stream does not care).

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error;

/// The subprotocols we accept, in order of preference: "mqtt" (3.1.1 and 5.0) and "mqttv3.1"
/// (offered by some old clients).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Room for a few small packets next to a maximum-size one in the same WebSocket message.
const MESSAGE_SLACK: usize = 64 * 1024;

/// Buffer sizes per connection (tungstenite's defaults of 128 KiB suit few, busy connections).
const BUFFER_SIZE: usize = 16 * 1024;

/// Why a WebSocket upgrade failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// The request was for another path; the client got HTTP 404.
    #[error("websocket upgrade refused: path {path} is not {expected}")]
    WrongPath { path: String, expected: String },
    /// The client offered subprotocols, none of them MQTT; it got HTTP 400.
    #[error("websocket upgrade refused: none of the offered subprotocols ({offered}) is mqtt or mqttv3.1")]
    NoSubprotocol { offered: String },
    /// The request was not a valid WebSocket upgrade (or the client broke off).
    #[error("websocket handshake failed")]
    Handshake(#[source] Error),
    /// Reading or writing the HTTP exchange failed.
    #[error("i/o error during the websocket handshake")]
    Io(#[source] io::Error),
}

impl WsError {
    /// The peer closed before sending a whole request (a port check, a load balancer's probe,
    /// the broker's own test handshake): not worth more than a debug line.
    pub(crate) fn is_closed_before_request(&self) -> bool {
        matches!(
            self,
            Self::Handshake(Error::Protocol(
                tokio_tungstenite::tungstenite::error::ProtocolError::HandshakeIncomplete
            ))
        )
    }
}

impl From<Error> for WsError {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => Self::Io(e),
            e => Self::Handshake(e),
        }
    }
}

/// Performs the server side of the WebSocket upgrade on `io` (TCP or TLS) for requests to
/// `path` (the query string is ignored), selecting the "mqtt" or "mqttv3.1" subprotocol. A
/// request without any subprotocol is accepted too (some browser clients send none). Messages
/// from the client may be up to `max_packet_size` (the broker's limit) plus a little slack, so
/// that a message holding one maximum-size packet and a few small ones still fits.
///
/// No timeout: the caller puts the call under its handshake timeout.
///
/// # Errors
/// [`WsError::WrongPath`] (after answering 404), [`WsError::NoSubprotocol`] (after answering
/// 400), [`WsError::Handshake`] for a request that is not a WebSocket upgrade, and
/// [`WsError::Io`].
pub(crate) async fn accept_with_max_packet_size<IO>(
    io: IO,
    path: &str,
    max_packet_size: u32,
) -> Result<WsStream<IO>, WsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let max_message = usize::try_from(max_packet_size)
        .unwrap_or(usize::MAX)
        .saturating_add(MESSAGE_SLACK);
    let config = WebSocketConfig::default()
        .read_buffer_size(BUFFER_SIZE)
        .write_buffer_size(BUFFER_SIZE)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let mut refusal = None;
    #[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
    let callback = |request: &Request, mut response: Response| match check(request, path) {
        Ok(protocol) => {
            if let Some(protocol) = protocol {
                let value = HeaderValue::from_static(protocol);
                response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, value);
            }
            Ok(response)
        }
        Err(e) => {
            let mut answer = ErrorResponse::new(None);
            *answer.status_mut() = match e {
                WsError::WrongPath { .. } => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            refusal = Some(e);
            Err(answer)
        }
    };
    let result = tokio_tungstenite::accept_hdr_async_with_config(io, callback, Some(config)).await;
    match result {
        Ok(ws) => Ok(WsStream::new(ws)),
        Err(e) => Err(refusal.unwrap_or_else(|| e.into())),
    }
}

/// The subprotocol to select for `request`, if any, or why the upgrade is refused.
fn check(request: &Request, path: &str) -> Result<Option<&'static str>, WsError> {
    let requested = request.uri().path();
    if requested != path {
        return Err(WsError::WrongPath {
            path: printable(requested),
            expected: path.to_owned(),
        });
    }
    let headers = request.headers().get_all(SEC_WEBSOCKET_PROTOCOL);
    if headers.iter().next().is_none() {
        return Ok(None);
    }
    let offered: Vec<&str> = headers
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    match SUBPROTOCOLS.iter().find(|p| offered.contains(p)) {
        Some(protocol) => Ok(Some(protocol)),
        None => Err(WsError::NoSubprotocol {
            offered: printable(&offered.join(", ")),
        }),
    }
}

/// `s` for a log line: at most 100 characters, without control characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

pub(crate) use moat_ws::WsStream;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::task::JoinHandle;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::handshake::client::Response as ClientResponse;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    type Peer = WebSocketStream<DuplexStream>;

    /// The upgrade with the broker's default maximum packet size.
    async fn accept(io: DuplexStream, path: &str) -> Result<WsStream<DuplexStream>, WsError> {
        accept_with_max_packet_size(io, path, 1024 * 1024).await
    }

    /// Runs `accept` on one end of a pipe and a tungstenite client offering `protocols` for
    /// `uri` on the other.
    async fn upgrade(
        uri: &str,
        protocols: Option<&str>,
    ) -> (
        Result<WsStream<DuplexStream>, WsError>,
        Result<(Peer, ClientResponse), Error>,
    ) {
        let (client_io, server_io) = duplex(64 * 1024);
        let server: JoinHandle<_> = tokio::spawn(async move { accept(server_io, "/mqtt").await });
        let mut request = uri.into_client_request().expect("a valid request");
        if let Some(protocols) = protocols {
            let value = HeaderValue::from_str(protocols).expect("a valid header");
            request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, value);
        }
        let client =
            tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, client_io))
                .await
                .expect("client handshake in time");
        let server = tokio::time::timeout(WAIT, server)
            .await
            .expect("server handshake in time")
            .expect("server task");
        (server, client)
    }

    async fn connected(protocols: Option<&str>) -> (WsStream<DuplexStream>, Peer) {
        let (server, client) = upgrade("ws://broker/mqtt", protocols).await;
        let (peer, _) = client.expect("client handshake");
        (server.expect("server handshake"), peer)
    }

    fn selected(response: &ClientResponse) -> Option<&str> {
        response
            .headers()
            .get(SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn selects_a_supported_subprotocol() {
        let cases = [
            ("mqtt", "mqtt"),
            ("mqttv3.1", "mqttv3.1"),
            ("chat, mqttv3.1, mqtt", "mqtt"),
        ];
        for (offered, want) in cases {
            let (server, client) = upgrade("ws://broker/mqtt?x=1", Some(offered)).await;
            assert!(server.is_ok(), "{offered}: {server:?}");
            let (_, response) = client.expect("client handshake");
            assert_eq!(selected(&response), Some(want), "offered {offered}");
        }
    }

    #[tokio::test]
    async fn accepts_a_request_without_subprotocols() {
        let (server, client) = upgrade("ws://broker/mqtt", None).await;
        assert!(server.is_ok(), "{server:?}");
        let (_, response) = client.expect("client handshake");
        assert_eq!(selected(&response), None);
    }

    #[tokio::test]
    async fn refuses_a_wrong_path_with_404() {
        let (server, client) = upgrade("ws://broker/other?q", Some("mqtt")).await;
        let err = server.expect_err("refused");
        assert!(matches!(err, WsError::WrongPath { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "websocket upgrade refused: path /other is not /mqtt"
        );
        match client {
            Err(Error::Http(response)) => assert_eq!(response.status(), StatusCode::NOT_FOUND),
            other => panic!("expected HTTP 404, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn refuses_unsupported_subprotocols_with_400() {
        let (server, client) = upgrade("ws://broker/mqtt", Some("chat, mqttv5")).await;
        let err = server.expect_err("refused");
        assert_eq!(
            err.to_string(),
            "websocket upgrade refused: none of the offered subprotocols (chat, mqttv5) is mqtt or mqttv3.1"
        );
        match client {
            Err(Error::Http(response)) => assert_eq!(response.status(), StatusCode::BAD_REQUEST),
            other => panic!("expected HTTP 400, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn refuses_plain_http() {
        let (mut client_io, server_io) = duplex(4096);
        let server = tokio::spawn(async move { accept(server_io, "/mqtt").await });
        client_io
            .write_all(b"GET /mqtt HTTP/1.1\r\nHost: broker\r\n\r\n")
            .await
            .expect("write");
        let err = tokio::time::timeout(WAIT, server)
            .await
            .expect("in time")
            .expect("server task")
            .expect_err("refused");
        assert!(matches!(err, WsError::Handshake(_)), "{err:?}");
    }

    #[tokio::test]
    async fn writes_go_out_as_binary_messages() {
        let (mut server, mut peer) = connected(Some("mqtt")).await;
        server
            .write_all(&[0x20, 0x02, 0x00, 0x00])
            .await
            .expect("write");
        server.flush().await.expect("flush");
        let message = tokio::time::timeout(WAIT, peer.next())
            .await
            .expect("in time");
        match message {
            Some(Ok(Message::Binary(data))) => assert_eq!(&data[..], [0x20, 0x02, 0x00, 0x00]),
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn reads_packets_across_message_boundaries() {
        let (mut server, mut peer) = connected(Some("mqtt")).await;
        // Three PINGREQ-sized packets and one PUBLISH, cut at odd places.
        let stream: Vec<u8> = [
            &[0xc0, 0x00][..],
            &[0x30, 0x07, 0x00, 0x01, b't', b'h', b'e', b'l', b'o'],
            &[0xc0, 0x00, 0xc0, 0x00],
        ]
        .concat();
        for part in [&stream[..3], &stream[3..9], &stream[9..]] {
            let message = Message::Binary(Bytes::copy_from_slice(part));
            peer.send(message).await.expect("send");
        }
        let mut got = vec![0; stream.len()];
        tokio::time::timeout(WAIT, server.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, stream);
    }

    #[tokio::test]
    async fn large_messages_cross_reads_and_writes() {
        let (mut server, mut peer) = connected(Some("mqtt")).await;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let echo = tokio::spawn(async move {
            let mut got = vec![0; expected.len()];
            server.read_exact(&mut got).await.expect("read");
            assert!(got == expected, "the server read other bytes");
            server.write_all(&got).await.expect("write");
            server.flush().await.expect("flush");
        });
        // The echo task reads all before it writes, so sending first cannot deadlock.
        tokio::time::timeout(WAIT, peer.send(Message::binary(data.clone())))
            .await
            .expect("sent in time")
            .expect("send");
        let answer = tokio::time::timeout(WAIT, peer.next()).await;
        match answer.expect("in time") {
            Some(Ok(Message::Binary(got))) => assert!(got == data, "the peer got other bytes"),
            other => panic!("expected a binary message, got {other:?}"),
        }
        echo.await.expect("echo task");
    }

    #[tokio::test]
    async fn a_text_frame_is_an_error() {
        let (mut server, mut peer) = connected(Some("mqtt")).await;
        peer.send(Message::text("hello")).await.expect("send");
        let mut buf = [0; 16];
        let err = tokio::time::timeout(WAIT, server.read(&mut buf))
            .await
            .expect("in time")
            .expect_err("a text frame");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_close_frame_is_end_of_stream() {
        let (mut server, mut peer) = connected(Some("mqtt")).await;
        peer.send(Message::binary(vec![0xe0, 0x00]))
            .await
            .expect("send");
        peer.close(None).await.expect("close");
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, server.read_to_end(&mut got))
            .await
            .expect("in time")
            .expect("read to the end");
        assert_eq!(got, [0xe0, 0x00]);
    }

    #[tokio::test]
    async fn dropping_the_connection_is_end_of_stream() {
        let (mut server, peer) = connected(Some("mqtt")).await;
        drop(peer);
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, server.read_to_end(&mut got))
            .await
            .expect("in time")
            .expect("read to the end");
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn shutdown_sends_a_close_frame() {
        let (mut server, mut peer) = connected(Some("mqtt")).await;
        let (shutdown, message) = tokio::join!(server.shutdown(), peer.next());
        shutdown.expect("shutdown");
        assert!(
            matches!(message, Some(Ok(Message::Close(_)))),
            "{message:?}"
        );
    }

    #[tokio::test]
    async fn pings_are_answered_while_only_reading() {
        let (mut server, mut peer) = connected(Some("mqtt")).await;
        let reader = tokio::spawn(async move {
            let mut buf = [0; 16];
            let n = server.read(&mut buf).await.expect("read");
            buf[..n].to_vec()
        });
        peer.send(Message::Ping(Bytes::from_static(b"hi")))
            .await
            .expect("ping");
        let answer = tokio::time::timeout(WAIT, peer.next())
            .await
            .expect("a pong in time");
        assert!(
            matches!(&answer, Some(Ok(Message::Pong(data))) if &data[..] == b"hi"),
            "{answer:?}"
        );
        peer.send(Message::binary(vec![0xc0, 0x00]))
            .await
            .expect("send");
        let got = tokio::time::timeout(WAIT, reader)
            .await
            .expect("in time")
            .expect("reader");
        assert_eq!(got, [0xc0, 0x00]);
    }

    #[tokio::test]
    async fn oversized_messages_are_refused() {
        let (client_io, server_io) = duplex(64 * 1024);
        let server =
            tokio::spawn(async move { accept_with_max_packet_size(server_io, "/mqtt", 16).await });
        let (mut peer, _) = tokio_tungstenite::client_async("ws://broker/mqtt", client_io)
            .await
            .expect("client handshake");
        let mut server = server
            .await
            .expect("server task")
            .expect("server handshake");
        // The send cannot finish: the server stops reading at the frame header.
        let _sender = tokio::spawn(async move {
            let _ = peer
                .send(Message::binary(vec![0; MESSAGE_SLACK + 17]))
                .await;
            peer
        });
        let mut buf = [0; 16];
        let err = tokio::time::timeout(WAIT, server.read(&mut buf))
            .await
            .expect("in time")
            .expect_err("too large");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
