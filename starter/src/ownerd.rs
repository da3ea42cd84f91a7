//! roost-ownerd: the execute host's daemon.
//!
//! It watches the owner's activity file, advertises the machine to the
//! matchmaker (every [`AD_PERIOD`] and at once on a change), and runs one
//! `roost-starter` process per claim it accepts. The owner is *active* while
//! the activity file's modification time is less than `idle` old; then the
//! machine is `Owner` and takes no claim. A job already running when the
//! owner returns keeps running (suspend and vacate are the owner policy's).
//!
//! While a starter runs, the ad names its job in `JobId` and its schedd in
//! `ClientMachine`; the matchmaker uses them to see a claim taken up and
//! released.

use proto::frame::{MAX_FRAME, read_frame_async, write_frame_async};
use proto::pool::{Ad, AdValue, FromMatchmaker, MachineAd, ToMatchmaker};
use proto::tls::{Identity, TlsError};
use proto::{ClaimId, HostName, JobId, ProtoError};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::WriteHalf;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

/// How often the ad is sent when nothing changes.
pub const AD_PERIOD: Duration = Duration::from_secs(5);
/// How often the activity file is checked (inotify makes it sooner).
pub const ACTIVITY_POLL: Duration = Duration::from_millis(200);
/// Default time a starter has to finish by itself after the schedd
/// released its claim, before it is terminated.
pub const RELEASE_GRACE: Duration = Duration::from_secs(10);
/// After SIGTERM, the starter has this long before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);
/// Ad attribute: the job a claim runs (`"12.0"`).
pub const ATTR_JOB_ID: &str = "JobId";
/// Ad attribute: the schedd whose job runs here.
pub const ATTR_CLIENT_MACHINE: &str = "ClientMachine";
/// Environment variable through which the ownerd hands a starter its claim
/// (kept off the command line, which every local user can read).
pub const ENV_CLAIM: &str = "ROOST_CLAIM";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum OwnerdError {
    #[error("cannot load the certificate of `{name}`")]
    Identity {
        name: String,
        #[source]
        source: TlsError,
    },
    #[error("cannot create {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `roost-ownerd` was told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub pki: PathBuf,
    /// This host's name (its certificate's name).
    pub name: String,
    /// State directory (`scratch/` lives here).
    pub dir: PathBuf,
    pub matchmaker: String,
    pub matchmaker_name: String,
    pub activity_file: PathBuf,
    /// The owner is active while the activity file is younger than this.
    pub idle: Duration,
    /// `roost-starter`.
    pub starter: PathBuf,
    /// `libroost_shim.so`.
    pub shim: PathBuf,
    /// After the schedd releases a claim, its starter has this long to
    /// finish before SIGTERM (and [`TERM_GRACE`] more before SIGKILL).
    pub release_grace: Duration,
}

/// Is the owner active, given the activity file's modification time?
/// A missing file means the owner never was; a time in the future counts as now.
pub fn owner_active(mtime: Option<SystemTime>, now: SystemTime, idle: Duration) -> bool {
    match mtime {
        None => false,
        Some(t) => now.duration_since(t).map(|age| age < idle).unwrap_or(true),
    }
}

/// `KeyboardIdle`: seconds since the activity file changed, or since
/// `since` (the daemon's start) when there is no file.
pub fn keyboard_idle(mtime: Option<SystemTime>, now: SystemTime, since: SystemTime) -> u64 {
    let from = mtime.unwrap_or(since);
    now.duration_since(from).map(|d| d.as_secs()).unwrap_or(0)
}

