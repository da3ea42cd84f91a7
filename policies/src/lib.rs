//! The expression language, ads, owner policy and job description files.
#![forbid(unsafe_code)]
