//! Remote directories: the shim's own `DIR` objects (told apart from
//! glibc's by a registry of pointers) and `getdents64` on remote fds.

use std::sync::atomic::{AtomicPtr, Ordering};

use proto::fileop::{Dirent, Errno, FileOp, FileReply};

use super::{SHIM, Shim, file, unexpected};
use crate::sys;

type Op<T> = Option<Result<T, Errno>>;

/// Entries asked for per `Getdents`.
const DENTS_MAX: u32 = 1024;

/// A remote directory stream.
pub struct RDir {
    pub fd: i32,
    entries: Vec<Dirent>,
    next: usize,
    /// Entries handed out since the start (for `telldir`).
    pos: i64,
    eof: bool,
    out: libc::dirent64,
}

const SLOTS: usize = 256;
static REGISTRY: [AtomicPtr<RDir>; SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];

/// Is `p` one of the shim's directory streams?
pub fn ours(p: *mut libc::DIR) -> Option<*mut RDir> {
    let p = p.cast::<RDir>();
    if p.is_null() {
        return None;
    }
    REGISTRY
        .iter()
        .any(|s| s.load(Ordering::Acquire) == p)
        .then_some(p)
}

fn register(d: Box<RDir>) -> Result<*mut libc::DIR, Errno> {
    let p = Box::into_raw(d);
    for s in REGISTRY.iter() {
        if s.compare_exchange(std::ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Ok(p.cast());
        }
    }
    // SAFETY: p came from Box::into_raw just above and was not registered.
    drop(unsafe { Box::from_raw(p) });
    Err(libc::EMFILE)
}

fn unregister(p: *mut RDir) -> Option<Box<RDir>> {
    for s in REGISTRY.iter() {
        if s.compare_exchange(p, std::ptr::null_mut(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // SAFETY: registered pointers come from Box::into_raw and are unregistered once.
            return Some(unsafe { Box::from_raw(p) });
        }
    }
    None
}

fn new_dir(fd: i32) -> Box<RDir> {
    Box::new(RDir {
        fd,
        entries: Vec::new(),
        next: 0,
        pos: 0,
        eof: false,
        // SAFETY: an all-zero dirent64 is valid.
        out: unsafe { std::mem::zeroed() },
    })
}

/// `opendir(path)` of a remote path.
pub fn opendir(path: &[u8]) -> Op<*mut libc::DIR> {
    let fd = {
        let mut s = SHIM.lock();
        let super::Route::Remote { at, path } = s.route(libc::AT_FDCWD, path) else {
            return None;
        };
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        match file::open_remote(&mut s, at, path, flags, 0) {
            Ok(fd) => fd,
            Err(e) => return Some(Err(e)),
        }
    };
    Some(register(new_dir(fd)).inspect_err(|_| close_fd(fd)))
}

fn close_fd(fd: i32) {
    let _ = file::close(fd);
    sys::close(fd);
}

/// `fdopendir(fd)` of a remote fd.
pub fn fdopendir(fd: i32) -> Op<*mut libc::DIR> {
    {
        let mut s = SHIM.lock();
        if !s.remote(fd) {
            return None;
        }
        if !s.vfds.get(fd)?.dir {
            return Some(Err(libc::ENOTDIR));
        }
        let _ = sys::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC as usize);
    }
    Some(register(new_dir(fd)))
}

fn fetch(s: &mut Shim, fd: i32, max: u32) -> Result<Vec<Dirent>, Errno> {
    let v = s.vfds.get_mut(fd).ok_or(libc::EBADF)?;
    if !v.dents.is_empty() {
        return Ok(v.dents.drain(..).collect());
    }
    let h = v.h;
    match s.call(FileOp::Getdents { h, max })? {
        FileReply::Dirents(d) => Ok(d),
        r => unexpected(r),
    }
}

/// `readdir(d)`: the next entry, NULL at the end (errno untouched).
///
/// # Safety
/// `d` must be a live pointer from [`ours`].
pub unsafe fn readdir(d: *mut RDir) -> Result<*mut libc::dirent64, Errno> {
    // SAFETY: d is a live registered RDir (the caller's contract).
    let d = unsafe { &mut *d };
    if d.next >= d.entries.len() {
        if d.eof {
            return Ok(std::ptr::null_mut());
        }
        let mut s = SHIM.lock();
        s.ensure()?;
        d.entries = fetch(&mut s, d.fd, DENTS_MAX)?;
        d.next = 0;
        if d.entries.is_empty() {
            d.eof = true;
            return Ok(std::ptr::null_mut());
        }
    }
    let e = &d.entries[d.next];
    d.next += 1;
    d.pos += 1;
    d.out.d_ino = e.ino;
    d.out.d_off = d.pos;
    d.out.d_type = e.kind;
    d.out.d_reclen = std::mem::size_of::<libc::dirent64>() as u16;
    let k = e.name.len().min(d.out.d_name.len() - 1);
    for (o, b) in d.out.d_name.iter_mut().zip(&e.name[..k]) {
        *o = *b as libc::c_char;
    }
    d.out.d_name[k] = 0;
    Ok(&mut d.out)
}

