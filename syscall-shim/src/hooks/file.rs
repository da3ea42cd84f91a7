//! Hooks on file descriptors: open, close, read, write, positioned and
//! vectored I/O, lseek, dup, fcntl, truncate, sync, copy.

use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void};

use libc::{iovec, off_t, size_t, ssize_t};

use super::arg;
use crate::ops::{file, run};
use crate::{real, sys};

unsafe fn openat_impl(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    run(
        -1,
        || {
            // SAFETY: path is the caller's C string.
            let p = match unsafe { arg(path) } {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            file::open(dirfd, p, flags, mode)
        },
        || {
            // SAFETY: the caller's arguments, passed on unchanged.
            unsafe {
                real!(openat: fn(c_int, *const c_char, c_int, c_uint) -> c_int)(
                    dirfd, path, flags, mode,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `open`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: same contract.
    unsafe { openat_impl(libc::AT_FDCWD, path, flags, mode) }
}

/// # Safety
/// libc's contract for `open64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: same contract.
    unsafe { openat_impl(libc::AT_FDCWD, path, flags, mode) }
}

/// # Safety
/// libc's contract for `openat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    // SAFETY: same contract.
    unsafe { openat_impl(dirfd, path, flags, mode) }
}

/// # Safety
/// libc's contract for `openat64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    // SAFETY: same contract.
    unsafe { openat_impl(dirfd, path, flags, mode) }
}

/// # Safety
/// libc's contract for `creat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn creat(path: *const c_char, mode: libc::mode_t) -> c_int {
    // SAFETY: same contract.
    unsafe {
        openat_impl(
            libc::AT_FDCWD,
            path,
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
            mode,
        )
    }
}

/// # Safety
/// libc's contract for `creat64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn creat64(path: *const c_char, mode: libc::mode_t) -> c_int {
    // SAFETY: same contract.
    unsafe {
        openat_impl(
            libc::AT_FDCWD,
            path,
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
            mode,
        )
    }
}

/// # Safety
/// glibc's contract for `__open_2` (fortified `open` without a mode).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { openat_impl(libc::AT_FDCWD, path, flags, 0) }
}

/// # Safety
/// glibc's contract for `__open64_2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { openat_impl(libc::AT_FDCWD, path, flags, 0) }
}

/// # Safety
/// glibc's contract for `__openat_2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { openat_impl(dirfd, path, flags, 0) }
}

/// # Safety
/// glibc's contract for `__openat64_2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { openat_impl(dirfd, path, flags, 0) }
}

/// # Safety
/// libc's contract for `close`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    run(
        -1,
        || file::close(fd),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(close: fn(c_int) -> c_int)(fd) }
        },
    )
}

/// Closes `[first, last]` except the shim's own descriptors.
fn close_range_impl(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let keep = crate::ops::own_fds();
    let mut lo = first as u64;
    let hi = last as u64;
    let mut ranges = Vec::new();
    let mut ks: Vec<u64> = keep
        .iter()
        .filter(|&&k| k >= 0)
        .map(|&k| k as u64)
        .filter(|k| (lo..=hi).contains(k))
        .collect();
    ks.sort_unstable();
    for k in ks {
        if k > lo {
            ranges.push((lo, k - 1));
        }
        lo = k + 1;
    }
    if lo <= hi {
        ranges.push((lo, hi));
    }
    for (a, b) in ranges {
        // SAFETY: close_range takes integers only.
        if let Err(e) = unsafe {
            sys::sc(
                libc::SYS_close_range,
                [a as usize, b as usize, flags as usize, 0, 0, 0],
            )
        } {
            sys::set_errno(e);
            return -1;
        }
        crate::ops::forget_range(a, b, flags);
    }
    0
}

