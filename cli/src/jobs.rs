//! The job commands, each one or a few schedd requests: `submit`, `q`,
//! `rm`, `log`, `wait`, `checkpoint`, `vacate`, `hold`, `release`, `history`.

use crate::args::JobSel;
use crate::client::Schedd;
use crate::render;
use anyhow::{Context, Result, bail};
use proto::cli::{CliReply, CliRequest};
use proto::ids::JobId;
use proto::job::{ExitStatus, JobState, JobSummary};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Exit status of `roost wait` when `--timeout` ran out (as timeout(1)).
pub const WAIT_TIMED_OUT: i32 = 124;

fn unexpected(what: &str, reply: CliReply) -> anyhow::Error {
    match reply {
        CliReply::Error { message } => anyhow::anyhow!("{message}"),
        other => anyhow::anyhow!("the schedd answered {what} with {other:?}"),
    }
}

/// What `roost submit` learnt from the schedd.
#[derive(Debug, PartialEq)]
pub enum SubmitOutcome {
    Queued(Vec<JobId>),
    /// The schedd refused the file; the message names file, line and key.
    Refused(String),
}

/// The request `roost submit` sends for `file` (a relative `file` is read
/// from `cwd`; `cwd` is the default `initialdir`). `--dry-run` checks the
/// same request's fields as the schedd does.
pub fn submit_request(file: &Path, cwd: &Path) -> Result<CliRequest> {
    let text = std::fs::read_to_string(cwd.join(file))
        .with_context(|| format!("cannot read the job file {}", file.display()))?;
    Ok(CliRequest::Submit {
        file: file.display().to_string(),
        text,
        cwd: cwd.display().to_string(),
    })
}

/// Sends `file`'s text (see [`submit_request`]).
pub fn submit(schedd: &Schedd, file: &Path, cwd: &Path) -> Result<SubmitOutcome> {
    let req = submit_request(file, cwd)?;
    match schedd.request(&req)? {
        CliReply::Submitted { jobs } => Ok(SubmitOutcome::Queued(jobs)),
        CliReply::Error { message } => Ok(SubmitOutcome::Refused(message)),
        other => Err(unexpected("Submit", other)),
    }
}

pub fn queue(schedd: &Schedd, all: bool) -> Result<Vec<JobSummary>> {
    match schedd.request(&CliRequest::Queue { all })? {
        CliReply::Queue { jobs } => Ok(jobs),
        other => Err(unexpected("Queue", other)),
    }
}

/// The jobs `sels` name, in the order given; a cluster stands for each of
/// its jobs in `jobs`.
pub fn select<'a>(sels: &[JobSel], jobs: &'a [JobSummary]) -> Result<Vec<&'a JobSummary>> {
    let mut out: Vec<&JobSummary> = Vec::new();
    for s in sels {
        let mut found: Vec<&JobSummary> = jobs.iter().filter(|j| s.matches(j.id)).collect();
        if found.is_empty() {
            bail!("no job {s} in the queue (`roost q --all` lists every job)");
        }
        found.sort_by_key(|j| j.id);
        for j in found {
            if !out.iter().any(|o| o.id == j.id) {
                out.push(j);
            }
        }
    }
    Ok(out)
}

/// `roost rm`: returns the jobs removed and those the schedd did not know.
pub fn remove(schedd: &Schedd, sels: &[JobSel]) -> Result<(Vec<JobId>, Vec<JobId>)> {
    let ids = expand(schedd, sels)?;
    match schedd.request(&CliRequest::Remove { jobs: ids })? {
        CliReply::Removed { jobs, not_found } => Ok((jobs, not_found)),
        other => Err(unexpected("Remove", other)),
    }
}

/// The job ids `sels` name: a cluster stands for its unfinished jobs (or
/// for CLUSTER.0, for the schedd to say it does not know it).
pub fn expand(schedd: &Schedd, sels: &[JobSel]) -> Result<Vec<JobId>> {
    let mut ids: Vec<JobId> = Vec::new();
    if sels.iter().any(|s| matches!(s, JobSel::Cluster(_))) {
        let jobs = queue(schedd, false)?;
        for s in sels {
            let mut of_sel: Vec<JobId> = jobs
                .iter()
                .map(|j| j.id)
                .filter(|&id| s.matches(id))
                .collect();
            if of_sel.is_empty() {
                // Let the schedd say it does not know it.
                of_sel.push(s.first());
            }
            ids.extend(of_sel);
        }
    } else {
        ids.extend(sels.iter().map(|s| s.first()));
    }
    ids.dedup();
    Ok(ids)
}

/// What `roost checkpoint`, `vacate`, `hold` and `release` got done.
#[derive(Debug, Default, PartialEq)]
pub struct Acted {
    pub done: Vec<JobId>,
    /// Among `done`, the jobs that leave their hosts first.
    pub vacating: Vec<JobId>,
    /// Jobs not acted on, with the schedd's reason.
    pub refused: Vec<(JobId, String)>,
}

