//! The checkpoint image reader (`proto::ckpt::read_tables`), which the
//! starter runs on whatever a job writes to its checkpoint socket: any
//! bytes are read or refused with a reason. Each input is tried as it is
//! and once more with its header and table checksums made right, so that
//! the checks behind the checksums are reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::ckpt::{FdRecord, ImageHeader, Region, checksum, read_tables};

const PAGE: u32 = 4096;
const MAX_REGIONS: u32 = 64;
const MAX_FDS: u32 = 16;

fn try_read(b: &[u8]) {
    if let Ok(t) = read_tables(&mut &b[..], PAGE, MAX_REGIONS, MAX_FDS) {
        assert_eq!(t.regions.len(), t.header.nregions as usize);
        assert_eq!(t.fds.len(), t.header.nfds as usize);
        assert!(t.bytes.len() <= b.len());
    }
}

fuzz_target!(|data: &[u8]| {
    try_read(data);
    let Some(mut h) = ImageHeader::from_bytes(data) else {
        return;
    };
    let hlen = std::mem::size_of::<ImageHeader>();
    let rlen = (h.nregions.min(MAX_REGIONS) as usize) * std::mem::size_of::<Region>();
    let flen = (h.nfds.min(MAX_FDS) as usize) * std::mem::size_of::<FdRecord>();
    let rest = &data[hlen..];
    if rest.len() < rlen + flen {
        return;
    }
    h.tables_sum = checksum(&rest[..rlen]) ^ checksum(&rest[rlen..rlen + flen]).rotate_left(1);
    h.seal();
    let mut fixed = h.as_bytes().to_vec();
    fixed.extend_from_slice(rest);
    try_read(&fixed);
});
