//! The byte stream under a server TLS connection, which holds back what rustls writes once a
//! TLS 1.3 handshake is complete (its NewSessionTicket messages) until the broker's first write
//! of its own (the CONNACK), so that both leave in one system call and one TCP segment.
//!
//! tokio-rustls writes and flushes the tickets before its accept future returns; the CONNACK
//! follows microseconds later. Sent apart, they cost a `writev` and a loopback segment each
//! (about 9 µs of kernel time per connection here, docs/BENCHMARKS.md "Handshake cost, where
//! it goes"). Nothing the client needs to finish its handshake is held: only writes that consist
//! of whole TLS records of type application_data (23), which during a handshake can only be the
//! TLS 1.3 messages sent after the client's Finished (tickets), or an encrypted alert when the
//! handshake fails, which [`TicketHold::release`] then sends. A server flight always begins with
//! a handshake record (22) in TLS 1.3 and TLS 1.2 alike, and TLS 1.2 sends no application_data
//! record before its handshake ends.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// TLS record content type application_data (RFC 8446 section 5.1).
const APPLICATION_DATA: u8 = 23;
/// A TLS record header: type, version (2 bytes), length (2 bytes).
const HEADER: usize = 5;

/// A stream that holds TLS 1.3 post-handshake records until the next write of the broker.
#[derive(Debug)]
pub(crate) struct TicketHold<IO> {
    io: IO,
    /// Bytes accepted from rustls and not yet written to `io`.
    held: Vec<u8>,
    /// Until [`TicketHold::established`]: where the bytes written so far stand in the record
    /// stream. `None` afterwards (nothing more is held).
    handshake: Option<Records>,
}

impl<IO> TicketHold<IO> {
    pub(crate) fn new(io: IO) -> Self {
        Self {
            io,
            held: Vec::new(),
            handshake: Some(Records::default()),
        }
    }

    /// The handshake is complete: nothing more is held, and what is held goes out with the next
    /// write (or flush, or shutdown).
    pub(crate) fn established(&mut self) {
        self.handshake = None;
    }

    /// The bytes held now (for tests and the failure path).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.len()
    }
}

