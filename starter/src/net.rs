//! The starter's part of a job's remote sockets (see `proto::net` and
//! docs/internals.md, "Sockets").
//!
//! A remote socket's placeholder is fed like a read stream, but by pushes:
//! the shadow sends what the peer wrote (`FromShadow::Push`), the relay
//! queues it in the placeholder's [`SockFeed`] and writes it into the
//! placeholder as the job makes room, acknowledging each write to the
//! shadow (which keeps at most `PUSH_WINDOW` bytes unacknowledged). An
//! empty push is the peer's end of file: once the queue is written, our
//! end of the placeholder is shut down for writing and the job reads EOF.
//! What the job writes travels like any placeholder write.

use crate::relay::{Answer, Backend, Placeholder, Relay};
use proto::Handle;
use proto::fileop::{FileOp, FileReply};
use proto::net::{NetOp, NetReply};
use proto::shim::ShimReply;
use rustix::net::SendFlags;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use tokio::io::Interest;
use tracing::{debug, warn};

/// Pushed bytes not yet written into a socket's placeholder.
#[derive(Debug, Default)]
pub(crate) struct SockFeed {
    buf: VecDeque<u8>,
    /// The peer closed its side: shut the placeholder down after `buf`.
    eof: bool,
    /// The placeholder is shut down for writing (or the job is gone).
    shut: bool,
    /// Bytes written into the placeholder since it was made.
    pub(crate) delivered: u64,
}

impl SockFeed {
    /// Something is left to write (bytes, or the end of file).
    pub(crate) fn pending(&self) -> bool {
        !self.shut && (!self.buf.is_empty() || self.eof)
    }
}

/// Queues a push for the placeholder of socket `h`.
pub(crate) fn pushed(places: &mut BTreeMap<u64, Placeholder>, h: Handle, data: Vec<u8>) {
    let Some(f) = places
        .values_mut()
        .find(|p| p.h == h)
        .and_then(|p| p.net.as_mut())
    else {
        debug!(?h, len = data.len(), "push for a socket the job has closed");
        return;
    };
    if data.is_empty() {
        f.eof = true;
    } else {
        f.buf.extend(data);
    }
}

impl<B: Backend> Relay<B> {
    /// A socket call: `Socket` and `Accept` get a placeholder.
    pub(crate) async fn net_call(&mut self, op: NetOp) -> Answer {
        let reply = self.call(FileOp::Net(op)).await;
        let h = match &reply {
            FileReply::Opened { h, .. } => *h,
            FileReply::Net(NetReply::Accepted { h, .. }) => *h,
            _ => {
                return Answer {
                    reply: ShimReply::Reply(reply),
                    fd: None,
                };
            }
        };
        match self.add_sock(h) {
            Ok(fd) => Answer {
                reply: ShimReply::Reply(reply),
                fd: Some(fd),
            },
            Err(e) => {
                warn!(?h, "cannot create a socket placeholder: {e}");
                let _ = self.call(FileOp::Close { h }).await;
                Answer {
                    reply: ShimReply::Reply(FileReply::Err(
                        e.raw_os_error().unwrap_or(libc::EMFILE),
                    )),
                    fd: None,
                }
            }
        }
    }

    /// For each socket, the bytes the job has consumed from its placeholder
    /// (written there, less what a checkpoint's fd table says is unread).
    pub(crate) fn sock_offsets(&self, fds: &[proto::ckpt::FdRecord]) -> Vec<(Handle, i64)> {
        let mut out = Vec::new();
        for p in self.places.values() {
            if let Some(n) = p.net.as_ref()
                && !out.iter().any(|(h, _)| *h == p.h)
            {
                let unread = fds
                    .iter()
                    .find(|f| f.handle == p.h.0 && f.kind & proto::ckpt::FD_REMOTE != 0)
                    .map_or(0, |f| f.unread);
                debug!(h = ?p.h, delivered = n.delivered, unread, queued = n.buf.len(), "socket position at a checkpoint");
                out.push((p.h, n.delivered.saturating_sub(unread) as i64));
            }
        }
        out
    }

    /// A placeholder for socket `h` (the job's end is returned).
    pub(crate) fn add_sock(&mut self, h: Handle) -> io::Result<std::os::fd::OwnedFd> {
        let fd = self.add(h, libc::O_RDWR, false, false)?;
        if let Some(p) = self.places.values_mut().find(|p| p.h == h) {
            p.net = Some(SockFeed::default());
        }
        Ok(fd)
    }

    /// Writes what the shadow pushed for this placeholder, as far as it
    /// fits, and acknowledges it.
    pub(crate) async fn feed_sock(&mut self, ino: u64) {
        let Some(p) = self.places.get_mut(&ino) else {
            return;
        };
        let h = p.h;
        let Some(f) = p.net.as_mut() else { return };
        let mut written = 0u64;
        while !f.buf.is_empty() && !f.shut {
            let (a, _) = f.buf.as_slices();
            let sock = &p.sock;
            let r = sock.try_io(Interest::WRITABLE, || {
                rustix::net::send(sock, a, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
                    .map_err(io::Error::from)
            });
            match r {
                Ok(n) => {
                    f.buf.drain(..n);
                    written += n as u64;
                    f.delivered += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(?h, "socket placeholder gone: {e}");
                    f.shut = true;
                    f.buf.clear();
                }
            }
        }
        if f.buf.is_empty() && f.eof && !f.shut {
            f.shut = true;
            if let Err(e) = rustix::net::shutdown(&p.sock, rustix::net::Shutdown::Write) {
                debug!(?h, "shutting down a socket placeholder: {e}");
            }
        }
        if written > 0 {
            self.backend.ack(h, written).await;
        }
    }
}
