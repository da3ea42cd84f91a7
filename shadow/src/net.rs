//! A job's sockets on the submit host: the real TCP sockets behind the
//! job's remote socket fds (see `proto::net` and docs/internals.md,
//! "Sockets").
//!
//! [`JobNet`] owns one job's sockets. Calls (`NetOp`) create, connect,
//! bind, listen and accept them; the job's writes arrive as
//! `ToShadow::Write` and go to a writer task per socket, in order; a reader
//! task per connected socket pushes what the peer sends to the starter
//! (`FromShadow::Push`), at most `PUSH_WINDOW` bytes ahead of the starter's
//! acknowledgements. A listening socket's task accepts connections and
//! pushes one byte per connection into the placeholder.
//!
//! Migration: a job's [`JobNet`] outlives its shadow session (it is kept
//! by job in the schedd while the job is between hosts, see [`keep`] and
//! [`take`]). What the peer sent is kept in the socket's [`Inbox`] until a
//! committed checkpoint says the job consumed it (at most [`RETAIN`] behind
//! what the starter acknowledged); a new session pushes from that point
//! once the restarted job's placeholder is attached (its `Fstat`).
//!
//! What a job may reach is its description's `network` list (attribute
//! `Network`: `host:port`, `host`, `a.b.c.d/len`, optionally `cidr:port`);
//! listening needs `listen = true` (attribute `NetworkListen`). A denial
//! is `EACCES` for the job and a `network_denied` event. Listening sockets
//! of the jobs of a cluster are published under `C.P` (and `C.P.roost`),
//! which the cluster's jobs may resolve and connect to whatever their list.

use proto::fileop::{Errno, FileReply, Stat};
use proto::net::{NetOp, NetReply, PUSH_WINDOW, SOCK_HANDLE_BIT, SockAddr};
use proto::shadow::FromShadow;
use proto::{Handle, JobId};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info};

/// How long a `connect` may take on the submit host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest push.
const PUSH_CHUNK: usize = 64 << 10;
/// Bytes kept behind the starter's acknowledgements: more than a
/// placeholder can hold unread, so a checkpoint's consumed point is never
/// trimmed away.
pub const RETAIN: u64 = 8 << 20;

/// Sockets of jobs between two sessions (vacated, waiting for a host).
static KEPT: LazyLock<Mutex<HashMap<JobId, JobNet>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The job's sockets for a new session: those kept from its last session
/// (rewound to the last committed checkpoint), or none.
pub fn take(job: JobId, policy: Policy) -> JobNet {
    let kept = KEPT.lock().unwrap_or_else(|p| p.into_inner()).remove(&job);
    match kept {
        Some(mut n) => {
            n.policy = policy;
            n.new_session();
            n
        }
        None => JobNet::new(job, policy),
    }
}

/// Keeps the job's sockets open until it runs again.
pub fn keep(n: JobNet) {
    if n.socks.is_empty() {
        return;
    }
    info!(job = %n.job, sockets = n.socks.len(), "keeping the job's sockets while it moves");
    KEPT.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(n.job, n);
}

/// What the peer sent on one connected socket, by stream position.
#[derive(Default)]
pub struct Inbox {
    /// Bytes from position `base` to `end`.
    data: VecDeque<u8>,
    base: u64,
    end: u64,
    /// The peer closed its side (after `end`).
    eof: bool,
    /// Acknowledged by the starter (the reader stays `PUSH_WINDOW` ahead).
    acked: u64,
}

/// Shared between a socket's reader task and the session.
struct Shared {
    inbox: Mutex<Inbox>,
    /// Signals the reader: room in the window.
    room: tokio::sync::Notify,
}

impl Shared {
    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Listening addresses of running jobs, by job: what `C.P` resolves to.
static PUBLISHED: LazyLock<Mutex<HashMap<JobId, Vec<SocketAddr>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn published() -> std::sync::MutexGuard<'static, HashMap<JobId, Vec<SocketAddr>>> {
    PUBLISHED.lock().unwrap_or_else(|p| p.into_inner())
}

/// One allowed destination of the job's `network` list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// An address range (`10.0.0.0/8`, or one address), optionally one port.
    Net {
        ip: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
    /// A host name, resolved on the submit host when the job connects.
    Name { host: String, port: Option<u16> },
}

/// What the job may do on the network.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allowed: Vec<Allowed>,
    listen: bool,
}

