//! The shim protocol server: one actor that owns the job's [`Backend`] and
//! every placeholder socket of the job.
//!
//! Each shim connection is a task that reads one [`ShimRequest`] frame,
//! hands it to the actor and writes the answer back (with the placeholder fd
//! attached by SCM_RIGHTS when an `Open` succeeds). The actor serializes
//! every call to the backend and keeps the ordering rule of
//! `docs/internals.md`: before a call is forwarded, the bytes already
//! written into any placeholder are read and forwarded as writes first.
//! Bytes the job writes into a placeholder become [`Backend::write`]s; when
//! every copy of a placeholder is closed in the job (EOF on our end), its
//! handle is closed on the backend. Read streams (the job's stdin, and any
//! placeholder the shim asks for with `Stream`) are fed from the handle as
//! the job consumes them.

use proto::Handle;
use proto::ckpt::{FD_REMOTE, FdRecord};
use proto::fileop::{FileOp, FileReply};
use proto::frame::{self, MAX_FRAME, ProtoError};
use proto::shim::{InheritedFd, ShimReply, ShimRequest};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::task::{Context, Poll};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// Where a job's remote calls and writes go (the shadow, over TLS in the
/// starter; an in-process file engine in tests). Calls are made one at a
/// time, in the order the job issued them; writes are not answered.
pub trait Backend: Send + 'static {
    /// Executes one call and returns its reply.
    fn call(&mut self, op: FileOp) -> impl Future<Output = FileReply> + Send;
    /// Applies bytes the job wrote to `h`, at the handle's offset, after
    /// every earlier call and write.
    fn write(&mut self, h: Handle, data: Vec<u8>) -> impl Future<Output = ()> + Send;

    /// Socket data pushed by the shadow (handle, bytes; empty: end of
    /// file), taken once by the relay. A backend without sockets has none.
    fn pushes(&mut self) -> Option<Pushes> {
        None
    }
    /// `n` more pushed bytes of socket `h` are in its placeholder.
    fn ack(&mut self, _h: Handle, _n: u64) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// A checkpoint image follows (`ckpt_chunk`s, then `ckpt_end` or
    /// `ckpt_abort`). A backend that keeps no images ignores it.
    fn ckpt_begin(&mut self, _reason: String) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The next piece of the zstd-compressed image.
    fn ckpt_chunk(&mut self, _data: Vec<u8>) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The image is complete; every write of the job made before it is
    /// already applied. `streams` gives each read stream's offset as the
    /// job consumed it. Resolves once the image is committed (the stored
    /// size) or refused (why).
    fn ckpt_end(
        &mut self,
        _raw_bytes: u64,
        _seconds: f64,
        _streams: Vec<(Handle, i64)>,
    ) -> impl Future<Output = Result<u64, String>> + Send {
        async { Err("this backend keeps no checkpoint images".to_string()) }
    }
    /// No image (more) this time: the job could not be checkpointed (why).
    fn ckpt_abort(&mut self, _reason: String) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Socket data the shadow pushes: (handle, bytes; empty: end of file).
pub type Pushes = mpsc::UnboundedReceiver<(Handle, Vec<u8>)>;

/// Bytes fetched from a read stream's handle per `Read` call.
const STREAM_CHUNK: u32 = 256 << 10;
/// Size of one read from a placeholder (one `Backend::write` at most).
const READ_CHUNK: usize = 256 << 10;
/// Bytes read from one readable placeholder before other work gets a turn.
const READ_BUDGET: usize = 1 << 20;
/// Flags that describe how a file was opened, not the open file itself.
const CREATION_FLAGS: i32 =
    libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_TRUNC | libc::O_CLOEXEC;

/// One request of a shim connection, with the way back to it.
pub(crate) struct ShimCall {
    pub req: ShimRequest,
    pub answer: oneshot::Sender<Answer>,
}

/// The actor's answer to one request: the reply frame and, for a
/// successful `Open`, the job's end of the new placeholder.
pub(crate) struct Answer {
    pub reply: ShimReply,
    pub fd: Option<OwnedFd>,
}

/// Something a placeholder is ready for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoEvent {
    /// The job wrote into it, or closed its last copy.
    Readable(u64),
    /// A read stream has room for more of its file.
    Writable(u64),
}

