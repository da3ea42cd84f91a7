//! roost-ownerd: the execute host's daemon.
//!
//! It watches the owner's activity (the newest access or modification time
//! of the terminals, `/dev/pts/*`, `/dev/input/*` and the activity file,
//! with inotify so a returning owner is seen at once), evaluates the
//! owner's policy ([`policies::policy::OwnerPolicy`]) through the machine's
//! states and activities ([`crate::policy_machine`]), advertises the
//! machine to the matchmaker (every [`AD_PERIOD`] and at once on a change),
//! and runs one `roost-starter` process per claim it accepts, steering it
//! over its standard input ([`crate::control`]): suspend, continue, vacate,
//! kill. A `Vacate` from the matchmaker (preemption) takes the same vacate
//! path as the owner's policy.
//!
//! While a starter runs, the ad names its job in `JobId` and its schedd in
//! `ClientMachine`; the matchmaker uses them to see a claim taken up and
//! released. Every state transition is logged.

use crate::control::Control;
use crate::policy_machine::{PolicyMachine, Step};
use policies::policy::OwnerPolicy;
use proto::frame::{MAX_FRAME, read_frame_async, write_frame_async};
use proto::pool::{FromMatchmaker, MachineAd, ToMatchmaker};
use proto::tls::{Identity, TlsError};
use proto::{ClaimId, HostName, JobId, ProtoError};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::io::WriteHalf;
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

/// How often the ad is sent when nothing changes.
pub const AD_PERIOD: Duration = Duration::from_secs(5);
/// How often the activity sources are checked (inotify makes it sooner).
pub const ACTIVITY_POLL: Duration = Duration::from_millis(200);
/// How often the policy is evaluated when nothing happens.
pub const POLICY_PERIOD: Duration = Duration::from_secs(1);
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
    /// Also watch the terminals and input devices.
    pub devices: bool,
    /// The owner's policy.
    pub policy: OwnerPolicy,
    /// `roost-starter`.
    pub starter: PathBuf,
    /// `libroost_shim.so`.
    pub shim: PathBuf,
    /// After the schedd releases a claim, its starter has this long to
    /// finish before SIGTERM (and [`TERM_GRACE`] more before SIGKILL).
    pub release_grace: Duration,
}

/// Why the owner's policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("cannot read the policy file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the owner's policy is not valid: {0}")]
    Invalid(policies::PolicyError),
}

