//! The `roost` CLI server on `DIR/schedd.sock` (mode 0600).
//!
//! The peer is identified by `SO_PEERCRED`; only the schedd's own user (or
//! root) is served, and a job's `Owner` is that user's name. Job
//! descriptions are TOML files or HTCondor submit files, told apart by the
//! file's extension (`policies::jobfile::parse_any`). Each connection may
//! send several requests, each answered by one reply. A frame that is
//! oversized or does not decode closes that connection only.

use crate::queue::{JobRow, NewJob, QueueError};
use crate::{Schedd, ShadowCmd};
use proto::cli::{CliReply, CliRequest};
use proto::frame::{read_frame_async, write_frame_async};
use proto::job::JobState;
use proto::{JobId, ProtoError};
use std::sync::Arc;
use tokio::net::{UnixListener, UnixStream};
use tracing::{Instrument, debug, info, info_span, warn};

/// Largest request frame (a job description's text), bytes.
pub const MAX_CLI_FRAME: u32 = 4 << 20;

/// Accepts CLI connections until the task is aborted.
pub async fn serve(s: Arc<Schedd>, l: UnixListener) {
    loop {
        match l.accept().await {
            Ok((stream, _)) => {
                let id = s.next_conn();
                let s = s.clone();
                tokio::spawn(conn(s, stream).instrument(info_span!("cli", conn = id)));
            }
            Err(e) => {
                warn!("CLI accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn conn(s: Arc<Schedd>, mut stream: UnixStream) {
    let cred = match rustix::net::sockopt::get_socket_peercred(&stream) {
        Ok(c) => c,
        Err(e) => {
            warn!("no peer credentials on the CLI socket ({e}); connection closed");
            return;
        }
    };
    let uid = cred.uid.as_raw();
    let me = rustix::process::geteuid().as_raw();
    if uid != me && uid != 0 {
        warn!(uid, "a user other than the schedd's own connected; refused");
        let reply = CliReply::Error {
            message: format!("uid {uid} may not use this schedd"),
        };
        let _ = write_frame_async(&mut stream, &reply).await;
        return;
    }
    let owner = crate::users::name_of(uid);
    loop {
        let req: CliRequest = match read_frame_async(&mut stream, MAX_CLI_FRAME).await {
            Ok(r) => r,
            Err(ProtoError::Closed) => return,
            Err(e) => {
                warn!(uid, "bad CLI frame; connection closed: {e}");
                return;
            }
        };
        debug!(?req, "request");
        let reply = handle(&s, &owner, req).await;
        if let Err(e) = write_frame_async(&mut stream, &reply).await {
            debug!("CLI client went away: {e}");
            return;
        }
    }
}

fn error(e: impl std::fmt::Display) -> CliReply {
    CliReply::Error {
        message: e.to_string(),
    }
}

fn queue_error(e: QueueError) -> CliReply {
    warn!("queue error: {}", chain(&e));
    CliReply::Error { message: chain(&e) }
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn handle(s: &Arc<Schedd>, owner: &str, req: CliRequest) -> CliReply {
    match req {
        CliRequest::Ping => CliReply::Pong,
        CliRequest::Submit { file, text, cwd } => {
            // `roost submit --dry-run` checks files through the same
            // `Submission`, so both give the same message.
            let desc = match policies::jobfile::Submission::parse(&file, &text, &cwd) {
                Ok(d) => d,
                Err(e) => return error(e),
            };
            let owner2 = owner.to_string();
            let file2 = file.clone();
            let r = s
                .db(move |q| {
                    q.submit_jobs(&owner2, &file2, |cluster| {
                        let procs = desc.expand(cluster)?;
                        Ok(procs
                            .into_iter()
                            .map(|p| NewJob {
                                spec: p.spec,
                                user_log: p.log,
                            })
                            .collect())
                    })
                })
                .await;
            match r {
                Ok(jobs) => {
                    info!(owner, file, first = %jobs[0], count = jobs.len(), "submitted");
                    s.changed.notify_one();
                    CliReply::Submitted { jobs }
                }
                Err(QueueError::Rejected(m)) => CliReply::Error { message: m },
                Err(e) => queue_error(e),
            }
        }
        CliRequest::Queue { all } => match s.db(move |q| q.list(all)).await {
            Ok(mut jobs) => {
                for j in &mut jobs {
                    j.transfer = s.images.transfers.get(j.id);
                }
                CliReply::Queue { jobs }
            }
            Err(e) => queue_error(e),
        },
        CliRequest::Log { job } => match s.db(move |q| q.log(job)).await {
            Ok(Some(lines)) => CliReply::Log { lines },
            Ok(None) => error(format!("no job {job} in this schedd's queue")),
            Err(e) => queue_error(e),
        },
        CliRequest::Remove { jobs } => {
            let by = owner.to_string();
            let ids: Vec<JobId> = jobs.clone();
            match s.db(move |q| q.remove(&ids, &by)).await {
                Ok((removed, not_found)) => {
                    for r in &removed {
                        let _g = info_span!("job", job = %r.id).entered();
                        info!(by = owner, was_running = r.was_running, "removed");
                        if !(r.was_running && s.end_shadow(r.id)) {
                            s.images.discard(r.id);
                        }
                        if let Some(c) = &r.claim {
                            s.release(c.clone());
                        }
                    }
                    if !removed.is_empty() {
                        s.changed.notify_one();
                    }
                    CliReply::Removed {
                        jobs: removed.into_iter().map(|r| r.id).collect(),
                        not_found,
                    }
                }
                Err(e) => queue_error(e),
            }
        }
        CliRequest::Checkpoint { jobs } => ask_running(s, &jobs, false).await,
        CliRequest::Vacate { jobs } => ask_running(s, &jobs, true).await,
        CliRequest::Hold { jobs, reason } => {
            let reason = if reason.trim().is_empty() {
                format!("held by {owner}")
            } else {
                reason
            };
            let by = owner.to_string();
            let r = reason.clone();
            match s.db(move |q| q.hold(&jobs, &r, &by)).await {
                Ok(out) => {
                    for c in out.claims {
                        s.release(c);
                    }
                    let mut vacating = Vec::new();
                    for &id in &out.vacating {
                        info!(job = %id, by = owner, reason, "hold: vacating the running job first");
                        if s.tell_shadow(id, ShadowCmd::Checkpoint { vacate: true }) {
                            vacating.push(id);
                        }
                    }
                    for id in &out.done {
                        if !out.vacating.contains(id) {
                            info!(job = %id, by = owner, reason, "held");
                        }
                    }
                    s.changed.notify_one();
                    CliReply::Acted {
                        done: out.done,
                        vacating,
                        refused: out.refused,
                    }
                }
                Err(e) => queue_error(e),
            }
        }
        CliRequest::Release { jobs } => {
            let by = owner.to_string();
            match s.db(move |q| q.release(&jobs, &by)).await {
                Ok((done, refused)) => {
                    for id in &done {
                        info!(job = %id, by = owner, "released");
                    }
                    s.changed.notify_one();
                    CliReply::Acted {
                        done,
                        vacating: Vec::new(),
                        refused,
                    }
                }
                Err(e) => queue_error(e),
            }
        }
        CliRequest::History { limit } => match s.db(move |q| q.history(limit)).await {
            Ok(jobs) => CliReply::History { jobs },
            Err(e) => queue_error(e),
        },
        CliRequest::JobAd { job } => match s.db(move |q| q.get(job)).await {
            Ok(Some(row)) => match job_ad(&row) {
                Ok(ad) => CliReply::JobAd {
                    ad,
                    owner: row.owner,
                },
                Err(e) => error(format!("job {job}: {e}")),
            },
            Ok(None) => error(format!("no job {job} in this schedd's queue")),
            Err(e) => queue_error(e),
        },
        CliRequest::JobAds { all } => {
            let rows = s
                .db(move |q| {
                    let ids: Vec<JobId> = q.list(all)?.into_iter().map(|j| j.id).collect();
                    let mut rows = Vec::with_capacity(ids.len());
                    for id in ids {
                        rows.extend(q.get(id)?);
                    }
                    Ok(rows)
                })
                .await;
            match rows {
                Ok(rows) => {
                    let mut jobs = Vec::with_capacity(rows.len());
                    for row in rows {
                        match job_ad(&row) {
                            Ok(attrs) => jobs.push(proto::pool::JobAd {
                                job: row.id,
                                owner: row.owner,
                                attrs,
                            }),
                            Err(e) => return error(format!("job {}: {e}", row.id)),
                        }
                    }
                    CliReply::JobAds { jobs }
                }
                Err(e) => queue_error(e),
            }
        }
    }
}

/// A job's ad for the CLI: its description (`policies::ad::job_ad`) and
/// its place in the queue (see `CliReply::JobAd`).
pub(crate) fn job_ad(row: &JobRow) -> Result<proto::pool::Ad, policies::PolicyError> {
    let mut ad = policies::ad::job_ad(&row.spec, &row.owner)?;
    ad.set(
        "ClusterId",
        i64::try_from(row.id.cluster).unwrap_or(i64::MAX),
    );
    ad.set("ProcId", i64::from(row.id.proc));
    ad.set("QDate", row.submitted);
    ad.set("JobRuns", i64::from(row.runs));
    ad.set("JobState", row.state.as_str());
    if let Some(h) = &row.host {
        let name = if row.state == JobState::Running {
            "RemoteHost"
        } else {
            "LastRemoteHost"
        };
        ad.set(name, h.0.as_str());
    }
    if let Some(r) = &row.hold_reason {
        ad.set("HoldReason", r.as_str());
    }
    Ok(ad.to_wire())
}

/// `roost checkpoint` / `roost vacate`: asks each running job's starter.
async fn ask_running(s: &Arc<Schedd>, jobs: &[JobId], vacate: bool) -> CliReply {
    let ids = jobs.to_vec();
    let rows = match s
        .db(move |q| {
            ids.iter()
                .map(|&id| Ok((id, q.get(id)?)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return queue_error(e),
    };
    let mut done = Vec::new();
    let mut refused = Vec::new();
    for (id, row) in rows {
        match row {
            None => refused.push((id, "no such job".to_string())),
            Some(r) if r.state != JobState::Running => {
                refused.push((id, format!("the job is {}, not running", r.state.as_str())));
            }
            Some(_) => {
                if s.tell_shadow(id, ShadowCmd::Checkpoint { vacate }) {
                    info!(job = %id, vacate, "checkpoint asked for");
                    done.push(id);
                } else {
                    refused.push((id, "the job's starter is not attached".to_string()));
                }
            }
        }
    }
    let vacating = if vacate { done.clone() } else { Vec::new() };
    CliReply::Acted {
        done,
        vacating,
        refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::HostName;
    use proto::pool::AdValue;

    #[test]
    fn job_ads_carry_the_description_and_the_queue_state() {
        let d = policies::jobfile::parse(
            "job.toml",
            "executable = \"/bin/sim\"\nrequirements = 'Memory >= 2048'\nrequest_memory = 512\n[attributes]\nProject = \"physics\"\n",
            std::path::Path::new("/home/ann"),
        )
        .unwrap();
        let spec = d.expand(3).unwrap().remove(0);
        let mut row = JobRow {
            id: JobId {
                cluster: 3,
                proc: 0,
            },
            owner: "ann".into(),
            state: JobState::Running,
            spec,
            host: Some(HostName("exec2".into())),
            claim: None,
            claimed_at: None,
            claim_host: None,
            exit: None,
            runs: 2,
            failures: 0,
            submitted: 1_795_464_062,
            checkpoints: 0,
            image: None,
            finished: None,
            hold_reason: None,
            hold_pending: None,
        };
        let ad = job_ad(&row).unwrap();
        let get = |ad: &proto::pool::Ad, k: &str| ad.get(k).cloned();
        assert_eq!(get(&ad, "Owner"), Some(AdValue::Str("ann".into())));
        assert_eq!(get(&ad, "ClusterId"), Some(AdValue::Int(3)));
        assert_eq!(get(&ad, "ProcId"), Some(AdValue::Int(0)));
        assert_eq!(get(&ad, "QDate"), Some(AdValue::Int(1_795_464_062)));
        assert_eq!(get(&ad, "JobRuns"), Some(AdValue::Int(2)));
        assert_eq!(get(&ad, "RequestMemory"), Some(AdValue::Int(512)));
        assert_eq!(get(&ad, "JobState"), Some(AdValue::Str("running".into())));
        assert_eq!(get(&ad, "RemoteHost"), Some(AdValue::Str("exec2".into())));
        assert_eq!(get(&ad, "Project"), Some(AdValue::Str("physics".into())));
        assert_eq!(
            get(&ad, "Requirements"),
            Some(AdValue::Expr("Memory >= 2048".into()))
        );
        assert_eq!(get(&ad, "HoldReason"), None);

        row.state = JobState::Held;
        row.hold_reason = Some("disk full".into());
        let ad = job_ad(&row).unwrap();
        assert_eq!(get(&ad, "RemoteHost"), None);
        assert_eq!(
            get(&ad, "LastRemoteHost"),
            Some(AdValue::Str("exec2".into()))
        );
        assert_eq!(
            get(&ad, "HoldReason"),
            Some(AdValue::Str("disk full".into()))
        );
        assert_eq!(get(&ad, "JobState"), Some(AdValue::Str("held".into())));
    }
}
