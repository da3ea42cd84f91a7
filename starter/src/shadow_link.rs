//! The starter's TLS link to its job's shadow in the schedd.
//!
//! [`ShadowLink`] dials the schedd's shadow port, attaches with the claim,
//! fetches the executable and reports the end of the job. Its
//! [`LinkBackend`] is the [`relay::Backend`] the job's remote calls go
//! through: a call writes `ToShadow::Call` and waits for the `Reply` with
//! its id (the shadow answers in order); a write is sent and not waited
//! for. One reader task takes every frame off the connection, so the
//! shadow is never stuck sending while the starter is busy sending: replies
//! go to their waiting calls, `WriteFailed` notices to the log, and the
//! rest to the `ShadowLink`.
//!
//! Once the job runs ([`ShadowLink::started`]) the link survives being
//! cut (see `proto::shadow`): every counted frame sent is kept until the
//! shadow's `Ack` covers it, `Ack`s go both ways every [`HEARTBEAT`], and a
//! link silent for [`SILENCE`], or failing, is *away*: calls and writes
//! wait, the starter suspends the job ([`ShadowLink::away`]), and a task
//! dials again with `Resume` until the job's lease ends. On `Resumed` the
//! frames the shadow lacks are sent again and the job continues; a refusal
//! or the end of the lease takes the link down for good.

use crate::relay;
use proto::fileop::{FileOp, FileReply};
use proto::frame::{MAX_FRAME, read_frame_async_into, write_frame_async};
use proto::job::{ExitStatus, Usage};
use proto::shadow::{Attached, FromShadow, ToShadow};
use proto::tls::{Identity, TlsError};
use proto::{ClaimId, Handle, HostName, JobId, ProtoError};
use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Time to connect and finish the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time the shadow may take to answer `Attach`, one executable chunk, or
/// to commit `Exited`/`Failed`.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How often an `Ack` goes to the shadow when nothing else asks for one.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A link with no frame from the shadow, or a send stuck, for this long is
/// taken as lost.
pub const SILENCE: Duration = Duration::from_secs(10);
/// An `Ack` goes out at least this often, in messages received.
const ACK_EVERY: u64 = 64;
/// Pause between two attempts to resume.
const REDIAL: Duration = Duration::from_secs(1);

