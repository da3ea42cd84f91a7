//! Running one job: its placeholders for stdin/stdout/stderr, its process
//! (in its own process group, in a sandbox, under the shim), the shim
//! listener, and the relay loop until the job is over.
//!
//! The sandbox ([`crate::sandbox`]) gives the job new mount, pid and
//! network namespaces in which the scratch directory is mounted at `/tmp`
//! and the job is pid 2 under an init of ours, with ASLR off: the job sees
//! the same paths, pid and address layout on every host, so that an image
//! taken here restarts elsewhere. It runs under its own uid, landlock,
//! seccomp and rlimits, in a scratch directory of the size it asked for.
//!
//! While it runs, the job takes commands ([`JobCommand`]): checkpoint (and
//! vacate), suspend, continue, kill; and periodic checkpoints. A
//! checkpoint is taken by the shim on [`ckpt::SIG_CKPT`] and streamed,
//! compressed, through the backend (see [`crate::ckpt`]). A restart runs
//! the same program with its image on a pipe.
//!
//! The job is over when its main process has exited and every placeholder
//! has reached EOF (all its data forwarded, every handle closed). Whatever
//! is left of its process group is then killed. Processes that keep a
//! placeholder open after the main process exited get a short grace, then
//! SIGKILL.

use crate::ckpt::{self, CkptConn, ImageMsg};
use crate::relay::{self, Backend, Relay};
use crate::sandbox::{self, Limits, Sandbox};
use proto::Handle;
use proto::ckpt::{ACK_COMMITTED, FD_REMOTE, FD_STREAM, FdRecord};
use proto::job::{ExitStatus, JobSpec, Usage};
use proto::shim::{ENV_CWD, ENV_ROOT, ENV_SOCK};
use rustix::process::{Pid, Signal};
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Name of the shim socket inside the scratch directory.
pub const SOCK_NAME: &str = ".roost.sock";
/// Where the job sees its scratch directory.
pub const JOB_TMP: &str = "/tmp";
/// `PATH` of a job whose environment does not set one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long processes of the job may keep placeholders open after its main
/// process exited before the process group is killed.
const GRACE: Duration = Duration::from_secs(2);
/// How long after that kill placeholders may stay open (held by a process
/// that left the group) before the relay closes them itself.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Longest a checkpoint that does not vacate may take.
pub const CKPT_LIMIT: Duration = Duration::from_secs(600);
/// What the shim says when a checkpoint finds it inside a call.
const SHIM_BUSY: &str = "the shim is busy";
/// How soon a busy shim is asked again.
const BUSY_RETRY: Duration = Duration::from_millis(20);
/// Exit code of a restart that could not restore its image (the shim's).
const RESTORE_FAILED: i32 = 121;

/// Everything needed to start one job on this host.
#[derive(Debug)]
pub struct JobLaunch {
    /// Path of the executable on this host (a path inside `scratch` is
    /// run as `/tmp/...`, where the job sees it).
    pub program: PathBuf,
    /// The job's arguments, `argv[0]` included.
    pub argv: Vec<String>,
    /// The job's environment (`ROOST_*`, `LD_PRELOAD` and a default `PATH`
    /// are added by [`run_job`]).
    pub env: Vec<(String, String)>,
    /// Fresh and empty; the job's `/tmp` and working directory. Removed by
    /// the caller after [`run_job`] returns.
    pub scratch: PathBuf,
    /// The job's initial directory on the submit host (`ROOST_ROOT`,
    /// `ROOST_CWD`).
    pub root: String,
    /// Handles for the job's stdin/stdout/stderr; `None` is `/dev/null`.
    /// Not used for a restart: the image brings its fds back.
    pub stdin: Option<Handle>,
    pub stdout: Option<Handle>,
    pub stderr: Option<Handle>,
    /// `libroost_shim.so`. An empty path runs the job without a preload
    /// (only its stdin/stdout/stderr are then remote; no checkpoints).
    pub shim: PathBuf,
    /// Restart from a checkpoint image instead: its zstd-compressed bytes
    /// in order, ending when the sender is dropped.
    pub restore: Option<mpsc::Receiver<Vec<u8>>>,
    /// Commands while the job runs (see [`JobControl`]).
    pub control: Option<mpsc::UnboundedReceiver<JobCommand>>,
    /// Take an image this often and let the job go on.
    pub checkpoint_interval: Option<Duration>,
}

impl JobLaunch {
    /// A fresh start with no commands and no periodic checkpoints.
    pub fn new(program: PathBuf, argv: Vec<String>, scratch: PathBuf, root: String) -> Self {
        JobLaunch {
            program,
            argv,
            env: Vec::new(),
            scratch,
            root,
            stdin: None,
            stdout: None,
            stderr: None,
            shim: PathBuf::new(),
            restore: None,
            control: None,
            checkpoint_interval: None,
        }
    }
}

/// A command to a running job.
#[derive(Debug)]
pub enum JobCommand {
    /// Take an image within `max_time`. With `vacate`, the job is killed
    /// afterwards whether or not the image was committed. The outcome goes
    /// to `reply` before the job is killed.
    Checkpoint {
        vacate: bool,
        reason: String,
        max_time: Duration,
        reply: Option<oneshot::Sender<CkptOutcome>>,
    },
    /// Stop the job's processes (SIGSTOP to its process group).
    Suspend,
    /// Let them run again (SIGCONT).
    Continue,
    /// Kill them (SIGKILL); `run_job` then returns as for any end.
    Kill,
    /// Take increments (only the pages changed since the last image) with
    /// a full image every `n` increments; 0: full images only (the default).
    FullEvery(u32),
    /// Where to publish the job's processes while they run, so that
    /// [`JobControl`] can stop and continue them without waiting for the
    /// job's loop (busy, e.g., with a call its shadow has not answered).
    Target(Arc<Mutex<Option<Target>>>),
}

