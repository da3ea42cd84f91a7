//! roost-matchmaker: collects machine ads from ownerds and idle jobs from
//! schedds, pairs them in negotiation cycles, and hands out claims.
//!
//! - [`negotiate`]: the pairing policy, a pure function over ads
//!   (symmetric requirements, rank, fair share, rank preemption, `why`).
//! - [`server`]: the TLS server, the pool state and the cycle loop.
//! - [`web`]: the pool page and `/metrics` over HTTPS on the same port.
//! - [`metrics`]: the Prometheus metrics.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod negotiate;
pub mod server;
pub mod web;

pub use negotiate::{FairShare, Options, Outcome, Pairing, negotiate, why};
pub use server::{Matchmaker, Settings};

/// Ad attribute an ownerd sets to the job it runs (`"12.0"`) while it holds
/// a claim; the matchmaker reads it to see a claim taken up and released.
pub const ATTR_JOB_ID: &str = "JobId";
/// Ad attribute an ownerd sets to the schedd whose job it runs.
pub const ATTR_CLIENT_MACHINE: &str = "ClientMachine";

#[derive(Debug, thiserror::Error)]
pub enum MatchmakerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the listening address")]
    LocalAddr(#[source] std::io::Error),
}
