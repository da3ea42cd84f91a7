//! Hooks on directory streams: remote directories get the shim's own `DIR`
//! objects; glibc's are passed through untouched.

use std::ffi::{c_char, c_int, c_long};

use libc::{DIR, size_t, ssize_t};

use super::arg;
use crate::ops::{dir, run};
use crate::{real, sys};

/// # Safety
/// libc's contract for `opendir`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn opendir(path: *const c_char) -> *mut DIR {
    run(
        std::ptr::null_mut(),
        || {
            // SAFETY: path is the caller's C string.
            match unsafe { arg(path) } {
                Ok(p) => dir::opendir(p),
                Err(e) => Some(Err(e)),
            }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(opendir: fn(*const c_char) -> *mut DIR)(path) }
        },
    )
}

/// # Safety
/// libc's contract for `fdopendir`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdopendir(fd: c_int) -> *mut DIR {
    run(
        std::ptr::null_mut(),
        || dir::fdopendir(fd),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(fdopendir: fn(c_int) -> *mut DIR)(fd) }
        },
    )
}

unsafe fn readdir_impl(d: *mut DIR, is64: bool) -> *mut libc::dirent64 {
    run(
        std::ptr::null_mut(),
        || {
            let r = dir::ours(d)?;
            // SAFETY: r is a live registered stream.
            Some(unsafe { dir::readdir(r) })
        },
        || {
            // SAFETY: passed on unchanged (glibc's stream).
            unsafe {
                if is64 {
                    real!(readdir64: fn(*mut DIR) -> *mut libc::dirent64)(d)
                } else {
                    real!(readdir: fn(*mut DIR) -> *mut libc::dirent64)(d)
                }
            }
        },
    )
}

/// # Safety
/// libc's contract for `readdir` (x86-64: `dirent` and `dirent64` agree).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readdir(d: *mut DIR) -> *mut libc::dirent64 {
    // SAFETY: same contract.
    unsafe { readdir_impl(d, false) }
}

/// # Safety
/// libc's contract for `readdir64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readdir64(d: *mut DIR) -> *mut libc::dirent64 {
    // SAFETY: same contract.
    unsafe { readdir_impl(d, true) }
}

/// # Safety
/// libc's contract for `closedir`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn closedir(d: *mut DIR) -> c_int {
    run(
        -1,
        || dir::ours(d).map(dir::closedir),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(closedir: fn(*mut DIR) -> c_int)(d) }
        },
    )
}

/// # Safety
/// libc's contract for `rewinddir`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rewinddir(d: *mut DIR) {
    run(
        (),
        || {
            let r = dir::ours(d)?;
            // SAFETY: r is a live registered stream.
            unsafe { dir::rewind(r) };
            Some(Ok(()))
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(rewinddir: fn(*mut DIR) -> ())(d) }
        },
    )
}

/// # Safety
/// libc's contract for `dirfd`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dirfd(d: *mut DIR) -> c_int {
    run(
        -1,
        || {
            let r = dir::ours(d)?;
            // SAFETY: r is a live registered stream.
            Some(Ok(unsafe { dir::dirfd(r) }))
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(dirfd: fn(*mut DIR) -> c_int)(d) }
        },
    )
}

/// # Safety
/// libc's contract for `telldir`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn telldir(d: *mut DIR) -> c_long {
    run(
        -1,
        || {
            let r = dir::ours(d)?;
            // SAFETY: r is a live registered stream.
            Some(Ok(unsafe { dir::tell(r) }))
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(telldir: fn(*mut DIR) -> c_long)(d) }
        },
    )
}

/// # Safety
/// libc's contract for `seekdir`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seekdir(d: *mut DIR, loc: c_long) {
    run(
        (),
        || {
            let r = dir::ours(d)?;
            // SAFETY: r is a live registered stream.
            unsafe { dir::seek(r, loc) };
            Some(Ok(()))
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(seekdir: fn(*mut DIR, c_long) -> ())(d, loc) }
        },
    )
}

/// # Safety
/// libc's contract for `getdents64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getdents64(fd: c_int, buf: *mut libc::c_void, count: size_t) -> ssize_t {
    run(
        -1,
        || {
            // SAFETY: buf is writable for count bytes (getdents64's contract).
            unsafe { dir::getdents64(fd, buf.cast(), count) }
        },
        || {
            // SAFETY: passed on unchanged.
            match unsafe {
                sys::sc(
                    libc::SYS_getdents64,
                    [fd as usize, buf as usize, count, 0, 0, 0],
                )
            } {
                Ok(n) => n as ssize_t,
                Err(e) => {
                    sys::set_errno(e);
                    -1
                }
            }
        },
    )
}

type Filter = Option<unsafe extern "C" fn(*const libc::dirent64) -> c_int>;
type Compar = Option<unsafe extern "C" fn(*const libc::c_void, *const libc::c_void) -> c_int>;