/// Reads and parses the owner's policy file: the daemon at start-up and
/// `--check-policy` both come here, so both say the same about a bad file.
pub fn load_policy(file: &Path) -> Result<OwnerPolicy, PolicyFileError> {
    let text = std::fs::read_to_string(file).map_err(|source| PolicyFileError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    OwnerPolicy::parse(&file.display().to_string(), &text).map_err(PolicyFileError::Invalid)
}

/// What a machine's ad is made from (see [`machine_attrs`]).
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// This host's name.
    pub name: &'a str,
    /// The state directory (its file system's free space is `Disk`).
    pub dir: &'a Path,
    /// (KFlops, Mips).
    pub speed: (i64, i64),
    /// The newest owner activity, if any was ever seen.
    pub last_activity: Option<SystemTime>,
    /// What `KeyboardIdle` counts from when there was none (boot).
    pub since: SystemTime,
    /// The running job's own share of the load average.
    pub job_load: f64,
    /// The running job and its schedd.
    pub job: Option<(JobId, &'a str)>,
}

/// The machine's own attributes (the policy's and the state's are added
/// by the daemon).
pub fn machine_attrs(o: &Observed) -> policies::Ad {
    let mut ad = policies::Ad::new();
    ad.set("Machine", o.name);
    ad.set("Name", o.name);
    ad.set("MyType", "Machine");
    ad.set("Arch", "X86_64");
    ad.set("OpSys", "LINUX");
    // What of the job sandbox this kernel enforces (see `crate::sandbox`).
    let sandbox = crate::sandbox::features();
    ad.set("HasLandlock", sandbox.landlock_abi > 0);
    ad.set("LandlockAbi", i64::from(sandbox.landlock_abi));
    ad.set("HasSeccomp", sandbox.seccomp);
    ad.set(
        "Cpus",
        std::thread::available_parallelism().map_or(1, |n| n.get() as i64),
    );
    if let Some(m) = memory_mib() {
        ad.set("Memory", m);
    }
    if let Some(d) = disk_free_mib(o.dir) {
        ad.set("Disk", d);
    }
    ad.set("KFlops", o.speed.0);
    ad.set("Mips", o.speed.1);
    let idle = keyboard_idle(o.last_activity, SystemTime::now(), o.since);
    let idle = i64::try_from(idle).unwrap_or(i64::MAX);
    ad.set("KeyboardIdle", idle);
    ad.set("ConsoleIdle", idle);
    if let Some(l) = load_avg() {
        ad.set("LoadAvg", (l - o.job_load).max(0.0));
    }
    if let Some((job, schedd)) = o.job {
        ad.set(ATTR_JOB_ID, job.to_string().as_str());
        ad.set(ATTR_CLIENT_MACHINE, schedd);
    }
    ad
}

/// The desktop policy with the owner counted as away after `idle`: start
/// and continue once the keyboard was idle that long, suspend at the first
/// key press within it.
pub fn idle_policy(idle: Duration) -> OwnerPolicy {
    let n = idle.as_secs();
    let mut p = OwnerPolicy::desktop();
    let e = |t: String| {
        t.parse()
            .unwrap_or(policies::Expr::Lit(policies::Value::Error))
    };
    p.start = e(format!("KeyboardIdle >= {n}"));
    p.cont = e(format!("KeyboardIdle >= {n}"));
    p.suspend = e(format!("KeyboardIdle < {n}"));
    p
}

/// `KeyboardIdle`: seconds since the newest owner activity, or since
/// `since` (the host's boot) when there never was any.
pub fn keyboard_idle(mtime: Option<SystemTime>, now: SystemTime, since: SystemTime) -> u64 {
    let from = mtime.unwrap_or(since);
    now.duration_since(from).map(|d| d.as_secs()).unwrap_or(0)
}

/// When this host booted: what `KeyboardIdle` counts from when no
/// activity source was ever touched.
pub fn boot_time() -> SystemTime {
    let up = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .filter(|u| u.is_finite() && *u >= 0.0)
        .unwrap_or(0.0);
    SystemTime::now() - Duration::from_secs_f64(up)
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

/// The terminals and input devices whose use counts as the owner's
/// activity (those that exist).
pub fn device_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let list = |dir: &str, keep: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>| {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_str().is_some_and(keep) {
                    out.push(e.path());
                }
            }
        }
    };
    list(
        "/dev",
        &|n| {
            n.strip_prefix("tty")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        },
        &mut out,
    );
    list(
        "/dev/pts",
        &|n| n.bytes().all(|b| b.is_ascii_digit()),
        &mut out,
    );
    list("/dev/input", &|_| true, &mut out);
    out
}

/// The newest access or modification time among `files`.
pub fn newest_activity(files: &[PathBuf]) -> Option<SystemTime> {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .flat_map(|m| [m.modified().ok(), m.accessed().ok()])
        .flatten()
        .max()
}

/// Watches the owner's activity: the activity file and, with `devices`,
/// the terminals and input devices. Wakes on inotify events and at least
/// every `poll`; publishes the newest activity time whenever it changes.
pub fn watch_activity(
    file: PathBuf,
    devices: bool,
    poll: Duration,
) -> watch::Receiver<Option<SystemTime>> {
    let sources = move || {
        let mut v = vec![file.clone()];
        if devices {
            v.extend(device_files());
        }
        v
    };
    let first = sources();
    let (tx, rx) = watch::channel(newest_activity(&first));
    let poke = Arc::new(Notify::new());
    spawn_inotify(&first[0], devices, poke.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = poke.notified() => {}
                _ = tx.closed() => return,
            }
            let now = newest_activity(&sources());
            tx.send_if_modified(|v| std::mem::replace(v, now) != now);
        }
    });
    rx
}

