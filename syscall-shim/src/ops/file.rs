//! File descriptor ops: open, close, read (with read-ahead), write
//! (into the placeholder), positioned I/O, lseek, dup, fcntl, sync.

use proto::Handle;
use proto::fileop::{Errno, FileOp, FileReply, Flock};

use super::{Route, SHIM, Shim, unexpected};
use crate::path;
use crate::sys;
use crate::vfd::{Kind, RA_MAX, RA_MIN};

/// Largest `Read`/`Pread`/`Pwrite` in one frame.
const CHUNK: usize = 8 << 20;

type Op<T> = Option<Result<T, Errno>>;

/// `openat(dirfd, path, flags, mode)`.
pub fn open(dirfd: i32, path: &[u8], flags: i32, mode: u32) -> Op<i32> {
    let mut s = SHIM.lock();
    if let Some(n) = path::fd_alias(path) {
        if s.ensure().is_err() || s.vfd(n).is_none() {
            return None;
        }
        return Some(dup_fd(&mut s, n, 0, flags & libc::O_CLOEXEC != 0));
    }
    let Route::Remote { at, path } = s.route(dirfd, path) else {
        return None;
    };
    Some(open_remote(&mut s, at, path, flags, mode))
}

pub fn open_remote(
    s: &mut Shim,
    at: Option<Handle>,
    path: Vec<u8>,
    flags: i32,
    mode: u32,
) -> Result<i32, Errno> {
    let (reply, fd) = s.call_fd(FileOp::Open {
        at,
        path,
        flags,
        mode,
    })?;
    let FileReply::Opened { h, stat } = reply else {
        if let Some(f) = fd {
            sys::close(f);
        }
        return unexpected(reply);
    };
    let Some(fd) = fd else {
        crate::shim_log!("Opened without a placeholder fd");
        let _ = s.call(FileOp::Close { h });
        return Err(libc::EIO);
    };
    s.install(fd, h, flags, stat.mode)
}

/// `close(fd)`: flushes what this process wrote, settles read-ahead of a
/// shared description, then closes the placeholder (the starter closes the
/// handle when it sees the last copy go).
pub fn close(fd: i32) -> Op<i32> {
    let mut s = SHIM.lock();
    if s.chan.fd == fd && s.chan.live() || fd == crate::log::fd() && fd >= 0 {
        // The shim's own descriptors stay open; the job sees a success.
        return Some(Ok(0));
    }
    if s.chan.fd == fd {
        // A forked child closing its copy of the parent's channel.
        s.chan.fd = -1;
    }
    s.vfds.get(fd)?;
    if s.chan.live() {
        let v = s.vfd(fd)?;
        let (written, shared) = (v.written, v.shared);
        if shared && let Err(e) = s.settle(fd) {
            return Some(Err(e));
        }
        if written && let Err(e) = s.flush() {
            return Some(Err(e));
        }
    }
    s.vfds.remove(fd);
    None
}

/// `read(fd, buf, n)`.
///
/// # Safety
/// `buf` must be writable for `n` bytes.
pub unsafe fn read(fd: i32, buf: *mut u8, n: usize) -> Op<isize> {
    let mut s = SHIM.lock();
    if s.vfds.get(fd).is_none() || s.ensure().is_err() {
        return None;
    }
    let v = s.vfd_fast(fd)?;
    if v.stream {
        return None;
    }
    if v.dir {
        return Some(Err(libc::EISDIR));
    }
    if !v.readable() {
        return Some(Err(libc::EBADF));
    }
    // SAFETY: forwarded from the caller.
    match unsafe { read_remote(&mut s, fd, buf, n) } {
        // The fd no longer is our placeholder: it is a local file now.
        Err(_) if s.vfd(fd).is_none() => None,
        r => Some(r),
    }
}

