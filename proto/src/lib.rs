//! Every message and frame on every roost wire, in one place.
//!
//! - [`frame`]: length-prefixed, versioned, postcard-encoded frames (sync and async).
//! - [`ids`]: identities (`JobId`, `ClaimId`, `HostName`, `Handle`).
//! - [`fileop`]: the remote file calls a job makes (shim → starter → shadow).
//! - [`net`]: the socket calls a job makes (inside `fileop::FileOp::Net`).
//! - [`shim`]: the shim ⇄ starter wire (a Unix socket inside the sandbox).
//! - [`shadow`]: the starter ⇄ shadow wire (TLS).
//! - [`pool`]: ownerd/schedd ⇄ matchmaker (TLS).
//! - [`ckpt`]: the checkpoint image format (fixed-layout records).
//! - [`cli`]: roost CLI ⇄ schedd (a 0600 Unix socket).
//! - [`tls`]: the pool CA, certificates and rustls configurations.
//! - [`web`]: HTTPS for browsers and Prometheus on a daemon's TLS port.
// Only `ckpt` views its fixed-layout records as bytes.
#![deny(unsafe_code)]

pub mod ckpt;
pub mod cli;
pub mod fileop;
pub mod frame;
pub mod ids;
pub mod job;
pub mod net;
pub mod pool;
pub mod shadow;
pub mod shim;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "tls")]
pub mod web;

pub use frame::{FRAME_VERSION, MAX_FRAME, ProtoError};
pub use ids::{ClaimId, Handle, HostName, JobId};
