//! The execute host: the owner's daemon and the per-job starter.
pub mod check_policy;
pub mod ckpt;
pub mod control;
pub mod job;
pub mod metrics;
pub mod net;
pub mod ownerd;
pub mod policy_machine;
pub mod relay;
pub mod sandbox;
pub mod shadow_link;

/// The starter's exit code when it gave its job up because the job's lease
/// ran out with the shadow out of reach (the schedd has requeued the job).
pub const EXIT_LEASE_EXPIRED: u8 = 3;
