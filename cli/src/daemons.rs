//! A personal pool's daemons as background processes: `roost pool up`,
//! `roost pool down` and `roost pool touch`.
//!
//! Each daemon runs in its own process group (so a Ctrl-C in the terminal
//! that started it does not reach it), with stdin from /dev/null and
//! stdout/stderr appended to `DIR/HOST/DAEMON.log`; its pid is in
//! `DIR/HOST/DAEMON.pid`. A pid file counts only while `/proc/PID/cmdline`
//! still shows that daemon of this pool, so a recycled pid is never signalled.

use crate::mm::Matchmaker;
use crate::pool::{self, PoolConfig, PoolDir};
use crate::render;
use anyhow::{Context, Result, bail};
use proto::pool::MachineAd;
use rustix::process::{Pid, Signal};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Files `roost pool up` needs next to `roost` (or in `ROOST_BIN_DIR`).
pub const NEEDED: &[&str] = &[
    "roost-matchmaker",
    "roost-schedd",
    "roost-ownerd",
    "roost-starter",
    "libroost_shim.so",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Matchmaker,
    Schedd,
    Ownerd,
}

/// One daemon of the pool: what it is and which host it plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub kind: Kind,
    pub host: String,
}

impl Daemon {
    pub fn binary(&self) -> &'static str {
        match self.kind {
            Kind::Matchmaker => "roost-matchmaker",
            Kind::Schedd => "roost-schedd",
            Kind::Ownerd => "roost-ownerd",
        }
    }
    fn stem(&self) -> &'static str {
        match self.kind {
            Kind::Matchmaker => "matchmaker",
            Kind::Schedd => "schedd",
            Kind::Ownerd => "ownerd",
        }
    }
    pub fn log(&self, pool: &PoolDir) -> PathBuf {
        pool.host_dir(&self.host)
            .join(format!("{}.log", self.stem()))
    }
    pub fn pid_file(&self, pool: &PoolDir) -> PathBuf {
        pool.host_dir(&self.host)
            .join(format!("{}.pid", self.stem()))
    }

    /// The daemon's command line after the program name (see the team
    /// contract "Daemon command lines").
    pub fn args(
        &self,
        pool: &PoolDir,
        cfg: &PoolConfig,
        opts: &UpOptions,
        bins: &Path,
    ) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--pki".into(),
            pool.pki().into(),
            "--name".into(),
            self.host.clone().into(),
        ];
        let mut push = |k: &str, v: OsString| {
            a.push(k.into());
            a.push(v);
        };
        match self.kind {
            Kind::Matchmaker => {
                push("--listen", cfg.matchmaker.addr.clone().into());
                if let Some(c) = opts.cycle_secs {
                    push("--cycle-secs", c.to_string().into());
                }
            }
            Kind::Schedd => {
                push("--dir", pool.host_dir(&self.host).into());
                push("--listen", cfg.schedd.addr.clone().into());
                push("--matchmaker", cfg.matchmaker.addr.clone().into());
                push("--matchmaker-name", cfg.matchmaker.name.clone().into());
            }
            Kind::Ownerd => {
                push("--dir", pool.host_dir(&self.host).into());
                push("--matchmaker", cfg.matchmaker.addr.clone().into());
                push("--matchmaker-name", cfg.matchmaker.name.clone().into());
                push("--activity-file", pool.activity_file(&self.host).into());
                // An owner's policy file in the host's directory wins over
                // the pool's idle time.
                let policy = pool.host_dir(&self.host).join("policy.toml");
                if policy.exists() {
                    push("--policy", policy.into());
                } else {
                    push("--idle-secs", opts.idle_secs.to_string().into());
                }
                // A personal pool shares this machine's terminals with its
                // user: only `roost pool touch` speaks for the owners.
                push("--devices", "false".into());
                push("--starter", bins.join("roost-starter").into());
                push("--shim", bins.join("libroost_shim.so").into());
                // Any free port: the ad says which (`roost pool urls`).
                push("--metrics-listen", "127.0.0.1:0".into());
            }
        }
        a
    }
}