/// # Safety
/// libc's contract for `close_range`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    run(
        -1,
        || match close_range_impl(first, last, flags) {
            -1 => Some(Err(sys::errno())),
            r => Some(Ok(r)),
        },
        || {
            let a = [first as usize, last as usize, flags as usize, 0, 0, 0];
            // SAFETY: close_range takes integers only.
            match unsafe { sys::sc(libc::SYS_close_range, a) } {
                Ok(_) => 0,
                Err(e) => {
                    sys::set_errno(e);
                    -1
                }
            }
        },
    )
}

/// # Safety
/// libc's contract for `closefrom`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn closefrom(low: c_int) {
    // SAFETY: same contract.
    unsafe { close_range(low.max(0) as c_uint, c_uint::MAX, 0) };
}

/// # Safety
/// libc's contract for `read`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    run(
        -1,
        || {
            // SAFETY: buf is writable for n bytes (read's contract).
            unsafe { file::read(fd, buf.cast(), n) }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(read: fn(c_int, *mut c_void, size_t) -> ssize_t)(fd, buf, n) }
        },
    )
}

/// # Safety
/// glibc's contract for `__read_chk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
) -> ssize_t {
    if n > buflen {
        // SAFETY: abort has no preconditions (fortify failure).
        unsafe { libc::abort() };
    }
    // SAFETY: same contract as read.
    unsafe { read(fd, buf, n) }
}

/// # Safety
/// libc's contract for `write`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    run(
        -1,
        || file::write_check(fd),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(write: fn(c_int, *const c_void, size_t) -> ssize_t)(fd, buf, n) }
        },
    )
}

unsafe fn pread_impl(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t {
    run(
        -1,
        || {
            // SAFETY: buf is writable for n bytes (pread's contract).
            unsafe { file::pread(fd, buf.cast(), n, off) }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(pread64: fn(c_int, *mut c_void, size_t, off_t) -> ssize_t)(fd, buf, n, off)
            }
        },
    )
}

/// # Safety
/// libc's contract for `pread`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pread(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t {
    // SAFETY: same contract.
    unsafe { pread_impl(fd, buf, n, off) }
}

/// # Safety
/// libc's contract for `pread64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pread64(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t {
    // SAFETY: same contract.
    unsafe { pread_impl(fd, buf, n, off) }
}

/// # Safety
/// glibc's contract for `__pread_chk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __pread_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    off: off_t,
    buflen: size_t,
) -> ssize_t {
    if n > buflen {
        // SAFETY: abort has no preconditions (fortify failure).
        unsafe { libc::abort() };
    }
    // SAFETY: same contract as pread.
    unsafe { pread_impl(fd, buf, n, off) }
}

/// # Safety
/// glibc's contract for `__pread64_chk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __pread64_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    off: off_t,
    buflen: size_t,
) -> ssize_t {
    // SAFETY: same contract.
    unsafe { __pread_chk(fd, buf, n, off, buflen) }
}

unsafe fn pwrite_impl(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t {
    run(
        -1,
        || {
            // SAFETY: buf is readable for n bytes (pwrite's contract).
            let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n) };
            file::pwrite(fd, data, off)
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(pwrite64: fn(c_int, *const c_void, size_t, off_t) -> ssize_t)(fd, buf, n, off)
            }
        },
    )
}

/// # Safety
/// libc's contract for `pwrite`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t {
    // SAFETY: same contract.
    unsafe { pwrite_impl(fd, buf, n, off) }
}

/// # Safety
/// libc's contract for `pwrite64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite64(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t {
    // SAFETY: same contract.
    unsafe { pwrite_impl(fd, buf, n, off) }
}

/// The iovecs as slices.
///
/// # Safety
/// `iov` must point to `cnt` valid iovecs.
unsafe fn iovs<'a>(iov: *const iovec, cnt: c_int) -> Result<&'a [iovec], proto::fileop::Errno> {
    if !(0..=1024).contains(&cnt) {
        return Err(libc::EINVAL);
    }
    if cnt == 0 {
        return Ok(&[]);
    }
    // SAFETY: the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(iov, cnt as usize) })
}

