//! `/proc/self/maps`, read with raw calls into caller-provided memory.

use super::sys::{self, sc};
use proto::ckpt::{RF_DATA, RF_FILE, RF_HEAP, RF_STACK, Region};

/// Reads `/proc/self/maps` into `buf`; returns the length read.
pub fn read(buf: &mut [u8]) -> usize {
    let path = b"/proc/self/maps\0";
    // SAFETY: a NUL-terminated path and read-only flags.
    let fd = unsafe { sc(sys::OPEN, path.as_ptr() as usize, 0, 0, 0, 0, 0) };
    if fd < 0 {
        return 0;
    }
    let mut n = 0;
    while n < buf.len() {
        // SAFETY: the destination is the unused tail of `buf`.
        let r = unsafe {
            sc(
                sys::READ,
                fd as usize,
                buf.as_mut_ptr() as usize + n,
                buf.len() - n,
                0,
                0,
                0,
            )
        };
        if r <= 0 {
            break;
        }
        n += r as usize;
    }
    // SAFETY: closes the fd opened above.
    unsafe { sc(sys::CLOSE, fd as usize, 0, 0, 0, 0, 0) };
    n
}

fn hex(s: &[u8]) -> u64 {
    s.iter().fold(0, |v, &c| {
        v * 16
            + match c {
                b'0'..=b'9' => (c - b'0') as u64,
                b'a'..=b'f' => (c - b'a' + 10) as u64,
                _ => 0,
            }
    })
}

/// Regions the kernel provides itself in every process.
fn kernel_provided(path: &[u8]) -> bool {
    path.starts_with(b"[vdso]") || path.starts_with(b"[vvar") || path.starts_with(b"[vsyscall]")
}

/// Parses maps text into `out`; returns how many regions were stored, or
/// `None` if there were more than `out` holds. Kernel-provided regions,
/// the restore area and the checkpoint work area are left out. `RF_DATA` marks what an image must carry:
/// every readable private region except executable file mappings (code,
/// re-mapped from the same file at restart).
pub fn parse(text: &[u8], out: &mut [Region], skip_start: u64) -> Option<usize> {
    let mut n = 0;
    for line in text.split(|&c| c == b'\n') {
        if line.is_empty() {
            continue;
        }
        let mut f = line.splitn(6, |&c| c == b' ');
        let range = f.next().unwrap_or(b"");
        let perms = f.next().unwrap_or(b"");
        let off = f.next().unwrap_or(b"");
        let _dev = f.next();
        let inode = f.next().unwrap_or(b"0");
        let mut path = f.next().unwrap_or(b"");
        while let [b' ', rest @ ..] = path {
            path = rest;
        }
        let dash = range.iter().position(|&c| c == b'-').unwrap_or(0);
        let start = hex(&range[..dash]);
        let work = (super::WORK..super::WORK + super::WORK_SIZE).contains(&start);
        if kernel_provided(path) || start == skip_start || work {
            continue;
        }
        if n == out.len() {
            return None;
        }
        let mut r = Region {
            start,
            end: hex(&range[dash + 1..]),
            prot: 0,
            flags: 0,
            offset: hex(off),
            pages: 0,
            path: [0; 256],
        };
        if perms.first() == Some(&b'r') {
            r.prot |= 1;
        }
        if perms.get(1) == Some(&b'w') {
            r.prot |= 2;
        }
        if perms.get(2) == Some(&b'x') {
            r.prot |= 4;
        }
        let l = path.len().min(255);
        r.path[..l].copy_from_slice(&path[..l]);
        let file = path.first() == Some(&b'/') && inode != b"0";
        if file {
            r.flags |= RF_FILE;
        }
        if path == b"[stack]" {
            r.flags |= RF_STACK;
        }
        if path == b"[heap]" {
            r.flags |= RF_HEAP;
        }
        if r.prot & 1 != 0 && !(file && r.prot & 4 != 0) {
            r.flags |= RF_DATA;
        }
        // Shared mappings: 's' in the fourth column.
        if perms.get(3) == Some(&b's') {
            r.flags |= SHARED;
        }
        out[n] = r;
        n += 1;
    }
    Some(n)
}

/// Marks a shared mapping (not checkpointable); never written to an image.
pub const SHARED: u32 = 1 << 31;