/// The pool's daemons in start order: matchmaker, schedd, ownerds.
pub fn daemons(cfg: &PoolConfig) -> Vec<Daemon> {
    let mut v = vec![
        Daemon {
            kind: Kind::Matchmaker,
            host: cfg.matchmaker.name.clone(),
        },
        Daemon {
            kind: Kind::Schedd,
            host: cfg.schedd.name.clone(),
        },
    ];
    v.extend(cfg.exec.iter().map(|e| Daemon {
        kind: Kind::Ownerd,
        host: e.name.clone(),
    }));
    v
}

/// Where the daemons are: `ROOST_BIN_DIR`, else the directory of this `roost`.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("ROOST_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("cannot find the roost executable's path")?;
    Ok(exe
        .parent()
        .context("the roost executable has no directory")?
        .to_path_buf())
}

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCK_PATH: usize = 107;

/// Fails early if the schedd's socket path would not fit a Unix socket address.
pub fn check_sock_len(pool: &PoolDir) -> Result<()> {
    let sock = pool.schedd_sock();
    let len = sock.as_os_str().len();
    if len > MAX_SOCK_PATH {
        bail!(
            "the schedd's socket {} would be {len} bytes long, but a Unix socket path holds at \
             most {MAX_SOCK_PATH}; use a shorter --dir",
            sock.display()
        );
    }
    Ok(())
}

/// Fails, naming what is missing and how to build it, unless every file of
/// [`NEEDED`] is in `dir`.
pub fn check_bins(dir: &Path) -> Result<()> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|n| !dir.join(n).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found in {}; build them with `cargo build -p shadow -p matchmaker -p starter \
             -p syscall-shim -p cli` (and run that build's roost), or set ROOST_BIN_DIR to the \
             directory that holds them",
            missing.join(", "),
            dir.display()
        );
    }
    Ok(())
}

fn pid(raw: i32) -> Option<Pid> {
    Pid::from_raw(raw)
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the command name, which is in
    // parentheses and may itself contain ") ".
    match stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
    {
        Some(state) => !matches!(state, "Z" | "X" | "x"),
        None => false,
    }
}

/// Whether `pid` runs `d` for this pool (its binary, `--pki DIR/pki`, `--name HOST`).
fn is_our_daemon(pid: i32, pool: &PoolDir, d: &Daemon) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
    let exe_ok = argv.first().is_some_and(|a0| {
        Path::new(OsStr::from_bytes(a0)).file_name() == Some(OsStr::new(d.binary()))
    });
    let pki = pool.pki();
    let flag = |name: &str, want: &[u8]| {
        argv.windows(2)
            .any(|w| w[0] == name.as_bytes() && w[1] == want)
    };
    exe_ok && flag("--pki", pki.as_os_str().as_encoded_bytes()) && flag("--name", d.host.as_bytes())
}

/// The pid of `d` if it is running.
pub fn running(pool: &PoolDir, d: &Daemon) -> Option<i32> {
    let text = std::fs::read_to_string(d.pid_file(pool)).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    (pid > 0 && alive(pid) && is_our_daemon(pid, pool, d)).then_some(pid)
}

/// The last `n` lines of `path` from byte `from` on, indented, for error messages.
pub fn log_tail(path: &Path, from: u64, n: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        text = String::from_utf8_lossy(&buf).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return format!("  ({} is empty)", path.display());
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sets `path`'s access and modification times, creating it if needed.
pub fn set_mtime(path: &Path, t: SystemTime) -> Result<()> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
        .with_context(|| format!("cannot set the times of {}", path.display()))
}

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub hosts: Option<u32>,
    pub idle_secs: u64,
    pub cycle_secs: Option<u64>,
    pub timeout: Duration,
}

/// Daemons this process started. `roost demo` stops its pool itself and
/// reaps them with [`Started::reap`].
#[derive(Debug, Default)]
pub struct Started {
    children: Vec<Spawned>,
}