/// # Safety
/// `buf` must be writable for `n` bytes; `fd` is remote and readable.
pub unsafe fn read_remote(s: &mut Shim, fd: i32, buf: *mut u8, n: usize) -> Result<isize, Errno> {
    let Some(h) = s.vfds.get(fd).map(|v| v.h) else {
        return Err(libc::EBADF);
    };
    s.settle_others(fd, h)?;
    let ahead = {
        let v = s.vfds.get(fd).ok_or(libc::EBADF)?;
        v.flags & libc::O_ACCMODE == libc::O_RDONLY && v.kind != Kind::Other
    };
    if ahead && s.vfds.get(fd).map(|v| v.kind) == Some(Kind::Unknown) {
        let regular = match s.call(FileOp::Fstat { h })? {
            FileReply::Stat(st) => st.mode & libc::S_IFMT == libc::S_IFREG,
            r => return unexpected(r),
        };
        if let Some(v) = s.vfds.get_mut(fd) {
            v.kind = if regular { Kind::Regular } else { Kind::Other };
        }
        if !regular {
            // SAFETY: forwarded from the caller.
            return unsafe { read_remote(s, fd, buf, n) };
        }
    }
    let mut done = 0usize;
    while done < n {
        let v = s.vfds.get_mut(fd).ok_or(libc::EBADF)?;
        let left = v.ra_left();
        if left > 0 {
            let k = left.min(n - done);
            // SAFETY: buf has n writable bytes; the source range is inside v.ra.
            unsafe { std::ptr::copy_nonoverlapping(v.ra.as_ptr().add(v.ra_pos), buf.add(done), k) };
            v.ra_pos += k;
            done += k;
            if v.ra_left() == 0 {
                v.ra.clear();
                v.ra_pos = 0;
            }
            continue;
        }
        let want = n - done;
        let buffered = ahead && want < RA_MAX as usize;
        let len = if buffered {
            want.max(v.ra_win as usize)
        } else {
            want.min(CHUNK)
        };
        if buffered {
            v.ra_win = (v.ra_win.saturating_mul(2)).min(RA_MAX);
        }
        let data = match s.call(FileOp::Read { h, len: len as u32 })? {
            FileReply::Data(d) => d,
            r => return unexpected(r),
        };
        let got = data.len();
        if got == 0 {
            break;
        }
        if buffered {
            let v = s.vfds.get_mut(fd).ok_or(libc::EBADF)?;
            v.ra = data;
            v.ra_pos = 0;
        } else {
            let k = got.min(want);
            // SAFETY: buf has n writable bytes and k <= n - done.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.add(done), k) };
            done += k;
        }
        if got < len {
            // End of file: hand out what there is.
            if buffered {
                continue_short(s, fd, buf, n, &mut done);
            }
            break;
        }
    }
    if done == 0
        && let Some(v) = s.vfds.get_mut(fd)
    {
        v.ra_win = RA_MIN;
    }
    Ok(done as isize)
}

fn continue_short(s: &mut Shim, fd: i32, buf: *mut u8, n: usize, done: &mut usize) {
    if let Some(v) = s.vfds.get_mut(fd) {
        let k = v.ra_left().min(n - *done);
        // SAFETY: buf has n writable bytes (read_remote's contract); the range is inside v.ra.
        unsafe { std::ptr::copy_nonoverlapping(v.ra.as_ptr().add(v.ra_pos), buf.add(*done), k) };
        v.ra_pos += k;
        *done += k;
        if v.ra_left() == 0 {
            v.ra.clear();
            v.ra_pos = 0;
        }
    }
}

