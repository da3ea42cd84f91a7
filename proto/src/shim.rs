//! The shim ⇄ starter wire: a Unix stream socket inside the sandbox.
//!
//! Each process of the job has its own connection (a forked child connects
//! anew; an exec'd image keeps its connection through `ROOST_CHAN_FD`). The
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
/// Environment variable: the channel fd an exec'd image inherits.
pub const ENV_CHAN_FD: &str = "ROOST_CHAN_FD";
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
    Hello { pid: i32, inherited: Vec<(i32, u64)> },
    /// A remote file call, forwarded to the shadow.
    Call(FileOp),
    /// Make the handle's placeholder a read stream: the starter pushes the
    /// file's bytes from the handle's offset into it (used for stdin).
    Stream { h: Handle },
    /// The process is about to exit with this status (informational).
    Exiting { status: i32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShimReply {
    /// Answer to `Hello`: which inherited fds are remote, and how.
    Welcome { remote: Vec<InheritedFd> },
    /// Answer to `Call`.
    Reply(FileReply),
    /// Answer to `Stream` and `Exiting`.
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