#[derive(Debug)]
struct Spawned {
    daemon: Daemon,
    child: Child,
    /// The log's length before this start: its tail from here is this run's.
    log_from: u64,
}

impl Started {
    /// Collects the exit status of every child that has ended.
    pub fn reap(&mut self) {
        self.children
            .retain_mut(|s| !matches!(s.child.try_wait(), Ok(Some(_))));
    }
}

/// `roost pool up`: makes the pool if needed, starts what is not running
/// and waits until the schedd answers and every execute host has reported.
/// Progress goes to `out`.
pub fn up(pool: &PoolDir, opts: &UpOptions, out: &mut dyn Write) -> Result<Started> {
    let bins = bin_dir()?;
    check_bins(&bins)?;
    check_sock_len(pool)?;
    let mut cfg = if pool.exists() {
        let mut cfg = pool.load()?;
        let have = cfg.exec.len() as u32;
        match opts.hosts {
            Some(n) if n > have => {
                pool::add_hosts(pool, &mut cfg, n)?;
                pool.save(&cfg)?;
                writeln!(
                    out,
                    "added execute hosts exec{}..exec{n} to {}",
                    have + 1,
                    pool.root().display()
                )?;
            }
            Some(n) if n < have => bail!(
                "the pool in {} has {have} execute hosts, not {n}; omit --hosts, or make a new \
                 pool in another directory",
                pool.root().display()
            ),
            _ => {}
        }
        // A pool made before the pool page had no web token.
        if proto::web::load_token(&pool.pki())?.is_none() {
            proto::web::make_token(&pool.pki())?;
        }
        cfg
    } else {
        let hosts = opts.hosts.unwrap_or(2);
        let cfg = pool::init(pool, hosts, false)?;
        writeln!(
            out,
            "made a new pool in {} ({hosts} execute hosts; CA and certificates in {})",
            pool.root().display(),
            pool.pki().display()
        )?;
        cfg
    };

    let all = daemons(&cfg);
    let up_already: Vec<Option<i32>> = all.iter().map(|d| running(pool, d)).collect();
    if up_already.iter().all(Option::is_none) {
        // Nothing of this pool runs: listening ports may be re-picked.
        let mut changed = false;
        for ep in [&mut cfg.matchmaker, &mut cfg.schedd] {
            if pool::addr_in_use(&ep.addr) {
                let port = pool::free_ports(1)?[0];
                writeln!(
                    out,
                    "{} is in use; {} moves to 127.0.0.1:{port}",
                    ep.addr, ep.name
                )?;
                ep.addr = format!("127.0.0.1:{port}");
                changed = true;
            }
        }
        if changed {
            pool.save(&cfg)?;
        }
    }

    let mut started = Started::default();
    for (d, already) in all.iter().zip(&up_already) {
        if let Some(pid) = already {
            writeln!(
                out,
                "{} ({}) is already running, pid {pid}",
                d.host,
                d.binary()
            )?;
            continue;
        }
        match start(pool, &cfg, opts, &bins, d) {
            Ok((child, from)) => {
                let addr = match d.kind {
                    Kind::Matchmaker => format!(" on {}", cfg.matchmaker.addr),
                    Kind::Schedd => format!(" on {}", cfg.schedd.addr),
                    Kind::Ownerd => String::new(),
                };
                writeln!(
                    out,
                    "started {} ({}){addr}, pid {}",
                    d.host,
                    d.binary(),
                    child.id()
                )?;
                started.children.push(Spawned {
                    daemon: d.clone(),
                    child,
                    log_from: from,
                });
            }
            Err(e) => {
                stop_started(&mut started);
                return Err(e);
            }
        }
    }

    match wait_ready(pool, &cfg, opts, &mut started, out) {
        Ok(machines) => {
            summary(pool, &cfg, &machines, out)?;
            Ok(started)
        }
        Err(e) => {
            stop_started(&mut started);
            Err(e.context(format!(
                "the pool in {} did not come up (the daemons this command started were stopped)",
                pool.root().display()
            )))
        }
    }
}