/// Our end of a placeholder, keyed by the inode of the job's end.
pub(crate) struct Placeholder {
    pub(crate) h: Handle,
    flags: i32,
    dir: bool,
    pub(crate) sock: UnixStream,
    stream: Option<Feed>,
    /// A remote socket: what the shadow pushed and is not yet in `sock`.
    pub(crate) net: Option<crate::net::SockFeed>,
    /// The job closed its last copy (read EOF); the handle is to be closed.
    eof: bool,
}

/// The state of a read stream: bytes fetched and not yet in the socket.
#[derive(Default)]
struct Feed {
    buf: Vec<u8>,
    pos: usize,
    /// End of file reached (or the job stopped reading): nothing more to push.
    done: bool,
}

/// The relay actor: the backend and every placeholder of one job.
pub(crate) struct Relay<B> {
    pub(crate) backend: B,
    pub(crate) places: BTreeMap<u64, Placeholder>,
    /// Socket data pushed by the shadow.
    pushes: Option<Pushes>,
    /// Where the next readiness scan starts, so that no placeholder starves.
    cursor: u64,
    buf: Vec<u8>,
}

impl<B: Backend> Relay<B> {
    pub fn new(mut backend: B) -> Self {
        Relay {
            pushes: backend.pushes(),
            backend,
            places: BTreeMap::new(),
            cursor: 0,
            buf: vec![0; READ_CHUNK],
        }
    }

    /// No placeholder is left: every handle the job had is closed.
    pub fn is_idle(&self) -> bool {
        self.places.is_empty()
    }

    /// Creates a placeholder for `h` and returns the job's end (blocking,
    /// close-on-exec). A stream placeholder is fed from the handle at once.
    pub fn add(&mut self, h: Handle, flags: i32, dir: bool, stream: bool) -> io::Result<OwnedFd> {
        let (mine, theirs) = std::os::unix::net::UnixStream::pair()?;
        mine.set_nonblocking(true)?;
        let ino = rustix::fs::fstat(&theirs).map_err(io::Error::from)?.st_ino;
        let sock = UnixStream::from_std(mine)?;
        let place = Placeholder {
            h,
            flags: flags & !CREATION_FLAGS,
            dir,
            sock,
            stream: stream.then(Feed::default),
            net: None,
            eof: false,
        };
        self.places.insert(ino, place);
        Ok(theirs.into())
    }

    /// Waits for a placeholder to become readable, or a stream writable.
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<IoEvent> {
        if let Some(rx) = self.pushes.as_mut() {
            while let Poll::Ready(m) = rx.poll_recv(cx) {
                match m {
                    Some((h, data)) => crate::net::pushed(&mut self.places, h, data),
                    None => {
                        self.pushes = None;
                        break;
                    }
                }
            }
        }
        let (after, before) = (
            self.places.range(self.cursor..),
            self.places.range(..self.cursor),
        );
        let mut found = None;
        for (&ino, p) in after.chain(before) {
            if p.eof {
                found = Some(IoEvent::Readable(ino));
                break;
            }
            if p.sock.poll_read_ready(cx).is_ready() {
                found = Some(IoEvent::Readable(ino));
                break;
            }
            if (p.stream.as_ref().is_some_and(|f| !f.done)
                || p.net.as_ref().is_some_and(|n| n.pending()))
                && p.sock.poll_write_ready(cx).is_ready()
            {
                found = Some(IoEvent::Writable(ino));
                break;
            }
        }
        match found {
            Some(ev) => {
                let (IoEvent::Readable(ino) | IoEvent::Writable(ino)) = ev;
                self.cursor = ino.wrapping_add(1);
                Poll::Ready(ev)
            }
            None => Poll::Pending,
        }
    }

    /// Handles what [`Relay::poll_io`] reported.
    pub async fn on_io(&mut self, ev: IoEvent) {
        match ev {
            IoEvent::Readable(ino) => {
                self.read_place(ino, READ_BUDGET).await;
                if self.places.get(&ino).is_some_and(|p| p.eof) {
                    self.sync().await;
                }
            }
            IoEvent::Writable(ino) if self.places.get(&ino).is_some_and(|p| p.net.is_some()) => {
                self.feed_sock(ino).await
            }
            IoEvent::Writable(ino) => self.feed(ino).await,
        }
    }

