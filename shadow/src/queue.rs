//! The persistent job queue: SQLite in WAL mode with `synchronous=FULL`.
//!
//! Every state change and its event-log record are committed in one
//! transaction before the caller acknowledges anything, so `kill -9` of the
//! schedd loses no job. A job that was running when the schedd stopped goes
//! back to idle when the queue is opened again.
//!
//! Event records are JSON lines:
//! `{"time":UNIX_SECS,"job":"1.0","event":"submitted"|"matched"|"executing"|
//! "resumed"|"suspended"|"unsuspended"|"checkpointed"|"checkpoint_refused"|
//! "checkpoint_failed"|"checkpoint_lost"|"vacated"|"evicted"|"completed"|
//! "shadow_error"|"held"|"released"|"removed", ...}`.
//!
//! A job's committed checkpoint is a row's `ckpt_seq` (the image file
//! `ckpt/C.P/image.SEQ.zst`, see [`crate::ckpt`]) with its size and the
//! job's files at that moment (`ckpt_fs`, a [`crate::fs::FsSnapshot`]).

use proto::job::{ExitStatus, JobSpec, JobState, JobSummary, Usage};
use proto::{ClaimId, HostName, JobId};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("queue database error")]
    Db(#[from] rusqlite::Error),
    #[error("job {job}: stored description does not decode")]
    Spec {
        job: JobId,
        #[source]
        source: serde_json::Error,
    },
    /// The submission was refused (the message names file, line and key).
    #[error("{0}")]
    Rejected(String),
}

type Result<T, E = QueueError> = std::result::Result<T, E>;

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One job as the queue stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: JobId,
    pub owner: String,
    pub state: JobState,
    pub spec: JobSpec,
    pub host: Option<HostName>,
    pub claim: Option<ClaimId>,
    /// When the claim was recorded (unix seconds).
    pub claimed_at: Option<i64>,
    /// The machine the claim was matched to; only its starter may use it.
    pub claim_host: Option<HostName>,
    pub exit: Option<ExitStatus>,
    pub runs: u32,
    pub failures: u32,
    pub submitted: i64,
    /// Checkpoints committed so far.
    pub checkpoints: u32,
    /// The committed checkpoint, if any.
    pub image: Option<Image>,
    pub finished: Option<i64>,
    pub hold_reason: Option<String>,
    /// A hold asked for while the job ran: it is held once it has left its host.
    pub hold_pending: Option<String>,
}

/// A job's committed checkpoint as the queue records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Names the image file (`image.SEQ.zst`).
    pub seq: u32,
    /// Stored (compressed) size.
    pub bytes: u64,
    pub raw_bytes: u64,
    /// When it was committed.
    pub time: i64,
    /// The job's files at the checkpoint ([`crate::fs::FsSnapshot`] as JSON).
    pub fs: String,
    /// How long it took (seconds).
    pub secs: f64,
    /// "full" or "incremental".
    pub kind: String,
}

/// A checkpoint to commit: the image file is already in place.
#[derive(Debug, Clone, PartialEq)]
pub struct NewImage {
    pub seq: u32,
    pub bytes: u64,
    pub raw_bytes: u64,
    pub seconds: f64,
    pub fs: String,
    pub reason: String,
    /// "full" or "incremental".
    pub kind: &'static str,
}

/// Jobs a request did not act on, with why.
pub type Refused = Vec<(JobId, String)>;

/// What a hold did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HoldOutcome {
    /// Held now, or (running ones) once they have left their hosts.
    pub done: Vec<JobId>,
    /// The running ones among `done`: their shadows must vacate them.
    pub vacating: Vec<JobId>,
    pub refused: Refused,
    /// Claims of idle jobs that were held: give them back.
    pub claims: Vec<ClaimId>,
}

/// A job to queue: its description and, if the user asked for one, the
/// absolute path of the user's own event log (JSON lines appended there too).
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub spec: JobSpec,
    pub user_log: Option<String>,
}

