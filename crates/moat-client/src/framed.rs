//! [`Framed`]: packets over any byte stream, nothing hidden.

use std::io;

use bytes::BytesMut;
use moat_codec::{Codec, Packet, ProtocolVersion, DEFAULT_MAX_PACKET_SIZE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::error::ClientError;

/// How much spare room the read buffer gets before each read.
const READ_CHUNK: usize = 8 * 1024;

/// MQTT packets over a byte stream: owns the transport, a read buffer and a [`Codec`].
///
/// This is the low layer. It sends exactly the packets it is given and returns exactly the
/// packets that arrive: no acknowledgements, no pings, no packet-id bookkeeping. That makes it
/// the tool for scripting exact packet sequences against a broker (including malformed bytes,
/// with [`Framed::send_raw`]); [`Client`](crate::Client) is built on top of it.
///
/// Packets are encoded and decoded with [`Framed::version`], which starts as MQTT 3.1.1. Sending
/// a CONNECT does not change it: call [`Framed::set_version`] before reading the CONNACK of a
/// v5 connection. Incoming packets larger than the codec's maximum packet size (1 MiB by
/// default, see [`Framed::with_codec`]) are rejected as soon as their fixed header is read.
///
/// `IO` is any `AsyncRead + AsyncWrite + Unpin` stream: a `TcpStream`, a TLS stream, a
/// WebSocket adapter or an in-memory `tokio::io::duplex`.
#[derive(Debug)]
pub struct Framed<IO> {
    io: IO,
    codec: Codec,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl<IO> Framed<IO> {
    /// Wraps `io` with a codec for MQTT 3.1.1 and the default maximum packet size.
    pub fn new(io: IO) -> Self {
        Self::with_codec(io, Codec::new(DEFAULT_MAX_PACKET_SIZE))
    }

    /// Wraps `io` with the given codec (its version and maximum packet size).
    pub fn with_codec(io: IO, codec: Codec) -> Self {
        Self {
            io,
            codec,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::new(),
        }
    }

    /// The protocol version packets are encoded and decoded with.
    pub fn version(&self) -> ProtocolVersion {
        self.codec.version()
    }

    /// Sets the protocol version for the packets sent and received from now on.
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.codec.set_version(version);
    }

    /// The codec.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The codec, mutably.
    pub fn codec_mut(&mut self) -> &mut Codec {
        &mut self.codec
    }

    /// The transport.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The transport, mutably. Reading from it directly loses the framing.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Bytes received but not yet decoded into a packet.
    pub fn read_buffer(&self) -> &[u8] {
        &self.read_buf
    }

    /// Returns the transport. Bytes received but not yet decoded are dropped.
    pub fn into_inner(self) -> IO {
        self.io
    }

    /// Returns the transport and the bytes received but not yet decoded.
    pub fn into_parts(self) -> (IO, BytesMut) {
        (self.io, self.read_buf)
    }
}

impl Framed<TcpStream> {
    /// Opens a TCP connection (with `TCP_NODELAY`) and wraps it as [`Framed::new`] does.
    /// Nothing is sent.
    ///
    /// # Errors
    /// [`ClientError::Io`].
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self::new(stream))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Framed<IO> {
    /// Encodes `packet` with the current version, writes it and flushes.
    ///
    /// # Errors
    /// [`ClientError::Encode`] if the packet cannot be encoded (nothing is written then), or
    /// [`ClientError::Io`].
    ///
    /// # Cancel safety
    /// Not cancel safe: if the future is dropped part of the packet may have been written,
    /// and the stream should then be closed.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        self.write_buf.clear();
        moat_codec::encode(packet, self.codec.version(), &mut self.write_buf)?;
        self.io.write_all(&self.write_buf).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Writes `bytes` as they are and flushes: for sending malformed or hand-built packets.
    ///
    /// # Errors
    /// [`ClientError::Io`].
    ///
    /// # Cancel safety
    /// Not cancel safe, like [`Framed::send`].
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Reads the next packet. `Ok(None)` means the peer closed the stream cleanly, between
    /// packets.
    ///
    /// # Errors
    /// [`ClientError::Decode`] for a malformed packet or one above the maximum packet size (the
    /// buffered bytes are then meaningless and the stream should be closed), and
    /// [`ClientError::Io`], including `UnexpectedEof` when the stream ends inside a packet.
    ///
    /// # Cancel safety
    /// Cancel safe: the bytes read so far live in `self`, so if the future is dropped (in a
    /// `tokio::select!` branch that lost, or a timeout) no data is lost and the next call picks
    /// up where this one stopped.
    pub async fn recv(&mut self) -> Result<Option<Packet>, ClientError> {
        loop {
            if let Some(packet) = self.codec.decode(&mut self.read_buf)? {
                return Ok(Some(packet));
            }
            self.read_buf.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.read_buf).await? == 0 {
                if self.read_buf.is_empty() {
                    return Ok(None);
                }
                let len = self.read_buf.len();
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("stream ended inside a packet ({len} bytes buffered)"),
                )
                .into());
            }
        }
    }

    /// Shuts down the write side of the transport (for TCP, sends FIN) after flushing.
    ///
    /// # Errors
    /// [`ClientError::Io`].
    pub async fn shutdown(&mut self) -> Result<(), ClientError> {
        self.io.shutdown().await?;
        Ok(())
    }
}