/// `scandir` of a remote directory; the filter and comparison run outside
/// the shim's guard (they may call hooked functions themselves).
///
/// # Safety
/// libc's contract for `scandir`.
unsafe fn scandir_impl(
    path: *const c_char,
    list: *mut *mut *mut libc::dirent64,
    filter: Filter,
    compar: Compar,
    is64: bool,
) -> c_int {
    const LOCAL: c_int = -2;
    let mut got = Vec::new();
    let r = run(
        -1,
        || {
            // SAFETY: path is the caller's C string.
            let p = match unsafe { arg(path) } {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            Some(dir::collect(p)?.map(|v| {
                got = v;
                0
            }))
        },
        || LOCAL,
    );
    if r == LOCAL {
        type F = unsafe extern "C" fn(
            *const c_char,
            *mut *mut *mut libc::dirent64,
            Filter,
            Compar,
        ) -> c_int;
        // SAFETY: passed on unchanged.
        return unsafe {
            if is64 {
                real!(scandir64 as F)(path, list, filter, compar)
            } else {
                real!(scandir as F)(path, list, filter, compar)
            }
        };
    }
    if r < 0 {
        return r;
    }
    let mut kept: Vec<*mut libc::dirent64> = Vec::with_capacity(got.len());
    for e in got {
        // SAFETY: filter is the caller's function; e is a valid entry.
        if filter.is_none_or(|f| unsafe { f(e) } != 0) {
            kept.push(e);
        } else {
            // SAFETY: e came from malloc in dir::collect.
            unsafe { libc::free(e.cast()) };
        }
    }
    let n = kept.len();
    let size = n.max(1) * std::mem::size_of::<*mut libc::dirent64>();
    // SAFETY: malloc is not interposed.
    let arr = unsafe { libc::malloc(size) }.cast::<*mut libc::dirent64>();
    if arr.is_null() {
        for e in kept {
            // SAFETY: e came from malloc.
            unsafe { libc::free(e.cast()) };
        }
        sys::set_errno(libc::ENOMEM);
        return -1;
    }
    // SAFETY: arr has room for n pointers; compar is the caller's comparison of two entry pointers.
    unsafe {
        std::ptr::copy_nonoverlapping(kept.as_ptr(), arr, n);
        if let Some(c) = compar {
            libc::qsort(
                arr.cast(),
                n,
                std::mem::size_of::<*mut libc::dirent64>(),
                Some(c),
            );
        }
        *list = arr;
    }
    n as c_int
}

/// # Safety
/// libc's contract for `scandir`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn scandir(
    path: *const c_char,
    list: *mut *mut *mut libc::dirent64,
    filter: Filter,
    compar: Compar,
) -> c_int {
    // SAFETY: same contract.
    unsafe { scandir_impl(path, list, filter, compar, false) }
}

/// # Safety
/// libc's contract for `scandir64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn scandir64(
    path: *const c_char,
    list: *mut *mut *mut libc::dirent64,
    filter: Filter,
    compar: Compar,
) -> c_int {
    // SAFETY: same contract.
    unsafe { scandir_impl(path, list, filter, compar, true) }
}

/// `readdir_r` on the shim's streams copies the entry into the caller's
/// buffer; returns an error number, not -1.
///
/// # Safety
/// libc's contract for `readdir_r`.
unsafe fn readdir_r_impl(
    d: *mut DIR,
    entry: *mut libc::dirent64,
    result: *mut *mut libc::dirent64,
    is64: bool,
) -> c_int {
    const LOCAL: c_int = -1;
    let r = run(
        libc::EIO,
        || {
            let rd = dir::ours(d)?;
            // SAFETY: rd is a live registered stream.
            Some(Ok(match unsafe { dir::readdir(rd) } {
                Ok(e) => {
                    // SAFETY: entry and result are the caller's buffers; e is NULL or a valid entry.
                    unsafe {
                        if e.is_null() {
                            *result = std::ptr::null_mut();
                        } else {
                            std::ptr::copy_nonoverlapping(e, entry, 1);
                            *result = entry;
                        }
                    }
                    0
                }
                Err(e) => e,
            }))
        },
        || LOCAL,
    );
    if r != LOCAL {
        return r;
    }
    type F = unsafe extern "C" fn(*mut DIR, *mut libc::dirent64, *mut *mut libc::dirent64) -> c_int;
    // SAFETY: passed on unchanged (glibc's stream).
    unsafe {
        if is64 {
            real!(readdir64_r as F)(d, entry, result)
        } else {
            real!(readdir_r as F)(d, entry, result)
        }
    }
}

/// # Safety
/// libc's contract for `readdir_r`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readdir_r(
    d: *mut DIR,
    entry: *mut libc::dirent64,
    result: *mut *mut libc::dirent64,
) -> c_int {
    // SAFETY: same contract.
    unsafe { readdir_r_impl(d, entry, result, false) }
}

/// # Safety
/// libc's contract for `readdir64_r`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readdir64_r(
    d: *mut DIR,
    entry: *mut libc::dirent64,
    result: *mut *mut libc::dirent64,
) -> c_int {
    // SAFETY: same contract.
    unsafe { readdir_r_impl(d, entry, result, true) }
}
