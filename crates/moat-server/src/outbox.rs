//! The queue of packets waiting to be written to one connection.
//!
//! The router pushes, the connection task drains everything at once and writes it with one
//! syscall where it can. A std `Mutex` is enough: it is never held across an `.await`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use moat_codec::Packet;
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Inner {
    packets: VecDeque<Packet>,
    closed: bool,
}

/// Packets for one connection, and whether it should close after writing them.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    len: AtomicUsize,
    /// Wakes the connection task when packets arrive or the outbox closes.
    pub(crate) ready: Notify,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked while pushing; the queue is
        // still a valid VecDeque.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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
        self.ready.notify_one();
        true
    }

    /// Packets waiting.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Asks the connection to close after writing what is queued.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Takes every waiting packet; returns them and whether the outbox is closed. The outbox
    /// is left without a buffer (an idle connection holds none); [`Outbox::recycle`] gives a
    /// busy connection's buffer back.
    pub(crate) fn take_all(&self) -> (VecDeque<Packet>, bool) {
        let mut inner = self.lock();
        let packets = std::mem::take(&mut inner.packets);
        self.len.store(0, Ordering::Relaxed);
        (packets, inner.closed)
    }

    /// Gives an emptied buffer back for the next packets, if the outbox has none yet.
    pub(crate) fn recycle(&self, mut buffer: VecDeque<Packet>) {
        buffer.clear();
        let mut inner = self.lock();
        if inner.packets.capacity() == 0 {
            inner.packets = buffer;
        }
    }
}
