//! The schedd's Prometheus metrics, served as `/metrics` on its shadow
//! port to HTTPS clients (see [`proto::web`]).
//!
//! Remote calls and refused connections are counted where they happen.
//! Jobs by state are read from the queue at each scrape; checkpoints and
//! job events are counted from the queue's event log, which every state
//! change is committed to (so the counters cover the queue's history, and
//! a restarted schedd starts from the same totals).

use crate::Schedd;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use proto::web::{Admission, Web};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tracing::{debug, warn};

/// Every metric of the schedd.
pub struct Metrics {
    registry: Registry,
    jobs: IntGaugeVec,
    calls: IntCounterVec,
    call_seconds: HistogramVec,
    checkpoints: IntCounter,
    ckpt_bytes: IntCounter,
    ckpt_seconds: Histogram,
    events: IntCounterVec,
    /// Registered now; no lease expires yet (leases are not implemented).
    pub lease_expiries: IntCounter,
    rejected: IntCounterVec,
    /// The last event-log record counted.
    cursor: Mutex<i64>,
}

const JOB_STATES: &[&str] = &["idle", "running", "held", "completed", "removed"];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let jobs = IntGaugeVec::new(
        Opts::new("roost_jobs", "Jobs in this schedd's queue by state"),
        &["state"],
    )?;
    let calls = IntCounterVec::new(
        Opts::new(
            "roost_remote_calls_total",
            "Remote system calls served to running jobs, by call",
        ),
        &["call"],
    )?;
    let call_seconds = HistogramVec::new(
        HistogramOpts::new(
            "roost_remote_call_seconds",
            "Time the shadow spends serving one remote call",
        )
        .buckets(vec![
            1e-6, 5e-6, 2e-5, 1e-4, 5e-4, 2e-3, 1e-2, 5e-2, 0.25, 1.0,
        ]),
        &["call"],
    )?;
    let checkpoints = IntCounter::new("roost_checkpoints_total", "Checkpoints committed")?;
    let ckpt_bytes = IntCounter::new(
        "roost_checkpoint_bytes_total",
        "Bytes of checkpoint images committed (compressed, as stored)",
    )?;
    let ckpt_seconds = Histogram::with_opts(
        HistogramOpts::new(
            "roost_checkpoint_seconds",
            "Time from a checkpoint's start to its commit",
        )
        .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
    )?;
    let events = IntCounterVec::new(
        Opts::new("roost_job_events_total", "Job event-log records, by event"),
        &["event"],
    )?;
    let lease_expiries = IntCounter::new(
        "roost_lease_expiries_total",
        "Job leases that expired (a starter lost for longer than its lease)",
    )?;
    let rejected = IntCounterVec::new(
        Opts::new(
            "roost_rejected_connections_total",
            "Connections refused (TLS handshake, certificate, role, request), by reason",
        ),
        &["reason"],
    )?;
    registry.register(Box::new(jobs.clone()))?;
    registry.register(Box::new(calls.clone()))?;
    registry.register(Box::new(call_seconds.clone()))?;
    registry.register(Box::new(checkpoints.clone()))?;
    registry.register(Box::new(ckpt_bytes.clone()))?;
    registry.register(Box::new(ckpt_seconds.clone()))?;
    registry.register(Box::new(events.clone()))?;
    registry.register(Box::new(lease_expiries.clone()))?;
    registry.register(Box::new(rejected.clone()))?;
    for s in JOB_STATES {
        jobs.with_label_values(&[s]).set(0);
    }
    for r in ["tls", "certificate", "role", "unauthorized", "bad request"] {
        rejected.with_label_values(&[r]);
    }
    Ok(Metrics {
        registry,
        jobs,
        calls,
        call_seconds,
        checkpoints,
        ckpt_bytes,
        ckpt_seconds,
        events,
        lease_expiries,
        rejected,
        cursor: Mutex::new(0),
    })
}

/// The schedd's metrics (one set per process).
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| build().expect("the metric definitions are valid"))
}

static WEB: OnceLock<Web> = OnceLock::new();

/// Serves HTTPS (`/metrics`) on the shadow port with `web`'s
/// configuration from now on.
pub fn enable_web(web: Web) {
    let _ = WEB.set(web);
}

/// The HTTPS configuration, once [`enable_web`] was called.
pub(crate) fn web_config() -> Option<&'static std::sync::Arc<rustls::ServerConfig>> {
    WEB.get().map(|w| &w.config)
}

pub(crate) fn web_enabled() -> bool {
    WEB.get().is_some()
}

