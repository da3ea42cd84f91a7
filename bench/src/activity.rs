//! `--activity`: how fast a returning owner gets their machine back.
//!
//! A personal pool with one execute host whose owner policy suspends the
//! job while the owner was active in the last second and continues it
//! after a second of quiet. A job (`/bin/sleep`, under the shim) runs
//! there; each round the bench touches the host's activity file (what
//! `roost pool touch` and a key press do) and measures the time until
//! the job's process is stopped (state `T` in `/proc/PID/stat`), then waits
//! for the policy to continue it. Median of `rounds` (default 20).
//!
//! Baselines from the same run, measured the same way (the same poller):
//! a minimal watcher — one thread blocked in `read` on an inotify watch of
//! a file, sending `SIGSTOP` to a child `sleep` when the file's attributes
//! change — and a bare `kill(SIGSTOP)` until the stop shows in `/proc`.
//! The difference is what roost adds: the ownerd's event loop, the policy
//! evaluation, the control message to the starter and its `SIGSTOP` to the
//! job's process group.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The owner policy of the bench's execute host.
const POLICY: &str = r#"start = "KeyboardIdle >= 1"
suspend = "KeyboardIdle < 1"
continue = "KeyboardIdle >= 1"
preempt = "false"
kill = "false"
want_suspend = true
want_vacate = false
max_vacate_time = 600
"#;

/// `sleep`'s argument in the baseline and in the job; unique, so the job's
/// process can be found in `/proc`.
const SLEEP_ARG: &str = "86398.25";
const JOB_SLEEP_ARG: &str = "86398.75";

/// Time between two reads of `/proc/PID/stat` while waiting for a stop.
const POLL: Duration = Duration::from_micros(50);

