//! The multi-host test harness: a roost pool whose hosts are network
//! namespaces on this machine.
//!
//! `Pool::start(n)` makes a hub namespace with a bridge and one namespace per
//! host (`cm`, `submit`, `exec1..N`), each joined to the hub by a veth pair
//! and addressed `10.99.0.X/24` (every pool has its own hub, so pools run in
//! parallel). Each daemon is a real process started with `ip netns exec`.
//! [`Pool::cut_link`] pulls a host's cable (its port on the hub goes down;
//! nothing is killed) and [`Pool::restore_link`] plugs it back in.
//! Execute hosts also get a private mount namespace in which the submit
//! host's directory is hidden under an empty tmpfs, so a job can reach its
//! files only through its shadow. Dropping the pool kills every daemon and
//! deletes the namespaces; the pool directory is kept when the test failed
//! and its logs are printed.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Port of the matchmaker and of the schedd's shadow server in a pool.
pub const MATCHMAKER_PORT: u16 = 9618;
pub const SHADOW_PORT: u16 = 9619;
/// Port of an execute host's ownerd `/metrics` (HTTPS).
pub const OWNERD_METRICS_PORT: u16 = 9620;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where cargo puts the binaries of this build.
pub fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    target.join("debug")
}

/// Builds every roost program (once per test process; cargo serialises
/// concurrent builds itself).
pub fn ensure_built() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .current_dir(workspace())
                .args([
                    "build",
                    "-q",
                    "-p",
                    "cli",
                    "-p",
                    "shadow",
                    "-p",
                    "starter",
                    "-p",
                    "matchmaker",
                    "-p",
                    "syscall-shim",
                ])
                .status()
                .expect("cannot run cargo to build the roost programs");
            assert!(st.success(), "building the roost programs failed");
            bin_dir()
        })
        .clone()
}

/// Fails the test (never skips it) when a prerequisite is missing.
pub fn require(what: &str, ok: bool) {
    if !ok {
        panic!(
            "prerequisite missing: {what}{}",
            if std::env::var("CI").as_deref() == Ok("true") {
                " (CI=true: this is a failure)"
            } else {
                ""
            }
        );
    }
}

/// Checks that we can make network namespaces (root, `ip`).
pub fn require_netns() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    require("root (network namespaces)", root);
    require(
        "iproute2 `ip`",
        Command::new("ip").arg("-V").output().is_ok(),
    );
    require(
        "util-linux `unshare`",
        Command::new("unshare").arg("--version").output().is_ok(),
    );
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// One host of the pool.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: String,
}

/// An owner policy for tests: a touch of the activity file suspends the
/// job at once and vacates it a second later; a host is willing again two
/// seconds after the last touch.
pub const FAST_POLICY: &str = r#"start = "KeyboardIdle > 2"
suspend = "KeyboardIdle < 2"
continue = "KeyboardIdle > 60"
preempt = 'Activity == "Suspended" && CurrentTime - EnteredCurrentActivity >= 1'
kill = "CurrentTime - EnteredCurrentActivity > MaxVacateTime"
want_suspend = true
want_vacate = true
max_vacate_time = 120
"#;

/// A running pool.
pub struct Pool {
    pub id: String,
    pub dir: PathBuf,
    pub hosts: Vec<Host>,
    hub: String,
    bins: PathBuf,
    daemons: Mutex<BTreeMap<String, Child>>,
    /// Owner policy file per execute host.
    policies: BTreeMap<String, String>,
    /// Further submit hosts whose schedds run as real Unix users
    /// ([`Pool::start_with_submitters`]).
    pub submitters: Vec<Submitter>,
}

/// A submit host of its own user: `roost-schedd` runs there as `user`
/// (a real Unix user made for the pool), with its own certificate.
#[derive(Debug, Clone)]
pub struct Submitter {
    /// The host's name (`submit2`, `submit3`, ...), also its certificate's.
    pub host: String,
    /// The Unix user the schedd and that user's `roost` run as.
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

impl Pool {
    /// A pool with a matchmaker, a submit host and `n_exec` execute hosts,
    /// every daemon up and every machine advertised.
    pub fn start(n_exec: usize) -> Pool {
        Self::start_with_policy(n_exec, None)
    }

