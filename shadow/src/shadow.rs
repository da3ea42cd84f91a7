//! The shadow server: starters dial it (TLS) and attach to a claimed job.
//!
//! One task per connection. `Attach` is accepted only with the claim the
//! matchmaker gave this schedd for that job, from a peer whose certificate
//! names the attaching host. The shadow then opens the job's standard
//! files — or, for a job with a committed checkpoint, restores its files
//! as the checkpoint recorded them ([`JobFs::restore`]; event `resumed`) —
//! marks the job running and serves the job's calls and writes, in order,
//! through the job's [`JobFs`] until `Exited` (committed, then `Done`). A
//! connection that ends before the job runs, or that the starter closes,
//! puts the job back to idle (`evicted`). Once the job runs (`Started`), a
//! link that goes silent or breaks is kept for the job's lease (event
//! `disconnected`): a starter that dials again with `Resume` picks the
//! session up where it was (event `reconnected`; see [`crate::wire`]); at
//! the end of the lease the job is requeued.
//!
//! Beside the starter's frames the session takes commands from the rest of
//! the schedd (`ShadowCmd`): `roost checkpoint`/`vacate`/`hold` push
//! `FromShadow::Checkpoint` to the starter; a removal closes the connection.
//! Checkpoint images arrive as `CkptBegin`, `CkptChunk`s, `CkptEnd` and are
//! committed by [`crate::ckpt`] with the job's file table; `FetchImage`
//! sends the committed image back in `ImageChunk`s of at most 1 MiB.