impl Policy {
    /// From the job's attributes `Network` (a string of comma-separated
    /// entries) and `NetworkListen`. Entries that do not parse allow nothing.
    pub fn from_attributes(attrs: &BTreeMap<String, String>) -> Policy {
        let list = attrs
            .get("Network")
            .map(|s| s.trim().trim_matches('"').to_string())
            .unwrap_or_default();
        let allowed = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .filter_map(|e| {
                let a = parse_allowed(e);
                if a.is_none() {
                    debug!(entry = e, "ignoring a network entry that does not parse");
                }
                a
            })
            .collect();
        let listen = attrs
            .get("NetworkListen")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        Policy { allowed, listen }
    }

    async fn allows(&self, to: SocketAddr) -> bool {
        for a in &self.allowed {
            match a {
                Allowed::Net { ip, prefix, port } => {
                    if port.is_none_or(|p| p == to.port()) && in_net(to.ip(), *ip, *prefix) {
                        return true;
                    }
                }
                Allowed::Name { host, port } => {
                    if port.is_some_and(|p| p != to.port()) {
                        continue;
                    }
                    if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), 0)).await {
                        for a in addrs {
                            if a.ip() == to.ip() {
                                return true;
                            }
                        }
                    }
                }
            }
        }
        false
    }
}

/// Parses one `network` entry: `host:port`, `[v6]:port`, `host`, `ip/len`,
/// `ip/len:port`. `None` if it is none of these.
fn parse_allowed(e: &str) -> Option<Allowed> {
    let (addr, port) = split_port(e)?;
    let (host, prefix) = match addr.split_once('/') {
        Some((h, l)) => (h, Some(l.parse::<u8>().ok()?)),
        None => (addr, None),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        return Some(Allowed::Net { ip, prefix, port });
    }
    if prefix.is_some()
        || host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return None;
    }
    Some(Allowed::Name {
        host: host.to_string(),
        port,
    })
}

/// Splits `host:port` (`[v6]:port`); a bare host or `ip/len` has no port.
fn split_port(e: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = e.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        return match tail.strip_prefix(':') {
            Some(p) => Some((h, Some(p.parse().ok()?))),
            None if tail.is_empty() => Some((h, None)),
            None => None,
        };
    }
    match e.rsplit_once(':') {
        // More than one colon: a bare IPv6 address.
        Some((h, _)) if h.contains(':') => Some((e, None)),
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((e, None)),
    }
}

fn in_net(a: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a
            .to_ipv4_mapped()
            .is_some_and(|a| in_net(IpAddr::V4(a), net, prefix)),
        _ => false,
    }
}

/// What the job's write queue of a connected socket carries.
enum Wr {
    Data(Vec<u8>),
    ShutdownWrite,
}

enum State {
    /// Created, maybe bound, not yet connected or listening.
    Fresh(TcpSocket),
    Listening {
        local: SocketAddr,
        queue: Arc<Mutex<VecDeque<(TcpStream, SocketAddr)>>>,
        task: JoinHandle<()>,
    },
    Connected {
        local: SocketAddr,
        peer: SocketAddr,
        /// A duplicate of the socket, for options.
        fd: OwnedFd,
        wr: mpsc::UnboundedSender<Wr>,
        shared: Arc<Shared>,
        reader: JoinHandle<()>,
        /// Next position to push in this session.
        next: u64,
        /// Where this session's pushes started (the starter counts from here).
        session_base: u64,
        /// The job consumed up to here at its last committed checkpoint.
        committed: u64,
        eof_sent: bool,
    },
    /// Gone to a state transition that failed.
    Broken,
}

struct Sock {
    v6: bool,
    state: State,
    /// The starter has a placeholder for it in this session.
    attached: bool,
}

impl Drop for Sock {
    fn drop(&mut self) {
        match &self.state {
            State::Listening { task, .. } => task.abort(),
            // The writer task ends when its queue does (after writing what
            // is queued, then FIN); the reader is not needed any more.
            State::Connected { reader, .. } => reader.abort(),
            _ => {}
        }
    }
}

/// An event the session records for the job.
pub struct Denial {
    pub call: &'static str,
    pub to: String,
}