    /// Like [`Pool::start`], with an owner policy file for every execute host.
    pub fn start_with_policy(n_exec: usize, policy: Option<&str>) -> Pool {
        Self::start_with_policies(n_exec, |_| policy.map(str::to_string))
    }

    /// Like [`Pool::start`], with each execute host's owner policy file
    /// (or none) from `policy(host)`.
    pub fn start_with_policies(n_exec: usize, policy: impl Fn(&str) -> Option<String>) -> Pool {
        let mut pool = Self::create(n_exec).expect("setting up the pool's hosts");
        for i in 1..=n_exec {
            let h = format!("exec{i}");
            if let Some(p) = policy(&h) {
                pool.policies.insert(h, p);
            }
        }
        pool.init_pki().expect("making the pool's certificates");
        for h in pool.hosts.clone() {
            pool.start_daemon(&h.name)
                .unwrap_or_else(|e| panic!("starting {}: {e:#}", h.name));
        }
        pool.wait_ready(n_exec, Duration::from_secs(60))
            .expect("pool did not come up");
        pool
    }

    /// Like [`Pool::start`], plus one submit host per entry of `users`
    /// (`submit2`, `submit3`, ...): each has a schedd of its own running as
    /// a real Unix user made for this pool with `useradd` (named
    /// `rt<pool id><name>`, deleted with the pool), holding a certificate
    /// from `roost pool add-host NAME --role schedd`. That user's jobs are
    /// submitted with [`Pool::roost_as`] and owned by that user.
    pub fn start_with_submitters(n_exec: usize, users: &[&str]) -> Pool {
        let mut pool = Self::create(n_exec).expect("setting up the pool's hosts");
        for (k, u) in users.iter().enumerate() {
            pool.add_submitter(&format!("submit{}", k + 2), u)
                .unwrap_or_else(|e| panic!("adding a submit host for {u}: {e:#}"));
        }
        pool.init_pki().expect("making the pool's certificates");
        for sub in pool.submitters.clone() {
            pool.submitter_pki(&sub)
                .unwrap_or_else(|e| panic!("certificates of {}: {e:#}", sub.host));
        }
        for h in pool.hosts.clone() {
            pool.start_daemon(&h.name)
                .unwrap_or_else(|e| panic!("starting {}: {e:#}", h.name));
        }
        pool.wait_ready(n_exec, Duration::from_secs(60))
            .expect("pool did not come up");
        for sub in pool.submitters.clone() {
            let t0 = Instant::now();
            loop {
                let q = pool.roost_as(&sub.host, &pool.dir, &["q", "--json"]);
                if q.status.success() {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "the schedd of {} ({}) does not answer: {}\n{}",
                    sub.host,
                    sub.user,
                    String::from_utf8_lossy(&q.stderr),
                    pool.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        pool
    }

    /// A namespace for a further submit host and its Unix user.
    fn add_submitter(&mut self, host: &str, name: &str) -> Result<()> {
        require(
            "`useradd`, `userdel` and `setpriv` (a submit host of another user)",
            Command::new("useradd").arg("--help").output().is_ok()
                && Command::new("setpriv").arg("--version").output().is_ok(),
        );
        let user = format!("rt{}{name}", self.id);
        let _ = Command::new("userdel").arg(&user).output();
        run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            &user,
        ]))?;
        let id = |flag: &str| -> Result<u32> {
            let o = run(Command::new("id").args([flag, &user]))?;
            Ok(String::from_utf8_lossy(&o.stdout).trim().parse()?)
        };
        let sub = Submitter {
            host: host.to_string(),
            uid: id("-u")?,
            gid: id("-g")?,
            user,
        };
        self.submitters.push(sub);
        let i = self.hosts.len();
        let ns = format!("rt{}-{host}", self.id);
        let h = Host {
            name: host.to_string(),
            ns: ns.clone(),
            ip: format!("10.99.0.{}", i + 1),
        };
        ip(&["netns", "add", &ns])?;
        self.hosts.push(h.clone());
        let v = format!("v{i}");
        let hub = self.hub.clone();
        ip(&[
            "-n", &hub, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", &hub, "link", "set", &v, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", h.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        std::fs::create_dir_all(self.dir.join(host))?;
        Ok(())
    }

    /// The submitter's certificate (issued by `roost pool add-host`) in a
    /// pki directory of its own that its user can read; the pool's deny
    /// list is linked into it.
    fn submitter_pki(&self, sub: &Submitter) -> Result<()> {
        let out = Command::new(self.bins.join("roost"))
            .args(["pool", "add-host", &sub.host, "--role", "schedd", "--dir"])
            .arg(&self.dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "roost pool add-host: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let pki = self.dir.join("pki");
        let own = self.dir.join(&sub.host).join("pki");
        std::fs::create_dir_all(&own)?;
        for f in [
            "ca.pem".to_string(),
            format!("{}.pem", sub.host),
            format!("{}.key", sub.host),
        ] {
            std::fs::copy(pki.join(&f), own.join(&f))?;
        }
        std::os::unix::fs::symlink(pki.join("deny"), own.join("deny"))?;
        self.chown_to(sub, &self.dir.join(&sub.host))
    }

    /// Gives `path` and everything below it to the submitter's user.
    fn chown_to(&self, sub: &Submitter, path: &Path) -> Result<()> {
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", sub.uid, sub.gid))
            .arg(path))
        .map(|_| ())
    }

    /// The further submit host `host` ([`Pool::start_with_submitters`]).
    pub fn submitter(&self, host: &str) -> &Submitter {
        self.submitters
            .iter()
            .find(|s| s.host == host)
            .unwrap_or_else(|| panic!("no submit host {host} of its own user"))
    }

    /// Runs `roost ARGS` on the further submit host `host` as its user,
    /// in `cwd`, against that host's schedd.
    pub fn roost_as(&self, host: &str, cwd: &Path, args: &[&str]) -> Output {
        let sub = self.submitter(host);
        Command::new("ip")
            .args(["netns", "exec", &self.host(host).ns])
            .args(setpriv(sub))
            .arg(self.bins.join("roost"))
            .args(args)
            .current_dir(cwd)
            .env("ROOST_POOL", &self.dir)
            .env("ROOST_SCHEDD_SOCK", self.dir.join(host).join("schedd.sock"))
            .env("ROOST_MATCHMAKER", self.matchmaker_addr())
            .output()
            .expect("running roost")
    }

    /// A fresh job directory of the submitter's user on its host.
    pub fn job_dir_as(&self, host: &str, name: &str) -> PathBuf {
        let sub = self.submitter(host).clone();
        let d = self.dir.join(host).join("jobs").join(name);
        std::fs::create_dir_all(&d).unwrap();
        self.chown_to(&sub, &self.dir.join(host).join("jobs"))
            .expect("chown of the job directory");
        d
    }

    /// Writes `job.toml` into `dir` and submits it as the submitter of
    /// `host`; returns the job ids.
    pub fn submit_as(&self, host: &str, dir: &Path, job_toml: &str) -> Vec<String> {
        std::fs::write(dir.join("job.toml"), job_toml).unwrap();
        let out = self.roost_as(host, dir, &["submit", "job.toml"]);
        assert!(
            out.status.success(),
            "roost submit as {} failed: {}{}",
            self.submitter(host).user,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// `roost log JOB --json` on the further submit host `host`.
    pub fn log_as(&self, host: &str, id: &str) -> Vec<Value> {
        let out = self.roost_as(host, &self.dir, &["log", id, "--json"]);
        assert!(
            out.status.success(),
            "roost log failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}"))
            })
            .collect()
    }

    /// `roost q --json --all` on the further submit host `host`.
    pub fn queue_as(&self, host: &str) -> Vec<Value> {
        let out = self.roost_as(host, &self.dir, &["q", "--json", "--all"]);
        assert!(
            out.status.success(),
            "roost q failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("roost q --json is not JSON")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn create(n_exec: usize) -> Result<Pool> {
        require_netns();
        let bins = ensure_built();
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("roost-pool-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut names = vec!["cm".to_string(), "submit".to_string()];
        names.extend((1..=n_exec).map(|i| format!("exec{i}")));
        let hub = format!("rt{id}-hub");
        let mut pool = Pool {
            id: id.clone(),
            dir,
            hosts: vec![],
            hub: hub.clone(),
            bins,
            daemons: Mutex::new(BTreeMap::new()),
            policies: BTreeMap::new(),
            submitters: Vec::new(),
        };
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let ns = format!("rt{id}-{name}");
            let host = Host {
                name: name.clone(),
                ns: ns.clone(),
                ip: format!("10.99.0.{}", i + 1),
            };
            ip(&["netns", "add", &ns])?;
            pool.hosts.push(host.clone());
            let v = format!("v{i}");
            ip(&[
                "-n", &hub, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &v, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            std::fs::create_dir_all(pool.dir.join(name))?;
        }
        Ok(pool)
    }

    fn init_pki(&self) -> Result<()> {
        let n = self
            .hosts
            .iter()
            .filter(|h| h.name.starts_with("exec"))
            .count();
        let out = Command::new(self.bins.join("roost"))
            .args(["pool", "init", "--dir"])
            .arg(&self.dir)
            .args(["--hosts", &n.to_string()])
            .output()?;
        if !out.status.success() {
            bail!("roost pool init: {}", String::from_utf8_lossy(&out.stderr));
        }
        // Addresses as this pool's namespaces see them.
        let mut toml = String::new();
        for h in &self.hosts {
            toml.push_str(&format!("# {} {} {}\n", h.name, h.ns, h.ip));
        }
        std::fs::write(self.dir.join("hosts.txt"), toml)?;
        Ok(())
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    pub fn matchmaker_addr(&self) -> String {
        format!("{}:{MATCHMAKER_PORT}", self.host("cm").ip)
    }

    pub fn shadow_addr(&self) -> String {
        format!("{}:{SHADOW_PORT}", self.host("submit").ip)
    }

    /// The command line of the daemon that runs on `host`.
    fn daemon_cmd(&self, host: &str) -> Vec<String> {
        let pki = self.dir.join("pki").display().to_string();
        let hdir = self.dir.join(host).display().to_string();
        let b = |n: &str| self.bins.join(n).display().to_string();
        let mm = self.matchmaker_addr();
        if let Some(sub) = self.submitters.iter().find(|s| s.host == host) {
            let mut v = setpriv(sub);
            v.extend([
                b("roost-schedd"),
                "--pki".into(),
                format!("{hdir}/pki"),
                "--name".into(),
                host.into(),
                "--dir".into(),
                hdir,
                "--listen".into(),
                format!("{}:{SHADOW_PORT}", self.host(host).ip),
                "--matchmaker".into(),
                mm,
                "--matchmaker-name".into(),
                "cm".into(),
            ]);
            return v;
        }
        let mut v: Vec<String> = match host {
            "cm" => vec![
                b("roost-matchmaker"),
                "--pki".into(),
                pki,
                "--name".into(),
                "cm".into(),
                "--listen".into(),
                mm,
                "--cycle-secs".into(),
                "1".into(),
            ],
            "submit" => vec![
                b("roost-schedd"),
                "--pki".into(),
                pki,
                "--name".into(),
                "submit".into(),
                "--dir".into(),
                hdir,
                "--listen".into(),
                self.shadow_addr(),
                "--matchmaker".into(),
                mm,
                "--matchmaker-name".into(),
                "cm".into(),
            ],
            _ => vec![
                b("roost-ownerd"),
                "--pki".into(),
                pki,
                "--name".into(),
                host.into(),
                "--dir".into(),
                hdir.clone(),
                "--matchmaker".into(),
                mm,
                "--matchmaker-name".into(),
                "cm".into(),
                "--activity-file".into(),
                format!("{hdir}/activity"),
                // Only the activity file speaks for the owner: terminals on
                // this shared machine belong to nobody's test.
                "--devices".into(),
                "false".into(),
                "--metrics-listen".into(),
                format!("{}:{OWNERD_METRICS_PORT}", self.host(host).ip),
            ],
        };
        if host.starts_with("exec") && !self.policies.contains_key(host) {
            v.push("--idle-secs".into());
            v.push("1".into());
        }
        if let Some(p) = self.policies.get(host) {
            let f = self.dir.join(host).join("policy.toml");
            std::fs::write(&f, p).expect("writing the policy file");
            v.push("--policy".into());
            v.push(f.display().to_string());
        }
        if host.starts_with("exec") {
            // A private mount namespace in which the submit host's files are gone.
            let hide = self.dir.join("submit").display().to_string();
            let mut w: Vec<String> = vec![
                "unshare".into(),
                "-m".into(),
                "--propagation".into(),
                "private".into(),
                "sh".into(),
                "-c".into(),
                "mount -t tmpfs roost-hidden \"$0\" && exec \"$@\"".into(),
                hide,
            ];
            // The other submit hosts' files are gone too (in the same
            // mount namespace, one `sh` per directory).
            for sub in &self.submitters {
                w.extend([
                    "sh".to_string(),
                    "-c".into(),
                    "mount -t tmpfs roost-hidden \"$0\" && exec \"$@\"".into(),
                    self.dir.join(&sub.host).display().to_string(),
                ]);
            }
            w.append(&mut v);
            v = w;
        }
        v
    }

    /// Starts (or restarts) the daemon of `host`, logging to `DIR/HOST/daemon.log`.
    pub fn start_daemon(&self, host: &str) -> Result<()> {
        if host.starts_with("exec") {
            let act = self.dir.join(host).join("activity");
            std::fs::write(&act, b"")?;
            set_mtime_epoch(&act)?;
        }
        let h = self.host(host).clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(host).join("daemon.log"))?;
        let argv = self.daemon_cmd(host);
        let child = Command::new("ip")
            .args(["netns", "exec", &h.ns])
            .args(&argv)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {argv:?}"))?;
        self.daemons.lock().unwrap().insert(host.to_string(), child);
        Ok(())
    }

    /// Sends `sig` to the daemon of `host` and reaps it.
    pub fn kill_daemon(&self, host: &str, sig: i32) {
        let mut d = self.daemons.lock().unwrap();
        if let Some(mut c) = d.remove(host) {
            // SAFETY: kill(2) on a child pid we own; no memory is involved.
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
    }

    /// Runs `roost ARGS` on the submit host, in `cwd`.
    pub fn roost_in(&self, cwd: &Path, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.host("submit").ns])
            .arg(self.bins.join("roost"))
            .args(args)
            .current_dir(cwd)
            .env("ROOST_POOL", &self.dir)
            .env("ROOST_MATCHMAKER", self.matchmaker_addr())
            .output()
            .expect("running roost")
    }

    pub fn roost(&self, args: &[&str]) -> Output {
        self.roost_in(&self.dir, args)
    }

    /// A fresh job directory on the submit host (hidden from execute hosts).
    pub fn job_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.join("submit").join("jobs").join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Writes `job.toml` into `dir` and submits it; returns the job ids.
    pub fn submit(&self, dir: &Path, job_toml: &str) -> Vec<String> {
        std::fs::write(dir.join("job.toml"), job_toml).unwrap();
        let out = self.roost_in(dir, &["submit", "job.toml"]);
        assert!(
            out.status.success(),
            "roost submit failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// `roost wait` for the jobs; returns its exit code.
    pub fn wait(&self, ids: &[String], timeout: Duration) -> i32 {
        let mut args = vec![
            "wait".to_string(),
            "--timeout".into(),
            timeout.as_secs().to_string(),
        ];
        args.extend(ids.iter().cloned());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.roost(&a);
        out.status.code().unwrap_or(-1)
    }

    /// `roost q --json --all`.
    pub fn queue(&self) -> Vec<Value> {
        let out = self.roost(&["q", "--json", "--all"]);
        assert!(
            out.status.success(),
            "roost q failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap_or_else(|e| {
                panic!(
                    "roost q --json is not JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A job's summary from `roost q --json --all`.
    pub fn job(&self, id: &str) -> Option<Value> {
        self.queue().into_iter().find(|j| job_id(j) == id)
    }

    /// `roost log JOB --json`, one value per event.
    pub fn log(&self, id: &str) -> Vec<Value> {
        let out = self.roost(&["log", id, "--json"]);
        assert!(
            out.status.success(),
            "roost log failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}"))
            })
            .collect()
    }

    /// Waits until the schedd answers and the matchmaker lists `n_exec` machines.
    pub fn wait_ready(&self, n_exec: usize, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let q = self.roost(&["q", "--json"]);
            let st = self.roost(&["status", "--json"]);
            if q.status.success()
                && st.status.success()
                && let Ok(Value::Array(m)) = serde_json::from_slice::<Value>(&st.stdout)
                && m.len() >= n_exec
            {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!(
                    "pool {} not ready after {:?}: q: {} status: {}\n{}",
                    self.id,
                    timeout,
                    String::from_utf8_lossy(&q.stderr),
                    String::from_utf8_lossy(&st.stderr),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for h in &self.hosts {
            let p = self.dir.join(&h.name).join("daemon.log");
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            s.push_str(&format!(
                "==== {} ({})\n{}\n",
                h.name,
                p.display(),
                tail.join("\n")
            ));
        }
        s
    }

    /// The owner of `host` touches the keyboard (its activity file).
    pub fn touch(&self, host: &str) {
        let act = self.dir.join(host).join("activity");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&act)
            .expect("activity file");
        f.set_modified(std::time::SystemTime::now()).expect("touch");
    }

    /// Waits until the job's log has an event named `event` (optionally
    /// the `nth` one, counting from 1) and returns it.
    pub fn wait_event(&self, id: &str, event: &str, nth: usize, timeout: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            let found: Vec<Value> = self
                .log(id)
                .into_iter()
                .filter(|e| e["event"] == event)
                .collect();
            if found.len() >= nth.max(1) {
                return found[nth.max(1) - 1].clone();
            }
            if t0.elapsed() > timeout {
                panic!(
                    "job {id}: no {event:?} event #{nth} after {timeout:?}; log: {:?}\n{}",
                    self.log(id),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until some job of the submit host's queue runs and returns
    /// its host (and the job's id).
    pub fn running_host(&self, timeout: Duration) -> (String, String) {
        let t0 = Instant::now();
        loop {
            for j in self.queue() {
                if j["state"] == "Running"
                    && let Some(h) = j["host"].as_str()
                {
                    return (h.to_string(), job_id(&j));
                }
            }
            assert!(
                t0.elapsed() < timeout,
                "no job started within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pids of every process of `host`: those in its network namespace
    /// and all their descendants (a job's sandbox has a network namespace
    /// of its own, so its processes are found as the starter's children).
    pub fn host_pids(&self, host: &str) -> Vec<i32> {
        let mut mine: std::collections::BTreeSet<i32> = self.netns_pids(host).into_iter().collect();
        let parents: Vec<(i32, i32)> = all_pids()
            .into_iter()
            .filter_map(|p| Some((p, parent(p)?)))
            .collect();
        loop {
            let before = mine.len();
            for &(p, pp) in &parents {
                if mine.contains(&pp) {
                    mine.insert(p);
                }
            }
            if mine.len() == before {
                return mine.into_iter().collect();
            }
        }
    }

    /// Pids of the processes in `host`'s network namespace (not those of
    /// its jobs' sandboxes, see [`Pool::host_pids`]).
    pub fn netns_pids(&self, host: &str) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.host(host).ns])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Pids of the processes in `host`'s network namespace whose name
    /// (`/proc/PID/comm`) is `comm`: a starter, not the processes of its
    /// sandbox that bear its name too.
    pub fn pids_named(&self, host: &str, comm: &str) -> Vec<i32> {
        self.netns_pids(host)
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim_end() == comm)
            })
            .collect()
    }

    /// The hub's end of `host`'s veth pair (`v<index>`).
    fn hub_port(&self, host: &str) -> String {
        let i = self
            .hosts
            .iter()
            .position(|h| h.name == host)
            .unwrap_or_else(|| panic!("no host {host}"));
        format!("v{i}")
    }

    /// Cuts `host` off the network, both ways and from every peer (a
    /// pulled cable): the hub's end of its veth pair goes down, so the
    /// host's `eth0` loses its carrier. Nothing is killed and no packet is
    /// answered: what either side sends is dropped (no RST, no ICMP from
    /// the other side), a new `connect` times out, and an established TCP
    /// connection just retransmits, so it survives a cut that ends before
    /// TCP gives up (minutes). Undone by [`Pool::restore_link`].
    pub fn cut_link(&self, host: &str) {
        let port = self.hub_port(host);
        ip(&["-n", &self.hub, "link", "set", &port, "down"])
            .unwrap_or_else(|e| panic!("cutting {host} off: {e:#}"));
    }

    /// Puts `host` back on the network after [`Pool::cut_link`].
    pub fn restore_link(&self, host: &str) {
        let port = self.hub_port(host);
        ip(&["-n", &self.hub, "link", "set", &port, "up"])
            .unwrap_or_else(|e| panic!("restoring {host}'s link: {e:#}"));
    }

    /// Destroys an execute host outright: every process in its namespace
    /// is killed and the namespace deleted (a machine that lost power).
    pub fn destroy_host(&self, host: &str) {
        let ns = self.host(host).ns.clone();
        {
            let mut d = self.daemons.lock().unwrap();
            if let Some(mut c) = d.remove(host) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for _ in 0..20 {
            let o = Command::new("ip")
                .args(["netns", "pids", &ns])
                .output()
                .expect("ip netns pids");
            let pids: Vec<i32> = String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) with a pid; no memory is involved.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }

    /// Runs `f` on a thread that has joined `host`'s network namespace:
    /// the sockets it (and every thread it starts) opens are that host's,
    /// so a client in the test reaches the pool's addresses. A panic in `f`
    /// is the caller's.
    pub fn in_netns<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsRawFd;
        let path = Path::new("/run/netns").join(&self.host(host).ns);
        std::thread::scope(|s| {
            s.spawn(move || {
                let ns = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
                // SAFETY: setns(2) with a namespace fd that stays open for the
                // call; it moves only this thread into the network namespace.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    r,
                    0,
                    "setns into {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Runs a command inside a host's network namespace.
    pub fn exec_in(&self, host: &str, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.host(host).ns])
            .args(cmd)
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let hosts: Vec<String> = self
            .daemons
            .lock()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        for h in hosts {
            self.kill_daemon(&h, libc::SIGKILL);
        }
        if failed {
            eprintln!(
                "pool {} kept at {}\n{}",
                self.id,
                self.dir.display(),
                self.logs()
            );
        }
        // Processes a daemon left behind in a namespace (starters, jobs).
        for h in &self.hosts {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", &h.ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(p) = pid.parse::<i32>() {
                        // SAFETY: kill(2) with a pid; no memory is involved.
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                }
            }
            if Path::new("/run/netns").join(&h.ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .status();
        for sub in &self.submitters {
            let _ = Command::new("userdel").arg(&sub.user).output();
        }
        if !failed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Every pid on this machine.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("reading /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The parent of `pid` (from `/proc/PID/stat`), if it still exists.
fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

/// Pids of the processes, anywhere on this machine, of the jobs whose
/// initial directory on the submit host is `initialdir` (their
/// environment's `ROOST_ROOT`): a job's processes wherever it runs, also
/// those a dead starter orphaned.
pub fn job_pids(initialdir: &Path) -> Vec<i32> {
    let want = format!("ROOST_ROOT={}", initialdir.display());
    all_pids()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == want.as_bytes()))
        })
        .collect()
}

/// `setpriv` arguments that run the rest of a command line as `sub`'s user.
fn setpriv(sub: &Submitter) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={}", sub.uid),
        format!("--regid={}", sub.gid),
        "--clear-groups".into(),
        "--".into(),
    ]
}

/// `"12.0"` from a `JobSummary` in JSON (`{"id":{"cluster":12,"proc":0}}`).
pub fn job_id(j: &Value) -> String {
    format!("{}.{}", j["id"]["cluster"], j["id"]["proc"])
}

/// Sets a file's mtime and atime to the epoch (an owner idle for ages).
pub fn set_mtime_epoch(p: &Path) -> Result<()> {
    let st = Command::new("touch").arg("-d").arg("@0").arg(p).status()?;
    if !st.success() {
        bail!("touch -d @0 {} failed", p.display());
    }
    Ok(())
}

/// Compiles a test job from `tests/jobs/` once per test process, into a
/// directory shared by the tests; returns the binary's path.
pub fn build_job(source: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap();
    if let Some(p) = built.get(source) {
        return p.clone();
    }
    let src = workspace().join("tests/jobs").join(source);
    let out_dir = std::env::temp_dir().join(format!("roost-jobs-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let stem = Path::new(source)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let out = out_dir.join(&stem);
    let status = if source.ends_with(".c") {
        require(
            "a C compiler `cc`",
            Command::new("cc").arg("--version").output().is_ok(),
        );
        Command::new("cc")
            .args(["-O1", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
    } else if source.ends_with(".rs") {
        Command::new("rustc")
            .args(["-O", "--edition", "2021", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
    } else {
        panic!("don't know how to build {source}");
    }
    .expect("running the compiler");
    assert!(status.success(), "building test job {source} failed");
    built.insert(source.to_string(), out.clone());
    out
}

/// Runs a program locally (no roost) in `dir` and returns its stdout.
pub fn run_local(dir: &Path, argv: &[&str], stdin: Option<&Path>) -> Output {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]).current_dir(dir);
    if let Some(i) = stdin {
        c.stdin(std::fs::File::open(i).unwrap());
    }
    c.output()
        .unwrap_or_else(|e| panic!("running {argv:?} locally: {e}"))
}

/// Copies every regular file of `from` into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};

    /// A TCP connect from the thread's namespace (see [`Pool::in_netns`]).
    fn dial(pool: &Pool, from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
        pool.in_netns(from, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2))
        })
    }

    fn listen(pool: &Pool, host: &str, port: u16) -> TcpListener {
        let ip = pool.host(host).ip.clone();
        pool.in_netns(host, || TcpListener::bind((ip.as_str(), port)))
            .unwrap_or_else(|e| panic!("listening on {host}:{port}: {e}"))
    }

    fn addr(pool: &Pool, host: &str, port: u16) -> SocketAddr {
        format!("{}:{port}", pool.host(host).ip).parse().unwrap()
    }

    /// Reads exactly `n` bytes, with a generous timeout (TCP retransmits
    /// after a cut with exponential back-off).
    fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = vec![0; n];
        s.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("reading {n} bytes after the cut: {e}"));
        buf
    }

    #[test]
    fn a_cut_link_drops_everything_and_a_restored_one_carries_on() {
        let pool = Pool::create(1).expect("setting up the pool's hosts");
        let on_submit = listen(&pool, "submit", 7001);
        let on_cm = listen(&pool, "cm", 7002);
        let on_exec = listen(&pool, "exec1", 7003);

        // A connection from the execute host that lives through the cut.
        let mut old =
            dial(&pool, "exec1", addr(&pool, "submit", 7001)).expect("dial before the cut");
        let (mut old_peer, _) = on_submit.accept().unwrap();
        old.write_all(b"before;").unwrap();
        assert_eq!(read_n(&mut old_peer, 7), b"before;");

        pool.cut_link("exec1");
        for (from, to) in [
            ("exec1", addr(&pool, "submit", 7001)),
            ("exec1", addr(&pool, "cm", 7002)),
            ("submit", addr(&pool, "exec1", 7003)),
            ("cm", addr(&pool, "exec1", 7003)),
        ] {
            let r = dial(&pool, from, to);
            assert!(r.is_err(), "{from} reached {to} while exec1 was cut off");
        }
        // Both ends write into the cut; nothing arrives yet, nothing resets.
        old.write_all(b"during;").unwrap();
        old_peer.write_all(b"back;").unwrap();
        old_peer
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut b = [0u8; 16];
        let r = old_peer.read(&mut b);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
            "a read across the cut returned {r:?}"
        );

        pool.restore_link("exec1");
        assert_eq!(read_n(&mut old_peer, 7), b"during;");
        assert_eq!(read_n(&mut old, 5), b"back;");
        old.write_all(b"after;").unwrap();
        assert_eq!(read_n(&mut old_peer, 6), b"after;");
        for (from, to, l) in [
            ("exec1", addr(&pool, "submit", 7001), &on_submit),
            ("exec1", addr(&pool, "cm", 7002), &on_cm),
            ("submit", addr(&pool, "exec1", 7003), &on_exec),
        ] {
            let mut s = dial(&pool, from, to)
                .unwrap_or_else(|e| panic!("{from} cannot reach {to} after the restore: {e}"));
            let (mut p, _) = l.accept().unwrap();
            s.write_all(b"x").unwrap();
            assert_eq!(read_n(&mut p, 1), b"x");
        }
    }
}
