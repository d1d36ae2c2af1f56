//! [`Framed`]: packets over any byte stream, nothing hidden.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use moat_codec::{Codec, Packet, ProtocolVersion, DEFAULT_MAX_PACKET_SIZE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::error::ClientError;

/// How much spare room the read buffer gets before each read, unless
/// [`Framed::set_read_size`] says otherwise.
const READ_CHUNK: usize = 8 * 1024;

/// MQTT packets over a byte stream: owns the transport, a read buffer, a write buffer and a
/// [`Codec`].
///
/// This is the low layer, and the one raw MQTT connection of the workspace: it sends exactly
/// the packets it is given and returns exactly the packets that arrive: no acknowledgements,
/// no pings, no packet-id bookkeeping. [`Client`](crate::Client) is built on it, and so are
/// `moat bench`'s load generator and the test kit's raw-packet client.
///
/// Two ways to use it:
/// - one packet at a time: [`Framed::send`] and [`Framed::recv`] (or
///   [`Framed::recv_timeout`]), for scripting exact packet sequences against a broker
///   (including malformed bytes, with [`Framed::send_raw`]);
/// - batched, where syscalls count: [`Framed::feed`] encodes packets into the write buffer
///   and [`Framed::flush`] writes them all with one write; [`Framed::read_more`] reads once
///   (up to [`Framed::set_read_size`] bytes) and [`Framed::recv_buffered`] decodes what has
///   arrived without reading again.
///
/// Packets are encoded and decoded with [`Framed::version`], which starts as MQTT 3.1.1. Sending
/// a CONNECT does not change it: call [`Framed::set_version`] before reading the CONNACK of a
/// v5 connection. Incoming packets larger than the codec's maximum packet size (1 MiB by
/// default, see [`Framed::with_codec`]) are rejected as soon as their fixed header is read.
///
/// `IO` is any `AsyncRead + AsyncWrite + Unpin` stream: a `TcpStream`, a TLS stream, a
/// WebSocket adapter or an in-memory `tokio::io::duplex`. Reading needs only `AsyncRead` and
/// writing only `AsyncWrite`, so the halves from [`Framed::split`] are `Framed` too.
#[derive(Debug)]
pub struct Framed<IO> {
    io: IO,
    codec: Codec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    read_size: usize,
}

impl<IO> Framed<IO> {
    /// Wraps `io` with a codec for MQTT 3.1.1 and the default maximum packet size.
    pub fn new(io: IO) -> Self {
        Self::with_codec(io, Codec::new(DEFAULT_MAX_PACKET_SIZE))
    }

    /// Wraps `io` with the given codec (its version and maximum packet size).
    pub fn with_codec(io: IO, codec: Codec) -> Self {
        Self::from_parts(
            io,
            codec,
            BytesMut::with_capacity(READ_CHUNK),
            BytesMut::new(),
        )
    }