/// Which of the four job actions to ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Checkpoint,
    Vacate,
    Hold { reason: String },
    Release,
}

/// `roost checkpoint|vacate|hold|release JOB...`.
pub fn act(schedd: &Schedd, sels: &[JobSel], action: Action) -> Result<Acted> {
    act_on(schedd, expand(schedd, sels)?, action)
}

/// [`act`] on jobs already expanded.
pub fn act_on(schedd: &Schedd, jobs: Vec<JobId>, action: Action) -> Result<Acted> {
    let req = match action {
        Action::Checkpoint => CliRequest::Checkpoint { jobs },
        Action::Vacate => CliRequest::Vacate { jobs },
        Action::Hold { reason } => CliRequest::Hold { jobs, reason },
        Action::Release => CliRequest::Release { jobs },
    };
    match schedd.request(&req)? {
        CliReply::Acted {
            done,
            vacating,
            refused,
        } => Ok(Acted {
            done,
            vacating,
            refused,
        }),
        other => Err(unexpected("the request", other)),
    }
}

/// `roost history`: finished jobs, the most recent first.
pub fn history(schedd: &Schedd, limit: Option<u32>) -> Result<Vec<JobSummary>> {
    match schedd.request(&CliRequest::History { limit })? {
        CliReply::History { jobs } => Ok(jobs),
        other => Err(unexpected("History", other)),
    }
}

/// `roost why`: the job's ad as the schedd would send it to the
/// matchmaker, and its owner.
pub fn job_ad(schedd: &Schedd, job: JobId) -> Result<(proto::pool::Ad, String)> {
    match schedd.request(&CliRequest::JobAd { job })? {
        CliReply::JobAd { ad, owner } => Ok((ad, owner)),
        other => Err(unexpected("JobAd", other)),
    }
}

/// `roost q --constraint`: every job's ad (unfinished ones, or all).
pub fn job_ads(schedd: &Schedd, all: bool) -> Result<Vec<proto::pool::JobAd>> {
    match schedd.request(&CliRequest::JobAds { all })? {
        CliReply::JobAds { jobs } => Ok(jobs),
        other => Err(unexpected("JobAds", other)),
    }
}

/// The jobs `roost q` lists: `run` keeps running ones, `held` held ones,
/// `constraint` those whose ad (from `ads`) makes it true.
pub fn filter_queue(
    jobs: Vec<JobSummary>,
    run: bool,
    held: bool,
    constraint: Option<(&crate::ads::Constraint, &[proto::pool::JobAd])>,
) -> Vec<JobSummary> {
    jobs.into_iter()
        .filter(|j| !run || j.state == JobState::Running)
        .filter(|j| !held || j.state == JobState::Held)
        .filter(|j| match constraint {
            None => true,
            Some((c, ads)) => ads
                .iter()
                .find(|a| a.job == j.id)
                .is_some_and(|a| c.holds(&policies::Ad::from_wire_lossy(&a.attrs))),
        })
        .collect()
}

/// `roost log`: the job's event log, one JSON object per line.
pub fn log(schedd: &Schedd, job: JobId) -> Result<Vec<String>> {
    match schedd.request(&CliRequest::Log { job })? {
        CliReply::Log { lines } => Ok(lines),
        other => {
            Err(unexpected("Log", other)).with_context(|| format!("no event log for job {job}"))
        }
    }
}

/// The events that end `roost checkpoint|vacate --wait` for a job: those
/// meaning the action succeeded, and those meaning it did not (or the job
/// ended first).
fn outcome_events(action: &Action) -> Result<(&'static [&'static str], &'static [&'static str])> {
    const ENDED: [&str; 4] = ["evicted", "completed", "removed", "shadow_error"];
    match action {
        Action::Checkpoint => Ok((
            &["checkpointed"],
            &[
                "checkpoint_refused",
                "checkpoint_failed",
                ENDED[0],
                ENDED[1],
                ENDED[2],
                ENDED[3],
                "vacated",
            ],
        )),
        Action::Vacate => Ok((&["vacated"], &ENDED)),
        _ => bail!("only checkpoint and vacate can wait for their outcome"),
    }
}

/// How many lines each job's event log has now (0 for a job the schedd
/// does not know), for [`wait_outcomes`] to read only what follows.
pub fn log_lengths(schedd: &Schedd, jobs: &[JobId]) -> Vec<(JobId, usize)> {
    jobs.iter()
        .map(|&j| (j, log(schedd, j).map_or(0, |l| l.len())))
        .collect()
}

