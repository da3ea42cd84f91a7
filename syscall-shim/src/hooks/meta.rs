//! Hooks on paths and metadata: the stat family (modern and `__xstat`
//! forms, `statx`), access, unlink, rename, mkdir, rmdir, readlink, chmod,
//! utimes, links, truncate, chdir/fchdir/getcwd.

use std::ffi::{c_char, c_int, c_uint};

use libc::{mode_t, off_t, size_t, ssize_t};
use proto::fileop::{Errno, Stat};

use super::arg;
use crate::ops::{meta, run};
use crate::{real, sys};

type Op<T> = Option<Result<T, Errno>>;

fn raw(r: Result<usize, Errno>) -> c_int {
    match r {
        Ok(_) => 0,
        Err(e) => {
            sys::set_errno(e);
            -1
        }
    }
}

/// Runs a path op; `EFAULT` for a NULL path.
///
/// # Safety
/// `path` must be NULL or a C string.
unsafe fn with_path<T>(path: *const c_char, f: impl FnOnce(&[u8]) -> Op<T>) -> Op<T> {
    // SAFETY: forwarded from the caller.
    match unsafe { arg(path) } {
        Ok(p) => f(p),
        Err(e) => Some(Err(e)),
    }
}

fn put_stat(st: Stat, buf: *mut libc::stat) -> c_int {
    // SAFETY: buf is the caller's writable struct stat.
    unsafe { buf.write(meta::to_stat(&st)) };
    0
}

unsafe fn fstatat_impl(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat,
    flags: c_int,
) -> c_int {
    run(
        -1,
        || {
            // SAFETY: path is the caller's C string.
            unsafe { with_path(path, |p| meta::stat_at(dirfd, p, flags)) }
                .map(|r| r.map(|st| put_stat(st, buf)))
        },
        || {
            // SAFETY: the caller's arguments, passed on unchanged.
            raw(unsafe {
                sys::sc(
                    libc::SYS_newfstatat,
                    [
                        dirfd as usize,
                        path as usize,
                        buf as usize,
                        flags as usize,
                        0,
                        0,
                    ],
                )
            })
        },
    )
}

unsafe fn fstat_impl(fd: c_int, buf: *mut libc::stat) -> c_int {
    run(
        -1,
        || meta::fstat(fd).map(|r| r.map(|st| put_stat(st, buf))),
        || {
            // SAFETY: passed on unchanged.
            raw(unsafe { sys::sc(libc::SYS_fstat, [fd as usize, buf as usize, 0, 0, 0, 0]) })
        },
    )
}

macro_rules! stat_hooks {
    ($($name:ident => $flags:expr;)*) => {$(
        /// # Safety
        /// libc's contract for this `stat` variant.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, buf: *mut libc::stat) -> c_int {
            // SAFETY: same contract.
            unsafe { fstatat_impl(libc::AT_FDCWD, path, buf, $flags) }
        }
    )*};
}

stat_hooks! {
    stat => 0;
    stat64 => 0;
    lstat => libc::AT_SYMLINK_NOFOLLOW;
    lstat64 => libc::AT_SYMLINK_NOFOLLOW;
}

macro_rules! xstat_hooks {
    ($($name:ident => $flags:expr;)*) => {$(
        /// # Safety
        /// glibc's contract for this `__xstat` variant (x86-64: one layout).
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(_ver: c_int, path: *const c_char, buf: *mut libc::stat) -> c_int {
            // SAFETY: same contract.
            unsafe { fstatat_impl(libc::AT_FDCWD, path, buf, $flags) }
        }
    )*};
}

xstat_hooks! {
    __xstat => 0;
    __xstat64 => 0;
    __lxstat => libc::AT_SYMLINK_NOFOLLOW;
    __lxstat64 => libc::AT_SYMLINK_NOFOLLOW;
}

/// # Safety
/// libc's contract for `fstat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstat(fd: c_int, buf: *mut libc::stat) -> c_int {
    // SAFETY: same contract.
    unsafe { fstat_impl(fd, buf) }
}

