//! `roost demo`: a personal pool, one job that runs on an execute host while
//! every file it touches stays on the submit host, and a check of its output.
//!
//! Each part of the story is one method of [`Demo`]; [`run`] calls them in
//! order, so a new part (a checkpoint, a migration) is one more method and
//! one more line there.

use crate::args::JobSel;
use crate::client::Schedd;
use crate::daemons::{self, Started, UpOptions};
use crate::jobs::{self, SubmitOutcome};
use crate::pool::PoolDir;
use crate::render;
use anyhow::{Context, Result, bail, ensure};
use proto::ids::JobId;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What the job reads: one parameter per line.
pub fn input() -> String {
    (1..=36).map(|i| format!("{}\n", i * 7919 % 1000)).collect()
}

/// The job: a parameter sweep in plain Python. One process, so it can be
/// checkpointed; slow enough (about 6 s) for its owner to come back.
pub const SCRIPT: &str = r#"# sweep.py: reads params.txt and appends one result per parameter to
# results.txt, as it goes, on the submit host.
import hashlib, time

acc = 0
with open("params.txt") as params, open("results.txt", "a") as out:
    for n, line in enumerate(params):
        p = int(line)
        for k in range(30000):
            acc = (acc * 31 + p * k + n) % 1000000007
        digest = hashlib.sha256(str(acc).encode()).hexdigest()[:16]
        out.write(f"{n:3d} p={p:4d} acc={acc:10d} {digest}\n")
        out.flush()
        time.sleep(0.15)
print("sweep done:", n + 1, "parameters, final", acc)
"#;

pub const JOB_FILE: &str = r#"# The demo's job: a Python parameter sweep on some execute host.
executable = "/usr/bin/python3"
arguments = ["sweep.py"]
output = "sweep.out"
error = "sweep.err"
"#;

/// The execute hosts' owner policy: a touch suspends the job at once and
/// vacates it (checkpoint, then leave) a second later; a host takes jobs
/// again two seconds after its owner's last touch.
pub const POLICY: &str = r#"start = "KeyboardIdle > 2"
suspend = "KeyboardIdle < 2"
continue = "KeyboardIdle > 60"
preempt = 'Activity == "Suspended" && CurrentTime - EnteredCurrentActivity >= 1'
kill = "CurrentTime - EnteredCurrentActivity > MaxVacateTime"
want_suspend = true
want_vacate = true
max_vacate_time = 120
"#;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub dir: Option<PathBuf>,
    pub hosts: u32,
    pub keep: bool,
    /// For starting the pool, and again for the job to finish.
    pub timeout: Duration,
}

struct Demo<'a> {
    pool: PoolDir,
    job_dir: PathBuf,
    out: &'a mut dyn Write,
    started: Started,
}

fn fresh_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!("roost-demo-{}-{nanos:x}", std::process::id()))
}

/// Runs the demo; returns the process exit status (0: the output matched).
pub fn run(opts: &DemoOptions, out: &mut dyn Write) -> Result<i32> {
    let (root, made_here) = match &opts.dir {
        Some(d) => (d.clone(), false),
        None => (fresh_dir(), true),
    };
    let pool = PoolDir::new(&root)?;
    let job_dir = pool.host_dir(crate::pool::SCHEDD).join("demo");
    let mut demo = Demo {
        pool,
        job_dir,
        out,
        started: Started::default(),
    };

    let result = demo.story(opts);
    let stop = if opts.keep && result.is_ok() {
        writeln!(
            demo.out,
            "\nThe pool keeps running (--keep). Use it with\n  export ROOST_POOL={}\nand stop it with\n  roost pool down --dir {}",
            demo.pool.root().display(),
            demo.pool.root().display()
        )?;
        Ok(())
    } else {
        demo.section("stopping the pool")?;
        let r = daemons::down(&demo.pool, Duration::from_secs(5), demo.out);
        demo.started.reap();
        r
    };
    let ok = result.with_context(|| {
        format!(
            "the demo failed; the daemons' logs and the job's files are in {}",
            demo.pool.root().display()
        )
    })?;
    stop?;
    if ok {
        if made_here && !opts.keep {
            std::fs::remove_dir_all(demo.pool.root())
                .with_context(|| format!("cannot remove {}", demo.pool.root().display()))?;
        }
        writeln!(demo.out, "\ndemo passed")?;
        Ok(0)
    } else {
        writeln!(
            demo.out,
            "\ndemo FAILED: the output differs; everything is kept in {}",
            demo.pool.root().display()
        )?;
        Ok(1)
    }
}

