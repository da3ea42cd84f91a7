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
    /// Ask running jobs' starters for a checkpoint now; the jobs go on.
    Checkpoint {
        jobs: Vec<JobId>,
    },
    /// Ask running jobs to checkpoint and leave their hosts; they go back
    /// to the queue and resume from the image elsewhere.
    Vacate {
        jobs: Vec<JobId>,
    },
    /// Keep jobs from running until released (a running one is vacated first).
    Hold {
        jobs: Vec<JobId>,
        reason: String,
    },
    /// Let held jobs run again.
    Release {
        jobs: Vec<JobId>,
    },
    /// Completed and removed jobs, newest first (`limit`: at most that many).
    History {
        limit: Option<u32>,
    },
    /// One job's ad, as `roost why` sends it to the matchmaker.
    JobAd {
        job: JobId,
    },
    /// Every job's ad (unfinished ones, or all with `all`), for
    /// `roost q --constraint`.
    JobAds {
        all: bool,
    },
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
    /// Answer to `Checkpoint`, `Vacate`, `Hold` and `Release`: `done` were
    /// acted on (a running job's starter was asked; what happened follows
    /// in the job's event log); `vacating` are those of them that leave
    /// their hosts first (`Vacate`, or `Hold` of a running job); `refused`
    /// says why the others were not.
    Acted {
        done: Vec<JobId>,
        vacating: Vec<JobId>,
        refused: Vec<(JobId, String)>,
    },
    History {
        jobs: Vec<JobSummary>,
    },
    /// Answer to `JobAd`: the job's description attributes
    /// (`policies::ad::job_ad`) plus its queue state: `ClusterId`,
    /// `ProcId`, `QDate`, `JobRuns`, `JobState` (`"idle"`, `"running"`, …),
    /// `RemoteHost` while it runs (`LastRemoteHost` after), `HoldReason` while held.
    JobAd {
        ad: crate::pool::Ad,
        owner: String,
    },
    /// Answer to `JobAds`, in queue order.
    JobAds {
        jobs: Vec<crate::pool::JobAd>,
    },
    Error {
        message: String,
    },
}