/// `closedir(d)`.
pub fn closedir(d: *mut RDir) -> Result<i32, Errno> {
    let b = unregister(d).ok_or(libc::EBADF)?;
    close_fd(b.fd);
    Ok(0)
}

/// `rewinddir(d)` / `seekdir(d, 0)`.
///
/// # Safety
/// `d` must be a live pointer from [`ours`].
pub unsafe fn rewind(d: *mut RDir) {
    // SAFETY: the caller's contract.
    let d = unsafe { &mut *d };
    let _ = file::lseek(d.fd, 0, libc::SEEK_SET);
    d.entries.clear();
    d.next = 0;
    d.pos = 0;
    d.eof = false;
}

/// `telldir(d)`.
///
/// # Safety
/// `d` must be a live pointer from [`ours`].
pub unsafe fn tell(d: *mut RDir) -> i64 {
    // SAFETY: the caller's contract.
    unsafe { (*d).pos }
}

/// `seekdir(d, loc)`: back to the start, then forward `loc` entries.
///
/// # Safety
/// `d` must be a live pointer from [`ours`].
pub unsafe fn seek(d: *mut RDir, loc: i64) {
    // SAFETY: the caller's contract, for each use below.
    unsafe {
        if loc < (*d).pos {
            rewind(d);
        }
        let mut pos = (*d).pos;
        while pos < loc {
            match readdir(d) {
                Ok(p) if !p.is_null() => pos = (*d).pos,
                _ => break,
            }
        }
    }
}

/// `dirfd(d)`.
///
/// # Safety
/// `d` must be a live pointer from [`ours`].
pub unsafe fn dirfd(d: *mut RDir) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { (*d).fd }
}

/// `getdents64(fd, buf, count)` on a remote directory fd.
///
/// # Safety
/// `buf` must be writable for `count` bytes.
pub unsafe fn getdents64(fd: i32, buf: *mut u8, count: usize) -> Op<isize> {
    let mut s = SHIM.lock();
    if !s.remote(fd) {
        return None;
    }
    if !s.vfds.get(fd)?.dir {
        return Some(Err(libc::ENOTDIR));
    }
    // `max` counts entries; each record takes at least 24 bytes.
    let mut ents = match fetch(&mut s, fd, (count / 24).clamp(1, u32::MAX as usize) as u32) {
        Ok(e) => e,
        Err(e) => return Some(Err(e)),
    };
    let mut off = 0usize;
    let mut used = 0;
    for (i, e) in ents.iter().enumerate() {
        let reclen = (19 + e.name.len() + 1).next_multiple_of(8);
        if off + reclen > count {
            break;
        }
        let mut rec = vec![0u8; reclen];
        rec[0..8].copy_from_slice(&e.ino.to_ne_bytes());
        rec[8..16].copy_from_slice(&((i + 1) as i64).to_ne_bytes());
        rec[16..18].copy_from_slice(&(reclen as u16).to_ne_bytes());
        rec[18] = e.kind;
        rec[19..19 + e.name.len()].copy_from_slice(&e.name);
        // SAFETY: buf is writable for count bytes and off + reclen <= count.
        unsafe { std::ptr::copy_nonoverlapping(rec.as_ptr(), buf.add(off), reclen) };
        off += reclen;
        used = i + 1;
    }
    if used == 0 && !ents.is_empty() {
        let v = s.vfds.get_mut(fd)?;
        v.dents.extend(ents);
        return Some(Err(libc::EINVAL));
    }
    let rest = ents.split_off(used);
    if let Some(v) = s.vfds.get_mut(fd) {
        v.dents.extend(rest);
    }
    Some(Ok(off as isize))
}

/// Every entry of a remote directory, each in its own `malloc`'d
/// `dirent64` (for `scandir`; the caller frees them).
pub fn collect(path: &[u8]) -> Op<Vec<*mut libc::dirent64>> {
    let d = match opendir(path)? {
        Ok(d) => d.cast::<RDir>(),
        Err(e) => return Some(Err(e)),
    };
    let mut out = Vec::new();
    let r = loop {
        // SAFETY: d is a live registered stream until closedir below.
        match unsafe { readdir(d) } {
            Ok(e) if e.is_null() => break Ok(()),
            Ok(e) => {
                let size = std::mem::size_of::<libc::dirent64>();
                // SAFETY: malloc is not interposed.
                let m = unsafe { libc::malloc(size) }.cast::<libc::dirent64>();
                if m.is_null() {
                    break Err(libc::ENOMEM);
                }
                // SAFETY: e points to a valid dirent64, m to size writable bytes.
                unsafe { std::ptr::copy_nonoverlapping(e, m, 1) };
                out.push(m);
            }
            Err(e) => break Err(e),
        }
    };
    let _ = closedir(d);
    if let Err(e) = r {
        for m in out {
            // SAFETY: m came from malloc above.
            unsafe { libc::free(m.cast()) };
        }
        return Some(Err(e));
    }
    Some(Ok(out))
}
