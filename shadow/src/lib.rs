//! roost-schedd: the job queue and the shadows.
#![forbid(unsafe_code)]

pub mod fs;
pub mod queue;
