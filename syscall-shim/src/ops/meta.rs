//! Path and metadata ops: the stat family, access, unlink, rename, mkdir,
//! readlink, chmod, utimens, links, truncate, and the virtual current
//! directory (chdir, fchdir, getcwd).

use proto::fileop::{Errno, FileOp, FileReply, Stat};

use super::{Route, SHIM, Shim, conf, unexpected};
use crate::path;
use crate::sys;

type Op<T> = Option<Result<T, Errno>>;

/// Fills a `struct stat` from a remote [`Stat`].
pub fn to_stat(st: &Stat) -> libc::stat {
    // SAFETY: an all-zero struct stat is valid.
    let mut o: libc::stat = unsafe { std::mem::zeroed() };
    o.st_dev = st.dev;
    o.st_ino = st.ino;
    o.st_mode = st.mode;
    o.st_nlink = st.nlink;
    o.st_uid = st.uid;
    o.st_gid = st.gid;
    o.st_rdev = st.rdev;
    o.st_size = st.size;
    o.st_blksize = st.blksize;
    o.st_blocks = st.blocks;
    o.st_atime = st.atime.0;
    o.st_atime_nsec = st.atime.1;
    o.st_mtime = st.mtime.0;
    o.st_mtime_nsec = st.mtime.1;
    o.st_ctime = st.ctime.0;
    o.st_ctime_nsec = st.ctime.1;
    o
}

fn major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32
}

fn minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}

fn ts(t: (i64, i64)) -> libc::statx_timestamp {
    // SAFETY: an all-zero statx_timestamp is valid.
    let mut o: libc::statx_timestamp = unsafe { std::mem::zeroed() };
    o.tv_sec = t.0;
    o.tv_nsec = t.1 as u32;
    o
}

/// Fills a `struct statx` from a remote [`Stat`].
pub fn to_statx(st: &Stat) -> libc::statx {
    // SAFETY: an all-zero struct statx is valid.
    let mut o: libc::statx = unsafe { std::mem::zeroed() };
    o.stx_mask = libc::STATX_BASIC_STATS;
    o.stx_blksize = st.blksize as u32;
    o.stx_nlink = st.nlink as u32;
    o.stx_uid = st.uid;
    o.stx_gid = st.gid;
    o.stx_mode = st.mode as u16;
    o.stx_ino = st.ino;
    o.stx_size = st.size as u64;
    o.stx_blocks = st.blocks as u64;
    o.stx_atime = ts(st.atime);
    o.stx_mtime = ts(st.mtime);
    o.stx_ctime = ts(st.ctime);
    o.stx_rdev_major = major(st.rdev);
    o.stx_rdev_minor = minor(st.rdev);
    o.stx_dev_major = major(st.dev);
    o.stx_dev_minor = minor(st.dev);
    o
}

fn want_stat(r: Result<FileReply, Errno>) -> Result<Stat, Errno> {
    match r? {
        FileReply::Stat(s) | FileReply::Opened { stat: s, .. } => Ok(s),
        r => unexpected(r),
    }
}

fn fstat_locked(s: &mut Shim, fd: i32) -> Op<Stat> {
    if s.vfds.get(fd).is_none() || s.ensure().is_err() {
        return None;
    }
    let v = s.vfd(fd)?;
    let (h, stream) = (v.h, v.stream);
    let r = want_stat(s.call(FileOp::Fstat { h }));
    Some(r.map(|mut st| {
        if stream {
            // A read stream behaves like a pipe.
            st.mode = libc::S_IFIFO | (st.mode & 0o777);
            st.size = 0;
        }
        st
    }))
}

/// `fstat(fd)`.
pub fn fstat(fd: i32) -> Op<Stat> {
    fstat_locked(&mut SHIM.lock(), fd)
}

/// `fstatat(dirfd, path, flags)` (also `stat`, `lstat`, `statx`).
pub fn stat_at(dirfd: i32, path: &[u8], flags: i32) -> Op<Stat> {
    let mut s = SHIM.lock();
    if path.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
        if dirfd == libc::AT_FDCWD {
            let cwd = s.cwd.clone()?;
            return Some(want_stat(s.call(FileOp::Stat {
                at: None,
                path: cwd,
                nofollow: false,
            })));
        }
        return fstat_locked(&mut s, dirfd);
    }
    if let Some(n) = path::fd_alias(path)
        && let Some(r) = fstat_locked(&mut s, n)
    {
        return Some(r);
    }
    let Route::Remote { at, path } = s.route(dirfd, path) else {
        return None;
    };
    let nofollow = flags & libc::AT_SYMLINK_NOFOLLOW != 0;
    Some(want_stat(s.call(FileOp::Stat { at, path, nofollow })))
}

