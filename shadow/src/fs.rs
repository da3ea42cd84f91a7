//! The remote-file engine: one [`JobFs`] per job executes the job's
//! [`FileOp`]s on the submit host, confined to the job's `initialdir`.
//!
//! Every path is resolved by the kernel with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)` from a directory fd of the initialdir, so `..`,
//! absolute paths and symlinks that leave it fail (`EXDEV`), which the job
//! sees as `EACCES` and the schedd logs. Operations on a path's last
//! component resolve the parent that way and then use the `*at` call on the
//! final name. A [`Handle`] is a real open file description here, so offsets
//! are shared exactly as POSIX says.

use proto::fileop::{Dirent, Errno, FileOp, FileReply, Flock, Stat};
use proto::ids::Handle;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, SeekFrom};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Largest `Read`/`Pread` served in one reply (below the frame limit).
pub const MAX_READ: u32 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("initialdir {path} must be an absolute path")]
    NotAbsolute { path: PathBuf },
    #[error("cannot open initialdir {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One open file of the job.
#[derive(Debug)]
struct Open {
    fd: OwnedFd,
    flags: i32,
    /// Where it was opened, relative to the root (a fallback for
    /// [`JobFs::snapshot`] when the file's current name cannot be read).
    path: Vec<u8>,
}

/// One handle in an [`FsSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleSnapshot {
    pub id: u64,
    /// The file's path relative to the initialdir at the snapshot (its
    /// current name, so renames since the open are followed).
    pub path: Vec<u8>,
    /// Open flags as the job gave them.
    pub flags: i32,
    /// Offset as the job sees it.
    pub offset: i64,
    pub dir: bool,
    /// The file's size, for a handle open for writing.
    pub size: Option<u64>,
    /// The file has no name any more (unlinked while open): it cannot be
    /// reopened by a restart.
    pub deleted: bool,
}

/// A job's files at a checkpoint: what [`JobFs::restore`] needs to put
/// them back as they were.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsSnapshot {
    /// Current directory relative to the initialdir (empty: the initialdir).
    pub cwd: Vec<u8>,
    pub handles: Vec<HandleSnapshot>,
    /// The next handle id the job would have been given.
    pub next: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// The handles that were the job's stdin, stdout and stderr.
    #[serde(default)]
    pub std: [Option<Handle>; 3],
}

impl FsSnapshot {
    /// Handles that a restart could not reopen, with their paths.
    pub fn unrestorable(&self) -> Vec<String> {
        self.handles
            .iter()
            .filter(|h| h.deleted)
            .map(|h| String::from_utf8_lossy(&h.path).into_owned())
            .collect()
    }
}

