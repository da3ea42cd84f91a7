//! roost-matchmaker.
#![forbid(unsafe_code)]
