//! Identities: newtypes, never bare integers or strings.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A job: `cluster.proc`, as Condor users know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId {
    pub cluster: u64,
    pub proc: u32,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.cluster, self.proc)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a job id (expected CLUSTER or CLUSTER.PROC, e.g. 12.0)")]
pub struct BadJobId(pub String);

impl FromStr for JobId {
    type Err = BadJobId;
    fn from_str(s: &str) -> Result<Self, BadJobId> {
        let bad = || BadJobId(s.to_string());
        let (c, p) = s.split_once('.').unwrap_or((s, "0"));
        Ok(JobId {
            cluster: c.parse().map_err(|_| bad())?,
            proc: p.parse().map_err(|_| bad())?,
        })
    }
}

/// An unguessable, single-use claim token handed out by the matchmaker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimId(pub String);

impl fmt::Display for ClaimId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the whole secret. Counted in characters: a token off
        // the wire need not be ASCII, and slicing bytes could split one.
        let head: String = self.0.chars().take(8).collect();
        write!(f, "{head}…")
    }
}

/// A host's name in the pool (also the name in its certificate).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostName(pub String);

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A remote open file (an open file description on the submit host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Handle(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_display_shows_eight_characters_of_any_token() {
        assert_eq!(ClaimId("0123456789abcdef".into()).to_string(), "01234567…");
        assert_eq!(ClaimId("ab".into()).to_string(), "ab…");
        assert_eq!(ClaimId("ééééééééé".into()).to_string(), "éééééééé…");
        assert_eq!(ClaimId("aaaaaaaé".into()).to_string(), "aaaaaaaé…");
        assert_eq!(ClaimId("aéééééééé".into()).to_string(), "aééééééé…");
    }
}
