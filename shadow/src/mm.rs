//! The matchmaker client: one TLS connection, re-dialled with backoff.
//!
//! The schedd sends its unclaimed idle jobs (`ToMatchmaker::Jobs`) whenever
//! the queue changes and every few seconds, and `Release`s for claims it
//! ends. For the pool page it also sends its queue and new job events
//! (`ToMatchmaker::Queue`) each second when they changed. A `Matches` reply records each claim on its job; the job stays idle
//! until a starter attaches with it. A claim no starter used within
//! the claim timeout ([`crate::Config::claim_timeout`]) is dropped and the
//! job matched again.

use crate::Schedd;
use crate::cli::chain;
use crate::queue::{JobRow, now};
use proto::frame::{MAX_FRAME, read_frame_async, write_frame_async};
use proto::pool::{Ad, AdValue, FromMatchmaker, JobAd, QueueJob, QueueReport, ToMatchmaker};
use proto::{ClaimId, ProtoError};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

/// How often the idle job list is re-sent without a change.
pub const RESEND: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The job's ad for the matchmaker.
pub fn job_ad(r: &JobRow) -> JobAd {
    let s = &r.spec;
    let mut a = Ad::new();
    a.insert("ClusterId".into(), AdValue::Int(r.id.cluster as i64));
    a.insert("ProcId".into(), AdValue::Int(i64::from(r.id.proc)));
    a.insert("Owner".into(), AdValue::Str(r.owner.clone()));
    a.insert("Cmd".into(), AdValue::Str(s.executable.clone()));
    a.insert("Iwd".into(), AdValue::Str(s.initialdir.clone()));
    a.insert(
        "RequestCpus".into(),
        AdValue::Int(i64::from(s.request_cpus)),
    );
    a.insert(
        "RequestMemory".into(),
        AdValue::Int(s.request_memory_mb as i64),
    );
    a.insert("RequestDisk".into(), AdValue::Int(s.request_disk_mb as i64));
    a.insert("QDate".into(), AdValue::Int(r.submitted));
    a.insert("JobRuns".into(), AdValue::Int(i64::from(r.runs)));
    if let Some(req) = &s.requirements {
        a.insert("Requirements".into(), AdValue::Expr(req.clone()));
    }
    if let Some(rank) = &s.rank {
        a.insert("Rank".into(), AdValue::Expr(rank.clone()));
    }
    for (k, v) in &s.attributes {
        a.insert(k.clone(), AdValue::Expr(v.clone()));
    }
    JobAd {
        job: r.id,
        owner: r.owner.clone(),
        attrs: a,
    }
}

