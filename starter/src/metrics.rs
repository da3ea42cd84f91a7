//! The ownerd's Prometheus metrics, served as `/metrics` over HTTPS on
//! `--metrics-listen` (the ownerd has no other port), and advertised in
//! the machine's ad as `MetricsAddr` so the pool page and `roost pool urls`
//! can list it.
//!
//! Everything is read off the machine ads the ownerd sends ([`observe`]):
//! the machine's state and activity now, and the claims, suspensions and
//! vacates seen as the ads change.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use proto::pool::{AdValue, MachineAd};
use std::sync::{Mutex, OnceLock};

/// The ad attribute that carries this daemon's `/metrics` address.
pub const ATTR_METRICS: &str = "MetricsAddr";

/// Every metric of the ownerd.
pub struct Metrics {
    registry: Registry,
    machines: IntGaugeVec,
    jobs_started: IntCounter,
    transitions: IntCounterVec,
    /// Starters that gave their job up when its lease ran out.
    pub lease_expiries: IntCounter,
    rejected: IntCounterVec,
    /// The last ad's (state, activity, job).
    last: Mutex<(String, String, Option<String>)>,
    addr: OnceLock<String>,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let machines = IntGaugeVec::new(
        Opts::new(
            "roost_machines",
            "This machine by state and activity (1 for the current pair)",
        ),
        &["state", "activity"],
    )?;
    let jobs_started = IntCounter::new(
        "roost_jobs_started_total",
        "Jobs this machine started running (claims taken)",
    )?;
    let transitions = IntCounterVec::new(
        Opts::new(
            "roost_activity_changes_total",
            "Times this machine entered an activity (Busy, Suspended, Vacating, Killing, Idle)",
        ),
        &["activity"],
    )?;
    let lease_expiries = IntCounter::new(
        "roost_lease_expiries_total",
        "Job leases that expired (a schedd lost for longer than its lease)",
    )?;
    let rejected = IntCounterVec::new(
        Opts::new(
            "roost_rejected_connections_total",
            "Connections to /metrics refused, by reason",
        ),
        &["reason"],
    )?;
    registry.register(Box::new(machines.clone()))?;
    registry.register(Box::new(jobs_started.clone()))?;
    registry.register(Box::new(transitions.clone()))?;
    registry.register(Box::new(lease_expiries.clone()))?;
    registry.register(Box::new(rejected.clone()))?;
    for r in ["tls", "unauthorized", "bad request"] {
        rejected.with_label_values(&[r]);
    }
    for a in ["Busy", "Suspended", "Vacating", "Killing"] {
        transitions.with_label_values(&[a]);
    }
    Ok(Metrics {
        registry,
        machines,
        jobs_started,
        transitions,
        lease_expiries,
        rejected,
        last: Mutex::new((String::new(), String::new(), None)),
        addr: OnceLock::new(),
    })
}

/// The ownerd's metrics (one set per process).
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| build().expect("the metric definitions are valid"))
}

/// Records where `/metrics` is served; from now on every ad says so.
pub fn set_addr(addr: String) {
    let _ = get().addr.set(addr);
}

/// Updates the metrics from an ad about to be sent, and adds
/// [`ATTR_METRICS`] to it when `/metrics` is served.
pub fn observe(ad: &mut MachineAd) {
    let m = get();
    let job = match ad.attrs.get(crate::ownerd::ATTR_JOB_ID) {
        Some(AdValue::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let mut last = m.last.lock().unwrap_or_else(|e| e.into_inner());
    if last.0 != ad.state || last.1 != ad.activity {
        m.machines.reset();
        m.machines
            .with_label_values(&[&ad.state, &ad.activity])
            .set(1);
        if last.1 != ad.activity {
            m.transitions.with_label_values(&[&ad.activity]).inc();
        }
    }
    if job.is_some() && job != last.2 {
        m.jobs_started.inc();
    }
    *last = (ad.state.clone(), ad.activity.clone(), job);
    if let Some(a) = m.addr.get() {
        ad.attrs
            .insert(ATTR_METRICS.into(), AdValue::Str(a.clone()));
    }
}

/// One connection refused, for `reason`.
pub fn rejected(reason: &str) {
    get().rejected.with_label_values(&[reason]).inc();
}

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&get().registry.gather(), &mut out) {
        tracing::warn!("metrics: cannot encode: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}
