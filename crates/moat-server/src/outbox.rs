//! The queue of packets waiting to be written to one connection.
//!
//! The router pushes, the connection task drains everything at once and writes it with one
//! syscall where it can. A std `Mutex` is enough: it is never held across an `.await`.
//!
//! The outbox is also how the rest of the server tells a connection to end (the router, a
//! withdrawn TLS certificate): the connection task waits on one thing
//! only, so an idle connection's task stays small.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use moat_codec::Packet;

#[derive(Debug, Default)]
struct Inner {
    packets: VecDeque<Packet>,
    /// An empty buffer with room, swapped in by [`Outbox::take_all`] so that the router never
    /// regrows the queue of a busy connection (packets are 400 bytes: regrowing is memmove).
    /// Boxed: only busy connections have one, and every connection has an outbox.
    #[allow(clippy::box_collection)] // 8 bytes in every outbox instead of 32
    spare: Option<Box<VecDeque<Packet>>>,
    closed: bool,
}

/// Why the broker ends a connection (after writing what is queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The core asked (takeover, DISCONNECT sent, shutdown).
    Broker,
    /// The listener's certificate was removed (v5: DISCONNECT 0x98 Administrative action).
    CertificateWithdrawn,
    /// A CRL now revokes the client's certificate (v5: DISCONNECT 0x87 Not authorized: the
    /// client's credential no longer admits it, which is not the operator's act on the
    /// listener that 0x98 stands for).
    CertificateRevoked,
    /// The client CA the client's certificate chains to is no longer trusted (v5: 0x87 Not
    /// authorized, as a revocation: the credential no longer admits it).
    CaRemoved,
    /// An operator disconnected the clients of a client CA (v5: 0x98 Administrative action).
    CaDisconnected,
}

/// Packets for one connection, and whether it should close after writing them.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    len: AtomicUsize,
    /// The connection task, woken when packets arrive, the outbox closes or reading resumes
    /// (a waker slot and a flag: no future to make and drop each time the task waits).
    waker: AtomicWaker,
    /// Something happened that the connection task has not looked at yet.
    signalled: AtomicBool,
    /// [`CloseReason`] as a number (0: none yet).
    reason: AtomicU8,
    /// The router wants to hear when this outbox has been drained (retained messages wait).
    room_wanted: AtomicBool,
    /// The connection is not read from: its acknowledgements are held (a full forwarding
    /// spool) and it keeps publishing.
    reading_held: AtomicBool,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked while pushing; the queue is
        // still a valid VecDeque.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the connection task, once until it looks ([`Outbox::poll_signalled`]): a burst
    /// of pushes costs one wake-up.
    fn signal(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Ready once something happened since the last time it was ready (packets pushed, the
    /// outbox closed, reading resumed); otherwise the task is woken when it does.
    pub(crate) fn poll_signalled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signalled.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A signal between the check and the registration found no waker to wake.
        if self.signalled.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Stops (or resumes) reading from the connection; a resume wakes it.
    pub(crate) fn hold_reading(&self, hold: bool) {
        if self.reading_held.swap(hold, Ordering::SeqCst) && !hold {
            self.signal();
        }
    }

    /// Whether reading is held ([`Outbox::hold_reading`]).
    pub(crate) fn reading_held(&self) -> bool {
        self.reading_held.load(Ordering::Relaxed)
    }

    /// Queues a packet. Returns false if the outbox is closed.
    pub(crate) fn push(&self, packet: Packet) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner.packets.push_back(packet);
        self.len.store(inner.packets.len(), Ordering::Relaxed);
        drop(inner);
        self.signal();
        true
    }

    /// Asks the connection task to report (`ToRouter::Room`) when it next drains the outbox.
    /// Returns true if the outbox is at most half full right now and the request was taken
    /// back: the caller goes on at once instead (either the router or the connection task
    /// takes the request, never both, never neither).
    pub(crate) fn want_room(&self, max_packets: usize) -> bool {
        self.room_wanted.store(true, Ordering::SeqCst);
        self.len() * 2 < max_packets && self.take_room_wanted()
    }

    /// Takes a pending request for a room report.
    pub(crate) fn take_room_wanted(&self) -> bool {
        self.room_wanted.swap(false, Ordering::SeqCst)
    }

    /// Packets waiting.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Asks the connection to close after writing what is queued.
    pub(crate) fn close(&self) {
        self.close_because(CloseReason::Broker);
    }

    /// Asks the connection to close, saying why (the first reason given stays).
    pub(crate) fn close_because(&self, reason: CloseReason) {
        let code = match reason {
            CloseReason::Broker => 1,
            CloseReason::CertificateWithdrawn => 3,
            CloseReason::CertificateRevoked => 4,
            CloseReason::CaRemoved => 5,
            CloseReason::CaDisconnected => 6,
        };
        let _ = self
            .reason
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
        self.lock().closed = true;
        self.signal();
    }

    /// Why the outbox was closed.
    pub(crate) fn close_reason(&self) -> CloseReason {
        match self.reason.load(Ordering::Relaxed) {
            3 => CloseReason::CertificateWithdrawn,
            4 => CloseReason::CertificateRevoked,
            5 => CloseReason::CaRemoved,
            6 => CloseReason::CaDisconnected,
            _ => CloseReason::Broker,
        }
    }

    /// Takes every waiting packet; returns them and whether the outbox is closed. The spare
    /// buffer (if any) takes their place; [`Outbox::recycle`] makes the drained one the next
    /// spare for a busy connection, and a quiet connection keeps none.
    pub(crate) fn take_all(&self) -> (VecDeque<Packet>, bool) {
        let mut inner = self.lock();
        let spare = inner.spare.take().map(|b| *b).unwrap_or_default();
        let packets = std::mem::replace(&mut inner.packets, spare);
        self.len.store(0, Ordering::Relaxed);
        (packets, inner.closed)
    }

    /// Frees the spare buffer (the connection went quiet).
    pub(crate) fn drop_spare(&self) {
        self.lock().spare = None;
    }

    /// Keeps an emptied buffer as the next spare.
    pub(crate) fn recycle(&self, mut buffer: VecDeque<Packet>) {
        buffer.clear();
        let mut inner = self.lock();
        if inner
            .spare
            .as_ref()
            .is_none_or(|s| s.capacity() < buffer.capacity())
        {
            inner.spare = Some(Box::new(buffer));
        }
    }
}
