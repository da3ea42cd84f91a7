//! roost CLI ⇄ schedd, over the schedd's 0600 Unix socket. One request,
//! one reply; the schedd identifies the user by `SO_PEERCRED`.

use crate::ids::JobId;
use crate::job::JobSummary;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CliRequest {
    /// A job description file's text; `cwd` is where `roost submit` ran
    /// (the default `initialdir`), `file` its name for error messages.
    Submit {
        file: String,
        text: String,
        cwd: String,
    },
    Queue {
        all: bool,
    },
    Remove {
        jobs: Vec<JobId>,
    },
    /// The job's event log, JSON lines.
    Log {
        job: JobId,
    },
    Ping,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CliReply {
    Submitted {
        jobs: Vec<JobId>,
    },
    Queue {
        jobs: Vec<JobSummary>,
    },
    Removed {
        jobs: Vec<JobId>,
        not_found: Vec<JobId>,
    },
    Log {
        lines: Vec<String>,
    },
    Pong,
    Error {
        message: String,
    },
}
