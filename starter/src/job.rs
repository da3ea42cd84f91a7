//! Running one job: its placeholders for stdin/stdout/stderr, its process
//! (in its own process group, in the scratch directory, under the shim), the
//! shim listener, and the relay loop until the job is over.
//!
//! The job is over when its main process has exited and every placeholder
//! has reached EOF (all its data forwarded, every handle closed). Whatever
//! is left of its process group is then killed. Processes that keep a
//! placeholder open after the main process exited get a short grace, then
//! SIGKILL.

use crate::relay::{self, Backend, Relay};
use proto::Handle;
use proto::job::{ExitStatus, Usage};
use proto::shim::{ENV_CWD, ENV_ROOT, ENV_SOCK};
use rustix::process::{Pid, Signal};
use std::future::poll_fn;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Name of the shim socket inside the scratch directory.
pub const SOCK_NAME: &str = ".roost.sock";
/// `PATH` of a job whose environment does not set one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long processes of the job may keep placeholders open after its main
/// process exited before the process group is killed.
const GRACE: Duration = Duration::from_secs(2);
/// How long after that kill placeholders may stay open (held by a process
/// that left the group) before the relay closes them itself.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Everything needed to start one job on this host.
#[derive(Debug, Clone)]
pub struct JobLaunch {
    /// Path of the executable on this host.
    pub program: PathBuf,
    /// The job's arguments, `argv[0]` included.
    pub argv: Vec<String>,
    /// The job's environment (`ROOST_*`, `LD_PRELOAD` and a default `PATH`
    /// are added by [`run_job`]).
    pub env: Vec<(String, String)>,
    /// Fresh and empty; the job's real working directory. Removed by the
    /// caller after [`run_job`] returns.
    pub scratch: PathBuf,
    /// The job's initial directory on the submit host (`ROOST_ROOT`,
    /// `ROOST_CWD`).
    pub root: String,
    /// Handles for the job's stdin/stdout/stderr; `None` is `/dev/null`.
    pub stdin: Option<Handle>,
    pub stdout: Option<Handle>,
    pub stderr: Option<Handle>,
    /// `libroost_shim.so`. An empty path runs the job without a preload
    /// (only its stdin/stdout/stderr are then remote).
    pub shim: PathBuf,
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
}

/// Spawns the job, serves its shim connections, returns when the job's
/// process (and every process it left) has ended and all its data is
/// forwarded.
pub async fn run_job<B: Backend>(
    launch: JobLaunch,
    backend: B,
) -> Result<(ExitStatus, Usage), JobError> {
    let sock_path = launch.scratch.join(SOCK_NAME);
    let listener = UnixListener::bind(&sock_path).map_err(|source| JobError::Listen {
        path: sock_path.clone(),
        source,
    })?;
    let _unlink = Unlink(sock_path.clone());

    let mut relay = Relay::new(backend);
    let mut std_fd = |h: Option<Handle>, flags: i32, stream: bool, which| match h {
        Some(h) => relay
            .add(h, flags, false, stream)
            .map(Stdio::from)
            .map_err(|source| JobError::Placeholder { which, source }),
        None => Ok(Stdio::null()),
    };
    let stdin = std_fd(launch.stdin, libc::O_RDONLY, true, "stdin")?;
    let stdout = std_fd(launch.stdout, libc::O_WRONLY, false, "stdout")?;
    let stderr = std_fd(launch.stderr, libc::O_WRONLY, false, "stderr")?;

    let mut cmd = Command::new(&launch.program);
    if let Some((argv0, args)) = launch.argv.split_first() {
        cmd.arg0(argv0).args(args);
    }
    cmd.current_dir(&launch.scratch)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .env(ENV_SOCK, &sock_path)
        .env(ENV_ROOT, &launch.root)
        .env(ENV_CWD, &launch.root)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    if !launch.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if !launch.shim.as_os_str().is_empty() {
        let mut preload = launch.shim.clone().into_os_string();
        if let Some((_, v)) = launch.env.iter().find(|(k, _)| k == "LD_PRELOAD") {
            preload.push(":");
            preload.push(v);
        }
        cmd.env("LD_PRELOAD", preload);
    }

    let started = Instant::now();
    let child = cmd.spawn().map_err(|source| JobError::Spawn {
        program: launch.program.clone(),
        source,
    })?;
    // The command holds the job's ends of the std placeholders; they must be
    // closed here so that EOF means the job let go of them.
    drop(cmd);
    let pid = i32::try_from(child.id()).expect("pids fit in i32");
    drop(child);
    let mut group = Group { pid, reaped: false };
    info!(pid, program = %launch.program.display(), "job started");

    let (tx, mut rx) = mpsc::channel(64);
    let acceptor = AbortOnDrop(tokio::spawn(relay::accept_loop(listener, tx)));
    let mut exit = AbortOnDrop(tokio::spawn(exited(pid)));

    let mut main_exited = false;
    let mut killed = false;
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
            if let Some(d) = deadline.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Ev::Deadline);
            }
            Poll::Pending
        })
        .await;
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
            }
            Ev::Shim(call) => {
                let answer = relay.handle(call.req).await;
                // The connection may be gone; its process then is too.
                let _ = call.answer.send(answer);
            }
            Ev::Io(io) => relay.on_io(io).await,
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
    }
    drop(acceptor);

    group.kill();
    let (status, ru) = group
        .reap()
        .map_err(|source| JobError::Wait { pid, source })?;
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
    Deadline,
}

/// Resolves when process `pid` (our child) has exited, without reaping it:
/// until it is reaped its pid cannot name another process or group.
async fn exited(pid: i32) -> io::Result<()> {
    let p = Pid::from_raw(pid).ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    let pidfd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK)
        .map_err(io::Error::from)?;
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
    reaped: bool,
}

impl Group {
    fn kill(&self) {
        if let Some(p) = Pid::from_raw(self.pid) {
            match rustix::process::kill_process_group(p, Signal::Kill) {
                Ok(()) => debug!(pgid = self.pid, "killed what was left of the job"),
                Err(rustix::io::Errno::SRCH) => {}
                Err(e) => warn!(pgid = self.pid, "killing the job's process group: {e}"),
            }
        }
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

/// Removes the shim socket when the job is over.
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
