//! The starter ⇄ shadow wire (TLS, starter dials the schedd).
//!
//! The starter opens with `Attach`; the shadow answers `Attached` or
//! `Refused`. After that the starter sends `Call`s (each answered by a
//! `Reply` with the same id, in order), `Write`s it does not wait for
//! (errors come back as `WriteFailed`), executable requests, and finally
//! `Exited`.
//!
//! Once the job runs (`Started`), the link survives being cut: every
//! message but `Attach`/`Resume`/`Ack` and their answers is numbered by
//! its position on the wire (both directions count from 1 after `Attach`),
//! each side keeps what it sent until the other's `Ack { received }`
//! covers it, and `Ack`s double as heartbeats. A starter that loses the
//! link dials again with `Resume` (what it has received); the shadow
//! answers `Resumed` (what it has received) and each side resends the rest.

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
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Picks up a session whose link was lost: `received` messages from the
    /// shadow have arrived. Answered by `Resumed` or `Refused`.
    Resume {
        claim: ClaimId,
        job: JobId,
        host: HostName,
        received: u64,
    },
    /// `received` messages from the shadow have arrived (also a heartbeat).
    Ack {
        received: u64,
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
    /// The owner came back: the job's processes are stopped (event `suspended`).
    Suspended,
    /// The job's processes run again (event `unsuspended`).
    Continued,
    /// The job left this host and goes back to the queue; with
    /// `checkpointed` it resumes from the image just committed (event
    /// `vacated`), otherwise from its last image or from the start
    /// (event `evicted`). Answered by `Done`.
    Vacated {
        reason: String,
        checkpointed: bool,
    },
    /// A checkpoint image follows in `CkptChunk`s (zstd frames, in order).
    CkptBegin {
        reason: String,
    },
    CkptChunk {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The image is complete: `raw_bytes` before compression, `seconds` to
    /// take it; `streams` gives each read stream's offset as the job saw it.
    /// Answered by `CkptCommitted` or `CkptFailed`.
    CkptEnd {
        raw_bytes: u64,
        seconds: f64,
        streams: Vec<(Handle, i64)>,
    },
    /// The image could not be taken (the reason names what the job holds).
    CkptAbort {
        reason: String,
    },
    /// Send the job's last committed image (`ImageChunk`s), or `NoImage`.
    FetchImage,
    /// `n` more bytes pushed to socket `h` are in its placeholder.
    PushAck {
        h: Handle,
        n: u64,
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
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        last: bool,
    },
    /// Acknowledges `Exited`/`Failed`/`Vacated`: the result is committed.
    Done,
    /// A user or administrator asks for a checkpoint now (`vacate`: then
    /// leave the host).
    Checkpoint {
        vacate: bool,
    },
    /// The image is committed on the submit host (`bytes` stored).
    CkptCommitted {
        bytes: u64,
    },
    CkptFailed {
        reason: String,
    },
    /// The last committed image, zstd-compressed, in order.
    ImageChunk {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        last: bool,
    },
    NoImage,
    /// The session goes on: `received` messages from the starter arrived;
    /// the shadow resends what came after the starter's `received`.
    Resumed {
        received: u64,
    },
    /// `received` messages from the starter have arrived (also a heartbeat).
    Ack {
        received: u64,
    },
    /// Bytes that arrived on socket `h` (see [`crate::net`]); empty: the
    /// peer closed its side (end of file for the job).
    Push {
        h: Handle,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
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
    /// How long either side keeps the job when the link between them is
    /// lost, waiting for the starter to resume (the job's lease).
    pub lease_secs: u64,
}

impl ToShadow {
    /// Whether the message takes a place in the numbered stream.
    pub fn counted(&self) -> bool {
        !matches!(
            self,
            ToShadow::Attach { .. } | ToShadow::Resume { .. } | ToShadow::Ack { .. }
        )
    }
}

impl FromShadow {
    /// Whether the message takes a place in the numbered stream.
    pub fn counted(&self) -> bool {
        !matches!(
            self,
            FromShadow::Attached(_)
                | FromShadow::Refused { .. }
                | FromShadow::Resumed { .. }
                | FromShadow::Ack { .. }
        )
    }
}