/// A thread blocked on inotify for the activity file's directory (events
/// naming the file) and, with `devices`, `/dev/pts` and `/dev/input` (any
/// event); each pokes the watcher. Without inotify, polling remains.
fn spawn_inotify(file: &Path, devices: bool, poke: Arc<Notify>) {
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
            warn!("inotify unavailable ({e}); polling the activity sources only");
            return;
        }
    };
    let flags = WatchFlags::ATTRIB
        | WatchFlags::MODIFY
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::CREATE
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE;
    let file_wd = match inotify::add_watch(&fd, dir, flags) {
        Ok(wd) => Some(wd),
        Err(e) => {
            warn!(dir = %dir.display(), "cannot watch the activity file's directory ({e}); polling it");
            None
        }
    };
    if devices {
        for d in ["/dev/pts", "/dev/input"] {
            if Path::new(d).is_dir() {
                let _ = inotify::add_watch(&fd, d, flags | WatchFlags::ACCESS);
            }
        }
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
                        let ours = Some(ev.wd()) != file_wd
                            || ev
                                .file_name()
                                .is_some_and(|n| n.to_bytes() == name.as_bytes());
                        if ours {
                            poke.notify_one();
                        }
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        warn!("inotify read failed ({e}); polling the activity sources only");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the inotify thread ({e}); polling only");
    }
}

/// KFlops and Mips of this host, measured once with short loops.
pub fn measure_speed() -> (i64, i64) {
    use std::hint::black_box;
    use std::time::Instant;
    let budget = Duration::from_millis(40);
    let t = Instant::now();
    let (mut x, mut flops) = (1.000_001f64, 0u64);
    while t.elapsed() < budget {
        for _ in 0..10_000 {
            x = black_box(x * 1.000_000_1 + 0.000_000_1);
        }
        flops += 20_000;
    }
    let kflops = flops as f64 / t.elapsed().as_secs_f64() / 1000.0;
    let t = Instant::now();
    let (mut a, mut ops) = (1u64, 0u64);
    while t.elapsed() < budget {
        for i in 0..10_000u64 {
            a = black_box(a.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i) ^ (a >> 7));
        }
        ops += 40_000;
    }
    let mips = ops as f64 / t.elapsed().as_secs_f64() / 1e6;
    (kflops as i64, mips as i64)
}

/// CPU seconds (user + system) used so far by `root` and its descendants.
fn tree_cpu_secs(root: u32) -> f64 {
    // /proc reports times in USER_HZ, 100 on Linux.
    let tick = 100.0;
    let mut parent: Vec<(u32, u32, u64)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // Fields after the command name, which is in parentheses.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            parent.push((pid, num(1) as u32, num(11) + num(12)));
        }
    }
    let mut inside = vec![root];
    let mut total = 0u64;
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid, _) in &parent {
            if inside.contains(ppid) && !inside.contains(pid) {
                inside.push(*pid);
                grew = true;
            }
        }
    }
    for (pid, _, ticks) in &parent {
        if inside.contains(pid) {
            total += ticks;
        }
    }
    total as f64 / tick
}