type Stream = tokio_rustls::client::TlsStream<TcpStream>;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to the schedd at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` is not a valid schedd name")]
    Name(#[source] TlsError),
    #[error("TLS handshake with the schedd `{name}` at {addr} failed")]
    Tls {
        name: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the peer at {addr} is not a schedd (its certificate says {peer})")]
    NotSchedd { addr: String, peer: String },
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("the shadow refused the job: {0}")]
    Refused(String),
    #[error("the connection to the shadow is closed ({0})")]
    Closed(String),
    #[error("sending to the shadow failed")]
    Send(#[source] ProtoError),
    #[error("unexpected message from the shadow while {doing}: {got}")]
    Unexpected { doing: &'static str, got: String },
    #[error("cannot write the executable to {path}")]
    Executable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Calls waiting for their reply, oldest first; `None` once the link is down.
type Pending = Option<VecDeque<(u64, oneshot::Sender<FileReply>)>>;

/// The sending side: the current stream (none while away) and the count.
struct Sender {
    wr: Option<WriteHalf<Stream>>,
    /// Counted messages sent.
    sent: u64,
}

/// What a resume needs, known once attached.
struct ResumeInfo {
    id: Identity,
    schedd_name: String,
    addr: String,
    claim: ClaimId,
    job: JobId,
    host: HostName,
    lease: Duration,
}

struct Shared {
    wr: tokio::sync::Mutex<Sender>,
    /// Counted frames sent and not yet acknowledged, by number.
    unacked: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
    /// Counted messages received.
    received: AtomicU64,
    /// `received` when the last `Ack` went out.
    acked: AtomicU64,
    /// When the last bytes from the shadow arrived.
    heard: Mutex<Instant>,
    /// The job runs: a lost link is resumed, not fatal.
    running: AtomicBool,
    /// Which connection is current (a reader of an older one is ignored).
    epoch: AtomicU64,
    /// `true` while the link is lost and being resumed.
    away: tokio::sync::watch::Sender<bool>,
    /// Wakes the heartbeat task to acknowledge now.
    ack_due: tokio::sync::Notify,
    resume: OnceLock<ResumeInfo>,
    /// The current connection's reader task.
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where readers deliver what is not a reply.
    chans: Mutex<Option<Chans>>,
    /// The link went down because the job's lease ran out.
    expired: AtomicBool,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    /// Why the link went down.
    down: Mutex<Option<String>>,
    /// Signalled once, when the link goes down.
    lost: tokio::sync::watch::Sender<bool>,
    /// Waits for the commit (`CkptCommitted`/`CkptFailed`) of an image.
    ckpt_wait: Mutex<Option<oneshot::Sender<Result<u64, String>>>>,
    /// Where a fetched image goes (`ImageChunk`s), and who learns first
    /// whether there is one.
    image: Mutex<ImageSink>,
    /// Socket data the shadow pushes, for the relay (taken once).
    pushes: Mutex<Option<relay::Pushes>>,
}

/// The receiving end of a `FetchImage`.
#[derive(Default)]
struct ImageSink {
    first: Option<oneshot::Sender<bool>>,
    chunks: Option<mpsc::Sender<Vec<u8>>>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_down(&self) -> bool {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Connection `epoch` failed: while the job runs the link is away and
    /// is resumed; before, it is down.
    fn lose(self: &Arc<Self>, epoch: u64, why: String) {
        if self.epoch.load(Ordering::SeqCst) != epoch || self.is_down() {
            return;
        }
        if !self.running.load(Ordering::SeqCst) || self.resume.get().is_none() {
            return self.fail(why);
        }
        let was_away = self.away.send_replace(true);
        if !was_away {
            tokio::spawn(reconnect(self.clone(), why));
        }
    }

    /// Marks the link down: waiting and later calls fail with `EIO`.
    fn fail(&self, why: String) {
        let mut d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            debug!("link to the shadow down: {why}");
            *d = Some(why);
        }
        drop(d);
        self.away.send_replace(false);
        self.pending().take();
        lock(&self.ckpt_wait).take();
        *lock(&self.image) = ImageSink::default();
        self.lost.send_replace(true);
    }

    fn why_down(&self) -> String {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "closed".into())
    }

    async fn send(self: &Arc<Self>, msg: &ToShadow) -> Result<(), LinkError> {
        let mut tx = self.wr.lock().await;
        self.send_locked(&mut tx, msg).await
    }

    /// Sends `msg` (the caller holds the sending side): counted messages
    /// are numbered and kept until acknowledged; while away they are only
    /// kept. A send that fails or is stuck for [`SILENCE`] loses the link.
    async fn send_locked(
        self: &Arc<Self>,
        tx: &mut Sender,
        msg: &ToShadow,
    ) -> Result<(), LinkError> {
        if self.is_down() {
            return Err(LinkError::Closed(self.why_down()));
        }
        let frame = Arc::new(proto::frame::encode(msg).map_err(LinkError::Send)?);
        if msg.counted() {
            tx.sent += 1;
            lock(&self.unacked).push_back((tx.sent, frame.clone()));
        }
        let Some(wr) = tx.wr.as_mut() else {
            return Ok(());
        };
        let write = async {
            wr.write_all(&frame).await?;
            wr.flush().await
        };
        let why = match tokio::time::timeout(SILENCE, write).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => format!("send failed: {e}"),
            Err(_) => format!("a send was stuck for {} s", SILENCE.as_secs()),
        };
        tx.wr = None;
        self.lose(self.epoch.load(Ordering::SeqCst), why.clone());
        if self.is_down() {
            return Err(LinkError::Closed(why));
        }
        Ok(())
    }

    /// Drops what the shadow has acknowledged.
    fn acknowledged(&self, received: u64) {
        let mut q = lock(&self.unacked);
        while q.front().is_some_and(|(n, _)| *n <= received) {
            q.pop_front();
        }
    }

    /// Sends an `Ack` of what has arrived.
    async fn send_ack(self: &Arc<Self>) {
        let mut tx = self.wr.lock().await;
        if tx.wr.is_none() {
            return;
        }
        let received = self.received.load(Ordering::SeqCst);
        self.acked.store(received, Ordering::SeqCst);
        let _ = self.send_locked(&mut tx, &ToShadow::Ack { received }).await;
    }
}

/// Acknowledges the shadow's messages every [`HEARTBEAT`] (sooner after
/// [`ACK_EVERY`] of them) and loses a link silent for [`SILENCE`].
async fn heartbeat(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.ack_due.notified() => {}
        }
        if shared.is_down() {
            return;
        }
        if *shared.away.borrow() {
            continue;
        }
        let silent = lock(&shared.heard).elapsed();
        if silent > SILENCE {
            let epoch = shared.epoch.load(Ordering::SeqCst);
            shared.lose(
                epoch,
                format!("no word from the shadow for {} s", SILENCE.as_secs()),
            );
            continue;
        }
        shared.send_ack().await;
    }
}

/// Dials the shadow again until it resumes the session, refuses, or the
/// job's lease ends (then the link is down).
async fn reconnect(shared: Arc<Shared>, why: String) {
    let Some(info) = shared.resume.get() else {
        return shared.fail(why);
    };
    let give_up = Instant::now() + info.lease;
    warn!(
        lease_secs = info.lease.as_secs(),
        "lost the shadow ({why}); the job waits, suspended, for the link to come back"
    );
    // The old connection's reader stops first: nothing more is counted
    // from it once `Resume` says how much arrived.
    let old = lock(&shared.reader).take();
    if let Some(r) = old {
        r.abort();
        let _ = r.await;
    }
    shared.wr.lock().await.wr = None;
    let mut attempts = 0u32;
    loop {
        if shared.is_down() {
            return;
        }
        attempts += 1;
        match resume_once(&shared, info).await {
            Ok(()) => {
                info!(
                    attempts,
                    "the link to the shadow is back; the session resumed"
                );
                return;
            }
            Err(LinkError::Refused(reason)) => {
                warn!("the shadow refused to resume: {reason}");
                return shared.fail(format!("the shadow refused to resume: {reason}"));
            }
            Err(e) => debug!("cannot resume yet: {e}"),
        }
        let now = Instant::now();
        if now + REDIAL >= give_up {
            warn!(
                lease_secs = info.lease.as_secs(),
                "the job's lease expired before the shadow could be reached again"
            );
            shared.expired.store(true, Ordering::SeqCst);
            return shared.fail(format!(
                "the job's lease of {} s expired with the shadow out of reach ({why})",
                info.lease.as_secs()
            ));
        }
        tokio::time::sleep(REDIAL).await;
    }
}

/// One attempt: dial, `Resume`, and on `Resumed` resend what the shadow
/// lacks and make the new connection current.
async fn resume_once(shared: &Arc<Shared>, info: &ResumeInfo) -> Result<(), LinkError> {
    let dial = dial(&info.id, &info.schedd_name, &info.addr);
    let tls = tokio::time::timeout(SILENCE, dial)
        .await
        .map_err(|_| LinkError::Timeout("dialling the schedd again"))??;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let mut tx = shared.wr.lock().await;
    let received = shared.received.load(Ordering::SeqCst);
    let hello = ToShadow::Resume {
        claim: info.claim.clone(),
        job: info.job,
        host: info.host.clone(),
        received,
    };
    write_frame_async(&mut wr, &hello)
        .await
        .map_err(LinkError::Send)?;
    let answer = tokio::time::timeout(
        ANSWER_TIMEOUT,
        proto::frame::read_frame_async::<_, FromShadow>(&mut rd, MAX_FRAME),
    )
    .await
    .map_err(|_| LinkError::Timeout("waiting for the shadow to resume"))?;
    let theirs = match answer {
        Ok(FromShadow::Resumed { received }) => received,
        Ok(FromShadow::Refused { reason }) => return Err(LinkError::Refused(reason)),
        Ok(other) => {
            return Err(LinkError::Unexpected {
                doing: "resuming",
                got: format!("{other:?}"),
            });
        }
        Err(ProtoError::Closed) => return Err(LinkError::Closed("closed while resuming".into())),
        Err(e) => return Err(LinkError::Send(e)),
    };
    if theirs > tx.sent {
        return Err(LinkError::Refused(format!(
            "the shadow says it has {theirs} messages, but only {} were sent",
            tx.sent
        )));
    }
    shared.acknowledged(theirs);
    let again: Vec<Arc<Vec<u8>>> = lock(&shared.unacked)
        .iter()
        .map(|(_, f)| f.clone())
        .collect();
    for f in again {
        wr.write_all(&f)
            .await
            .map_err(|e| LinkError::Send(e.into()))?;
    }
    wr.flush().await.map_err(|e| LinkError::Send(e.into()))?;
    let epoch = shared.epoch.fetch_add(1, Ordering::SeqCst) + 1;
    tx.wr = Some(wr);
    *lock(&shared.heard) = Instant::now();
    let chans = lock(&shared.chans).clone();
    if let Some((control, checkpoints, pushes)) = chans {
        let r = tokio::spawn(read_loop(
            rd,
            shared.clone(),
            epoch,
            control,
            checkpoints,
            pushes,
        ));
        *lock(&shared.reader) = Some(r);
    }
    shared.away.send_replace(false);
    Ok(())
}

/// Dials the schedd and checks that the peer is one.
async fn dial(id: &Identity, schedd_name: &str, addr: &str) -> Result<Stream, LinkError> {
    let sn = proto::tls::server_name(schedd_name).map_err(LinkError::Name)?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| LinkError::Connect {
            addr: addr.into(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let tls = id
        .connector()
        .connect(sn, tcp)
        .await
        .map_err(|source| LinkError::Tls {
            name: schedd_name.into(),
            addr: addr.into(),
            source,
        })?;
    match proto::tls::client_peer(&tls) {
        Some(p) if p.role == "schedd" => Ok(tls),
        p => {
            let peer = p.map_or("nothing".to_string(), |p| {
                format!("`{}` with role `{}`", p.name, p.role)
            });
            Err(LinkError::NotSchedd {
                addr: addr.into(),
                peer,
            })
        }
    }
}

/// Where the reader of each connection delivers what is not a reply.
type Chans = (
    mpsc::UnboundedSender<FromShadow>,
    mpsc::UnboundedSender<bool>,
    mpsc::UnboundedSender<(Handle, Vec<u8>)>,
);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The starter's side of one shadow connection.
pub struct ShadowLink {
    shared: Arc<Shared>,
    control: mpsc::UnboundedReceiver<FromShadow>,
    /// `Checkpoint { vacate }` requests from the shadow, until taken.
    checkpoints: Option<mpsc::UnboundedReceiver<bool>>,
    /// Who dialled whom: for resuming.
    dialled: (Identity, String, String),
}

impl Drop for ShadowLink {
    fn drop(&mut self) {
        // Stops the reader, the heartbeat and any resume attempt.
        self.shared.fail("the starter is done with the link".into());
        if let Some(r) = lock(&self.shared.reader).take() {
            r.abort();
        }
        lock(&self.shared.chans).take();
    }
}

/// Reports the job's suspends and continues over a [`ShadowLink`].
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
}

impl Notifier {
    /// The job's processes are stopped (the shadow logs `suspended`).
    pub async fn suspended(&self) -> Result<(), LinkError> {
        self.shared.send(&ToShadow::Suspended).await
    }

    /// They run again.
    pub async fn continued(&self) -> Result<(), LinkError> {
        self.shared.send(&ToShadow::Continued).await
    }
}

/// The job's calls and writes, over a [`ShadowLink`].
pub struct LinkBackend {
    shared: Arc<Shared>,
}

impl ShadowLink {
    /// Dials the schedd `schedd_name` at `addr` with `id`'s certificate.
    pub async fn connect(
        id: &Identity,
        schedd_name: &str,
        addr: &str,
    ) -> Result<ShadowLink, LinkError> {
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, dial(id, schedd_name, addr))
            .await
            .map_err(|_| LinkError::Timeout("connecting to the schedd"))??;
        let (rd, wr) = tokio::io::split(tls);
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let (tx, control) = mpsc::unbounded_channel();
        let (ckpt_tx, checkpoints) = mpsc::unbounded_channel();
        let chans: Chans = (tx, ckpt_tx, push_tx);
        let shared = Arc::new(Shared {
            pushes: Mutex::new(Some(push_rx)),
            wr: tokio::sync::Mutex::new(Sender {
                wr: Some(wr),
                sent: 0,
            }),
            unacked: Mutex::new(VecDeque::new()),
            received: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            heard: Mutex::new(Instant::now()),
            running: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            away: tokio::sync::watch::channel(false).0,
            ack_due: tokio::sync::Notify::new(),
            resume: OnceLock::new(),
            reader: Mutex::new(None),
            chans: Mutex::new(Some(chans.clone())),
            expired: AtomicBool::new(false),
            pending: Mutex::new(Some(VecDeque::new())),
            next_id: AtomicU64::new(1),
            down: Mutex::new(None),
            lost: tokio::sync::watch::channel(false).0,
            ckpt_wait: Mutex::new(None),
            image: Mutex::new(ImageSink::default()),
        });
        let (control_tx, ckpt_tx, push_tx) = chans;
        let reader = tokio::spawn(read_loop(
            rd,
            shared.clone(),
            0,
            control_tx,
            ckpt_tx,
            push_tx,
        ));
        *lock(&shared.reader) = Some(reader);
        Ok(ShadowLink {
            checkpoints: Some(checkpoints),
            shared,
            control,
            dialled: (id.clone(), schedd_name.to_string(), addr.to_string()),
        })
    }

    /// The job runs: from here on a lost link is resumed within the lease
    /// (the shadow learns it from `Started`).
    pub async fn started(&self, pid: i32) -> Result<(), LinkError> {
        self.shared.send(&ToShadow::Started { pid }).await?;
        if !self.shared.running.swap(true, Ordering::SeqCst) {
            *lock(&self.shared.heard) = Instant::now();
            tokio::spawn(heartbeat(self.shared.clone()));
        }
        Ok(())
    }

    /// Whether the link went down because the job's lease ran out.
    pub fn lease_expired(&self) -> bool {
        self.shared.expired.load(Ordering::SeqCst)
    }

    /// `true` while the link is lost and being resumed (the job should be
    /// suspended), `false` once it is back.
    pub fn away(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.away.subscribe()
    }

    /// Resolves when the connection is lost; returns why.
    pub fn lost(&self) -> impl Future<Output = String> + Send + 'static {
        let shared = self.shared.clone();
        let mut rx = shared.lost.subscribe();
        async move {
            let _ = rx.wait_for(|down| *down).await;
            shared.why_down()
        }
    }

    /// The backend for [`crate::job::run_job`]; it shares this connection.
    pub fn backend(&self) -> LinkBackend {
        LinkBackend {
            shared: self.shared.clone(),
        }
    }

    async fn recv(&mut self, doing: &'static str) -> Result<FromShadow, LinkError> {
        // An answer may wait for the link to come back within the lease.
        let lease = self.shared.resume.get().map_or(Duration::ZERO, |r| r.lease);
        match tokio::time::timeout(ANSWER_TIMEOUT + lease, self.control.recv()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(LinkError::Closed(self.shared.why_down())),
            Err(_) => Err(LinkError::Timeout(doing)),
        }
    }

    /// Sends `Attach`; returns the job's spec and std handles.
    pub async fn attach(
        &mut self,
        claim: ClaimId,
        job: JobId,
        host: HostName,
    ) -> Result<Attached, LinkError> {
        self.shared
            .send(&ToShadow::Attach {
                claim: claim.clone(),
                job,
                host: host.clone(),
            })
            .await?;
        match self.recv("attaching").await? {
            FromShadow::Attached(a) if a.job == job => {
                let (id, schedd_name, addr) = self.dialled.clone();
                let _ = self.shared.resume.set(ResumeInfo {
                    id,
                    schedd_name,
                    addr,
                    claim,
                    job,
                    host,
                    lease: Duration::from_secs(a.lease_secs),
                });
                Ok(a)
            }
            FromShadow::Attached(a) => Err(LinkError::Unexpected {
                doing: "attaching",
                got: format!("attached to job {} instead of {job}", a.job),
            }),
            FromShadow::Refused { reason } => Err(LinkError::Refused(reason)),
            other => Err(LinkError::Unexpected {
                doing: "attaching",
                got: format!("{other:?}"),
            }),
        }
    }

    /// Fetches the executable into a new file `dest` (mode 0755); returns its size.
    pub async fn fetch_executable(&mut self, dest: &Path) -> Result<u64, LinkError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| LinkError::Executable {
            path: dest.into(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(dest)
            .map_err(err)?;
        self.shared.send(&ToShadow::FetchExecutable).await?;
        let mut size = 0u64;
        loop {
            match self.recv("fetching the executable").await? {
                FromShadow::ExecChunk { data, last } => {
                    f.write_all(&data).map_err(err)?;
                    size += data.len() as u64;
                    if last {
                        break;
                    }
                }
                FromShadow::Refused { reason } => return Err(LinkError::Refused(reason)),
                other => {
                    return Err(LinkError::Unexpected {
                        doing: "fetching the executable",
                        got: format!("{other:?}"),
                    });
                }
            }
        }
        f.sync_all().map_err(err)?;
        debug!(size, path = %dest.display(), "executable fetched");
        Ok(size)
    }

    async fn until_done(&mut self, doing: &'static str) -> Result<(), LinkError> {
        match self.recv(doing).await? {
            FromShadow::Done => Ok(()),
            other => Err(LinkError::Unexpected {
                doing,
                got: format!("{other:?}"),
            }),
        }
    }

    /// Reports the job's end and waits until the shadow has committed it.
    pub async fn finish(&mut self, status: ExitStatus, usage: Usage) -> Result<(), LinkError> {
        self.shared
            .send(&ToShadow::Exited { status, usage })
            .await?;
        self.until_done("reporting the exit").await
    }

    /// Reports that the job could not run and waits until that is committed.
    pub async fn fail(&mut self, reason: String) -> Result<(), LinkError> {
        self.shared.send(&ToShadow::Failed { reason }).await?;
        self.until_done("reporting the failure").await
    }

    /// Reports that the job left this host (`checkpointed`: from the image
    /// just committed) and waits until the shadow has requeued it.
    pub async fn vacated(&mut self, reason: String, checkpointed: bool) -> Result<(), LinkError> {
        self.shared
            .send(&ToShadow::Vacated {
                reason,
                checkpointed,
            })
            .await?;
        self.until_done("reporting the vacate").await
    }

    /// A handle that reports suspends and continues while the job runs.
    pub fn notifier(&self) -> Notifier {
        Notifier {
            shared: self.shared.clone(),
        }
    }

    /// The shadow's checkpoint requests (`true`: then vacate), for the
    /// starter's main loop; `None` after the first call.
    pub fn checkpoint_requests(&mut self) -> Option<mpsc::UnboundedReceiver<bool>> {
        self.checkpoints.take()
    }

    /// Asks for the job's last committed image. `None`: there is none
    /// (start afresh); otherwise its compressed bytes arrive on the
    /// receiver, in order, for [`crate::job::JobLaunch::restore`] (the
    /// channel ends after the last chunk, or early if the link fails).
    pub async fn fetch_image(&mut self) -> Result<Option<mpsc::Receiver<Vec<u8>>>, LinkError> {
        let (first, is_image) = oneshot::channel();
        let (chunks, rx) = mpsc::channel(8);
        *lock(&self.shared.image) = ImageSink {
            first: Some(first),
            chunks: Some(chunks),
        };
        self.shared.send(&ToShadow::FetchImage).await?;
        match tokio::time::timeout(ANSWER_TIMEOUT, is_image).await {
            Ok(Ok(true)) => Ok(Some(rx)),
            Ok(Ok(false)) => Ok(None),
            Ok(Err(_)) => Err(LinkError::Closed(self.shared.why_down())),
            Err(_) => Err(LinkError::Timeout("asking for the job's image")),
        }
    }

    /// Closes the connection cleanly (TLS close_notify).
    pub async fn close(self) {
        let mut tx = self.shared.wr.lock().await;
        if let Some(wr) = tx.wr.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(5), wr.shutdown()).await;
        }
    }
}

async fn read_loop(
    mut rd: tokio::io::ReadHalf<Stream>,
    shared: Arc<Shared>,
    epoch: u64,
    control: mpsc::UnboundedSender<FromShadow>,
    checkpoints: mpsc::UnboundedSender<bool>,
    pushes: mpsc::UnboundedSender<(Handle, Vec<u8>)>,
) {
    // Frame bodies are read into this one buffer, reused from frame to frame.
    let mut body = Vec::new();
    let why = loop {
        let msg = match read_frame_async_into::<_, FromShadow>(&mut rd, MAX_FRAME, &mut body).await
        {
            Ok(m) => m,
            Err(ProtoError::Closed) => break "the shadow closed the connection".to_string(),
            Err(e) => break format!("bad frame from the shadow: {e}"),
        };
        *lock(&shared.heard) = Instant::now();
        if msg.counted() {
            let n = shared.received.fetch_add(1, Ordering::SeqCst) + 1;
            if n - shared.acked.load(Ordering::SeqCst) >= ACK_EVERY {
                shared.ack_due.notify_one();
            }
        }
        match msg {
            FromShadow::Ack { received } => shared.acknowledged(received),
            FromShadow::Reply { id, reply } => {
                let mut pending = shared.pending();
                let want = pending.as_ref().and_then(|q| q.front()).map(|(w, _)| *w);
                match want {
                    Some(want) if want == id => {
                        if let Some((_, tx)) = pending.as_mut().and_then(|q| q.pop_front()) {
                            let _ = tx.send(reply);
                        }
                    }
                    // A schedd that restarted applies again the calls made
                    // after its saved session: answers already had are dropped.
                    _ if id < shared.next_id.load(Ordering::SeqCst)
                        && want.is_none_or(|w| id < w) =>
                    {
                        debug!(id, "a reply already had; dropped");
                    }
                    Some(want) => {
                        break format!("reply {id} from the shadow, expected {want}");
                    }
                    None => break format!("reply {id} from the shadow to no call"),
                }
            }
            FromShadow::WriteFailed { h, errno } => {
                warn!(
                    handle = h.0,
                    errno, "the shadow could not apply the job's write"
                )
            }
            FromShadow::Checkpoint { vacate } => {
                let _ = checkpoints.send(vacate);
            }
            FromShadow::Push { h, data } => {
                let _ = pushes.send((h, data));
            }
            FromShadow::CkptCommitted { bytes } => match lock(&shared.ckpt_wait).take() {
                Some(w) => {
                    let _ = w.send(Ok(bytes));
                }
                None => debug!(bytes, "a commit nobody waits for"),
            },
            FromShadow::CkptFailed { reason } => match lock(&shared.ckpt_wait).take() {
                Some(w) => {
                    let _ = w.send(Err(reason));
                }
                None => debug!("a checkpoint failure nobody waits for: {reason}"),
            },
            FromShadow::ImageChunk { data, last } => {
                let chunks = {
                    let mut sink = lock(&shared.image);
                    if let Some(first) = sink.first.take() {
                        let _ = first.send(true);
                    }
                    if last {
                        sink.chunks.take()
                    } else {
                        sink.chunks.clone()
                    }
                };
                // Waits while the restarting process reads: the image is
                // never held whole here.
                if let Some(c) = chunks
                    && c.send(data).await.is_err()
                {
                    debug!("image chunk after its reader went away");
                }
            }
            FromShadow::NoImage => {
                let mut sink = lock(&shared.image);
                if let Some(first) = sink.first.take() {
                    let _ = first.send(false);
                }
                sink.chunks = None;
            }
            other => {
                let _ = control.send(other);
            }
        }
    };
    shared.lose(epoch, why);
}

impl relay::Backend for LinkBackend {
    async fn call(&mut self, op: FileOp) -> FileReply {
        let (tx, rx) = oneshot::channel();
        {
            // Queue the waiter and send under the writer lock, so that the
            // queue's order is the wire's order.
            let mut wr = self.shared.wr.lock().await;
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            match self.shared.pending().as_mut() {
                Some(q) => q.push_back((id, tx)),
                None => return FileReply::Err(libc::EIO),
            }
            if self
                .shared
                .send_locked(&mut wr, &ToShadow::Call { id, op })
                .await
                .is_err()
            {
                return FileReply::Err(libc::EIO);
            }
        }
        rx.await.unwrap_or(FileReply::Err(libc::EIO))
    }

    async fn write(&mut self, h: Handle, data: Vec<u8>) {
        if self.shared.pending().is_none() {
            return;
        }
        // A failure marks the link down; the job's next call reports EIO.
        let _ = self.shared.send(&ToShadow::Write { h, data }).await;
    }

    fn pushes(&mut self) -> Option<relay::Pushes> {
        lock(&self.shared.pushes).take()
    }

    async fn ack(&mut self, h: Handle, n: u64) {
        if self.shared.pending().is_some() {
            let _ = self.shared.send(&ToShadow::PushAck { h, n }).await;
        }
    }

    async fn ckpt_begin(&mut self, reason: String) {
        let _ = self.shared.send(&ToShadow::CkptBegin { reason }).await;
    }

    async fn ckpt_chunk(&mut self, data: Vec<u8>) {
        let _ = self.shared.send(&ToShadow::CkptChunk { data }).await;
    }

    async fn ckpt_end(
        &mut self,
        raw_bytes: u64,
        seconds: f64,
        streams: Vec<(Handle, i64)>,
    ) -> Result<u64, String> {
        let (tx, rx) = oneshot::channel();
        *lock(&self.shared.ckpt_wait) = Some(tx);
        let end = ToShadow::CkptEnd {
            raw_bytes,
            seconds,
            streams,
        };
        if let Err(e) = self.shared.send(&end).await {
            return Err(format!("{e}"));
        }
        rx.await.map_err(|_| {
            format!(
                "the link to the shadow went down: {}",
                self.shared.why_down()
            )
        })?
    }

    async fn ckpt_abort(&mut self, reason: String) {
        let _ = self.shared.send(&ToShadow::CkptAbort { reason }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::Backend;
    use proto::frame::read_frame_async;
    use proto::job::JobSpec;
    use proto::tls::{init_ca, issue};
    use tokio::net::TcpListener;

    type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

    fn spec() -> JobSpec {
        JobSpec {
            executable: "prog".into(),
            transfer_executable: true,
            arguments: vec![],
            input: None,
            output: None,
            error: None,
            initialdir: "/home/ann/run".into(),
            environment: vec![],
            requirements: None,
            rank: None,
            request_cpus: 1,
            request_memory_mb: 0,
            request_disk_mb: 0,
            max_retries: 0,
            attributes: Default::default(),
        }
    }

    /// A PKI with a schedd `submit` and an ownerd `exec1`; a listener that
    /// runs `shadow` on the first connection.
    async fn fake_shadow<F, Fut>(
        dir: &Path,
        shadow: F,
    ) -> (String, tokio::task::JoinHandle<Vec<ToShadow>>)
    where
        F: FnOnce(ServerStream) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<ToShadow>> + Send,
    {
        init_ca(dir, "t").unwrap();
        issue(dir, "submit", "schedd", &[]).unwrap();
        issue(dir, "exec1", "ownerd", &[]).unwrap();
        let acc = Identity::load(dir, "submit").unwrap().acceptor();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            shadow(acc.accept(s).await.unwrap()).await
        });
        (addr, h)
    }

    async fn get(s: &mut ServerStream) -> ToShadow {
        read_frame_async(s, MAX_FRAME).await.unwrap()
    }

    async fn put(s: &mut ServerStream, m: FromShadow) {
        write_frame_async(s, &m).await.unwrap();
    }

    fn job() -> JobId {
        JobId {
            cluster: 4,
            proc: 2,
        }
    }

    #[tokio::test]
    async fn attach_fetch_calls_writes_and_finish() {
        let d = tempfile::tempdir().unwrap();
        let (addr, shadow) = fake_shadow(d.path(), |mut s| async move {
            let mut seen = vec![get(&mut s).await];
            let a = Attached {
                job: job(),
                spec: spec(),
                owner: "ann".into(),
                stdin: None,
                stdout: Some(Handle(1)),
                stderr: None,
                lease_secs: 60,
            };
            put(&mut s, FromShadow::Attached(a)).await;
            seen.push(get(&mut s).await);
            put(
                &mut s,
                FromShadow::ExecChunk {
                    data: b"#!/bin/sh\n".to_vec(),
                    last: false,
                },
            )
            .await;
            put(
                &mut s,
                FromShadow::ExecChunk {
                    data: b"exit 0\n".to_vec(),
                    last: true,
                },
            )
            .await;
            // A write, then two calls; the write fails, which the starter only logs.
            for _ in 0..3 {
                let m = get(&mut s).await;
                match &m {
                    ToShadow::Write { h, .. } => {
                        put(
                            &mut s,
                            FromShadow::WriteFailed {
                                h: *h,
                                errno: libc::ENOSPC,
                            },
                        )
                        .await
                    }
                    ToShadow::Call { id, .. } => {
                        put(
                            &mut s,
                            FromShadow::Reply {
                                id: *id,
                                reply: FileReply::Count(*id),
                            },
                        )
                        .await
                    }
                    _ => {}
                }
                seen.push(m);
            }
            seen.push(get(&mut s).await);
            put(&mut s, FromShadow::Done).await;
            seen
        })
        .await;
        let id = Identity::load(d.path(), "exec1").unwrap();
        let mut link = ShadowLink::connect(&id, "submit", &addr).await.unwrap();
        let a = link
            .attach(ClaimId("c1".into()), job(), HostName("exec1".into()))
            .await
            .unwrap();
        assert_eq!((a.owner.as_str(), a.stdout), ("ann", Some(Handle(1))));
        let exe = d.path().join("prog");
        assert_eq!(link.fetch_executable(&exe).await.unwrap(), 17);
        assert_eq!(std::fs::read(&exe).unwrap(), b"#!/bin/sh\nexit 0\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&exe).unwrap().permissions().mode() & 0o777,
            0o755
        );

        let mut b = link.backend();
        b.write(Handle(1), b"out".to_vec()).await;
        let r1 = b.call(FileOp::Fstat { h: Handle(1) }).await;
        let r2 = b.call(FileOp::Barrier).await;
        assert_eq!((r1, r2), (FileReply::Count(1), FileReply::Count(2)));
        let usage = Usage {
            wall_secs: 1.5,
            ..Usage::default()
        };
        link.finish(ExitStatus::Code(3), usage).await.unwrap();

        let seen = shadow.await.unwrap();
        assert_eq!(
            seen,
            vec![
                ToShadow::Attach {
                    claim: ClaimId("c1".into()),
                    job: job(),
                    host: HostName("exec1".into())
                },
                ToShadow::FetchExecutable,
                ToShadow::Write {
                    h: Handle(1),
                    data: b"out".to_vec()
                },
                ToShadow::Call {
                    id: 1,
                    op: FileOp::Fstat { h: Handle(1) }
                },
                ToShadow::Call {
                    id: 2,
                    op: FileOp::Barrier
                },
                ToShadow::Exited {
                    status: ExitStatus::Code(3),
                    usage
                },
            ]
        );
    }

    #[tokio::test]
    async fn refusal_is_an_error_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let (addr, shadow) = fake_shadow(d.path(), |mut s| async move {
            let m = get(&mut s).await;
            put(
                &mut s,
                FromShadow::Refused {
                    reason: "claim does not match job 4.2".into(),
                },
            )
            .await;
            vec![m]
        })
        .await;
        let id = Identity::load(d.path(), "exec1").unwrap();
        let mut link = ShadowLink::connect(&id, "submit", &addr).await.unwrap();
        let e = link
            .attach(ClaimId("bad".into()), job(), HostName("exec1".into()))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the shadow refused the job: claim does not match job 4.2"
        );
        shadow.await.unwrap();
    }

    #[tokio::test]
    async fn calls_fail_with_eio_when_the_shadow_goes_away() {
        let d = tempfile::tempdir().unwrap();
        let (addr, shadow) = fake_shadow(d.path(), |mut s| async move {
            // Takes one call and hangs up without answering.
            vec![get(&mut s).await]
        })
        .await;
        let id = Identity::load(d.path(), "exec1").unwrap();
        let mut link = ShadowLink::connect(&id, "submit", &addr).await.unwrap();
        let mut b = link.backend();
        assert_eq!(b.call(FileOp::Getcwd).await, FileReply::Err(libc::EIO));
        assert_eq!(b.call(FileOp::Getcwd).await, FileReply::Err(libc::EIO));
        assert!(matches!(
            link.finish(ExitStatus::Code(0), Usage::default()).await,
            Err(LinkError::Send(_) | LinkError::Closed(_))
        ));
        assert_eq!(
            shadow.await.unwrap(),
            vec![ToShadow::Call {
                id: 1,
                op: FileOp::Getcwd
            }]
        );
    }

    #[tokio::test]
    async fn checkpoint_requests_images_and_commits_are_routed() {
        let d = tempfile::tempdir().unwrap();
        let (addr, shadow) = fake_shadow(d.path(), |mut s| async move {
            let mut seen = vec![];
            put(&mut s, FromShadow::Checkpoint { vacate: true }).await;
            // An image is sent, then committed; a second one fails.
            for answer in [
                FromShadow::CkptCommitted { bytes: 7 },
                FromShadow::CkptFailed {
                    reason: "disk full".into(),
                },
            ] {
                loop {
                    let m = get(&mut s).await;
                    let end = matches!(m, ToShadow::CkptEnd { .. });
                    seen.push(m);
                    if end {
                        break;
                    }
                }
                put(&mut s, answer).await;
            }
            // No image, then an image in three chunks.
            seen.push(get(&mut s).await);
            put(&mut s, FromShadow::NoImage).await;
            seen.push(get(&mut s).await);
            for (data, last) in [(&b"ab"[..], false), (b"cd", false), (b"e", true)] {
                let data = data.to_vec();
                put(&mut s, FromShadow::ImageChunk { data, last }).await;
            }
            seen.push(get(&mut s).await);
            seen
        })
        .await;
        let id = Identity::load(d.path(), "exec1").unwrap();
        let mut link = ShadowLink::connect(&id, "submit", &addr).await.unwrap();
        let mut asks = link.checkpoint_requests().unwrap();
        assert!(link.checkpoint_requests().is_none());
        assert_eq!(asks.recv().await, Some(true));

        let mut b = link.backend();
        b.ckpt_begin("owner".into()).await;
        b.ckpt_chunk(b"zstd".to_vec()).await;
        let r = b.ckpt_end(100, 0.5, vec![(Handle(1), 40)]).await;
        assert_eq!(r, Ok(7));
        b.ckpt_begin("periodic".into()).await;
        assert_eq!(b.ckpt_end(1, 0.1, vec![]).await, Err("disk full".into()));

        assert!(link.fetch_image().await.unwrap().is_none());
        let mut rx = link.fetch_image().await.unwrap().expect("an image");
        let mut got = Vec::new();
        while let Some(c) = rx.recv().await {
            got.extend(c);
        }
        assert_eq!(got, b"abcde");
        b.ckpt_abort("the job has 2 processes".into()).await;

        let seen = shadow.await.unwrap();
        assert_eq!(
            seen,
            vec![
                ToShadow::CkptBegin {
                    reason: "owner".into()
                },
                ToShadow::CkptChunk {
                    data: b"zstd".to_vec()
                },
                ToShadow::CkptEnd {
                    raw_bytes: 100,
                    seconds: 0.5,
                    streams: vec![(Handle(1), 40)]
                },
                ToShadow::CkptBegin {
                    reason: "periodic".into()
                },
                ToShadow::CkptEnd {
                    raw_bytes: 1,
                    seconds: 0.1,
                    streams: vec![]
                },
                ToShadow::FetchImage,
                ToShadow::FetchImage,
                ToShadow::CkptAbort {
                    reason: "the job has 2 processes".into()
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_peer_that_is_not_a_schedd_is_refused() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), "t").unwrap();
        issue(d.path(), "submit", "ownerd", &[]).unwrap();
        let acc = Identity::load(d.path(), "submit").unwrap().acceptor();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let _t = acc.accept(s).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let id = Identity::load(d.path(), "submit").unwrap();
        let e = ShadowLink::connect(&id, "submit", &addr)
            .await
            .err()
            .expect("connected to an ownerd as if a schedd");
        assert!(matches!(e, LinkError::NotSchedd { .. }), "{e}");
    }
}