/// One job's sockets.
pub struct JobNet {
    job: JobId,
    policy: Policy,
    socks: HashMap<u64, Sock>,
    next: u64,
    out_tx: mpsc::UnboundedSender<FromShadow>,
    out_rx: mpsc::UnboundedReceiver<FromShadow>,
    /// Addresses this job published (listening sockets).
    published: Vec<SocketAddr>,
    /// Signalled when a reader has new bytes.
    more: Arc<tokio::sync::Notify>,
    /// Where the next scan for bytes to push starts.
    cursor: u64,
    /// Sockets whose placeholder the job let go of, closed at the job's
    /// next call: when the job is killed after a checkpoint to leave its
    /// host, its placeholders close too, and then the sockets must stay.
    closing: Vec<u64>,
}

impl Drop for JobNet {
    fn drop(&mut self) {
        if !self.published.is_empty() {
            published().remove(&self.job);
        }
    }
}

fn errno_of(e: &std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn sock_stat() -> Stat {
    Stat {
        mode: libc::S_IFSOCK | 0o777,
        nlink: 1,
        blksize: 4096,
        ..Stat::default()
    }
}

impl JobNet {
    pub fn new(job: JobId, policy: Policy) -> JobNet {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        JobNet {
            job,
            policy,
            socks: HashMap::new(),
            next: 1,
            out_tx,
            out_rx,
            published: Vec::new(),
            more: Arc::new(tokio::sync::Notify::new()),
            cursor: 0,
            closing: Vec::new(),
        }
    }

    /// Whether the job has no sockets.
    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// The job goes on on this host: closes sockets it let go of.
    pub fn settle_closes(&mut self) {
        for h in std::mem::take(&mut self.closing) {
            if let Some(s) = self.socks.remove(&h)
                && let State::Listening { local, .. } = s.state
            {
                self.unpublish(local);
            }
        }
    }

    /// A new session: what the last one pushed past the committed point
    /// is pushed again, once the restarted job's placeholder is attached;
    /// tokens of listening sockets were in the old placeholders.
    fn new_session(&mut self) {
        while self.out_rx.try_recv().is_ok() {}
        self.closing.clear();
        for (h, sock) in self.socks.iter_mut() {
            sock.attached = false;
            if let State::Connected {
                shared,
                next,
                session_base,
                committed,
                eof_sent,
                ..
            } = &mut sock.state
            {
                let mut ib = shared.inbox();
                if *committed < ib.base {
                    tracing::warn!(
                        handle = h,
                        committed = *committed,
                        kept_from = ib.base,
                        "bytes the job had not consumed at its checkpoint are gone"
                    );
                }
                let from = (*committed).max(ib.base);
                debug!(
                    handle = h,
                    from,
                    end = ib.end,
                    base = ib.base,
                    "socket rewound"
                );
                *next = from;
                *session_base = from;
                *eof_sent = false;
                ib.acked = from;
                drop(ib);
                shared.room.notify_one();
            }
        }
    }

    /// A checkpoint is committed: `streams` has, per socket, the bytes the
    /// job consumed in this session.
    pub fn committed(&mut self, streams: &[(Handle, i64)]) {
        for (h, consumed) in streams {
            if let Some(Sock {
                state:
                    State::Connected {
                        session_base,
                        committed,
                        ..
                    },
                ..
            }) = self.socks.get_mut(&h.0)
            {
                *committed = *session_base + (*consumed).max(0) as u64;
                debug!(
                    handle = h.0,
                    committed = *committed,
                    "socket position committed"
                );
            }
        }
    }

    /// The next `Push` a connected socket has to send, within its window.
    fn next_data(&mut self) -> Option<FromShadow> {
        let mut keys: Vec<u64> = self.socks.keys().copied().collect();
        keys.sort_unstable();
        let start = keys.partition_point(|&k| k < self.cursor);
        let order: Vec<u64> = keys[start..]
            .iter()
            .chain(&keys[..start])
            .copied()
            .collect();
        for k in order {
            let Some(sock) = self.socks.get_mut(&k) else {
                continue;
            };
            if !sock.attached {
                continue;
            }
            let State::Connected {
                shared,
                next,
                eof_sent,
                ..
            } = &mut sock.state
            else {
                continue;
            };
            let ib = shared.inbox();
            let limit = ib.acked + PUSH_WINDOW;
            if *next < ib.end && *next < limit {
                let n = (ib.end.min(limit) - *next).min(PUSH_CHUNK as u64) as usize;
                let off = (*next - ib.base) as usize;
                let data: Vec<u8> = ib.data.range(off..off + n).copied().collect();
                drop(ib);
                *next += n as u64;
                self.cursor = k + 1;
                return Some(FromShadow::Push { h: Handle(k), data });
            }
            if ib.eof && *next == ib.end && !*eof_sent {
                *eof_sent = true;
                self.cursor = k + 1;
                return Some(FromShadow::Push {
                    h: Handle(k),
                    data: Vec::new(),
                });
            }
        }
        None
    }

    /// The next message to push to the starter (never ends while `self` lives).
    pub async fn next_push(&mut self) -> FromShadow {
        loop {
            let more = self.more.clone();
            let notified = more.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(m) = self.out_rx.try_recv() {
                return m;
            }
            if let Some(m) = self.next_data() {
                return m;
            }
            tokio::select! {
                m = self.out_rx.recv() => if let Some(m) = m { return m },
                _ = notified => {}
            }
        }
    }

    /// Does this handle belong to the socket engine?
    pub fn owns(&self, h: Handle) -> bool {
        proto::net::is_sock(h)
    }

    fn insert(&mut self, s: Sock) -> Handle {
        let h = SOCK_HANDLE_BIT | self.next;
        self.next += 1;
        self.socks.insert(h, s);
        Handle(h)
    }

    fn get(&mut self, h: Handle) -> Result<&mut Sock, Errno> {
        self.socks.get_mut(&h.0).ok_or(libc::EBADF)
    }

    /// Bytes the job wrote to socket `h`.
    pub fn write(&mut self, h: Handle, data: Vec<u8>) -> Result<(), Errno> {
        match &self.get(h)?.state {
            State::Connected { wr, .. } => wr.send(Wr::Data(data)).map_err(|_| libc::EPIPE),
            _ => Err(libc::ENOTCONN),
        }
    }

    /// The starter put `n` more pushed bytes of `h` into the placeholder.
    pub fn ack(&mut self, h: Handle, n: u64) {
        if let Some(Sock {
            state: State::Connected { shared, .. },
            ..
        }) = self.socks.get(&h.0)
        {
            let mut ib = shared.inbox();
            ib.acked += n;
            // Keep what a placeholder may still hold unread.
            let keep_from = ib.acked.saturating_sub(RETAIN);
            if keep_from > ib.base {
                let k = ((keep_from - ib.base) as usize).min(ib.data.len());
                ib.data.drain(..k);
                ib.base += k as u64;
            }
            drop(ib);
            shared.room.notify_one();
        }
    }

    /// `Close` or `Fstat` of a socket handle.
    pub fn file_call(&mut self, op: &proto::fileop::FileOp) -> FileReply {
        use proto::fileop::FileOp;
        match op {
            FileOp::Close { h } => match self.socks.get_mut(&h.0) {
                Some(s) => {
                    s.attached = false;
                    self.closing.push(h.0);
                    FileReply::Ok
                }
                None => FileReply::Err(libc::EBADF),
            },
            // The starter attaches a placeholder (a restart's `REATTACH`):
            // pushing may start; a listener's queued connections get tokens.
            FileOp::Fstat { h } => match self.socks.get_mut(&h.0) {
                Some(sock) => {
                    if !sock.attached {
                        sock.attached = true;
                        if let State::Listening { queue, .. } = &sock.state {
                            let n = queue.lock().unwrap_or_else(|p| p.into_inner()).len();
                            for _ in 0..n {
                                let _ = self.out_tx.send(FromShadow::Push {
                                    h: *h,
                                    data: vec![b'A'],
                                });
                            }
                        }
                        self.more.notify_one();
                    }
                    FileReply::Stat(sock_stat())
                }
                None => FileReply::Err(libc::EBADF),
            },
            FileOp::Fsync { .. } => FileReply::Err(libc::EINVAL),
            FileOp::Read { .. } | FileOp::Pread { .. } | FileOp::Lseek { .. } => {
                FileReply::Err(libc::ESPIPE)
            }
            _ => FileReply::Err(libc::ENOTSUP),
        }
    }

    fn unpublish(&mut self, local: SocketAddr) {
        self.published.retain(|a| *a != local);
        let mut p = published();
        if let Some(v) = p.get_mut(&self.job) {
            v.retain(|a| *a != local);
            if v.is_empty() {
                p.remove(&self.job);
            }
        }
    }

    /// Executes one socket call; a denial is also returned for the event log.
    pub async fn call(&mut self, op: NetOp) -> (FileReply, Option<Denial>) {
        match self.exec(op).await {
            Ok(r) => (r, None),
            Err(Fail::Errno(e)) => (FileReply::Err(e), None),
            Err(Fail::Denied(d)) => (FileReply::Err(libc::EACCES), Some(d)),
        }
    }

    async fn exec(&mut self, op: NetOp) -> Result<FileReply, Fail> {
        Ok(match op {
            NetOp::Socket {
                domain,
                ty,
                protocol,
            } => {
                if ty != libc::SOCK_STREAM || (protocol != 0 && protocol != libc::IPPROTO_TCP) {
                    return Err(Fail::Errno(libc::EPROTONOSUPPORT));
                }
                let (s, v6) = match domain {
                    libc::AF_INET => (TcpSocket::new_v4(), false),
                    libc::AF_INET6 => (TcpSocket::new_v6(), true),
                    _ => return Err(Fail::Errno(libc::EAFNOSUPPORT)),
                };
                let s = s.map_err(|e| Fail::Errno(errno_of(&e)))?;
                let h = self.insert(Sock {
                    v6,
                    state: State::Fresh(s),
                    attached: true,
                });
                FileReply::Opened {
                    h,
                    stat: sock_stat(),
                }
            }
            NetOp::Connect { h, addr } => {
                let to = addr.to_std();
                if !self.may_connect(to).await {
                    info!(job = %self.job, to = %to, "connect denied by the job's network list");
                    return Err(Fail::Denied(Denial {
                        call: "connect",
                        to: to.to_string(),
                    }));
                }
                let sock = self.get(h)?;
                let s = match std::mem::replace(&mut sock.state, State::Broken) {
                    State::Fresh(s) => s,
                    other => {
                        let e = match other {
                            State::Connected { .. } => libc::EISCONN,
                            _ => libc::EINVAL,
                        };
                        sock.state = other;
                        return Err(Fail::Errno(e));
                    }
                };
                let stream = match tokio::time::timeout(CONNECT_TIMEOUT, s.connect(to)).await {
                    Ok(Ok(st)) => st,
                    Ok(Err(e)) => return Err(Fail::Errno(errno_of(&e))),
                    Err(_) => return Err(Fail::Errno(libc::ETIMEDOUT)),
                };
                let state = self.connected(h, stream)?;
                self.get(h)?.state = state;
                FileReply::Ok
            }
            NetOp::Bind { h, addr } => {
                let sock = self.get(h)?;
                match &sock.state {
                    State::Fresh(s) => s
                        .bind(addr.to_std())
                        .map_err(|e| Fail::Errno(errno_of(&e)))?,
                    _ => return Err(Fail::Errno(libc::EINVAL)),
                }
                FileReply::Ok
            }
            NetOp::Listen { h, backlog } => {
                if !self.policy.listen {
                    info!(job = %self.job, "listen denied: the job may not listen");
                    let to = self
                        .socks
                        .get(&h.0)
                        .and_then(|s| match &s.state {
                            State::Fresh(s) => s.local_addr().ok(),
                            _ => None,
                        })
                        .map_or_else(|| "?".to_string(), |a| a.to_string());
                    return Err(Fail::Denied(Denial { call: "listen", to }));
                }
                let out = self.out_tx.clone();
                let sock = self.get(h)?;
                let s = match std::mem::replace(&mut sock.state, State::Broken) {
                    State::Fresh(s) => s,
                    other => {
                        sock.state = other;
                        return Err(Fail::Errno(libc::EINVAL));
                    }
                };
                let l = s
                    .listen(u32::try_from(backlog.max(1)).unwrap_or(128))
                    .map_err(|e| Fail::Errno(errno_of(&e)))?;
                let local = l.local_addr().map_err(|e| Fail::Errno(errno_of(&e)))?;
                let queue = Arc::new(Mutex::new(VecDeque::new()));
                let task = tokio::spawn(accept_loop(l, h, queue.clone(), out));
                sock.state = State::Listening { local, queue, task };
                self.published.push(local);
                published().entry(self.job).or_default().push(local);
                FileReply::Ok
            }
            NetOp::Accept { h } => {
                let sock = self.get(h)?;
                let State::Listening { queue, .. } = &sock.state else {
                    return Err(Fail::Errno(libc::EINVAL));
                };
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some((stream, peer)) = next else {
                    return Err(Fail::Errno(libc::EAGAIN));
                };
                let v6 = sock.v6;
                let nh = Handle(SOCK_HANDLE_BIT | self.next);
                self.next += 1;
                let state = self.connected(nh, stream)?;
                self.socks.insert(
                    nh.0,
                    Sock {
                        v6,
                        state,
                        attached: true,
                    },
                );
                FileReply::Net(NetReply::Accepted {
                    h: nh,
                    peer: SockAddr::from_std(peer),
                })
            }
            NetOp::Name { h, peer } => {
                let sock = self.get(h)?;
                let a = match (&sock.state, peer) {
                    (State::Fresh(s), false) => {
                        s.local_addr().map_err(|e| Fail::Errno(errno_of(&e)))?
                    }
                    (State::Listening { local, .. }, false) => *local,
                    (State::Connected { local, .. }, false) => *local,
                    (State::Connected { peer, .. }, true) => *peer,
                    _ => return Err(Fail::Errno(libc::ENOTCONN)),
                };
                FileReply::Net(NetReply::Addr(SockAddr::from_std(a)))
            }
            NetOp::GetOpt { h, level, name } => {
                let sock = self.get(h)?;
                let v: i32 = match (level, name) {
                    (libc::SOL_SOCKET, libc::SO_ERROR) => 0,
                    (libc::SOL_SOCKET, libc::SO_TYPE) => libc::SOCK_STREAM,
                    (libc::SOL_SOCKET, libc::SO_DOMAIN) => {
                        if sock.v6 {
                            libc::AF_INET6
                        } else {
                            libc::AF_INET
                        }
                    }
                    (libc::SOL_SOCKET, libc::SO_PROTOCOL) => libc::IPPROTO_TCP,
                    (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => {
                        matches!(sock.state, State::Listening { .. }) as i32
                    }
                    _ => {
                        let fd = sock_fd(&sock.state).ok_or(Fail::Errno(libc::ENOTCONN))?;
                        get_int_opt(fd, level, name).map_err(Fail::Errno)?
                    }
                };
                FileReply::Data(v.to_ne_bytes().to_vec())
            }
            NetOp::SetOpt {
                h,
                level,
                name,
                value,
            } => {
                let sock = self.get(h)?;
                if let Some(fd) = sock_fd(&sock.state) {
                    set_opt(fd, level, name, &value).map_err(Fail::Errno)?;
                }
                FileReply::Ok
            }
            NetOp::Shutdown { h, how } => {
                let sock = self.get(h)?;
                match &sock.state {
                    State::Connected { wr, fd, .. } => {
                        if how == libc::SHUT_WR || how == libc::SHUT_RDWR {
                            let _ = wr.send(Wr::ShutdownWrite);
                        }
                        if how == libc::SHUT_RD || how == libc::SHUT_RDWR {
                            let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Read);
                        }
                    }
                    _ => return Err(Fail::Errno(libc::ENOTCONN)),
                }
                FileReply::Ok
            }
            NetOp::Resolve {
                host,
                service,
                family,
                flags,
            } => self.resolve(host, service, family, flags).await?,
        })
    }

    /// The job may connect to `to`: its list allows it, or it is a
    /// listening socket of a job of the same cluster.
    async fn may_connect(&self, to: SocketAddr) -> bool {
        let sibling = published()
            .iter()
            .any(|(j, v)| j.cluster == self.job.cluster && v.iter().any(|a| same_listener(*a, to)));
        sibling || self.policy.allows(to).await
    }

    async fn resolve(
        &self,
        host: Option<String>,
        service: Option<String>,
        family: i32,
        flags: i32,
    ) -> Result<FileReply, Fail> {
        let port = match service.as_deref() {
            None | Some("") => 0,
            Some(s) => match s.parse::<u16>() {
                Ok(p) => p,
                Err(_) => match s {
                    "http" => 80,
                    "https" => 443,
                    "ftp" => 21,
                    "ssh" => 22,
                    "smtp" => 25,
                    "domain" => 53,
                    "postgresql" => 5432,
                    "mysql" => 3306,
                    _ => return Err(Fail::Errno(libc::EAI_SERVICE)),
                },
            },
        };
        let want = |a: &SocketAddr| match family {
            libc::AF_INET => a.is_ipv4(),
            libc::AF_INET6 => a.is_ipv6(),
            _ => true,
        };
        let mut out: Vec<SocketAddr> = Vec::new();
        let canon = host.clone();
        match host {
            None => {
                let ip: IpAddr = match (family, flags & libc::AI_PASSIVE != 0) {
                    (libc::AF_INET6, true) => std::net::Ipv6Addr::UNSPECIFIED.into(),
                    (libc::AF_INET6, false) => std::net::Ipv6Addr::LOCALHOST.into(),
                    (_, true) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                    (_, false) => std::net::Ipv4Addr::LOCALHOST.into(),
                };
                out.push((ip, port).into());
            }
            Some(h) => {
                if let Some(job) = job_name(&h, self.job) {
                    let list = published().get(&job).cloned().unwrap_or_default();
                    for a in list {
                        let ip = match a.ip() {
                            ip if ip.is_unspecified() && a.is_ipv4() => {
                                std::net::Ipv4Addr::LOCALHOST.into()
                            }
                            ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
                            ip => ip,
                        };
                        if port == 0 || port == a.port() {
                            out.push((ip, a.port()).into());
                        }
                    }
                    if out.is_empty() {
                        return Err(Fail::Errno(libc::EAI_NONAME));
                    }
                } else {
                    match tokio::net::lookup_host((h.as_str(), port)).await {
                        Ok(it) => out.extend(it),
                        Err(_) => return Err(Fail::Errno(libc::EAI_NONAME)),
                    }
                }
            }
        }
        out.retain(want);
        if out.is_empty() {
            return Err(Fail::Errno(libc::EAI_NONAME));
        }
        let mut seen = Vec::new();
        out.retain(|a| {
            let new = !seen.contains(a);
            seen.push(*a);
            new
        });
        Ok(FileReply::Net(NetReply::Addrs {
            addrs: out.into_iter().map(SockAddr::from_std).collect(),
            canon,
        }))
    }

    /// Starts the reader and writer of a connected socket.
    fn connected(&mut self, h: Handle, stream: TcpStream) -> Result<State, Fail> {
        let local = stream.local_addr().map_err(|e| Fail::Errno(errno_of(&e)))?;
        let peer = stream.peer_addr().map_err(|e| Fail::Errno(errno_of(&e)))?;
        let fd = stream
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Fail::Errno(errno_of(&e)))?;
        let (mut rd, mut wrh) = stream.into_split();
        let (wr, mut wr_rx) = mpsc::unbounded_channel::<Wr>();
        tokio::spawn(async move {
            while let Some(m) = wr_rx.recv().await {
                match m {
                    Wr::Data(d) => {
                        if let Err(e) = wrh.write_all(&d).await {
                            debug!(handle = h.0, "socket write failed: {e}");
                            return;
                        }
                    }
                    Wr::ShutdownWrite => {
                        let _ = wrh.shutdown().await;
                    }
                }
            }
        });
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            room: tokio::sync::Notify::new(),
        });
        let sh = shared.clone();
        let more = self.more.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; PUSH_CHUNK];
            loop {
                // Read only while the starter is less than a window behind.
                let room = loop {
                    let notified = sh.room.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let ahead = {
                        let ib = sh.inbox();
                        ib.end - ib.acked
                    };
                    if ahead < PUSH_WINDOW {
                        break ((PUSH_WINDOW - ahead) as usize).min(PUSH_CHUNK);
                    }
                    notified.await;
                };
                let n = match rd.read(&mut buf[..room]).await {
                    Ok(n) => n,
                    Err(e) => {
                        debug!(handle = h.0, "socket read failed: {e}");
                        0
                    }
                };
                {
                    let mut ib = sh.inbox();
                    if n == 0 {
                        ib.eof = true;
                    } else {
                        ib.data.extend(&buf[..n]);
                        ib.end += n as u64;
                    }
                }
                more.notify_one();
                if n == 0 {
                    return;
                }
            }
        });
        Ok(State::Connected {
            local,
            peer,
            fd,
            wr,
            shared,
            reader,
            next: 0,
            session_base: 0,
            committed: 0,
            eof_sent: false,
        })
    }
}

