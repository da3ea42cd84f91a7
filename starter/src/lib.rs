//! The execute host: the owner's daemon and the per-job starter.
pub mod ckpt;
pub mod job;
pub mod ownerd;
pub mod relay;
pub mod shadow_link;