/// Scatter-read through the per-buffer op `one(ptr, len, offset_so_far)`.
fn scatter(
    v: &[iovec],
    mut one: impl FnMut(*mut u8, usize, i64) -> Option<Result<isize, i32>>,
) -> Option<Result<isize, i32>> {
    let mut total = 0isize;
    for b in v {
        if b.iov_len == 0 {
            continue;
        }
        match one(b.iov_base.cast(), b.iov_len, total as i64)? {
            Ok(k) => {
                total += k;
                if (k as usize) < b.iov_len {
                    break;
                }
            }
            Err(e) if total == 0 => return Some(Err(e)),
            Err(_) => break,
        }
    }
    Some(Ok(total))
}

/// # Safety
/// libc's contract for `readv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    run(
        -1,
        || {
            // SAFETY: iov holds cnt iovecs (readv's contract).
            let v = match unsafe { iovs(iov, cnt) } {
                Ok(v) => v,
                Err(e) => return Some(Err(e)),
            };
            // SAFETY: each iovec is writable for its length.
            scatter(v, |p, n, _| unsafe { file::read(fd, p, n) })
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(readv: fn(c_int, *const iovec, c_int) -> ssize_t)(fd, iov, cnt) }
        },
    )
}

/// # Safety
/// libc's contract for `writev`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    run(
        -1,
        || file::write_check(fd),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(writev: fn(c_int, *const iovec, c_int) -> ssize_t)(fd, iov, cnt) }
        },
    )
}

unsafe fn preadv_impl(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
    run(
        -1,
        || {
            // SAFETY: iov holds cnt iovecs (preadv's contract).
            let v = match unsafe { iovs(iov, cnt) } {
                Ok(v) => v,
                Err(e) => return Some(Err(e)),
            };
            // SAFETY: each iovec is writable for its length.
            scatter(v, |p, n, done| unsafe { file::pread(fd, p, n, off + done) })
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(preadv64: fn(c_int, *const iovec, c_int, off_t) -> ssize_t)(fd, iov, cnt, off)
            }
        },
    )
}

unsafe fn pwritev_impl(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
    run(
        -1,
        || {
            // SAFETY: iov holds cnt iovecs (pwritev's contract).
            let v = match unsafe { iovs(iov, cnt) } {
                Ok(v) => v,
                Err(e) => return Some(Err(e)),
            };
            let mut data = Vec::new();
            for b in v {
                // SAFETY: each iovec is readable for its length.
                data.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(b.iov_base.cast::<u8>(), b.iov_len)
                });
            }
            file::pwrite(fd, &data, off)
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(pwritev64: fn(c_int, *const iovec, c_int, off_t) -> ssize_t)(
                    fd, iov, cnt, off,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `preadv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
    // SAFETY: same contract.
    unsafe { preadv_impl(fd, iov, cnt, off) }
}

/// # Safety
/// libc's contract for `preadv64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv64(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
    // SAFETY: same contract.
    unsafe { preadv_impl(fd, iov, cnt, off) }
}

/// # Safety
/// libc's contract for `pwritev`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
    // SAFETY: same contract.
    unsafe { pwritev_impl(fd, iov, cnt, off) }
}

/// # Safety
/// libc's contract for `pwritev64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev64(
    fd: c_int,
    iov: *const iovec,
    cnt: c_int,
    off: off_t,
) -> ssize_t {
    // SAFETY: same contract.
    unsafe { pwritev_impl(fd, iov, cnt, off) }
}

fn lseek_impl(fd: c_int, off: off_t, whence: c_int) -> off_t {
    run(
        -1,
        || file::lseek(fd, off, whence),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(lseek64: fn(c_int, off_t, c_int) -> off_t)(fd, off, whence) }
        },
    )
}

/// # Safety
/// libc's contract for `lseek`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lseek(fd: c_int, off: off_t, whence: c_int) -> off_t {
    lseek_impl(fd, off, whence)
}

/// # Safety
/// libc's contract for `lseek64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lseek64(fd: c_int, off: off_t, whence: c_int) -> off_t {
    lseek_impl(fd, off, whence)
}

