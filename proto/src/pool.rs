//! ownerd / schedd ⇄ matchmaker (TLS; both dial the matchmaker).
//!
//! An ownerd keeps one connection open and sends its machine ad on every
//! change and periodically; the matchmaker pushes `Claim`s down it. A schedd
//! sends its idle jobs' ads and receives `Matches`.

use crate::ids::{ClaimId, HostName, JobId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A literal attribute value in an ad.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdValue {
    Int(i64),
    Real(f64),
    Str(String),
    Bool(bool),
    /// An expression kept as text (e.g. a `Requirements` clause).
    Expr(String),
}

/// An ad: attribute name → value. Names compare case-insensitively in the
/// expression language; on the wire they are kept as written.
pub type Ad = BTreeMap<String, AdValue>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineAd {
    pub name: HostName,
    /// `Owner`, `Unclaimed`, `Matched`, `Claimed`, `Preempting`.
    pub state: String,
    /// `Idle`, `Busy`, `Suspended`, `Vacating`, `Killing`.
    pub activity: String,
    pub attrs: Ad,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobAd {
    pub job: JobId,
    pub owner: String,
    pub attrs: Ad,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToMatchmaker {
    /// From an ownerd.
    Machine(MachineAd),
    /// From a schedd: its idle jobs; `addr` is where starters reach its shadows.
    Jobs {
        schedd: HostName,
        addr: String,
        jobs: Vec<JobAd>,
    },
    /// From a schedd: the claim ended (job done, removed or starter failed).
    Release { claim: ClaimId },
    /// `roost status`.
    Status,
    /// `roost why`: explain why this job does not match.
    Why { job: JobAd },
    /// From a schedd: its queue and the job events since its last report,
    /// for the pool page (sent on change and every few seconds).
    Queue(QueueReport),
}

/// A schedd's queue as the pool page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueReport {
    pub schedd: HostName,
    /// Every job not completed or removed, and those that finished in the
    /// last hour.
    pub jobs: Vec<QueueJob>,
    /// Event-log records (`seq`, JSON line) newer than the last report on
    /// this connection; on a new connection, the last hour's and those of
    /// unfinished jobs.
    pub events: Vec<(i64, String)>,
    /// Where the schedd serves `/metrics` (`IP:PORT`, HTTPS).
    pub metrics: Option<String>,
}

/// One job of a [`QueueReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueJob {
    pub id: JobId,
    pub owner: String,
    /// `idle`, `running`, `completed`, `removed`, `held`.
    pub state: String,
    pub executable: String,
    pub host: Option<HostName>,
    pub runs: u32,
    pub checkpoints: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromMatchmaker {
    /// To a schedd: these jobs were matched; a starter will attach with the claim.
    Matches(Vec<Match>),
    /// To an ownerd: run this job for this schedd.
    Claim {
        claim: ClaimId,
        job: JobId,
        schedd: HostName,
        addr: String,
    },
    /// To an ownerd: the claim ended on the schedd's side.
    Release {
        claim: ClaimId,
    },
    Machines(Vec<MachineAd>),
    /// To an ownerd: leave this claim (preempted by a better match); the
    /// ownerd vacates it as its policy says.
    Vacate {
        claim: ClaimId,
        reason: String,
    },
    Why(WhyReport),
    Ack,
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match {
    pub job: JobId,
    pub machine: HostName,
    pub claim: ClaimId,
}

/// Why a job does (not) match, clause by clause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhyReport {
    pub job: JobId,
    /// Machines the matchmaker knows.
    pub machines: u32,
    /// Each top-level `&&` clause of the job's requirements, with the number
    /// of machines it rejects.
    pub clauses: Vec<(String, u32)>,
    /// Machines whose own requirements (or START) reject the job, and the
    /// clause that does.
    pub machine_refusals: Vec<(HostName, String)>,
    /// Machines that match both ways right now.
    pub matching: Vec<HostName>,
}
