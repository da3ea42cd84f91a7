//! The remote file calls a job makes, as the shadow executes them.
//!
//! Paths are bytes as the job gave them. `at: None` means "relative to the
//! job's current directory"; the shim sends absolute paths as they are. The
//! shadow confines every path to the job's sandbox on the submit host.
//! Numbers (`flags`, `mode`, `whence`, errno values) are Linux x86-64 ABI
//! values, passed through unchanged.

use crate::ids::Handle;
use serde::{Deserialize, Serialize};

/// An errno value (`libc::EACCES`, ...).
pub type Errno = i32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileOp {
    /// `openat(at, path, flags, mode)`. Replies `Opened`.
    Open {
        at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        flags: i32,
        mode: u32,
    },
    /// Drop one reference to a handle. Replies `Ok`.
    Close { h: Handle },
    /// `read` at the handle's offset. Replies `Data` (empty at end of file).
    Read { h: Handle, len: u32 },
    /// `pread`. Replies `Data`.
    Pread { h: Handle, len: u32, off: i64 },
    /// `write` at the handle's offset. Replies `Count`.
    Write {
        h: Handle,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// `pwrite`. Replies `Count`.
    Pwrite {
        h: Handle,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        off: i64,
    },
    /// `lseek`. Replies `Offset`.
    Lseek { h: Handle, off: i64, whence: i32 },
    /// `fstat`. Replies `Stat`.
    Fstat { h: Handle },
    /// `fstatat` (`nofollow` = `AT_SYMLINK_NOFOLLOW`). Replies `Stat`.
    Stat {
        at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        nofollow: bool,
    },
    /// `faccessat(at, path, mode, flags)`. Replies `Ok`.
    Access {
        at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        mode: i32,
        flags: i32,
    },
    /// `unlinkat` (`dir` = `AT_REMOVEDIR`). Replies `Ok`.
    Unlink {
        at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        dir: bool,
    },
    /// `renameat2`. Replies `Ok`.
    Rename {
        from_at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        from: Vec<u8>,
        to_at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
        flags: u32,
    },
    /// `mkdirat`. Replies `Ok`.
    Mkdir {
        at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        mode: u32,
    },
    /// Next directory entries of a directory handle (`getdents64`).
    /// Replies `Dirents`; an empty list is the end.
    Getdents { h: Handle, max: u32 },
    /// `chdir`/`fchdir`: validate a directory and make it the job's current
    /// directory. Replies `Path` with its absolute submit-host path.
    Chdir {
        at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    /// The job's current directory. Replies `Path`.
    Getcwd,
    /// `ftruncate`. Replies `Ok`.
    Ftruncate { h: Handle, len: i64 },
    /// `truncate`. Replies `Ok`.
    Truncate {
        at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        len: i64,
    },
    /// `fsync`/`fdatasync`. Replies `Ok`.
    Fsync { h: Handle, data_only: bool },
    /// `fcntl(F_GETLK|F_SETLK|F_SETLKW|F_OFD_*)`. Replies `Lock` (for the
    /// GET commands, the conflicting lock or `F_UNLCK`) or `Ok`.
    Lock { h: Handle, cmd: i32, lock: Flock },
    /// `readlinkat`. Replies `Path`.
    Readlink {
        at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    /// `fchmodat`/`fchmod` (`h` set: by handle). Replies `Ok`.
    Chmod {
        at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        mode: u32,
    },
    /// `utimensat` (times as (sec, nsec); `None` = now). Replies `Ok`.
    Utimens {
        at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        times: [Option<(i64, i64)>; 2],
        nofollow: bool,
    },
    /// `symlinkat(target, at, path)`. Replies `Ok`.
    Symlink {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    /// `linkat`. Replies `Ok`.
    Link {
        from_at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        from: Vec<u8>,
        to_at: Option<Handle>,
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
    },
    /// Does nothing; replies `Ok` once every earlier `Write` is applied
    /// (the shadow executes a job's calls and writes in order).
    Barrier,
    /// A socket call (see [`crate::net`]).
    Net(crate::net::NetOp),
}

impl FileOp {
    /// The handle this call operates on, if any.
    pub fn handle(&self) -> Option<Handle> {
        use FileOp::*;
        match self {
            Close { h }
            | Read { h, .. }
            | Pread { h, .. }
            | Write { h, .. }
            | Pwrite { h, .. }
            | Lseek { h, .. }
            | Fstat { h }
            | Getdents { h, .. }
            | Ftruncate { h, .. }
            | Fsync { h, .. }
            | Lock { h, .. } => Some(*h),
            Net(op) => op.handle(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileReply {
    Ok,
    Err(Errno),
    Opened {
        h: Handle,
        stat: Stat,
    },
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Count(u64),
    Offset(i64),
    Stat(Stat),
    Dirents(Vec<Dirent>),
    Path(#[serde(with = "serde_bytes")] Vec<u8>),
    Lock(Flock),
    /// Answers to socket calls.
    Net(crate::net::NetReply),
}

/// `struct stat`, field for field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: i64,
    pub blksize: i64,
    pub blocks: i64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

/// One directory entry, as `getdents64` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirent {
    pub ino: u64,
    /// `DT_*` type.
    pub kind: u8,
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
}

/// `struct flock`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flock {
    pub typ: i16,
    pub whence: i16,
    pub start: i64,
    pub len: i64,
    pub pid: i32,
}
