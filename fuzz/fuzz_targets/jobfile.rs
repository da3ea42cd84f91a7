//! Job description files: roost's TOML and the HTCondor submit-file subset.
//! Bad input is an error naming what was wrong, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cwd = Path::new("/nonexistent-roost-fuzz");
    let _ = policies::jobfile::parse("job.toml", text, cwd);
    let _ = policies::submit::parse("job.sub", text, cwd);
    let _ = policies::jobfile::parse_any("job", text, cwd);
});
