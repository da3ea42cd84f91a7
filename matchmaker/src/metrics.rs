//! The matchmaker's Prometheus metrics, served as `/metrics` on its TLS port
//! to HTTPS clients (see [`crate::web`]).
//!
//! Machines by state and jobs by state (the sum of the schedds' queue
//! reports) are read from the pool state at each scrape; cycles, matches,
//! messages, refused connections and the pool's checkpoints (from the job
//! events the schedds report) are counted as they happen.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::OnceLock;
use std::time::Duration;

/// Every metric of the matchmaker.
pub struct Metrics {
    registry: Registry,
    pub(crate) machines: IntGaugeVec,
    pub(crate) jobs: IntGaugeVec,
    pub(crate) cycle_seconds: Histogram,
    pub(crate) matches: IntCounter,
    calls: IntCounterVec,
    call_seconds: HistogramVec,
    pub(crate) checkpoints: IntCounter,
    pub(crate) ckpt_bytes: IntCounter,
    pub(crate) ckpt_seconds: Histogram,
    pub(crate) events: IntCounterVec,
    /// Registered now; no lease expires yet (leases are not implemented).
    pub lease_expiries: IntCounter,
    rejected: IntCounterVec,
}

/// Machine states a pool shows; each is exported, 0 when no machine is in it.
pub(crate) const MACHINE_STATES: &[&str] =
    &["Owner", "Unclaimed", "Matched", "Claimed", "Preempting"];
/// Job states a queue shows.
pub(crate) const JOB_STATES: &[&str] = &["idle", "running", "held", "completed", "removed"];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let machines = IntGaugeVec::new(
        Opts::new("roost_machines", "Machines in the pool by state"),
        &["state"],
    )?;
    let jobs = IntGaugeVec::new(
        Opts::new(
            "roost_jobs",
            "Jobs in the schedds' queues by state (unfinished ones, and those finished in the last hour)",
        ),
        &["state"],
    )?;
    let cycle_seconds = Histogram::with_opts(
        HistogramOpts::new(
            "roost_negotiation_cycle_seconds",
            "Time one negotiation cycle takes",
        )
        .buckets(vec![
            1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
        ]),
    )?;
    let matches = IntCounter::new("roost_matches_total", "Claims handed out")?;
    let calls = IntCounterVec::new(
        Opts::new(
            "roost_remote_calls_total",
            "Messages from ownerds, schedds and users, by kind",
        ),
        &["call"],
    )?;
    let call_seconds = HistogramVec::new(
        HistogramOpts::new(
            "roost_remote_call_seconds",
            "Time the matchmaker spends handling one message",
        )
        .buckets(vec![1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0]),
        &["call"],
    )?;
    let checkpoints = IntCounter::new(
        "roost_checkpoints_total",
        "Checkpoints committed in the pool (from the schedds' job events)",
    )?;
    let ckpt_bytes = IntCounter::new(
        "roost_checkpoint_bytes_total",
        "Bytes of checkpoint images committed in the pool",
    )?;
    let ckpt_seconds = Histogram::with_opts(
        HistogramOpts::new(
            "roost_checkpoint_seconds",
            "Time from a checkpoint's start to its commit",
        )
        .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
    )?;
    let events = IntCounterVec::new(
        Opts::new(
            "roost_job_events_total",
            "Job events the schedds reported, by event",
        ),
        &["event"],
    )?;
    let lease_expiries = IntCounter::new(
        "roost_lease_expiries_total",
        "Job leases that expired (a starter lost for longer than its lease)",
    )?;
    let rejected = IntCounterVec::new(
        Opts::new(
            "roost_rejected_connections_total",
            "Connections refused (TLS handshake, certificate, refused message, HTTP request), by reason",
        ),
        &["reason"],
    )?;
    for c in [
        Box::new(machines.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(jobs.clone()),
        Box::new(cycle_seconds.clone()),
        Box::new(matches.clone()),
        Box::new(calls.clone()),
        Box::new(call_seconds.clone()),
        Box::new(checkpoints.clone()),
        Box::new(ckpt_bytes.clone()),
        Box::new(ckpt_seconds.clone()),
        Box::new(events.clone()),
        Box::new(lease_expiries.clone()),
        Box::new(rejected.clone()),
    ] {
        registry.register(c)?;
    }
    for r in [
        "tls",
        "certificate",
        "refused",
        "unauthorized",
        "bad request",
    ] {
        rejected.with_label_values(&[r]);
    }
    Ok(Metrics {
        registry,
        machines,
        jobs,
        cycle_seconds,
        matches,
        calls,
        call_seconds,
        checkpoints,
        ckpt_bytes,
        ckpt_seconds,
        events,
        lease_expiries,
        rejected,
    })
}

/// The matchmaker's metrics (one set per process).
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| build().expect("the metric definitions are valid"))
}

/// One message of kind `call` handled in `took`.
pub(crate) fn call(call: &str, took: Duration) {
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

/// Counts one job event a schedd reported.
pub(crate) fn job_event(ev: &serde_json::Value) {
    let m = get();
    let name = ev["event"].as_str().unwrap_or("unknown");
    m.events.with_label_values(&[name]).inc();
    if name == "checkpointed" {
        m.checkpoints.inc();
        if let Some(b) = ev["bytes"].as_u64() {
            m.ckpt_bytes.inc_by(b);
        }
        if let Some(s) = ev["seconds"].as_f64() {
            m.ckpt_seconds.observe(s);
        }
    }
}

/// The metrics in the Prometheus text format, with machines and jobs by
/// state as counted now.
pub(crate) fn render(machines: &[(String, i64)], jobs: &[(String, i64)]) -> String {
    let m = get();
    let set = |g: &IntGaugeVec, known: &[&str], now: &[(String, i64)]| {
        g.reset();
        for s in known {
            g.with_label_values(&[s]).set(0);
        }
        for (s, n) in now {
            g.with_label_values(&[s]).set(*n);
        }
    };
    set(&m.machines, MACHINE_STATES, machines);
    set(&m.jobs, JOB_STATES, jobs);
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::warn!("metrics: cannot encode: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}
