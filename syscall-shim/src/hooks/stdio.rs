//! Hooks on stdio: `fopen`, `freopen` and `fdopen` of remote files.

use std::ffi::{c_char, c_int};

use libc::FILE;

use super::arg;
use crate::ops::{run, stdio};
use crate::real;

unsafe fn fopen_impl(path: *const c_char, mode: *const c_char) -> *mut FILE {
    run(
        std::ptr::null_mut(),
        || {
            // SAFETY: both are the caller's C strings.
            match unsafe { (arg(path), arg(mode)) } {
                (Ok(p), Ok(m)) => stdio::fopen(p, m),
                _ => Some(Err(libc::EFAULT)),
            }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(fopen64: fn(*const c_char, *const c_char) -> *mut FILE)(path, mode) }
        },
    )
}

/// # Safety
/// libc's contract for `fopen`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut FILE {
    // SAFETY: same contract.
    unsafe { fopen_impl(path, mode) }
}

/// # Safety
/// libc's contract for `fopen64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut FILE {
    // SAFETY: same contract.
    unsafe { fopen_impl(path, mode) }
}

unsafe fn freopen_impl(path: *const c_char, mode: *const c_char, stream: *mut FILE) -> *mut FILE {
    run(
        std::ptr::null_mut(),
        || {
            if path.is_null() || stream.is_null() {
                return None;
            }
            // SAFETY: both are the caller's C strings; stream is a valid FILE.
            match unsafe { (arg(path), arg(mode)) } {
                // SAFETY: stream is the caller's valid FILE.
                (Ok(p), Ok(m)) => unsafe { stdio::freopen(p, m, stream) },
                _ => Some(Err(libc::EFAULT)),
            }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(freopen64: fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE)(
                    path, mode, stream,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `freopen`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn freopen(
    path: *const c_char,
    mode: *const c_char,
    stream: *mut FILE,
) -> *mut FILE {
    // SAFETY: same contract.
    unsafe { freopen_impl(path, mode, stream) }
}

/// # Safety
/// libc's contract for `freopen64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn freopen64(
    path: *const c_char,
    mode: *const c_char,
    stream: *mut FILE,
) -> *mut FILE {
    // SAFETY: same contract.
    unsafe { freopen_impl(path, mode, stream) }
}

/// # Safety
/// libc's contract for `fdopen`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    run(
        std::ptr::null_mut(),
        || {
            // SAFETY: mode is the caller's C string.
            match unsafe { arg(mode) } {
                Ok(m) => stdio::fdopen(fd, m),
                Err(e) => Some(Err(e)),
            }
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(fdopen: fn(c_int, *const c_char) -> *mut FILE)(fd, mode) }
        },
    )
}