/// `--wait` of `roost checkpoint|vacate`: polls the queue and the logs of
/// `jobs` every 200 ms, drawing each image transfer's bar on `progress`
/// (redrawn in place on a terminal, else one line whenever more bytes
/// have moved), until each job's log gains an outcome event past its
/// length in `logs`; prints that event on `out` as `ID: EVENT...`.
/// Returns whether every outcome was the one asked for.
pub fn wait_outcomes(
    schedd: &Schedd,
    jobs: &[JobId],
    logs: &[(JobId, usize)],
    action: &Action,
    out: &mut dyn Write,
    progress: &mut dyn Write,
    terminal: bool,
) -> Result<bool> {
    let (good, bad) = outcome_events(action)?;
    let mut pending: Vec<(JobId, usize)> = jobs
        .iter()
        .map(|&j| (j, logs.iter().find(|l| l.0 == j).map_or(0, |l| l.1)))
        .collect();
    let mut all_good = true;
    let mut shown = false;
    let mut last_bytes: Vec<(JobId, u64)> = Vec::new();
    while !pending.is_empty() {
        let q = queue(schedd, true)?;
        let moving: Vec<&JobSummary> = q
            .iter()
            .filter(|j| j.transfer.is_some() && pending.iter().any(|p| p.0 == j.id))
            .collect();
        let bars: Vec<String> = moving
            .iter()
            .filter_map(|j| {
                let t = j.transfer.as_ref()?;
                Some(format!("{}  {}", j.id, render::transfer_bar(t)))
            })
            .collect();
        if terminal {
            if !bars.is_empty() || shown {
                write!(progress, "\r\x1b[K{}", bars.join("   "))?;
                progress.flush()?;
                shown = !bars.is_empty();
            }
        } else {
            let bytes: Vec<(JobId, u64)> = moving
                .iter()
                .filter_map(|j| Some((j.id, j.transfer.as_ref()?.bytes)))
                .collect();
            if !bars.is_empty() && bytes != last_bytes {
                writeln!(progress, "{}", bars.join("   "))?;
            }
            last_bytes = bytes;
        }
        let mut i = 0;
        while i < pending.len() {
            let (job, seen) = pending[i];
            let lines = log(schedd, job)?;
            let found = lines.iter().skip(seen).find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                let ev = v.get("event")?.as_str()?.to_string();
                (good.contains(&ev.as_str()) || bad.contains(&ev.as_str())).then_some((l, ev))
            });
            match found {
                Some((line, ev)) => {
                    if shown {
                        write!(progress, "\r\x1b[K")?;
                        progress.flush()?;
                        shown = false;
                    }
                    writeln!(out, "{job}: {}", render::log_line(line))?;
                    all_good &= good.contains(&ev.as_str());
                    pending.remove(i);
                }
                None => {
                    pending[i].1 = lines.len();
                    i += 1;
                }
            }
        }
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(all_good)
}

/// The exit status `roost wait` gives for a job that has ended, and a
/// message for stderr when it did not end normally.
pub fn exit_code(j: &JobSummary) -> (i32, Option<String>) {
    match (j.state, j.exit) {
        (JobState::Removed, _) => (1, Some(format!("job {} was removed", j.id))),
        (_, Some(ExitStatus::Code(0))) => (0, None),
        (_, Some(ExitStatus::Code(c))) => (
            c & 0xff,
            Some(format!("job {} exited with status {c}", j.id)),
        ),
        (_, Some(ExitStatus::Signal(s))) => (
            128 + s,
            Some(format!("job {} was killed by signal {s}", j.id)),
        ),
        (_, None) => (
            1,
            Some(format!("job {} ended without an exit status", j.id)),
        ),
    }
}

fn progress_text(jobs: &[&JobSummary], elapsed: Duration) -> String {
    let one = |j: &JobSummary| match (&j.host, j.state) {
        (Some(h), JobState::Running) => format!("{} running on {h}", j.id),
        _ => format!("{} {}", j.id, j.state.as_str()),
    };
    let open: Vec<&&JobSummary> = jobs.iter().filter(|j| !j.state.is_final()).collect();
    let what = if open.len() <= 3 {
        open.iter().map(|j| one(j)).collect::<Vec<_>>().join(", ")
    } else {
        let count = |s: JobState| open.iter().filter(|j| j.state == s).count();
        let parts: Vec<String> = [JobState::Running, JobState::Idle, JobState::Held]
            .into_iter()
            .filter(|&s| count(s) > 0)
            .map(|s| format!("{} {}", count(s), s.as_str()))
            .collect();
        format!("{} jobs: {}", open.len(), parts.join(", "))
    };
    format!(
        "waiting for {what} ({})",
        render::duration(elapsed.as_secs_f64())
    )
}

