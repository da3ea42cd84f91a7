//! The multi-host test harness.