use crate::ckpt::{IMAGE_CHUNK, Incoming};
use crate::cli::chain;
use crate::fs::{FsSnapshot, JobFs};
use crate::queue::NewImage;
use crate::wire::{HEARTBEAT, Resume, SILENCE, Stream, Wire};
use crate::{Schedd, ShadowCmd};
use proto::fileop::FileReply;
use proto::frame::{MAX_FRAME, read_frame_async, write_frame_async};
use proto::ids::Handle;
use proto::job::{JobSpec, JobState};
use proto::shadow::{Attached, FromShadow, ToShadow};
use proto::{ClaimId, HostName, JobId, ProtoError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

/// Largest `ExecChunk` payload.
pub const EXEC_CHUNK: usize = 1 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiting record lock is tried again.
const LOCK_RETRY: Duration = Duration::from_millis(10);
/// How long an attach may wait for its match to reach this schedd.
const MATCH_WAIT: Duration = Duration::from_secs(5);

/// Accepts starter connections until the task is aborted.
pub async fn serve(s: Arc<Schedd>, l: TcpListener) {
    loop {
        match l.accept().await {
            Ok((tcp, peer)) => {
                let id = s.next_conn();
                let s = s.clone();
                tokio::spawn(
                    conn(s, tcp, peer, id)
                        .instrument(info_span!("shadow_conn", conn = id, peer = %peer)),
                );
            }
            Err(e) => {
                warn!("shadow accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn conn(s: Arc<Schedd>, tcp: TcpStream, peer: SocketAddr, conn_id: u64) {
    tcp.set_nodelay(true).ok();
    // An HTTPS client (ALPN http/1.1) gets `/metrics`; pool members the shadow.
    let accept = proto::web::accept(tcp, &s.identity.server, crate::metrics::web_config());
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(proto::web::Accepted::Pool(t))) => t,
        Ok(Ok(proto::web::Accepted::Web(t))) => return crate::metrics::serve_http(&s, t).await,
        Ok(Err(e)) => {
            crate::metrics::rejected("tls");
            warn!("TLS handshake failed; connection closed: {}", chain(&e));
            return;
        }
        Err(_) => {
            crate::metrics::rejected("tls");
            warn!("TLS handshake timed out; connection closed");
            return;
        }
    };
    let Some(who) = proto::tls::server_peer(&tls) else {
        crate::metrics::rejected("certificate");
        warn!("peer certificate names no holder or role; connection closed");
        return;
    };
    if who.role != "ownerd" && who.role != "starter" {
        crate::metrics::rejected("role");
        warn!(name = %who.name, role = %who.role, "only starters may attach; connection closed");
        return;
    }
    let mut st: Stream = BufStream::with_capacity(256 << 10, 256 << 10, tls);
    let first = tokio::time::timeout(
        ATTACH_TIMEOUT,
        read_frame_async::<_, ToShadow>(&mut st, MAX_FRAME),
    )
    .await;
    let (claim, job, host) = match first {
        Ok(Ok(ToShadow::Attach { claim, job, host })) => (claim, job, host),
        Ok(Ok(ToShadow::Resume {
            claim,
            job,
            host,
            received,
        })) => {
            let span = info_span!("job", job = %job, host = %host);
            let _e = span.enter();
            return resume(&s, st, &who.name, &claim, job, &host, received).await;
        }
        Ok(Ok(other)) => {
            warn!(peer = %peer, "first message is not Attach ({}); connection closed", kind(&other));
            return;
        }
        Ok(Err(ProtoError::Closed)) => {
            debug!("closed before attaching");
            return;
        }
        Ok(Err(e)) => {
            warn!(
                "bad frame before attaching; connection closed: {}",
                chain(&e)
            );
            return;
        }
        Err(_) => {
            warn!("no Attach within {ATTACH_TIMEOUT:?}; connection closed");
            return;
        }
    };
    let span = info_span!("job", job = %job, host = %host);
    attach(s, st, conn_id, who.name, claim, job, host)
        .instrument(span)
        .await;
}

fn kind(m: &ToShadow) -> &'static str {
    match m {
        ToShadow::Attach { .. } => "Attach",
        ToShadow::Resume { .. } => "Resume",
        ToShadow::Ack { .. } => "Ack",
        ToShadow::Call { .. } => "Call",
        ToShadow::Write { .. } => "Write",
        ToShadow::FetchExecutable => "FetchExecutable",
        ToShadow::Started { .. } => "Started",
        ToShadow::Exited { .. } => "Exited",
        ToShadow::Failed { .. } => "Failed",
        ToShadow::Suspended => "Suspended",
        ToShadow::Continued => "Continued",
        ToShadow::Vacated { .. } => "Vacated",
        ToShadow::CkptBegin { .. } => "CkptBegin",
        ToShadow::CkptChunk { .. } => "CkptChunk",
        ToShadow::CkptEnd { .. } => "CkptEnd",
        ToShadow::CkptAbort { .. } => "CkptAbort",
        ToShadow::FetchImage => "FetchImage",
        ToShadow::PushAck { .. } => "PushAck",
    }
}

/// Hands a starter's new connection to the session it lost, or refuses it.
async fn resume(
    s: &Schedd,
    mut st: Stream,
    peer_name: &str,
    claim: &ClaimId,
    job: JobId,
    host: &HostName,
    received: u64,
) {
    let refused = if host.0 != peer_name {
        Some(format!(
            "certificate names `{peer_name}`, but the starter says it is `{host}`"
        ))
    } else {
        match s.resumer(job, claim, host) {
            Ok(tx) => {
                info!(received, "the starter dials again");
                match tx.send(Resume { st, received }) {
                    Ok(()) => return,
                    Err(mpsc::error::SendError(r)) => {
                        st = r.st;
                        Some(format!("job {job}'s session has just ended"))
                    }
                }
            }
            Err(why) => Some(why),
        }
    };
    if let Some(reason) = refused {
        crate::metrics::rejected("resume");
        warn!("resume refused: {reason}");
        let _ = write_frame_async(&mut st, &FromShadow::Refused { reason }).await;
    }
}

async fn refuse(st: &mut Stream, reason: String) {
    warn!("attach refused: {reason}");
    let _ = write_frame_async(st, &FromShadow::Refused { reason }).await;
}

/// The job's standard files, opened on the submit host.
fn open_std(fs: &mut JobFs, spec: &JobSpec) -> Result<[Option<Handle>; 3], String> {
    let wr = libc::O_WRONLY | libc::O_CREAT;
    let open = |fs: &mut JobFs, path: &str, flags: i32, what: &str| {
        fs.open_std(path, flags).map_err(|e| {
            format!(
                "cannot open {what} `{path}` in {}: {}",
                spec.initialdir,
                std::io::Error::from_raw_os_error(e)
            )
        })
    };
    let stdin = spec
        .input
        .as_deref()
        .map(|p| open(fs, p, libc::O_RDONLY, "input"))
        .transpose()?;
    let same = spec.output.is_some() && spec.output == spec.error;
    // Output and error in one file: both append, so neither overwrites the other.
    let out_flags = if same {
        wr | libc::O_TRUNC | libc::O_APPEND
    } else {
        wr | libc::O_TRUNC
    };
    let stdout = spec
        .output
        .as_deref()
        .map(|p| open(fs, p, out_flags, "output"))
        .transpose()?;
    let err_flags = if same {
        wr | libc::O_APPEND
    } else {
        wr | libc::O_TRUNC
    };
    let stderr = spec
        .error
        .as_deref()
        .map(|p| open(fs, p, err_flags, "error"))
        .transpose()?;
    Ok([stdin, stdout, stderr])
}

/// How a shadow's session ended.
enum End {
    /// `Exited` committed and acknowledged.
    Completed,
    /// `Failed` or `Vacated` committed and acknowledged.
    Failed,
    /// The job was removed; the connection is closed on purpose.
    Removed,
    /// The starter went away or broke the protocol.
    Lost(String),
}

/// The job's files at attach: restored from its checkpoint, or opened afresh.
struct Prepared {
    fs: JobFs,
    std: [Option<Handle>; 3],
    /// The size of the image the job resumes from.
    resumed: Option<u64>,
}

/// Opens the job's files, or puts them back as its committed checkpoint
/// recorded them. An image whose file has gone is forgotten (event
/// `checkpoint_lost`) and the job starts from the beginning.
async fn prepare(s: &Schedd, row: &crate::queue::JobRow) -> Result<Prepared, String> {
    let spec = &row.spec;
    let dir = std::path::Path::new(&spec.initialdir);
    if let Some(img) = &row.image {
        let images = s.images.chain(row.id, img.seq);
        let snap = serde_json::from_str::<FsSnapshot>(&img.fs);
        match (images, snap) {
            (Ok(_), Ok(snap)) => {
                let fs = JobFs::restore(dir, &snap).map_err(|e| {
                    format!(
                        "cannot restore the job's files from its checkpoint: {}",
                        chain(&e)
                    )
                })?;
                let open =
                    |h: Option<Handle>| h.filter(|h| snap.handles.iter().any(|x| x.id == h.0));
                let std = [open(snap.std[0]), open(snap.std[1]), open(snap.std[2])];
                if spec.transfer_executable {
                    check_executable(&fs, &spec.executable)?;
                }
                return Ok(Prepared {
                    fs,
                    std,
                    resumed: Some(img.bytes),
                });
            }
            (images, snap) => {
                let reason = if let Err(why) = images {
                    why
                } else {
                    format!(
                        "the checkpoint's file table does not decode: {}",
                        snap.err().map(|e| e.to_string()).unwrap_or_default()
                    )
                };
                warn!("{reason}; the job starts from the beginning");
                let (job, r) = (row.id, reason.clone());
                s.db(move |q| q.image_lost(job, &r))
                    .await
                    .map_err(|e| format!("queue error: {}", chain(&e)))?;
            }
        }
    }
    let mut fs = JobFs::new(dir).map_err(|e| chain(&e))?;
    let std = open_std(&mut fs, spec)?;
    if spec.transfer_executable {
        check_executable(&fs, &spec.executable)?;
    }
    Ok(Prepared {
        fs,
        std,
        resumed: None,
    })
}

async fn attach(
    s: Arc<Schedd>,
    mut st: Stream,
    conn_id: u64,
    peer_name: String,
    claim: ClaimId,
    job: JobId,
    host: HostName,
) {
    if host.0 != peer_name {
        return refuse(
            &mut st,
            format!("certificate names `{peer_name}`, but the starter says it is `{host}`"),
        )
        .await;
    }
    let row = match wait_for_claim(&s, job, &claim).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return refuse(
                &mut st,
                format!("no claim {claim} for job {job} (unknown, used or expired)"),
            )
            .await;
        }
        Err(e) => return refuse(&mut st, format!("queue error: {}", chain(&e))).await,
    };
    // A claim is the matched machine's: a token that leaked to another
    // execute host is no use there.
    if let Some(m) = row.claim_host.as_ref().filter(|m| **m != host) {
        return refuse(
            &mut st,
            format!("claim {claim} for job {job} was given to `{m}`, not to `{host}`"),
        )
        .await;
    }
    // One shadow per job: a second starter with the same claim is refused
    // before it can touch the job's files. Registered before the commit so
    // that a removal right after it finds this shadow.
    let Some(cmds) = s.register_running(job, conn_id) else {
        return refuse(&mut st, format!("job {job} already has a starter attached")).await;
    };
    let spec = row.spec.clone();
    let Prepared { fs, std, resumed } = match prepare(&s, &row).await {
        Ok(p) => p,
        Err(reason) => {
            s.unregister_running(job, conn_id);
            let r = reason.clone();
            match s.db(move |q| q.failed(job, &r)).await {
                Ok(Some(JobState::Held)) => warn!("job held: {reason}"),
                Ok(_) => {}
                Err(e) => warn!("cannot record the failure: {}", chain(&e)),
            }
            s.release(claim);
            s.changed.notify_one();
            return refuse(&mut st, reason).await;
        }
    };
    let (c, h) = (claim.clone(), host.clone());
    match s
        .db(move |q| q.mark_running_from(job, &c, &h, resumed))
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            s.unregister_running(job, conn_id);
            return refuse(
                &mut st,
                format!("job {job} is no longer waiting for claim {claim}"),
            )
            .await;
        }
        Err(e) => {
            s.unregister_running(job, conn_id);
            return refuse(&mut st, format!("queue error: {}", chain(&e))).await;
        }
    }
    match resumed {
        Some(bytes) => info!(
            image_bytes = bytes,
            "executing, resumed from its checkpoint"
        ),
        None => info!("executing"),
    }
    let lease = job_lease(&spec, s.job_lease);
    let attached = Attached {
        job,
        spec: spec.clone(),
        owner: row.owner.clone(),
        stdin: std[0],
        stdout: std[1],
        stderr: std[2],
        lease_secs: lease.as_secs(),
    };
    let resumes = s.register_resumer(job, conn_id, &claim, &host);
    let end = match write_frame_async(&mut st, &FromShadow::Attached(attached)).await {
        Ok(()) => {
            let mut sess = Session {
                s: &s,
                wire: Wire::new(st),
                fs,
                spec: &spec,
                job,
                std,
                incoming: None,
                ckpt_error: None,
                next_seq: row.checkpoints + 1,
                vacate_by: None,
                net: crate::net::take(job, crate::net::Policy::from_attributes(&spec.attributes)),
                running: false,
                lease,
                claim: claim.clone(),
                host: host.clone(),
                save_now: false,
            };
            sess.forget();
            let end = sess.run(cmds, resumes).await;
            sess.forget();
            // A job that will run again keeps its connections meanwhile.
            if !matches!(end, End::Completed | End::Removed) {
                let empty = crate::net::JobNet::new(job, crate::net::Policy::default());
                crate::net::keep(std::mem::replace(&mut sess.net, empty));
            }
            end
        }
        Err(e) => End::Lost(format!("cannot send Attached: {}", chain(&e))),
    };
    wrap_up(&s, job, conn_id, claim, end).await;
}