/// What a removal did to one job.
#[derive(Debug, Clone, PartialEq)]
pub struct Removed {
    pub id: JobId,
    /// The job was running (or about to): its shadow must end it.
    pub was_running: bool,
    pub claim: Option<ClaimId>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS clusters (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    file TEXT NOT NULL,
    submitted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    cluster INTEGER NOT NULL,
    proc INTEGER NOT NULL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    host TEXT,
    claim TEXT,
    claimed_at INTEGER,
    exit_kind TEXT,
    exit_value INTEGER,
    runs INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    submitted INTEGER NOT NULL,
    user_log TEXT,
    started INTEGER,
    finished INTEGER,
    checkpoints INTEGER NOT NULL DEFAULT 0,
    ckpt_seq INTEGER,
    ckpt_bytes INTEGER,
    ckpt_raw INTEGER,
    ckpt_time INTEGER,
    ckpt_secs REAL,
    ckpt_fs TEXT,
    ckpt_kind TEXT,
    hold_reason TEXT,
    hold_pending TEXT,
    hold_by TEXT,
    PRIMARY KEY (cluster, proc)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster INTEGER NOT NULL,
    proc INTEGER NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events(cluster, proc);
";

/// The queue database.
pub struct Queue {
    db: Connection,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

/// Records an event in the queue (inside `tx`) and keeps its line in `ev`
/// for the user's own log, written once `tx` is committed.
fn event(
    tx: &Transaction<'_>,
    ev: &mut Vec<(JobId, String)>,
    job: JobId,
    name: &str,
    extra: Value,
) -> Result<()> {
    let mut v = json!({ "time": now(), "job": job.to_string(), "event": name });
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    let line = v.to_string();
    tx.execute(
        "INSERT INTO events (cluster, proc, line) VALUES (?1, ?2, ?3)",
        params![job.cluster as i64, job.proc, line],
    )?;
    ev.push((job, line));
    Ok(())
}

fn exit_cols(e: &ExitStatus) -> (&'static str, i32) {
    match e {
        ExitStatus::Code(c) => ("code", *c),
        ExitStatus::Signal(s) => ("signal", *s),
    }
}

/// A `jobs` row as selected by [`COLS`], before decoding.
type RawRow = (
    JobId,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i32>,
    u32,
    u32,
    i64,
);

/// Columns added after the first schema, with their types: added to an
/// older database when it is opened.
const ADDED: &[(&str, &str)] = &[
    ("user_log", "TEXT"),
    ("checkpoints", "INTEGER NOT NULL DEFAULT 0"),
    ("ckpt_seq", "INTEGER"),
    ("ckpt_bytes", "INTEGER"),
    ("ckpt_raw", "INTEGER"),
    ("ckpt_time", "INTEGER"),
    ("ckpt_secs", "REAL"),
    ("ckpt_fs", "TEXT"),
    ("hold_reason", "TEXT"),
    ("hold_pending", "TEXT"),
    ("hold_by", "TEXT"),
    ("ckpt_kind", "TEXT"),
    ("claim_host", "TEXT"),
];

const COLS: &str = "cluster, proc, owner, state, spec, host, claim, claimed_at, exit_kind, exit_value, runs, failures, submitted, \
     checkpoints, ckpt_seq, ckpt_bytes, ckpt_raw, ckpt_time, ckpt_fs, finished, hold_reason, hold_pending, \
     ckpt_secs, ckpt_kind, claim_host";

/// The columns of [`COLS`] after the first twelve.
struct More {
    checkpoints: u32,
    ckpt_seq: Option<u32>,
    ckpt_bytes: Option<i64>,
    ckpt_raw: Option<i64>,
    ckpt_time: Option<i64>,
    ckpt_fs: Option<String>,
    finished: Option<i64>,
    hold_reason: Option<String>,
    hold_pending: Option<String>,
    ckpt_secs: Option<f64>,
    ckpt_kind: Option<String>,
    claim_host: Option<String>,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(RawRow, More)> {
    Ok((first(r)?, more(r)?))
}

fn more(r: &rusqlite::Row<'_>) -> rusqlite::Result<More> {
    Ok(More {
        checkpoints: r.get(13)?,
        ckpt_seq: r.get(14)?,
        ckpt_bytes: r.get(15)?,
        ckpt_raw: r.get(16)?,
        ckpt_time: r.get(17)?,
        ckpt_fs: r.get(18)?,
        finished: r.get(19)?,
        hold_reason: r.get(20)?,
        hold_pending: r.get(21)?,
        ckpt_secs: r.get(22)?,
        ckpt_kind: r.get(23)?,
        claim_host: r.get(24)?,
    })
}

fn first(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        JobId {
            cluster: r.get::<_, i64>(0)? as u64,
            proc: r.get(1)?,
        },
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
    ))
}

fn decode((raw, m): (RawRow, More)) -> Result<JobRow> {
    let (
        id,
        owner,
        state,
        spec,
        host,
        claim,
        claimed_at,
        exit_kind,
        exit_value,
        runs,
        failures,
        submitted,
    ) = raw;
    let spec: JobSpec =
        serde_json::from_str(&spec).map_err(|source| QueueError::Spec { job: id, source })?;
    let exit = match (exit_kind.as_deref(), exit_value) {
        (Some("code"), Some(v)) => Some(ExitStatus::Code(v)),
        (Some("signal"), Some(v)) => Some(ExitStatus::Signal(v)),
        _ => None,
    };
    Ok(JobRow {
        id,
        owner,
        state: JobState::parse(&state).unwrap_or(JobState::Held),
        spec,
        host: host.map(HostName),
        claim: claim.map(ClaimId),
        claimed_at,
        claim_host: m.claim_host.map(HostName),
        exit,
        runs,
        failures,
        submitted,
        checkpoints: m.checkpoints,
        image: match (m.ckpt_seq, m.ckpt_fs) {
            (Some(seq), Some(fs)) => Some(Image {
                seq,
                bytes: m.ckpt_bytes.unwrap_or(0) as u64,
                raw_bytes: m.ckpt_raw.unwrap_or(0) as u64,
                time: m.ckpt_time.unwrap_or(0),
                fs,
                secs: m.ckpt_secs.unwrap_or(0.0),
                kind: m.ckpt_kind.unwrap_or_else(|| "full".into()),
            }),
            _ => None,
        },
        finished: m.finished,
        hold_reason: m.hold_reason,
        hold_pending: m.hold_pending,
    })
}

impl Queue {
    /// Opens (or creates) the queue. Jobs left `running` by a previous
    /// schedd go back to idle with an `evicted` event.
    pub fn open(path: &Path) -> Result<Queue> {
        Queue::open_keeping(path, &|_| false)
    }

    /// Opens the queue; jobs left `running` go back to idle unless `keep`
    /// says they may still be running (their starters can resume them).
    pub fn open_keeping(path: &Path, keep: &dyn Fn(JobId) -> bool) -> Result<Queue> {
        let open_err = |source| QueueError::Open {
            path: path.into(),
            source,
        };
        let db = Connection::open(path).map_err(open_err)?;
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        db.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        db.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        db.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        db.execute_batch(SCHEMA).map_err(open_err)?;
        for (col, ty) in ADDED {
            let has: bool = db
                .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = ?1")
                .and_then(|mut st| st.exists([col]))
                .map_err(open_err)?;
            if !has {
                db.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {col} {ty}"))
                    .map_err(open_err)?;
            }
        }
        let mut q = Queue { db };
        q.recover(keep)?;
        Ok(q)
    }

    fn recover(&mut self, keep: &dyn Fn(JobId) -> bool) -> Result<()> {
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        let running: Vec<JobId> = {
            let mut st = tx.prepare("SELECT cluster, proc FROM jobs WHERE state = 'running'")?;
            st.query_map([], |r| {
                Ok(JobId {
                    cluster: r.get::<_, i64>(0)? as u64,
                    proc: r.get(1)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        for id in running {
            if keep(id) {
                tracing::info!(job = %id, "running at start-up; its starter may resume it");
                continue;
            }
            leave_host(
                &tx,
                &mut ev,
                id,
                "evicted",
                "the schedd restarted while the job ran",
            )?;
            tracing::info!(job = %id, "running at start-up; back to idle");
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok(())
    }

    /// Appends committed events to their jobs' user logs, if any. A log
    /// that cannot be written is reported and skipped: the queue is the
    /// record.
    fn user_logs(&self, ev: &[(JobId, String)]) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        for (job, line) in ev {
            let path: Option<String> = self
                .db
                .query_row(
                    "SELECT user_log FROM jobs WHERE cluster = ?1 AND proc = ?2",
                    params![job.cluster as i64, job.proc],
                    |r| r.get(0),
                )
                .optional()
                .ok()
                .flatten()
                .flatten();
            let Some(path) = path else { continue };
            let r = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o644)
                .open(&path)
                .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
            if let Err(e) = r {
                tracing::warn!(job = %job, log = %path, "cannot append to the job's event log: {e}");
            }
        }
    }

    /// Queues a new cluster. `expand` gets the new cluster id and returns
    /// its jobs; if it fails nothing is stored.
    pub fn submit(
        &mut self,
        owner: &str,
        file: &str,
        expand: impl FnOnce(u64) -> std::result::Result<Vec<JobSpec>, String>,
    ) -> Result<Vec<JobId>> {
        self.submit_jobs(owner, file, |c| {
            Ok(expand(c)?
                .into_iter()
                .map(|spec| NewJob {
                    spec,
                    user_log: None,
                })
                .collect())
        })
    }

    /// [`Queue::submit`] for jobs that may name the user's own event log.
    pub fn submit_jobs(
        &mut self,
        owner: &str,
        file: &str,
        expand: impl FnOnce(u64) -> std::result::Result<Vec<NewJob>, String>,
    ) -> Result<Vec<JobId>> {
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        let last: Option<i64> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'last_cluster'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let cluster = last.unwrap_or(0) as u64 + 1;
        let specs = expand(cluster).map_err(QueueError::Rejected)?;
        if specs.is_empty() {
            return Err(QueueError::Rejected(format!(
                "{file}: the description queues no job"
            )));
        }
        let t = now();
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('last_cluster', ?1) ON CONFLICT(key) DO UPDATE SET value = ?1",
            params![cluster as i64],
        )?;
        tx.execute(
            "INSERT INTO clusters (id, owner, file, submitted) VALUES (?1, ?2, ?3, ?4)",
            params![cluster as i64, owner, file, t],
        )?;
        let mut ids = Vec::with_capacity(specs.len());
        for (i, NewJob { spec, user_log }) in specs.iter().enumerate() {
            let id = JobId {
                cluster,
                proc: i as u32,
            };
            let text = serde_json::to_string(spec)
                .map_err(|source| QueueError::Spec { job: id, source })?;
            tx.execute(
                "INSERT INTO jobs (cluster, proc, owner, state, spec, submitted, user_log) VALUES (?1, ?2, ?3, 'idle', ?4, ?5, ?6)",
                params![cluster as i64, id.proc, owner, text, t, user_log],
            )?;
            event(
                &tx,
                &mut ev,
                id,
                "submitted",
                json!({ "owner": owner, "executable": spec.executable, "file": file }),
            )?;
            ids.push(id);
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok(ids)
    }

    /// One job.
    pub fn get(&self, id: JobId) -> Result<Option<JobRow>> {
        let raw = self
            .db
            .query_row(
                &format!("SELECT {COLS} FROM jobs WHERE cluster = ?1 AND proc = ?2"),
                params![id.cluster as i64, id.proc],
                row,
            )
            .optional()?;
        raw.map(decode).transpose()
    }

    fn select(&self, filter: &str) -> Result<Vec<JobRow>> {
        let mut st = self.db.prepare(&format!(
            "SELECT {COLS} FROM jobs {filter} ORDER BY cluster, proc"
        ))?;
        let raws: Vec<(RawRow, More)> = st.query_map([], row)?.collect::<rusqlite::Result<_>>()?;
        raws.into_iter().map(decode).collect()
    }

    /// Idle jobs that hold no claim: what the matchmaker should see.
    pub fn unclaimed_idle(&self) -> Result<Vec<JobRow>> {
        self.select("WHERE state = 'idle' AND claim IS NULL")
    }

    /// Jobs for `roost q`: not finished ones, or all with `all`.
    pub fn list(&self, all: bool) -> Result<Vec<JobSummary>> {
        let rows = if all {
            self.select("")?
        } else {
            self.select("WHERE state NOT IN ('completed', 'removed')")?
        };
        Ok(rows.into_iter().map(summary).collect())
    }

    /// Completed and removed jobs, the most recently finished first.
    pub fn history(&self, limit: Option<u32>) -> Result<Vec<JobSummary>> {
        let limit = limit.map_or(-1, i64::from);
        let mut st = self.db.prepare(&format!(
            "SELECT {COLS} FROM jobs WHERE state IN ('completed', 'removed')
             ORDER BY finished DESC, cluster DESC, proc DESC LIMIT ?1"
        ))?;
        let raws: Vec<(RawRow, More)> = st
            .query_map(params![limit], row)?
            .collect::<rusqlite::Result<_>>()?;
        raws.into_iter().map(|r| decode(r).map(summary)).collect()
    }

    /// Jobs for the pool page: unfinished ones and those finished since `since`.
    pub fn page_jobs(&self, since: i64) -> Result<Vec<JobSummary>> {
        let rows = self.select(&format!(
            "WHERE state NOT IN ('completed', 'removed') OR finished >= {since}"
        ))?;
        Ok(rows.into_iter().map(summary).collect())
    }

    /// Event records after `seq` (at most `limit`, in order); with `since`,
    /// only those from `since` on or of jobs not finished.
    pub fn events_after(
        &self,
        seq: i64,
        since: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, String)>> {
        let mut st = self.db.prepare(
            "SELECT seq, line FROM events WHERE seq > ?1 AND (?2 IS NULL
                 OR json_extract(line, '$.time') >= ?2
                 OR (cluster, proc) IN (SELECT cluster, proc FROM jobs
                     WHERE state NOT IN ('completed', 'removed')))
             ORDER BY seq LIMIT ?3",
        )?;
        let v = st
            .query_map(params![seq, since, limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// The newest event record's sequence number (0 when there is none).
    pub fn last_event_seq(&self) -> Result<i64> {
        Ok(self
            .db
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?)
    }

    /// How many jobs are in each state.
    pub fn state_counts(&self) -> Result<Vec<(String, i64)>> {
        let mut st = self
            .db
            .prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")?;
        let v = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// The job's event log, JSON lines in order; `None` for an unknown job.
    pub fn log(&self, id: JobId) -> Result<Option<Vec<String>>> {
        if self.get(id)?.is_none() {
            return Ok(None);
        }
        let mut st = self
            .db
            .prepare("SELECT line FROM events WHERE cluster = ?1 AND proc = ?2 ORDER BY seq")?;
        let lines = st
            .query_map(params![id.cluster as i64, id.proc], |r| {
                r.get::<_, String>(0)
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(lines))
    }

    /// Records a match for an idle job. Returns false (and stores nothing)
    /// when the job is not idle or already holds a claim.
    pub fn set_claim(&mut self, id: JobId, claim: &ClaimId, machine: &HostName) -> Result<bool> {
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        let n = tx.execute(
            "UPDATE jobs SET claim = ?3, claimed_at = ?4, claim_host = ?5 WHERE cluster = ?1 AND proc = ?2 AND state = 'idle' AND claim IS NULL",
            params![id.cluster as i64, id.proc, claim.0, now(), machine.0],
        )?;
        if n == 1 {
            event(&tx, &mut ev, id, "matched", json!({ "host": machine.0 }))?;
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok(n == 1)
    }

    /// Drops the claim of an idle job (unused or withdrawn). Returns whether
    /// it was dropped.
    pub fn drop_claim(&mut self, id: JobId, claim: &ClaimId) -> Result<bool> {
        let n = self.db.execute(
            "UPDATE jobs SET claim = NULL, claimed_at = NULL WHERE cluster = ?1 AND proc = ?2 AND state = 'idle' AND claim = ?3",
            params![id.cluster as i64, id.proc, claim.0],
        )?;
        Ok(n == 1)
    }

    /// Drops `claim` from whichever idle job holds it (the matchmaker
    /// withdrew it). Returns that job.
    pub fn drop_claim_any(&mut self, claim: &ClaimId) -> Result<Option<JobId>> {
        let job = self
            .db
            .query_row(
                "SELECT cluster, proc FROM jobs WHERE state = 'idle' AND claim = ?1",
                params![claim.0],
                |r| {
                    Ok(JobId {
                        cluster: r.get::<_, i64>(0)? as u64,
                        proc: r.get(1)?,
                    })
                },
            )
            .optional()?;
        if let Some(id) = job {
            self.drop_claim(id, claim)?;
        }
        Ok(job)
    }

    /// Idle jobs whose claim was recorded before `before` (unix seconds).
    pub fn stale_claims(&self, before: i64) -> Result<Vec<(JobId, ClaimId)>> {
        let mut st = self.db.prepare(
            "SELECT cluster, proc, claim FROM jobs WHERE state = 'idle' AND claim IS NOT NULL AND claimed_at < ?1",
        )?;
        let v = st
            .query_map(params![before], |r| {
                Ok((
                    JobId {
                        cluster: r.get::<_, i64>(0)? as u64,
                        proc: r.get(1)?,
                    },
                    ClaimId(r.get(2)?),
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// An idle job whose claim is `claim`: the one a starter may attach to.
    pub fn claimed(&self, id: JobId, claim: &ClaimId) -> Result<Option<JobRow>> {
        Ok(self
            .get(id)?
            .filter(|r| r.state == JobState::Idle && r.claim.as_ref() == Some(claim)))
    }

    /// The job started on `host`. Returns false when it is no longer idle
    /// with this claim.
    pub fn mark_running(&mut self, id: JobId, claim: &ClaimId, host: &HostName) -> Result<bool> {
        self.mark_running_from(id, claim, host, None)
    }

    /// The job's process ended. Returns false when the job was not running
    /// (e.g. removed meanwhile).
    pub fn complete(&mut self, id: JobId, status: ExitStatus, usage: &Usage) -> Result<bool> {
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        let (kind, value) = exit_cols(&status);
        let n = tx.execute(
            "UPDATE jobs SET state = 'completed', exit_kind = ?3, exit_value = ?4, finished = ?5, claim = NULL, claimed_at = NULL, hold_pending = NULL
             WHERE cluster = ?1 AND proc = ?2 AND state = 'running'",
            params![id.cluster as i64, id.proc, kind, value, now()],
        )?;
        if n == 1 {
            let mut e = json!({
                "wall_secs": usage.wall_secs,
                "cpu_secs": usage.user_cpu_secs + usage.sys_cpu_secs,
                "user_cpu_secs": usage.user_cpu_secs,
                "sys_cpu_secs": usage.sys_cpu_secs,
                "bytes_read": usage.bytes_read,
                "bytes_written": usage.bytes_written,
            });
            match status {
                ExitStatus::Code(c) => e["exit_code"] = json!(c),
                ExitStatus::Signal(s) => e["signal"] = json!(s),
            }
            event(&tx, &mut ev, id, "completed", e)?;
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok(n == 1)
    }

    /// A running job goes back to idle to be matched again (`event` is
    /// `evicted` or `shadow_error`). Returns false when it was not running.
    ///
    /// The event says whether the job will resume from a checkpoint
    /// (`from_checkpoint`); a job whose hold was asked for while it ran is
    /// held now instead (event `held`).
    pub fn requeue(&mut self, id: JobId, event_name: &str, reason: &str) -> Result<bool> {
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        let running: bool = tx
            .query_row(
                "SELECT 1 FROM jobs WHERE cluster = ?1 AND proc = ?2 AND state = 'running'",
                params![id.cluster as i64, id.proc],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if running {
            leave_host(&tx, &mut ev, id, event_name, reason)?;
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok(running)
    }

    /// The job started on `host`; `resumed` gives the size of the image it
    /// restarts from (event `resumed` after `executing`). Returns false
    /// when it is no longer idle with this claim.
    pub fn mark_running_from(
        &mut self,
        id: JobId,
        claim: &ClaimId,
        host: &HostName,
        resumed: Option<u64>,
    ) -> Result<bool> {
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        let n = tx.execute(
            "UPDATE jobs SET state = 'running', host = ?4, runs = runs + 1, started = ?5
             WHERE cluster = ?1 AND proc = ?2 AND state = 'idle' AND claim = ?3",
            params![id.cluster as i64, id.proc, claim.0, host.0, now()],
        )?;
        if n == 1 {
            event(&tx, &mut ev, id, "executing", json!({ "host": host.0 }))?;
            if let Some(bytes) = resumed {
                event(
                    &tx,
                    &mut ev,
                    id,
                    "resumed",
                    json!({ "host": host.0, "image_bytes": bytes }),
                )?;
            }
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok(n == 1)
    }

    /// Records an event for a running job (`suspended`, `unsuspended`,
    /// `checkpoint_refused`, `checkpoint_failed`). Returns false when the
    /// job is not running.
    pub fn note(&mut self, id: JobId, name: &str, extra: Value) -> Result<bool> {
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        let running = tx
            .query_row(
                "SELECT 1 FROM jobs WHERE cluster = ?1 AND proc = ?2 AND state = 'running'",
                params![id.cluster as i64, id.proc],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if running {
            event(&tx, &mut ev, id, name, extra)?;
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok(running)
    }

    /// Commits a checkpoint of a running job whose image file is in place
    /// (event `checkpointed`). Returns false, storing nothing, when the job
    /// is not running.
    pub fn checkpointed(&mut self, id: JobId, img: &NewImage) -> Result<bool> {
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        let n = tx.execute(
            "UPDATE jobs SET ckpt_seq = ?3, ckpt_bytes = ?4, ckpt_raw = ?5, ckpt_time = ?6,
                 ckpt_secs = ?7, ckpt_fs = ?8, ckpt_kind = ?9, checkpoints = checkpoints + 1
             WHERE cluster = ?1 AND proc = ?2 AND state = 'running'",
            params![
                id.cluster as i64,
                id.proc,
                img.seq,
                img.bytes as i64,
                img.raw_bytes as i64,
                now(),
                img.seconds,
                img.fs,
                img.kind
            ],
        )?;
        if n == 1 {
            event(
                &tx,
                &mut ev,
                id,
                "checkpointed",
                json!({
                    "bytes": img.bytes,
                    "raw_bytes": img.raw_bytes,
                    "seconds": img.seconds,
                    "reason": img.reason,
                    "kind": img.kind,
                }),
            )?;
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok(n == 1)
    }

    /// The job's image file is gone: forget the checkpoint (event
    /// `checkpoint_lost`); the job will start from the beginning.
    pub fn image_lost(&mut self, id: JobId, reason: &str) -> Result<()> {
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        let n = tx.execute(
            "UPDATE jobs SET ckpt_seq = NULL, ckpt_fs = NULL WHERE cluster = ?1 AND proc = ?2 AND ckpt_seq IS NOT NULL",
            params![id.cluster as i64, id.proc],
        )?;
        if n == 1 {
            event(
                &tx,
                &mut ev,
                id,
                "checkpoint_lost",
                json!({ "reason": reason }),
            )?;
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok(())
    }

    /// Every job that has a committed image, with its state and image number.
    pub fn images(&self) -> Result<Vec<(JobId, JobState, u32)>> {
        let mut st = self.db.prepare(
            "SELECT cluster, proc, state, ckpt_seq FROM jobs WHERE ckpt_seq IS NOT NULL",
        )?;
        let v = st
            .query_map([], |r| {
                Ok((
                    JobId {
                        cluster: r.get::<_, i64>(0)? as u64,
                        proc: r.get(1)?,
                    },
                    JobState::parse(&r.get::<_, String>(2)?).unwrap_or(JobState::Held),
                    r.get(3)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Holds jobs: idle ones at once (their claims are given back), running
    /// ones once they have left their hosts (the caller vacates them).
    pub fn hold(&mut self, ids: &[JobId], reason: &str, by: &str) -> Result<HoldOutcome> {
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        let mut out = HoldOutcome::default();
        for &id in ids {
            let cur: Option<(String, Option<String>, Option<String>)> = tx
                .query_row(
                    "SELECT state, claim, hold_pending FROM jobs WHERE cluster = ?1 AND proc = ?2",
                    params![id.cluster as i64, id.proc],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((state, claim, pending)) = cur else {
                out.refused.push((id, "no such job".into()));
                continue;
            };
            match JobState::parse(&state).unwrap_or(JobState::Held) {
                JobState::Idle => {
                    tx.execute(
                        "UPDATE jobs SET state = 'held', hold_reason = ?3, claim = NULL, claimed_at = NULL
                         WHERE cluster = ?1 AND proc = ?2",
                        params![id.cluster as i64, id.proc, reason],
                    )?;
                    event(
                        &tx,
                        &mut ev,
                        id,
                        "held",
                        json!({ "reason": reason, "by": by }),
                    )?;
                    out.claims.extend(claim.map(ClaimId));
                    out.done.push(id);
                }
                JobState::Running if pending.is_some() => {
                    out.refused
                        .push((id, "already being held (it is leaving its host)".into()));
                }
                JobState::Running => {
                    tx.execute(
                        "UPDATE jobs SET hold_pending = ?3, hold_by = ?4 WHERE cluster = ?1 AND proc = ?2",
                        params![id.cluster as i64, id.proc, reason, by],
                    )?;
                    out.done.push(id);
                    out.vacating.push(id);
                }
                JobState::Held => out.refused.push((id, "already held".into())),
                s => out.refused.push((id, format!("the job is {}", s.as_str()))),
            }
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok(out)
    }

    /// Lets held jobs run again (their failure count starts over); for a
    /// running job, cancels a hold that waits for it to leave its host.
    pub fn release(&mut self, ids: &[JobId], by: &str) -> Result<(Vec<JobId>, Refused)> {
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        let (mut done, mut refused) = (Vec::new(), Vec::new());
        for &id in ids {
            let cur: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT state, hold_pending FROM jobs WHERE cluster = ?1 AND proc = ?2",
                    params![id.cluster as i64, id.proc],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((state, pending)) = cur else {
                refused.push((id, "no such job".into()));
                continue;
            };
            match JobState::parse(&state).unwrap_or(JobState::Held) {
                JobState::Held => {
                    tx.execute(
                        "UPDATE jobs SET state = 'idle', hold_reason = NULL, failures = 0
                         WHERE cluster = ?1 AND proc = ?2",
                        params![id.cluster as i64, id.proc],
                    )?;
                    event(&tx, &mut ev, id, "released", json!({ "by": by }))?;
                    done.push(id);
                }
                JobState::Running if pending.is_some() => {
                    tx.execute(
                        "UPDATE jobs SET hold_pending = NULL, hold_by = NULL WHERE cluster = ?1 AND proc = ?2",
                        params![id.cluster as i64, id.proc],
                    )?;
                    event(&tx, &mut ev, id, "released", json!({ "by": by }))?;
                    done.push(id);
                }
                s => refused.push((id, format!("the job is {}, not held", s.as_str()))),
            }
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok((done, refused))
    }

    /// The job could not run. It goes back to idle, or is held once it has
    /// failed more than `max(max_retries, 2)` times. Returns the new state,
    /// or `None` when the job was neither idle nor running.
    pub fn failed(&mut self, id: JobId, reason: &str) -> Result<Option<JobState>> {
        let Some(row) = self.get(id)? else {
            return Ok(None);
        };
        if !matches!(row.state, JobState::Idle | JobState::Running) {
            return Ok(None);
        }
        let failures = row.failures + 1;
        let limit = row.spec.max_retries.max(2);
        // A hold asked for while the job ran takes effect now.
        let hold = match &row.hold_pending {
            Some(why) => Some(why.clone()),
            None if failures > limit => Some(format!("failed {failures} times; last: {reason}")),
            None => None,
        };
        let state = if hold.is_some() {
            JobState::Held
        } else {
            JobState::Idle
        };
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        tx.execute(
            "UPDATE jobs SET state = ?3, failures = ?4, host = NULL, claim = NULL, claimed_at = NULL,
                 hold_pending = NULL, hold_by = NULL
             WHERE cluster = ?1 AND proc = ?2",
            params![id.cluster as i64, id.proc, state.as_str(), failures],
        )?;
        event(
            &tx,
            &mut ev,
            id,
            "shadow_error",
            json!({ "reason": reason }),
        )?;
        if let Some(why) = hold {
            tx.execute(
                "UPDATE jobs SET hold_reason = ?3 WHERE cluster = ?1 AND proc = ?2",
                params![id.cluster as i64, id.proc, why],
            )?;
            event(&tx, &mut ev, id, "held", json!({ "reason": why }))?;
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok(Some(state))
    }

    /// Removes jobs that have not finished. Returns what was removed and
    /// the ids that name no removable job.
    pub fn remove(&mut self, ids: &[JobId], by: &str) -> Result<(Vec<Removed>, Vec<JobId>)> {
        let tx = self.db.transaction()?;
        let mut ev = Vec::new();
        let mut removed = Vec::new();
        let mut not_found = Vec::new();
        for &id in ids {
            let cur: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT state, claim FROM jobs WHERE cluster = ?1 AND proc = ?2",
                    params![id.cluster as i64, id.proc],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((state, claim)) = cur else {
                not_found.push(id);
                continue;
            };
            let state = JobState::parse(&state).unwrap_or(JobState::Held);
            if state.is_final() {
                not_found.push(id);
                continue;
            }
            tx.execute(
                "UPDATE jobs SET state = 'removed', claim = NULL, claimed_at = NULL, hold_pending = NULL, finished = ?3 WHERE cluster = ?1 AND proc = ?2",
                params![id.cluster as i64, id.proc, now()],
            )?;
            event(
                &tx,
                &mut ev,
                id,
                "removed",
                json!({ "by": by, "was": state.as_str() }),
            )?;
            removed.push(Removed {
                id,
                was_running: state == JobState::Running,
                claim: claim.map(ClaimId),
            });
        }
        tx.commit()?;
        self.user_logs(&ev);
        Ok((removed, not_found))
    }
}

/// The summary line of a job for `roost q` and `roost history`.
fn summary(r: JobRow) -> JobSummary {
    JobSummary {
        id: r.id,
        owner: r.owner,
        state: r.state,
        executable: r.spec.executable,
        arguments: r.spec.arguments,
        host: r.host,
        submitted: r.submitted,
        exit: r.exit,
        runs: r.runs,
        checkpoints: r.checkpoints,
        ckpt_bytes: r.image.as_ref().map(|i| i.bytes),
        ckpt_time: r.image.as_ref().map(|i| i.time),
        ckpt_kind: r.image.as_ref().map(|i| i.kind.clone()),
        ckpt_secs: r.image.as_ref().map(|i| i.secs),
        finished: r.finished,
        hold_reason: r.hold_reason,
        transfer: None,
    }
}

/// A running job leaves its host (inside `tx`): back to idle with event
/// `event_name`, or held if a hold waits for it. The event says whether it
/// will resume from a checkpoint.
fn leave_host(
    tx: &Transaction<'_>,
    ev: &mut Vec<(JobId, String)>,
    id: JobId,
    event_name: &str,
    reason: &str,
) -> Result<()> {
    type Cols = (Option<String>, Option<String>, Option<u32>, Option<i64>);
    let (pending, by, seq, bytes): Cols = tx.query_row(
        "SELECT hold_pending, hold_by, ckpt_seq, ckpt_bytes FROM jobs WHERE cluster = ?1 AND proc = ?2",
        params![id.cluster as i64, id.proc],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let image = seq.map(|_| bytes.unwrap_or(0));
    let mut extra = json!({ "reason": reason, "from_checkpoint": image.is_some() });
    if let Some(b) = image {
        extra["image_bytes"] = json!(b);
    }
    event(tx, ev, id, event_name, extra)?;
    match pending {
        Some(why) => {
            tx.execute(
                "UPDATE jobs SET state = 'held', hold_reason = ?3, hold_pending = NULL, hold_by = NULL,
                     host = NULL, claim = NULL, claimed_at = NULL
                 WHERE cluster = ?1 AND proc = ?2",
                params![id.cluster as i64, id.proc, why],
            )?;
            event(tx, ev, id, "held", json!({ "reason": why, "by": by }))?;
        }
        None => {
            tx.execute(
                "UPDATE jobs SET state = 'idle', host = NULL, claim = NULL, claimed_at = NULL
                 WHERE cluster = ?1 AND proc = ?2",
                params![id.cluster as i64, id.proc],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
