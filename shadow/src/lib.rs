//! roost-schedd: the persistent job queue and one shadow per running job.
//!
//! - [`fs`]: the remote-file engine (one `JobFs` per running job).
//! - [`queue`]: the SQLite queue and the job event log.
//! - [`cli`]: the `roost` CLI server on `DIR/schedd.sock` (0600, `SO_PEERCRED`).
//! - [`shadow`]: the TLS server starters attach to; one task per job.
//! - [`wire`]: a shadow's link to its starter, numbered so it survives a cut.
//! - [`net`]: a running job's sockets on the submit host.
//! - [`mm`]: the matchmaker client (idle jobs out, matches in).
//! - [`ckpt`]: the checkpoint image store (`DIR/ckpt/C.P/`).
//!
//! [`Schedd::bind`] opens the queue and binds both servers; [`Bound::run`]
//! serves until the shutdown future resolves. An error on one connection
//! ends that connection only.
#![forbid(unsafe_code)]

pub mod ckpt;
pub mod cli;
pub mod fs;
pub mod metrics;
pub mod mm;
pub mod net;
pub mod queue;
pub mod shadow;
mod users;
pub mod wire;

use proto::tls::Identity;
use proto::{ClaimId, HostName, JobId};
use queue::{Queue, QueueError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Notify, mpsc};