/// `faccessat(dirfd, path, mode, flags)`.
pub fn access(dirfd: i32, path: &[u8], mode: i32, flags: i32) -> Op<i32> {
    let mut s = SHIM.lock();
    let Route::Remote { at, path } = s.route(dirfd, path) else {
        return None;
    };
    Some(
        s.call_ok(FileOp::Access {
            at,
            path,
            mode,
            flags,
        })
        .map(|_| 0),
    )
}

/// `unlinkat(dirfd, path, flags)`.
pub fn unlink(dirfd: i32, path: &[u8], flags: i32) -> Op<i32> {
    let mut s = SHIM.lock();
    let Route::Remote { at, path } = s.route(dirfd, path) else {
        return None;
    };
    let dir = flags & libc::AT_REMOVEDIR != 0;
    Some(s.call_ok(FileOp::Unlink { at, path, dir }).map(|_| 0))
}

/// `renameat2(fd1, from, fd2, to, flags)`.
pub fn rename(fd1: i32, from: &[u8], fd2: i32, to: &[u8], flags: u32) -> Op<i32> {
    let mut s = SHIM.lock();
    match (s.route(fd1, from), s.route(fd2, to)) {
        (Route::Local, Route::Local) => None,
        (
            Route::Remote {
                at: from_at,
                path: from,
            },
            Route::Remote {
                at: to_at,
                path: to,
            },
        ) => Some(
            s.call_ok(FileOp::Rename {
                from_at,
                from,
                to_at,
                to,
                flags,
            })
            .map(|_| 0),
        ),
        _ => Some(Err(libc::EXDEV)),
    }
}

/// `linkat(fd1, from, fd2, to, flags)`.
pub fn link(fd1: i32, from: &[u8], fd2: i32, to: &[u8]) -> Op<i32> {
    let mut s = SHIM.lock();
    match (s.route(fd1, from), s.route(fd2, to)) {
        (Route::Local, Route::Local) => None,
        (
            Route::Remote {
                at: from_at,
                path: from,
            },
            Route::Remote {
                at: to_at,
                path: to,
            },
        ) => Some(
            s.call_ok(FileOp::Link {
                from_at,
                from,
                to_at,
                to,
            })
            .map(|_| 0),
        ),
        _ => Some(Err(libc::EXDEV)),
    }
}

/// `symlinkat(target, dirfd, path)`.
pub fn symlink(target: &[u8], dirfd: i32, path: &[u8]) -> Op<i32> {
    let mut s = SHIM.lock();
    let Route::Remote { at, path } = s.route(dirfd, path) else {
        return None;
    };
    Some(
        s.call_ok(FileOp::Symlink {
            target: target.to_vec(),
            at,
            path,
        })
        .map(|_| 0),
    )
}

/// `mkdirat(dirfd, path, mode)`.
pub fn mkdir(dirfd: i32, path: &[u8], mode: u32) -> Op<i32> {
    let mut s = SHIM.lock();
    let Route::Remote { at, path } = s.route(dirfd, path) else {
        return None;
    };
    Some(s.call_ok(FileOp::Mkdir { at, path, mode }).map(|_| 0))
}

/// `readlinkat(dirfd, path, buf, size)`.
///
/// # Safety
/// `buf` must be writable for `size` bytes.
pub unsafe fn readlink(dirfd: i32, path: &[u8], buf: *mut u8, size: usize) -> Op<isize> {
    let mut s = SHIM.lock();
    let Route::Remote { at, path } = s.route(dirfd, path) else {
        return None;
    };
    Some(match s.call(FileOp::Readlink { at, path }) {
        Ok(FileReply::Path(p)) => {
            let k = p.len().min(size);
            // SAFETY: buf is writable for size bytes and k <= size.
            unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), buf, k) };
            Ok(k as isize)
        }
        Ok(r) => unexpected(r),
        Err(e) => Err(e),
    })
}

/// `fchmodat(dirfd, path, mode)`; `fchmod` is `path` empty with a remote fd.
pub fn chmod(dirfd: i32, path: &[u8], mode: u32) -> Op<i32> {
    let mut s = SHIM.lock();
    let Route::Remote { at, path } = s.route(dirfd, path) else {
        return None;
    };
    Some(s.call_ok(FileOp::Chmod { at, path, mode }).map(|_| 0))
}