/// The starter running the current claim.
struct Running {
    claim: ClaimId,
    job: JobId,
    schedd: HostName,
    scratch: PathBuf,
    child: Child,
    /// The starter's standard input: commands.
    stdin: Option<ChildStdin>,
    /// When to signal the starter next, and whether that is SIGKILL.
    deadline: Option<(Instant, bool)>,
    /// The job's CPU seconds at the last sample, and when.
    cpu: (f64, Instant),
    /// The job's recent CPU use, in CPUs (its share of the load).
    load: f64,
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
    // Claims come down this connection: only the matchmaker's role may
    // send them (a user's certificate naming `cm` may not).
    match proto::tls::client_peer(&tls) {
        Some(p) if p.role == "matchmaker" => {}
        p => {
            return Err(format!(
                "the peer is {}, not a matchmaker; refused",
                p.map_or("a certificate without a name or role".to_string(), |p| {
                    format!("`{}` with role `{}`", p.name, p.role)
                })
            ));
        }
    }
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
                    // The cause, e.g. the matchmaker's TLS alert when it
                    // refused this host's certificate after the handshake.
                    let cause = std::error::Error::source(&e)
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default();
                    warn!("bad frame from the matchmaker, dropping the connection: {e}{cause}");
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
    // A starter that was killed leaves its job's tmpfs mounted there.
    crate::sandbox::unmount_scratch(path);
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
    /// The newest owner activity.
    activity: watch::Receiver<Option<SystemTime>>,
    running: Option<Running>,
    machine: PolicyMachine,
    /// (KFlops, Mips), measured at start.
    speed: (i64, i64),
    /// The periodic ad; restarted whenever an ad goes out.
    tick: tokio::time::Interval,
}

fn unix_now() -> i64 {
    policies::expr::now()
}

impl Daemon {
    /// The machine's own attributes (the policy's and the state's are added
    /// by [`Daemon::ad`]).
    fn machine_attrs(&self) -> policies::Ad {
        machine_attrs(&Observed {
            name: &self.cfg.name,
            dir: &self.cfg.dir,
            speed: self.speed,
            last_activity: *self.activity.borrow(),
            since: self.started,
            job_load: self.running.as_ref().map_or(0.0, |r| r.load),
            job: self.running.as_ref().map(|r| (r.job, r.schedd.0.as_str())),
        })
    }

    /// What the policy sees of the running job.
    fn job_attrs(&self) -> policies::Ad {
        let mut ad = policies::Ad::new();
        if let Some(r) = &self.running {
            ad.set("MyType", "Job");
            ad.set(ATTR_JOB_ID, r.job.to_string().as_str());
            ad.set(ATTR_CLIENT_MACHINE, r.schedd.0.as_str());
        }
        ad
    }

    fn ad(&self) -> MachineAd {
        let mut ad = self.machine_attrs();
        self.cfg.policy.advertise(&mut ad);
        self.machine.annotate(&mut ad, unix_now());
        ad.remove("CurrentTime");
        let mut ad = MachineAd {
            name: HostName(self.cfg.name.clone()),
            state: self.machine.state().to_string(),
            activity: self.machine.activity().to_string(),
            attrs: ad.to_wire(),
        };
        crate::metrics::observe(&mut ad);
        ad
    }

    /// Logs the machine's transitions; returns whether there were any.
    fn log_transitions(&mut self) -> bool {
        let log = self.machine.take_log();
        for t in &log {
            info!(
                from = %format!("{}/{}", t.from.0, t.from.1),
                to = %format!("{}/{}", t.to.0, t.to.1),
                "machine state: {}", t.why
            );
        }
        !log.is_empty()
    }

    /// Samples the job's CPU use (its share of the load average).
    fn sample_load(&mut self) {
        let Some(r) = &mut self.running else { return };
        let Some(pid) = r.child.id() else { return };
        let cpu = tree_cpu_secs(pid);
        let now = Instant::now();
        let dt = now.duration_since(r.cpu.1).as_secs_f64();
        if dt >= 0.5 {
            // Smoothed about as the kernel's one-minute average.
            let rate = ((cpu - r.cpu.0) / dt).max(0.0);
            let w = (-dt / 60.0).exp();
            r.load = r.load * w + rate * (1.0 - w);
            r.cpu = (cpu, now);
        }
    }

