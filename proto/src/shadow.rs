//! The starter ⇄ shadow wire (TLS, starter dials the schedd).
//!
//! The starter opens with `Attach`; the shadow answers `Attached` or
//! `Refused`. After that the starter sends `Call`s (each answered by a
//! `Reply` with the same id, in order), `Write`s it does not wait for
//! (errors come back as `WriteFailed`), executable requests, and finally
//! `Exited`.

use crate::fileop::{Errno, FileOp, FileReply};
use crate::ids::{ClaimId, Handle, HostName, JobId};
use crate::job::{ExitStatus, JobSpec, Usage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToShadow {
    Attach {
        claim: ClaimId,
        job: JobId,
        host: HostName,
    },
    /// A call the starter waits for.
    Call {
        id: u64,
        op: FileOp,
    },
    /// Stream data the job wrote to a handle, applied at its offset, in order.
    Write {
        h: Handle,
        data: Vec<u8>,
    },
    /// Send the executable (`ExecChunk`s until `last`).
    FetchExecutable,
    /// The job's process started (pid in its namespace).
    Started {
        pid: i32,
    },
    Exited {
        status: ExitStatus,
        usage: Usage,
    },
    /// The starter could not run the job (the reason is shown to the user).
    Failed {
        reason: String,
    },
}

// Messages are short-lived and moved once; boxing the big variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromShadow {
    Attached(Attached),
    Refused {
        reason: String,
    },
    Reply {
        id: u64,
        reply: FileReply,
    },
    WriteFailed {
        h: Handle,
        errno: Errno,
    },
    ExecChunk {
        data: Vec<u8>,
        last: bool,
    },
    /// Acknowledges `Exited`/`Failed`: the result is committed to the queue.
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attached {
    pub job: JobId,
    pub spec: JobSpec,
    pub owner: String,
    /// Handles already opened for the job's stdin/stdout/stderr, if any
    /// (stdout/stderr go to /dev/null on the execute host when `None`).
    pub stdin: Option<Handle>,
    pub stdout: Option<Handle>,
    pub stderr: Option<Handle>,
}
