//! stdio on remote files: `fopen`/`fdopen`/`freopen` give `fopencookie`
//! streams whose functions call the shim's ops, with `_fileno` set to the
//! vfd so `fileno()` works.

use std::ffi::{c_char, c_int, c_void};

use proto::fileop::Errno;

use super::{Route, SHIM, file, guarded};
use crate::sys;

type Op<T> = Option<Result<T, Errno>>;

/// Offset of `_fileno` in glibc's `struct _IO_FILE` on x86-64.
const FILENO_OFFSET: usize = 112;

#[repr(C)]
struct CookieFns {
    read: Option<unsafe extern "C" fn(*mut c_void, *mut c_char, usize) -> isize>,
    write: Option<unsafe extern "C" fn(*mut c_void, *const c_char, usize) -> isize>,
    seek: Option<unsafe extern "C" fn(*mut c_void, *mut i64, c_int) -> c_int>,
    close: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
}

unsafe extern "C" {
    fn fopencookie(cookie: *mut c_void, mode: *const c_char, fns: CookieFns) -> *mut libc::FILE;
}

fn cookie_fd(c: *mut c_void) -> i32 {
    c as usize as i32
}

unsafe extern "C" fn ck_read(c: *mut c_void, buf: *mut c_char, n: usize) -> isize {
    let fd = cookie_fd(c);
    // SAFETY: stdio gives a buffer writable for n bytes.
    let r = guarded(|| unsafe { file::read(fd, buf.cast(), n) }).flatten();
    match r {
        Some(Ok(k)) => k,
        Some(Err(e)) => {
            sys::set_errno(e);
            -1
        }
        // SAFETY: as above.
        None => unsafe { sys::read(fd, buf.cast(), n) }
            .map(|k| k as isize)
            .unwrap_or(-1),
    }
}

unsafe extern "C" fn ck_write(c: *mut c_void, buf: *const c_char, n: usize) -> isize {
    let fd = cookie_fd(c);
    if let Some(Some(Err(e))) = guarded(|| file::write_check(fd)) {
        sys::set_errno(e);
        return -1;
    }
    // SAFETY: stdio gives a buffer readable for n bytes.
    let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n) };
    match sys::write_all(fd, data) {
        Ok(()) => n as isize,
        Err(e) => {
            sys::set_errno(e);
            -1
        }
    }
}

unsafe extern "C" fn ck_seek(c: *mut c_void, off: *mut i64, whence: c_int) -> c_int {
    let fd = cookie_fd(c);
    // SAFETY: stdio passes a valid offset pointer.
    let o = unsafe { *off };
    match guarded(|| file::lseek(fd, o, whence)).flatten() {
        Some(Ok(n)) => {
            // SAFETY: as above.
            unsafe { *off = n };
            0
        }
        Some(Err(e)) => {
            sys::set_errno(e);
            -1
        }
        None => {
            sys::set_errno(libc::ESPIPE);
            -1
        }
    }
}

unsafe extern "C" fn ck_close(c: *mut c_void) -> c_int {
    let fd = cookie_fd(c);
    let _ = guarded(|| file::close(fd));
    sys::close(fd);
    0
}

/// Open flags for an `fopen` mode string.
pub fn mode_flags(mode: &[u8]) -> Result<(i32, &'static [u8]), Errno> {
    let plus = mode.contains(&b'+');
    let (mut flags, norm): (i32, &'static [u8]) = match (mode.first(), plus) {
        (Some(b'r'), false) => (libc::O_RDONLY, b"r\0"),
        (Some(b'r'), true) => (libc::O_RDWR, b"r+\0"),
        (Some(b'w'), false) => (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, b"w\0"),
        (Some(b'w'), true) => (libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, b"w+\0"),
        (Some(b'a'), false) => (libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND, b"a\0"),
        (Some(b'a'), true) => (libc::O_RDWR | libc::O_CREAT | libc::O_APPEND, b"a+\0"),
        _ => return Err(libc::EINVAL),
    };
    let opts = mode.split(|&b| b == b',').next().unwrap_or_default();
    if opts.contains(&b'x') {
        flags |= libc::O_EXCL;
    }
    if opts.contains(&b'e') {
        flags |= libc::O_CLOEXEC;
    }
    Ok((flags, norm))
}

