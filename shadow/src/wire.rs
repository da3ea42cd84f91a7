//! The shadow's end of a starter link that survives being cut.
//!
//! Every counted message (see `proto::shadow`) takes the next number in
//! its direction. [`Wire`] counts what it reads and what it sends, keeps
//! each sent frame until the starter's `Ack` covers it, answers with
//! `Ack`s of its own (at least every [`ACK_EVERY`] messages, and as a
//! heartbeat every [`HEARTBEAT`]), and reports a link silent for longer
//! than [`SILENCE`]. A starter that dials again hands its new stream to
//! [`Wire::resume`], which resends what the starter has not seen.
//!
//! Frames that are not worth keeping (executable and image chunks, sent
//! before the job runs) go through [`Wire::send_volatile`]: a resume that
//! would need one of them is refused.

use proto::frame::{MAX_FRAME, check_header, decode_body, encode_into, write_frame_async};
use proto::shadow::{FromShadow, ToShadow};
use proto::{JobId, ProtoError};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub(crate) type Stream = BufStream<tokio_rustls::server::TlsStream<TcpStream>>;

/// How often each side sends an `Ack` when nothing else asks for one.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A link with no frame for this long is taken as lost.
pub const SILENCE: Duration = Duration::from_secs(10);
/// An `Ack` goes out at least this often, in messages received.
pub const ACK_EVERY: u64 = 64;

/// A starter dialling again for a session it lost.
pub(crate) struct Resume {
    pub st: Stream,
    /// Counted messages from the shadow the starter has.
    pub received: u64,
}

/// Reads the starter's frames so that a `select!` that takes another
/// branch loses nothing: a partly read frame stays in `buf`.
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
    start: usize,
}

impl Frames {
    async fn next(&mut self, r: &mut Stream, heard: &mut Instant) -> Result<ToShadow, ProtoError> {
        use tokio::io::AsyncReadExt;
        loop {
            let avail = &self.buf[self.start..];
            if avail.len() >= 4 {
                let len = check_header([avail[0], avail[1], avail[2], avail[3]], MAX_FRAME)?;
                if avail.len() >= 4 + len {
                    let m = decode_body(&avail[4..4 + len]);
                    self.start += 4 + len;
                    return m;
                }
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let want = match self.buf.len() {
                n if n >= 4 => {
                    4 + check_header(
                        [self.buf[0], self.buf[1], self.buf[2], self.buf[3]],
                        MAX_FRAME,
                    )?
                }
                _ => 4,
            };
            self.buf
                .reserve(want.saturating_sub(self.buf.len()).max(64 << 10));
            // Cancel-safe: bytes read are in `buf` even if this await is dropped.
            if r.read_buf(&mut self.buf).await? == 0 {
                return Err(ProtoError::Closed);
            }
            *heard = Instant::now();
        }
    }
}

/// One job's link to its starter, across reconnects.
pub(crate) struct Wire {
    st: Option<Stream>,
    frames: Frames,
    /// Counted messages sent.
    sent: u64,
    /// Sent frames the starter has not acknowledged, by number.
    unacked: VecDeque<(u64, Vec<u8>)>,
    /// The last number sent without being kept.
    floor: u64,
    /// Counted messages received.
    received: u64,
    /// `received` when the last `Ack` went out.
    acked: u64,
    heard: Instant,
    /// Why the current stream was given up.
    broken: Option<String>,
    /// The starter closed or reset the connection: it is gone, not cut off.
    gone: bool,
    out: Vec<u8>,
}

impl Wire {
    pub fn new(st: Stream) -> Wire {
        Wire {
            st: Some(st),
            frames: Frames::default(),
            sent: 0,
            unacked: VecDeque::new(),
            floor: 0,
            received: 0,
            acked: 0,
            heard: Instant::now(),
            broken: None,
            gone: false,
            out: Vec::new(),
        }
    }

    /// Why the link is down, if it is.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Whether the starter itself ended the connection (closed or reset
    /// it), rather than the link going silent.
    pub fn peer_gone(&self) -> bool {
        self.gone
    }

    /// Gives up the current stream after an I/O error: a reset or broken
    /// pipe says the starter is gone; anything else, that the link is.
    pub fn failed(&mut self, what: &str, e: &std::io::Error) {
        use std::io::ErrorKind::*;
        if matches!(
            e.kind(),
            ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
        ) {
            self.gone = true;
        }
        self.drop_link(format!("{what}: {e}"));
    }

    /// Gives up the current stream.
    pub fn drop_link(&mut self, why: String) {
        self.st = None;
        self.frames = Frames::default();
        if self.broken.is_none() {
            self.broken = Some(why);
        }
    }