/// Why [`JobFs::restore`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("cannot reopen `{path}` (handle {id})")]
    Reopen {
        id: u64,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot change to the saved directory `{path}`")]
    Cwd {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The job's files on the submit host: open handles, current directory and
/// I/O counters, all confined to the initialdir.
#[derive(Debug)]
pub struct JobFs {
    root: OwnedFd,
    /// The initialdir as the job knows it (absolute, no trailing slash).
    root_path: Vec<u8>,
    /// The initialdir with every symlink resolved.
    canon_path: Vec<u8>,
    /// Current directory relative to the root (`""` is the root itself).
    cwd: Vec<u8>,
    handles: HashMap<u64, Open>,
    next: u64,
    read: u64,
    written: u64,
    /// A buffer for the next `Read`/`Pread` reply, given back by
    /// [`JobFs::recycle`] once the reply is sent: a large read then
    /// reuses memory that is already mapped instead of faulting in fresh
    /// pages each time.
    spare: Vec<u8>,
}

/// Reads up to `len` bytes with `f` into a buffer taken from `spare`.
/// The buffer keeps the length of its last use, so only bytes beyond that
/// are zero-filled before the read (none, for same-sized reads).
fn read_with(
    spare: &mut Vec<u8>,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> rustix::io::Result<usize>,
) -> R<Vec<u8>> {
    let mut buf = std::mem::take(spare);
    if buf.len() < len {
        buf.resize(len, 0);
    } else {
        buf.truncate(len);
    }
    match f(&mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(e) => {
            *spare = buf;
            Err(errno(e))
        }
    }
}

fn errno(e: rustix::io::Errno) -> Errno {
    e.raw_os_error()
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

/// Removes trailing slashes (keeps a lone `/`).
fn trim_slashes(p: &[u8]) -> &[u8] {
    let mut end = p.len();
    while end > 1 && p[end - 1] == b'/' {
        end -= 1;
    }
    &p[..end]
}

/// If `path` is `prefix` or below it (component-wise), the rest without
/// leading slashes.
fn strip_dir_prefix<'a>(path: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let rest = path.strip_prefix(prefix)?;
    if prefix == b"/" {
        return Some(trim_leading(rest));
    }
    if rest.is_empty() || rest[0] == b'/' {
        Some(trim_leading(rest))
    } else {
        None
    }
}

fn trim_leading(mut p: &[u8]) -> &[u8] {
    while let [b'/', rest @ ..] = p {
        p = rest;
    }
    p
}

fn join(base: &[u8], path: &[u8]) -> Vec<u8> {
    if base.is_empty() {
        return path.to_vec();
    }
    let mut v = base.to_vec();
    v.push(b'/');
    v.extend_from_slice(path);
    v
}

fn os(p: &[u8]) -> &OsStr {
    OsStr::from_bytes(p)
}

fn to_stat(st: &rustix::fs::Stat) -> Stat {
    #![allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Stat {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        mode: st.st_mode as u32,
        nlink: st.st_nlink as u64,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        rdev: st.st_rdev as u64,
        size: st.st_size as i64,
        blksize: st.st_blksize as i64,
        blocks: st.st_blocks as i64,
        atime: (st.st_atime as i64, st.st_atime_nsec as i64),
        mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
    }
}

/// A path resolved to a parent directory and the final name in it.
struct AtName {
    dir: OwnedFd,
    name: Vec<u8>,
}

fn to_libc_flock(l: &Flock) -> libc::flock {
    libc::flock {
        l_type: l.typ,
        l_whence: l.whence,
        l_start: l.start,
        l_len: l.len,
        // Open-file-description locks require 0 here.
        l_pid: 0,
    }
}

fn from_libc_flock(l: &libc::flock) -> Flock {
    Flock {
        typ: l.l_type,
        whence: l.l_whence,
        start: l.l_start,
        len: l.l_len,
        pid: l.l_pid,
    }
}

fn set_lock(fd: BorrowedFd<'_>, cmd: i32, lock: &Flock) -> Result<(), Errno> {
    use nix::fcntl::{FcntlArg, fcntl};
    let fl = to_libc_flock(lock);
    let arg = match cmd {
        libc::F_OFD_SETLK => FcntlArg::F_OFD_SETLK(&fl),
        libc::F_OFD_SETLKW => FcntlArg::F_OFD_SETLKW(&fl),
        _ => return Err(libc::EINVAL),
    };
    fcntl(fd.as_raw_fd(), arg).map(|_| ()).map_err(|e| e as i32)
}

fn get_lock(fd: BorrowedFd<'_>, lock: &Flock) -> Result<Flock, Errno> {
    use nix::fcntl::{FcntlArg, fcntl};
    let mut fl = to_libc_flock(lock);
    fcntl(fd.as_raw_fd(), FcntlArg::F_OFD_GETLK(&mut fl)).map_err(|e| e as i32)?;
    Ok(from_libc_flock(&fl))
}

/// Maps the job's lock command to the open-file-description command that
/// gives its semantics here: all jobs share the schedd's process, so
/// process-owned POSIX locks would never conflict between handles.
fn ofd_cmd(cmd: i32) -> Option<i32> {
    Some(match cmd {
        libc::F_GETLK | libc::F_OFD_GETLK => libc::F_OFD_GETLK,
        libc::F_SETLK | libc::F_OFD_SETLK => libc::F_OFD_SETLK,
        libc::F_SETLKW | libc::F_OFD_SETLKW => libc::F_OFD_SETLKW,
        _ => return None,
    })
}

/// If `op` is a lock request that waits (`F_SETLKW`, `F_OFD_SETLKW`), the
/// same request without waiting (it fails with `EAGAIN` while the range is
/// locked), so an async caller can retry it without tying up a thread.
pub fn nonblocking_lock(op: &FileOp) -> Option<FileOp> {
    match op {
        FileOp::Lock { h, cmd, lock } if ofd_cmd(*cmd) == Some(libc::F_OFD_SETLKW) => {
            Some(FileOp::Lock {
                h: *h,
                cmd: libc::F_OFD_SETLK,
                lock: *lock,
            })
        }
        _ => None,
    }
}

fn proc_fd(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

type R<T> = Result<T, Errno>;

impl JobFs {
    /// Opens the job's initialdir; every later path is confined to it.
    pub fn new(initialdir: &Path) -> Result<JobFs, FsError> {
        if !initialdir.is_absolute() {
            return Err(FsError::NotAbsolute {
                path: initialdir.into(),
            });
        }
        let open_err = |source| FsError::Open {
            path: initialdir.into(),
            source,
        };
        let root = rustix::fs::open(
            initialdir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| open_err(e.into()))?;
        let canon = std::fs::read_link(proc_fd(root.as_fd())).map_err(open_err)?;
        Ok(JobFs {
            root,
            root_path: trim_slashes(initialdir.as_os_str().as_bytes()).to_vec(),
            canon_path: trim_slashes(canon.as_os_str().as_bytes()).to_vec(),
            cwd: Vec::new(),
            handles: HashMap::new(),
            next: 1,
            read: 0,
            written: 0,
            spare: Vec::new(),
        })
    }

    /// Gives back the data buffer of a `Read`/`Pread` reply that has been
    /// sent, for the next read to reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > self.spare.capacity() && buf.capacity() <= MAX_READ as usize {
            self.spare = buf;
        }
    }

    /// Bytes the job read from the submit host so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Bytes the job wrote to the submit host so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// The job's current directory as an absolute submit-host path.
    pub fn cwd(&self) -> Vec<u8> {
        join_abs(&self.root_path, &self.cwd)
    }

    /// Open flags of a handle (`O_ACCMODE`, `O_APPEND`, ...).
    pub fn handle_flags(&self, h: Handle) -> Option<i32> {
        self.handles.get(&h.0).map(|o| o.flags)
    }

    fn escape(&self, path: &[u8]) -> Errno {
        tracing::warn!(
            path = %String::from_utf8_lossy(path),
            root = %String::from_utf8_lossy(&self.root_path),
            "job path leaves its initialdir; refused with EACCES"
        );
        libc::EACCES
    }

    fn fd(&self, h: Handle) -> R<BorrowedFd<'_>> {
        self.handles
            .get(&h.0)
            .map(|o| o.fd.as_fd())
            .ok_or(libc::EBADF)
    }

    /// Where a handle's file is now, relative to the root.
    fn handle_rel(&self, h: Handle) -> R<Vec<u8>> {
        let fd = self.fd(h)?;
        let real = std::fs::read_link(proc_fd(fd)).map_err(|_| libc::EBADF)?;
        let real = real.as_os_str().as_bytes();
        match strip_dir_prefix(real, &self.canon_path) {
            Some(rest) => Ok(rest.to_vec()),
            None => Err(libc::ENOENT),
        }
    }

    /// An empty path with a handle names the handle's own file
    /// (`fstat`, `fchmod`, `futimens`, `AT_EMPTY_PATH`).
    fn by_handle(&self, at: Option<Handle>, path: &[u8]) -> Option<R<BorrowedFd<'_>>> {
        match at {
            Some(h) if path.is_empty() => Some(self.fd(h)),
            _ => None,
        }
    }

    /// The job's path as a path relative to the root (never empty).
    fn rel(&self, at: Option<Handle>, path: &[u8]) -> R<Vec<u8>> {
        let rel = if path.first() == Some(&b'/') {
            let p = trim_slashes(path);
            match strip_dir_prefix(p, &self.root_path)
                .or_else(|| strip_dir_prefix(p, &self.canon_path))
            {
                Some(rest) => {
                    // Keep a trailing slash: it means "must be a directory".
                    let mut v = rest.to_vec();
                    if path.len() > p.len() && !v.is_empty() {
                        v.push(b'/');
                    }
                    v
                }
                None => return Err(self.escape(path)),
            }
        } else {
            if path.is_empty() {
                return Err(libc::ENOENT);
            }
            let base = match at {
                None => self.cwd.clone(),
                Some(h) => self.handle_rel(h)?,
            };
            join(&base, path)
        };
        Ok(if rel.is_empty() { b".".to_vec() } else { rel })
    }

    /// `openat2` below the root; an escape becomes `EACCES` and a log line.
    fn open_rel(&self, rel: &[u8], job_path: &[u8], flags: OFlags, mode: Mode) -> R<OwnedFd> {
        let mode = if flags.contains(OFlags::CREATE) || flags.contains(OFlags::TMPFILE) {
            mode
        } else {
            Mode::empty()
        };
        rustix::fs::openat2(
            &self.root,
            os(rel),
            flags | OFlags::CLOEXEC,
            mode,
            resolve_flags(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::XDEV => self.escape(job_path),
            e => errno(e),
        })
    }

    /// Resolves a whole path (following a final symlink, confined) to an
    /// `O_PATH` fd.
    fn resolve(&self, at: Option<Handle>, path: &[u8], nofollow: bool) -> R<OwnedFd> {
        let rel = self.rel(at, path)?;
        let mut flags = OFlags::PATH;
        if nofollow {
            flags |= OFlags::NOFOLLOW;
        }
        self.open_rel(&rel, path, flags, Mode::empty())
    }

    /// Resolves everything but the last component of a path.
    fn resolve_parent(&self, at: Option<Handle>, path: &[u8]) -> R<AtName> {
        let rel = self.rel(at, path)?;
        let trimmed = trim_slashes(&rel);
        let (parent, name): (&[u8], &[u8]) = match trimmed.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (b".", &rel[..]),
        };
        let bare = trim_slashes(name);
        let (parent, name): (&[u8], &[u8]) = if bare == b"." || bare == b".." || parent.is_empty() {
            // `a/..`, `.`: the directory itself is the object.
            (&rel[..], b".")
        } else {
            (parent, name)
        };
        let dir = self.open_rel(
            parent,
            path,
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        Ok(AtName {
            dir,
            name: name.to_vec(),
        })
    }

    fn insert(&mut self, fd: OwnedFd, flags: i32, path: Vec<u8>) -> Handle {
        let h = self.next;
        self.next += 1;
        self.handles.insert(h, Open { fd, flags, path });
        Handle(h)
    }

    /// The job's files as they are now. `streams` gives the offset the job
    /// sees for handles whose data the starter reads ahead (the handle's own
    /// offset is further on).
    pub fn snapshot(&self, streams: &[(Handle, i64)]) -> FsSnapshot {
        let mut ids: Vec<u64> = self.handles.keys().copied().collect();
        ids.sort_unstable();
        let handles = ids
            .into_iter()
            .map(|id| {
                let o = &self.handles[&id];
                let st = rustix::fs::fstat(&o.fd).ok();
                let dir = st.is_some_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR);
                let deleted = st.is_some_and(|s| s.st_nlink == 0);
                let path = match self.handle_rel(Handle(id)) {
                    Ok(p) if !deleted => p,
                    _ => o.path.clone(),
                };
                let offset = match streams.iter().find(|(h, _)| h.0 == id) {
                    Some(&(_, off)) => off,
                    None => rustix::fs::seek(&o.fd, SeekFrom::Current(0))
                        .map(|n| n as i64)
                        .unwrap_or(0),
                };
                let acc = o.flags & libc::O_ACCMODE;
                let writing =
                    o.flags & libc::O_PATH == 0 && (acc == libc::O_WRONLY || acc == libc::O_RDWR);
                HandleSnapshot {
                    id,
                    path,
                    flags: o.flags,
                    offset,
                    dir,
                    size: if writing {
                        st.map(|s| s.st_size as u64)
                    } else {
                        None
                    },
                    deleted,
                }
            })
            .collect();
        FsSnapshot {
            cwd: self.cwd.clone(),
            handles,
            next: self.next,
            bytes_read: self.read,
            bytes_written: self.written,
            std: [None; 3],
        }
    }

    /// The job's files as `snap` recorded them: every handle reopened under
    /// its id by path (without `O_CREAT`, `O_TRUNC`, `O_EXCL`) at its
    /// offset, and every file that was open for writing cut back to its
    /// size then, so writes replayed after the restart are not doubled.
    pub fn restore(initialdir: &Path, snap: &FsSnapshot) -> Result<JobFs, RestoreError> {
        let mut fs = JobFs::new(initialdir)?;
        let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
        if !snap.cwd.is_empty() {
            fs.open_rel(
                &snap.cwd,
                &snap.cwd,
                OFlags::PATH | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .map_err(|e| RestoreError::Cwd {
                path: show(&snap.cwd),
                source: std::io::Error::from_raw_os_error(e),
            })?;
            fs.cwd = snap.cwd.clone();
        }
        let mut highest = 0;
        for h in &snap.handles {
            let err = |e: Errno| RestoreError::Reopen {
                id: h.id,
                path: show(&h.path),
                source: std::io::Error::from_raw_os_error(e),
            };
            let flags = h.flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL);
            let rel = if h.path.is_empty() {
                b".".to_vec()
            } else {
                h.path.clone()
            };
            let fd = fs
                .open_rel(
                    &rel,
                    &h.path,
                    OFlags::from_bits_retain(flags as u32),
                    Mode::empty(),
                )
                .map_err(err)?;
            if let Some(size) = h.size {
                rustix::fs::ftruncate(&fd, size).map_err(|e| err(errno(e)))?;
            }
            if flags & libc::O_PATH == 0 && h.offset > 0 {
                rustix::fs::seek(&fd, SeekFrom::Start(h.offset as u64))
                    .map_err(|e| err(errno(e)))?;
            }
            fs.handles.insert(
                h.id,
                Open {
                    fd,
                    flags: h.flags,
                    path: rel,
                },
            );
            highest = highest.max(h.id);
        }
        fs.next = snap.next.max(highest + 1);
        fs.read = snap.bytes_read;
        fs.written = snap.bytes_written;
        Ok(fs)
    }

    /// Opens the job's input/output/error (relative to the initialdir, or
    /// absolute inside it) as handles. Created files get mode 0644.
    pub fn open_std(&mut self, path: &str, flags: i32) -> Result<Handle, Errno> {
        let p = path.as_bytes();
        let rel = if p.first() == Some(&b'/') {
            self.rel(None, p)?
        } else {
            join(b"", p)
        };
        if rel.is_empty() {
            return Err(libc::ENOENT);
        }
        let fd = self.open_rel(
            &rel,
            p,
            OFlags::from_bits_retain(flags as u32),
            Mode::from_raw_mode(0o644),
        )?;
        Ok(self.insert(fd, flags, rel))
    }

    /// Opens a path given relative to the initialdir (or absolute inside
    /// it) read-only, confined.
    fn open_from_root(&self, path: &str) -> R<OwnedFd> {
        let p = path.as_bytes();
        let rel = if p.first() == Some(&b'/') {
            self.rel(None, p)?
        } else {
            p.to_vec()
        };
        if rel.is_empty() {
            return Err(libc::ENOENT);
        }
        let fd = self.open_rel(&rel, p, OFlags::RDONLY, Mode::empty())?;
        if rustix::fs::fstat(&fd).map_err(errno)?.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(libc::EACCES);
        }
        Ok(fd)
    }

    /// Whether [`JobFs::executable`] would succeed, without reading the file.
    pub fn can_read(&self, path: &str) -> Result<(), Errno> {
        self.open_from_root(path).map(drop)
    }

    /// Reads the job's executable (relative to the initialdir or absolute
    /// inside it), confined like every other path.
    pub fn executable(&self, path: &str) -> Result<Vec<u8>, Errno> {
        use std::io::Read;
        let mut f = std::fs::File::from(self.open_from_root(path)?);
        let mut v = Vec::new();
        f.read_to_end(&mut v)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        Ok(v)
    }

    /// Applies stream data the job wrote to `h` at its offset; all of it,
    /// or an error.
    pub fn write(&mut self, h: Handle, data: &[u8]) -> Result<u64, Errno> {
        let fd = self.fd(h)?;
        let mut done = 0usize;
        while done < data.len() {
            match rustix::io::write(fd, &data[done..]) {
                Ok(0) => return Err(libc::EIO),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    self.written += done as u64;
                    return Err(errno(e));
                }
            }
        }
        self.written += done as u64;
        Ok(done as u64)
    }

    /// Executes one call.
    pub fn call(&mut self, op: FileOp) -> FileReply {
        match self.exec(op) {
            Ok(r) => r,
            Err(e) => FileReply::Err(e),
        }
    }

    fn exec(&mut self, op: FileOp) -> R<FileReply> {
        use FileOp::*;
        Ok(match op {
            Open {
                at,
                path,
                flags,
                mode,
            } => {
                let rel = self.rel(at, &path)?;
                let fd = self.open_rel(
                    &rel,
                    &path,
                    OFlags::from_bits_retain(flags as u32),
                    Mode::from_raw_mode(mode),
                )?;
                let stat = to_stat(&rustix::fs::fstat(&fd).map_err(errno)?);
                let h = self.insert(fd, flags, rel);
                FileReply::Opened { h, stat }
            }
            Close { h } => {
                self.handles.remove(&h.0).ok_or(libc::EBADF)?;
                FileReply::Ok
            }
            Read { h, len } => {
                let fd = self.handles.get(&h.0).ok_or(libc::EBADF)?.fd.as_fd();
                let buf = read_with(&mut self.spare, len.min(MAX_READ) as usize, |b| {
                    rustix::io::read(fd, b)
                })?;
                self.read += buf.len() as u64;
                FileReply::Data(buf)
            }
            Pread { h, len, off } => {
                let off = u64::try_from(off).map_err(|_| libc::EINVAL)?;
                let fd = self.handles.get(&h.0).ok_or(libc::EBADF)?.fd.as_fd();
                let buf = read_with(&mut self.spare, len.min(MAX_READ) as usize, |b| {
                    rustix::io::pread(fd, b, off)
                })?;
                self.read += buf.len() as u64;
                FileReply::Data(buf)
            }
            Write { h, data } => {
                let n = rustix::io::write(self.fd(h)?, &data).map_err(errno)?;
                self.written += n as u64;
                FileReply::Count(n as u64)
            }
            Pwrite { h, data, off } => {
                let off = u64::try_from(off).map_err(|_| libc::EINVAL)?;
                let n = rustix::io::pwrite(self.fd(h)?, &data, off).map_err(errno)?;
                self.written += n as u64;
                FileReply::Count(n as u64)
            }
            Lseek { h, off, whence } => {
                let pos = match whence {
                    libc::SEEK_SET => {
                        SeekFrom::Start(u64::try_from(off).map_err(|_| libc::EINVAL)?)
                    }
                    libc::SEEK_CUR => SeekFrom::Current(off),
                    libc::SEEK_END => SeekFrom::End(off),
                    libc::SEEK_DATA => SeekFrom::Data(off),
                    libc::SEEK_HOLE => SeekFrom::Hole(off),
                    _ => return Err(libc::EINVAL),
                };
                let n = rustix::fs::seek(self.fd(h)?, pos).map_err(errno)?;
                FileReply::Offset(i64::try_from(n).map_err(|_| libc::EOVERFLOW)?)
            }
            Fstat { h } => {
                FileReply::Stat(to_stat(&rustix::fs::fstat(self.fd(h)?).map_err(errno)?))
            }
            Stat { at, path, nofollow } => {
                let st = if let Some(fd) = self.by_handle(at, &path) {
                    rustix::fs::fstat(fd?).map_err(errno)?
                } else if nofollow {
                    let a = self.resolve_parent(at, &path)?;
                    rustix::fs::statat(&a.dir, os(&a.name), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(errno)?
                } else {
                    let fd = self.resolve(at, &path, false)?;
                    rustix::fs::fstat(&fd).map_err(errno)?
                };
                FileReply::Stat(to_stat(&st))
            }
            Access {
                at,
                path,
                mode,
                flags,
            } => {
                let access = rustix::fs::Access::from_bits(mode as u32).ok_or(libc::EINVAL)?;
                let eaccess = if flags & libc::AT_EACCESS != 0 {
                    AtFlags::EACCESS
                } else {
                    AtFlags::empty()
                };
                if flags & !(libc::AT_EACCESS | libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH)
                    != 0
                {
                    return Err(libc::EINVAL);
                }
                if let Some(fd) = self.by_handle(at, &path) {
                    rustix::fs::accessat(rustix::fs::CWD, proc_fd(fd?), access, eaccess)
                        .map_err(errno)?;
                } else if flags & libc::AT_SYMLINK_NOFOLLOW != 0 {
                    let a = self.resolve_parent(at, &path)?;
                    rustix::fs::accessat(
                        &a.dir,
                        os(&a.name),
                        access,
                        eaccess | AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(errno)?;
                } else {
                    let fd = self.resolve(at, &path, false)?;
                    rustix::fs::accessat(rustix::fs::CWD, proc_fd(fd.as_fd()), access, eaccess)
                        .map_err(errno)?;
                }
                FileReply::Ok
            }
            Unlink { at, path, dir } => {
                let a = self.resolve_parent(at, &path)?;
                let flags = if dir {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                rustix::fs::unlinkat(&a.dir, os(&a.name), flags).map_err(errno)?;
                FileReply::Ok
            }
            Rename {
                from_at,
                from,
                to_at,
                to,
                flags,
            } => {
                let a = self.resolve_parent(from_at, &from)?;
                let b = self.resolve_parent(to_at, &to)?;
                let flags = RenameFlags::from_bits(flags).ok_or(libc::EINVAL)?;
                rustix::fs::renameat_with(&a.dir, os(&a.name), &b.dir, os(&b.name), flags)
                    .map_err(errno)?;
                FileReply::Ok
            }
            Mkdir { at, path, mode } => {
                let a = self.resolve_parent(at, &path)?;
                rustix::fs::mkdirat(&a.dir, os(&a.name), Mode::from_raw_mode(mode))
                    .map_err(errno)?;
                FileReply::Ok
            }
            Getdents { h, max } => FileReply::Dirents(self.getdents(h, max)?),
            Chdir { at, path } => {
                let fd = if path.is_empty() {
                    let h = at.ok_or(libc::ENOENT)?;
                    let rel = self.handle_rel(h)?;
                    let rel = if rel.is_empty() { b".".to_vec() } else { rel };
                    self.open_rel(&rel, &path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?
                } else {
                    let rel = self.rel(at, &path)?;
                    self.open_rel(&rel, &path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?
                };
                let real = std::fs::read_link(proc_fd(fd.as_fd())).map_err(|_| libc::ENOENT)?;
                let rest = strip_dir_prefix(real.as_os_str().as_bytes(), &self.canon_path)
                    .ok_or_else(|| self.escape(&path))?;
                self.cwd = rest.to_vec();
                FileReply::Path(self.cwd())
            }
            Getcwd => FileReply::Path(self.cwd()),
            Ftruncate { h, len } => {
                let len = u64::try_from(len).map_err(|_| libc::EINVAL)?;
                rustix::fs::ftruncate(self.fd(h)?, len).map_err(errno)?;
                FileReply::Ok
            }
            Truncate { at, path, len } => {
                let len = u64::try_from(len).map_err(|_| libc::EINVAL)?;
                let rel = self.rel(at, &path)?;
                let fd = self.open_rel(&rel, &path, OFlags::WRONLY, Mode::empty())?;
                rustix::fs::ftruncate(&fd, len).map_err(errno)?;
                FileReply::Ok
            }
            Fsync { h, data_only } => {
                let fd = self.fd(h)?;
                if data_only {
                    rustix::fs::fdatasync(fd)
                } else {
                    rustix::fs::fsync(fd)
                }
                .map_err(errno)?;
                FileReply::Ok
            }
            Lock { h, cmd, lock } => {
                let fd = self.fd(h)?;
                match ofd_cmd(cmd).ok_or(libc::EINVAL)? {
                    libc::F_OFD_GETLK => FileReply::Lock(get_lock(fd, &lock)?),
                    c => {
                        set_lock(fd, c, &lock)?;
                        FileReply::Ok
                    }
                }
            }
            Readlink { at, path } => {
                let a = self.resolve_parent(at, &path)?;
                let target =
                    rustix::fs::readlinkat(&a.dir, os(&a.name), Vec::new()).map_err(errno)?;
                FileReply::Path(target.into_bytes())
            }
            Chmod { at, path, mode } => {
                let owned;
                let fd = match self.by_handle(at, &path) {
                    Some(fd) => fd?,
                    None => {
                        owned = self.resolve(at, &path, false)?;
                        owned.as_fd()
                    }
                };
                rustix::fs::chmodat(
                    rustix::fs::CWD,
                    proc_fd(fd),
                    Mode::from_raw_mode(mode),
                    AtFlags::empty(),
                )
                .map_err(errno)?;
                FileReply::Ok
            }
            Utimens {
                at,
                path,
                times,
                nofollow,
            } => {
                let ts = |t: Option<(i64, i64)>| match t {
                    Some((s, ns)) => rustix::fs::Timespec {
                        tv_sec: s,
                        tv_nsec: ns,
                    },
                    None => rustix::fs::Timespec {
                        tv_sec: 0,
                        tv_nsec: rustix::fs::UTIME_NOW,
                    },
                };
                let t = rustix::fs::Timestamps {
                    last_access: ts(times[0]),
                    last_modification: ts(times[1]),
                };
                if let Some(fd) = self.by_handle(at, &path) {
                    rustix::fs::utimensat(rustix::fs::CWD, proc_fd(fd?), &t, AtFlags::empty())
                        .map_err(errno)?;
                } else if nofollow {
                    let a = self.resolve_parent(at, &path)?;
                    rustix::fs::utimensat(&a.dir, os(&a.name), &t, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(errno)?;
                } else {
                    let fd = self.resolve(at, &path, false)?;
                    rustix::fs::utimensat(
                        rustix::fs::CWD,
                        proc_fd(fd.as_fd()),
                        &t,
                        AtFlags::empty(),
                    )
                    .map_err(errno)?;
                }
                FileReply::Ok
            }
            Symlink { target, at, path } => {
                let a = self.resolve_parent(at, &path)?;
                rustix::fs::symlinkat(os(&target), &a.dir, os(&a.name)).map_err(errno)?;
                FileReply::Ok
            }
            Link {
                from_at,
                from,
                to_at,
                to,
            } => {
                let a = self.resolve_parent(from_at, &from)?;
                let b = self.resolve_parent(to_at, &to)?;
                rustix::fs::linkat(&a.dir, os(&a.name), &b.dir, os(&b.name), AtFlags::empty())
                    .map_err(errno)?;
                FileReply::Ok
            }
            Barrier => FileReply::Ok,
            Net(_) => return Err(libc::ENOTSUP),
        })
    }

    fn getdents(&mut self, h: Handle, max: u32) -> R<Vec<Dirent>> {
        let fd = self.fd(h)?;
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let mut buf: Vec<MaybeUninit<u8>> = vec![MaybeUninit::uninit(); 32 << 10];
        let mut dir = rustix::fs::RawDir::new(fd, &mut buf);
        let mut cookie = None;
        while let Some(ent) = dir.next() {
            let ent = ent.map_err(errno)?;
            out.push(Dirent {
                ino: ent.ino(),
                kind: ent.file_type().as_raw_mode().checked_shr(12).unwrap_or(0) as u8,
                name: ent.file_name().to_bytes().to_vec(),
            });
            if out.len() >= max as usize {
                cookie = Some(ent.next_entry_cookie());
                break;
            }
        }
        if let Some(c) = cookie {
            // The buffer may hold entries past `max`: resume after the last one taken.
            rustix::fs::seek(fd, SeekFrom::Start(c)).map_err(errno)?;
        }
        Ok(out)
    }
}

fn join_abs(root: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut v = root.to_vec();
    if !rel.is_empty() {
        if v.last() != Some(&b'/') {
            v.push(b'/');
        }
        v.extend_from_slice(rel);
    }
    v
}

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;
