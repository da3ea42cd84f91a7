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

/// What the job reads.
pub const INPUT: &str = "\
roost lends idle workstations to batch jobs.
the job runs on an execute host;
every byte it reads or writes lives on the submit host.
";

/// The job: a shell script (so `tr`, `wc` and the shell itself, children
/// of the job, run under the shim too).
pub const SCRIPT: &str = r#"#!/bin/sh
# Reads $1 on the submit host, writes it upper-cased to $2 there.
set -e
echo "upper.sh: running as pid $$ in $(readlink /proc/self/cwd 2>/dev/null || echo '?')"
echo "upper.sh: my current directory is $(pwd)"
tr 'a-z' 'A-Z' < "$1" > "$2"
echo "upper.sh: wrote $(wc -l < "$2") lines to $2"
"#;

pub const JOB_FILE: &str = r#"# The demo's job: run upper.sh on some execute host of the pool.
executable = "upper.sh"
arguments = ["input.txt", "output.txt"]
output = "upper.out"
error = "upper.err"
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
        let waited = self.wait(&schedd, job, opts.timeout);
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
        self.started = daemons::up(&self.pool, &up, self.out)?;
        Ok(())
    }

    fn write_job(&mut self) -> Result<()> {
        let d = self.job_dir.clone();
        self.section(&format!("a job in {} on the submit host", d.display()))?;
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        for f in ["output.txt", "upper.out", "upper.err"] {
            let _ = std::fs::remove_file(d.join(f));
        }
        write_file(&d.join("input.txt"), INPUT, false)?;
        write_file(&d.join("upper.sh"), SCRIPT, true)?;
        write_file(&d.join("job.toml"), JOB_FILE, false)?;
        for (name, text) in [
            ("job.toml", JOB_FILE),
            ("upper.sh", SCRIPT),
            ("input.txt", INPUT),
        ] {
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
        for f in ["upper.out", "upper.err", "output.txt"] {
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

    fn check_output(&mut self) -> Result<bool> {
        let path = self.job_dir.join("output.txt");
        let got =
            std::fs::read(&path).with_context(|| format!("the job wrote no {}", path.display()))?;
        let want = INPUT.to_uppercase();
        let same = got == want.as_bytes();
        writeln!(
            self.out,
            "\noutput.txt is {} the expected {} bytes",
            if same { "byte-identical to" } else { "NOT" },
            want.len()
        )?;
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
    fn the_demo_job_file_is_valid_and_ships_the_script() {
        let d = tempfile::tempdir().unwrap();
        let desc = policies::jobfile::parse("job.toml", JOB_FILE, d.path()).unwrap();
        let specs = desc.expand(1).unwrap();
        assert_eq!(specs.len(), 1);
        let s = &specs[0];
        assert_eq!(s.executable, "upper.sh");
        assert!(s.transfer_executable);
        assert_eq!(s.arguments, ["input.txt", "output.txt"]);
        assert_eq!(s.output.as_deref(), Some("upper.out"));
        assert_eq!(s.initialdir, d.path().display().to_string());
    }

    #[test]
    fn the_script_does_what_the_demo_expects_when_run_locally() {
        let d = tempfile::tempdir().unwrap();
        write_file(&d.path().join("input.txt"), INPUT, false).unwrap();
        write_file(&d.path().join("upper.sh"), SCRIPT, true).unwrap();
        let out = std::process::Command::new("./upper.sh")
            .args(["input.txt", "output.txt"])
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("output.txt")).unwrap(),
            INPUT.to_uppercase()
        );
        let said = String::from_utf8(out.stdout).unwrap();
        assert!(
            said.ends_with("upper.sh: wrote 3 lines to output.txt\n"),
            "{said}"
        );
    }
}
