//! The shim ⇄ starter wire: a Unix stream socket inside the sandbox.
//!
//! Each process image of the job has its own connection (`O_CLOEXEC`; a
//! forked child and an exec'd image each connect anew and say `Hello`). The
//! shim sends one [`ShimRequest`] frame and waits for one [`ShimReply`]
//! frame. A reply to `Call(Open)` that succeeds carries one file descriptor
//! (SCM_RIGHTS): the placeholder for the new remote fd. Data the job
//! `write`s to a remote fd goes straight into that placeholder socket; the
//! starter applies it, in order, before any later call of the same job.

use crate::fileop::{FileOp, FileReply};
use crate::ids::Handle;
use serde::{Deserialize, Serialize};

/// Environment variable: path of the starter's Unix socket.
pub const ENV_SOCK: &str = "ROOST_SOCK";
/// Environment variable: the job's current directory (absolute, submit host).
pub const ENV_CWD: &str = "ROOST_CWD";
/// Environment variable: the job's initial directory on the submit host;
/// absolute paths below it are remote.
pub const ENV_ROOT: &str = "ROOST_ROOT";
/// Environment variable: set to a path to make the shim log there.
pub const ENV_LOG: &str = "ROOST_SHIM_LOG";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShimRequest {
    /// First frame on a connection. `inherited` lists socket fds the process
    /// holds (fd number, inode) so the starter can say which are remote.
    Hello {
        pid: i32,
        inherited: Vec<(i32, u64)>,
    },
    /// A remote file call, forwarded to the shadow.
    Call(FileOp),
    /// Make the handle's placeholder a read stream: the starter pushes the
    /// file's bytes from the handle's offset into it (used for stdin).
    Stream { h: Handle },
    /// Apply every write the job made so far (to any placeholder) on the
    /// shadow before replying (`close`/`fsync` of a written fd, `exit`).
    Flush,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShimReply {
    /// Answer to `Hello`: which inherited fds are remote, and how.
    Welcome { remote: Vec<InheritedFd> },
    /// Answer to `Call`.
    Reply(FileReply),
    /// Answer to `Stream` and `Flush`.
    Ok,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InheritedFd {
    pub fd: i32,
    pub h: Handle,
    /// Open flags of the handle (`O_ACCMODE`, `O_APPEND`, ...).
    pub flags: i32,
    /// The starter pushes the file into this placeholder (a read stream).
    pub stream: bool,
    /// The handle is a directory.
    pub dir: bool,
}
