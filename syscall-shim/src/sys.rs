//! Raw system calls: the shim's own I/O never goes through libc entry points
//! that it interposes (`libc::syscall` is not one of them).

use proto::fileop::Errno;
use std::ffi::c_long;

/// The calling thread's `errno`.
pub fn errno() -> Errno {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(e: Errno) {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() = e }
}

/// `syscall(nr, a..)` with the result as `Result` (the errno on failure).
///
/// # Safety
/// The arguments must be valid for system call `nr` (pointers point to
/// memory of the size the kernel expects).
pub unsafe fn sc(nr: c_long, a: [usize; 6]) -> Result<usize, Errno> {
    // SAFETY: the caller guarantees the arguments fit the system call.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 { Err(errno()) } else { Ok(r as usize) }
}

/// `syscall` that retries on `EINTR`.
///
/// # Safety
/// As for [`sc`].
pub unsafe fn sc_retry(nr: c_long, a: [usize; 6]) -> Result<usize, Errno> {
    loop {
        // SAFETY: forwarded from the caller.
        match unsafe { sc(nr, a) } {
            Err(libc::EINTR) => continue,
            r => return r,
        }
    }
}

pub fn getpid() -> i32 {
    // SAFETY: getpid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_getpid) as i32 }
}

pub fn close(fd: i32) {
    // SAFETY: closing a descriptor number has no memory-safety requirement.
    let _ = unsafe { sc(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]) };
}

/// Writes all of `buf` to `fd`.
pub fn write_all(fd: i32, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        // SAFETY: buf is a valid readable slice of buf.len() bytes.
        let n = unsafe {
            sc_retry(
                libc::SYS_write,
                [fd as usize, buf.as_ptr() as usize, buf.len(), 0, 0, 0],
            )
        }?;
        if n == 0 {
            return Err(libc::EIO);
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// `read(2)` into a raw buffer.
///
/// # Safety
/// `buf` must be writable for `len` bytes.
pub unsafe fn read(fd: i32, buf: *mut u8, len: usize) -> Result<usize, Errno> {
    // SAFETY: forwarded from the caller.
    unsafe { sc_retry(libc::SYS_read, [fd as usize, buf as usize, len, 0, 0, 0]) }
}

/// `fstat(2)`.
pub fn fstat(fd: i32) -> Result<libc::stat, Errno> {
    // SAFETY: an all-zero struct stat is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a writable struct stat.
    unsafe {
        sc(
            libc::SYS_fstat,
            [fd as usize, &mut st as *mut _ as usize, 0, 0, 0, 0],
        )
    }?;
    Ok(st)
}

/// `fcntl(2)` with an integer argument.
pub fn fcntl(fd: i32, cmd: i32, arg: usize) -> Result<usize, Errno> {
    // SAFETY: only called with integer-argument commands.
    unsafe { sc(libc::SYS_fcntl, [fd as usize, cmd as usize, arg, 0, 0, 0]) }
}

/// `dup3`/`dup2` semantics via raw calls.
pub fn dup2(old: i32, new: i32, cloexec: bool) -> Result<i32, Errno> {
    if old == new {
        fcntl(old, libc::F_GETFD, 0)?;
        return Ok(new);
    }
    let fl = if cloexec { libc::O_CLOEXEC as usize } else { 0 };
    // SAFETY: dup3 takes integers only.
    unsafe { sc(libc::SYS_dup3, [old as usize, new as usize, fl, 0, 0, 0]) }.map(|r| r as i32)
}

/// The process's real current directory.
pub fn real_cwd() -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf is writable for its length.
    match unsafe {
        sc(
            libc::SYS_getcwd,
            [buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0, 0],
        )
    } {
        Ok(n) => {
            buf.truncate(n.saturating_sub(1));
            buf
        }
        Err(_) => Vec::new(),
    }
}

/// Every open fd of this process (from `/proc/self/fd`, read with `getdents64`).
pub fn open_fds() -> Vec<i32> {
    let mut out = Vec::new();
    let path = b"/proc/self/fd\0";
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: path is NUL-terminated.
    let dfd = match unsafe {
        sc(
            libc::SYS_openat,
            [
                libc::AT_FDCWD as usize,
                path.as_ptr() as usize,
                flags as usize,
                0,
                0,
                0,
            ],
        )
    } {
        Ok(fd) => fd as i32,
        Err(_) => return out,
    };
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: buf is writable for its length.
        let n = match unsafe {
            sc(
                libc::SYS_getdents64,
                [dfd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
            )
        } {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut off = 0;
        while off + 19 < n {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = &buf[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(fd) = std::str::from_utf8(name)
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
                && fd != dfd
            {
                out.push(fd);
            }
            off += reclen;
        }
    }
    close(dfd);
    out
}