/// How long a claim may wait for its starter before it is given back
/// (the default of [`Config::claim_timeout`]).
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a running job is kept when its starter is out of reach, unless
/// the job says otherwise (`lease` in its job file): the default of
/// [`Config::job_lease`].
pub const JOB_LEASE: Duration = Duration::from_secs(20 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ScheddError {
    #[error("cannot load the TLS identity `{name}` from {pki}")]
    Identity {
        name: String,
        pki: PathBuf,
        #[source]
        source: proto::tls::TlsError,
    },
    #[error("cannot create the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("checkpoint store {path}")]
    Images {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a queue task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// What the daemon needs to start (the command line, parsed).
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory with `ca.pem`, `NAME.pem`, `NAME.key`.
    pub pki: PathBuf,
    /// This schedd's name (its certificate's name).
    pub name: String,
    /// State directory: `schedd.sock`, `queue.db`, `ckpt/`.
    pub dir: PathBuf,
    /// Where starters reach the shadows (TLS), `IP:PORT`.
    pub listen: String,
    /// The address sent to the matchmaker, if not `listen`.
    pub advertise: Option<String>,
    /// The matchmaker, `IP:PORT`.
    pub matchmaker: String,
    /// The matchmaker's certificate name.
    pub matchmaker_name: String,
    /// How long a claim may wait for its starter ([`CLAIM_TIMEOUT`]).
    pub claim_timeout: Duration,
    /// A job's lease when its job file sets none ([`JOB_LEASE`]).
    pub job_lease: Duration,
}

/// State shared by every task of the daemon.
pub struct Schedd {
    queue: Arc<Mutex<Queue>>,
    pub(crate) name: HostName,
    pub(crate) identity: Identity,
    /// Wakes the matchmaker client: the idle job list may have changed.
    pub(crate) changed: Notify,
    releases: mpsc::UnboundedSender<ClaimId>,
    pub(crate) claim_timeout: Duration,
    pub(crate) job_lease: Duration,
    /// Where a starter that dials again finds its job's session: by job,
    /// the session's connection id, claim, host and channel.
    resumers: Mutex<HashMap<JobId, Resumer>>,
    /// Running jobs' shadows (by connection id) and their command channels.
    running: Mutex<HashMap<JobId, (u64, mpsc::UnboundedSender<ShadowCmd>)>>,
    conns: AtomicU64,
    /// The checkpoint image store.
    pub(crate) images: ckpt::Store,
    /// Where running jobs' sessions are saved for a restart (`DIR/sessions`).
    pub(crate) sessions: PathBuf,
}

struct Resumer {
    conn: u64,
    claim: ClaimId,
    host: HostName,
    tx: mpsc::UnboundedSender<wire::Resume>,
}

/// What the rest of the schedd asks of a running job's shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShadowCmd {
    /// The job was removed: close the starter's connection.
    End,
    /// Ask the starter for a checkpoint (`vacate`: then leave the host).
    Checkpoint { vacate: bool },
}

impl std::fmt::Debug for Schedd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedd")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Schedd {
    /// Opens the queue and binds the CLI socket and the shadow port.
    pub async fn bind(cfg: Config) -> Result<Bound, ScheddError> {
        let identity =
            Identity::load(&cfg.pki, &cfg.name).map_err(|source| ScheddError::Identity {
                name: cfg.name.clone(),
                pki: cfg.pki.clone(),
                source,
            })?;
        std::fs::create_dir_all(&cfg.dir).map_err(|source| ScheddError::StateDir {
            path: cfg.dir.clone(),
            source,
        })?;
        let db = cfg.dir.join("queue.db");
        let images = ckpt::Store::new(&cfg.dir);
        let store = images.clone();
        let sessions = cfg.dir.join("sessions");
        {
            use std::os::unix::fs::DirBuilderExt;
            let made = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&sessions);
            made.map_err(|source| ScheddError::StateDir {
                path: sessions.clone(),
                source,
            })?;
        }
        let saved = shadow::saved_sessions(&sessions);
        let kept: std::collections::HashSet<JobId> = saved.iter().map(|(j, _)| *j).collect();
        let queue = tokio::task::spawn_blocking(move || {
            let mut q = Queue::open_keeping(&db, &|j| kept.contains(&j))?;
            store.recover(&mut q)?;
            Ok::<_, ScheddError>(q)
        })
        .await??;
        let sock = cfg.dir.join("schedd.sock");
        let cli = bind_unix(&sock)?;
        let shadow = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|source| ScheddError::Bind {
                addr: cfg.listen.clone(),
                source,
            })?;
        let shadow_addr = shadow.local_addr().map_err(|source| ScheddError::Bind {
            addr: cfg.listen.clone(),
            source,
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let schedd = Arc::new(Schedd {
            queue: Arc::new(Mutex::new(queue)),
            name: HostName(cfg.name.clone()),
            identity,
            changed: Notify::new(),
            releases: tx,
            claim_timeout: cfg.claim_timeout,
            job_lease: cfg.job_lease,
            resumers: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            conns: AtomicU64::new(0),
            images,
            sessions,
        });
        let advertise = cfg
            .advertise
            .clone()
            .unwrap_or_else(|| shadow_addr.to_string());
        tracing::info!(sock = %sock.display(), shadow = %shadow_addr, advertise = %advertise, "schedd listening");
        Ok(Bound {
            schedd,
            cli,
            sock,
            shadow,
            shadow_addr,
            advertise,
            cfg,
            releases: rx,
            saved,
        })
    }

    /// Runs `f` on the queue on a blocking thread (SQLite commits fsync).
    pub(crate) async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Queue) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let q = self.queue.clone();
        tokio::task::spawn_blocking(move || {
            let mut q = q.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut q)
        })
        .await
        .unwrap_or_else(|e| Err(QueueError::Rejected(format!("queue task failed: {e}"))))
    }

    /// Gives a claim back to the matchmaker.
    pub(crate) fn release(&self, claim: ClaimId) {
        let _ = self.releases.send(claim);
    }

    pub(crate) fn next_conn(&self) -> u64 {
        self.conns.fetch_add(1, Ordering::Relaxed)
    }

    /// Claims the job for the shadow on connection `conn`; `None` when
    /// another shadow has it.
    pub(crate) fn register_running(
        &self,
        job: JobId,
        conn: u64,
    ) -> Option<mpsc::UnboundedReceiver<ShadowCmd>> {
        let mut m = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if m.contains_key(&job) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        m.insert(job, (conn, tx));
        Some(rx)
    }

    /// Sends a command to a running job's shadow; false when the job has none.
    pub(crate) fn tell_shadow(&self, job: JobId, cmd: ShadowCmd) -> bool {
        let m = self.running.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&job).is_some_and(|(_, tx)| tx.send(cmd).is_ok())
    }

    /// Lets go of the job if connection `conn` holds it.
    pub(crate) fn unregister_running(&self, job: JobId, conn: u64) {
        let mut m = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(&job).is_some_and(|(c, _)| *c == conn) {
            m.remove(&job);
        }
    }

    /// Lets a starter that loses its link find session `conn` of `job` again.
    pub(crate) fn register_resumer(
        &self,
        job: JobId,
        conn: u64,
        claim: &ClaimId,
        host: &HostName,
    ) -> mpsc::UnboundedReceiver<wire::Resume> {
        let (tx, rx) = mpsc::unbounded_channel();
        let r = Resumer {
            conn,
            claim: claim.clone(),
            host: host.clone(),
            tx,
        };
        self.resumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job, r);
        rx
    }

    pub(crate) fn unregister_resumer(&self, job: JobId, conn: u64) {
        let mut m = self.resumers.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(&job).is_some_and(|r| r.conn == conn) {
            m.remove(&job);
        }
    }

    /// The channel to `job`'s session, if `claim` on `host` holds it; or
    /// why a resume is refused.
    pub(crate) fn resumer(
        &self,
        job: JobId,
        claim: &ClaimId,
        host: &HostName,
    ) -> Result<mpsc::UnboundedSender<wire::Resume>, String> {
        let m = self.resumers.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&job) {
            None => Err(format!(
                "job {job} has no session to resume (it ended, or its lease expired and it went back to the queue)"
            )),
            Some(r) if r.claim != *claim => Err(format!(
                "claim {claim} no longer holds job {job} (the job runs under another claim now)"
            )),
            Some(r) if r.host != *host => Err(format!(
                "job {job}'s session belongs to `{}`, not to `{host}`",
                r.host
            )),
            Some(r) => Ok(r.tx.clone()),
        }
    }

    /// Ends the shadow of a running job (its starter sees the connection close).
    pub(crate) fn end_shadow(&self, job: JobId) -> bool {
        let tx = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job);
        tx.is_some_and(|(_, tx)| tx.send(ShadowCmd::End).is_ok())
    }
}