/// # Safety
/// libc's contract for `dup`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    run(
        -1,
        || file::dup(fd),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(dup: fn(c_int) -> c_int)(fd) }
        },
    )
}

/// # Safety
/// libc's contract for `dup2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    run(
        -1,
        || file::dup3(old, new, 0, true),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(dup2: fn(c_int, c_int) -> c_int)(old, new) }
        },
    )
}

/// # Safety
/// libc's contract for `dup3`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    run(
        -1,
        || file::dup3(old, new, flags, false),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(dup3: fn(c_int, c_int, c_int) -> c_int)(old, new, flags) }
        },
    )
}

unsafe fn fcntl_impl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    run(
        -1,
        || {
            // SAFETY: arg is what the caller passed for cmd (fcntl's contract).
            unsafe { file::fcntl(fd, cmd, arg as usize) }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(fcntl64: fn(c_int, c_int, c_ulong) -> c_int)(fd, cmd, arg) }
        },
    )
}

/// # Safety
/// libc's contract for `fcntl` (the variadic argument read as one word).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: same contract.
    unsafe { fcntl_impl(fd, cmd, arg) }
}

/// # Safety
/// libc's contract for `fcntl64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: same contract.
    unsafe { fcntl_impl(fd, cmd, arg) }
}

fn ftruncate_impl(fd: c_int, len: off_t) -> c_int {
    run(
        -1,
        || file::ftruncate(fd, len),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(ftruncate64: fn(c_int, off_t) -> c_int)(fd, len) }
        },
    )
}

/// # Safety
/// libc's contract for `ftruncate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ftruncate(fd: c_int, len: off_t) -> c_int {
    ftruncate_impl(fd, len)
}

/// # Safety
/// libc's contract for `ftruncate64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ftruncate64(fd: c_int, len: off_t) -> c_int {
    ftruncate_impl(fd, len)
}

/// # Safety
/// libc's contract for `fsync`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    run(
        -1,
        || file::fsync(fd, false),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(fsync: fn(c_int) -> c_int)(fd) }
        },
    )
}

/// # Safety
/// libc's contract for `fdatasync`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    run(
        -1,
        || file::fsync(fd, true),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(fdatasync: fn(c_int) -> c_int)(fd) }
        },
    )
}

/// # Safety
/// libc's contract for `copy_file_range`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copy_file_range(
    fd_in: c_int,
    off_in: *mut i64,
    fd_out: c_int,
    off_out: *mut i64,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    run(
        -1,
        || {
            // SAFETY: the offsets are NULL or valid (copy_file_range's contract).
            unsafe { file::copy(fd_in, off_in, fd_out, off_out, len) }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                sys::sc(
                    libc::SYS_copy_file_range,
                    [
                        fd_in as usize,
                        off_in as usize,
                        fd_out as usize,
                        off_out as usize,
                        len,
                        flags as usize,
                    ],
                )
            }
            .map(|n| n as ssize_t)
            .unwrap_or_else(|e| {
                sys::set_errno(e);
                -1
            })
        },
    )
}