/// `utimensat(dirfd, path, times, flags)`; `UTIME_NOW` is `None`.
pub fn utimens(dirfd: i32, path: &[u8], times: Option<[(i64, i64); 2]>, flags: i32) -> Op<i32> {
    let mut s = SHIM.lock();
    let Route::Remote { at, path } = s.route(dirfd, path) else {
        return None;
    };
    let conv = |t: (i64, i64)| {
        if t.1 == libc::UTIME_NOW {
            None
        } else {
            Some(t)
        }
    };
    let times = match times {
        None => [None, None],
        Some([a, m]) => [conv(a), conv(m)],
    };
    let nofollow = flags & libc::AT_SYMLINK_NOFOLLOW != 0;
    Some(
        s.call_ok(FileOp::Utimens {
            at,
            path,
            times,
            nofollow,
        })
        .map(|_| 0),
    )
}

/// `truncate(path, len)`.
pub fn truncate(path: &[u8], len: i64) -> Op<i32> {
    let mut s = SHIM.lock();
    let Route::Remote { at, path } = s.route(libc::AT_FDCWD, path) else {
        return None;
    };
    Some(s.call_ok(FileOp::Truncate { at, path, len }).map(|_| 0))
}

fn set_cwd_env(value: &[u8]) {
    let mut v = value.to_vec();
    v.push(0);
    // SAFETY: both strings are NUL-terminated; setenv copies them.
    unsafe { libc::setenv(c"ROOST_CWD".as_ptr(), v.as_ptr().cast(), 1) };
}

fn enter_remote(s: &mut Shim, at: Option<proto::Handle>, path: Vec<u8>) -> Result<i32, Errno> {
    match s.call(FileOp::Chdir { at, path })? {
        FileReply::Path(p) => {
            if s.cwd.is_none() && !conf().scratch.is_empty() {
                let mut sc = conf().scratch.clone();
                sc.push(0);
                // SAFETY: sc is NUL-terminated.
                let _ = unsafe { sys::sc(libc::SYS_chdir, [sc.as_ptr() as usize, 0, 0, 0, 0, 0]) };
            }
            set_cwd_env(&p);
            s.cwd = Some(p);
            Ok(0)
        }
        r => unexpected(r),
    }
}

fn entered_local(s: &mut Shim) {
    s.cwd = None;
    set_cwd_env(&sys::real_cwd());
}

/// `chdir(path)`.
pub fn chdir(path: &[u8]) -> Op<i32> {
    let mut s = SHIM.lock();
    if let Route::Remote { at, path } = s.route(libc::AT_FDCWD, path) {
        return Some(enter_remote(&mut s, at, path));
    }
    let mut p = path.to_vec();
    p.push(0);
    // SAFETY: p is NUL-terminated.
    Some(
        unsafe { sys::sc(libc::SYS_chdir, [p.as_ptr() as usize, 0, 0, 0, 0, 0]) }.map(|_| {
            entered_local(&mut s);
            0
        }),
    )
}

/// `fchdir(fd)`.
pub fn fchdir(fd: i32) -> Op<i32> {
    let mut s = SHIM.lock();
    if s.remote(fd) {
        let h = s.vfds.get(fd)?.h;
        return Some(enter_remote(&mut s, Some(h), b".".to_vec()));
    }
    // SAFETY: fchdir takes an integer.
    Some(
        unsafe { sys::sc(libc::SYS_fchdir, [fd as usize, 0, 0, 0, 0, 0]) }.map(|_| {
            entered_local(&mut s);
            0
        }),
    )
}

/// The virtual current directory, when it is remote.
pub fn remote_cwd() -> Option<Vec<u8>> {
    SHIM.lock().cwd.clone()
}

/// `path` made absolute against `cwd` with `.`, `..` and repeated slashes
/// removed (lexically).
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for p in &parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// `realpath(path)` of a remote path: the normalized absolute path, if it
/// exists on the submit host.
pub fn realpath(path: &[u8]) -> Op<Vec<u8>> {
    let mut s = SHIM.lock();
    let Route::Remote { at: None, path } = s.route(libc::AT_FDCWD, path) else {
        return None;
    };
    let norm = normalize(&path);
    Some(
        want_stat(s.call(FileOp::Stat {
            at: None,
            path: norm.clone(),
            nofollow: false,
        }))
        .map(|_| norm),
    )
}

/// `fchownat(dirfd, path, uid, gid)` on a remote file: ownership on the
/// submit host is the submitter's; only a no-op change succeeds.
pub fn chown(dirfd: i32, path: &[u8], uid: u32, gid: u32, flags: i32) -> Op<i32> {
    let st = if path.is_empty() {
        fstat(dirfd)?
    } else {
        stat_at(dirfd, path, flags)?
    };
    Some(st.and_then(|st| {
        let same = |want: u32, have: u32| want == u32::MAX || want == have;
        if same(uid, st.uid) && same(gid, st.gid) {
            Ok(0)
        } else {
            Err(libc::EPERM)
        }
    }))
}