enum Fail {
    Errno(Errno),
    Denied(Denial),
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Fail {
        Fail::Errno(e)
    }
}

/// `to` reaches the listener bound at `l` (a wildcard bind listens on
/// every local address).
fn same_listener(l: SocketAddr, to: SocketAddr) -> bool {
    l.port() == to.port() && (l.ip() == to.ip() || l.ip().is_unspecified() && to.ip().is_loopback())
}

/// `C.P` or `C.P.roost` naming a job of `me`'s cluster.
fn job_name(host: &str, me: JobId) -> Option<JobId> {
    let h = host.strip_suffix(".roost").unwrap_or(host);
    let (c, p) = h.split_once('.')?;
    let job = JobId {
        cluster: c.parse().ok()?,
        proc: p.parse().ok()?,
    };
    (job.cluster == me.cluster).then_some(job)
}

async fn accept_loop(
    l: TcpListener,
    h: Handle,
    queue: Arc<Mutex<VecDeque<(TcpStream, SocketAddr)>>>,
    out: mpsc::UnboundedSender<FromShadow>,
) {
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back((s, peer));
                if out
                    .send(FromShadow::Push {
                        h,
                        data: vec![b'A'],
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                debug!(handle = h.0, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn sock_fd(s: &State) -> Option<std::os::fd::BorrowedFd<'_>> {
    match s {
        State::Fresh(s) => Some(s.as_fd()),
        State::Connected { fd, .. } => Some(fd.as_fd()),
        _ => None,
    }
}

fn get_int_opt(fd: std::os::fd::BorrowedFd<'_>, level: i32, name: i32) -> Result<i32, Errno> {
    use rustix::net::sockopt as o;
    let e = |e: rustix::io::Errno| e.raw_os_error();
    Ok(match (level, name) {
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => o::get_tcp_nodelay(fd).map_err(e)? as i32,
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => o::get_socket_keepalive(fd).map_err(e)? as i32,
        (libc::SOL_SOCKET, libc::SO_REUSEADDR) => o::get_socket_reuseaddr(fd).map_err(e)? as i32,
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => {
            o::get_socket_recv_buffer_size(fd).map_err(e)? as i32
        }
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => {
            o::get_socket_send_buffer_size(fd).map_err(e)? as i32
        }
        _ => return Err(libc::ENOPROTOOPT),
    })
}

fn set_opt(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    name: i32,
    value: &[u8],
) -> Result<(), Errno> {
    use rustix::net::sockopt as o;
    let e = |e: rustix::io::Errno| e.raw_os_error();
    let int = || -> Result<i32, Errno> {
        let b: [u8; 4] = value
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(libc::EINVAL)?;
        Ok(i32::from_ne_bytes(b))
    };
    match (level, name) {
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => o::set_tcp_nodelay(fd, int()? != 0).map_err(e),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => {
            o::set_socket_keepalive(fd, int()? != 0).map_err(e)
        }
        (libc::SOL_SOCKET, libc::SO_REUSEADDR) => {
            o::set_socket_reuseaddr(fd, int()? != 0).map_err(e)
        }
        (libc::SOL_SOCKET, libc::SO_REUSEPORT) => {
            o::set_socket_reuseport(fd, int()? != 0).map_err(e)
        }
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => {
            o::set_socket_recv_buffer_size(fd, int()?.max(0) as usize).map_err(e)
        }
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => {
            o::set_socket_send_buffer_size(fd, int()?.max(0) as usize).map_err(e)
        }
        _ => {
            // Timeouts, priorities and the like shape the job's side of the
            // placeholder, not the submit host's socket.
            debug!(level, name, "socket option accepted and not applied");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_entries_parse_and_match() {
        let mut attrs = BTreeMap::new();
        attrs.insert(
            "Network".to_string(),
            "\"127.0.0.1:8080, 10.0.0.0/8, db.example:5432, [::1]:99, bad/x\"".to_string(),
        );
        let p = Policy::from_attributes(&attrs);
        assert_eq!(p.allowed.len(), 4);
        assert!(!p.listen);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(p.allows("127.0.0.1:8080".parse().unwrap()).await);
            assert!(!p.allows("127.0.0.1:8081".parse().unwrap()).await);
            assert!(p.allows("10.9.8.7:1".parse().unwrap()).await);
            assert!(!p.allows("11.0.0.1:1".parse().unwrap()).await);
            assert!(p.allows("[::1]:99".parse().unwrap()).await);
            assert!(
                !Policy::default()
                    .allows("10.0.0.1:1".parse().unwrap())
                    .await
            );
        });
        attrs.insert("NetworkListen".into(), "true".into());
        assert!(Policy::from_attributes(&attrs).listen);
    }

    #[test]
    fn job_names_are_of_the_same_cluster() {
        let me = JobId {
            cluster: 7,
            proc: 0,
        };
        assert_eq!(
            job_name("7.1", me),
            Some(JobId {
                cluster: 7,
                proc: 1
            })
        );
        assert_eq!(
            job_name("7.2.roost", me),
            Some(JobId {
                cluster: 7,
                proc: 2
            })
        );
        assert_eq!(job_name("8.1", me), None);
        assert_eq!(job_name("example.com", me), None);
    }
}
