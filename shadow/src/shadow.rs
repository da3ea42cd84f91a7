//! The shadow server: starters dial it (TLS) and attach to a claimed job.
//!
//! One task per connection. `Attach` is accepted only with the claim the
//! matchmaker gave this schedd for that job, from a peer whose certificate
//! names the attaching host. The shadow then opens the job's standard
//! files, marks the job running and serves the job's calls and writes, in
//! order, through the job's [`JobFs`] until `Exited` (committed, then
//! `Done`). A connection that ends before that puts the job back to idle.

use crate::Schedd;
use crate::cli::chain;
use crate::fs::JobFs;
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
use tracing::{Instrument, debug, info, info_span, warn};

/// Largest `ExecChunk` payload.
pub const EXEC_CHUNK: usize = 1 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiting record lock is tried again.
const LOCK_RETRY: Duration = Duration::from_millis(10);
/// How long an attach may wait for its match to reach this schedd.
const MATCH_WAIT: Duration = Duration::from_secs(5);

type Stream = BufStream<tokio_rustls::server::TlsStream<TcpStream>>;

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
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, s.identity.acceptor().accept(tcp)).await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            warn!("TLS handshake failed; connection closed: {}", chain(&e));
            return;
        }
        Err(_) => {
            warn!("TLS handshake timed out; connection closed");
            return;
        }
    };
    let Some(who) = proto::tls::server_peer(&tls) else {
        warn!("peer certificate names no holder or role; connection closed");
        return;
    };
    if who.role != "ownerd" && who.role != "starter" {
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
    /// `Failed` committed and acknowledged.
    Failed,
    /// The job was removed; the connection is closed on purpose.
    Removed,
    /// The starter went away or broke the protocol.
    Lost(String),
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
    // One shadow per job: a second starter with the same claim is refused
    // before it can touch the job's files. Registered before the commit so
    // that a removal right after it finds this shadow.
    let Some(kill) = s.register_running(job, conn_id) else {
        return refuse(&mut st, format!("job {job} already has a starter attached")).await;
    };
    let spec = row.spec.clone();
    let prepared = JobFs::new(std::path::Path::new(&spec.initialdir))
        .map_err(|e| chain(&e))
        .and_then(|mut fs| open_std(&mut fs, &spec).map(|h| (fs, h)))
        .and_then(|(fs, h)| {
            if spec.transfer_executable {
                check_executable(&fs, &spec.executable)?;
            }
            Ok((fs, h))
        });
    let (fs, [stdin, stdout, stderr]) = match prepared {
        Ok(x) => x,
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
    match s.db(move |q| q.mark_running(job, &c, &h)).await {
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
    info!("executing");
    let attached = Attached {
        job,
        spec: spec.clone(),
        owner: row.owner.clone(),
        stdin,
        stdout,
        stderr,
    };
    let end = match write_frame_async(&mut st, &FromShadow::Attached(attached)).await {
        Ok(()) => session(&s, &mut st, fs, &spec, job, kill).await,
        Err(e) => End::Lost(format!("cannot send Attached: {}", chain(&e))),
    };
    s.unregister_running(job, conn_id);
    match end {
        End::Completed | End::Failed => {}
        End::Removed => info!("job removed; connection to the starter closed"),
        End::Lost(reason) => {
            warn!("starter connection closed before the job exited: {reason}");
            let r = reason.clone();
            match s.db(move |q| q.requeue(job, "evicted", &r)).await {
                Ok(true) => info!("back to idle"),
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

async fn session(
    s: &Schedd,
    st: &mut Stream,
    mut fs: JobFs,
    spec: &JobSpec,
    job: JobId,
    mut kill: tokio::sync::oneshot::Receiver<()>,
) -> End {
    loop {
        let msg = tokio::select! {
            m = read_frame_async::<_, ToShadow>(st, MAX_FRAME) => m,
            _ = &mut kill => return End::Removed,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(ProtoError::Closed) => {
                return End::Lost("the starter closed the connection".into());
            }
            Err(e) => return End::Lost(format!("bad frame: {}", chain(&e))),
        };
        let out = match msg {
            ToShadow::Call { id, op } => {
                let reply = match crate::fs::nonblocking_lock(&op) {
                    // A waiting lock is retried here so that no thread
                    // blocks and a removal still ends the shadow.
                    Some(try_op) => loop {
                        match fs.call(try_op.clone()) {
                            FileReply::Err(e) if e == libc::EAGAIN || e == libc::EACCES => {
                                tokio::select! {
                                    _ = tokio::time::sleep(LOCK_RETRY) => {}
                                    _ = &mut kill => return End::Removed,
                                }
                            }
                            r => break r,
                        }
                    },
                    None => fs.call(op),
                };
                Some(FromShadow::Reply { id, reply })
            }
            ToShadow::Write { h, data } => match fs.write(h, &data) {
                Ok(_) => None,
                Err(errno) => {
                    debug!(handle = h.0, errno, "stream write failed");
                    Some(FromShadow::WriteFailed { h, errno })
                }
            },
            ToShadow::FetchExecutable => match fs.executable(&spec.executable) {
                Ok(data) => {
                    if let Err(e) = send_executable(st, &data).await {
                        return End::Lost(format!("sending the executable: {}", chain(&e)));
                    }
                    None
                }
                Err(e) => {
                    let reason = format!(
                        "cannot read executable `{}`: {}",
                        spec.executable,
                        std::io::Error::from_raw_os_error(e)
                    );
                    let _ = write_frame_async(
                        st,
                        &FromShadow::Refused {
                            reason: reason.clone(),
                        },
                    )
                    .await;
                    let r = reason.clone();
                    if let Err(e) = s.db(move |q| q.failed(job, &r)).await {
                        warn!("cannot record the failure: {}", chain(&e));
                    }
                    warn!("{reason}");
                    return End::Failed;
                }
            },
            ToShadow::Started { pid } => {
                debug!(pid, "job process started");
                None
            }
            ToShadow::Exited { status, mut usage } => {
                usage.bytes_read = fs.bytes_read();
                usage.bytes_written = fs.bytes_written();
                match s.db(move |q| q.complete(job, status, &usage)).await {
                    Ok(_) => {
                        info!(
                            ?status,
                            wall = usage.wall_secs,
                            read = usage.bytes_read,
                            written = usage.bytes_written,
                            "completed"
                        );
                        let _ = write_frame_async(st, &FromShadow::Done).await;
                        return End::Completed;
                    }
                    // Not acknowledged: the starter keeps the result and the job is retried.
                    Err(e) => return End::Lost(format!("cannot commit the exit: {}", chain(&e))),
                }
            }
            ToShadow::Failed { reason } => {
                let r = reason.clone();
                match s.db(move |q| q.failed(job, &r)).await {
                    Ok(state) => {
                        warn!(?state, "the starter could not run the job: {reason}");
                        let _ = write_frame_async(st, &FromShadow::Done).await;
                        return End::Failed;
                    }
                    Err(e) => {
                        return End::Lost(format!("cannot commit the failure: {}", chain(&e)));
                    }
                }
            }
            ToShadow::Attach { .. } => {
                return End::Lost("a second Attach on one connection".into());
            }
            ToShadow::Suspended => {
                info!("suspended on the execute host");
                None
            }
            ToShadow::Continued => {
                info!("unsuspended on the execute host");
                None
            }
            ToShadow::Vacated {
                reason,
                checkpointed,
            } => {
                let event = if checkpointed { "vacated" } else { "evicted" };
                let r = reason.clone();
                match s.db(move |q| q.requeue(job, event, &r)).await {
                    Ok(_) => {
                        info!(checkpointed, "{event}: {reason}");
                        let _ = write_frame_async(st, &FromShadow::Done).await;
                        return End::Failed;
                    }
                    Err(e) => return End::Lost(format!("cannot commit the vacate: {}", chain(&e))),
                }
            }
            ToShadow::CkptBegin { .. }
            | ToShadow::CkptChunk { .. }
            | ToShadow::CkptAbort { .. } => None,
            ToShadow::CkptEnd { .. } => Some(FromShadow::CkptFailed {
                reason: "this schedd keeps no checkpoint images".into(),
            }),
            ToShadow::FetchImage => Some(FromShadow::NoImage),
        };
        if let Some(m) = out
            && let Err(e) = write_frame_async(st, &m).await
        {
            return End::Lost(format!("cannot reply: {}", chain(&e)));
        }
    }
}

async fn send_executable(st: &mut Stream, data: &[u8]) -> Result<(), ProtoError> {
    if data.is_empty() {
        return write_frame_async(
            st,
            &FromShadow::ExecChunk {
                data: Vec::new(),
                last: true,
            },
        )
        .await;
    }
    let n = data.len().div_ceil(EXEC_CHUNK);
    for (i, chunk) in data.chunks(EXEC_CHUNK).enumerate() {
        let m = FromShadow::ExecChunk {
            data: chunk.to_vec(),
            last: i + 1 == n,
        };
        write_frame_async(st, &m).await?;
    }
    Ok(())
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