    /// The next counted message; `Ack`s are taken here. Pending while the
    /// link is down.
    pub async fn next(&mut self) -> Result<ToShadow, ProtoError> {
        loop {
            let Some(st) = self.st.as_mut() else {
                return std::future::pending().await;
            };
            let m = self.frames.next(st, &mut self.heard).await?;
            match m {
                ToShadow::Ack { received } => {
                    while self.unacked.front().is_some_and(|(n, _)| *n <= received) {
                        self.unacked.pop_front();
                    }
                }
                m => {
                    if m.counted() {
                        self.received += 1;
                    }
                    return Ok(m);
                }
            }
        }
    }

    /// Sends a message, kept until acknowledged. A failure gives the
    /// stream up (see [`Wire::broken`]); the message is resent on resume.
    pub async fn send(&mut self, m: &FromShadow) {
        self.send_inner(m, true).await
    }

    /// Sends a message that is not kept (a resume that needs it fails).
    pub async fn send_volatile(&mut self, m: &FromShadow) {
        self.send_inner(m, false).await
    }

    async fn send_inner(&mut self, m: &FromShadow, keep: bool) {
        if let Err(e) = encode_into(m, &mut self.out) {
            // Only a message over the frame limit fails to encode.
            self.drop_link(format!("cannot encode a message: {e}"));
            return;
        }
        let kept = m.counted() && keep;
        if m.counted() {
            self.sent += 1;
            if !keep {
                self.floor = self.sent;
            }
        }
        if let Some(st) = self.st.as_mut() {
            let r = async {
                st.write_all(&self.out).await?;
                st.flush().await
            }
            .await;
            if let Err(e) = r {
                self.failed("sending to the starter failed", &e);
            }
        }
        if kept {
            // The frame itself is kept; the next one gets a new buffer.
            self.unacked
                .push_back((self.sent, std::mem::take(&mut self.out)));
        }
    }

    /// Acknowledges what arrived: always with `force` (a heartbeat),
    /// otherwise once [`ACK_EVERY`] messages are unacknowledged.
    pub async fn ack(&mut self, force: bool) {
        if force || self.received - self.acked >= ACK_EVERY {
            self.acked = self.received;
            let m = FromShadow::Ack {
                received: self.received,
            };
            self.send_inner(&m, false).await;
        }
    }

    /// Counted messages received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether [`Wire::ack`] without `force` would send an `Ack` now.
    pub fn ack_due(&self) -> bool {
        self.received - self.acked >= ACK_EVERY
    }

    /// A link to a starter that lost a schedd which has since restarted:
    /// nothing sent before is kept here; the count goes on from what the
    /// starter has, and `received` (saved before the restart) tells the
    /// starter what to send again.
    pub async fn adopted(r: Resume, received: u64) -> Result<Wire, String> {
        let mut w = Wire::new(r.st);
        w.sent = r.received;
        w.floor = r.received;
        w.received = received;
        w.acked = received;
        w.send_inner(&FromShadow::Resumed { received }, false).await;
        match w.broken() {
            Some(why) => Err(why.to_string()),
            None => Ok(w),
        }
    }

    /// How long nothing has arrived.
    pub fn silent_for(&self) -> Duration {
        self.heard.elapsed()
    }

    /// Takes the starter's new stream: answers `Resumed` and resends what
    /// it lacks, or refuses (`Err`, with the reason it was sent) when that
    /// is no longer here.
    pub async fn resume(&mut self, job: JobId, mut r: Resume) -> Result<(), String> {
        let kept_from = self.unacked.front().map_or(self.sent + 1, |(n, _)| *n);
        let why = if r.received > self.sent {
            Some(format!(
                "the starter says it has {} messages of job {job}, but only {} were sent",
                r.received, self.sent
            ))
        } else if r.received < self.floor || r.received + 1 < kept_from {
            Some(format!(
                "job {job}'s starter lacks messages that are not kept (it has {}, kept from {kept_from})",
                r.received
            ))
        } else {
            None
        };
        if let Some(reason) = why {
            let _ = write_frame_async(
                &mut r.st,
                &FromShadow::Refused {
                    reason: reason.clone(),
                },
            )
            .await;
            return Err(reason);
        }
        self.st = Some(r.st);
        self.frames = Frames::default();
        self.broken = None;
        self.gone = false;
        self.heard = Instant::now();
        let m = FromShadow::Resumed {
            received: self.received,
        };
        self.send_inner(&m, false).await;
        let again: Vec<Vec<u8>> = self
            .unacked
            .iter()
            .filter(|(n, _)| *n > r.received)
            .map(|(_, f)| f.clone())
            .collect();
        for f in again {
            let Some(st) = self.st.as_mut() else { break };
            let w = async {
                st.write_all(&f).await?;
                st.flush().await
            }
            .await;
            if let Err(e) = w {
                self.failed("resending to the starter failed", &e);
                break;
            }
        }
        Ok(())
    }
}