/// `pread(fd, buf, n, off)`.
///
/// # Safety
/// `buf` must be writable for `n` bytes.
pub unsafe fn pread(fd: i32, buf: *mut u8, n: usize, off: i64) -> Op<isize> {
    let mut s = SHIM.lock();
    if s.vfds.get(fd).is_none() || s.ensure().is_err() {
        return None;
    }
    let v = s.vfd_fast(fd)?;
    if v.stream {
        return Some(Err(libc::ESPIPE));
    }
    if v.dir {
        return Some(Err(libc::EISDIR));
    }
    if !v.readable() {
        return Some(Err(libc::EBADF));
    }
    if off < 0 {
        return Some(Err(libc::EINVAL));
    }
    let h = v.h;
    let mut done = 0usize;
    while done < n {
        let len = (n - done).min(CHUNK);
        let data = match s.call(FileOp::Pread {
            h,
            len: len as u32,
            off: off + done as i64,
        }) {
            Ok(FileReply::Data(d)) => d,
            Ok(r) => return Some(unexpected(r)),
            // The fd no longer is our placeholder: it is a local file now.
            Err(_) if done == 0 && s.vfd(fd).is_none() => return None,
            Err(e) if done == 0 => return Some(Err(e)),
            Err(_) => break,
        };
        let k = data.len().min(len);
        // SAFETY: buf has n writable bytes and k <= n - done.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.add(done), k) };
        done += k;
        if k < len {
            break;
        }
    }
    Some(Ok(done as isize))
}

/// `write(fd, ...)` on a remote fd: checks it and marks it written; the
/// hook then writes into the placeholder.
pub fn write_check(fd: i32) -> Op<isize> {
    let mut s = SHIM.lock();
    if s.vfds.get(fd).is_none() || s.ensure().is_err() {
        return None;
    }
    let v = s.vfd(fd)?;
    if v.sock {
        // Socket bytes go to the peer; nothing to flush on close.
        return None;
    }
    if v.stream || v.dir || !v.writable() {
        return Some(Err(libc::EBADF));
    }
    v.written = true;
    None
}

/// `pwrite(fd, data, off)`.
pub fn pwrite(fd: i32, data: &[u8], off: i64) -> Op<isize> {
    let mut s = SHIM.lock();
    if s.vfds.get(fd).is_none() || s.ensure().is_err() {
        return None;
    }
    let v = s.vfd(fd)?;
    if v.stream {
        return Some(Err(libc::ESPIPE));
    }
    if v.dir || !v.writable() {
        return Some(Err(libc::EBADF));
    }
    if off < 0 {
        return Some(Err(libc::EINVAL));
    }
    let h = v.h;
    let mut done = 0usize;
    loop {
        let end = (done + CHUNK).min(data.len());
        let want = end - done;
        let n = match s.call(FileOp::Pwrite {
            h,
            data: data[done..end].to_vec(),
            off: off + done as i64,
        }) {
            Ok(FileReply::Count(n)) => n as usize,
            Ok(r) => return Some(unexpected(r)),
            Err(e) if done == 0 => return Some(Err(e)),
            Err(_) => break,
        };
        done += n.min(want);
        if n < want || done >= data.len() {
            break;
        }
    }
    Some(Ok(done as isize))
}

/// `lseek(fd, off, whence)`.
pub fn lseek(fd: i32, off: i64, whence: i32) -> Op<i64> {
    let mut s = SHIM.lock();
    if s.vfds.get(fd).is_none() || s.ensure().is_err() {
        return None;
    }
    let v = s.vfd(fd)?;
    if v.stream {
        return Some(Err(libc::ESPIPE));
    }
    let h = v.h;
    let mut off = off;
    if whence == libc::SEEK_CUR {
        off -= v.ra_left() as i64;
    }
    v.ra.clear();
    v.ra_pos = 0;
    v.ra_win = RA_MIN;
    v.dents.clear();
    if let Err(e) = s.settle_others(fd, h) {
        return Some(Err(e));
    }
    Some(match s.call(FileOp::Lseek { h, off, whence }) {
        Ok(FileReply::Offset(o)) => Ok(o),
        Ok(r) => unexpected(r),
        Err(e) => Err(e),
    })
}

