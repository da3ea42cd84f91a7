//! The kernel's record of written pages: a userfaultfd in asynchronous
//! write-protect mode (`UFFD_FEATURE_WP_ASYNC`) over the saved regions, read
//! and re-armed with `PAGEMAP_SCAN` on `/proc/self/pagemap`. A write to a
//! protected page (by the job or by the kernel on its behalf) is let
//! through at once and only marks the page written; nothing is delivered
//! to the job. An increment then sends the pages written since the last
//! image without reading the others. Where this is not available (no
//! userfaultfd, a region that cannot be registered), the page hashes
//! decide.

use super::sys::{self, sc};

const SYS_USERFAULTFD: usize = 323;
const UFFD_USER_MODE_ONLY: usize = 1;
const UFFD_API: u64 = 0xAA;
const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_API: usize = 0xC018_AA3F;
const UFFDIO_REGISTER: usize = 0xC020_AA00;
const UFFDIO_WRITEPROTECT: usize = 0xC018_AA06;
const REGISTER_MODE_WP: u64 = 2;
const WRITEPROTECT_MODE_WP: u64 = 1;
const PAGEMAP_SCAN: usize = 0xC060_6610;
/// `PAGEMAP_SCAN` flags.
const PM_SCAN_WP_MATCHING: u64 = 1;
const PM_SCAN_CHECK_WPASYNC: u64 = 2;
/// Page categories.
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// Where the descriptor goes (above the job's usual fds).
const HIGH_FD: usize = 960;

/// One run of pages `PAGEMAP_SCAN` reports.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

impl PageRegion {
    pub const EMPTY: PageRegion = PageRegion {
        start: 0,
        end: 0,
        categories: 0,
    };
}

#[repr(C)]
struct ScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// A userfaultfd for asynchronous write protection, or -1.
pub fn open() -> i32 {
    // SAFETY: raw calls with integer arguments and pointers to locals.
    unsafe {
        let fd = sc(
            SYS_USERFAULTFD,
            (libc::O_CLOEXEC | libc::O_NONBLOCK) as usize | UFFD_USER_MODE_ONLY,
            0,
            0,
            0,
            0,
            0,
        );
        if fd < 0 {
            return -1;
        }
        let mut api = [UFFD_API, FEATURE_WP_ASYNC | FEATURE_WP_UNPOPULATED, 0];
        if sc(
            sys::IOCTL,
            fd as usize,
            UFFDIO_API,
            api.as_mut_ptr() as usize,
            0,
            0,
            0,
        ) != 0
        {
            sc(sys::CLOSE, fd as usize, 0, 0, 0, 0, 0);
            return -1;
        }
        let high = sc(
            sys::FCNTL,
            fd as usize,
            libc::F_DUPFD_CLOEXEC as usize,
            HIGH_FD,
            0,
            0,
            0,
        );
        if high >= 0 {
            sc(sys::CLOSE, fd as usize, 0, 0, 0, 0, 0);
            return high as i32;
        }
        fd as i32
    }
}

/// Whether `fd` is still a userfaultfd (the job may have closed it, and
/// the number may name one of its files now).
pub fn is_ours(fd: i32) -> bool {
    let mut link = [0u8; 32];
    link[..14].copy_from_slice(b"/proc/self/fd/");
    let mut db = [0u8; 20];
    let digits = sys::dec(fd as u64, &mut db);
    link[14..14 + digits.len()].copy_from_slice(digits);
    let mut target = [0u8; 64];
    // SAFETY: `link` is NUL-terminated; `target` is writable for its length.
    let n = unsafe {
        sc(
            sys::READLINK,
            link.as_ptr() as usize,
            target.as_mut_ptr() as usize,
            target.len(),
            0,
            0,
            0,
        )
    };
    n > 0 && &target[..n as usize] == b"anon_inode:[userfaultfd]"
}

/// Registers `[start, end)` for write protection; false if it cannot be.
pub fn register(fd: i32, start: u64, end: u64) -> bool {
    let mut reg = [start, end - start, REGISTER_MODE_WP, 0];
    // SAFETY: UFFDIO_REGISTER reads and writes the local record.
    unsafe {
        sc(
            sys::IOCTL,
            fd as usize,
            UFFDIO_REGISTER,
            reg.as_mut_ptr() as usize,
            0,
            0,
            0,
        ) == 0
    }
}

/// Write-protects every page of the registered `[start, end)`.
pub fn protect(fd: i32, start: u64, end: u64) -> bool {
    let mut wp = [start, end - start, WRITEPROTECT_MODE_WP];
    // SAFETY: UFFDIO_WRITEPROTECT reads the local record.
    unsafe {
        sc(
            sys::IOCTL,
            fd as usize,
            UFFDIO_WRITEPROTECT,
            wp.as_mut_ptr() as usize,
            0,
            0,
            0,
        ) == 0
    }
}

/// Reports the runs of pages of `[start, end)` (on `pagemap`, an open
/// `/proc/self/pagemap`) that are written since they were protected
/// (`written`, and then protects them again), or that are neither
/// present nor swapped out (not `written`), to `f`. False if the range
/// holds a mapping without asynchronous write protection, or on error;
/// then some pages may have been protected again without being reported.
pub fn scan(
    pagemap: i32,
    start: u64,
    end: u64,
    written: bool,
    vec: &mut [PageRegion],
    mut f: impl FnMut(u64, u64),
) -> bool {
    let mut at = start;
    while at < end {
        let mut a = ScanArg {
            size: core::mem::size_of::<ScanArg>() as u64,
            flags: if written {
                PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC
            } else {
                PM_SCAN_CHECK_WPASYNC
            },
            start: at,
            end,
            walk_end: 0,
            vec: vec.as_mut_ptr() as u64,
            vec_len: vec.len() as u64,
            max_pages: 0,
            category_inverted: if written {
                0
            } else {
                PAGE_IS_PRESENT | PAGE_IS_SWAPPED
            },
            category_mask: if written {
                PAGE_IS_WRITTEN
            } else {
                PAGE_IS_PRESENT | PAGE_IS_SWAPPED
            },
            category_anyof_mask: 0,
            return_mask: if written {
                PAGE_IS_WRITTEN
            } else {
                PAGE_IS_PRESENT | PAGE_IS_SWAPPED
            },
        };
        // SAFETY: PAGEMAP_SCAN reads the record and writes at most
        // `vec_len` entries into `vec`.
        let n = unsafe {
            sc(
                sys::IOCTL,
                pagemap as usize,
                PAGEMAP_SCAN,
                &mut a as *mut ScanArg as usize,
                0,
                0,
                0,
            )
        };
        if n < 0 {
            return false;
        }
        for r in &vec[..n as usize] {
            f(r.start, r.end);
        }
        if a.walk_end <= at {
            return false;
        }
        at = a.walk_end;
    }
    true
}