/// Starts one daemon; returns its child and the log's length before it ran.
fn start(
    pool: &PoolDir,
    cfg: &PoolConfig,
    opts: &UpOptions,
    bins: &Path,
    d: &Daemon,
) -> Result<(Child, u64)> {
    let dir = pool.host_dir(&d.host);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    match d.kind {
        Kind::Ownerd => {
            // A personal pool's hosts start idle: the owner was last active at the epoch.
            set_mtime(&pool.activity_file(&d.host), SystemTime::UNIX_EPOCH)?;
        }
        Kind::Schedd => {
            // Left by a schedd that was killed: nothing answers on it (checked by `running`).
            let sock = pool.schedd_sock();
            if sock.exists() {
                std::fs::remove_file(&sock)
                    .with_context(|| format!("cannot remove the stale {}", sock.display()))?;
            }
        }
        Kind::Matchmaker => {}
    }
    let log_path = d.log(pool);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let from = log.metadata().map(|m| m.len()).unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    writeln!(
        log,
        "--- roost pool up: {} starts at {} UTC ---",
        d.binary(),
        render::utc(now as i64)
    )
    .with_context(|| format!("cannot write {}", log_path.display()))?;
    let program = bins.join(d.binary());
    let mut cmd = Command::new(&program);
    cmd.args(d.args(pool, cfg, opts, bins))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("cannot duplicate the log file")?)
        .stderr(log)
        .process_group(0);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    // The log is a file: no colour escapes in it (tracing-subscriber honours NO_COLOR).
    if std::env::var_os("NO_COLOR").is_none() {
        cmd.env("NO_COLOR", "1");
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let pid_file = d.pid_file(pool);
    std::fs::write(&pid_file, format!("{}\n", child.id()))
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    Ok((child, from))
}