    /// Answers one shim request.
    pub async fn handle(&mut self, req: ShimRequest) -> Answer {
        match req {
            ShimRequest::Hello { pid, inherited } => {
                let remote: Vec<InheritedFd> = inherited
                    .iter()
                    .filter_map(|&(fd, ino)| {
                        self.places.get(&ino).map(|p| InheritedFd {
                            fd,
                            h: p.h,
                            flags: p.flags,
                            stream: p.stream.is_some() || p.net.is_some(),
                            dir: p.dir,
                        })
                    })
                    .collect();
                debug!(
                    pid,
                    inherited = inherited.len(),
                    remote = remote.len(),
                    "shim hello"
                );
                Answer {
                    reply: ShimReply::Welcome { remote },
                    fd: None,
                }
            }
            ShimRequest::Call(FileOp::Open {
                at,
                path,
                flags,
                mode,
            }) => {
                let reply = self
                    .call(FileOp::Open {
                        at,
                        path,
                        flags,
                        mode,
                    })
                    .await;
                match reply {
                    FileReply::Opened { h, stat } => {
                        let dir = stat.mode & libc::S_IFMT == libc::S_IFDIR;
                        match self.add(h, flags, dir, false) {
                            Ok(fd) => Answer {
                                reply: ShimReply::Reply(FileReply::Opened { h, stat }),
                                fd: Some(fd),
                            },
                            Err(e) => {
                                warn!(?h, "cannot create a placeholder: {e}");
                                if let FileReply::Err(errno) = self.call(FileOp::Close { h }).await
                                {
                                    warn!(?h, errno, "closing the handle failed");
                                }
                                let errno = e.raw_os_error().unwrap_or(libc::EMFILE);
                                Answer {
                                    reply: ShimReply::Reply(FileReply::Err(errno)),
                                    fd: None,
                                }
                            }
                        }
                    }
                    other => Answer {
                        reply: ShimReply::Reply(other),
                        fd: None,
                    },
                }
            }
            ShimRequest::Call(FileOp::Net(op)) => self.net_call(op).await,
            ShimRequest::Call(op) => Answer {
                reply: ShimReply::Reply(self.call(op).await),
                fd: None,
            },
            ShimRequest::Stream { h } => {
                match self.places.values_mut().find(|p| p.h == h) {
                    Some(p) => {
                        if p.stream.is_none() {
                            p.stream = Some(Feed::default());
                        }
                    }
                    None => warn!(?h, "stream requested for a handle without a placeholder"),
                }
                Answer {
                    reply: ShimReply::Ok,
                    fd: None,
                }
            }
            ShimRequest::Flush => {
                if let FileReply::Err(errno) = self.call(FileOp::Barrier).await {
                    warn!(errno, "barrier failed");
                }
                Answer {
                    reply: ShimReply::Ok,
                    fd: None,
                }
            }
        }
    }

    /// Forwards every byte the job has written so far and closes the
    /// handles it has let go of.
    pub async fn flush(&mut self) {
        self.sync().await;
    }

    /// The backend, for messages outside the job's calls (checkpoints).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// For each read stream, the offset up to which the job has consumed
    /// it: the handle's offset on the backend, less what the relay holds
    /// unsent and what sits unread in the job's socket (`unread` in the
    /// stream's record of `fds`, the job's fd table at a checkpoint).
    pub async fn stream_offsets(&mut self, fds: &[FdRecord]) -> Vec<(Handle, i64)> {
        let mut streams: Vec<(Handle, u64)> = Vec::new();
        for p in self.places.values() {
            if let Some(f) = p.stream.as_ref()
                && !p.eof
                && !streams.iter().any(|(h, _)| *h == p.h)
            {
                streams.push((p.h, (f.buf.len() - f.pos) as u64));
            }
        }
        let mut out = self.sock_offsets(fds);
        for (h, unsent) in streams {
            let unread = fds
                .iter()
                .find(|f| f.handle == h.0 && f.kind & FD_REMOTE != 0)
                .map_or(0, |f| f.unread);
            let op = FileOp::Lseek {
                h,
                off: 0,
                whence: libc::SEEK_CUR,
            };
            match self.backend.call(op).await {
                FileReply::Offset(at) => {
                    let consumed = at - i64::try_from(unsent + unread).unwrap_or(i64::MAX);
                    out.push((h, consumed.max(0)));
                }
                other => debug!(?h, ?other, "a stream's offset is unknown"),
            }
        }
        out
    }