/// # Safety
/// libc's contract for `fstat64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstat64(fd: c_int, buf: *mut libc::stat) -> c_int {
    // SAFETY: same contract.
    unsafe { fstat_impl(fd, buf) }
}

/// # Safety
/// glibc's contract for `__fxstat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __fxstat(_ver: c_int, fd: c_int, buf: *mut libc::stat) -> c_int {
    // SAFETY: same contract.
    unsafe { fstat_impl(fd, buf) }
}

/// # Safety
/// glibc's contract for `__fxstat64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __fxstat64(_ver: c_int, fd: c_int, buf: *mut libc::stat) -> c_int {
    // SAFETY: same contract.
    unsafe { fstat_impl(fd, buf) }
}

macro_rules! fstatat_hooks {
    ($($name:ident),*) => {$(
        /// # Safety
        /// libc's contract for `fstatat`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(dirfd: c_int, path: *const c_char, buf: *mut libc::stat, flags: c_int) -> c_int {
            // SAFETY: same contract.
            unsafe { fstatat_impl(dirfd, path, buf, flags) }
        }
    )*};
}

fstatat_hooks!(fstatat, fstatat64, newfstatat);

/// # Safety
/// glibc's contract for `__fxstatat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __fxstatat(
    _ver: c_int,
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat,
    flags: c_int,
) -> c_int {
    // SAFETY: same contract.
    unsafe { fstatat_impl(dirfd, path, buf, flags) }
}

/// # Safety
/// glibc's contract for `__fxstatat64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __fxstatat64(
    _ver: c_int,
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat,
    flags: c_int,
) -> c_int {
    // SAFETY: same contract.
    unsafe { fstatat_impl(dirfd, path, buf, flags) }
}

/// # Safety
/// libc's contract for `statx`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: c_uint,
    buf: *mut libc::statx,
) -> c_int {
    run(
        -1,
        || {
            // SAFETY: path is the caller's C string.
            unsafe { with_path(path, |p| meta::stat_at(dirfd, p, flags)) }.map(|r| {
                r.map(|st| {
                    // SAFETY: buf is the caller's writable struct statx.
                    unsafe { buf.write(meta::to_statx(&st)) };
                    0
                })
            })
        },
        || {
            // SAFETY: passed on unchanged.
            raw(unsafe {
                sys::sc(
                    libc::SYS_statx,
                    [
                        dirfd as usize,
                        path as usize,
                        flags as usize,
                        mask as usize,
                        buf as usize,
                        0,
                    ],
                )
            })
        },
    )
}

unsafe fn access_impl(dirfd: c_int, path: *const c_char, mode: c_int, flags: c_int) -> c_int {
    run(
        -1,
        // SAFETY: path is the caller's C string.
        || unsafe { with_path(path, |p| meta::access(dirfd, p, mode, flags)) },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(faccessat: fn(c_int, *const c_char, c_int, c_int) -> c_int)(
                    dirfd, path, mode, flags,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `access`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn access(path: *const c_char, mode: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { access_impl(libc::AT_FDCWD, path, mode, 0) }
}

/// # Safety
/// libc's contract for `faccessat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn faccessat(
    dirfd: c_int,
    path: *const c_char,
    mode: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: same contract.
    unsafe { access_impl(dirfd, path, mode, flags) }
}

/// # Safety
/// libc's contract for `euidaccess`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn euidaccess(path: *const c_char, mode: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { access_impl(libc::AT_FDCWD, path, mode, libc::AT_EACCESS) }
}

/// # Safety
/// libc's contract for `eaccess`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eaccess(path: *const c_char, mode: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { access_impl(libc::AT_FDCWD, path, mode, libc::AT_EACCESS) }
}

unsafe fn unlink_impl(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    run(
        -1,
        // SAFETY: path is the caller's C string.
        || unsafe { with_path(path, |p| meta::unlink(dirfd, p, flags)) },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(unlinkat: fn(c_int, *const c_char, c_int) -> c_int)(dirfd, path, flags) }
        },
    )
}

/// # Safety
/// libc's contract for `unlink`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlink(path: *const c_char) -> c_int {
    // SAFETY: same contract.
    unsafe { unlink_impl(libc::AT_FDCWD, path, 0) }
}

