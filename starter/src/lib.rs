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