unsafe fn sendfile_impl(out_fd: c_int, in_fd: c_int, off: *mut off_t, count: size_t) -> ssize_t {
    run(
        -1,
        || {
            // SAFETY: off is NULL or valid (sendfile's contract).
            unsafe { file::copy(in_fd, off, out_fd, std::ptr::null_mut(), count) }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(sendfile64: fn(c_int, c_int, *mut off_t, size_t) -> ssize_t)(
                    out_fd, in_fd, off, count,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `sendfile`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    off: *mut off_t,
    count: size_t,
) -> ssize_t {
    // SAFETY: same contract.
    unsafe { sendfile_impl(out_fd, in_fd, off, count) }
}

/// # Safety
/// libc's contract for `sendfile64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    off: *mut off_t,
    count: size_t,
) -> ssize_t {
    // SAFETY: same contract.
    unsafe { sendfile_impl(out_fd, in_fd, off, count) }
}

fn fadvise_impl(fd: c_int, off: off_t, len: off_t, advice: c_int) -> c_int {
    let remote = run(false, || file::is_remote(fd), || false);
    if remote {
        return 0;
    }
    // SAFETY: fadvise64 takes integers only; it returns the error number.
    match unsafe {
        sys::sc(
            libc::SYS_fadvise64,
            [
                fd as usize,
                off as usize,
                len as usize,
                advice as usize,
                0,
                0,
            ],
        )
    } {
        Ok(_) => 0,
        Err(e) => e,
    }
}

/// # Safety
/// libc's contract for `posix_fadvise`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_fadvise(fd: c_int, off: off_t, len: off_t, advice: c_int) -> c_int {
    fadvise_impl(fd, off, len, advice)
}

/// # Safety
/// libc's contract for `posix_fadvise64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_fadvise64(
    fd: c_int,
    off: off_t,
    len: off_t,
    advice: c_int,
) -> c_int {
    fadvise_impl(fd, off, len, advice)
}

fn mmap_impl(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    if flags & libc::MAP_ANONYMOUS != 0 || fd < 0 {
        // SAFETY: passed on unchanged.
        return unsafe {
            real!(mmap64: fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void)(
                addr, len, prot, flags, fd, off,
            )
        };
    }
    run(
        libc::MAP_FAILED,
        || {
            file::mmap(addr as usize, len, prot, flags, fd, off)
                .map(|r| r.map(|p| p as *mut c_void))
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(mmap64: fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void)(
                    addr, len, prot, flags, fd, off,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `mmap`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    mmap_impl(addr, len, prot, flags, fd, off)
}

/// # Safety
/// libc's contract for `mmap64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    mmap_impl(addr, len, prot, flags, fd, off)
}

/// `poll`/`ppoll` with remote files: those are ready at once (like regular
/// files); the rest are polled without waiting.
///
/// # Safety
/// `fds` must point to `n` pollfds.
unsafe fn poll_remote(fds: *mut libc::pollfd, n: libc::nfds_t) -> Option<Result<c_int, i32>> {
    if fds.is_null() || n == 0 || n > 4096 {
        return None;
    }
    // SAFETY: fds holds n pollfds (the caller's contract).
    let v = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    let nums: Vec<i32> = v.iter().map(|p| p.fd).collect();
    let ready = match file::always_ready(&nums)? {
        Ok(r) => r,
        Err(e) => return Some(Err(e)),
    };
    for (p, &r) in v.iter_mut().zip(&ready) {
        if r {
            p.fd = -p.fd - 1;
        }
    }
    // SAFETY: fds is valid; the remote entries are negative (ignored) for now.
    let others = unsafe { sys::sc(libc::SYS_poll, [fds as usize, n as usize, 0, 0, 0, 0]) };
    let mut count = others.unwrap_or(0) as c_int;
    let mask = libc::POLLIN | libc::POLLRDNORM | libc::POLLOUT | libc::POLLWRNORM;
    for (p, &r) in v.iter_mut().zip(&ready) {
        if r {
            p.fd = -p.fd - 1;
            p.revents = p.events & mask;
            if p.revents != 0 {
                count += 1;
            }
        }
    }
    Some(Ok(count))
}

/// # Safety
/// libc's contract for `poll`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    run(
        -1,
        // SAFETY: poll's contract.
        || unsafe { poll_remote(fds, n) },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(poll: fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int)(fds, n, timeout)
            }
        },
    )
}

/// # Safety
/// libc's contract for `ppoll`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        *mut libc::pollfd,
        libc::nfds_t,
        *const libc::timespec,
        *const libc::sigset_t,
    ) -> c_int;
    run(
        -1,
        // SAFETY: ppoll's contract.
        || unsafe { poll_remote(fds, n) },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(ppoll as F)(fds, n, timeout, sigmask) }
        },
    )
}