/// One remote call served in `took`.
pub(crate) fn remote_call(call: &str, took: Duration) {
    let m = get();
    m.calls.with_label_values(&[call]).inc();
    m.call_seconds
        .with_label_values(&[call])
        .observe(took.as_secs_f64());
}

/// One connection refused, for `reason`.
pub(crate) fn rejected(reason: &str) {
    get().rejected.with_label_values(&[reason]).inc();
}

/// Brings the queue-derived metrics up to date.
async fn refresh(s: &Schedd) {
    let m = get();
    match s.db(|q| q.state_counts()).await {
        Ok(counts) => {
            for st in JOB_STATES {
                let n = counts.iter().find(|(k, _)| k == st).map_or(0, |(_, n)| *n);
                m.jobs.with_label_values(&[st]).set(n);
            }
        }
        Err(e) => warn!("metrics: cannot count jobs: {e}"),
    }
    loop {
        let after = *m.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let batch = match s.db(move |q| q.events_after(after, None, 2000)).await {
            Ok(b) => b,
            Err(e) => {
                warn!("metrics: cannot read the event log: {e}");
                return;
            }
        };
        let mut cur = m.cursor.lock().unwrap_or_else(|e| e.into_inner());
        if *cur != after {
            // Another scrape counted these meanwhile.
            continue;
        }
        for (seq, line) in &batch {
            *cur = *seq;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let ev = v["event"].as_str().unwrap_or("unknown");
            m.events.with_label_values(&[ev]).inc();
            if ev == "checkpointed" {
                m.checkpoints.inc();
                if let Some(b) = v["bytes"].as_u64() {
                    m.ckpt_bytes.inc_by(b);
                }
                if let Some(secs) = v["seconds"].as_f64() {
                    m.ckpt_seconds.observe(secs);
                }
            }
        }
        if batch.len() < 2000 {
            return;
        }
    }
}

/// The metrics in the Prometheus text format.
pub async fn render(s: &Schedd) -> String {
    refresh(s).await;
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&get().registry.gather(), &mut out) {
        warn!("metrics: cannot encode: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Answers one HTTPS connection on the shadow port.
pub(crate) async fn serve_http(
    s: &Schedd,
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) {
    let token = WEB.get().and_then(|w| w.token.clone());
    let t = Duration::from_secs(10);
    let r = match tokio::time::timeout(t, proto::web::admit(&mut tls, token.as_deref())).await {
        Ok(r) => r,
        Err(_) => {
            rejected("bad request");
            return;
        }
    };
    let r = match r {
        Ok(Admission::Serve(req, _)) if req.path == "/metrics" => {
            let body = render(s).await;
            proto::web::respond(
                &mut tls,
                200,
                proto::web::METRICS_CONTENT_TYPE,
                &[],
                body.as_bytes(),
            )
            .await
        }
        Ok(Admission::Serve(..)) => {
            proto::web::respond(
                &mut tls,
                404,
                "text/plain; charset=utf-8",
                &[],
                b"the schedd serves /metrics here; the pool page is on the matchmaker\n",
            )
            .await
        }
        Ok(Admission::Answered) => Ok(()),
        Ok(Admission::Refused) => {
            rejected("unauthorized");
            Ok(())
        }
        Err(e) => {
            rejected("bad request");
            debug!("HTTP request refused: {e}");
            Ok(())
        }
    };
    if let Err(e) = r {
        debug!("HTTP response not sent: {e}");
    }
}

/// A remote call's name, as its metrics label.
pub(crate) fn op_name(op: &proto::fileop::FileOp) -> &'static str {
    use proto::fileop::FileOp as F;
    match op {
        F::Open { .. } => "open",
        F::Close { .. } => "close",
        F::Read { .. } => "read",
        F::Pread { .. } => "pread",
        F::Write { .. } => "write",
        F::Pwrite { .. } => "pwrite",
        F::Lseek { .. } => "lseek",
        F::Fstat { .. } => "fstat",
        F::Stat { .. } => "stat",
        F::Access { .. } => "access",
        F::Unlink { .. } => "unlink",
        F::Rename { .. } => "rename",
        F::Mkdir { .. } => "mkdir",
        F::Getdents { .. } => "getdents",
        F::Chdir { .. } => "chdir",
        F::Getcwd => "getcwd",
        F::Ftruncate { .. } => "ftruncate",
        F::Truncate { .. } => "truncate",
        F::Fsync { .. } => "fsync",
        F::Lock { .. } => "lock",
        F::Readlink { .. } => "readlink",
        F::Chmod { .. } => "chmod",
        F::Utimens { .. } => "utimens",
        F::Symlink { .. } => "symlink",
        F::Link { .. } => "link",
        F::Barrier => "barrier",
        F::Net(_) => "net",
    }
}