/// The job's processes, for signalling from outside its loop.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pid: i32,
    tree: Option<sandbox::Tree>,
}

impl Target {
    /// Sends `sig` to the job's process group and to every process of its
    /// namespace (one that left the group too).
    fn signal(&self, sig: Signal) {
        if let Some(t) = self.tree {
            for (p, _) in t.members() {
                if let Some(p) = Pid::from_raw(p) {
                    let _ = rustix::process::kill_process(p, sig);
                }
            }
        }
        if let Some(p) = Pid::from_raw(self.pid) {
            match rustix::process::kill_process_group(p, sig) {
                Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                Err(e) => warn!(
                    pgid = self.pid,
                    ?sig,
                    "signalling the job's process group: {e}"
                ),
            }
        }
    }
}

/// Empties a [`Target`] slot when the job's loop ends (its processes are
/// about to be reaped; their pids must not be signalled after that).
struct ClearTarget(Option<Arc<Mutex<Option<Target>>>>);

impl Drop for ClearTarget {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

/// How a checkpoint ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CkptOutcome {
    /// The image is committed on the submit host.
    Committed {
        /// Stored (compressed) size.
        bytes: u64,
        /// Size before compression.
        raw_bytes: u64,
        seconds: f64,
        /// An increment over the previous image, not a full image.
        incremental: bool,
    },
    /// The job cannot be checkpointed now (why): several processes or
    /// threads, no shim, a file or mapping that cannot move.
    NotCheckpointable(String),
    /// The image could not be taken or committed in time (why).
    Failed(String),
}

impl CkptOutcome {
    pub fn committed(&self) -> bool {
        matches!(self, CkptOutcome::Committed { .. })
    }
}

/// The starter's handle on a running job: give [`JobControl::new`]'s
/// receiver to [`JobLaunch::control`].
#[derive(Debug, Clone)]
pub struct JobControl(
    mpsc::UnboundedSender<JobCommand>,
    Arc<Mutex<Option<Target>>>,
);

impl JobControl {
    pub fn new() -> (JobControl, mpsc::UnboundedReceiver<JobCommand>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let slot = Arc::new(Mutex::new(None));
        let _ = tx.send(JobCommand::Target(slot.clone()));
        (JobControl(tx, slot), rx)
    }

    /// Signals the job's processes now, if they run.
    fn signal_now(&self, sig: Signal) {
        let t = *self.1.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = t {
            t.signal(sig);
        }
    }

    fn ask(
        &self,
        vacate: bool,
        reason: String,
        max_time: Duration,
    ) -> oneshot::Receiver<CkptOutcome> {
        let (reply, rx) = oneshot::channel();
        let _ = self.0.send(JobCommand::Checkpoint {
            vacate,
            reason,
            max_time,
            reply: Some(reply),
        });
        rx
    }

    /// Takes an image and lets the job go on. The receiver fails if the
    /// job ended first.
    pub fn checkpoint(&self, reason: impl Into<String>) -> oneshot::Receiver<CkptOutcome> {
        self.ask(false, reason.into(), CKPT_LIMIT)
    }

    /// Vacates: takes an image within `max_vacate_time`, then kills the
    /// job in every case; `run_job` returns once it is gone. Report
    /// `Vacated { checkpointed: outcome.committed() }`.
    pub fn vacate(
        &self,
        reason: impl Into<String>,
        max_vacate_time: Duration,
    ) -> oneshot::Receiver<CkptOutcome> {
        self.ask(true, reason.into(), max_vacate_time)
    }

    /// Stops the job's processes: at once, and through the job's loop
    /// (which then takes no periodic images).
    pub fn suspend(&self) {
        self.signal_now(Signal::Stop);
        let _ = self.0.send(JobCommand::Suspend);
    }

    /// Lets them run again.
    pub fn resume(&self) {
        let _ = self.0.send(JobCommand::Continue);
        self.signal_now(Signal::Cont);
    }

    pub fn kill(&self) {
        let _ = self.0.send(JobCommand::Kill);
    }

    /// Takes increments, with a full image every `n` (0: full images only).
    pub fn full_every(&self, n: u32) {
        let _ = self.0.send(JobCommand::FullEvery(n));
    }
}