/// A process's state letter (`R`, `S`, `T`, ...) from `/proc/PID/stat`.
fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Polls until `pid` is (`stopped`) or is not (`!stopped`) in state `T`;
/// the time from `t0`.
fn wait_state(pid: u32, stopped: bool, t0: Instant, limit: Duration) -> Result<Duration> {
    loop {
        let st = proc_state(pid).with_context(|| format!("process {pid} is gone"))?;
        if (st == 'T') == stopped {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            bail!(
                "process {pid} is still {st:?} after {limit:?} (waiting for it to be {})",
                if stopped { "stopped" } else { "running" }
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The pid of a `sleep ARG` process (`argv[0]` is whatever the starter
/// gave it, so only its last part is compared).
fn pid_of_sleep(arg: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let argv: Vec<&[u8]> = cmd.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
        (argv.len() == 2 && argv[0].ends_with(b"sleep") && argv[1] == arg.as_bytes()).then_some(pid)
    })
}

fn touch(path: &Path) -> Result<Instant> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let t0 = Instant::now();
    f.set_modified(std::time::SystemTime::now())
        .with_context(|| format!("touching {}", path.display()))?;
    Ok(t0)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The baselines: (inotify watcher → SIGSTOP, kill → stopped), medians.
fn baselines(dir: &Path, rounds: usize) -> Result<(Duration, Duration)> {
    use rustix::fs::inotify;
    let file = dir.join("baseline-activity");
    std::fs::write(&file, b"")?;
    let mut child = Command::new("sleep")
        .arg(SLEEP_ARG)
        .spawn()
        .context("starting sleep")?;
    let pid = child.id();
    let r = (|| -> Result<(Duration, Duration)> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC).context("inotify_init")?;
        inotify::add_watch(
            &fd,
            &file,
            inotify::WatchFlags::ATTRIB | inotify::WatchFlags::MODIFY,
        )
        .context("inotify_add_watch")?;
        let target = rustix::process::Pid::from_raw(pid as i32).context("child pid")?;
        // The minimal watcher: wake on the event, stop the process.
        let watcher = std::thread::spawn(move || -> Result<()> {
            let mut buf = [0u8; 4096];
            for _ in 0..rounds {
                rustix::io::read(&fd, &mut buf).context("reading inotify events")?;
                rustix::process::kill_process(target, rustix::process::Signal::Stop)
                    .context("SIGSTOP")?;
            }
            Ok(())
        });
        let mut notify = Vec::with_capacity(rounds);
        let mut bare = Vec::with_capacity(rounds);
        let limit = Duration::from_secs(5);
        for _ in 0..rounds {
            std::thread::sleep(Duration::from_millis(20));
            let t0 = touch(&file)?;
            notify.push(wait_state(pid, true, t0, limit)?);
            rustix::process::kill_process(target, rustix::process::Signal::Cont)?;
            wait_state(pid, false, Instant::now(), limit)?;
        }
        watcher
            .join()
            .map_err(|_| anyhow::anyhow!("the watcher thread panicked"))??;
        for _ in 0..rounds {
            std::thread::sleep(Duration::from_millis(5));
            let t0 = Instant::now();
            rustix::process::kill_process(target, rustix::process::Signal::Stop)?;
            bare.push(wait_state(pid, true, t0, limit)?);
            rustix::process::kill_process(target, rustix::process::Signal::Cont)?;
            wait_state(pid, false, Instant::now(), limit)?;
        }
        Ok((median(&mut notify), median(&mut bare)))
    })();
    let _ = child.kill();
    let _ = child.wait();
    r
}

/// roost in a personal pool: touch → the job's process stopped, each round.
fn pool_rounds(bin: &Path, tmp: &Path, rounds: usize) -> Result<Vec<Duration>> {
    let pool = tmp.join("pool");
    let pool_s = pool.to_str().context("temp dir is not UTF-8")?;
    let job = tmp.join("job");
    std::fs::create_dir_all(&job)?;
    crate::roost(
        bin,
        &pool,
        tmp,
        &["pool", "init", "--dir", pool_s, "--hosts", "1"],
    )?;
    std::fs::write(pool.join("exec1").join("policy.toml"), POLICY)?;
    eprintln!("starting a personal pool (one execute host, the bench's owner policy)…");
    crate::roost(
        bin,
        &pool,
        tmp,
        &["pool", "up", "--dir", pool_s, "--hosts", "1"],
    )?;
    let result = (|| -> Result<Vec<Duration>> {
        std::fs::write(
            job.join("job.toml"),
            format!("executable = \"/bin/sleep\"\narguments = [\"{JOB_SLEEP_ARG}\"]\n"),
        )?;
        let out = crate::roost(bin, &pool, &job, &["submit", "job.toml"])?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let t = Instant::now();
        let pid = loop {
            if let Some(p) = pid_of_sleep(JOB_SLEEP_ARG) {
                break p;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("job {id} did not start within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        eprintln!(
            "job {id} runs as pid {pid}; {rounds} rounds of touch → stopped → idle → continued…"
        );
        let activity = pool.join("exec1").join("activity");
        let mut took = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let t0 = touch(&activity)?;
            let d = wait_state(pid, true, t0, Duration::from_secs(10))
                .with_context(|| format!("round {round}: the job was not suspended"))?;
            took.push(d);
            // The policy continues it after a second of quiet.
            wait_state(pid, false, Instant::now(), Duration::from_secs(10))
                .with_context(|| format!("round {round}: the job was not continued"))?;
            // Let the ownerd settle in Claimed/Busy before the next touch.
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = crate::roost(bin, &pool, &job, &["rm", &id]);
        Ok(took)
    })();
    let _ = crate::roost(bin, &pool, tmp, &["pool", "down", "--dir", pool_s]);
    result
}

/// `--activity`: the figure and its baselines.
pub fn run(bin: &Path, rounds: usize) -> Result<()> {
    let tmp: PathBuf =
        std::env::temp_dir().join(format!("roost-bench-activity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<()> {
        eprintln!("measuring the baselines (inotify watcher → SIGSTOP, kill → stopped)…");
        let (notify, bare) = baselines(&tmp, rounds)?;
        let mut took = pool_rounds(bin, &tmp, rounds)?;
        let (min, max) = (
            *took.iter().min().unwrap_or(&Duration::ZERO),
            *took.iter().max().unwrap_or(&Duration::ZERO),
        );
        let roost = median(&mut took);
        let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
        println!(
            "owner activity → job stopped: medians of {rounds} rounds (state polled every {} µs)",
            POLL.as_micros()
        );
        println!("{:<46} {:>12} {:>9}", "figure", "median", "ratio");
        println!(
            "{:<46} {:>12} {:>8.1}x",
            "roost: activity file touched → job stopped",
            us(roost),
            roost.as_secs_f64() / notify.as_secs_f64()
        );
        println!("{:<46} {:>12}", "  fastest round", us(min));
        println!("{:<46} {:>12}", "  slowest round", us(max));
        println!(
            "{:<46} {:>12} {:>8.1}x",
            "baseline: inotify watcher → SIGSTOP → stopped",
            us(notify),
            1.0
        );
        println!(
            "{:<46} {:>12} {:>8.1}x",
            "baseline: kill(SIGSTOP) → stopped",
            us(bare),
            bare.as_secs_f64() / notify.as_secs_f64()
        );
        println!(
            "goal: well under a second (the issue: a returning owner noticed within a second)"
        );
        Ok(())
    })();
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&tmp);
    } else {
        eprintln!("kept {} for inspection", tmp.display());
    }
    result
}