/// # Safety
/// libc's contract for `unlinkat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlinkat(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { unlink_impl(dirfd, path, flags) }
}

/// # Safety
/// libc's contract for `rmdir`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rmdir(path: *const c_char) -> c_int {
    // SAFETY: same contract.
    unsafe { unlink_impl(libc::AT_FDCWD, path, libc::AT_REMOVEDIR) }
}

unsafe fn rename_impl(
    fd1: c_int,
    from: *const c_char,
    fd2: c_int,
    to: *const c_char,
    flags: c_uint,
) -> c_int {
    run(
        -1,
        || {
            // SAFETY: both are the caller's C strings.
            let (a, b) = match unsafe { (arg(from), arg(to)) } {
                (Ok(a), Ok(b)) => (a, b),
                _ => return Some(Err(libc::EFAULT)),
            };
            meta::rename(fd1, a, fd2, b, flags)
        },
        || {
            // SAFETY: passed on unchanged.
            raw(unsafe {
                sys::sc(
                    libc::SYS_renameat2,
                    [
                        fd1 as usize,
                        from as usize,
                        fd2 as usize,
                        to as usize,
                        flags as usize,
                        0,
                    ],
                )
            })
        },
    )
}

/// # Safety
/// libc's contract for `rename`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rename(from: *const c_char, to: *const c_char) -> c_int {
    // SAFETY: same contract.
    unsafe { rename_impl(libc::AT_FDCWD, from, libc::AT_FDCWD, to, 0) }
}

/// # Safety
/// libc's contract for `renameat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn renameat(
    fd1: c_int,
    from: *const c_char,
    fd2: c_int,
    to: *const c_char,
) -> c_int {
    // SAFETY: same contract.
    unsafe { rename_impl(fd1, from, fd2, to, 0) }
}

/// # Safety
/// libc's contract for `renameat2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn renameat2(
    fd1: c_int,
    from: *const c_char,
    fd2: c_int,
    to: *const c_char,
    flags: c_uint,
) -> c_int {
    // SAFETY: same contract.
    unsafe { rename_impl(fd1, from, fd2, to, flags) }
}

unsafe fn mkdir_impl(dirfd: c_int, path: *const c_char, mode: mode_t) -> c_int {
    run(
        -1,
        // SAFETY: path is the caller's C string.
        || unsafe { with_path(path, |p| meta::mkdir(dirfd, p, mode)) },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(mkdirat: fn(c_int, *const c_char, mode_t) -> c_int)(dirfd, path, mode) }
        },
    )
}

/// # Safety
/// libc's contract for `mkdir`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkdir(path: *const c_char, mode: mode_t) -> c_int {
    // SAFETY: same contract.
    unsafe { mkdir_impl(libc::AT_FDCWD, path, mode) }
}

/// # Safety
/// libc's contract for `mkdirat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkdirat(dirfd: c_int, path: *const c_char, mode: mode_t) -> c_int {
    // SAFETY: same contract.
    unsafe { mkdir_impl(dirfd, path, mode) }
}