    /// A placeholder for a handle the job held before a restart (as for an
    /// `Open`, with the handle's flags); a stream is fed from the handle's
    /// offset. Fails when the backend does not know the handle.
    pub async fn reattach(&mut self, h: Handle, flags: i32, stream: bool) -> io::Result<OwnedFd> {
        if proto::net::is_sock(h) {
            // The shadow starts pushing once it knows the placeholder exists.
            return match self.call(FileOp::Fstat { h }).await {
                FileReply::Stat(_) => self.add_sock(h),
                FileReply::Err(errno) => Err(io::Error::from_raw_os_error(errno)),
                other => Err(io::Error::other(format!("fstat answered {other:?}"))),
            };
        }
        let dir = match self.call(FileOp::Fstat { h }).await {
            FileReply::Stat(st) => st.mode & libc::S_IFMT == libc::S_IFDIR,
            FileReply::Err(errno) => return Err(io::Error::from_raw_os_error(errno)),
            other => return Err(io::Error::other(format!("fstat answered {other:?}"))),
        };
        self.add(h, flags, dir, stream)
    }

    /// Forwards what is left in every placeholder and closes every handle,
    /// whoever still holds the job's ends (used when processes outside the
    /// job's process group keep them open).
    pub async fn abandon(&mut self) {
        self.drain_all().await;
        for p in self.places.values_mut() {
            if !p.eof {
                warn!(h = ?p.h, "placeholder still open after the job ended; closing it");
            }
            p.eof = true;
        }
        self.close_released().await;
    }

    /// Forwards a call after every write already made by the job, and after
    /// closing the handles the job has let go of.
    pub(crate) async fn call(&mut self, op: FileOp) -> FileReply {
        self.sync().await;
        self.backend.call(op).await
    }

    /// Forwards the bytes queued in every placeholder, then closes the
    /// handles of placeholders whose every copy the job has closed.
    async fn sync(&mut self) {
        self.drain_all().await;
        self.close_released().await;
    }

    /// Reads, without blocking, the bytes queued in every placeholder when
    /// the drain starts, forwards them, and notes the placeholders at EOF.
    async fn drain_all(&mut self) {
        let inos: Vec<u64> = self.places.keys().copied().collect();
        for ino in inos {
            let queued = match self.places.get(&ino) {
                Some(p) if !p.eof => rustix::io::ioctl_fionread(&p.sock).unwrap_or(0),
                _ => continue,
            };
            let budget = usize::try_from(queued)
                .unwrap_or(usize::MAX)
                .max(READ_CHUNK);
            self.read_place(ino, budget).await;
        }
    }

    /// Reads at most `budget` bytes from one placeholder without blocking and
    /// forwards them; marks the placeholder at EOF when the job closed it.
    async fn read_place(&mut self, ino: u64, budget: usize) {
        let mut left = budget;
        while left > 0 {
            let Some(p) = self.places.get_mut(&ino) else {
                return;
            };
            if p.eof {
                return;
            }
            let want = left.min(self.buf.len());
            match read_now(&p.sock, &mut self.buf[..want]) {
                Ok(0) => p.eof = true,
                Ok(n) => {
                    left -= n;
                    let h = p.h;
                    self.backend.write(h, self.buf[..n].to_vec()).await;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ECONNRESET: the job closed its end with bytes we pushed
                    // still unread (a stream it did not finish).
                    if e.raw_os_error() != Some(libc::ECONNRESET) {
                        warn!(h = ?p.h, "reading a placeholder failed: {e}");
                    }
                    p.eof = true;
                }
            }
        }
    }

    /// Closes the handles of placeholders the job has let go of. Their
    /// bytes were read before their EOF, so all of them is forwarded.
    async fn close_released(&mut self) {
        while let Some(ino) = self.places.iter().find(|(_, p)| p.eof).map(|(&ino, _)| ino) {
            let Some(p) = self.places.remove(&ino) else {
                return;
            };
            let h = p.h;
            drop(p);
            if let FileReply::Err(errno) = self.backend.call(FileOp::Close { h }).await {
                warn!(?h, errno, "closing a handle failed");
            }
        }
    }

