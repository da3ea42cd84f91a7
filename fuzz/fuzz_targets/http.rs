//! The daemons' HTTP request parser (the pool page and `/metrics`): any
//! request head is parsed or refused with a reason, and the token lookup
//! never panics on what was parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::web::Request;

fuzz_target!(|data: &[u8]| {
    let Ok(head) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Request::parse(head) {
        let _ = r.token();
        let _ = r.header("host");
        let _ = r.param("job");
    }
});