unsafe fn readlink_impl(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut c_char,
    size: size_t,
) -> ssize_t {
    run(
        -1,
        // SAFETY: path is a C string and buf is writable for size bytes (readlink's contract).
        || unsafe { with_path(path, |p| meta::readlink(dirfd, p, buf.cast(), size)) },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(readlinkat: fn(c_int, *const c_char, *mut c_char, size_t) -> ssize_t)(
                    dirfd, path, buf, size,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `readlink`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readlink(path: *const c_char, buf: *mut c_char, size: size_t) -> ssize_t {
    // SAFETY: same contract.
    unsafe { readlink_impl(libc::AT_FDCWD, path, buf, size) }
}

/// # Safety
/// libc's contract for `readlinkat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readlinkat(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut c_char,
    size: size_t,
) -> ssize_t {
    // SAFETY: same contract.
    unsafe { readlink_impl(dirfd, path, buf, size) }
}

unsafe fn chmod_impl(dirfd: c_int, path: *const c_char, mode: mode_t, flags: c_int) -> c_int {
    run(
        -1,
        // SAFETY: path is the caller's C string.
        || unsafe { with_path(path, |p| meta::chmod(dirfd, p, mode)) },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(fchmodat: fn(c_int, *const c_char, mode_t, c_int) -> c_int)(
                    dirfd, path, mode, flags,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `chmod`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn chmod(path: *const c_char, mode: mode_t) -> c_int {
    // SAFETY: same contract.
    unsafe { chmod_impl(libc::AT_FDCWD, path, mode, 0) }
}

/// # Safety
/// libc's contract for `fchmodat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fchmodat(
    dirfd: c_int,
    path: *const c_char,
    mode: mode_t,
    flags: c_int,
) -> c_int {
    // SAFETY: same contract.
    unsafe { chmod_impl(dirfd, path, mode, flags) }
}

/// # Safety
/// libc's contract for `fchmod`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fchmod(fd: c_int, mode: mode_t) -> c_int {
    run(
        -1,
        || meta::chmod(fd, b"", mode),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(fchmod: fn(c_int, mode_t) -> c_int)(fd, mode) }
        },
    )
}

/// The two timespecs of `utimensat`, or `None` for "now".
///
/// # Safety
/// `t` must be NULL or point to two timespecs.
unsafe fn times_of(t: *const libc::timespec) -> Option<[(i64, i64); 2]> {
    if t.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    let (a, m) = unsafe { (*t, *t.add(1)) };
    Some([(a.tv_sec, a.tv_nsec), (m.tv_sec, m.tv_nsec)])
}

/// # Safety
/// libc's contract for `utimensat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utimensat(
    dirfd: c_int,
    path: *const c_char,
    times: *const libc::timespec,
    flags: c_int,
) -> c_int {
    run(
        -1,
        || {
            // SAFETY: times is NULL or two timespecs (utimensat's contract).
            let t = unsafe { times_of(times) };
            if path.is_null() {
                // utimensat(fd, NULL, ...) is futimens(fd).
                return meta::utimens(dirfd, b"", t, flags);
            }
            // SAFETY: path is the caller's C string.
            unsafe { with_path(path, |p| meta::utimens(dirfd, p, t, flags)) }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(utimensat: fn(c_int, *const c_char, *const libc::timespec, c_int) -> c_int)(
                    dirfd, path, times, flags,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `futimens`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn futimens(fd: c_int, times: *const libc::timespec) -> c_int {
    run(
        -1,
        || {
            // SAFETY: times is NULL or two timespecs (futimens's contract).
            let t = unsafe { times_of(times) };
            meta::utimens(fd, b"", t, 0)
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(futimens: fn(c_int, *const libc::timespec) -> c_int)(fd, times) }
        },
    )
}

/// # Safety
/// libc's contract for `utimes`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utimes(path: *const c_char, tv: *const libc::timeval) -> c_int {
    run(
        -1,
        || {
            let t = if tv.is_null() {
                None
            } else {
                // SAFETY: tv points to two timevals (utimes's contract).
                let (a, m) = unsafe { (*tv, *tv.add(1)) };
                Some([(a.tv_sec, a.tv_usec * 1000), (m.tv_sec, m.tv_usec * 1000)])
            };
            // SAFETY: path is the caller's C string.
            unsafe { with_path(path, |p| meta::utimens(libc::AT_FDCWD, p, t, 0)) }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(utimes: fn(*const c_char, *const libc::timeval) -> c_int)(path, tv) }
        },
    )
}

unsafe fn symlink_impl(target: *const c_char, dirfd: c_int, path: *const c_char) -> c_int {
    run(
        -1,
        || {
            // SAFETY: target is the caller's C string.
            let t = match unsafe { arg(target) } {
                Ok(t) => t,
                Err(e) => return Some(Err(e)),
            };
            // SAFETY: path is the caller's C string.
            unsafe { with_path(path, |p| meta::symlink(t, dirfd, p)) }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(symlinkat: fn(*const c_char, c_int, *const c_char) -> c_int)(
                    target, dirfd, path,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `symlink`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn symlink(target: *const c_char, path: *const c_char) -> c_int {
    // SAFETY: same contract.
    unsafe { symlink_impl(target, libc::AT_FDCWD, path) }
}

/// # Safety
/// libc's contract for `symlinkat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn symlinkat(
    target: *const c_char,
    dirfd: c_int,
    path: *const c_char,
) -> c_int {
    // SAFETY: same contract.
    unsafe { symlink_impl(target, dirfd, path) }
}

unsafe fn link_impl(
    fd1: c_int,
    from: *const c_char,
    fd2: c_int,
    to: *const c_char,
    flags: c_int,
) -> c_int {
    run(
        -1,
        || {
            // SAFETY: both are the caller's C strings.
            let (a, b) = match unsafe { (arg(from), arg(to)) } {
                (Ok(a), Ok(b)) => (a, b),
                _ => return Some(Err(libc::EFAULT)),
            };
            meta::link(fd1, a, fd2, b)
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(linkat: fn(c_int, *const c_char, c_int, *const c_char, c_int) -> c_int)(
                    fd1, from, fd2, to, flags,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `link`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn link(from: *const c_char, to: *const c_char) -> c_int {
    // SAFETY: same contract.
    unsafe { link_impl(libc::AT_FDCWD, from, libc::AT_FDCWD, to, 0) }
}

/// # Safety
/// libc's contract for `linkat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn linkat(
    fd1: c_int,
    from: *const c_char,
    fd2: c_int,
    to: *const c_char,
    flags: c_int,
) -> c_int {
    // SAFETY: same contract.
    unsafe { link_impl(fd1, from, fd2, to, flags) }
}

unsafe fn truncate_impl(path: *const c_char, len: off_t) -> c_int {
    run(
        -1,
        // SAFETY: path is the caller's C string.
        || unsafe { with_path(path, |p| meta::truncate(p, len)) },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(truncate64: fn(*const c_char, off_t) -> c_int)(path, len) }
        },
    )
}

/// # Safety
/// libc's contract for `truncate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn truncate(path: *const c_char, len: off_t) -> c_int {
    // SAFETY: same contract.
    unsafe { truncate_impl(path, len) }
}

/// # Safety
/// libc's contract for `truncate64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn truncate64(path: *const c_char, len: off_t) -> c_int {
    // SAFETY: same contract.
    unsafe { truncate_impl(path, len) }
}

/// # Safety
/// libc's contract for `chdir`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn chdir(path: *const c_char) -> c_int {
    run(
        -1,
        // SAFETY: path is the caller's C string.
        || unsafe { with_path(path, meta::chdir) },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(chdir: fn(*const c_char) -> c_int)(path) }
        },
    )
}