/// Keeps a connection to the matchmaker until the task is aborted.
pub async fn run(
    s: Arc<Schedd>,
    addr: String,
    mm_name: String,
    advertise: String,
    mut releases: mpsc::UnboundedReceiver<ClaimId>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let span = info_span!("matchmaker", addr = %addr);
        match connect(&s, &addr, &mm_name).instrument(span.clone()).await {
            Ok(stream) => {
                info!(parent: &span, "connected to the matchmaker");
                backoff = Duration::from_millis(250);
                let why = session(&s, stream, &advertise, &mut releases)
                    .instrument(span.clone())
                    .await;
                warn!(parent: &span, "matchmaker connection ended: {why}");
            }
            Err(e) => {
                warn!(parent: &span, "cannot reach the matchmaker: {e}; retrying in {backoff:?}")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(s: &Schedd, addr: &str, mm_name: &str) -> Result<Tls, String> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).ok();
    let name = proto::tls::server_name(mm_name).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        s.identity.connector().connect(name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|e| format!("TLS handshake: {}", chain(&e)))?;
    match proto::tls::client_peer(&tls) {
        Some(p) if p.role == "matchmaker" => Ok(tls),
        Some(p) => Err(format!(
            "peer `{}` has role `{}`, not matchmaker",
            p.name, p.role
        )),
        None => Err("peer certificate names no holder or role".into()),
    }
}

async fn send_jobs<W: AsyncWrite + Unpin>(
    s: &Schedd,
    w: &mut W,
    advertise: &str,
) -> Result<(), String> {
    let rows = s.db(|q| q.unclaimed_idle()).await.map_err(|e| chain(&e))?;
    let jobs: Vec<JobAd> = rows.iter().map(job_ad).collect();
    debug!(idle = jobs.len(), "sending idle jobs");
    let msg = ToMatchmaker::Jobs {
        schedd: s.name.clone(),
        addr: advertise.to_string(),
        jobs,
    };
    write_frame_async(w, &msg).await.map_err(|e| chain(&e))
}

/// How often the queue report for the pool page is refreshed (sent only
/// when it changed).
pub const QUEUE_REPORT: Duration = Duration::from_secs(1);
/// The pool page's window: jobs finished and events older than this are
/// not reported (events of unfinished jobs always are).
const PAGE_WINDOW: i64 = 3600;

/// Sends the queue and the job events after `cursor` for the pool page,
/// unless nothing changed since `last`.
async fn send_queue<W: AsyncWrite + Unpin>(
    s: &Schedd,
    w: &mut W,
    advertise: &str,
    cursor: &mut i64,
    last: &mut Option<Vec<QueueJob>>,
) -> Result<(), String> {
    let since = now() - PAGE_WINDOW;
    let rows = s
        .db(move |q| q.page_jobs(since))
        .await
        .map_err(|e| chain(&e))?;
    let jobs: Vec<QueueJob> = rows
        .into_iter()
        .map(|j| QueueJob {
            id: j.id,
            owner: j.owner,
            state: j.state.as_str().to_string(),
            executable: j.executable,
            host: j.host,
            runs: j.runs,
            checkpoints: j.checkpoints,
        })
        .collect();
    let after = *cursor;
    let (events, newest) = s
        .db(move |q| {
            let newest = q.last_event_seq()?;
            Ok((q.events_after(after, Some(since), 5000)?, newest))
        })
        .await
        .map_err(|e| chain(&e))?;
    // Past every record looked at, so old history is scanned once.
    *cursor = match events.last() {
        Some((seq, _)) if events.len() == 5000 => *seq,
        _ => newest.max(after),
    };
    if events.is_empty() && last.as_ref() == Some(&jobs) {
        return Ok(());
    }
    *last = Some(jobs.clone());
    let msg = ToMatchmaker::Queue(QueueReport {
        schedd: s.name.clone(),
        jobs,
        events,
        metrics: crate::metrics::web_enabled().then(|| advertise.to_string()),
    });
    write_frame_async(w, &msg).await.map_err(|e| chain(&e))
}

async fn session(
    s: &Arc<Schedd>,
    stream: Tls,
    advertise: &str,
    releases: &mut mpsc::UnboundedReceiver<ClaimId>,
) -> String {
    let (mut rd, mut wr): (_, WriteHalf<Tls>) = tokio::io::split(stream);
    // Frames are read by their own task: a partly read frame is never lost
    // to a `select!`.
    let (in_tx, mut incoming) = mpsc::channel::<Result<FromMatchmaker, ProtoError>>(16);
    let reader = tokio::spawn(async move {
        loop {
            let r = read_frame_async(&mut rd, MAX_FRAME).await;
            let end = r.is_err();
            if in_tx.send(r).await.is_err() || end {
                return;
            }
        }
    });
    let mut tick = tokio::time::interval(RESEND);
    let mut page_tick = tokio::time::interval(QUEUE_REPORT);
    // Each connection starts the pool page's events afresh.
    let (mut cursor, mut last) = (0i64, None);
    let why = loop {
        tokio::select! {
            _ = page_tick.tick() => {
                if let Err(e) = send_queue(s, &mut wr, advertise, &mut cursor, &mut last).await { break e; }
            }
            _ = tick.tick() => {
                if let Err(e) = send_jobs(s, &mut wr, advertise).await { break e; }
            }
            _ = s.changed.notified() => {
                if let Err(e) = send_jobs(s, &mut wr, advertise).await { break e; }
            }
            Some(claim) = releases.recv() => {
                debug!(claim = %claim, "releasing a claim");
                if let Err(e) = write_frame_async(&mut wr, &ToMatchmaker::Release { claim }).await {
                    break chain(&e);
                }
            }
            msg = incoming.recv() => match msg {
                Some(Ok(m)) => handle(s, m).await,
                Some(Err(e)) => break chain(&e),
                None => break "reader ended".into(),
            },
        }
    };
    reader.abort();
    why
}

async fn handle(s: &Arc<Schedd>, m: FromMatchmaker) {
    match m {
        FromMatchmaker::Matches(ms) => {
            // The matched jobs leave the idle list: say so promptly.
            s.changed.notify_one();
            for m in ms {
                let (job, claim, machine) = (m.job, m.claim.clone(), m.machine.clone());
                let r = s.db(move |q| q.set_claim(job, &claim, &machine)).await;
                let _g = info_span!("job", job = %m.job).entered();
                match r {
                    Ok(true) => info!(machine = %m.machine, "matched"),
                    Ok(false) => {
                        info!(machine = %m.machine, "match for a job that is no longer idle or is claimed; released");
                        s.release(m.claim);
                    }
                    Err(e) => {
                        warn!("cannot record the match: {}", chain(&e));
                        s.release(m.claim);
                    }
                }
            }
        }
        FromMatchmaker::Release { claim } => {
            let c = claim.clone();
            match s.db(move |q| q.drop_claim_any(&c)).await {
                Ok(Some(job)) => {
                    info!(job = %job, "the matchmaker withdrew the claim; the job will be matched again");
                    s.changed.notify_one();
                }
                Ok(None) => debug!(claim = %claim, "release of a claim no idle job holds"),
                Err(e) => warn!("cannot drop a claim: {}", chain(&e)),
            }
        }
        FromMatchmaker::Error { message } => warn!("matchmaker says: {message}"),
        FromMatchmaker::Ack => {}
        other => debug!(?other, "unexpected message from the matchmaker; ignored"),
    }
}

/// Drops claims no starter used in time; their jobs are matched again.
pub async fn expire_claims(s: Arc<Schedd>) {
    let every = (s.claim_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    // Claim times are whole seconds: round the timeout up.
    let secs = s.claim_timeout.as_secs_f64().ceil() as i64;
    loop {
        tick.tick().await;
        let before = now() - secs;
        let stale = match s.db(move |q| q.stale_claims(before)).await {
            Ok(v) => v,
            Err(e) => {
                warn!("cannot look for stale claims: {}", chain(&e));
                continue;
            }
        };
        let mut dropped = false;
        for (job, claim) in stale {
            let c = claim.clone();
            if let Ok(true) = s.db(move |q| q.drop_claim(job, &c)).await {
                info!(job = %job, "no starter came for the claim in time; matching again");
                s.release(claim);
                dropped = true;
            }
        }
        if dropped {
            s.changed.notify_one();
        }
    }
}