/// After a session: lets go of the job, and records how it ended.
async fn wrap_up(s: &Schedd, job: JobId, conn_id: u64, claim: ClaimId, end: End) {
    s.unregister_running(job, conn_id);
    s.unregister_resumer(job, conn_id);
    match end {
        End::Completed => s.images.discard(job),
        End::Failed => {}
        End::Removed => {
            info!("job removed; connection to the starter closed");
            s.images.discard(job);
        }
        End::Lost(reason) => {
            warn!("starter connection closed before the job exited: {reason}");
            let r = reason.clone();
            match s.db(move |q| q.requeue(job, "evicted", &r)).await {
                Ok(true) => info!("back to the queue"),
                Ok(false) => {}
                Err(e) => warn!("cannot requeue: {}", chain(&e)),
            }
        }
    }
    s.release(claim);
    s.changed.notify_one();
}

/// The idle job `claim` is for. The matchmaker tells the ownerd and this
/// schedd at the same time, so a starter may come before the match: while
/// the job is idle and holds no claim, wait a little for it.
async fn wait_for_claim(
    s: &Schedd,
    job: JobId,
    claim: &ClaimId,
) -> Result<Option<crate::queue::JobRow>, crate::queue::QueueError> {
    let t0 = tokio::time::Instant::now();
    loop {
        let row = s.db(move |q| q.get(job)).await?;
        match row {
            Some(r) if r.state == JobState::Idle && r.claim.as_ref() == Some(claim) => {
                return Ok(Some(r));
            }
            Some(r)
                if r.state == JobState::Idle && r.claim.is_none() && t0.elapsed() < MATCH_WAIT =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => return Ok(None),
        }
    }
}

fn check_executable(fs: &JobFs, path: &str) -> Result<(), String> {
    match fs.can_read(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(format!(
            "cannot read executable `{path}`: {}",
            std::io::Error::from_raw_os_error(e)
        )),
    }
}

/// How long a job asked to leave its host may take before its starter's
/// connection is closed (the starter then kills the job).
const VACATE_WAIT: Duration = Duration::from_secs(300);