/// # Safety
/// libc's contract for `fchdir`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fchdir(fd: c_int) -> c_int {
    run(
        -1,
        || meta::fchdir(fd),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(fchdir: fn(c_int) -> c_int)(fd) }
        },
    )
}

/// Copies the remote cwd into `buf` (or a malloc'd buffer when NULL).
fn getcwd_remote(buf: *mut c_char, size: size_t) -> Op<*mut c_char> {
    let cwd = meta::remote_cwd()?;
    let need = cwd.len() + 1;
    let out = if buf.is_null() {
        let n = if size == 0 { need } else { size };
        if n < need {
            return Some(Err(libc::ERANGE));
        }
        // SAFETY: malloc is not interposed; n > 0.
        let p = unsafe { libc::malloc(n) }.cast::<c_char>();
        if p.is_null() {
            return Some(Err(libc::ENOMEM));
        }
        p
    } else {
        if size < need {
            return Some(Err(if size == 0 {
                libc::EINVAL
            } else {
                libc::ERANGE
            }));
        }
        buf
    };
    // SAFETY: out is writable for at least need bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(cwd.as_ptr(), out.cast::<u8>(), cwd.len());
        *out.add(cwd.len()) = 0;
    }
    Some(Ok(out))
}

/// # Safety
/// libc's contract for `getcwd`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getcwd(buf: *mut c_char, size: size_t) -> *mut c_char {
    run(
        std::ptr::null_mut(),
        || getcwd_remote(buf, size),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(getcwd: fn(*mut c_char, size_t) -> *mut c_char)(buf, size) }
        },
    )
}