impl Demo<'_> {
    fn section(&mut self, title: &str) -> Result<()> {
        writeln!(self.out, "\n==> {title}")?;
        Ok(())
    }

    /// The whole story; `Ok(false)` if the job ran but its output is wrong.
    fn story(&mut self, opts: &DemoOptions) -> Result<bool> {
        self.start_pool(opts)?;
        self.write_job()?;
        let schedd = Schedd::at(&self.pool.schedd_sock(), self.pool.root());
        let job = self.submit(&schedd)?;
        let moved = self.owner_returns(&schedd, job, opts.timeout);
        let waited = moved.and_then(|()| self.wait(&schedd, job, opts.timeout));
        // What there is to see helps most when the job failed.
        self.show_queue_and_log(&schedd, job)?;
        let files = self.show_files();
        waited?;
        files?;
        self.check_output()
    }

    fn start_pool(&mut self, opts: &DemoOptions) -> Result<()> {
        self.section(&format!(
            "starting a personal pool in {}: a matchmaker, a schedd (the submit host) and {} execute hosts",
            self.pool.root().display(),
            opts.hosts
        ))?;
        let up = UpOptions {
            hosts: Some(opts.hosts),
            idle_secs: 2,
            cycle_secs: None,
            timeout: opts.timeout,
        };
        for i in 1..=opts.hosts {
            let h = self.pool.host_dir(&format!("exec{i}"));
            std::fs::create_dir_all(&h)
                .with_context(|| format!("cannot create {}", h.display()))?;
            write_file(&h.join("policy.toml"), POLICY, false)?;
        }
        writeln!(
            self.out,
            "--- each execute host's owner policy (policy.toml)"
        )?;
        self.out.write_all(POLICY.as_bytes())?;
        self.started = daemons::up(&self.pool, &up, self.out)?;
        Ok(())
    }

    /// The events of the job's log, parsed.
    fn events(schedd: &Schedd, job: JobId) -> Result<Vec<serde_json::Value>> {
        Ok(jobs::log(schedd, job)?
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// The job starts on host A; A's owner comes back and stays; the job is
    /// suspended, checkpointed, vacated, and resumes on another host.
    fn owner_returns(&mut self, schedd: &Schedd, job: JobId, timeout: Duration) -> Result<()> {
        let t0 = std::time::Instant::now();
        let host = loop {
            let ev = Self::events(schedd, job)?;
            if let Some(h) = ev
                .iter()
                .find(|e| e["event"] == "executing")
                .and_then(|e| e["host"].as_str())
            {
                break h.to_string();
            }
            ensure!(
                t0.elapsed() < timeout,
                "job {job} did not start within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        self.section(&format!(
            "job {job} runs on {host}; let it work for two seconds"
        ))?;
        std::thread::sleep(Duration::from_secs(2));
        let done = self.job_dir.join("results.txt");
        let lines = std::fs::read_to_string(&done)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        writeln!(self.out, "results.txt has {lines} lines so far")?;
        self.section(&format!(
            "the owner of {host} comes back: roost pool touch {host} (and keeps typing)"
        ))?;
        let t0 = std::time::Instant::now();
        let mut shown = 0;
        loop {
            daemons::touch(&self.pool, &host)?;
            let ev = Self::events(schedd, job)?;
            for e in ev.iter().skip(shown) {
                writeln!(self.out, "{}", render::log_line(&e.to_string()))?;
            }
            shown = ev.len();
            let elsewhere = ev
                .iter()
                .filter(|e| e["event"] == "executing")
                .filter_map(|e| e["host"].as_str())
                .any(|h| h != host);
            let finished = ev.iter().any(|e| e["event"] == "completed");
            if elsewhere || finished {
                break;
            }
            ensure!(
                t0.elapsed() < timeout,
                "job {job} did not move off {host} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    }

    fn write_job(&mut self) -> Result<()> {
        let d = self.job_dir.clone();
        self.section(&format!("a job in {} on the submit host", d.display()))?;
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        for f in ["results.txt", "sweep.out", "sweep.err"] {
            let _ = std::fs::remove_file(d.join(f));
        }
        let input = input();
        write_file(&d.join("params.txt"), &input, false)?;
        write_file(&d.join("sweep.py"), SCRIPT, false)?;
        write_file(&d.join("job.toml"), JOB_FILE, false)?;
        writeln!(
            self.out,
            "--- params.txt: {} parameters",
            input.lines().count()
        )?;
        for (name, text) in [("job.toml", JOB_FILE), ("sweep.py", SCRIPT)] {
            writeln!(self.out, "--- {name}")?;
            self.out.write_all(text.as_bytes())?;
        }
        Ok(())
    }

    fn submit(&mut self, schedd: &Schedd) -> Result<JobId> {
        self.section("roost submit job.toml")?;
        // As if run in the job's directory: that is its initialdir.
        match jobs::submit(schedd, Path::new("job.toml"), &self.job_dir)? {
            SubmitOutcome::Queued(ids) => {
                for id in &ids {
                    writeln!(self.out, "{id}")?;
                }
                ids.first().copied().context("the schedd queued no job")
            }
            SubmitOutcome::Refused(m) => bail!("the schedd refused the demo's job file: {m}"),
        }
    }

    fn wait(&mut self, schedd: &Schedd, job: JobId, timeout: Duration) -> Result<()> {
        self.section(&format!("roost wait {job}"))?;
        let mut err = std::io::stderr();
        let progress: Option<&mut dyn Write> = if std::io::IsTerminal::is_terminal(&err) {
            Some(&mut err)
        } else {
            None
        };
        let outcome = jobs::wait(schedd, &[JobSel::Job(job)], Some(timeout), progress)?;
        ensure!(outcome.code == 0, "{}", outcome.notes.join("; "));
        writeln!(self.out, "job {job} exited with status 0")?;
        Ok(())
    }

    fn show_queue_and_log(&mut self, schedd: &Schedd, job: JobId) -> Result<()> {
        self.section("roost q --all")?;
        let all = jobs::queue(schedd, true)?;
        self.out
            .write_all(render::queue(&all, true, None).as_bytes())?;
        if let Some(host) = all
            .iter()
            .find(|j| j.id == job)
            .and_then(|j| j.host.clone())
        {
            writeln!(self.out, "job {job} ran on execute host {host}")?;
        }
        self.section(&format!("roost log {job}"))?;
        for line in jobs::log(schedd, job)? {
            writeln!(self.out, "{}", render::log_line(&line))?;
        }
        Ok(())
    }

    /// The job's own output files, as they are on the submit host.
    fn show_files(&mut self) -> Result<()> {
        let d = self.job_dir.clone();
        self.section(&format!(
            "what the job wrote, in {} on the submit host",
            d.display()
        ))?;
        for f in ["sweep.out", "sweep.err", "results.txt"] {
            match std::fs::read(d.join(f)) {
                Ok(text) => {
                    writeln!(self.out, "--- {f}")?;
                    self.out.write_all(&text)?;
                }
                Err(e) => writeln!(self.out, "--- {f}: {e}")?,
            }
        }
        Ok(())
    }

    /// The same script run here, without roost, must write the same bytes.
    fn check_output(&mut self) -> Result<bool> {
        let here = self.pool.root().join("reference");
        let _ = std::fs::remove_dir_all(&here);
        std::fs::create_dir_all(&here)
            .with_context(|| format!("cannot create {}", here.display()))?;
        write_file(&here.join("params.txt"), &input(), false)?;
        write_file(&here.join("sweep.py"), SCRIPT, false)?;
        self.section("the same sweep run here without roost, for reference")?;
        let local = std::process::Command::new("/usr/bin/python3")
            .arg("sweep.py")
            .current_dir(&here)
            .output()
            .context("cannot run /usr/bin/python3")?;
        ensure!(
            local.status.success(),
            "the reference run failed: {}",
            String::from_utf8_lossy(&local.stderr)
        );
        let mut same = true;
        for (name, want) in [
            ("results.txt", std::fs::read(here.join("results.txt"))?),
            ("sweep.out", local.stdout.clone()),
        ] {
            let got = std::fs::read(self.job_dir.join(name)).unwrap_or_default();
            let ok = got == want;
            same &= ok;
            writeln!(
                self.out,
                "{name} is {} the reference's ({} bytes)",
                if ok {
                    "byte-identical to"
                } else {
                    "NOT the same as"
                },
                want.len()
            )?;
        }
        Ok(same)
    }
}

fn write_file(path: &Path, text: &str, executable: bool) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_job_file_and_policy_are_valid() {
        let d = tempfile::tempdir().unwrap();
        let desc = policies::jobfile::parse("job.toml", JOB_FILE, d.path()).unwrap();
        let specs = desc.expand(1).unwrap();
        assert_eq!(specs.len(), 1);
        let s = &specs[0];
        assert_eq!(s.executable, "/usr/bin/python3");
        assert_eq!(s.arguments, ["sweep.py"]);
        assert_eq!(s.output.as_deref(), Some("sweep.out"));
        assert_eq!(s.initialdir, d.path().display().to_string());
        policies::policy::OwnerPolicy::parse("policy.toml", POLICY).unwrap();
    }

    #[test]
    fn the_sweep_runs_locally_and_is_deterministic() {
        let mut outs = vec![];
        for _ in 0..2 {
            let d = tempfile::tempdir().unwrap();
            write_file(&d.path().join("params.txt"), &input(), false).unwrap();
            write_file(&d.path().join("sweep.py"), SCRIPT, false).unwrap();
            let out = std::process::Command::new("/usr/bin/python3")
                .arg("sweep.py")
                .current_dir(d.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let results = std::fs::read_to_string(d.path().join("results.txt")).unwrap();
            assert_eq!(results.lines().count(), 36);
            assert!(String::from_utf8_lossy(&out.stdout).starts_with("sweep done: 36 parameters"));
            outs.push((results, out.stdout));
        }
        assert_eq!(outs[0], outs[1]);
    }
}