/// A cookie stream over remote `fd`.
fn cookie_file(fd: i32, norm: &'static [u8]) -> Result<*mut libc::FILE, Errno> {
    let fns = CookieFns {
        read: Some(ck_read),
        write: Some(ck_write),
        seek: Some(ck_seek),
        close: Some(ck_close),
    };
    // SAFETY: norm is NUL-terminated; the functions match the cookie_io_functions_t signatures.
    let f = unsafe { fopencookie(fd as usize as *mut c_void, norm.as_ptr().cast(), fns) };
    if f.is_null() {
        return Err(libc::ENOMEM);
    }
    // SAFETY: f is a glibc FILE; _fileno is the int at FILENO_OFFSET of struct _IO_FILE on x86-64.
    unsafe { f.cast::<u8>().add(FILENO_OFFSET).cast::<c_int>().write(fd) };
    Ok(f)
}

/// `fopen(path, mode)` of a remote path.
pub fn fopen(path: &[u8], mode: &[u8]) -> Op<*mut libc::FILE> {
    let (flags, norm) = match mode_flags(mode) {
        Ok(x) => x,
        Err(e) => return Some(Err(e)),
    };
    let fd = file::open(libc::AT_FDCWD, path, flags, 0o666)?;
    Some(fd.and_then(|fd| {
        cookie_file(fd, norm).inspect_err(|_| {
            let _ = file::close(fd);
            sys::close(fd);
        })
    }))
}

/// `fdopen(fd, mode)` of a remote fd.
pub fn fdopen(fd: i32, mode: &[u8]) -> Op<*mut libc::FILE> {
    {
        let mut s = SHIM.lock();
        if !s.remote(fd) {
            return None;
        }
        if s.vfds.get(fd)?.stream {
            // Raw reads of the socket: an ordinary stdio stream works.
            return None;
        }
    }
    let norm = match mode_flags(mode) {
        Ok((_, n)) => n,
        Err(e) => return Some(Err(e)),
    };
    Some(cookie_file(fd, norm))
}

/// `freopen(path, mode, stream)` to a remote path: the new file takes the
/// stream's fd number (a read-only one as a stream, so glibc's internal
/// reads work), and the stream keeps its buffers.
///
/// # Safety
/// `stream` must be a valid FILE.
pub unsafe fn freopen(path: &[u8], mode: &[u8], stream: *mut libc::FILE) -> Op<*mut libc::FILE> {
    let (flags, _) = match mode_flags(mode) {
        Ok(x) => x,
        Err(e) => return Some(Err(e)),
    };
    {
        let mut s = SHIM.lock();
        if s.route(libc::AT_FDCWD, path) == Route::Local && crate::path::fd_alias(path).is_none() {
            return None;
        }
    }
    // SAFETY: stream is valid (the caller's contract).
    let old = unsafe { *stream.cast::<u8>().add(FILENO_OFFSET).cast::<c_int>() };
    // SAFETY: as above; fflush is not interposed.
    unsafe { libc::fflush(stream) };
    let fd = match file::open(libc::AT_FDCWD, path, flags & !libc::O_CLOEXEC, 0o666)? {
        Ok(fd) => fd,
        Err(e) => return Some(Err(e)),
    };
    if old < 0 || old == fd {
        return Some(Err(libc::EBADF));
    }
    let r = file::dup3(fd, old, 0, true).unwrap_or_else(|| sys::dup2(fd, old, false));
    let _ = file::close(fd);
    sys::close(fd);
    if let Err(e) = r {
        return Some(Err(e));
    }
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        let mut s = SHIM.lock();
        if let Some(v) = s.vfds.get(old) {
            let h = v.h;
            if let Ok((proto::shim::ShimReply::Ok, _)) =
                s.request(&proto::shim::ShimRequest::Stream { h })
                && let Some(v) = s.vfds.get_mut(old)
            {
                v.stream = true;
            }
        }
    }
    // SAFETY: stream is valid; clearerr is not interposed.
    unsafe { libc::clearerr(stream) };
    Some(Ok(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fopen_modes_map_to_open_flags() {
        assert_eq!(mode_flags(b"r").unwrap().0, libc::O_RDONLY);
        assert_eq!(mode_flags(b"rb").unwrap().0, libc::O_RDONLY);
        assert_eq!(mode_flags(b"r+b").unwrap().0, libc::O_RDWR);
        assert_eq!(
            mode_flags(b"wbe").unwrap().0,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC
        );
        assert_eq!(
            mode_flags(b"ax").unwrap().0,
            libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_EXCL
        );
        assert_eq!(mode_flags(b"a+").unwrap().1, b"a+\0");
        assert_eq!(mode_flags(b"q"), Err(libc::EINVAL));
        assert_eq!(mode_flags(b""), Err(libc::EINVAL));
    }
}
