//! The `roost` command: what each subcommand does, for the thin `main.rs`
//! and for tests that drive it in-process.
//!
//! - [`args`]: the command line (clap).
//! - [`pool`]: a pool directory, `pool.toml`, `roost pool init`.
//! - [`daemons`]: `roost pool up/down/touch` (background daemons).
//! - [`client`]: the schedd's Unix socket; [`mm`]: the matchmaker over TLS.
//! - [`jobs`]: `submit`, `q`, `rm`, `log`, `wait`, `checkpoint`, `vacate`,
//!   `hold`, `release`, `history`.
//! - [`render`]: tables and readable logs; [`demo`]: `roost demo`.
#![forbid(unsafe_code)]

pub mod args;
pub mod client;
pub mod daemons;
pub mod demo;
pub mod jobs;
pub mod mm;
pub mod pool;
pub mod render;

use anyhow::{Context, Result};
use args::{Cli, Command, PoolCommand, StatusArgs};
use client::Schedd;
use pool::PoolDir;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Whether `e` comes from writing to a pipe whose reader has gone.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs one command line; returns the process exit status.
pub fn run(cli: Cli) -> Result<i32> {
    let mut stdout = std::io::stdout().lock();
    let out: &mut dyn Write = &mut stdout;
    let global_pool = cli.pool.as_deref();
    let schedd = || Schedd::locate(global_pool, cli.schedd_sock.as_deref());
    match cli.command {
        Command::Pool(p) => run_pool(p, global_pool, cli.matchmaker.as_deref(), out),
        Command::Status(a) => status(global_pool, cli.matchmaker.as_deref(), &a, out),
        Command::Submit(a) => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            if a.dry_run {
                return dry_run(&a.file, &cwd, out);
            }
            match jobs::submit(&schedd()?, &a.file, &cwd)? {
                jobs::SubmitOutcome::Queued(ids) => {
                    for id in ids {
                        writeln!(out, "{id}")?;
                    }
                    Ok(0)
                }
                jobs::SubmitOutcome::Refused(message) => {
                    eprintln!("roost: {message}");
                    Ok(1)
                }
            }
        }
        Command::Q(a) => {
            let list = jobs::queue(&schedd()?, a.all)?;
            if a.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                out.write_all(render::queue(&list, a.all, render::terminal_width()).as_bytes())?;
            }
            Ok(0)
        }
        Command::Rm(a) => {
            let (removed, not_found) = jobs::remove(&schedd()?, &a.jobs)?;
            for id in &removed {
                writeln!(out, "removed {id}")?;
            }
            for id in &not_found {
                eprintln!("roost: no job {id} in the queue (`roost q` lists them)");
            }
            Ok(i32::from(!not_found.is_empty()))
        }
        Command::Log(a) => {
            let lines = jobs::log(&schedd()?, a.job.first())?;
            for l in lines {
                if a.json {
                    writeln!(out, "{l}")?;
                } else {
                    writeln!(out, "{}", render::log_line(&l))?;
                }
            }
            Ok(0)
        }
        Command::Wait(a) => {
            let timeout = match a.timeout {
                Some(t) if t.is_finite() && t >= 0.0 => Some(Duration::from_secs_f64(t)),
                Some(t) => anyhow::bail!("--timeout {t}: expected a number of seconds (0 or more)"),
                None => None,
            };
            let mut err = std::io::stderr();
            let progress: Option<&mut dyn Write> = if err.is_terminal() {
                Some(&mut err)
            } else {
                None
            };
            let outcome = jobs::wait(&schedd()?, &a.jobs, timeout, progress)?;
            for n in &outcome.notes {
                eprintln!("roost: {n}");
            }
            Ok(outcome.code)
        }
        Command::Checkpoint(a) => act(&schedd()?, &a.jobs, jobs::Action::Checkpoint, out),
        Command::Vacate(a) => act(&schedd()?, &a.jobs, jobs::Action::Vacate, out),
        Command::Hold(a) => act(
            &schedd()?,
            &a.jobs,
            jobs::Action::Hold { reason: a.reason },
            out,
        ),
        Command::Release(a) => act(&schedd()?, &a.jobs, jobs::Action::Release, out),
        Command::History(a) => {
            let list = jobs::history(&schedd()?, a.limit)?;
            if a.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                out.write_all(render::history(&list, render::terminal_width()).as_bytes())?;
            }
            Ok(0)
        }
        Command::Demo(a) => {
            let opts = demo::DemoOptions {
                dir: a.dir,
                hosts: a.hosts,
                keep: a.keep,
                timeout: Duration::from_secs(60),
            };
            demo::run(&opts, out)
        }
    }
}

