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