fn bind_unix(sock: &Path) -> Result<UnixListener, ScheddError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ScheddError::Bind {
        addr: sock.display().to_string(),
        source,
    };
    match std::fs::remove_file(sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let l = UnixListener::bind(sock).map_err(err)?;
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(l)
}

/// A schedd with its sockets bound, ready to run.
pub struct Bound {
    schedd: Arc<Schedd>,
    cli: UnixListener,
    sock: PathBuf,
    shadow: TcpListener,
    shadow_addr: SocketAddr,
    advertise: String,
    cfg: Config,
    releases: mpsc::UnboundedReceiver<ClaimId>,
    /// Sessions of jobs that ran when the last schedd stopped.
    saved: Vec<(JobId, shadow::Saved)>,
}

impl Bound {
    /// The shadow port's address (useful with `--listen 127.0.0.1:0`).
    pub fn shadow_addr(&self) -> SocketAddr {
        self.shadow_addr
    }

    /// The CLI socket.
    pub fn sock(&self) -> &Path {
        &self.sock
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ScheddError> {
        let Bound {
            schedd,
            cli,
            sock,
            shadow,
            advertise,
            cfg,
            releases,
            saved,
            ..
        } = self;
        for (job, saved) in saved {
            use tracing::Instrument;
            let span = tracing::info_span!("job", job = %job, host = %saved.host);
            tokio::spawn(shadow::adopt(schedd.clone(), job, saved).instrument(span));
        }
        let tasks = [
            tokio::spawn(cli::serve(schedd.clone(), cli)),
            tokio::spawn(shadow::serve(schedd.clone(), shadow)),
            tokio::spawn(mm::run(
                schedd.clone(),
                cfg.matchmaker.clone(),
                cfg.matchmaker_name.clone(),
                advertise,
                releases,
            )),
            tokio::spawn(mm::expire_claims(schedd.clone())),
        ];
        shutdown.await;
        tracing::info!("shutting down");
        for t in &tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&sock);
        Ok(())
    }
}