/// Polls until the schedd answers `Ping` and the matchmaker lists every
/// execute host; fails early, with its log, if a daemon dies.
fn wait_ready(
    pool: &PoolDir,
    cfg: &PoolConfig,
    opts: &UpOptions,
    started: &mut Started,
    out: &mut dyn Write,
) -> Result<Vec<MachineAd>> {
    let deadline = Instant::now() + opts.timeout;
    let schedd = crate::client::Schedd::at(&pool.schedd_sock(), pool.root());
    let mm = Matchmaker::new(pool, cfg)?;
    let want = cfg.exec_names();
    let mut schedd_ok = false;
    let mut seen: Vec<String> = Vec::new();
    let mut last_machines = Vec::new();
    let mut mm_err: Option<anyhow::Error> = None;
    loop {
        for Spawned {
            daemon: d,
            child,
            log_from: from,
        } in &mut started.children
        {
            if let Some(status) = child.try_wait().context("cannot check a daemon")? {
                bail!(
                    "{} ({}) exited ({status}) while the pool was starting; the end of {}:\n{}",
                    d.host,
                    d.binary(),
                    d.log(pool).display(),
                    log_tail(&d.log(pool), *from, 20)
                );
            }
        }
        if !schedd_ok && schedd.ping().is_ok() {
            schedd_ok = true;
            writeln!(
                out,
                "schedd {} answers on {}",
                cfg.schedd.name,
                pool.schedd_sock().display()
            )?;
        }
        if seen.len() < want.len() {
            match mm.machines(Duration::from_secs(2)) {
                Ok(ms) => {
                    for m in &ms {
                        let n = &m.name.0;
                        if want.contains(&n.as_str()) && !seen.contains(n) {
                            writeln!(
                                out,
                                "matchmaker {} sees {n} ({}/{})",
                                cfg.matchmaker.name, m.state, m.activity
                            )?;
                            seen.push(n.clone());
                        }
                    }
                    last_machines = ms;
                    mm_err = None;
                }
                Err(e) => mm_err = Some(e),
            }
        }
        if schedd_ok && seen.len() == want.len() {
            return Ok(last_machines);
        }
        if Instant::now() >= deadline {
            let mut why = Vec::new();
            let tail_of = |d: &Daemon| {
                let from = started
                    .children
                    .iter()
                    .find(|s| &s.daemon == d)
                    .map_or(0, |s| s.log_from);
                format!(
                    "the end of {}:\n{}",
                    d.log(pool).display(),
                    log_tail(&d.log(pool), from, 10)
                )
            };
            let all = daemons(cfg);
            if !schedd_ok {
                why.push(format!(
                    "the schedd does not answer on {}; {}",
                    pool.schedd_sock().display(),
                    tail_of(&all[1])
                ));
            }
            if let Some(e) = &mm_err {
                why.push(format!(
                    "the matchmaker does not answer: {e:#}; {}",
                    tail_of(&all[0])
                ));
            }
            for d in all
                .iter()
                .filter(|d| d.kind == Kind::Ownerd && !seen.contains(&d.host))
            {
                why.push(format!(
                    "the matchmaker has not heard from {}; {}",
                    d.host,
                    tail_of(d)
                ));
            }
            bail!(
                "not ready after {} s:\n{}",
                opts.timeout.as_secs(),
                why.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn summary(
    pool: &PoolDir,
    cfg: &PoolConfig,
    machines: &[MachineAd],
    out: &mut dyn Write,
) -> Result<()> {
    let rows: Vec<Vec<String>> = daemons(cfg)
        .iter()
        .map(|d| {
            let addr = match d.kind {
                Kind::Matchmaker => cfg.matchmaker.addr.clone(),
                Kind::Schedd => cfg.schedd.addr.clone(),
                Kind::Ownerd => "-".into(),
            };
            let pid = running(pool, d).map_or_else(|| "?".into(), |p| p.to_string());
            vec![
                d.host.clone(),
                d.binary().into(),
                pid,
                addr,
                d.log(pool).display().to_string(),
            ]
        })
        .collect();
    writeln!(
        out,
        "\npool up in {}: matchmaker {}, schedd {}, {} execute host{}",
        pool.root().display(),
        cfg.matchmaker.name,
        cfg.schedd.name,
        cfg.exec.len(),
        if cfg.exec.len() == 1 { "" } else { "s" }
    )?;
    out.write_all(
        render::table(&["HOST", "DAEMON", "PID", "ADDRESS", "LOG"], &rows, None).as_bytes(),
    )?;
    writeln!(out)?;
    out.write_all(render::machines(machines, None).as_bytes())?;
    Ok(())
}

fn signal(pid: i32, sig: Signal) {
    if let Some(p) = self::pid(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Ends whatever is left in `pid`'s process group (the daemon's own
/// children, such as starters). The group id stays ours while any member
/// lives, so this never reaches a stranger.
fn kill_group(pid: i32) {
    if let Some(p) = self::pid(pid)
        && rustix::process::test_kill_process_group(p).is_ok()
    {
        let _ = rustix::process::kill_process_group(p, Signal::Kill);
    }
}

fn stop_started(started: &mut Started) {
    for Spawned { child: c, .. } in &started.children {
        signal(c.id() as i32, Signal::Term);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline
        && started
            .children
            .iter_mut()
            .any(|s| matches!(s.child.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for Spawned { child: c, .. } in &mut started.children {
        kill_group(c.id() as i32);
        let _ = c.wait();
    }
    started.children.clear();
}

/// `roost pool down`: SIGTERM to every daemon of the pool, SIGKILL to what
/// is left after `grace`. Stopping a stopped pool is not an error.
pub fn down(pool: &PoolDir, grace: Duration, out: &mut dyn Write) -> Result<()> {
    if !pool.exists() {
        writeln!(out, "no pool in {}; nothing to stop", pool.root().display())?;
        return Ok(());
    }
    let cfg = pool.load()?;
    let mut stopping: Vec<(Daemon, i32)> = Vec::new();
    for d in daemons(&cfg).into_iter().rev() {
        match running(pool, &d) {
            Some(pid) => {
                signal(pid, Signal::Term);
                stopping.push((d, pid));
            }
            None => {
                let _ = std::fs::remove_file(d.pid_file(pool));
            }
        }
    }
    if stopping.is_empty() {
        writeln!(out, "the pool in {} is not running", pool.root().display())?;
        return Ok(());
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && stopping.iter().any(|(_, p)| alive(*p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (d, pid) in &stopping {
        if alive(*pid) {
            writeln!(
                out,
                "{} ({}, pid {pid}) did not stop within {} s; killed it",
                d.host,
                d.binary(),
                grace.as_secs()
            )?;
            signal(*pid, Signal::Kill);
        } else {
            writeln!(out, "stopped {} ({}, pid {pid})", d.host, d.binary())?;
        }
        kill_group(*pid);
        let _ = std::fs::remove_file(d.pid_file(pool));
    }
    Ok(())
}

/// `roost pool touch HOST`: the host's owner looks active from now on.
pub fn touch(pool: &PoolDir, host: &str) -> Result<()> {
    let cfg = pool.load()?;
    if !cfg.exec.iter().any(|e| e.name == host) {
        bail!(
            "{host} is not an execute host of the pool in {} (its execute hosts: {})",
            pool.root().display(),
            cfg.exec_names().join(", ")
        );
    }
    set_mtime(&pool.activity_file(host), SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Endpoint, ExecHost};

    fn cfg() -> PoolConfig {
        PoolConfig {
            matchmaker: Endpoint {
                name: "cm".into(),
                addr: "127.0.0.1:7001".into(),
            },
            schedd: Endpoint {
                name: "submit".into(),
                addr: "127.0.0.1:7002".into(),
            },
            exec: vec![ExecHost {
                name: "exec1".into(),
            }],
        }
    }

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn command_lines_follow_the_contract() {
        let pool = PoolDir::new(Path::new("/p")).unwrap();
        let opts = UpOptions {
            hosts: None,
            idle_secs: 2,
            cycle_secs: Some(1),
            timeout: Duration::from_secs(1),
        };
        let ds = daemons(&cfg());
        assert_eq!(
            ds.iter().map(Daemon::binary).collect::<Vec<_>>(),
            ["roost-matchmaker", "roost-schedd", "roost-ownerd"]
        );
        let bins = Path::new("/bin/roost");
        assert_eq!(
            strings(ds[0].args(&pool, &cfg(), &opts, bins)),
            [
                "--pki",
                "/p/pki",
                "--name",
                "cm",
                "--listen",
                "127.0.0.1:7001",
                "--cycle-secs",
                "1"
            ]
        );
        assert_eq!(
            strings(ds[1].args(&pool, &cfg(), &opts, bins)),
            [
                "--pki",
                "/p/pki",
                "--name",
                "submit",
                "--dir",
                "/p/submit",
                "--listen",
                "127.0.0.1:7002",
                "--matchmaker",
                "127.0.0.1:7001",
                "--matchmaker-name",
                "cm"
            ]
        );
        assert_eq!(
            strings(ds[2].args(&pool, &cfg(), &opts, bins)),
            [
                "--pki",
                "/p/pki",
                "--name",
                "exec1",
                "--dir",
                "/p/exec1",
                "--matchmaker",
                "127.0.0.1:7001",
                "--matchmaker-name",
                "cm",
                "--activity-file",
                "/p/exec1/activity",
                "--idle-secs",
                "2",
                "--devices",
                "false",
                "--starter",
                "/bin/roost/roost-starter",
                "--shim",
                "/bin/roost/libroost_shim.so",
                "--metrics-listen",
                "127.0.0.1:0"
            ]
        );
        assert_eq!(ds[2].log(&pool), Path::new("/p/exec1/ownerd.log"));
        assert_eq!(ds[1].pid_file(&pool), Path::new("/p/submit/schedd.pid"));
    }

    #[test]
    fn a_pool_too_deep_for_a_unix_socket_is_refused() {
        let deep = PoolDir::new(&Path::new("/").join("d".repeat(100))).unwrap();
        let e = check_sock_len(&deep).unwrap_err().to_string();
        assert!(
            e.contains("120 bytes long") && e.contains("use a shorter --dir"),
            "{e}"
        );
        check_sock_len(&PoolDir::new(Path::new("/tmp/p")).unwrap()).unwrap();
    }

    #[test]
    fn missing_binaries_are_named_with_the_fix() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("roost-schedd"), "").unwrap();
        let e = check_bins(d.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "roost-matchmaker, roost-ownerd, roost-starter, libroost_shim.so not found in"
            ),
            "{e}"
        );
        assert!(
            e.contains("cargo build -p shadow") && e.contains("ROOST_BIN_DIR"),
            "{e}"
        );
    }

    #[test]
    fn a_pid_file_counts_only_for_our_daemon() {
        let d = tempfile::tempdir().unwrap();
        let pool = PoolDir::new(d.path()).unwrap();
        let ownerd = Daemon {
            kind: Kind::Ownerd,
            host: "exec1".into(),
        };
        std::fs::create_dir_all(pool.host_dir("exec1")).unwrap();
        // A live process that is not the daemon (this test) does not count.
        std::fs::write(ownerd.pid_file(&pool), format!("{}\n", std::process::id())).unwrap();
        assert_eq!(running(&pool, &ownerd), None);
        std::fs::write(ownerd.pid_file(&pool), "garbage").unwrap();
        assert_eq!(running(&pool, &ownerd), None);
        assert!(alive(std::process::id() as i32));
    }

    #[test]
    fn zombies_are_not_alive() {
        let mut c = Command::new("/bin/true").spawn().unwrap();
        let pid = c.id() as i32;
        let t = Instant::now();
        while alive(pid) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(pid), "an exited, unreaped child counts as alive");
        c.wait().unwrap();
    }

    #[test]
    fn log_tail_shows_the_last_lines_since_start() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.log");
        std::fs::write(&p, "old\nnew1\nnew2\nnew3\n").unwrap();
        assert_eq!(log_tail(&p, 4, 2), "  | new2\n  | new3");
        assert_eq!(log_tail(&p, 21, 2), format!("  ({} is empty)", p.display()));
    }

    #[test]
    fn touch_and_idle_times() {
        let d = tempfile::tempdir().unwrap();
        let pool = PoolDir::new(d.path()).unwrap();
        std::fs::create_dir_all(pool.host_dir("exec1")).unwrap();
        pool.save(&cfg()).unwrap();
        let f = pool.activity_file("exec1");
        set_mtime(&f, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().modified().unwrap(),
            SystemTime::UNIX_EPOCH
        );
        touch(&pool, "exec1").unwrap();
        let age = std::fs::metadata(&f)
            .unwrap()
            .modified()
            .unwrap()
            .elapsed()
            .unwrap_or_default();
        assert!(age < Duration::from_secs(5), "{age:?}");
        let e = touch(&pool, "exec9").unwrap_err().to_string();
        assert!(
            e.contains("exec9 is not an execute host") && e.contains("exec1"),
            "{e}"
        );
    }

    #[test]
    fn down_of_a_pool_that_is_not_running_is_fine() {
        let d = tempfile::tempdir().unwrap();
        let pool = PoolDir::new(&d.path().join("nothing")).unwrap();
        let mut out = Vec::new();
        down(&pool, Duration::from_secs(1), &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("nothing to stop"));
        let pool = PoolDir::new(d.path()).unwrap();
        pool.save(&cfg()).unwrap();
        let mut out = Vec::new();
        down(&pool, Duration::from_secs(1), &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("is not running"));
    }
}