/// The job's lease: its `JobLease` attribute (seconds), or the schedd's default.
fn job_lease(spec: &JobSpec, default: Duration) -> Duration {
    spec.attributes
        .get("JobLease")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(default, Duration::from_secs)
}

/// Whether a call gives the same result and leaves the same state when
/// applied again after the job's files are put back as they were before
/// it (see [`Session::save`]).
fn replay_safe(op: &proto::fileop::FileOp) -> bool {
    use proto::fileop::FileOp::*;
    matches!(
        op,
        Read { .. }
            | Pread { .. }
            | Write { .. }
            | Pwrite { .. }
            | Lseek { .. }
            | Fstat { .. }
            | Stat { .. }
            | Access { .. }
            | Getdents { .. }
            | Getcwd
            | Ftruncate { .. }
            | Truncate { .. }
            | Fsync { .. }
            | Readlink { .. }
            | Chmod { .. }
            | Utimens { .. }
            | Barrier
    )
}

/// A running job's session as saved for a restarted schedd.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Saved {
    pub claim: ClaimId,
    pub host: HostName,
    /// Messages from the starter applied.
    pub received: u64,
    pub lease_secs: u64,
    /// The number of the job's next image.
    pub next_seq: u32,
    pub fs: FsSnapshot,
}

/// Reads the sessions saved in `dir` by a schedd that stopped while they
/// ran; an unreadable one is removed (its job is requeued).
pub(crate) fn saved_sessions(dir: &std::path::Path) -> Vec<(JobId, Saved)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let path = e.path();
        let job = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<JobId>().ok());
        let saved = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Saved>(&b).ok());
        match (job, saved) {
            (Some(job), Some(saved)) => out.push((job, saved)),
            _ => {
                warn!("removing an unreadable saved session {}", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    out
}

/// Takes back a job that was running when the schedd stopped: waits for
/// its starter to dial again within the job's lease, puts the job's files
/// back as the session was saved, and goes on serving it. Without a
/// starter in time the job goes back to the queue.
pub(crate) async fn adopt(s: Arc<Schedd>, job: JobId, saved: Saved) {
    let conn_id = s.next_conn();
    let path = s.sessions.join(format!("{job}.json"));
    let mut resumes = s.register_resumer(job, conn_id, &saved.claim, &saved.host);
    let lease = Duration::from_secs(saved.lease_secs);
    info!(
        lease_secs = saved.lease_secs,
        "running when the schedd stopped; waiting for its starter to dial again"
    );
    let resume = tokio::time::timeout(lease, resumes.recv()).await;
    let claim = saved.claim.clone();
    let fail = |reason: String| {
        let (s, claim, path) = (s.clone(), claim.clone(), path.clone());
        async move {
            let _ = std::fs::remove_file(&path);
            wrap_up(&s, job, conn_id, claim, End::Lost(reason)).await;
        }
    };
    let Ok(Some(mut r)) = resume else {
        return fail(format!(
            "the schedd restarted while the job ran, and its starter did not dial again within the job's lease of {} s",
            saved.lease_secs
        ))
        .await;
    };
    let row = match s.db(move |q| q.get(job)).await {
        Ok(Some(row)) if row.state == JobState::Running && row.claim.as_ref() == Some(&claim) => {
            row
        }
        Ok(_) => {
            let reason = format!("job {job} no longer runs under this claim");
            warn!("resume refused: {reason}");
            let _ = write_frame_async(&mut r.st, &FromShadow::Refused { reason }).await;
            s.unregister_resumer(job, conn_id);
            let _ = std::fs::remove_file(&path);
            return;
        }
        Err(e) => return fail(format!("queue error: {}", chain(&e))).await,
    };
    let Some(cmds) = s.register_running(job, conn_id) else {
        return fail(format!("job {job} already has a shadow")).await;
    };
    let spec = row.spec.clone();
    let dir = std::path::Path::new(&spec.initialdir);
    let fs = match JobFs::restore(dir, &saved.fs) {
        Ok(fs) => fs,
        Err(e) => {
            let reason = format!("cannot put the job's files back: {}", chain(&e));
            let _ = write_frame_async(
                &mut r.st,
                &FromShadow::Refused {
                    reason: reason.clone(),
                },
            )
            .await;
            return fail(reason).await;
        }
    };
    let wire = match Wire::adopted(r, saved.received).await {
        Ok(w) => w,
        Err(e) => return fail(format!("the starter could not resume: {e}")).await,
    };
    info!(
        received = saved.received,
        "the starter is back after the schedd's restart"
    );
    let _ = s
        .db(move |q| {
            q.note(
                job,
                "reconnected",
                serde_json::json!({ "after": "schedd restart" }),
            )
        })
        .await;
    let mut sess = Session {
        s: &s,
        wire,
        fs,
        spec: &spec,
        job,
        std: saved.fs.std,
        incoming: None,
        ckpt_error: None,
        next_seq: saved.next_seq,
        vacate_by: None,
        net: crate::net::JobNet::new(job, crate::net::Policy::from_attributes(&spec.attributes)),
        running: true,
        lease,
        claim: saved.claim.clone(),
        host: saved.host.clone(),
        save_now: true,
    };
    let end = sess.run(cmds, resumes).await;
    sess.forget();
    wrap_up(&s, job, conn_id, saved.claim, end).await;
}

/// One attached job.
struct Session<'a> {
    s: &'a Schedd,
    /// The link to the starter.
    wire: Wire,
    /// The job runs (`Started`): a lost link is kept for the lease.
    running: bool,
    lease: Duration,
    claim: ClaimId,
    host: HostName,
    /// The last call changed what a replay cannot redo (an open, a
    /// rename...): the session is saved before the next message.
    save_now: bool,
    fs: JobFs,
    spec: &'a JobSpec,
    job: JobId,
    std: [Option<Handle>; 3],
    /// The checkpoint image being received.
    incoming: Option<Incoming>,
    /// Why the image announced last could not be stored.
    ckpt_error: Option<String>,
    /// The number of the next image.
    next_seq: u32,
    /// Asked to vacate: when to give up waiting.
    vacate_by: Option<tokio::time::Instant>,
    /// The job's sockets.
    net: crate::net::JobNet,
}

/// What one message asks of the session loop (moved once; not boxed).
#[allow(clippy::large_enum_variant)]
enum Step {
    Reply(FromShadow),
    Nothing,
    End(End),
}

impl Session<'_> {
    async fn run(
        &mut self,
        mut cmds: mpsc::UnboundedReceiver<ShadowCmd>,
        mut resumes: mpsc::UnboundedReceiver<Resume>,
    ) -> End {
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(why) = self.wire.broken().map(str::to_string) {
                if !self.running || self.wire.peer_gone() {
                    return End::Lost(why);
                }
                if let Err(end) = self.park(&mut cmds, &mut resumes, why).await {
                    return end;
                }
            }
            let deadline = self.vacate_by;
            let msg = tokio::select! {
                // Frames first: the silence check below then only sees a
                // link with nothing waiting on it.
                biased;
                m = self.wire.next() => m,
                p = self.net.next_push() => {
                    self.wire.send(&p).await;
                    continue;
                }
                c = cmds.recv() => match c {
                    Some(ShadowCmd::Checkpoint { vacate }) => {
                        self.ask_checkpoint(vacate).await;
                        continue;
                    }
                    Some(ShadowCmd::End) | None => return End::Removed,
                },
                r = resumes.recv() => {
                    // The starter dialled again before this side saw the
                    // old link fail.
                    if let Some(r) = r
                        && let Err(end) = self.take_resume(r).await
                    {
                        return end;
                    }
                    continue;
                }
                _ = beat.tick(), if self.running => {
                    if self.wire.silent_for() > SILENCE {
                        self.wire.drop_link(format!(
                            "no word from the starter for {} s",
                            SILENCE.as_secs()
                        ));
                    } else {
                        self.save();
                        self.wire.ack(true).await;
                    }
                    continue;
                }
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    return End::Lost(format!(
                        "the job did not leave its host within {} s of being asked",
                        VACATE_WAIT.as_secs()
                    ));
                }
            };
            let msg = match msg {
                Ok(m) => m,
                // The starter is gone (a cut link is silent instead).
                Err(ProtoError::Closed) => {
                    return End::Lost("the starter closed the connection".into());
                }
                Err(ProtoError::Io(e)) => {
                    self.wire.failed("the link to the starter failed", &e);
                    continue;
                }
                Err(e) => return End::Lost(format!("bad frame: {}", chain(&e))),
            };
            match self.handle(&mut cmds, msg).await {
                Step::Reply(m) => {
                    self.wire.send(&m).await;
                    if let FromShadow::Reply {
                        reply: FileReply::Data(d),
                        ..
                    } = m
                    {
                        self.fs.recycle(d);
                    }
                }
                Step::Nothing => {}
                Step::End(e) => return e,
            }
            if self.save_now || self.wire.ack_due() {
                self.save();
            }
            self.wire.ack(false).await;
        }
    }

    /// Where the session is saved for a restarted schedd.
    fn saved_path(&self) -> std::path::PathBuf {
        self.s.sessions.join(format!("{}.json", self.job))
    }

    /// Saves what a restarted schedd needs to pick the session up again:
    /// the claim, the count of messages received, and the job's files as
    /// they stand after them (a starter resends what came later, and the
    /// files are cut back to these sizes first, so a replay writes the same
    /// bytes). Not saved, and a restarted schedd requeues the job, while the
    /// job has sockets or files deleted while open, or before it runs.
    fn save(&mut self) {
        self.save_now = false;
        if !self.running {
            return;
        }
        let path = self.saved_path();
        let mut fs = self.fs.snapshot(&[]);
        fs.std = self.std;
        if !self.net.is_empty() || !fs.unrestorable().is_empty() {
            let _ = std::fs::remove_file(&path);
            return;
        }
        let saved = Saved {
            claim: self.claim.clone(),
            host: self.host.clone(),
            received: self.wire.received(),
            lease_secs: self.lease.as_secs(),
            next_seq: self.next_seq,
            fs,
        };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            debug!("cannot save the session to {}: {e}", path.display());
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Removes the saved session (it starts, or it is over).
    fn forget(&self) {
        let _ = std::fs::remove_file(self.saved_path());
    }

    /// The link is lost while the job runs: waits for the starter to
    /// resume within the job's lease. `Err`: how the session ends instead.
    async fn park(
        &mut self,
        cmds: &mut mpsc::UnboundedReceiver<ShadowCmd>,
        resumes: &mut mpsc::UnboundedReceiver<Resume>,
        why: String,
    ) -> Result<(), End> {
        let lease = self.lease;
        warn!(
            lease_secs = lease.as_secs(),
            "lost the starter ({why}); the job is kept for its lease"
        );
        let extra = serde_json::json!({ "reason": why, "lease_secs": lease.as_secs() });
        if let Step::End(e) = self.note("disconnected", extra).await {
            return Err(e);
        }
        let t0 = tokio::time::Instant::now();
        loop {
            tokio::select! {
                r = resumes.recv() => {
                    let Some(r) = r else { continue };
                    self.take_resume(r).await?;
                    let away = t0.elapsed().as_secs_f64();
                    info!(away_secs = away, "the starter is back");
                    let extra = serde_json::json!({ "away_secs": (away * 10.0).round() / 10.0 });
                    return match self.note("reconnected", extra).await {
                        Step::End(e) => Err(e),
                        _ => Ok(()),
                    };
                }
                c = cmds.recv() => match c {
                    // Kept and sent when the starter is back.
                    Some(ShadowCmd::Checkpoint { vacate }) => self.ask_checkpoint(vacate).await,
                    Some(ShadowCmd::End) | None => return Err(End::Removed),
                },
                _ = tokio::time::sleep_until(t0 + lease) => {
                    return Err(End::Lost(format!(
                        "the job's lease of {} s expired with its starter out of reach ({why})",
                        lease.as_secs()
                    )));
                }
            }
        }
    }

    /// Moves the session onto a resuming starter's connection.
    async fn take_resume(&mut self, r: Resume) -> Result<(), End> {
        if !self.running {
            let reason = "the job had not started; it starts again elsewhere".to_string();
            let mut st = r.st;
            warn!("resume refused: {reason}");
            let _ = write_frame_async(&mut st, &FromShadow::Refused { reason }).await;
            return Ok(());
        }
        match self.wire.resume(self.job, r).await {
            Ok(()) => Ok(()),
            Err(reason) => {
                warn!("resume refused: {reason}");
                Err(End::Lost(format!("the starter could not resume: {reason}")))
            }
        }
    }

    /// Sends `Checkpoint` to the starter; with `vacate`, starts the clock.
    async fn ask_checkpoint(&mut self, vacate: bool) {
        info!(vacate, "asking the starter for a checkpoint");
        if vacate && self.vacate_by.is_none() {
            self.vacate_by = Some(tokio::time::Instant::now() + VACATE_WAIT);
        }
        self.wire.send(&FromShadow::Checkpoint { vacate }).await;
    }

    async fn handle(
        &mut self,
        cmds: &mut mpsc::UnboundedReceiver<ShadowCmd>,
        msg: ToShadow,
    ) -> Step {
        let (s, job) = (self.s, self.job);
        match msg {
            ToShadow::Call {
                id,
                op: proto::fileop::FileOp::Net(op),
            } => {
                self.net.settle_closes();
                let t0 = std::time::Instant::now();
                let (reply, denial) = self.net.call(op).await;
                crate::metrics::remote_call("net", t0.elapsed());
                if let Some(d) = denial {
                    let extra = serde_json::json!({ "call": d.call, "to": d.to });
                    if let Step::End(e) = self.note("network_denied", extra).await {
                        return Step::End(e);
                    }
                }
                Step::Reply(FromShadow::Reply { id, reply })
            }
            ToShadow::Call { id, op } if op.handle().is_some_and(|h| self.net.owns(h)) => {
                if !matches!(op, proto::fileop::FileOp::Close { .. }) {
                    self.net.settle_closes();
                }
                Step::Reply(FromShadow::Reply {
                    id,
                    reply: self.net.file_call(&op),
                })
            }
            ToShadow::Write { h, data } if self.net.owns(h) => match self.net.write(h, data) {
                Ok(()) => Step::Nothing,
                Err(errno) => Step::Reply(FromShadow::WriteFailed { h, errno }),
            },
            ToShadow::PushAck { h, n } => {
                self.net.ack(h, n);
                Step::Nothing
            }
            ToShadow::Call { id, op } => {
                if !matches!(op, proto::fileop::FileOp::Close { .. }) {
                    self.net.settle_closes();
                }
                self.save_now |= !replay_safe(&op);
                let t0 = std::time::Instant::now();
                let call = crate::metrics::op_name(&op);
                let reply = match crate::fs::nonblocking_lock(&op) {
                    // A waiting lock is retried here so that no thread
                    // blocks and a removal still ends the shadow.
                    Some(try_op) => loop {
                        match self.fs.call(try_op.clone()) {
                            FileReply::Err(e) if e == libc::EAGAIN || e == libc::EACCES => {
                                tokio::select! {
                                    _ = tokio::time::sleep(LOCK_RETRY) => {}
                                    c = cmds.recv() => match c {
                                        Some(ShadowCmd::Checkpoint { vacate }) => {
                                            self.ask_checkpoint(vacate).await;
                                        }
                                        Some(ShadowCmd::End) | None => return Step::End(End::Removed),
                                    },
                                }
                            }
                            r => break r,
                        }
                    },
                    None => self.fs.call(op),
                };
                crate::metrics::remote_call(call, t0.elapsed());
                Step::Reply(FromShadow::Reply { id, reply })
            }
            ToShadow::Write { h, data } => {
                let t0 = std::time::Instant::now();
                let r = self.fs.write(h, &data);
                crate::metrics::remote_call("write_behind", t0.elapsed());
                match r {
                    Ok(_) => Step::Nothing,
                    Err(errno) => {
                        debug!(handle = h.0, errno, "stream write failed");
                        Step::Reply(FromShadow::WriteFailed { h, errno })
                    }
                }
            }
            ToShadow::FetchExecutable => match self.fs.executable(&self.spec.executable) {
                Ok(data) => {
                    send_executable(&mut self.wire, &data).await;
                    Step::Nothing
                }
                Err(e) => {
                    let reason = format!(
                        "cannot read executable `{}`: {}",
                        self.spec.executable,
                        std::io::Error::from_raw_os_error(e)
                    );
                    self.wire
                        .send(&FromShadow::Refused {
                            reason: reason.clone(),
                        })
                        .await;
                    let r = reason.clone();
                    if let Err(e) = s.db(move |q| q.failed(job, &r)).await {
                        warn!("cannot record the failure: {}", chain(&e));
                    }
                    warn!("{reason}");
                    Step::End(End::Failed)
                }
            },
            ToShadow::Started { pid } => {
                debug!(pid, "job process started");
                self.running = true;
                Step::Nothing
            }
            ToShadow::Exited { status, mut usage } => {
                usage.bytes_read = self.fs.bytes_read();
                usage.bytes_written = self.fs.bytes_written();
                match s.db(move |q| q.complete(job, status, &usage)).await {
                    Ok(_) => {
                        info!(
                            ?status,
                            wall = usage.wall_secs,
                            read = usage.bytes_read,
                            written = usage.bytes_written,
                            "completed"
                        );
                        self.wire.send(&FromShadow::Done).await;
                        Step::End(End::Completed)
                    }
                    // Not acknowledged: the starter keeps the result and the job is retried.
                    Err(e) => {
                        Step::End(End::Lost(format!("cannot commit the exit: {}", chain(&e))))
                    }
                }
            }
            ToShadow::Failed { reason } => {
                let r = reason.clone();
                match s.db(move |q| q.failed(job, &r)).await {
                    Ok(state) => {
                        warn!(?state, "the starter could not run the job: {reason}");
                        self.wire.send(&FromShadow::Done).await;
                        Step::End(End::Failed)
                    }
                    Err(e) => Step::End(End::Lost(format!(
                        "cannot commit the failure: {}",
                        chain(&e)
                    ))),
                }
            }
            ToShadow::Attach { .. } | ToShadow::Resume { .. } => Step::End(End::Lost(
                "a second Attach or Resume on one connection".into(),
            )),
            // Taken by the wire.
            ToShadow::Ack { .. } => Step::Nothing,
            ToShadow::Suspended => self.note("suspended", serde_json::json!({})).await,
            ToShadow::Continued => self.note("unsuspended", serde_json::json!({})).await,
            ToShadow::Vacated {
                reason,
                checkpointed,
            } => {
                let event = if checkpointed { "vacated" } else { "evicted" };
                let r = reason.clone();
                match s.db(move |q| q.requeue(job, event, &r)).await {
                    Ok(_) => {
                        info!(checkpointed, "{event}: {reason}");
                        self.wire.send(&FromShadow::Done).await;
                        Step::End(End::Failed)
                    }
                    Err(e) => Step::End(End::Lost(format!(
                        "cannot commit the vacate: {}",
                        chain(&e)
                    ))),
                }
            }
            ToShadow::CkptBegin { reason } => {
                // A new image replaces one still arriving (Drop removes its file).
                self.incoming = None;
                self.ckpt_error = None;
                match Incoming::begin(&s.images, job, reason) {
                    Ok(inc) => {
                        debug!("checkpoint image arriving");
                        self.incoming = Some(inc);
                    }
                    Err(e) => {
                        // The chunks that follow are dropped; CkptEnd gets CkptFailed.
                        warn!("cannot store a checkpoint image: {e}");
                        self.ckpt_error = Some(format!(
                            "cannot create {}: {e}",
                            s.images.job_dir(job).join("image.tmp").display()
                        ));
                    }
                }
                Step::Nothing
            }
            ToShadow::CkptChunk { data } => {
                if let Some(inc) = self.incoming.as_mut() {
                    inc.append(&data);
                }
                Step::Nothing
            }
            ToShadow::CkptEnd {
                raw_bytes,
                seconds,
                streams,
            } => {
                let r = self.commit(raw_bytes, seconds, &streams).await;
                if matches!(r, FromShadow::CkptCommitted { .. }) {
                    self.net.committed(&streams);
                }
                Step::Reply(r)
            }
            ToShadow::CkptAbort { reason } => {
                self.incoming = None;
                info!("checkpoint refused: {reason}");
                self.note(
                    "checkpoint_refused",
                    serde_json::json!({ "reason": reason }),
                )
                .await
            }
            ToShadow::FetchImage => match self.send_image().await {
                Ok(()) => Step::Nothing,
                Err(e) => Step::End(End::Lost(format!("sending the image: {e}"))),
            },
        }
    }

    /// Records an event of the running job; a queue error ends the session.
    async fn note(&self, name: &'static str, extra: serde_json::Value) -> Step {
        let job = self.job;
        info!("{name}");
        match self.s.db(move |q| q.note(job, name, extra)).await {
            Ok(_) => Step::Nothing,
            Err(e) => Step::End(End::Lost(format!("cannot record `{name}`: {}", chain(&e)))),
        }
    }

    /// Makes the arrived image the job's checkpoint (see [`crate::ckpt`]).
    async fn commit(
        &mut self,
        raw_bytes: u64,
        seconds: f64,
        streams: &[(Handle, i64)],
    ) -> FromShadow {
        let (s, job) = (self.s, self.job);
        let failed = |reason: String| async move {
            warn!("checkpoint failed: {reason}");
            let r = reason.clone();
            if let Err(e) = s
                .db(move |q| q.note(job, "checkpoint_failed", serde_json::json!({ "reason": r })))
                .await
            {
                warn!("cannot record the failure: {}", chain(&e));
            }
            FromShadow::CkptFailed { reason }
        };
        let Some(inc) = self.incoming.take() else {
            let why = self
                .ckpt_error
                .take()
                .unwrap_or_else(|| "no checkpoint image arrived (CkptBegin missing)".into());
            return failed(why).await;
        };
        let mut snap = self.fs.snapshot(streams);
        snap.std = self.std;
        let lost = snap.unrestorable();
        if !lost.is_empty() {
            return failed(format!(
                "the job holds files deleted while open, which a restart cannot reopen: {}",
                lost.join(", ")
            ))
            .await;
        }
        let fs_json = match serde_json::to_string(&snap) {
            Ok(j) => j,
            Err(e) => return failed(format!("cannot record the job's files: {e}")).await,
        };
        let (bytes, reason, seq) = (inc.bytes(), inc.reason.clone(), self.next_seq);
        // An increment must follow the job's committed image.
        let last = match s.db(move |q| q.get(job)).await {
            Ok(row) => row.and_then(|r| r.image).map(|i| i.seq),
            Err(e) => return failed(format!("queue error: {}", chain(&e))).await,
        };
        let store = s.images.clone();
        let placed = tokio::task::spawn_blocking(move || {
            let path = inc
                .finish(&store, job, seq)
                .map_err(|e| format!("cannot store the image: {e}"))?;
            let checked = crate::ckpt::read_header(&path)
                .and_then(|h| store.check_parent(job, &h, last).map(|()| h));
            match checked {
                Ok(h) => Ok((path, crate::ckpt::kind_name(&h))),
                Err(why) => {
                    let _ = std::fs::remove_file(&path);
                    Err(why)
                }
            }
        })
        .await;
        let (path, kind) = match placed {
            Ok(Ok(p)) => p,
            Ok(Err(why)) => return failed(why).await,
            Err(e) => return failed(format!("cannot store the image: {e}")).await,
        };
        let img = NewImage {
            seq,
            bytes,
            raw_bytes,
            seconds,
            fs: fs_json,
            reason: reason.clone(),
            kind,
        };
        match s.db(move |q| q.checkpointed(job, &img)).await {
            Ok(true) => {
                self.next_seq += 1;
                s.images.prune(job, seq);
                info!(bytes, raw_bytes, seconds, reason, kind, "checkpointed");
                FromShadow::CkptCommitted { bytes }
            }
            Ok(false) => {
                let _ = std::fs::remove_file(&path);
                FromShadow::CkptFailed {
                    reason: format!("job {job} is no longer running here"),
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                failed(format!("cannot commit the checkpoint: {}", chain(&e))).await
            }
        }
    }

    /// Sends the job's last committed image in `ImageChunk`s, or `NoImage`.
    async fn send_image(&mut self) -> Result<(), String> {
        use tokio::io::AsyncReadExt;
        let job = self.job;
        let row = self
            .s
            .db(move |q| q.get(job))
            .await
            .map_err(|e| chain(&e))?;
        let Some(img) = row.and_then(|r| r.image) else {
            self.wire.send(&FromShadow::NoImage).await;
            return Ok(());
        };
        // The job's files were restored for this image at attach: without
        // it the job cannot start here either way. The session ends; the
        // next attach finds the chain broken and starts the job afresh.
        // The chain goes as one stream, full image first (zstd frames
        // concatenate).
        let images = self.s.images.clone();
        let seqs = tokio::task::spawn_blocking(move || images.chain(job, img.seq))
            .await
            .map_err(|e| e.to_string())??;
        let mut files = Vec::new();
        let mut total = 0u64;
        for seq in seqs {
            let path = self.s.images.image_path(job, seq);
            let f = tokio::fs::File::open(&path)
                .await
                .map_err(|e| format!("cannot open the image {}: {e}", path.display()))?;
            let len = f.metadata().await.map_err(|e| e.to_string())?.len();
            total += len;
            files.push((f, len));
        }
        let progress =
            (self.s.images.transfers).begin(job, proto::job::TransferKind::Restart, Some(total));
        let mut sent = 0u64;
        for (mut f, len) in files {
            let mut done = 0u64;
            while done < len {
                let want = (len - done).min(IMAGE_CHUNK as u64) as usize;
                let mut data = vec![0u8; want];
                f.read_exact(&mut data).await.map_err(|e| e.to_string())?;
                done += want as u64;
                sent += want as u64;
                let last = sent >= total;
                self.wire
                    .send_volatile(&FromShadow::ImageChunk { data, last })
                    .await;
                if let Some(why) = self.wire.broken() {
                    return Err(why.to_string());
                }
                progress.add(want as u64);
            }
        }
        if total == 0 {
            return Err("the job's image is empty".into());
        }
        Ok(())
    }
}

/// Sends the executable in `ExecChunk`s of at most [`EXEC_CHUNK`] bytes.
async fn send_executable(wire: &mut Wire, data: &[u8]) {
    if data.is_empty() {
        let m = FromShadow::ExecChunk {
            data: Vec::new(),
            last: true,
        };
        return wire.send_volatile(&m).await;
    }
    let n = data.len().div_ceil(EXEC_CHUNK);
    for (i, chunk) in data.chunks(EXEC_CHUNK).enumerate() {
        let m = FromShadow::ExecChunk {
            data: chunk.to_vec(),
            last: i + 1 == n,
        };
        wire.send_volatile(&m).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        dir: &std::path::Path,
        input: Option<&str>,
        out: Option<&str>,
        err: Option<&str>,
    ) -> JobSpec {
        JobSpec {
            executable: "prog".into(),
            transfer_executable: true,
            arguments: Vec::new(),
            input: input.map(Into::into),
            output: out.map(Into::into),
            error: err.map(Into::into),
            initialdir: dir.display().to_string(),
            environment: Vec::new(),
            requirements: None,
            rank: None,
            request_cpus: 1,
            request_memory_mb: 1,
            request_disk_mb: 1,
            max_retries: 0,
            attributes: Default::default(),
        }
    }

    #[test]
    fn output_and_error_in_one_file_interleave() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("both"), b"old old old old").unwrap();
        let mut fs = JobFs::new(d.path()).unwrap();
        let [i, o, e] =
            open_std(&mut fs, &spec(d.path(), None, Some("both"), Some("both"))).unwrap();
        assert!(i.is_none());
        fs.write(o.unwrap(), b"out1 ").unwrap();
        fs.write(e.unwrap(), b"err1 ").unwrap();
        fs.write(o.unwrap(), b"out2").unwrap();
        assert_eq!(
            std::fs::read(d.path().join("both")).unwrap(),
            b"out1 err1 out2"
        );
    }

    #[test]
    fn missing_input_or_escaping_output_is_an_error_that_names_it() {
        let d = tempfile::tempdir().unwrap();
        let mut fs = JobFs::new(d.path()).unwrap();
        let e = open_std(&mut fs, &spec(d.path(), Some("nope.txt"), None, None)).unwrap_err();
        assert!(e.contains("input `nope.txt`"), "{e}");
        let e = open_std(&mut fs, &spec(d.path(), None, Some("../out"), None)).unwrap_err();
        assert!(e.contains("output `../out`"), "{e}");
        assert!(!d.path().parent().unwrap().join("out").exists());
        assert!(check_executable(&fs, "prog").unwrap_err().contains("prog"));
        std::fs::write(d.path().join("prog"), b"#!").unwrap();
        assert!(check_executable(&fs, "prog").is_ok());
    }
}