/// Duplicates remote `fd` to the lowest free number ≥ `min`.
fn dup_fd(s: &mut Shim, fd: i32, min: i32, cloexec: bool) -> Result<i32, Errno> {
    s.settle(fd)?;
    let cmd = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    let new = sys::fcntl(fd, cmd, min as usize)? as i32;
    let v = s.vfds.get_mut(fd).ok_or(libc::EBADF)?;
    v.shared = true;
    let d = v.dup(v.ino);
    if let Err(e) = s.vfds.insert(new, d) {
        sys::close(new);
        return Err(e);
    }
    Ok(new)
}

/// `dup(fd)`.
pub fn dup(fd: i32) -> Op<i32> {
    let mut s = SHIM.lock();
    if !s.remote(fd) {
        return None;
    }
    Some(dup_fd(&mut s, fd, 0, false))
}

/// `dup2`/`dup3(old, new, flags)`.
pub fn dup3(old: i32, new: i32, flags: i32, is_dup2: bool) -> Op<i32> {
    let mut s = SHIM.lock();
    if s.vfds.get(old).is_none() && s.vfds.get(new).is_none() || s.ensure().is_err() {
        return None;
    }
    let old_remote = s.vfd(old).is_some();
    let new_remote = s.vfd(new).is_some();
    if !old_remote && !new_remote {
        return None;
    }
    if old == new {
        return Some(if is_dup2 { Ok(new) } else { Err(libc::EINVAL) });
    }
    if new == s.chan.fd {
        return Some(Err(libc::EBADF));
    }
    if new_remote {
        let written = s.vfds.get(new).is_some_and(|v| v.written);
        if let Err(e) = s
            .settle(new)
            .and_then(|_| if written { s.flush() } else { Ok(()) })
        {
            return Some(Err(e));
        }
    }
    if old_remote && let Err(e) = s.settle(old) {
        return Some(Err(e));
    }
    let r = sys::dup2(old, new, flags & libc::O_CLOEXEC != 0);
    if r.is_ok() {
        s.vfds.remove(new);
        if old_remote && let Some(v) = s.vfds.get_mut(old) {
            v.shared = true;
            let d = v.dup(v.ino);
            let _ = s.vfds.insert(new, d);
        }
    }
    Some(r)
}

/// `fcntl(fd, cmd, arg)` on a remote fd.
///
/// # Safety
/// For the lock commands `arg` must point to a `struct flock`.
pub unsafe fn fcntl(fd: i32, cmd: i32, arg: usize) -> Op<i32> {
    let mut s = SHIM.lock();
    if !s.remote(fd) {
        return None;
    }
    if matches!(cmd, libc::F_GETFL | libc::F_SETFL) && s.vfds.get(fd).is_some_and(|v| v.sock) {
        // A socket's O_NONBLOCK is its placeholder's own.
        return None;
    }
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            Some(dup_fd(&mut s, fd, arg as i32, cmd == libc::F_DUPFD_CLOEXEC))
        }
        libc::F_GETFL => Some(Ok(s.vfds.get(fd)?.flags)),
        libc::F_SETFL => {
            let v = s.vfds.get_mut(fd)?;
            let m = libc::O_APPEND
                | libc::O_NONBLOCK
                | libc::O_ASYNC
                | libc::O_DIRECT
                | libc::O_NOATIME;
            v.flags = (v.flags & !m) | (arg as i32 & m);
            Some(Ok(0))
        }
        libc::F_GETLK
        | libc::F_SETLK
        | libc::F_SETLKW
        | libc::F_OFD_GETLK
        | libc::F_OFD_SETLK
        | libc::F_OFD_SETLKW => {
            let p = arg as *mut libc::flock;
            if p.is_null() {
                return Some(Err(libc::EFAULT));
            }
            // SAFETY: the caller passed a struct flock for a lock command.
            let fl = unsafe { *p };
            let lock = Flock {
                typ: fl.l_type,
                whence: fl.l_whence,
                start: fl.l_start,
                len: fl.l_len,
                pid: fl.l_pid,
            };
            let h = s.vfds.get(fd)?.h;
            Some(match s.call(FileOp::Lock { h, cmd, lock }) {
                Ok(FileReply::Ok) => Ok(0),
                Ok(FileReply::Lock(l)) => {
                    // SAFETY: as above; the struct is writable.
                    unsafe {
                        (*p).l_type = l.typ;
                        (*p).l_whence = l.whence;
                        (*p).l_start = l.start;
                        (*p).l_len = l.len;
                        (*p).l_pid = l.pid;
                    }
                    Ok(0)
                }
                Ok(r) => unexpected(r),
                Err(e) => Err(e),
            })
        }
        _ => None,
    }
}

