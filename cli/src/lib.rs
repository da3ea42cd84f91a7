//! roost CLI.
#![forbid(unsafe_code)]