/// The job's periodic checkpoint interval: the `CheckpointInterval`
/// attribute, in seconds (absent, 0 or not a number: none).
pub fn checkpoint_interval(spec: &JobSpec) -> Option<Duration> {
    let v = spec.attributes.get("CheckpointInterval")?;
    let secs: u64 = v.trim().trim_matches('"').parse().ok()?;
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// How many increments come between full images: the job's
/// `CheckpointFullEvery` attribute, else `default` (0: full images only).
pub fn checkpoint_full_every(spec: &JobSpec, default: u32) -> u32 {
    spec.attributes
        .get("CheckpointFullEvery")
        .and_then(|v| v.trim().trim_matches('"').parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot listen for the shim on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the placeholder for the job's {which}")]
    Placeholder {
        which: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the job's program {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot watch the job's process {pid}")]
    Watch {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("waiting for the job's process {pid} failed")]
    Wait {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("the job could not be restarted from its image: {0}")]
    Restore(String),
    #[error("cannot prepare the sandbox in {scratch}")]
    Sandbox {
        scratch: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Name of the shim's copy in the scratch directory.
pub const SHIM_NAME: &str = ".roost-shim.so";

/// Puts the shim into the scratch directory unless it is there already;
/// returns its path there.
fn place_shim(shim: &Path, scratch: &Path) -> std::io::Result<PathBuf> {
    if shim.starts_with(scratch) {
        return Ok(shim.to_path_buf());
    }
    place_in_scratch(shim, scratch, SHIM_NAME)
}

/// Puts a file into the scratch directory under `name` (a hard link, or a
/// copy across file systems); returns its path there.
fn place_in_scratch(src: &Path, scratch: &Path, name: &str) -> std::io::Result<PathBuf> {
    let dst = scratch.join(name);
    if !dst.exists() && std::fs::hard_link(src, &dst).is_err() {
        std::fs::copy(src, &dst)?;
    }
    Ok(dst)
}

/// Where the job sees a path of this host: inside the scratch directory
/// it is under `/tmp`.
fn job_path(p: &Path, scratch: &Path) -> PathBuf {
    match p.strip_prefix(scratch) {
        Ok(rel) => Path::new(JOB_TMP).join(rel),
        Err(_) => p.to_path_buf(),
    }
}

/// A checkpoint asked for and not yet over.
struct Pending {
    vacate: bool,
    reason: String,
    replies: Vec<oneshot::Sender<CkptOutcome>>,
    started: Instant,
    deadline: Instant,
    /// The job was stopped: stop it again afterwards.
    restop: bool,
    /// The shim was busy: ask again then.
    retry_at: Option<Instant>,
    /// An increment is welcome (the shim decides).
    increment: bool,
}

/// Spawns the job, serves its shim connections, returns when the job's
/// process (and every process it left) has ended and all its data is
/// forwarded. No limits from a request: see [`run_job_limited`].
pub async fn run_job<B: Backend>(
    launch: JobLaunch,
    backend: B,
) -> Result<(ExitStatus, Usage), JobError> {
    run_job_limited(launch, Limits::default(), backend).await
}

/// [`run_job`] with the job's rlimits and scratch directory size from its
/// request.
pub async fn run_job_limited<B: Backend>(
    mut launch: JobLaunch,
    limits: Limits,
    backend: B,
) -> Result<(ExitStatus, Usage), JobError> {
    let features = sandbox::features();
    if features.landlock_abi == 0 {
        warn!(
            "this kernel has no landlock: the job's file access is confined by namespaces and its uid only"
        );
    }
    if !features.seccomp {
        warn!("this kernel has no seccomp filters: the job's system calls are not filtered");
    }
    let root = rustix::process::geteuid().is_root();
    let sandbox_err = |source| JobError::Sandbox {
        scratch: launch.scratch.clone(),
        source,
    };
    // The scratch directory becomes a tmpfs of the size asked for (it is
    // unmounted, last, when this returns). Room for the shim's copy comes
    // on top. A tmpfs lives in memory: a request beyond half of it is held
    // by RLIMIT_FSIZE (per file) only.
    let in_memory = limits.disk_mb > 0 && limits.disk_mb <= sandbox::memory_mb() / 2;
    if root && limits.disk_mb > 0 && !in_memory {
        warn!(
            request_disk_mb = limits.disk_mb,
            "the job's disk request is too large for a scratch tmpfs; only its file sizes are limited"
        );
    }
    let _quota = if root && in_memory {
        let extra = std::fs::metadata(&launch.shim).map_or(0, |m| m.len());
        Some(
            sandbox::Quota::mount(&launch.scratch, limits.disk_mb, extra, sandbox::job_uid())
                .map_err(sandbox_err)?,
        )
    } else {
        None
    };
    let listen = |path: PathBuf| {
        UnixListener::bind(&path)
            .map(|l| (l, Unlink(path.clone())))
            .map_err(|source| JobError::Listen { path, source })
    };
    let (listener, _unlink) = listen(launch.scratch.join(SOCK_NAME))?;
    let (ckpt_listener, _unlink_ckpt) = listen(launch.scratch.join(ckpt::CKPT_SOCK_NAME))?;
    let restore = launch.restore.take();

    let mut relay = Relay::new(backend);
    let (stdin, stdout, stderr) = if restore.is_some() {
        (Stdio::null(), Stdio::null(), Stdio::null())
    } else {
        let mut std_fd = |h: Option<Handle>, flags: i32, stream: bool, which| match h {
            Some(h) => relay
                .add(h, flags, false, stream)
                .map(Stdio::from)
                .map_err(|source| JobError::Placeholder { which, source }),
            None => Ok(Stdio::null()),
        };
        (
            std_fd(launch.stdin, libc::O_RDONLY, true, "stdin")?,
            std_fd(launch.stdout, libc::O_WRONLY, false, "stdout")?,
            std_fd(launch.stderr, libc::O_WRONLY, false, "stderr")?,
        )
    };
    let spawn_err = |source| JobError::Spawn {
        program: launch.program.clone(),
        source,
    };
    // A restart reads its image from a pipe, and says on stderr why it
    // failed, if it does, until the image's own fds replace it.
    let (image_pipe, restart_err) = if restore.is_some() {
        let flags = rustix::pipe::PipeFlags::CLOEXEC;
        let image = rustix::pipe::pipe_with(flags).map_err(|e| spawn_err(e.into()))?;
        let err = rustix::pipe::pipe_with(flags).map_err(|e| spawn_err(e.into()))?;
        (Some(image), Some(err))
    } else {
        (None, None)
    };
    let (stderr, restart_err) = match restart_err {
        Some((r, w)) => (Stdio::from(w), Some(capture(r))),
        None => (stderr, None),
    };

    // A program this host keeps under /tmp would be hidden by the job's
    // own /tmp (the scratch directory): it travels in, like the shim.
    let mut _program_copy = None;
    let program =
        if !launch.program.starts_with(&launch.scratch) && launch.program.starts_with(JOB_TMP) {
            let name = format!(
                ".roost-program-{}",
                launch
                    .program
                    .file_name()
                    .map_or("job".into(), |n| n.to_string_lossy())
            );
            let p = place_in_scratch(&launch.program, &launch.scratch, &name).map_err(spawn_err)?;
            _program_copy = Some(Unlink(p.clone()));
            p
        } else {
            launch.program.clone()
        };
    let mut cmd = Command::new(job_path(&program, &launch.scratch));
    if let Some((argv0, args)) = launch.argv.split_first() {
        cmd.arg0(argv0).args(args);
    }
    let in_job = |name: &str| Path::new(JOB_TMP).join(name);
    cmd.env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .env(ENV_SOCK, in_job(SOCK_NAME))
        .env(ckpt::ENV_CKPT_SOCK, in_job(ckpt::CKPT_SOCK_NAME))
        .env(ENV_ROOT, &launch.root)
        .env(ENV_CWD, &launch.root)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    if restore.is_some() {
        cmd.env(ckpt::ENV_RESTORE_FD, ckpt::RESTORE_FD.to_string());
    }
    if !launch.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    // The shim's copy goes when the job is over, like the sockets.
    let mut _shim_copy = None;
    if !launch.shim.as_os_str().is_empty() {
        // The job's /tmp is the scratch directory, which hides whatever this
        // host keeps under /tmp; the shim travels into the scratch directory
        // so that every host preloads it from the same path.
        let shim = place_shim(&launch.shim, &launch.scratch).map_err(spawn_err)?;
        if shim != launch.shim {
            _shim_copy = Some(Unlink(shim.clone()));
        }
        let mut preload = job_path(&shim, &launch.scratch).into_os_string();
        if let Some((_, v)) = launch.env.iter().find(|(k, _)| k == "LD_PRELOAD") {
            preload.push(":");
            preload.push(v);
        }
        cmd.env("LD_PRELOAD", preload);
    }
    // Everything in the scratch directory (sockets included) is the job's.
    if root {
        sandbox::give(&launch.scratch, sandbox::job_uid()).map_err(sandbox_err)?;
    }
    let sandbox = Sandbox::new(
        &launch.scratch,
        &program,
        image_pipe
            .as_ref()
            .map(|(r, _)| (r.as_raw_fd(), ckpt::RESTORE_FD)),
        &limits,
        &features,
    )
    .map_err(spawn_err)?;
    // SAFETY: `enter` makes only system calls on memory built before the
    // fork (see `Sandbox`), which is what the child of a fork may do.
    unsafe {
        cmd.pre_exec(move || sandbox.enter());
    }

    let started = Instant::now();
    let child = cmd.spawn().map_err(spawn_err)?;
    // The command holds the job's ends of the std placeholders; they must be
    // closed here so that EOF means the job let go of them.
    drop(cmd);
    let pid = i32::try_from(child.id()).expect("pids fit in i32");
    drop(child);
    // The job is pid 2 of its namespace; signals go to its host pid.
    let tree = sandbox::Tree::find(pid);
    if tree.is_none() {
        warn!(
            pid,
            "the job's pid namespace was not found; it is signalled as the spawned process"
        );
    }
    let job_pid = tree.map_or(pid, |t| t.job);
    let mut group = Group {
        pid,
        tree,
        reaped: false,
    };
    if let (Some(rx), Some((r, w))) = (restore, image_pipe) {
        drop(r);
        ckpt::spawn_feeder(rx, w);
        info!(pid, program = %launch.program.display(), "job restarting from its image");
    } else {
        info!(pid, program = %launch.program.display(), "job started");
    }

    let (tx, mut rx) = mpsc::channel(64);
    let acceptor = AbortOnDrop(tokio::spawn(relay::accept_loop(listener, tx)));
    let (ctx, mut ckpt_rx) = mpsc::channel(4);
    let ckpt_acceptor = AbortOnDrop(tokio::spawn(ckpt::accept_loop(ckpt_listener, ctx)));
    let mut exit = AbortOnDrop(tokio::spawn(exited(job_pid)));
    let mut control = launch.control.take();
    let mut ticks = launch.checkpoint_interval.map(|every| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let can_ckpt = !launch.shim.as_os_str().is_empty();
    // Increments between full images (0: none), and how many were
    // committed since the last full image of this run (`None`: no image
    // yet, or the last one failed: the next is full).
    let mut full_every = 0u32;
    let mut since_full: Option<u32> = None;

    let mut main_exited = false;
    let mut killed = false;
    // Declared after `group`: emptied before the group is dropped.
    let mut clear_target = ClearTarget(None);
    let mut suspended = false;
    let mut pending: Option<Pending> = None;
    let mut pending_sleep: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut io_first = false;
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        if main_exited && relay.is_idle() {
            break;
        }
        let ev = poll_fn(|cx| {
            if !main_exited && let Poll::Ready(r) = Pin::new(&mut exit.0).poll(cx) {
                return Poll::Ready(Ev::Exited(r));
            }
            if let Some(c) = control.as_mut()
                && let Poll::Ready(cmd) = c.poll_recv(cx)
            {
                return Poll::Ready(Ev::Command(cmd));
            }
            if let Poll::Ready(Some(c)) = ckpt_rx.poll_recv(cx) {
                return Poll::Ready(Ev::Ckpt(c));
            }
            // Shim requests and placeholder I/O take turns going first, so
            // that neither a busy caller nor a busy writer starves the other.
            io_first = !io_first;
            if io_first && let Poll::Ready(io) = relay.poll_io(cx) {
                return Poll::Ready(Ev::Io(io));
            }
            if let Poll::Ready(Some(call)) = rx.poll_recv(cx) {
                return Poll::Ready(Ev::Shim(call));
            }
            if !io_first && let Poll::Ready(io) = relay.poll_io(cx) {
                return Poll::Ready(Ev::Io(io));
            }
            if let Some(t) = ticks.as_mut()
                && t.poll_tick(cx).is_ready()
            {
                return Poll::Ready(Ev::Tick);
            }
            if let Some(d) = pending_sleep.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Ev::CkptTimeout);
            }
            if let Some(d) = deadline.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Ev::Deadline);
            }
            Poll::Pending
        })
        .await;
        // A checkpoint that ended: its outcome, and whether to vacate.
        let mut ended: Option<(Pending, CkptOutcome)> = None;
        match ev {
            Ev::Exited(r) => {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(source)) => return Err(JobError::Watch { pid, source }),
                    Err(e) => {
                        return Err(JobError::Watch {
                            pid,
                            source: io::Error::other(e),
                        });
                    }
                }
                debug!(pid, "main process exited");
                main_exited = true;
                deadline = Some(Box::pin(tokio::time::sleep(GRACE)));
                if let Some(p) = pending.take() {
                    let why = "the job ended during the checkpoint".to_string();
                    relay.backend_mut().ckpt_abort(why.clone()).await;
                    ended = Some((p, CkptOutcome::Failed(why)));
                }
            }
            Ev::Shim(call) => {
                let answer = relay.handle(call.req).await;
                // The connection may be gone; its process then is too.
                let _ = call.answer.send(answer);
            }
            Ev::Io(io) => relay.on_io(io).await,
            Ev::Command(None) => control = None,
            Ev::Command(Some(JobCommand::Checkpoint {
                vacate,
                reason,
                max_time,
                reply,
            })) => {
                let now = Instant::now();
                let req = Pending {
                    vacate,
                    reason,
                    replies: reply.into_iter().collect(),
                    started: now,
                    deadline: now + max_time,
                    restop: false,
                    retry_at: None,
                    increment: want_increment(full_every, since_full),
                };
                ended = begin_checkpoint(
                    &mut relay,
                    &mut pending,
                    req,
                    &group,
                    main_exited || killed,
                    can_ckpt,
                    suspended,
                )
                .await;
            }
            Ev::Command(Some(JobCommand::Suspend)) => {
                suspended = true;
                group.signal(Signal::Stop);
            }
            Ev::Command(Some(JobCommand::Continue)) => {
                suspended = false;
                group.signal(Signal::Cont);
            }
            Ev::Command(Some(JobCommand::Kill)) => {
                group.kill();
                killed = true;
            }
            Ev::Command(Some(JobCommand::FullEvery(n))) => full_every = n,
            Ev::Command(Some(JobCommand::Target(slot))) => {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(group.target());
                clear_target.0 = Some(slot);
            }
            Ev::Tick if pending.is_none() && !suspended && !main_exited && !killed => {
                let now = Instant::now();
                let req = Pending {
                    vacate: false,
                    reason: "periodic".into(),
                    replies: Vec::new(),
                    started: now,
                    deadline: now + CKPT_LIMIT,
                    restop: false,
                    retry_at: None,
                    increment: want_increment(full_every, since_full),
                };
                ended = begin_checkpoint(
                    &mut relay,
                    &mut pending,
                    req,
                    &group,
                    false,
                    can_ckpt,
                    suspended,
                )
                .await;
            }
            Ev::Tick => {}
            Ev::Ckpt(CkptConn::Image(conn)) => match pending.take() {
                Some(p) => {
                    let outcome = ship_image(&mut relay, conn, &p, &group).await;
                    ended = Some((p, outcome));
                }
                None => warn!("a checkpoint image nobody asked for; dropped"),
            },
            Ev::Ckpt(CkptConn::Refused(why)) if why.contains(SHIM_BUSY) && pending.is_some() => {
                // The job is inside the shim; it is asked again shortly.
                if let Some(p) = pending.as_mut() {
                    p.retry_at = Some(Instant::now() + BUSY_RETRY);
                }
            }
            Ev::Ckpt(CkptConn::Refused(why)) => match pending.take() {
                Some(p) => {
                    relay.backend_mut().ckpt_abort(why.clone()).await;
                    ended = Some((p, CkptOutcome::NotCheckpointable(why)));
                }
                None => warn!("a checkpoint refusal nobody asked for: {why}"),
            },
            Ev::Ckpt(CkptConn::Reattach(conn, fds)) => reattach(&mut relay, conn, &fds).await,
            Ev::CkptTimeout
                if pending
                    .as_ref()
                    .is_some_and(|p| p.retry_at.is_some() && Instant::now() < p.deadline) =>
            {
                if let Some(p) = pending.as_mut() {
                    p.retry_at = None;
                    if let Err(e) = signal_checkpoint(job_pid, p.increment) {
                        debug!(pid = job_pid, "asking again for the checkpoint: {e}");
                    }
                }
            }
            Ev::CkptTimeout => {
                if let Some(p) = pending.take() {
                    let why = too_late(&p, "the job did not answer the checkpoint signal");
                    relay.backend_mut().ckpt_abort(why.clone()).await;
                    ended = Some((p, CkptOutcome::Failed(why)));
                }
            }
            Ev::Deadline if !killed => {
                warn!(
                    pid,
                    "processes of the job hold its files after it exited; killing them"
                );
                group.kill();
                killed = true;
                deadline = Some(Box::pin(tokio::time::sleep(KILL_WAIT)));
            }
            Ev::Deadline => {
                relay.abandon().await;
                break;
            }
        }
        pending_sleep = pending.as_ref().map(|p| {
            let at = p.retry_at.map_or(p.deadline, |r| r.min(p.deadline));
            Box::pin(tokio::time::sleep_until(at.into()))
        });
        if let Some((p, outcome)) = ended {
            match &outcome {
                CkptOutcome::Committed {
                    bytes,
                    raw_bytes,
                    seconds,
                    incremental,
                } => {
                    since_full = Some(if *incremental {
                        since_full.unwrap_or(0) + 1
                    } else {
                        0
                    });
                    info!(
                        bytes,
                        raw_bytes,
                        seconds,
                        incremental,
                        reason = %p.reason,
                        "checkpoint committed"
                    )
                }
                CkptOutcome::NotCheckpointable(why) => {
                    info!(reason = %p.reason, "not checkpointable: {why}")
                }
                CkptOutcome::Failed(why) => {
                    since_full = None;
                    warn!(reason = %p.reason, "checkpoint failed: {why}")
                }
            }
            for r in p.replies {
                let _ = r.send(outcome.clone());
            }
            if p.vacate {
                if !main_exited {
                    info!(pid, "vacating: the job is killed");
                }
                group.kill();
                killed = true;
            } else if p.restop {
                group.signal(Signal::Stop);
            }
        }
    }
    drop(acceptor);
    drop(ckpt_acceptor);

    group.finish(main_exited);
    let (status, ru) = group
        .reap()
        .map_err(|source| JobError::Wait { pid, source })?;
    if let Some(err) = restart_err
        && status == ExitStatus::Code(RESTORE_FAILED)
    {
        let said =
            String::from_utf8_lossy(&err.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        if let Some(at) = said.find("restart failed") {
            let why = said[at..].lines().next().unwrap_or_default();
            let why = why.trim_start_matches("restart failed: ").to_string();
            return Err(JobError::Restore(why));
        }
    }
    let usage = Usage {
        wall_secs: started.elapsed().as_secs_f64(),
        user_cpu_secs: timeval_secs(ru.ru_utime),
        sys_cpu_secs: timeval_secs(ru.ru_stime),
        bytes_read: 0,
        bytes_written: 0,
    };
    info!(pid, ?status, wall = usage.wall_secs, "job ended");
    Ok((status, usage))
}