/// (State, Activity) of the machine.
pub fn machine_state(owner_active: bool, running: bool) -> (&'static str, &'static str) {
    match (owner_active, running) {
        (true, false) => ("Owner", "Idle"),
        (true, true) => ("Owner", "Busy"),
        (false, true) => ("Claimed", "Busy"),
        (false, false) => ("Unclaimed", "Idle"),
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `MemTotal` from /proc/meminfo, in MiB.
fn memory_mib() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Free space of the file system holding `dir`, in MiB (for unprivileged users).
fn disk_free_mib(dir: &Path) -> Option<i64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some((s.f_bavail.saturating_mul(s.f_frsize) >> 20) as i64)
}

/// The one-minute load average.
fn load_avg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Watches the activity file: wakes on an inotify event for it, when the
/// owner's activity runs out, and at least every `poll`. Publishes whether
/// the owner is active.
fn watch_activity(file: PathBuf, idle: Duration, poll: Duration) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(owner_active(mtime(&file), SystemTime::now(), idle));
    let poke = Arc::new(Notify::new());
    spawn_inotify(&file, poke.clone());
    tokio::spawn(async move {
        loop {
            // While active, the owner turns idle when the file is `idle` old.
            let expires = mtime(&file)
                .and_then(|t| (t + idle).duration_since(SystemTime::now()).ok())
                .map_or(poll, |left| left.min(poll) + Duration::from_millis(1));
            tokio::select! {
                _ = tokio::time::sleep(expires) => {}
                _ = poke.notified() => {}
                _ = tx.closed() => return,
            }
            let now = owner_active(mtime(&file), SystemTime::now(), idle);
            tx.send_if_modified(|v| std::mem::replace(v, now) != now);
        }
    });
    rx
}

/// A thread blocked on inotify for the activity file's directory; any event
/// naming the file pokes the watcher. Without inotify, polling remains.
fn spawn_inotify(file: &Path, poke: Arc<Notify>) {
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = name.to_os_string();
    let fd = match inotify::init(CreateFlags::CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            warn!("inotify unavailable ({e}); polling the activity file only");
            return;
        }
    };
    let flags = WatchFlags::ATTRIB
        | WatchFlags::MODIFY
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::CREATE
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE;
    if let Err(e) = inotify::add_watch(&fd, dir, flags) {
        warn!(dir = %dir.display(), "cannot watch the activity file's directory ({e}); polling only");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("activity-inotify".into())
        .spawn(move || {
            use std::os::unix::ffi::OsStrExt;
            let mut buf = [std::mem::MaybeUninit::uninit(); 4096];
            let mut r = inotify::Reader::new(&fd, &mut buf);
            loop {
                match r.next() {
                    Ok(ev) => {
                        if ev
                            .file_name()
                            .is_some_and(|n| n.to_bytes() == name.as_bytes())
                        {
                            poke.notify_one();
                        }
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        warn!("inotify read failed ({e}); polling the activity file only");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the inotify thread ({e}); polling only");
    }
}

/// The starter running the current claim.
struct Running {
    claim: ClaimId,
    job: JobId,
    schedd: HostName,
    scratch: PathBuf,
    child: Child,
    /// When to signal the starter next, and whether that is SIGKILL.
    deadline: Option<(Instant, bool)>,
}

/// The connection to the matchmaker.
struct Link {
    wr: WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    rx: mpsc::Receiver<FromMatchmaker>,
}

async fn connect(cfg: &Config, id: &Identity) -> Result<Link, String> {
    let dial = async {
        let tcp = TcpStream::connect(&cfg.matchmaker)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let sn = proto::tls::server_name(&cfg.matchmaker_name).map_err(|e| e.to_string())?;
        id.connector()
            .connect(sn, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))
    };
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, dial)
        .await
        .map_err(|_| "timed out".to_string())??;
    let (mut rd, wr) = tokio::io::split(tls);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match read_frame_async::<_, FromMatchmaker>(&mut rd, MAX_FRAME).await {
                Ok(m) => {
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
                Err(ProtoError::Closed) => {
                    info!("the matchmaker closed the connection");
                    return;
                }
                Err(e) => {
                    warn!("bad frame from the matchmaker, dropping the connection: {e}");
                    return;
                }
            }
        }
    });
    Ok(Link { wr, rx })
}

async fn dialed(
    dialing: &mut Option<tokio::task::JoinHandle<Result<Link, String>>>,
) -> Result<Link, String> {
    match dialing {
        Some(h) => h
            .await
            .unwrap_or_else(|e| Err(format!("dialling task failed: {e}"))),
        None => std::future::pending().await,
    }
}