/// How `roost wait` ended.
#[derive(Debug, PartialEq)]
pub struct WaitOutcome {
    /// The exit status for the process.
    pub code: i32,
    /// What the user should be told (non-zero exits, removals, the timeout).
    pub notes: Vec<String>,
}

/// `roost wait`: polls the queue every 200 ms until every job named is
/// completed or removed, drawing a progress line on `progress` if given.
pub fn wait(
    schedd: &Schedd,
    sels: &[JobSel],
    timeout: Option<Duration>,
    mut progress: Option<&mut dyn Write>,
) -> Result<WaitOutcome> {
    let start = Instant::now();
    let mut shown = false;
    let clear = |p: &mut Option<&mut dyn Write>, shown: bool| {
        if let (Some(p), true) = (p.as_mut(), shown) {
            let _ = write!(p, "\r\x1b[K");
            let _ = p.flush();
        }
    };
    loop {
        let all = queue(schedd, true)?;
        let jobs = select(sels, &all)?;
        if jobs.iter().all(|j| j.state.is_final()) {
            clear(&mut progress, shown);
            let mut out = WaitOutcome {
                code: 0,
                notes: Vec::new(),
            };
            for j in &jobs {
                let (c, msg) = exit_code(j);
                out.notes.extend(msg);
                out.code = c;
            }
            return Ok(out);
        }
        if let Some(t) = timeout
            && start.elapsed() >= t
        {
            clear(&mut progress, shown);
            let left = progress_text(&jobs, start.elapsed());
            let note = format!(
                "gave up after {} s: {}",
                t.as_secs_f64(),
                left.trim_start_matches("waiting for ")
            );
            return Ok(WaitOutcome {
                code: WAIT_TIMED_OUT,
                notes: vec![note],
            });
        }
        if let Some(p) = progress.as_mut() {
            let _ = write!(p, "\r\x1b[K{}", progress_text(&jobs, start.elapsed()));
            let _ = p.flush();
            shown = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ids::HostName;

    fn job(c: u64, p: u32, state: JobState, exit: Option<ExitStatus>) -> JobSummary {
        JobSummary {
            id: JobId {
                cluster: c,
                proc: p,
            },
            owner: "ann".into(),
            state,
            executable: "x".into(),
            arguments: vec![],
            host: (state == JobState::Running).then(|| HostName("exec2".into())),
            submitted: 0,
            exit,
            runs: 1,
            checkpoints: 0,
            ckpt_bytes: None,
            ckpt_time: None,
            ckpt_kind: None,
            ckpt_secs: None,
            finished: None,
            hold_reason: None,
            transfer: None,
        }
    }

    #[test]
    fn exit_codes_like_a_shell() {
        let c = |s, e| exit_code(&job(1, 0, s, e));
        assert_eq!(c(JobState::Completed, Some(ExitStatus::Code(0))), (0, None));
        assert_eq!(
            c(JobState::Completed, Some(ExitStatus::Code(3))),
            (3, Some("job 1.0 exited with status 3".into()))
        );
        assert_eq!(
            c(JobState::Completed, Some(ExitStatus::Signal(9))),
            (137, Some("job 1.0 was killed by signal 9".into()))
        );
        assert_eq!(
            c(JobState::Removed, None),
            (1, Some("job 1.0 was removed".into()))
        );
    }

    #[test]
    fn selection_expands_clusters_in_order() {
        let all = vec![
            job(2, 1, JobState::Idle, None),
            job(2, 0, JobState::Idle, None),
            job(3, 0, JobState::Idle, None),
        ];
        let ids = |v: Vec<&JobSummary>| v.iter().map(|j| j.id.to_string()).collect::<Vec<_>>();
        let sel = |s: &str| s.parse::<JobSel>().unwrap();
        assert_eq!(
            ids(select(&[sel("3.0"), sel("2")], &all).unwrap()),
            ["3.0", "2.0", "2.1"]
        );
        assert_eq!(
            ids(select(&[sel("2.1"), sel("2")], &all).unwrap()),
            ["2.1", "2.0"]
        );
        assert_eq!(
            select(&[sel("4")], &all).unwrap_err().to_string(),
            "no job 4 in the queue (`roost q --all` lists every job)"
        );
    }

    #[test]
    fn progress_names_few_jobs_and_counts_many() {
        let a = job(1, 0, JobState::Running, None);
        let b = job(1, 1, JobState::Idle, None);
        let done = job(1, 2, JobState::Completed, Some(ExitStatus::Code(0)));
        assert_eq!(
            progress_text(&[&a, &b, &done], Duration::from_secs(3)),
            "waiting for 1.0 running on exec2, 1.1 idle (3s)"
        );
        assert_eq!(
            progress_text(&[&a, &b, &b, &b], Duration::from_secs(70)),
            "waiting for 4 jobs: 1 running, 3 idle (1m10s)"
        );
    }
}