/// Extended attributes of a remote file: there are none (and none can be
/// set), which callers such as `ls -l` read as "no ACL". `path` empty: `fd`.
pub fn xattr(fd: i32, path: &[u8], list: bool) -> Op<isize> {
    let st = if path.is_empty() {
        fstat(fd)?
    } else {
        stat_at(libc::AT_FDCWD, path, 0)?
    };
    Some(st.and(if list { Ok(0) } else { Err(libc::ENOTSUP) }))
}

/// `mkstemps`/`mkostemps`/`mkdtemp` on a remote template: fills the six
/// `X`s before the `suffix` bytes with random characters (in place) until
/// an exclusive create succeeds. `dir`: make a directory, return 0.
///
/// # Safety
/// `template` must be a writable C string.
pub unsafe fn mktemp(template: *mut u8, suffix: usize, flags: i32, dir: bool) -> Op<i32> {
    // SAFETY: template is a writable C string (the caller's contract).
    let len = unsafe { std::ffi::CStr::from_ptr(template.cast()) }
        .to_bytes()
        .len();
    // SAFETY: as above; the slice covers the string without its NUL.
    let t = unsafe { std::slice::from_raw_parts_mut(template, len) };
    let mut s = SHIM.lock();
    if s.route(libc::AT_FDCWD, t) == Route::Local {
        return None;
    }
    if len < 6 + suffix || &t[len - suffix - 6..len - suffix] != b"XXXXXX" {
        return Some(Err(libc::EINVAL));
    }
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for _ in 0..100 {
        let mut rnd = [0u8; 6];
        // SAFETY: rnd is writable for 6 bytes.
        let _ = unsafe {
            sys::sc(
                libc::SYS_getrandom,
                [rnd.as_mut_ptr() as usize, 6, 0, 0, 0, 0],
            )
        };
        for (k, r) in rnd.iter().enumerate() {
            t[len - suffix - 6 + k] = CHARS[*r as usize % CHARS.len()];
        }
        let Route::Remote { at, path } = s.route(libc::AT_FDCWD, t) else {
            return Some(Err(libc::EINVAL));
        };
        let r = if dir {
            s.call_ok(FileOp::Mkdir {
                at,
                path,
                mode: 0o700,
            })
            .map(|_| 0)
        } else {
            let fl = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | (flags & !libc::O_ACCMODE);
            super::file::open_remote(&mut s, at, path, fl, 0o600)
        };
        match r {
            Err(libc::EEXIST) => continue,
            r => return Some(r),
        }
    }
    Some(Err(libc::EEXIST))
}

/// `mknod`/`mkfifo` on a remote path: refused (`EPERM`), rather than
/// made in the scratch directory where the job would not find it.
pub fn refuse_special(dirfd: i32, path: &[u8]) -> Op<i32> {
    let mut s = SHIM.lock();
    match s.route(dirfd, path) {
        Route::Local => None,
        Route::Remote { .. } => Some(Err(libc::EPERM)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(b"/a/./b//c/../d/"), b"/a/b/d");
        assert_eq!(normalize(b"/.."), b"/");
        assert_eq!(normalize(b"/"), b"/");
    }

    #[test]
    fn stat_conversion_keeps_every_field() {
        let st = Stat {
            dev: (8 << 8) | 1,
            ino: 42,
            mode: libc::S_IFREG | 0o640,
            nlink: 2,
            uid: 1000,
            gid: 100,
            rdev: 0,
            size: 12345,
            blksize: 4096,
            blocks: 24,
            atime: (1, 2),
            mtime: (3, 4),
            ctime: (5, 6),
        };
        let s = to_stat(&st);
        assert_eq!(
            (s.st_ino, s.st_mode, s.st_size, s.st_nlink, s.st_uid),
            (42, libc::S_IFREG | 0o640, 12345, 2, 1000)
        );
        assert_eq!((s.st_mtime, s.st_mtime_nsec, s.st_ctime), (3, 4, 5));
        let x = to_statx(&st);
        assert_eq!(
            (
                x.stx_ino,
                x.stx_mode as u32,
                x.stx_size,
                x.stx_dev_major,
                x.stx_dev_minor
            ),
            (42, libc::S_IFREG | 0o640, 12345, 8, 1)
        );
        assert_eq!((x.stx_atime.tv_sec, x.stx_atime.tv_nsec), (1, 2));
    }
}