/// # Safety
/// glibc's contract for `__getcwd_chk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __getcwd_chk(
    buf: *mut c_char,
    size: size_t,
    buflen: size_t,
) -> *mut c_char {
    if size > buflen {
        // SAFETY: abort has no preconditions (fortify failure).
        unsafe { libc::abort() };
    }
    // SAFETY: same contract as getcwd.
    unsafe { getcwd(buf, size) }
}

/// # Safety
/// glibc's contract for `get_current_dir_name`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn get_current_dir_name() -> *mut c_char {
    run(
        std::ptr::null_mut(),
        || getcwd_remote(std::ptr::null_mut(), 0),
        || {
            // SAFETY: no arguments.
            unsafe { real!(get_current_dir_name: fn() -> *mut c_char)() }
        },
    )
}

/// Copies `p` into `out` (or a malloc'd buffer when NULL) as a C string.
fn put_path(p: &[u8], out: *mut c_char, max: usize) -> Result<*mut c_char, Errno> {
    if p.len() + 1 > max {
        return Err(libc::ENAMETOOLONG);
    }
    let out = if out.is_null() {
        // SAFETY: malloc is not interposed.
        let m = unsafe { libc::malloc(p.len() + 1) }.cast::<c_char>();
        if m.is_null() {
            return Err(libc::ENOMEM);
        }
        m
    } else {
        out
    };
    // SAFETY: out is writable for p.len() + 1 bytes (PATH_MAX for a caller's buffer).
    unsafe {
        std::ptr::copy_nonoverlapping(p.as_ptr(), out.cast::<u8>(), p.len());
        *out.add(p.len()) = 0;
    }
    Ok(out)
}

/// # Safety
/// libc's contract for `realpath`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char {
    run(
        std::ptr::null_mut(),
        || {
            // SAFETY: path is the caller's C string.
            let r = unsafe { with_path(path, meta::realpath) }?;
            Some(r.and_then(|p| put_path(&p, resolved, libc::PATH_MAX as usize)))
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(realpath: fn(*const c_char, *mut c_char) -> *mut c_char)(path, resolved)
            }
        },
    )
}

/// # Safety
/// glibc's contract for `__realpath_chk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __realpath_chk(
    path: *const c_char,
    resolved: *mut c_char,
    len: size_t,
) -> *mut c_char {
    if len < libc::PATH_MAX as size_t {
        // SAFETY: abort has no preconditions (fortify failure).
        unsafe { libc::abort() };
    }
    // SAFETY: same contract as realpath.
    unsafe { realpath(path, resolved) }
}

/// # Safety
/// glibc's contract for `canonicalize_file_name`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn canonicalize_file_name(path: *const c_char) -> *mut c_char {
    // SAFETY: same contract as realpath with a NULL buffer.
    unsafe { realpath(path, std::ptr::null_mut()) }
}

unsafe fn chown_impl(
    dirfd: c_int,
    path: *const c_char,
    uid: libc::uid_t,
    gid: libc::gid_t,
    flags: c_int,
) -> c_int {
    run(
        -1,
        // SAFETY: path is the caller's C string.
        || unsafe { with_path(path, |p| meta::chown(dirfd, p, uid, gid, flags)) },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(fchownat: fn(c_int, *const c_char, libc::uid_t, libc::gid_t, c_int) -> c_int)(
                    dirfd, path, uid, gid, flags,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `chown`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn chown(path: *const c_char, uid: libc::uid_t, gid: libc::gid_t) -> c_int {
    // SAFETY: same contract.
    unsafe { chown_impl(libc::AT_FDCWD, path, uid, gid, 0) }
}

/// # Safety
/// libc's contract for `lchown`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lchown(path: *const c_char, uid: libc::uid_t, gid: libc::gid_t) -> c_int {
    // SAFETY: same contract.
    unsafe { chown_impl(libc::AT_FDCWD, path, uid, gid, libc::AT_SYMLINK_NOFOLLOW) }
}

/// # Safety
/// libc's contract for `fchownat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fchownat(
    dirfd: c_int,
    path: *const c_char,
    uid: libc::uid_t,
    gid: libc::gid_t,
    flags: c_int,
) -> c_int {
    // SAFETY: same contract.
    unsafe { chown_impl(dirfd, path, uid, gid, flags) }
}

/// # Safety
/// libc's contract for `fchown`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fchown(fd: c_int, uid: libc::uid_t, gid: libc::gid_t) -> c_int {
    run(
        -1,
        || meta::chown(fd, b"", uid, gid, 0),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(fchown: fn(c_int, libc::uid_t, libc::gid_t) -> c_int)(fd, uid, gid) }
        },
    )
}