/// `roost checkpoint|vacate|hold|release`: one line per job acted on;
/// the others on stderr with the schedd's reason, and exit status 1.
fn act(
    schedd: &Schedd,
    sels: &[args::JobSel],
    action: jobs::Action,
    out: &mut dyn Write,
) -> Result<i32> {
    let r = jobs::act(schedd, sels, action.clone())?;
    for id in &r.done {
        let line = match &action {
            jobs::Action::Checkpoint => format!("checkpointing {id}"),
            jobs::Action::Vacate => format!("vacating {id}"),
            jobs::Action::Hold { .. } if r.vacating.contains(id) => {
                format!("holding {id} (vacating it from its host first)")
            }
            jobs::Action::Hold { .. } => format!("held {id}"),
            jobs::Action::Release => format!("released {id}"),
        };
        writeln!(out, "{line}")?;
    }
    for (id, why) in &r.refused {
        eprintln!("roost: {id}: {why}");
    }
    Ok(i32::from(!r.refused.is_empty()))
}

fn pool_dir(dir: Option<PathBuf>, global: Option<&Path>) -> Result<PoolDir> {
    let d = dir
        .or_else(|| global.map(Path::to_path_buf))
        .context("which pool? pass --dir DIR (or set ROOST_POOL=DIR)")?;
    PoolDir::new(&d)
}

fn run_pool(
    cmd: PoolCommand,
    global: Option<&Path>,
    mm: Option<&str>,
    out: &mut dyn Write,
) -> Result<i32> {
    let mut err = std::io::stderr();
    match cmd {
        PoolCommand::Init(a) => {
            let pool = pool_dir(a.dir, global)?;
            let cfg = pool::init(&pool, a.hosts, a.force)?;
            writeln!(
                out,
                "made a pool in {}: matchmaker {} on {}, schedd {} on {}, execute hosts {}; \
                 certificates in {}",
                pool.root().display(),
                cfg.matchmaker.name,
                cfg.matchmaker.addr,
                cfg.schedd.name,
                cfg.schedd.addr,
                cfg.exec_names().join(", "),
                pool.pki().display()
            )?;
            Ok(0)
        }
        PoolCommand::Up(a) => {
            let pool = pool_dir(a.dir, global)?;
            let opts = daemons::UpOptions {
                hosts: a.hosts,
                idle_secs: a.idle_secs,
                cycle_secs: a.cycle_secs,
                timeout: Duration::from_secs(a.timeout),
            };
            daemons::up(&pool, &opts, &mut err)?;
            writeln!(
                err,
                "\nPoint this shell at the pool (or run `eval \"$(roost pool up ...)\"`):"
            )?;
            let root = pool.root().display().to_string();
            writeln!(
                out,
                "export ROOST_POOL={}",
                render::shell_words([root.as_str()])
            )?;
            Ok(0)
        }
        PoolCommand::Down(a) => {
            let pool = pool_dir(a.dir, global)?;
            daemons::down(&pool, Duration::from_secs(a.grace), out)?;
            Ok(0)
        }
        PoolCommand::Touch(a) => {
            let pool = pool_dir(a.dir, global)?;
            daemons::touch(&pool, &a.host)?;
            Ok(0)
        }
        PoolCommand::Status(a) => status(global, mm, &a, out),
    }
}

fn status(
    global: Option<&Path>,
    mm: Option<&str>,
    a: &StatusArgs,
    out: &mut dyn Write,
) -> Result<i32> {
    let pool = pool_dir(None, global)?;
    let mut cfg = pool.load()?;
    if let Some(addr) = mm {
        cfg.matchmaker.addr = addr.to_string();
    }
    let machines = mm::Matchmaker::new(&pool, &cfg)?.machines(Duration::from_secs(10))?;
    if a.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&render::machines_json(&machines))?
        )?;
    } else {
        out.write_all(render::machines(&machines, render::terminal_width()).as_bytes())?;
    }
    Ok(0)
}

/// `roost submit --dry-run`: the jobs the file describes, checked and
/// expanded here as the schedd would (cluster shown as 0).
fn dry_run(file: &Path, cwd: &Path, out: &mut dyn Write) -> Result<i32> {
    let text = std::fs::read_to_string(cwd.join(file))
        .with_context(|| format!("cannot read the job file {}", file.display()))?;
    let name = file.display().to_string();
    let specs = policies::jobfile::parse(&name, &text, cwd)
        .and_then(|d| d.expand(0))
        .map_err(anyhow::Error::new)?;
    for (i, s) in specs.iter().enumerate() {
        out.write_all(render::job_spec(&format!("0.{i}"), s).as_bytes())?;
    }
    writeln!(
        out,
        "{} job{} (not submitted; the schedd numbers the cluster)",
        specs.len(),
        if specs.len() == 1 { "" } else { "s" }
    )?;
    Ok(0)
}