    fn from_parts(io: IO, codec: Codec, read_buf: BytesMut, write_buf: BytesMut) -> Self {
        Self {
            io,
            codec,
            read_buf,
            write_buf,
            read_size: READ_CHUNK,
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

    /// Sets how many bytes each read asks for at least (8 KiB by default). A load generator
    /// that receives much reads more at a time; an idle connection costs less with less.
    pub fn set_read_size(&mut self, bytes: usize) {
        self.read_size = bytes.max(1);
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

    /// Bytes queued by [`Framed::feed`] and not yet written by [`Framed::flush`].
    pub fn write_buffer(&self) -> &[u8] {
        &self.write_buf
    }

    /// Returns the transport. Bytes received but not yet decoded, and bytes queued but not
    /// yet written, are dropped.
    pub fn into_inner(self) -> IO {
        self.io
    }

    /// Returns the transport and the bytes received but not yet decoded.
    pub fn into_parts(self) -> (IO, BytesMut) {
        (self.io, self.read_buf)
    }

    /// Encodes `packet` with the current version into the write buffer, without writing:
    /// [`Framed::flush`] writes everything queued at once.
    ///
    /// # Errors
    /// [`ClientError::Encode`] if the packet cannot be encoded; nothing is queued then.
    pub fn feed(&mut self, packet: &Packet) -> Result<(), ClientError> {
        moat_codec::encode(packet, self.codec.version(), &mut self.write_buf)?;
        Ok(())
    }

    /// Decodes the next packet from the bytes already read, without reading: `Ok(None)` when
    /// they do not hold a whole packet.
    ///
    /// # Errors
    /// [`ClientError::Decode`] for a malformed packet or one above the maximum packet size (the
    /// buffered bytes are then meaningless and the stream should be closed).
    pub fn recv_buffered(&mut self) -> Result<Option<Packet>, ClientError> {
        Ok(self.codec.decode(&mut self.read_buf)?)
    }

    /// Splits the connection into a reading and a writing half, each a `Framed` with the same
    /// codec: one task can read while another writes. Bytes already read stay with the
    /// reading half, bytes queued with the writing half.
    pub fn split(self) -> (Framed<ReadHalf<IO>>, Framed<WriteHalf<IO>>)
    where
        IO: AsyncRead + AsyncWrite,
    {
        let (reader, writer) = tokio::io::split(self.io);
        let mut read =
            Framed::from_parts(reader, self.codec.clone(), self.read_buf, BytesMut::new());
        read.read_size = self.read_size;
        let write = Framed::from_parts(writer, self.codec, BytesMut::new(), self.write_buf);
        (read, write)
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

impl<IO: AsyncRead + Unpin> Framed<IO> {
    /// Reads the next packet. `Ok(None)` means the peer closed the stream cleanly, between
    /// packets.
    ///
    /// # Errors
    /// [`ClientError::Decode`] as [`Framed::recv_buffered`], and [`ClientError::Io`],
    /// including `UnexpectedEof` when the stream ends inside a packet.
    ///
    /// # Cancel safety
    /// Cancel safe: the bytes read so far live in `self`, so if the future is dropped (in a
    /// `tokio::select!` branch that lost, or a timeout) no data is lost and the next call picks
    /// up where this one stopped.
    pub async fn recv(&mut self) -> Result<Option<Packet>, ClientError> {
        loop {
            if let Some(packet) = self.recv_buffered()? {
                return Ok(Some(packet));
            }
            if self.read_more().await? == 0 {
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

    /// [`Framed::recv`] that gives up after `wait`.
    ///
    /// # Errors
    /// As [`Framed::recv`], and [`ClientError::Timeout`] when no packet arrives in time (the
    /// bytes of a partly received packet stay buffered).
    pub async fn recv_timeout(&mut self, wait: Duration) -> Result<Option<Packet>, ClientError> {
        tokio::time::timeout(wait, self.recv())
            .await
            .map_err(|_| ClientError::Timeout("a packet"))?
    }

    /// Reads once from the transport into the read buffer (asking for at least the read size,
    /// see [`Framed::set_read_size`]) and returns how many bytes arrived; 0 means the peer
    /// closed the stream. Decode them with [`Framed::recv_buffered`].
    ///
    /// # Errors
    /// [`ClientError::Io`].
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped, no bytes were read.
    pub async fn read_more(&mut self) -> Result<usize, ClientError> {
        self.read_buf.reserve(self.read_size);
        Ok(self.io.read_buf(&mut self.read_buf).await?)
    }
}

impl<IO: AsyncWrite + Unpin> Framed<IO> {
    /// Writes everything [`Framed::feed`] queued, with one write where the transport takes it
    /// all, and flushes the transport.
    ///
    /// # Errors
    /// [`ClientError::Io`].
    ///
    /// # Cancel safety
    /// Cancel safe in that nothing is written twice: the bytes written leave the write buffer
    /// as they go, and the next `flush` writes the rest. A peer may have seen part of a packet,
    /// though.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.write_buf.is_empty() {
            self.io.write_all_buf(&mut self.write_buf).await?;
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Encodes `packet` with the current version and writes it (after anything queued before)
    /// and flushes: [`Framed::feed`] and [`Framed::flush`].
    ///
    /// # Errors
    /// [`ClientError::Encode`] if the packet cannot be encoded (nothing is written then), or
    /// [`ClientError::Io`].
    ///
    /// # Cancel safety
    /// As [`Framed::flush`]: if the future is dropped part of the packet may have been
    /// written, and the stream should then be closed.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        self.feed(packet)?;
        self.flush().await
    }

    /// Writes `bytes` as they are (after anything queued) and flushes: for sending malformed or
    /// hand-built packets.
    ///
    /// # Errors
    /// [`ClientError::Io`].
    ///
    /// # Cancel safety
    /// As [`Framed::send`].
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.write_buf.extend_from_slice(bytes);
        self.flush().await
    }

    /// Writes what is queued, then shuts down the write side of the transport (for TCP, sends
    /// FIN).
    ///
    /// # Errors
    /// [`ClientError::Io`].
    pub async fn shutdown(&mut self) -> Result<(), ClientError> {
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use moat_codec::{PacketId, PubAck};

    use super::*;

    fn puback(id: u16) -> Packet {
        Packet::PubAck(PubAck::new(PacketId::new(id).expect("non-zero")))
    }

    #[tokio::test]
    async fn fed_packets_go_out_in_one_flush_and_come_back_in_order() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut sender = Framed::new(a);
        let mut receiver = Framed::new(b);
        for id in 1..=3 {
            sender.feed(&puback(id)).expect("encode");
        }
        assert_eq!(sender.write_buffer().len(), 3 * 4);
        sender.flush().await.expect("flush");
        assert!(sender.write_buffer().is_empty());
        // One read brings all three; they decode without reading again.
        assert_eq!(receiver.read_more().await.expect("read"), 3 * 4);
        for id in 1..=3 {
            assert_eq!(receiver.recv_buffered().expect("decode"), Some(puback(id)));
        }
        assert_eq!(receiver.recv_buffered().expect("decode"), None);
    }

    #[tokio::test]
    async fn halves_after_split_keep_the_codec_and_the_buffers() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut left = Framed::new(a);
        left.set_version(ProtocolVersion::V5);
        let mut right = Framed::new(b);
        right.set_version(ProtocolVersion::V5);
        right.feed(&puback(1)).expect("encode");
        right.feed(&puback(2)).expect("encode");
        right.flush().await.expect("flush");
        assert_eq!(left.recv().await.expect("recv"), Some(puback(1)));
        let (mut reader, mut writer) = left.split();
        assert_eq!(reader.version(), ProtocolVersion::V5);
        assert_eq!(writer.version(), ProtocolVersion::V5);
        assert_eq!(reader.recv().await.expect("recv"), Some(puback(2)));
        writer.send(&puback(3)).await.expect("send");
        assert_eq!(right.recv().await.expect("recv"), Some(puback(3)));
        writer.shutdown().await.expect("shutdown");
        assert_eq!(right.recv().await.expect("recv"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn recv_timeout_keeps_a_partial_packet() {
        let (a, b) = tokio::io::duplex(1024);
        let mut sender = Framed::new(a);
        let mut receiver = Framed::new(b);
        sender.send_raw(&[0x40, 0x02, 0x00]).await.expect("send");
        let err = receiver
            .recv_timeout(Duration::from_millis(20))
            .await
            .expect_err("half a packet");
        assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
        assert_eq!(receiver.read_buffer(), [0x40, 0x02, 0x00]);
        sender.send_raw(&[0x01]).await.expect("send");
        assert_eq!(receiver.recv().await.expect("recv"), Some(puback(1)));
    }

    #[tokio::test]
    async fn end_of_stream_inside_a_packet_is_an_error() {
        let (a, b) = tokio::io::duplex(1024);
        let mut sender = Framed::new(a);
        let mut receiver = Framed::new(b);
        sender.send_raw(&[0x40, 0x02]).await.expect("send");
        sender.shutdown().await.expect("shutdown");
        let err = receiver.recv().await.expect_err("truncated");
        assert!(matches!(err, ClientError::Io(_)), "{err:?}");
    }
}