macro_rules! xattr_path_hooks {
    ($($name:ident($($a:ident: $t:ty),*) list=$list:literal;)*) => {$(
        /// # Safety
        /// libc's contract for this xattr call.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, $($a: $t),*) -> ssize_t {
            run(
                -1,
                // SAFETY: path is the caller's C string.
                || unsafe { with_path(path, |p| meta::xattr(libc::AT_FDCWD, p, $list)) },
                || {
                    // SAFETY: passed on unchanged.
                    unsafe { real!($name: fn(*const c_char, $($t),*) -> ssize_t)(path, $($a),*) }
                },
            )
        }
    )*};
}

xattr_path_hooks! {
    getxattr(name: *const c_char, value: *mut libc::c_void, size: size_t) list=false;
    lgetxattr(name: *const c_char, value: *mut libc::c_void, size: size_t) list=false;
    listxattr(list: *mut c_char, size: size_t) list=true;
    llistxattr(list: *mut c_char, size: size_t) list=true;
}

/// # Safety
/// libc's contract for `fgetxattr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fgetxattr(
    fd: c_int,
    name: *const c_char,
    value: *mut libc::c_void,
    size: size_t,
) -> ssize_t {
    run(
        -1,
        || meta::xattr(fd, b"", false),
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(fgetxattr: fn(c_int, *const c_char, *mut libc::c_void, size_t) -> ssize_t)(
                    fd, name, value, size,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `flistxattr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flistxattr(fd: c_int, list: *mut c_char, size: size_t) -> ssize_t {
    run(
        -1,
        || meta::xattr(fd, b"", true),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(flistxattr: fn(c_int, *mut c_char, size_t) -> ssize_t)(fd, list, size) }
        },
    )
}

unsafe fn mktemp_impl(t: *mut c_char, suffix: c_int, flags: c_int) -> c_int {
    run(
        -1,
        || {
            if t.is_null() || suffix < 0 {
                return Some(Err(libc::EINVAL));
            }
            // SAFETY: t is the caller's writable template.
            unsafe { meta::mktemp(t.cast(), suffix as usize, flags, false) }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(mkostemps64: fn(*mut c_char, c_int, c_int) -> c_int)(t, suffix, flags) }
        },
    )
}

macro_rules! mkstemp_hooks {
    ($($name:ident($($a:ident: $t:ty),*) => ($s:expr, $f:expr);)*) => {$(
        /// # Safety
        /// libc's contract for this `mkstemp` variant.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(t: *mut c_char, $($a: $t),*) -> c_int {
            // SAFETY: same contract.
            unsafe { mktemp_impl(t, $s, $f) }
        }
    )*};
}

mkstemp_hooks! {
    mkstemp() => (0, 0);
    mkstemp64() => (0, 0);
    mkostemp(flags: c_int) => (0, flags);
    mkostemp64(flags: c_int) => (0, flags);
    mkstemps(suffix: c_int) => (suffix, 0);
    mkstemps64(suffix: c_int) => (suffix, 0);
    mkostemps(suffix: c_int, flags: c_int) => (suffix, flags);
    mkostemps64(suffix: c_int, flags: c_int) => (suffix, flags);
}

/// # Safety
/// libc's contract for `mkdtemp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkdtemp(t: *mut c_char) -> *mut c_char {
    run(
        std::ptr::null_mut(),
        || {
            if t.is_null() {
                return Some(Err(libc::EINVAL));
            }
            // SAFETY: t is the caller's writable template.
            unsafe { meta::mktemp(t.cast(), 0, 0, true) }.map(|r| r.map(|_| t))
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(mkdtemp: fn(*mut c_char) -> *mut c_char)(t) }
        },
    )
}

/// # Safety
/// libc's contract for `utime`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utime(path: *const c_char, buf: *const libc::utimbuf) -> c_int {
    run(
        -1,
        || {
            // SAFETY: buf is NULL or a utimbuf (utime's contract).
            let t = (!buf.is_null()).then(|| unsafe { [((*buf).actime, 0), ((*buf).modtime, 0)] });
            // SAFETY: path is the caller's C string.
            unsafe { with_path(path, |p| meta::utimens(libc::AT_FDCWD, p, t, 0)) }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(utime: fn(*const c_char, *const libc::utimbuf) -> c_int)(path, buf) }
        },
    )
}

