//! Owner policy files and ad files.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = policies::policy::OwnerPolicy::parse("policy.toml", text);
    let _ = policies::Ad::parse("machine.ad", text);
});
