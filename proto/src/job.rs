//! A job as it travels between daemons: its expanded description, its
//! state in the queue, and its event-log records.

use crate::ids::{HostName, JobId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One job of a cluster, every macro expanded, every path absolute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// As written in the job file (absolute, or relative to `initialdir`).
    pub executable: String,
    /// Ship the executable from the submit host (default unless it is an
    /// absolute path outside `initialdir`, which then must exist on the
    /// execute host).
    pub transfer_executable: bool,
    pub arguments: Vec<String>,
    /// Paths relative to `initialdir` or absolute inside it.
    pub input: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
    /// Absolute path on the submit host; the job's sandbox there.
    pub initialdir: String,
    pub environment: Vec<(String, String)>,
    /// Requirements and rank expressions, as text.
    pub requirements: Option<String>,
    pub rank: Option<String>,
    pub request_cpus: u32,
    pub request_memory_mb: u64,
    pub request_disk_mb: u64,
    pub max_retries: u32,
    /// Custom attributes (`+Attr` / `[attributes]`), as expression text.
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Idle,
    Running,
    Completed,
    Removed,
    Held,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Idle => "idle",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Removed => "removed",
            JobState::Held => "held",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "idle" => JobState::Idle,
            "running" => JobState::Running,
            "completed" => JobState::Completed,
            "removed" => JobState::Removed,
            "held" => JobState::Held,
            _ => return None,
        })
    }
    /// The job will not change state again by itself.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Completed | JobState::Removed)
    }
}

/// How a job's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// Resources a run used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub wall_secs: f64,
    pub user_cpu_secs: f64,
    pub sys_cpu_secs: f64,
    /// Bytes the job read from / wrote to the submit host.
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// A job's summary line in `roost q`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: JobId,
    pub owner: String,
    pub state: JobState,
    pub executable: String,
    pub arguments: Vec<String>,
    pub host: Option<HostName>,
    pub submitted: i64,
    pub exit: Option<ExitStatus>,
    pub runs: u32,
    /// Checkpoints committed so far.
    #[serde(default)]
    pub checkpoints: u32,
    /// The last committed checkpoint's image size (compressed, as stored).
    #[serde(default)]
    pub ckpt_bytes: Option<u64>,
    /// When the last checkpoint was committed (unix seconds).
    #[serde(default)]
    pub ckpt_time: Option<i64>,
    /// The last checkpoint: "full" or "incremental".
    #[serde(default)]
    pub ckpt_kind: Option<String>,
    /// How long the last checkpoint took (seconds).
    #[serde(default)]
    pub ckpt_secs: Option<f64>,
    /// When the job completed or was removed (unix seconds).
    #[serde(default)]
    pub finished: Option<i64>,
    /// Why the job is held.
    #[serde(default)]
    pub hold_reason: Option<String>,
    /// A checkpoint or restart image moving between the schedd and the
    /// job's host right now.
    #[serde(default)]
    pub transfer: Option<Transfer>,
}

/// Which way an image moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferKind {
    /// A checkpoint image arriving from the execute host.
    Checkpoint,
    /// The committed image going to the host the job restarts on.
    Restart,
}

/// An image transfer in progress, as the schedd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub kind: TransferKind,
    /// Image bytes (compressed, as stored) moved so far.
    pub bytes: u64,
    /// The image's size when known (a restart; a checkpoint learns its
    /// size only at the end).
    pub total: Option<u64>,
    /// Seconds since the transfer began.
    pub secs: f64,
}