/// Two timevals as (sec, nsec) pairs, or `None` for "now".
///
/// # Safety
/// `tv` must be NULL or point to two timevals.
unsafe fn timevals(tv: *const libc::timeval) -> Option<[(i64, i64); 2]> {
    if tv.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    let (a, m) = unsafe { (*tv, *tv.add(1)) };
    Some([(a.tv_sec, a.tv_usec * 1000), (m.tv_sec, m.tv_usec * 1000)])
}

/// # Safety
/// libc's contract for `lutimes`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lutimes(path: *const c_char, tv: *const libc::timeval) -> c_int {
    run(
        -1,
        || {
            // SAFETY: tv is NULL or two timevals (lutimes's contract).
            let t = unsafe { timevals(tv) };
            // SAFETY: path is the caller's C string.
            unsafe {
                with_path(path, |p| {
                    meta::utimens(libc::AT_FDCWD, p, t, libc::AT_SYMLINK_NOFOLLOW)
                })
            }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(lutimes: fn(*const c_char, *const libc::timeval) -> c_int)(path, tv) }
        },
    )
}

/// # Safety
/// libc's contract for `futimes`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn futimes(fd: c_int, tv: *const libc::timeval) -> c_int {
    run(
        -1,
        || {
            // SAFETY: tv is NULL or two timevals (futimes's contract).
            let t = unsafe { timevals(tv) };
            meta::utimens(fd, b"", t, 0)
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(futimes: fn(c_int, *const libc::timeval) -> c_int)(fd, tv) }
        },
    )
}

/// Special files (FIFOs, devices) cannot be made on the submit host.
unsafe fn mknod_impl(dirfd: c_int, path: *const c_char, mode: mode_t, dev: libc::dev_t) -> c_int {
    run(
        -1,
        || {
            // SAFETY: path is the caller's C string.
            unsafe { with_path(path, |p| meta::refuse_special(dirfd, p)) }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(mknodat: fn(c_int, *const c_char, mode_t, libc::dev_t) -> c_int)(
                    dirfd, path, mode, dev,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `mknod`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mknod(path: *const c_char, mode: mode_t, dev: libc::dev_t) -> c_int {
    // SAFETY: same contract.
    unsafe { mknod_impl(libc::AT_FDCWD, path, mode, dev) }
}

/// # Safety
/// libc's contract for `mknodat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mknodat(
    dirfd: c_int,
    path: *const c_char,
    mode: mode_t,
    dev: libc::dev_t,
) -> c_int {
    // SAFETY: same contract.
    unsafe { mknod_impl(dirfd, path, mode, dev) }
}

/// # Safety
/// libc's contract for `mkfifo`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkfifo(path: *const c_char, mode: mode_t) -> c_int {
    // SAFETY: same contract.
    unsafe { mknod_impl(libc::AT_FDCWD, path, mode | libc::S_IFIFO, 0) }
}

/// # Safety
/// libc's contract for `mkfifoat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkfifoat(dirfd: c_int, path: *const c_char, mode: mode_t) -> c_int {
    // SAFETY: same contract.
    unsafe { mknod_impl(dirfd, path, mode | libc::S_IFIFO, 0) }
}