/// `ftruncate(fd, len)`.
pub fn ftruncate(fd: i32, len: i64) -> Op<i32> {
    let mut s = SHIM.lock();
    if !s.remote(fd) {
        return None;
    }
    let v = s.vfds.get(fd)?;
    if v.stream || v.dir || !v.writable() {
        return Some(Err(libc::EINVAL));
    }
    let h = v.h;
    Some(s.call_ok(FileOp::Ftruncate { h, len }).map(|_| 0))
}

/// `fsync`/`fdatasync(fd)`.
pub fn fsync(fd: i32, data_only: bool) -> Op<i32> {
    let mut s = SHIM.lock();
    if !s.remote(fd) {
        return None;
    }
    let h = s.vfds.get(fd)?.h;
    Some(s.call_ok(FileOp::Fsync { h, data_only }).map(|_| {
        for (_, v) in s.vfds.iter_mut() {
            v.written = false;
        }
        0
    }))
}

/// Is `fd` remote? (for hooks that only need to know, e.g. `posix_fadvise`).
pub fn is_remote(fd: i32) -> Op<bool> {
    let mut s = SHIM.lock();
    Some(Ok(s.remote(fd)))
}

/// `read` of either kind of fd, for the copy emulation.
///
/// # Safety
/// `buf` must be writable for `n` bytes.
unsafe fn read_any(fd: i32, buf: *mut u8, n: usize, off: Option<i64>) -> Result<isize, Errno> {
    // SAFETY: forwarded from the caller.
    let r = unsafe {
        match off {
            Some(o) => pread(fd, buf, n, o),
            None => read(fd, buf, n),
        }
    };
    match r {
        Some(r) => r,
        // SAFETY: buf has n writable bytes.
        None => unsafe {
            match off {
                Some(o) => sys::sc_retry(
                    libc::SYS_pread64,
                    [fd as usize, buf as usize, n, o as usize, 0, 0],
                ),
                None => sys::read(fd, buf, n),
            }
        }
        .map(|n| n as isize),
    }
}

fn write_any(fd: i32, data: &[u8], off: Option<i64>) -> Result<isize, Errno> {
    if let Some(o) = off {
        if let Some(r) = pwrite(fd, data, o) {
            return r;
        }
        // SAFETY: data is a valid slice.
        return unsafe {
            sys::sc_retry(
                libc::SYS_pwrite64,
                [
                    fd as usize,
                    data.as_ptr() as usize,
                    data.len(),
                    o as usize,
                    0,
                    0,
                ],
            )
        }
        .map(|n| n as isize);
    }
    if let Some(Err(e)) = write_check(fd) {
        return Err(e);
    }
    sys::write_all(fd, data).map(|_| data.len() as isize)
}