    /// Pushes more of a read stream's file into its placeholder.
    async fn feed(&mut self, ino: u64) {
        let Some(p) = self.places.get(&ino) else {
            return;
        };
        let h = p.h;
        let Some(f) = p.stream.as_ref() else { return };
        if f.done {
            return;
        }
        if f.pos == f.buf.len() {
            let reply = self
                .call(FileOp::Read {
                    h,
                    len: STREAM_CHUNK,
                })
                .await;
            let Some(p) = self.places.get_mut(&ino) else {
                return;
            };
            let Some(f) = p.stream.as_mut() else { return };
            match reply {
                FileReply::Data(d) if !d.is_empty() => {
                    f.buf = d;
                    f.pos = 0;
                }
                FileReply::Data(_) => f.done = true,
                FileReply::Err(errno) => {
                    warn!(
                        ?h,
                        errno, "reading a stream's file failed; the job sees its end"
                    );
                    f.done = true;
                }
                other => {
                    warn!(?h, ?other, "unexpected reply to a stream read");
                    f.done = true;
                }
            }
            if f.done {
                if let Err(e) = rustix::net::shutdown(&p.sock, rustix::net::Shutdown::Write) {
                    debug!(?h, "shutting down a stream: {e}");
                }
                return;
            }
        }
        let Some(p) = self.places.get_mut(&ino) else {
            return;
        };
        let Some(f) = p.stream.as_mut() else { return };
        while f.pos < f.buf.len() {
            let sock = &p.sock;
            let r = sock.try_io(Interest::WRITABLE, || {
                rustix::net::send(sock, &f.buf[f.pos..], SendFlags::NOSIGNAL)
                    .map_err(io::Error::from)
            });
            match r {
                Ok(n) => f.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EPIPE/ECONNRESET: every copy in the job is closed; the
                    // read side reports the EOF that closes the handle.
                    debug!(?h, "stream peer gone: {e}");
                    f.done = true;
                    return;
                }
            }
        }
    }
}

/// Reads what is in the socket now. The runtime's readiness flag may lag
/// behind the socket (the reactor has not yet seen the job's write), so a
/// `WouldBlock` from it is checked with a read of our own; only a read
/// made under the flag clears it, so no wake-up is lost.
fn read_now(sock: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    let raw = |buf: &mut [u8]| {
        rustix::net::recv(sock, buf, rustix::net::RecvFlags::DONTWAIT).map_err(io::Error::from)
    };
    match sock.try_io(Interest::READABLE, || raw(&mut *buf)) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => raw(buf),
        r => r,
    }
}

/// Accepts shim connections until aborted; each is served by its own task
/// (aborted with this one).
pub(crate) async fn accept_loop(listener: UnixListener, tx: mpsc::Sender<ShimCall>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    conns.spawn(serve_conn(stream, tx.clone()));
                }
                Err(e) => {
                    warn!("accepting a shim connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serves one shim connection: one request, one answer, in order.
async fn serve_conn(mut stream: UnixStream, tx: mpsc::Sender<ShimCall>) {
    loop {
        let req: ShimRequest = match frame::read_frame_async(&mut stream, MAX_FRAME).await {
            Ok(req) => req,
            Err(ProtoError::Closed) => return,
            Err(e) => {
                warn!("closing a shim connection: {e}");
                return;
            }
        };
        let (answer, rx) = oneshot::channel();
        if tx.send(ShimCall { req, answer }).await.is_err() {
            return;
        }
        let Ok(answer) = rx.await else { return };
        if let Err(e) = send_answer(&mut stream, answer).await {
            debug!("shim connection gone: {e}");
            return;
        }
    }
}

/// Writes one answer frame; a placeholder fd travels with the frame's first
/// bytes in one `sendmsg`, and our copy of it is closed afterwards.
async fn send_answer(stream: &mut UnixStream, answer: Answer) -> Result<(), ProtoError> {
    let buf = frame::encode(&answer.reply)?;
    send_with_fd(stream, &buf, answer.fd.as_ref().map(|fd| fd.as_fd())).await?;
    Ok(())
}

/// Writes `buf`; `fd` (if any) travels with its first bytes (SCM_RIGHTS).
pub(crate) async fn send_with_fd(
    stream: &mut UnixStream,
    buf: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut sent = 0;
    if let Some(fd) = fd {
        loop {
            stream.writable().await?;
            let s = &*stream;
            let r = s.try_io(Interest::WRITABLE, || {
                let mut space = [0u8; rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                let fds = [fd];
                control.push(SendAncillaryMessage::ScmRights(&fds));
                rustix::net::sendmsg(s, &[IoSlice::new(buf)], &mut control, SendFlags::NOSIGNAL)
                    .map_err(io::Error::from)
            });
            match r {
                Ok(n) => {
                    sent = n;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    stream.write_all(&buf[sent..]).await
}