    /// Evaluates the policy now; carries out what it decides. Returns
    /// whether the state changed.
    async fn evaluate(&mut self) -> bool {
        self.sample_load();
        let now = unix_now();
        let machine = self.machine_attrs();
        if self.running.is_none() {
            self.machine.idle(&self.cfg.policy, &machine, now);
        } else {
            let job = self.job_attrs();
            if let Some(step) = self.machine.running(&self.cfg.policy, &machine, &job, now) {
                self.log_transitions();
                self.carry_out(step).await;
                return true;
            }
        }
        self.log_transitions()
    }

    /// The matchmaker preempted a claim.
    async fn preempt(&mut self, claim: &ClaimId, reason: String) -> bool {
        match &self.running {
            Some(r) if &r.claim == claim => {
                info!(job = %r.job, claim = %claim, "preempted by the matchmaker: {reason}");
                if let Some(step) = self.machine.preempt(&reason, unix_now()) {
                    self.log_transitions();
                    self.carry_out(step).await;
                    return true;
                }
                false
            }
            _ => {
                debug!(claim = %claim, "vacate of a claim not running here");
                false
            }
        }
    }

    /// Tells the starter what the policy decided.
    async fn carry_out(&mut self, step: Step) {
        let grace = self.cfg.release_grace;
        // The policy's MaxVacateTime bounds the vacate's checkpoint.
        let max_vacate = match &step {
            Step::Vacate(_) => {
                let (machine, job) = (self.machine_attrs(), self.job_attrs());
                let policy = &self.cfg.policy;
                policy.max_vacate_secs(&policy.with_policy(&machine), &job)
            }
            _ => 0,
        };
        let Some(r) = &mut self.running else { return };
        let cmd = match step {
            Step::Suspend => Control::Suspend,
            Step::Continue => Control::Continue,
            Step::Vacate(reason) => Control::Vacate {
                reason,
                max_secs: Some(max_vacate),
            },
            Step::Kill(reason) => {
                // The starter reports and exits; if it does not, it is terminated.
                if r.deadline.is_none() {
                    r.deadline = Some((Instant::now() + grace, false));
                }
                Control::Kill { reason }
            }
        };
        info!(job = %r.job, "telling the starter: {}", cmd.to_line().trim_end());
        let sent = match &mut r.stdin {
            Some(stdin) => stdin.write_all(cmd.to_line().as_bytes()).await,
            None => Err(std::io::Error::other("no command pipe")),
        };
        if let Err(e) = sent {
            warn!(job = %r.job, "cannot command the starter ({e}); terminating it");
            r.stdin = None;
            signal(r, false);
            r.deadline = Some((Instant::now() + TERM_GRACE, true));
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
        if !self.machine.takes_claims() {
            warn!(job = %job, state = %self.machine.state(), "claim refused: the machine is not Unclaimed (START is false)");
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
        self.machine.matched(unix_now());
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
            .stdin(std::process::Stdio::piped());
        match cmd.spawn() {
            Ok(mut child) => {
                info!(job = %job, schedd = %schedd, addr = %addr, claim = %claim, pid = child.id(), "starter started");
                let stdin = child.stdin.take();
                self.running = Some(Running {
                    claim,
                    job,
                    schedd,
                    scratch,
                    child,
                    stdin,
                    deadline: None,
                    cpu: (0.0, Instant::now()),
                    load: 0.0,
                });
                self.machine.busy(unix_now());
                self.log_transitions();
                true
            }
            Err(e) => {
                error!(job = %job, starter = %self.cfg.starter.display(), "cannot start the starter: {e}");
                let machine = self.machine_attrs();
                self.machine.ended(&self.cfg.policy, &machine, unix_now());
                self.log_transitions();
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
            Ok(s) if s.code() == Some(i32::from(crate::EXIT_LEASE_EXPIRED)) => {
                crate::metrics::get().lease_expiries.inc();
                warn!(job = %r.job, "the job's lease expired with its schedd out of reach; the job was given up here")
            }
            Ok(s) => warn!(job = %r.job, "starter failed ({s})"),
            Err(e) => error!(job = %r.job, "cannot wait for the starter: {e}"),
        }
        remove_scratch(&r.scratch);
        let machine = self.machine_attrs();
        self.machine.ended(&self.cfg.policy, &machine, unix_now());
        self.log_transitions();
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
    let speed = measure_speed();
    info!(
        name = %cfg.name,
        matchmaker = %cfg.matchmaker,
        activity_file = %cfg.activity_file.display(),
        devices = cfg.devices,
        kflops = speed.0,
        mips = speed.1,
        "ownerd starting"
    );
    let activity = watch_activity(cfg.activity_file.clone(), cfg.devices, ACTIVITY_POLL);
    let mut policy_tick = tokio::time::interval(POLICY_PERIOD);
    policy_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval_at(Instant::now() + AD_PERIOD, AD_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut d = Daemon {
        cfg,
        started: boot_time(),
        activity,
        running: None,
        machine: PolicyMachine::new(unix_now()),
        speed,
        tick,
    };
    d.evaluate().await;
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
                Some(FromMatchmaker::Vacate { claim, reason }) => {
                    if d.preempt(&claim, reason).await {
                        d.advertise(&mut link).await;
                    }
                }
                Some(FromMatchmaker::Error { message }) => warn!("the matchmaker says: {message}"),
                Some(other) => debug!("ignored message from the matchmaker: {other:?}"),
                None => link = None,
            },
            _ = d.tick.tick() => d.advertise(&mut link).await,
            r = d.activity.changed() => {
                if r.is_err() {
                    error!("the activity watcher stopped");
                    break;
                }
                d.activity.borrow_and_update();
                debug!("owner activity");
                if d.evaluate().await {
                    d.advertise(&mut link).await;
                }
            }
            _ = policy_tick.tick() => {
                if d.evaluate().await {
                    d.advertise(&mut link).await;
                }
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
    use proto::pool::AdValue;

    const IDLE: Duration = Duration::from_secs(900);

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
    fn idle_secs_policy_and_speed() {
        let p = idle_policy(Duration::from_secs(2));
        assert_eq!(p.start.to_string(), "KeyboardIdle >= 2");
        assert_eq!(p.suspend.to_string(), "KeyboardIdle < 2");
        assert_eq!(p.cont.to_string(), "KeyboardIdle >= 2");
        let (kflops, mips) = measure_speed();
        assert!(kflops > 1000 && mips > 10, "{kflops} KFlops, {mips} Mips");
    }

    #[test]
    fn job_cpu_counts_the_whole_process_tree() {
        // A shell whose busy child does the work, in a group of its own.
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sh -c 'while :; do :; done' & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let before = tree_cpu_secs(child.id());
        std::thread::sleep(Duration::from_millis(700));
        let used = tree_cpu_secs(child.id()) - before;
        let group = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::Kill);
        let _ = child.wait();
        assert!(used > 0.2 && used < 1.5, "{used} CPU seconds in 0.7 s");
    }

    #[test]
    fn newest_activity_is_the_latest_of_access_and_modification() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let f = std::fs::File::options().write(true).open(&a).unwrap();
        f.set_times(
            std::fs::FileTimes::new()
                .set_accessed(t)
                .set_modified(t - Duration::from_secs(5)),
        )
        .unwrap();
        let f = std::fs::File::options().write(true).open(&b).unwrap();
        f.set_times(
            std::fs::FileTimes::new()
                .set_accessed(t - Duration::from_secs(9))
                .set_modified(t - Duration::from_secs(3)),
        )
        .unwrap();
        assert_eq!(newest_activity(&[a.clone(), b.clone()]), Some(t));
        assert_eq!(
            newest_activity(&[b, d.path().join("missing")]),
            Some(t - Duration::from_secs(3))
        );
        assert_eq!(newest_activity(&[]), None);
    }

    #[tokio::test]
    async fn touching_the_activity_file_is_seen_within_a_second() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("activity");
        // No polling: inotify must see the touches.
        let mut rx = watch_activity(file.clone(), false, Duration::from_secs(3600));
        assert_eq!(*rx.borrow(), None, "no file yet: no activity");
        let t = std::time::Instant::now();
        std::fs::write(&file, b"").unwrap();
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .expect("not seen within 1 s")
            .unwrap();
        let first = rx.borrow_and_update().expect("an activity time");
        assert!(t.elapsed() < Duration::from_secs(1));
        // Touched again (mtime only, as `touch` does) a second later.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(SystemTime::now()).unwrap();
        drop(f);
        let t = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .expect("second touch not seen within 1 s")
            .unwrap();
        assert!(rx.borrow_and_update().expect("an activity time") > first);
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    /// A server holding a user's certificate named like the matchmaker
    /// gets no ad (and could push no claim): the ownerd hangs up.
    #[tokio::test]
    async fn a_matchmaker_without_the_matchmaker_role_is_refused() {
        use proto::tls::{init_ca, issue};
        let d = tempfile::tempdir().unwrap();
        let pki = d.path().join("pki");
        init_ca(&pki, "t").unwrap();
        issue(&pki, "cm", "user", &[]).unwrap();
        issue(&pki, "exec1", "ownerd", &[]).unwrap();
        let state = d.path().join("exec1");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = Config {
            pki: pki.clone(),
            name: "exec1".into(),
            dir: state.clone(),
            matchmaker: l.local_addr().unwrap().to_string(),
            matchmaker_name: "cm".into(),
            activity_file: state.join("activity"),
            devices: false,
            policy: idle_policy(Duration::from_secs(2)),
            starter: "/bin/false".into(),
            shim: "/opt/roost/libroost_shim.so".into(),
            release_grace: RELEASE_GRACE,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(run(cfg, async move {
            let _ = stop_rx.await;
        }));
        let (tcp, _) = l.accept().await.unwrap();
        let acc = Identity::load(&pki, "cm").unwrap().acceptor();
        let mut fake = acc.accept(tcp).await.unwrap();
        let m = tokio::time::timeout(
            Duration::from_secs(7),
            read_frame_async::<_, ToMatchmaker>(&mut fake, MAX_FRAME),
        )
        .await
        .expect("the ownerd neither advertised nor hung up within 7 s");
        assert!(
            m.is_err(),
            "the ownerd advertised to a user's certificate: {m:?}"
        );
        let _ = stop_tx.send(());
        daemon.await.unwrap().unwrap();
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
            devices: false,
            policy: idle_policy(Duration::from_secs(2)),
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

    /// The owner's return and a preemption reach the starter as commands
    /// on its standard input, and the ad shows the states.
    #[tokio::test]
    async fn policy_and_preemption_steer_the_starter() {
        use proto::tls::{init_ca, issue};
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let pki = d.path().join("pki");
        init_ca(&pki, "t").unwrap();
        issue(&pki, "cm", "matchmaker", &[]).unwrap();
        issue(&pki, "exec1", "ownerd", &[]).unwrap();
        let record = d.path().join("commands");
        let fake = d.path().join("fake-starter");
        // Records each command; leaves on vacate or kill.
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nwhile read -r line; do echo \"$line\" >> {}; case \"$line\" in vacate*|kill*) exit 0;; esac; done\n",
                record.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let activity = d.path().join("activity");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = Config {
            pki: pki.clone(),
            name: "exec1".into(),
            dir: d.path().join("exec1"),
            matchmaker: l.local_addr().unwrap().to_string(),
            matchmaker_name: "cm".into(),
            activity_file: activity.clone(),
            devices: false,
            policy: idle_policy(Duration::from_secs(2)),
            starter: fake,
            shim: "/x.so".into(),
            release_grace: RELEASE_GRACE,
        };
        let daemon = tokio::spawn(run(cfg, std::future::pending()));
        let (tcp, _) = l.accept().await.unwrap();
        let acc = Identity::load(&pki, "cm").unwrap().acceptor();
        let mut mm = acc.accept(tcp).await.unwrap();
        let state = async |mm: &mut tokio_rustls::server::TlsStream<TcpStream>| -> String {
            let m =
                tokio::time::timeout(Duration::from_secs(7), read_frame_async(mm, MAX_FRAME)).await;
            match m.expect("no ad within 7 s").unwrap() {
                ToMatchmaker::Machine(ad) => format!("{}/{}", ad.state, ad.activity),
                other => panic!("expected a machine ad, got {other:?}"),
            }
        };
        assert_eq!(state(&mut mm).await, "Unclaimed/Idle");
        let claim = ClaimId("ef".repeat(32));
        let offer = FromMatchmaker::Claim {
            claim: claim.clone(),
            job: JobId {
                cluster: 5,
                proc: 0,
            },
            schedd: HostName("submit".into()),
            addr: "10.0.0.2:9618".into(),
        };
        write_frame_async(&mut mm, &offer).await.unwrap();
        assert_eq!(state(&mut mm).await, "Claimed/Busy");
        // The owner is back: suspended at once; two idle seconds later continued.
        std::fs::write(&activity, b"").unwrap();
        let t = std::time::Instant::now();
        assert_eq!(state(&mut mm).await, "Claimed/Suspended");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(state(&mut mm).await, "Claimed/Busy");
        assert!(
            t.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            t.elapsed()
        );
        // The matchmaker preempts the claim: vacated, and the starter leaves.
        write_frame_async(
            &mut mm,
            &FromMatchmaker::Vacate {
                claim,
                reason: "preempted by job 2.0 of alice".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(state(&mut mm).await, "Preempting/Vacating");
        assert_eq!(state(&mut mm).await, "Unclaimed/Idle");
        assert_eq!(
            std::fs::read_to_string(&record).unwrap(),
            // The vacate carries the policy's MaxVacateTime (default 600 s).
            "suspend\ncontinue\nvacate max_vacate_time=600 preempted by job 2.0 of alice\n"
        );
        daemon.abort();
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
            devices: false,
            policy: idle_policy(Duration::from_secs(0)),
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
            devices: false,
            policy: idle_policy(IDLE),
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
        let (_tx, activity) = watch::channel(None);
        let daemon = Daemon {
            cfg: Config {
                pki: d.path().into(),
                name: "exec1".into(),
                dir: d.path().into(),
                matchmaker: "127.0.0.1:1".into(),
                matchmaker_name: "cm".into(),
                activity_file: d.path().join("activity"),
                devices: false,
                policy: idle_policy(IDLE),
                starter: "/nonexistent".into(),
                shim: "/nonexistent".into(),
                release_grace: RELEASE_GRACE,
            },
            started: SystemTime::now() - Duration::from_secs(60),
            activity,
            running: None,
            machine: {
                let mut m = PolicyMachine::new(unix_now());
                m.idle(&idle_policy(IDLE), &policies::Ad::new(), unix_now());
                m
            },
            speed: (123_456, 789),
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
        assert!(matches!(ad.attrs["ConsoleIdle"], AdValue::Int(i) if (60..120).contains(&i)));
        assert_eq!(ad.attrs["KFlops"], AdValue::Int(123_456));
        assert_eq!(ad.attrs["Mips"], AdValue::Int(789));
        assert_eq!(ad.attrs["Activity"], AdValue::Str("Idle".into()));
        assert!(matches!(
            ad.attrs["EnteredCurrentActivity"],
            AdValue::Int(_)
        ));
        assert_eq!(ad.attrs["Requirements"], AdValue::Expr("MY.Start".into()));
        assert_eq!(
            ad.attrs["Start"],
            AdValue::Expr("KeyboardIdle >= 900".into())
        );
        assert!(!ad.attrs.contains_key("CurrentTime"));
        assert!(!ad.attrs.contains_key(ATTR_JOB_ID));
    }
}