async fn next_message(link: &mut Option<Link>) -> Option<FromMatchmaker> {
    match link {
        Some(l) => l.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What the running starter asks of the main loop.
enum StarterEvent {
    Exited(std::io::Result<ExitStatus>),
    /// Its grace period ended: signal it (`true`: with SIGKILL).
    Deadline(bool),
}

async fn starter_event(running: &mut Option<Running>) -> StarterEvent {
    let Some(r) = running else {
        return std::future::pending().await;
    };
    match r.deadline {
        Some((at, kill)) => tokio::select! {
            st = r.child.wait() => StarterEvent::Exited(st),
            _ = sleep_until(at) => StarterEvent::Deadline(kill),
        },
        None => StarterEvent::Exited(r.child.wait().await),
    }
}

fn signal(r: &Running, kill: bool) {
    let Some(pid) = r
        .child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    else {
        return;
    };
    let sig = if kill {
        rustix::process::Signal::Kill
    } else {
        rustix::process::Signal::Term
    };
    if let Err(e) = rustix::process::kill_process(pid, sig) {
        debug!(job = %r.job, "signalling the starter: {e}");
    }
}

fn remove_scratch(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {
            info!(scratch = %path.display(), "removed the scratch directory the starter left")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => error!(scratch = %path.display(), "cannot remove the scratch directory: {e}"),
    }
}

struct Daemon {
    cfg: Config,
    started: SystemTime,
    active: watch::Receiver<bool>,
    running: Option<Running>,
    /// The periodic ad; restarted whenever an ad goes out.
    tick: tokio::time::Interval,
}

impl Daemon {
    fn ad(&self) -> MachineAd {
        let active = *self.active.borrow();
        let (state, activity) = machine_state(active, self.running.is_some());
        let mut attrs = Ad::new();
        let mut put = |k: &str, v: AdValue| {
            attrs.insert(k.to_string(), v);
        };
        put("Machine", AdValue::Str(self.cfg.name.clone()));
        put("Arch", AdValue::Str("X86_64".into()));
        put("OpSys", AdValue::Str("LINUX".into()));
        put(
            "Cpus",
            AdValue::Int(std::thread::available_parallelism().map_or(1, |n| n.get() as i64)),
        );
        if let Some(m) = memory_mib() {
            put("Memory", AdValue::Int(m));
        }
        if let Some(d) = disk_free_mib(&self.cfg.dir) {
            put("Disk", AdValue::Int(d));
        }
        let idle = keyboard_idle(
            mtime(&self.cfg.activity_file),
            SystemTime::now(),
            self.started,
        );
        put(
            "KeyboardIdle",
            AdValue::Int(idle.min(i64::MAX as u64) as i64),
        );
        if let Some(l) = load_avg() {
            put("LoadAvg", AdValue::Real(l));
        }
        put("State", AdValue::Str(state.into()));
        put("Activity", AdValue::Str(activity.into()));
        if let Some(r) = &self.running {
            put(ATTR_JOB_ID, AdValue::Str(r.job.to_string()));
            put(ATTR_CLIENT_MACHINE, AdValue::Str(r.schedd.0.clone()));
        }
        MachineAd {
            name: HostName(self.cfg.name.clone()),
            state: state.into(),
            activity: activity.into(),
            attrs,
        }
    }

    /// Sends the ad; drops the link if that fails.
    async fn advertise(&mut self, link: &mut Option<Link>) {
        self.tick.reset();
        let Some(l) = link else { return };
        let ad = ToMatchmaker::Machine(self.ad());
        match tokio::time::timeout(CONNECT_TIMEOUT, write_frame_async(&mut l.wr, &ad)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!("cannot send the machine ad: {e}");
                *link = None;
            }
            Err(_) => {
                warn!("the matchmaker does not take the machine ad; reconnecting");
                *link = None;
            }
        }
    }

    /// Starts a starter for a claim. Returns whether the state changed.
    fn claim(&mut self, claim: ClaimId, job: JobId, schedd: HostName, addr: String) -> bool {
        if let Some(r) = &self.running {
            warn!(job = %job, running = %r.job, "claim refused: a job is already running here");
            return false;
        }
        if *self.active.borrow() {
            warn!(job = %job, "claim refused: the owner is active");
            return false;
        }
        if claim.0.len() < 8 || !claim.0.bytes().all(|b| b.is_ascii_hexdigit()) {
            warn!(job = %job, "claim refused: the token is not hex");
            return false;
        }
        let scratch = self
            .cfg
            .dir
            .join("scratch")
            .join(format!("{job}-{}", &claim.0[..8]));
        if scratch.exists() {
            warn!(scratch = %scratch.display(), "a stale scratch directory is in the way; removing it");
            remove_scratch(&scratch);
        }
        let mut cmd = Command::new(&self.cfg.starter);
        cmd.arg("--pki")
            .arg(&self.cfg.pki)
            .arg("--name")
            .arg(&self.cfg.name)
            .arg("--schedd-name")
            .arg(&schedd.0)
            .arg("--schedd-addr")
            .arg(&addr)
            .arg("--job")
            .arg(job.to_string())
            .arg("--scratch")
            .arg(&scratch)
            .arg("--shim")
            .arg(&self.cfg.shim)
            .env(ENV_CLAIM, &claim.0)
            .stdin(std::process::Stdio::null());
        match cmd.spawn() {
            Ok(child) => {
                info!(job = %job, schedd = %schedd, addr = %addr, claim = %claim, pid = child.id(), "starter started");
                self.running = Some(Running {
                    claim,
                    job,
                    schedd,
                    scratch,
                    child,
                    deadline: None,
                });
                true
            }
            Err(e) => {
                error!(job = %job, starter = %self.cfg.starter.display(), "cannot start the starter: {e}");
                false
            }
        }
    }

    fn release(&mut self, claim: &ClaimId) {
        let grace = self.cfg.release_grace;
        match &mut self.running {
            Some(r) if &r.claim == claim => {
                info!(job = %r.job, claim = %claim, "claim released by the schedd; the starter has {:?} to finish", grace);
                if r.deadline.is_none() {
                    r.deadline = Some((Instant::now() + grace, false));
                }
            }
            _ => debug!(claim = %claim, "release of a claim not running here"),
        }
    }

    fn starter_exited(&mut self, status: std::io::Result<ExitStatus>) {
        let Some(r) = self.running.take() else { return };
        match status {
            Ok(s) if s.success() => info!(job = %r.job, "starter finished"),
            Ok(s) => warn!(job = %r.job, "starter failed ({s})"),
            Err(e) => error!(job = %r.job, "cannot wait for the starter: {e}"),
        }
        remove_scratch(&r.scratch);
    }

    /// Terminates a running starter, waiting [`TERM_GRACE`] before SIGKILL.
    async fn stop_starter(&mut self) {
        let Some(r) = &mut self.running else { return };
        info!(job = %r.job, "stopping the starter");
        signal(r, false);
        let st = match tokio::time::timeout(TERM_GRACE, r.child.wait()).await {
            Ok(st) => st,
            Err(_) => {
                signal(r, true);
                r.child.wait().await
            }
        };
        self.starter_exited(st);
    }
}

/// Runs the ownerd until `shutdown` completes; then stops a running starter.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), OwnerdError> {
    let id = Identity::load(&cfg.pki, &cfg.name).map_err(|source| OwnerdError::Identity {
        name: cfg.name.clone(),
        source,
    })?;
    let scratch = cfg.dir.join("scratch");
    std::fs::create_dir_all(&scratch).map_err(|source| OwnerdError::StateDir {
        path: scratch.clone(),
        source,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700));
    }
    info!(
        name = %cfg.name,
        matchmaker = %cfg.matchmaker,
        activity_file = %cfg.activity_file.display(),
        idle_secs = cfg.idle.as_secs(),
        "ownerd starting"
    );
    let active = watch_activity(cfg.activity_file.clone(), cfg.idle, ACTIVITY_POLL);
    let mut tick = tokio::time::interval_at(Instant::now() + AD_PERIOD, AD_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut d = Daemon {
        cfg,
        started: SystemTime::now(),
        active,
        running: None,
        tick,
    };
    let mut link: Option<Link> = None;
    // A connection attempt runs as its own task, so that a slow dial
    // delays neither starters nor shutdown.
    let mut dialing: Option<tokio::task::JoinHandle<Result<Link, String>>> = None;
    let mut backoff = BACKOFF_MIN;
    let mut next_try = Instant::now();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = sleep_until(next_try), if link.is_none() && dialing.is_none() => {
                let (cfg, id) = (d.cfg.clone(), id.clone());
                dialing = Some(tokio::spawn(async move { connect(&cfg, &id).await }));
            }
            r = dialed(&mut dialing) => {
                dialing = None;
                match r {
                    Ok(l) => {
                        info!(matchmaker = %d.cfg.matchmaker, "connected to the matchmaker");
                        link = Some(l);
                        backoff = BACKOFF_MIN;
                        d.advertise(&mut link).await;
                    }
                    Err(e) => {
                        warn!(matchmaker = %d.cfg.matchmaker, "cannot reach the matchmaker ({e}); retrying in {}s", backoff.as_secs());
                        next_try = Instant::now() + backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            m = next_message(&mut link) => match m {
                Some(FromMatchmaker::Claim { claim, job, schedd, addr }) => {
                    if d.claim(claim, job, schedd, addr) {
                        d.advertise(&mut link).await;
                    }
                }
                Some(FromMatchmaker::Release { claim }) => d.release(&claim),
                Some(FromMatchmaker::Error { message }) => warn!("the matchmaker says: {message}"),
                Some(other) => debug!("ignored message from the matchmaker: {other:?}"),
                None => link = None,
            },
            _ = d.tick.tick() => d.advertise(&mut link).await,
            r = d.active.changed() => {
                if r.is_err() {
                    error!("the activity watcher stopped");
                    break;
                }
                let now = *d.active.borrow_and_update();
                match (&d.running, now) {
                    (Some(r), true) => info!(job = %r.job, "the owner is back while a job runs; advertising Owner"),
                    (_, true) => info!("the owner is active; no new jobs"),
                    (_, false) => info!("the owner is idle"),
                }
                d.advertise(&mut link).await;
            }
            ev = starter_event(&mut d.running) => match ev {
                StarterEvent::Exited(st) => {
                    d.starter_exited(st);
                    d.advertise(&mut link).await;
                }
                StarterEvent::Deadline(kill) => if let Some(r) = &mut d.running {
                    warn!(job = %r.job, "the starter did not finish after its claim ended; sending {}", if kill { "SIGKILL" } else { "SIGTERM" });
                    signal(r, kill);
                    r.deadline = if kill { None } else { Some((Instant::now() + TERM_GRACE, true)) };
                }
            },
        }
        if link.is_none() && next_try <= Instant::now() {
            // Lost the link just now: wait before dialling again.
            next_try = Instant::now() + backoff;
        }
    }
    info!("ownerd shutting down");
    if let Some(h) = dialing {
        h.abort();
    }
    d.stop_starter().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(900);

    #[test]
    fn activity_file_decides_whether_the_owner_is_active() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!owner_active(None, now, IDLE), "no file: never active");
        assert!(owner_active(Some(now), now, IDLE), "touched just now");
        assert!(owner_active(
            Some(now - Duration::from_secs(899)),
            now,
            IDLE
        ));
        assert!(
            !owner_active(Some(now - IDLE), now, IDLE),
            "exactly idle-secs old is idle"
        );
        assert!(!owner_active(
            Some(now - Duration::from_secs(5000)),
            now,
            IDLE
        ));
        assert!(
            owner_active(Some(now + Duration::from_secs(60)), now, IDLE),
            "future mtime counts as now"
        );
        assert!(!owner_active(
            Some(now - Duration::from_secs(2)),
            now,
            Duration::from_secs(1)
        ));
    }

    #[test]
    fn keyboard_idle_counts_from_the_file_or_from_start() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let now = start + Duration::from_secs(300);
        assert_eq!(keyboard_idle(None, now, start), 300);
        assert_eq!(
            keyboard_idle(Some(now - Duration::from_secs(42)), now, start),
            42
        );
        assert_eq!(
            keyboard_idle(Some(now + Duration::from_secs(42)), now, start),
            0
        );
    }

    #[test]
    fn state_follows_owner_and_starter() {
        assert_eq!(machine_state(false, false), ("Unclaimed", "Idle"));
        assert_eq!(machine_state(false, true), ("Claimed", "Busy"));
        assert_eq!(machine_state(true, false), ("Owner", "Idle"));
        assert_eq!(machine_state(true, true), ("Owner", "Busy"));
    }

    #[tokio::test]
    async fn touching_the_activity_file_makes_the_owner_active_within_a_second() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("activity");
        // No polling: inotify must see the touch, the expiry timer the idling.
        let mut rx = watch_activity(
            file.clone(),
            Duration::from_secs(2),
            Duration::from_secs(3600),
        );
        assert!(!*rx.borrow(), "no file yet: idle");
        let t = std::time::Instant::now();
        std::fs::write(&file, b"").unwrap();
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .expect("not seen within 1 s")
            .unwrap();
        assert!(*rx.borrow_and_update());
        assert!(t.elapsed() < Duration::from_secs(1));
        // Touched again (mtime only, as `touch` does) after one second.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(SystemTime::now()).unwrap();
        drop(f);
        let touched = std::time::Instant::now();
        // Two seconds without a touch: idle again.
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("never idle again")
            .unwrap();
        assert!(!*rx.borrow_and_update());
        let after = touched.elapsed();
        assert!(
            after >= Duration::from_millis(1900) && after < Duration::from_secs(3),
            "idle after {after:?}"
        );
    }

    /// The ownerd against a fake matchmaker, with a fake starter script.
    #[tokio::test]
    async fn advertises_follows_the_owner_and_runs_a_starter_per_claim() {
        use proto::tls::{init_ca, issue};
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let pki = d.path().join("pki");
        init_ca(&pki, "t").unwrap();
        issue(&pki, "cm", "matchmaker", &[]).unwrap();
        issue(&pki, "exec1", "ownerd", &[]).unwrap();
        let state = d.path().join("exec1");
        let record = d.path().join("starter-args");
        let fake = d.path().join("fake-starter");
        // Records its arguments and claim, leaves its scratch directory behind, fails.
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@ claim=$ROOST_CLAIM\" > {}\nwhile [ \"$1\" != --scratch ]; do shift; done\nmkdir \"$2\"\nsleep 0.5\nexit 3\n",
                record.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = Config {
            pki: pki.clone(),
            name: "exec1".into(),
            dir: state.clone(),
            matchmaker: l.local_addr().unwrap().to_string(),
            matchmaker_name: "cm".into(),
            activity_file: state.join("activity"),
            idle: Duration::from_secs(2),
            starter: fake.clone(),
            shim: "/opt/roost/libroost_shim.so".into(),
            release_grace: RELEASE_GRACE,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(run(cfg, async move {
            let _ = stop_rx.await;
        }));
        let (tcp, _) = l.accept().await.unwrap();
        let acc = Identity::load(&pki, "cm").unwrap().acceptor();
        let mut mm = acc.accept(tcp).await.unwrap();
        async fn next_ad(mm: &mut tokio_rustls::server::TlsStream<TcpStream>) -> MachineAd {
            let m =
                tokio::time::timeout(Duration::from_secs(7), read_frame_async(mm, MAX_FRAME)).await;
            match m.expect("no ad within 7 s").unwrap() {
                ToMatchmaker::Machine(ad) => ad,
                other => panic!("expected a machine ad, got {other:?}"),
            }
        }
        let ad = next_ad(&mut mm).await;
        assert_eq!(
            (ad.name.0.as_str(), ad.state.as_str()),
            ("exec1", "Unclaimed")
        );

        // The owner touches the machine: Owner at once, and claims are refused.
        std::fs::write(state.join("activity"), b"").unwrap();
        let t = std::time::Instant::now();
        assert_eq!(next_ad(&mut mm).await.state, "Owner");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "owner seen after {:?}",
            t.elapsed()
        );
        let claim = ClaimId("ab".repeat(32));
        let offer = FromMatchmaker::Claim {
            claim: claim.clone(),
            job: JobId {
                cluster: 4,
                proc: 2,
            },
            schedd: HostName("submit".into()),
            addr: "10.0.0.2:9618".into(),
        };
        write_frame_async(&mut mm, &offer).await.unwrap();
        // Two seconds later the owner is idle again; no starter ran meanwhile.
        let ad = next_ad(&mut mm).await;
        assert_eq!(ad.state, "Unclaimed");
        assert!(t.elapsed() >= Duration::from_millis(1900));
        assert!(!record.exists(), "a starter ran while the owner was active");

        write_frame_async(&mut mm, &offer).await.unwrap();
        let ad = next_ad(&mut mm).await;
        assert_eq!(
            (ad.state.as_str(), ad.activity.as_str()),
            ("Claimed", "Busy")
        );
        assert_eq!(ad.attrs[ATTR_JOB_ID], AdValue::Str("4.2".into()));
        assert_eq!(ad.attrs[ATTR_CLIENT_MACHINE], AdValue::Str("submit".into()));
        let ad = next_ad(&mut mm).await;
        assert_eq!(
            (ad.state.as_str(), ad.activity.as_str()),
            ("Unclaimed", "Idle")
        );
        assert!(!ad.attrs.contains_key(ATTR_JOB_ID));
        let scratch = state.join("scratch").join("4.2-abababab");
        assert_eq!(
            std::fs::read_to_string(&record).unwrap().trim(),
            format!(
                "--pki {} --name exec1 --schedd-name submit --schedd-addr 10.0.0.2:9618 --job 4.2 --scratch {} --shim /opt/roost/libroost_shim.so claim={}",
                pki.display(),
                scratch.display(),
                claim.0
            )
        );
        assert!(
            !scratch.exists(),
            "the scratch directory the starter left was not removed"
        );

        // The matchmaker restarts: the ownerd dials again and re-advertises.
        drop(mm);
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(5), l.accept())
            .await
            .expect("no reconnection within 5 s")
            .unwrap();
        let mut mm = acc.accept(tcp).await.unwrap();
        assert_eq!(next_ad(&mut mm).await.state, "Unclaimed");

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), daemon)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// A released claim's starter that does not finish is terminated.
    #[tokio::test]
    async fn released_claim_stops_a_starter_that_does_not_finish() {
        use proto::tls::{init_ca, issue};
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let pki = d.path().join("pki");
        init_ca(&pki, "t").unwrap();
        issue(&pki, "cm", "matchmaker", &[]).unwrap();
        issue(&pki, "exec1", "ownerd", &[]).unwrap();
        let record = d.path().join("record");
        let fake = d.path().join("fake-starter");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nsleep 30 & SP=$!\ntrap 'kill $SP; echo terminated > {}; exit 0' TERM\necho running > {}\nwait\n",
                record.display(),
                record.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = Config {
            pki: pki.clone(),
            name: "exec1".into(),
            dir: d.path().join("exec1"),
            matchmaker: l.local_addr().unwrap().to_string(),
            matchmaker_name: "cm".into(),
            activity_file: d.path().join("activity"),
            idle: Duration::from_secs(60),
            starter: fake,
            shim: "/x.so".into(),
            release_grace: Duration::from_millis(300),
        };
        let daemon = tokio::spawn(run(cfg, std::future::pending()));
        let (tcp, _) = l.accept().await.unwrap();
        let acc = Identity::load(&pki, "cm").unwrap().acceptor();
        let mut mm = acc.accept(tcp).await.unwrap();
        let state = async |mm: &mut tokio_rustls::server::TlsStream<TcpStream>| -> String {
            let m =
                tokio::time::timeout(Duration::from_secs(7), read_frame_async(mm, MAX_FRAME)).await;
            match m.expect("no ad within 7 s").unwrap() {
                ToMatchmaker::Machine(ad) => ad.state,
                other => panic!("expected a machine ad, got {other:?}"),
            }
        };
        assert_eq!(state(&mut mm).await, "Unclaimed");
        let claim = ClaimId("cd".repeat(32));
        let offer = FromMatchmaker::Claim {
            claim: claim.clone(),
            job: JobId {
                cluster: 9,
                proc: 0,
            },
            schedd: HostName("submit".into()),
            addr: "10.0.0.2:9618".into(),
        };
        write_frame_async(&mut mm, &offer).await.unwrap();
        assert_eq!(state(&mut mm).await, "Claimed");
        // Let the script install its trap.
        for _ in 0..100 {
            if record.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = std::time::Instant::now();
        write_frame_async(&mut mm, &FromMatchmaker::Release { claim })
            .await
            .unwrap();
        assert_eq!(state(&mut mm).await, "Unclaimed");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(3),
            "stopped after {took:?}"
        );
        assert_eq!(std::fs::read_to_string(&record).unwrap(), "terminated\n");
        daemon.abort();
    }

    #[tokio::test]
    async fn shutdown_is_prompt_while_the_matchmaker_hangs() {
        use proto::tls::{init_ca, issue};
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), "t").unwrap();
        issue(d.path(), "exec1", "ownerd", &[]).unwrap();
        // Takes TCP connections (backlog) but never answers the TLS hello.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = Config {
            pki: d.path().into(),
            name: "exec1".into(),
            dir: d.path().join("exec1"),
            matchmaker: l.local_addr().unwrap().to_string(),
            matchmaker_name: "cm".into(),
            activity_file: d.path().join("activity"),
            idle: IDLE,
            starter: "/nonexistent".into(),
            shim: "/nonexistent".into(),
            release_grace: RELEASE_GRACE,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(run(cfg, async move {
            let _ = stop_rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = std::time::Instant::now();
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(2), daemon)
            .await
            .expect("the ownerd did not stop while dialling")
            .unwrap()
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(1));
        drop(l);
    }

    #[test]
    fn ad_names_the_machine_and_its_resources() {
        let d = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let (_tx, active) = watch::channel(false);
        let daemon = Daemon {
            cfg: Config {
                pki: d.path().into(),
                name: "exec1".into(),
                dir: d.path().into(),
                matchmaker: "127.0.0.1:1".into(),
                matchmaker_name: "cm".into(),
                activity_file: d.path().join("activity"),
                idle: IDLE,
                starter: "/nonexistent".into(),
                shim: "/nonexistent".into(),
                release_grace: RELEASE_GRACE,
            },
            started: SystemTime::now() - Duration::from_secs(60),
            active,
            running: None,
            tick: tokio::time::interval(AD_PERIOD),
        };
        let ad = daemon.ad();
        assert_eq!(
            (ad.name.0.as_str(), ad.state.as_str(), ad.activity.as_str()),
            ("exec1", "Unclaimed", "Idle")
        );
        assert_eq!(ad.attrs["Machine"], AdValue::Str("exec1".into()));
        assert_eq!(ad.attrs["OpSys"], AdValue::Str("LINUX".into()));
        assert_eq!(ad.attrs["Arch"], AdValue::Str("X86_64".into()));
        assert_eq!(ad.attrs["State"], AdValue::Str("Unclaimed".into()));
        assert!(matches!(ad.attrs["Memory"], AdValue::Int(m) if m > 0));
        assert!(matches!(ad.attrs["Disk"], AdValue::Int(m) if m >= 0));
        assert!(matches!(ad.attrs["Cpus"], AdValue::Int(c) if c >= 1));
        assert!(matches!(ad.attrs["KeyboardIdle"], AdValue::Int(i) if (60..120).contains(&i)));
        assert!(matches!(ad.attrs["LoadAvg"], AdValue::Real(_)));
        assert!(!ad.attrs.contains_key(ATTR_JOB_ID));
    }
}
