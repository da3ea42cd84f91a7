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
//! - [`ads`]: `roost eval`, `--constraint`, ad files; [`why`]: `roost why`.
#![forbid(unsafe_code)]

pub mod ads;
pub mod args;
pub mod client;
pub mod daemons;
pub mod demo;
pub mod jobs;
pub mod mm;
pub mod pki;
pub mod pool;
pub mod render;
pub mod urls;
pub mod why;

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
            let constraint = a
                .constraint
                .as_deref()
                .map(ads::Constraint::parse)
                .transpose()?;
            let s = schedd()?;
            if !a.watch {
                out.write_all(q_frame(&s, &a, constraint.as_ref())?.as_bytes())?;
                return Ok(0);
            }
            if !(a.interval.is_finite() && a.interval > 0.0) {
                anyhow::bail!(
                    "--interval {}: expected a number of seconds above 0",
                    a.interval
                );
            }
            let terminal = std::io::stdout().is_terminal();
            loop {
                let frame = q_frame(&s, &a, constraint.as_ref())?;
                if terminal {
                    // Home, clear the screen, draw.
                    write!(out, "\x1b[H\x1b[2J{frame}")?;
                } else {
                    writeln!(out, "{frame}")?;
                }
                out.flush()?;
                std::thread::sleep(Duration::from_secs_f64(a.interval));
            }
        }
        Command::Why(a) => why(&schedd()?, global_pool, cli.matchmaker.as_deref(), &a, out),
        Command::Eval(a) => {
            let load = |f: &Option<PathBuf>| {
                f.as_deref()
                    .map_or_else(|| Ok(policies::Ad::new()), ads::load_ad)
            };
            let (my, target) = (load(&a.my)?, load(&a.target)?);
            out.write_all(ads::eval_lines(&a.exprs, &my, &target)?.as_bytes())?;
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
        Command::Checkpoint(a) if a.wait => {
            act_wait(&schedd()?, &a.jobs, jobs::Action::Checkpoint, out)
        }
        Command::Vacate(a) if a.wait => act_wait(&schedd()?, &a.jobs, jobs::Action::Vacate, out),
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
        Command::Completions(a) => {
            let shell = match a.shell.as_str() {
                "bash" => cliutil::Shell::Bash,
                "zsh" => cliutil::Shell::Zsh,
                _ => cliutil::Shell::Fish,
            };
            let mut script = Vec::new();
            cliutil::completions(
                &mut <Cli as clap::CommandFactory>::command(),
                shell,
                &mut script,
            );
            out.write_all(&script)?;
            Ok(0)
        }
        Command::Man(a) => man(&a.out, out),
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

/// `roost man --out DIR`: roost's pages from its own definitions, each
/// daemon's from the daemon (`--print-man-page`); a daemon that cannot be
/// found or run is named on stderr and the exit status is 1.
fn man(dir: &Path, out: &mut dyn Write) -> Result<i32> {
    let mut written = cliutil::man_pages(<Cli as clap::CommandFactory>::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    let bin = daemons::bin_dir()?;
    let mut failed = false;
    for name in [
        "roost-matchmaker",
        "roost-schedd",
        "roost-ownerd",
        "roost-starter",
    ] {
        let exe = bin.join(name);
        let page = std::process::Command::new(&exe)
            .arg(cliutil::PRINT_MAN)
            .output();
        match page {
            Ok(o) if o.status.success() && !o.stdout.is_empty() => {
                let path = dir.join(format!("{name}.1"));
                std::fs::write(&path, &o.stdout)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                written.push(path);
            }
            Ok(o) => {
                failed = true;
                eprintln!(
                    "roost: {} did not print its man page ({}): {}",
                    exe.display(),
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            Err(e) => {
                failed = true;
                eprintln!(
                    "roost: cannot run {} for its man page: {e} (set ROOST_BIN_DIR to where the daemons are)",
                    exe.display()
                );
            }
        }
    }
    for p in &written {
        writeln!(out, "{}", p.display())?;
    }
    Ok(i32::from(failed))
}

/// One `roost q` listing (the table, then a bar per image transfer).
fn q_frame(s: &Schedd, a: &args::QArgs, constraint: Option<&ads::Constraint>) -> Result<String> {
    let list = jobs::queue(s, a.all)?;
    let job_ads = match constraint {
        Some(_) => jobs::job_ads(s, a.all)?,
        None => Vec::new(),
    };
    let list = jobs::filter_queue(
        list,
        a.run,
        a.held,
        constraint.map(|c| (c, job_ads.as_slice())),
    );
    let width = render::terminal_width();
    let mut text = if a.json {
        format!("{}\n", serde_json::to_string_pretty(&list)?)
    } else if a.run {
        render::queue_running(&list, width)
    } else if a.held {
        render::queue_held(&list, width)
    } else {
        render::queue(&list, a.all, width)
    };
    if a.watch {
        text.push_str(&render::transfers(&list));
    }
    Ok(text)
}

/// `roost checkpoint|vacate --wait`: as [`act`], then the transfers'
/// progress on stderr and one outcome line per job on stdout; exit status
/// 1 if any job was refused or did not reach the outcome asked for.
fn act_wait(
    schedd: &Schedd,
    sels: &[args::JobSel],
    action: jobs::Action,
    out: &mut dyn Write,
) -> Result<i32> {
    let ids = jobs::expand(schedd, sels)?;
    let logs = jobs::log_lengths(schedd, &ids);
    let r = jobs::act_on(schedd, ids, action.clone())?;
    let refused = print_acted(&r, &action, out)?;
    out.flush()?;
    let mut err = std::io::stderr();
    let terminal = err.is_terminal();
    let good = jobs::wait_outcomes(schedd, &r.done, &logs, &action, out, &mut err, terminal)?;
    Ok(i32::from(refused || !good))
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
    Ok(i32::from(print_acted(&r, &action, out)?))
}

/// Prints what [`act`] prints; returns whether any job was refused.
fn print_acted(r: &jobs::Acted, action: &jobs::Action, out: &mut dyn Write) -> Result<bool> {
    for id in &r.done {
        let line = match action {
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
    Ok(!r.refused.is_empty())
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
        PoolCommand::AddHost(a) => {
            let pool = pool_dir(a.dir, global)?;
            let i = pki::add(&pool, &a.name, &a.role, &a.sans, a.days, a.force)?;
            issued(out, &pool, &i, a.days)
        }
        PoolCommand::AddUser(a) => {
            let pool = pool_dir(a.dir, global)?;
            let i = pki::add(&pool, &a.name, "user", &[], a.days, a.force)?;
            issued(out, &pool, &i, a.days)
        }
        PoolCommand::Revoke(a) => {
            let pool = pool_dir(a.dir, global)?;
            let (serial, new) = pki::revoke(&pool, &a.what)?;
            let deny = pool.pki().join(proto::tls::DENY_FILE);
            if new {
                writeln!(
                    out,
                    "revoked {} (serial {serial}) in {}; daemons using this pki directory refuse it \
                     from their next handshake",
                    a.what,
                    deny.display()
                )?;
            } else {
                writeln!(
                    out,
                    "{} (serial {serial}) is already in {}",
                    a.what,
                    deny.display()
                )?;
            }
            Ok(0)
        }
        PoolCommand::Status(a) => status(global, mm, &a, out),
        PoolCommand::Urls(a) => {
            let pool = pool_dir(a.dir, global)?;
            let mut cfg = pool.load()?;
            if let Some(addr) = mm {
                cfg.matchmaker.addr = addr.to_string();
            }
            urls::print(&pool, &cfg, a.json, out)?;
            Ok(0)
        }
    }
}

fn issued(out: &mut dyn Write, pool: &PoolDir, i: &pki::Issued, days: u32) -> Result<i32> {
    writeln!(
        out,
        "issued {} and {} (role {}, serial {}, valid {days} days); with them the holder needs {}",
        i.cert.display(),
        i.key.display(),
        i.role,
        i.serial,
        pool.pki().join("ca.pem").display()
    )?;
    Ok(0)
}

fn status(
    global: Option<&Path>,
    mm: Option<&str>,
    a: &StatusArgs,
    out: &mut dyn Write,
) -> Result<i32> {
    let constraint = a
        .constraint
        .as_deref()
        .map(ads::Constraint::parse)
        .transpose()?;
    let machines = matchmaker(global, mm)?.machines(Duration::from_secs(10))?;
    let machines = ads::filter_machines(machines, constraint.as_ref());
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

/// The pool's matchmaker (`mm` overrides the address in `pool.toml`).
fn matchmaker(global: Option<&Path>, mm: Option<&str>) -> Result<mm::Matchmaker> {
    let pool = pool_dir(None, global)?;
    let mut cfg = pool.load()?;
    if let Some(addr) = mm {
        cfg.matchmaker.addr = addr.to_string();
    }
    mm::Matchmaker::new(&pool, &cfg)
}

/// `roost why JOB`.
fn why(
    schedd: &Schedd,
    global: Option<&Path>,
    mm: Option<&str>,
    a: &args::WhyArgs,
    out: &mut dyn Write,
) -> Result<i32> {
    let id = a.job.first();
    let list = jobs::queue(schedd, true)?;
    let Some(summary) = list.iter().find(|j| j.id == id) else {
        anyhow::bail!("no job {id} in the queue (`roost q --all` lists every job)");
    };
    let report = match why::Why::settled(summary) {
        Some(w) => w,
        None => {
            let (wire, owner) = jobs::job_ad(schedd, id)?;
            let ad = policies::Ad::from_wire_lossy(&wire);
            let m = matchmaker(global, mm)?;
            let t = Duration::from_secs(10);
            let job = proto::pool::JobAd {
                job: id,
                owner: owner.clone(),
                attrs: wire,
            };
            let (report, source) = match m.why(job, t)? {
                Ok(r) => (r, why::Source::Matchmaker),
                Err(reason) => {
                    let machines = m.machines(t)?;
                    (
                        why::local_report(id, &ad, &machines),
                        why::Source::Local { reason },
                    )
                }
            };
            why::Why {
                job: id,
                owner,
                state: summary.state,
                host: summary.host.clone(),
                hold_reason: summary.hold_reason.clone(),
                requirements: why::requirements_text(&ad),
                report: Some(report),
                source: Some(source),
            }
        }
    };
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out.write_all(why::render(&report, render::terminal_width()).as_bytes())?;
    }
    Ok(0)
}

/// `roost submit --dry-run`: the jobs the file describes (a TOML job file,
/// or an HTCondor submit file by its extension), checked and expanded by
/// the schedd's own steps ([`policies::jobfile::Submission`], cluster
/// shown as 0) on the request `roost submit` would send, each with the ad
/// it would advertise. A refused file gets the schedd's message and exit
/// status 1, as from `roost submit`.
fn dry_run(file: &Path, cwd: &Path, out: &mut dyn Write) -> Result<i32> {
    let proto::cli::CliRequest::Submit {
        file: name,
        text,
        cwd,
    } = jobs::submit_request(file, cwd)?
    else {
        unreachable!("submit_request makes a Submit request");
    };
    let specs =
        match policies::jobfile::Submission::parse(&name, &text, &cwd).and_then(|s| s.expand(0)) {
            Ok(procs) => procs.into_iter().map(|p| p.spec).collect::<Vec<_>>(),
            Err(message) => {
                eprintln!("roost: {message}");
                return Ok(1);
            }
        };
    let owner = std::env::var("USER").unwrap_or_else(|_| "you".into());
    for (i, s) in specs.iter().enumerate() {
        out.write_all(render::job_spec(&format!("0.{i}"), s).as_bytes())?;
        let ad = policies::job_ad(s, &owner).map_err(anyhow::Error::new)?;
        writeln!(out, "  ad:")?;
        out.write_all(render::ad_lines(&ad, "    ").as_bytes())?;
    }
    writeln!(
        out,
        "{} job{} (not submitted; the schedd numbers the cluster)",
        specs.len(),
        if specs.len() == 1 { "" } else { "s" }
    )?;
    Ok(0)
}
