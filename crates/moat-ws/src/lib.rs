//! MQTT over WebSocket (MQTT 5.0 section 6): a byte stream over binary frames.
//!
//! The server (moat-server) and the client (moat-client) each do their own side of the HTTP
//! upgrade; both then read and write MQTT through [`WsStream`]. No handshake, no TLS and no
//! timeouts here.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

/// A WebSocket connection as a byte stream: reads return the bytes of binary messages in
/// order, whatever the message boundaries; each write is sent as one binary message (on the
/// next flush). A close frame (or the server dropping the connection) reads as end of
/// stream; a text frame is an error (MQTT 5.0 section 6). Pings are answered by tungstenite
/// during reads.
#[derive(Debug)]
pub struct WsStream<IO> {
    inner: WebSocketStream<IO>,
    /// The unread rest of the current binary message.
    pending: Bytes,
    eof: bool,
}

impl<IO> WsStream<IO> {
    /// Wraps a WebSocket whose handshake is done.
    pub fn new(inner: WebSocketStream<IO>) -> Self {
        Self {
            inner,
            pending: Bytes::new(),
            eof: false,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // No flush here: tungstenite's read already writes queued pongs and close replies,
        // and polling the sink with the reader's waker would steal a writer's wake-up.
        while this.pending.is_empty() && !this.eof {
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    let e = "text frame on an MQTT websocket (only binary frames are allowed)";
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                Some(Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                    this.eof = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = Pin::new(&mut self.get_mut().inner);
        ready!(inner.as_mut().poll_ready(cx)).map_err(to_io)?;
        let message = Message::Binary(Bytes::copy_from_slice(buf));
        inner.start_send(message).map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_flush(cx)
            .map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().inner).poll_close(cx)) {
            Ok(()) | Err(Error::AlreadyClosed | Error::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

fn to_io(e: Error) -> io::Error {
    match e {
        Error::Io(e) => e,
        Error::AlreadyClosed | Error::ConnectionClosed => io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the websocket connection is closed",
        ),
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}
