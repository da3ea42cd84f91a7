//! Every frame decoder: a header, then the body decoded as each top-level
//! message a daemon or the shim reads off a wire. Errors are fine; a panic,
//! an abort or unbounded allocation is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::frame::{check_header, decode_body, read_frame};

fn all(body: &[u8]) {
    let _ = decode_body::<proto::shim::ShimRequest>(body);
    let _ = decode_body::<proto::shim::ShimReply>(body);
    let _ = decode_body::<proto::shadow::ToShadow>(body);
    let _ = decode_body::<proto::shadow::FromShadow>(body);
    let _ = decode_body::<proto::pool::ToMatchmaker>(body);
    let _ = decode_body::<proto::pool::FromMatchmaker>(body);
    let _ = decode_body::<proto::cli::CliRequest>(body);
    let _ = decode_body::<proto::cli::CliReply>(body);
    let _ = decode_body::<proto::fileop::FileOp>(body);
    let _ = decode_body::<proto::fileop::FileReply>(body);
}

fuzz_target!(|data: &[u8]| {
    all(data);
    if data.len() >= 4 {
        let hdr = [data[0], data[1], data[2], data[3]];
        if let Ok(len) = check_header(hdr, 1 << 16) {
            let body = &data[4..];
            all(&body[..len.min(body.len())]);
        }
    }
    let mut r = data;
    let _ = read_frame::<_, proto::shadow::ToShadow>(&mut r, 1 << 16);
});