impl<IO: AsyncWrite + Unpin> TicketHold<IO> {
    /// Writes what is held (after a failed handshake: its alert), within the caller's timeout.
    pub(crate) async fn release(&mut self) -> io::Result<()> {
        self.handshake = None;
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return Ok(());
        }
        self.io.write_all(&held).await?;
        self.io.flush().await
    }

    /// Writes what is held, if anything, before any other byte.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        // An idle connection keeps no buffer (the tickets' was about 500 bytes).
        self.held = Vec::new();
        Poll::Ready(Ok(()))
    }

    /// Writes `bufs` after what is held, both in one vectored write when the socket takes
    /// them. Returns how many bytes of `bufs` were written.
    fn poll_write_after_held(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.held.is_empty() {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        // The held bytes first, then as many of `bufs` as fit in a small array (rustls writes
        // a handful of chunks at a time).
        let mut slices = [IoSlice::new(&[]); 16];
        slices[0] = IoSlice::new(&self.held);
        let mut count = 1;
        for b in bufs.iter().filter(|b| !b.is_empty()).take(slices.len() - 1) {
            slices[count] = IoSlice::new(b);
            count += 1;
        }
        let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        let held = self.held.len();
        if n < held {
            self.held.drain(..n);
            // None of `bufs` went out yet: write the rest of the held bytes now, then report
            // `bufs` as not yet written (the caller's next poll writes them).
            ready!(self.poll_write_held(cx))?;
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        self.held = Vec::new();
        if n > held {
            return Poll::Ready(Ok(n - held));
        }
        // Exactly the held bytes: `bufs` next (a zero-length answer would read as WriteZero).
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for TicketHold<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for TicketHold<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(records) = &mut this.handshake else {
            return this.poll_write_after_held(cx, bufs);
        };
        let mut after = *records;
        if records.at_boundary() && after.advance_all(bufs) && after.at_boundary() {
            let before = this.held.len();
            for b in bufs {
                this.held.extend_from_slice(b);
            }
            *records = after;
            return Poll::Ready(Ok(this.held.len() - before));
        }
        let n = ready!(this.poll_write_after_held(cx, bufs))?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if n < total {
            // The socket took part of a handshake write: the rest follows in later writes that
            // may begin at a record boundary with encrypted handshake records, which must not
            // wait. Nothing more is held on this connection.
            this.handshake = None;
        } else if let Some(records) = &mut this.handshake {
            records.advance_written(bufs, n);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // During the handshake a flush leaves held records where they are: that is the point.
        if this.handshake.is_none() {
            ready!(this.poll_write_held(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Where a stream of bytes written stands in its TLS records.
#[derive(Debug, Default, Clone, Copy)]
struct Records {
    /// The current record's header bytes seen so far (0 to 4; 0 also between records).
    header: [u8; HEADER],
    have: usize,
    /// Bytes of the current record's body still to come.
    body_left: usize,
}

impl Records {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.body_left == 0
    }

    /// Moves over `bytes`. Returns whether every record header in them was application_data.
    fn advance(&mut self, mut bytes: &[u8]) -> bool {
        let mut app_only = true;
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEADER {
                app_only &= self.header[0] == APPLICATION_DATA;
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.have = 0;
            }
        }
        app_only
    }

    /// Moves over all of `bufs`; whether they held application_data records only (and any).
    fn advance_all(&mut self, bufs: &[IoSlice<'_>]) -> bool {
        let mut app_only = true;
        let mut any = false;
        for b in bufs {
            any |= !b.is_empty();
            app_only &= self.advance(b);
        }
        any && app_only
    }

    /// Moves over the first `n` bytes of `bufs` (what a write took).
    fn advance_written(&mut self, bufs: &[IoSlice<'_>], mut n: usize) {
        for b in bufs {
            if n == 0 {
                break;
            }
            let take = n.min(b.len());
            self.advance(&b[..take]);
            n -= take;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::TicketHold;

    fn record(kind: u8, body: usize) -> Vec<u8> {
        let mut r = vec![kind, 3, 3];
        r.extend_from_slice(&u16::try_from(body).unwrap().to_be_bytes());
        r.extend(std::iter::repeat_n(kind, body));
        r
    }

    async fn read_now(r: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut out = vec![0; 4096];
        match tokio::time::timeout(std::time::Duration::from_millis(50), r.read(&mut out)).await {
            Ok(Ok(n)) => out.truncate(n),
            _ => out.clear(),
        }
        out
    }

    #[tokio::test]
    async fn tickets_wait_for_the_first_write_after_the_handshake() {
        let (a, mut peer) = tokio::io::duplex(4096);
        let mut s = TicketHold::new(a);
        // The server's flight (handshake record first, then encrypted ones) goes out at once.
        let mut flight = record(22, 100);
        flight.extend(record(20, 1));
        flight.extend(record(23, 300));
        s.write_all(&flight).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(read_now(&mut peer).await, flight);
        // Two tickets after the client's Finished: held, also across a flush.
        let mut tickets = record(23, 180);
        tickets.extend(record(23, 180));
        s.write_all(&tickets).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(s.held(), tickets.len());
        assert!(read_now(&mut peer).await.is_empty());
        // The first write after the handshake takes them along, in order.
        s.established();
        let connack = record(23, 21);
        s.write_all(&connack).await.unwrap();
        s.flush().await.unwrap();
        let mut want = tickets.clone();
        want.extend(&connack);
        assert_eq!(read_now(&mut peer).await, want);
        assert_eq!(s.held(), 0);
    }

    #[tokio::test]
    async fn a_flight_split_by_a_partial_write_is_never_held() {
        // A pipe with room for 10 bytes at a time: the flight goes out in pieces, some of which
        // start with application_data bytes in the middle of a record.
        let (a, mut peer) = tokio::io::duplex(10);
        let mut s = TicketHold::new(a);
        let mut flight = record(22, 30);
        flight.extend(record(23, 40));
        let reader = tokio::spawn(async move {
            let mut got = vec![0; flight.len()];
            peer.read_exact(&mut got).await.unwrap();
            (got, flight)
        });
        let mut f = record(22, 30);
        f.extend(record(23, 40));
        s.write_all(&f).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(s.held(), 0);
        let (got, want) = reader.await.unwrap();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_flight_split_at_a_record_boundary_is_never_held() {
        // The pipe takes exactly the handshake record, then the encrypted records follow in a
        // write of their own that starts at a boundary: it must go out, not wait.
        let (a, mut peer) = tokio::io::duplex(35);
        let mut s = TicketHold::new(a);
        let mut flight = record(22, 30);
        flight.extend(record(23, 40));
        let want = flight.clone();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; want.len()];
            peer.read_exact(&mut got).await.unwrap();
            (got, want)
        });
        s.write_all(&flight).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(s.held(), 0);
        let (got, want) = tokio::time::timeout(std::time::Duration::from_secs(30), reader)
            .await
            .expect("the whole flight arrives")
            .unwrap();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_failed_handshake_sends_its_alert() {
        let (a, mut peer) = tokio::io::duplex(4096);
        let mut s = TicketHold::new(a);
        s.write_all(&record(22, 50)).await.unwrap();
        let _ = read_now(&mut peer).await;
        let alert = record(23, 19);
        s.write_all(&alert).await.unwrap();
        assert!(read_now(&mut peer).await.is_empty());
        s.release().await.unwrap();
        assert_eq!(read_now(&mut peer).await, alert);
    }

    #[tokio::test]
    async fn held_bytes_go_out_before_a_shutdown() {
        let (a, mut peer) = tokio::io::duplex(4096);
        let mut s = TicketHold::new(a);
        let tickets = record(23, 100);
        s.write_all(&tickets).await.unwrap();
        s.established();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, tickets);
    }

    #[tokio::test]
    async fn held_bytes_and_a_large_write_through_a_small_pipe() {
        let (a, mut peer) = tokio::io::duplex(64);
        let mut s = TicketHold::new(a);
        let tickets = record(23, 150);
        s.write_all(&tickets).await.unwrap();
        s.established();
        let data = record(23, 1000);
        let mut want = tickets.clone();
        want.extend(&data);
        let n = want.len();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; n];
            peer.read_exact(&mut got).await.unwrap();
            got
        });
        s.write_all(&data).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), want);
    }
}