/// `copy_file_range`/`sendfile` with a remote end: one chunk of read + write.
///
/// # Safety
/// `off_in`/`off_out` must be NULL or point to valid offsets.
pub unsafe fn copy(
    fd_in: i32,
    off_in: *mut i64,
    fd_out: i32,
    off_out: *mut i64,
    len: usize,
) -> Op<isize> {
    {
        let mut s = SHIM.lock();
        if !s.remote(fd_in) && !s.remote(fd_out) {
            return None;
        }
    }
    let n = len.min(1 << 20);
    let mut buf = vec![0u8; n];
    // SAFETY: off_in is NULL or valid (the caller's contract).
    let oin = (!off_in.is_null()).then(|| unsafe { *off_in });
    // SAFETY: as above.
    let oout = (!off_out.is_null()).then(|| unsafe { *off_out });
    // SAFETY: buf has n writable bytes.
    let got = match unsafe { read_any(fd_in, buf.as_mut_ptr(), n, oin) } {
        Ok(g) => g as usize,
        Err(e) => return Some(Err(e)),
    };
    if got == 0 {
        return Some(Ok(0));
    }
    let put = match write_any(fd_out, &buf[..got], oout) {
        Ok(p) => p as usize,
        Err(e) => return Some(Err(e)),
    };
    if let Some(o) = oin {
        // SAFETY: off_in is non-NULL here.
        unsafe { *off_in = o + put as i64 };
    } else if put < got {
        // Give back what was read but not written.
        let back = -((got - put) as i64);
        if lseek(fd_in, back, libc::SEEK_CUR).is_none() {
            // SAFETY: lseek takes integers only.
            let _ = unsafe {
                sys::sc(
                    libc::SYS_lseek,
                    [
                        fd_in as usize,
                        back as usize,
                        libc::SEEK_CUR as usize,
                        0,
                        0,
                        0,
                    ],
                )
            };
        }
    }
    if let Some(o) = oout {
        // SAFETY: off_out is non-NULL here.
        unsafe { *off_out = o + put as i64 };
    }
    Some(Ok(put as isize))
}

/// `mmap` of a remote fd: a private anonymous mapping filled with the
/// file's bytes (`MAP_SHARED` with `PROT_WRITE` cannot be kept coherent
/// and gets `ENODEV`, as for a file system without mmap).
pub fn mmap(addr: usize, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> Op<usize> {
    {
        let mut s = SHIM.lock();
        let v = if s.remote(fd) {
            s.vfds.get(fd)?
        } else {
            return None;
        };
        if v.stream || v.dir {
            return Some(Err(libc::ENODEV));
        }
        if !v.readable() {
            return Some(Err(libc::EACCES));
        }
        if flags & libc::MAP_SHARED != 0 && prot & libc::PROT_WRITE != 0 {
            return Some(Err(libc::ENODEV));
        }
    }
    let aflags = (flags & !(libc::MAP_SHARED | libc::MAP_SHARED_VALIDATE))
        | libc::MAP_PRIVATE
        | libc::MAP_ANONYMOUS;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as usize;
    // SAFETY: an anonymous mapping; the kernel checks addr/len/flags.
    let p = match unsafe {
        sys::sc(
            libc::SYS_mmap,
            [addr, len, rw, aflags as usize, usize::MAX, 0],
        )
    } {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    // SAFETY: p is a fresh writable mapping of len bytes.
    if let Some(Err(e)) = unsafe { pread(fd, p as *mut u8, len, off) } {
        // SAFETY: unmapping what was just mapped.
        let _ = unsafe { sys::sc(libc::SYS_munmap, [p, len, 0, 0, 0, 0]) };
        return Some(Err(e));
    }
    // SAFETY: changing the protection of our own fresh mapping.
    let _ = unsafe { sys::sc(libc::SYS_mprotect, [p, len, prot as usize, 0, 0, 0]) };
    Some(Ok(p))
}

/// Which of `fds` are remote files that are not streams (always ready, as
/// regular files are for `poll`).
pub fn always_ready(fds: &[i32]) -> Op<Vec<bool>> {
    let mut s = SHIM.lock();
    if fds.iter().all(|&f| s.vfds.get(f).is_none()) {
        return None;
    }
    let mut out = Vec::with_capacity(fds.len());
    for &f in fds {
        out.push(s.vfds.get(f).is_some() && s.vfd(f).is_some_and(|v| !v.stream));
    }
    out.iter().any(|&b| b).then_some(Ok(out))
}