enum Ev {
    Exited(Result<io::Result<()>, tokio::task::JoinError>),
    Shim(relay::ShimCall),
    Io(relay::IoEvent),
    Command(Option<JobCommand>),
    Ckpt(CkptConn),
    Tick,
    CkptTimeout,
    Deadline,
}

/// Keeps the first 4 KiB a restarting process writes on its first stderr.
fn capture(r: OwnedFd) -> Arc<Mutex<Vec<u8>>> {
    let said = Arc::new(Mutex::new(Vec::new()));
    let keep = said.clone();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(r);
        let mut buf = [0u8; 4096];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let mut s = keep.lock().unwrap_or_else(|p| p.into_inner());
                    let room = 4096usize.saturating_sub(s.len()).min(n);
                    s.extend_from_slice(&buf[..room]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    said
}

/// Starts a checkpoint: asks the shim for an image, or answers at once
/// when the job cannot be checkpointed. A request while one is under way
/// joins it. Returns a checkpoint that ended here.
async fn begin_checkpoint<B: Backend>(
    relay: &mut Relay<B>,
    pending: &mut Option<Pending>,
    req: Pending,
    group: &Group,
    over: bool,
    can_ckpt: bool,
    suspended: bool,
) -> Option<(Pending, CkptOutcome)> {
    if let Some(p) = pending.as_mut() {
        p.vacate |= req.vacate;
        p.replies.extend(req.replies);
        p.deadline = p.deadline.min(req.deadline);
        return None;
    }
    let refuse = |why: &str| Some(CkptOutcome::NotCheckpointable(why.to_string()));
    let pid = group.job();
    let members = group.members();
    let main = members.iter().find(|p| p.0 == pid).copied();
    let no = if over {
        refuse("the job has ended")
    } else if !can_ckpt {
        refuse("the job runs without the shim")
    } else if members.len() > 1 {
        refuse(&format!(
            "the job has {} processes (one can be checkpointed)",
            members.len()
        ))
    } else if main.is_none_or(|m| m.1 == b'Z') {
        refuse("the job's process has ended")
    } else if !ckpt::catches(pid, ckpt::SIG_CKPT) {
        refuse("the job's program does not take checkpoints (no checkpoint handler in it)")
    } else {
        None
    };
    if let Some(outcome) = no {
        if let CkptOutcome::NotCheckpointable(why) = &outcome
            && !over
        {
            relay.backend_mut().ckpt_abort(why.clone()).await;
        }
        return Some((req, outcome));
    }
    let mut req = req;
    req.restop = suspended || main.is_some_and(|m| m.1 == b'T');
    if req.restop {
        // Everything that was stopped runs again (the namespace's init
        // too, which must be able to reap the job if it is vacated).
        group.signal(Signal::Cont);
    }
    if let Err(e) = signal_checkpoint(pid, req.increment) {
        let why = format!("cannot signal the job: {e}");
        relay.backend_mut().ckpt_abort(why.clone()).await;
        return Some((req, CkptOutcome::Failed(why)));
    }
    debug!(pid, reason = %req.reason, vacate = req.vacate, "checkpoint asked for");
    *pending = Some(req);
    None
}

/// Why a checkpoint that ran out of time was given up: a vacate's limit
/// is the owner's `max_vacate_time`, after which the job is killed.
fn too_late(p: &Pending, what: &str) -> String {
    let limit = p
        .deadline
        .saturating_duration_since(p.started)
        .as_secs_f64();
    if p.vacate {
        format!(
            "{what} within max_vacate_time ({limit:.0} s): the checkpoint is abandoned and the job killed"
        )
    } else {
        format!("{what} within {limit:.0} s")
    }
}

/// Whether the next checkpoint may be an increment.
fn want_increment(full_every: u32, since_full: Option<u32>) -> bool {
    full_every > 0 && since_full.is_some_and(|n| n < full_every)
}

/// Asks the job's process for an image; with `increment`, the signal's
/// value ([`ckpt::WANT_INCREMENT`]) welcomes an increment.
fn signal_checkpoint(pid: i32, increment: bool) -> io::Result<()> {
    let value = libc::sigval {
        sival_ptr: std::ptr::without_provenance_mut(usize::from(increment)),
    };
    // SAFETY: sigqueue(3) with a pid, a signal number and a plain value.
    if unsafe { libc::sigqueue(pid, ckpt::SIG_CKPT, value) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes the image the shim is sending on `conn` to the backend: begin,
/// compressed chunks, then (once every write the job made before is
/// applied) the end with the streams' offsets, and waits for the commit.
/// The shim learns the outcome unless the job is being vacated (it is
/// killed instead). Gives up at the checkpoint's deadline.
async fn ship_image<B: Backend>(
    relay: &mut Relay<B>,
    conn: StdUnixStream,
    p: &Pending,
    group: &Group,
) -> CkptOutcome {
    let mut rx = ckpt::spawn_reader(conn, p.deadline);
    relay.backend_mut().ckpt_begin(p.reason.clone()).await;
    let work = async {
        let (raw_bytes, fds, conn, incremental) = loop {
            match rx.recv().await {
                Some(ImageMsg::Chunk(data)) => relay.backend_mut().ckpt_chunk(data).await,
                Some(ImageMsg::Done {
                    raw_bytes,
                    fds,
                    conn,
                    incremental,
                }) => break (raw_bytes, fds, conn, incremental),
                Some(ImageMsg::Failed(why)) => return Err((why, true, None)),
                None => return Err(("the image reader stopped".to_string(), true, None)),
            }
        };
        relay.flush().await;
        let streams = relay.stream_offsets(&fds).await;
        let seconds = p.started.elapsed().as_secs_f64();
        match relay
            .backend_mut()
            .ckpt_end(raw_bytes, seconds, streams)
            .await
        {
            Ok(bytes) => Ok((bytes, raw_bytes, seconds, conn, incremental)),
            Err(why) => Err((why, false, Some(conn))),
        }
    };
    let r = tokio::time::timeout_at(p.deadline.into(), work).await;
    let answer = |mut conn: StdUnixStream, byte: u8| {
        if p.vacate {
            // The job dies before it could write anything more: the kill
            // lands asynchronously, so its end of `conn` must not see EOF
            // before (it would leave the handler and run on, and what it
            // sent meanwhile, e.g. on a socket, would be sent again by the
            // restarted image). `conn` is closed once the job's end is.
            group.kill();
            std::thread::spawn(move || {
                let _ = std::io::Read::read(&mut conn, &mut [0u8; 1]);
            });
        } else if let Err(e) = conn.write_all(&[byte]) {
            debug!("the job did not wait for the checkpoint's outcome: {e}");
        }
    };
    match r {
        Ok(Ok((bytes, raw_bytes, seconds, conn, incremental))) => {
            answer(conn, ACK_COMMITTED);
            CkptOutcome::Committed {
                bytes,
                raw_bytes,
                seconds,
                incremental,
            }
        }
        Ok(Err((why, abort, conn))) => {
            if abort {
                relay.backend_mut().ckpt_abort(why.clone()).await;
            }
            if let Some(conn) = conn {
                answer(conn, b'F');
            }
            CkptOutcome::Failed(why)
        }
        Err(_) => {
            let why = too_late(p, "the checkpoint did not finish");
            relay.backend_mut().ckpt_abort(why.clone()).await;
            CkptOutcome::Failed(why)
        }
    }
}

/// Gives a restarted process placeholders for the remote fds of its image,
/// in the order asked: `F` with the fd, or `E` without. Records of one
/// handle share one placeholder, as the fds of one open file did.
async fn reattach<B: Backend>(relay: &mut Relay<B>, mut conn: UnixStream, fds: &[FdRecord]) {
    let mut made: Vec<(u64, Option<OwnedFd>)> = Vec::new();
    let mut ok = 0;
    for r in fds {
        let i = match made.iter().position(|(h, _)| *h == r.handle) {
            Some(i) => i,
            None => {
                let fd = if r.kind & FD_REMOTE == 0 {
                    None
                } else {
                    let stream = r.kind & FD_STREAM != 0;
                    match relay.reattach(Handle(r.handle), r.open_flags, stream).await {
                        Ok(fd) => Some(fd),
                        Err(e) => {
                            warn!(
                                handle = r.handle,
                                fd = r.fd,
                                "cannot reattach a remote fd: {e}"
                            );
                            None
                        }
                    }
                };
                made.push((r.handle, fd));
                made.len() - 1
            }
        };
        debug!(
            fd = r.fd,
            handle = r.handle,
            kind = r.kind,
            ok = made[i].1.is_some(),
            "reattach"
        );
        let sent = match &made[i].1 {
            Some(fd) => {
                ok += 1;
                relay::send_with_fd(&mut conn, b"F", Some(fd.as_fd())).await
            }
            None => relay::send_with_fd(&mut conn, b"E", None).await,
        };
        if let Err(e) = sent {
            warn!("the restarted process went away while reattaching: {e}");
            return;
        }
    }
    info!(
        fds = fds.len(),
        reattached = ok,
        "restarted process reattached"
    );
}

/// Resolves when process `pid` (the job, pid 2 of its namespace; or our
/// child) has exited, without reaping it.
async fn exited(pid: i32) -> io::Result<()> {
    // 0: a job that had exited before its pid was looked for.
    let Some(p) = Pid::from_raw(pid) else {
        return Ok(());
    };
    let pidfd = match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        // A job in a pid namespace is its init's child: gone already.
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // SAFETY: the OwnedFd is a valid, open pidfd that the AsyncFd owns and
    // keeps open, unchanged, until it is dropped.
    let afd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }?;
    let _guard = afd.readable().await?;
    Ok(())
}

/// The job's process group, led by its main process. Dropping it kills the
/// group and reaps the main process (in a thread: it may still be dying).
struct Group {
    pid: i32,
    /// The job's pid namespace: its init and the job's host pids.
    tree: Option<sandbox::Tree>,
    reaped: bool,
}

impl Group {
    /// The job's host pid (pid 2 of its namespace).
    fn job(&self) -> i32 {
        self.tree.map_or(self.pid, |t| t.job)
    }

    /// The job's processes (those of its namespace but the init, or of
    /// its process group): `(pid, state)`.
    fn members(&self) -> Vec<(i32, u8)> {
        match self.tree {
            Some(t) => t.members(),
            None => ckpt::group_members(self.pid)
                .into_iter()
                .map(|p| (p.pid, p.state))
                .collect(),
        }
    }

    fn target(&self) -> Target {
        Target {
            pid: self.pid,
            tree: self.tree,
        }
    }

    /// Sends `sig` to the job's process group and to every process of its
    /// namespace (one that left the group too).
    fn signal(&self, sig: Signal) {
        self.target().signal(sig)
    }

    /// Kills the job's namespace's init, which takes every process of the
    /// namespace with it (or, without a namespace, its process group).
    fn kill(&self) {
        // The spawned process outside the namespace then ends with the
        // job's status (or the init's, killed).
        if let Some(t) = self.tree {
            if let Some(p) = Pid::from_raw(t.init) {
                match rustix::process::kill_process(p, Signal::Kill) {
                    Ok(()) => debug!(init = t.init, "killed the job's pid namespace"),
                    Err(rustix::io::Errno::SRCH) => {}
                    Err(e) => warn!(init = t.init, "killing the job's pid namespace: {e}"),
                }
            }
            // A suspended job's outside process was stopped with it: it must
            // run to end with the job's status.
            if let Some(p) = Pid::from_raw(self.pid) {
                let _ = rustix::process::kill_process(p, Signal::Cont);
            }
            return;
        }
        if let Some(p) = Pid::from_raw(self.pid) {
            match rustix::process::kill_process_group(p, Signal::Kill) {
                Ok(()) => debug!(pgid = self.pid, "killed what was left of the job"),
                Err(rustix::io::Errno::SRCH) => {}
                Err(e) => warn!(pgid = self.pid, "killing the job's process group: {e}"),
            }
        }
    }

    /// Kills what is left of the job once it is over. A job that exited
    /// is first left to its init to reap, so that its status is the one
    /// reported (the kill would otherwise take the init before it).
    fn finish(&self, main_exited: bool) {
        if let (Some(t), true) = (self.tree, main_exited) {
            if let Some(p) = Pid::from_raw(t.init) {
                let _ = rustix::process::kill_process(p, Signal::Cont);
            }
            let gone = || {
                std::fs::read(format!("/proc/{}/stat", t.job)).map_or(true, |s| {
                    // A zombie not yet reaped, or a new process of that pid.
                    let state = s
                        .iter()
                        .rposition(|&c| c == b')')
                        .and_then(|i| s.get(i + 2).copied());
                    state != Some(b'Z')
                })
            };
            let until = Instant::now() + Duration::from_secs(1);
            while !gone() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.kill();
    }

    /// Reaps the (exited) main process: its status and resource usage.
    fn reap(&mut self) -> io::Result<(ExitStatus, libc::rusage)> {
        let r = wait4(self.pid);
        self.reaped = true;
        let (status, ru) = r?;
        let status = if libc::WIFSIGNALED(status) {
            ExitStatus::Signal(libc::WTERMSIG(status))
        } else {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        };
        Ok((status, ru))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let pid = self.pid;
            std::thread::spawn(move || wait4(pid));
        }
    }
}

/// `wait4(pid)`, blocking: the raw wait status and the rusage of the
/// process and of the descendants it waited for.
fn wait4(pid: i32) -> io::Result<(i32, libc::rusage)> {
    let mut status: libc::c_int = 0;
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: `status` and `ru` are valid, writable and exclusively
        // borrowed for the duration of the call; wait4 writes nothing else.
        let r = unsafe { libc::wait4(pid, &mut status, 0, ru.as_mut_ptr()) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // SAFETY: `ru` was zero-initialized (a valid rusage) and then filled by
    // a successful wait4.
    let ru = unsafe { ru.assume_init() };
    Ok((status, ru))
}

fn timeval_secs(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes the shim's socket (or its copy) when the job is over.
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
