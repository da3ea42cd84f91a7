//! `roost-starter --pki DIR --name HOST --schedd-name NAME --schedd-addr IP:PORT
//! --claim TOKEN --job C.P --scratch DIR --shim PATH`
//!
//! Runs one claimed job: attaches to its shadow, creates the scratch
//! directory, fetches the executable, runs the job under the shim with the
//! shadow as its file system, reports how it ended, and removes the scratch
//! directory. The claim may come in `ROOST_CLAIM` instead of `--claim`.
//!
//! The ownerd steers the job through standard input, one command per line
//! ([`starter::control::Control`]): `suspend` stops the job's processes
//! and tells the shadow (`Suspended`), `continue` resumes them
//! (`Continued`), `vacate REASON` and `kill REASON` end the job and report
//! `Vacated` so the schedd requeues it.

use anyhow::{Context, bail};
use clap::Parser;
use proto::shadow::Attached;
use proto::{ClaimId, HostName, JobId};
use starter::control::Control;
use starter::job::{JobControl, JobLaunch, run_job_limited};
use starter::shadow_link::{LinkError, ShadowLink};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tracing::{Instrument, error, info, info_span, warn};

/// How long the starter keeps trying to attach to the shadow.
const ATTACH_PATIENCE: Duration = Duration::from_secs(10);
/// Longest a vacate may spend checkpointing before the job is killed.
const MAX_VACATE_TIME: Duration = Duration::from_secs(60);

/// Runs one claimed job on this host for its shadow on the submit host.
#[derive(Parser, Debug)]
#[command(name = "roost-starter", version)]
struct Args {
    /// Directory with ca.pem, HOST.pem and HOST.key.
    #[arg(long)]
    pki: PathBuf,
    /// This host's name (the ownerd's certificate).
    #[arg(long)]
    name: String,
    /// The schedd's certificate name.
    #[arg(long)]
    schedd_name: String,
    /// The schedd's shadow address.
    #[arg(long)]
    schedd_addr: String,
    /// The claim token from the matchmaker.
    #[arg(long, env = "ROOST_CLAIM", hide_env_values = true)]
    claim: String,
    /// The job, CLUSTER.PROC.
    #[arg(long)]
    job: JobId,
    /// Scratch directory to create (it must not exist); removed at the end.
    #[arg(long)]
    scratch: PathBuf,
    /// libroost_shim.so.
    #[arg(long)]
    shim: PathBuf,
    /// Periodic checkpoints are increments (only the pages changed since
    /// the last image), with a full image every this many increments,
    /// unless the job says (`checkpoint_full_every`); 0: full images only.
    #[arg(long, env = "ROOST_CHECKPOINT_FULL_EVERY", default_value_t = 4)]
    checkpoint_full_every: u32,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Args = cliutil::parse_daemon();
    // One thread: the relay, the link's reader and the calls wake each other
    // without crossing CPUs; the job runs on the others.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let span = info_span!("starter", job = %args.job);
    let commands = read_commands(std::io::stdin());
    match rt.block_on(run(args, commands).instrument(span.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            span.in_scope(|| error!("{e:#}"));
            if LEASE_EXPIRED.load(std::sync::atomic::Ordering::SeqCst) {
                ExitCode::from(starter::EXIT_LEASE_EXPIRED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The job was given up because its lease ran out (exit code
/// [`starter::EXIT_LEASE_EXPIRED`]).
static LEASE_EXPIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The ownerd's commands, one per line, read by a thread; unknown lines
/// are logged and skipped. When the ownerd goes away (its pipe ends) the
/// job is vacated: nobody would enforce the owner's policy any more, and a
/// restarted ownerd knows nothing of this starter.
fn read_commands(input: std::io::Stdin) -> tokio::sync::mpsc::Receiver<Control> {
    use std::io::BufRead;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let spawned = std::thread::Builder::new()
        .name("commands".into())
        .spawn(move || {
            for line in input.lock().lines() {
                let Ok(line) = line else { break };
                match Control::parse(&line) {
                    Some(c) => {
                        if tx.blocking_send(c).is_err() {
                            return;
                        }
                    }
                    None => warn!("unknown command from the ownerd: {line:?}"),
                }
            }
            let gone = Control::Vacate {
                reason: "the ownerd of this host went away".into(),
                max_secs: None,
            };
            let _ = tx.blocking_send(gone);
        });
    if let Err(e) = spawned {
        warn!("cannot read commands from the ownerd: {e}");
    }
    rx
}

/// How the job's run ended.
enum End {
    Ran(anyhow::Result<(proto::job::ExitStatus, proto::job::Usage)>),
    /// The ownerd or the shadow vacated it: its result does not count;
    /// with `true` it resumes from the image just committed.
    Vacated(String, bool),
}

async fn run(args: Args, mut commands: tokio::sync::mpsc::Receiver<Control>) -> anyhow::Result<()> {
    let id = proto::tls::Identity::load(&args.pki, &args.name).with_context(|| {
        format!(
            "loading the certificate of `{}` from {}",
            args.name,
            args.pki.display()
        )
    })?;
    let (mut link, attached) = attach(&id, &args).await?;
    info!(executable = %attached.spec.executable, owner = %attached.owner, "attached");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut made_scratch = false;
    // Without its shadow the job can neither do I/O nor report: end it.
    let lost = link.lost();
    tokio::pin!(lost);
    // While the link is away the job is stopped; the owner's suspend
    // stands on its own.
    let mut away = link.away();
    let mut owner_suspended = false;
    let notifier = link.notifier();
    let (job, job_rx) = JobControl::new();
    job.full_every(starter::job::checkpoint_full_every(
        &attached.spec,
        args.checkpoint_full_every,
    ));
    let mut asks = link
        .checkpoint_requests()
        .expect("checkpoint requests are taken once");
    let end = {
        let exec = execute(&args, &mut link, attached, &mut made_scratch, job_rx);
        tokio::pin!(exec);
        // Why the job is leaving, and the outcome of its vacate checkpoint.
        let mut leaving: Option<(String, Option<CkptReply>)> = None;
        loop {
            tokio::select! {
                r = &mut exec => break match leaving.take() {
                    Some((reason, Some(outcome))) => {
                        let checkpointed = outcome.await.is_ok_and(|o| o.committed());
                        End::Vacated(reason, checkpointed)
                    }
                    Some((reason, None)) => End::Vacated(reason, false),
                    None => End::Ran(r),
                },
                Some(vacate) = asks.recv() => {
                    if vacate && leaving.is_none() {
                        let reason = "vacated from the submit host".to_string();
                        info!("vacating: {reason}");
                        leaving = Some((reason.clone(), Some(job.vacate(reason, MAX_VACATE_TIME))));
                    } else if !vacate {
                        // The outcome is logged by the job's loop and
                        // recorded by the shadow.
                        drop(job.checkpoint("asked from the submit host"));
                    }
                }
                Some(cmd) = commands.recv() => match cmd {
                    Control::Suspend if leaving.is_none() => {
                        owner_suspended = true;
                        job.suspend();
                        info!("job suspended");
                        if let Err(e) = notifier.suspended().await {
                            warn!("cannot tell the shadow: {e}");
                        }
                    }
                    Control::Continue if leaving.is_none() => {
                        owner_suspended = false;
                        if *away.borrow() {
                            info!("the owner is away, but the shadow is out of reach: the job stays stopped");
                        } else {
                            job.resume();
                            info!("job continued");
                        }
                        if let Err(e) = notifier.continued().await {
                            warn!("cannot tell the shadow: {e}");
                        }
                    }
                    Control::Vacate { reason, max_secs } if leaving.is_none() => {
                        let max = max_secs.map_or(MAX_VACATE_TIME, Duration::from_secs);
                        info!(max_vacate_secs = max.as_secs(), "vacating: {reason}");
                        let outcome = job.vacate(reason.clone(), max);
                        leaving = Some((reason, Some(outcome)));
                    }
                    Control::Kill { reason } if leaving.is_none() => {
                        info!("killing the job: {reason}");
                        job.kill();
                        leaving = Some((reason, None));
                    }
                    other => info!("ignored while leaving: {other:?}"),
                },
                Ok(()) = away.changed() => {
                    let is_away = *away.borrow_and_update();
                    if leaving.is_some() || owner_suspended {
                        // Stopped already, or on its way out.
                    } else if is_away {
                        job.suspend();
                        info!("job suspended until the shadow is back");
                    } else {
                        job.resume();
                        info!("job continued: the shadow is back");
                    }
                }
                _ = term.recv() => break End::Ran(Err(anyhow::anyhow!("the execute host stopped the job (SIGTERM)"))),
                why = &mut lost => break End::Ran(Err(anyhow::anyhow!("lost the shadow: {why}"))),
            }
        }
    };
    if link.lease_expired() {
        LEASE_EXPIRED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    // The job's processes are gone here: `run_job` returned, or its future
    // was dropped, which kills the job's process group.
    if made_scratch {
        match std::fs::remove_dir_all(&args.scratch) {
            Ok(()) => {}
            Err(e) => {
                warn!(scratch = %args.scratch.display(), "cannot remove the scratch directory: {e}")
            }
        }
    }
    match end {
        End::Vacated(reason, checkpointed) => {
            link.vacated(reason, checkpointed)
                .await
                .context("reporting the vacate to the shadow")?;
            info!("job vacated");
            link.close().await;
            Ok(())
        }
        End::Ran(Ok((status, usage))) => {
            link.finish(status, usage)
                .await
                .context("reporting the job's exit to the shadow")?;
            info!(?status, wall = usage.wall_secs, "job done");
            link.close().await;
            Ok(())
        }
        End::Ran(Err(e)) => {
            let reason = format!("{e:#}");
            if let Err(le) = link.fail(reason).await {
                warn!("cannot report the failure to the shadow: {le:#}");
            }
            link.close().await;
            Err(e)
        }
    }
}

/// The outcome of a vacate's checkpoint.
type CkptReply = tokio::sync::oneshot::Receiver<starter::job::CkptOutcome>;

/// Connects and attaches, retrying for [`ATTACH_PATIENCE`]: the claim can
/// reach this host before the schedd has recorded the match.
async fn attach(id: &proto::tls::Identity, args: &Args) -> anyhow::Result<(ShadowLink, Attached)> {
    let give_up = tokio::time::Instant::now() + ATTACH_PATIENCE;
    let mut wait = Duration::from_millis(100);
    loop {
        let r = async {
            let mut link = ShadowLink::connect(id, &args.schedd_name, &args.schedd_addr).await?;
            let claim = ClaimId(args.claim.clone());
            let a = link
                .attach(claim, args.job, HostName(args.name.clone()))
                .await?;
            Ok::<_, LinkError>((link, a))
        }
        .await;
        match r {
            Ok(done) => return Ok(done),
            Err(e @ (LinkError::Refused(_) | LinkError::Connect { .. } | LinkError::Closed(_)))
                if tokio::time::Instant::now() + wait < give_up =>
            {
                info!("cannot attach yet ({e}); retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(anyhow::Error::new(e).context("attaching to the shadow")),
        }
    }
}

/// Everything between `Attached` and the job's end.
async fn execute(
    args: &Args,
    link: &mut ShadowLink,
    attached: Attached,
    made_scratch: &mut bool,
    control: tokio::sync::mpsc::UnboundedReceiver<starter::job::JobCommand>,
) -> anyhow::Result<(proto::job::ExitStatus, proto::job::Usage)> {
    let spec = attached.spec;
    if let Some(parent) = args.scratch.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&args.scratch)
            .with_context(|| {
                format!(
                    "creating the scratch directory {} (it must not exist)",
                    args.scratch.display()
                )
            })?;
    }
    *made_scratch = true;

    let name = exec_name(&spec.executable)?;
    let program = if spec.transfer_executable {
        let dest = args.scratch.join(&name);
        let size = link
            .fetch_executable(&dest)
            .await
            .with_context(|| format!("fetching the executable {}", spec.executable))?;
        info!(size, "executable fetched");
        dest
    } else {
        let p = PathBuf::from(&spec.executable);
        if !p.is_absolute() {
            bail!(
                "the executable {} is not shipped and not an absolute path on this host",
                spec.executable
            );
        }
        p
    };
    let mut argv = vec![name];
    argv.extend(spec.arguments.iter().cloned());
    // A job that was checkpointed before restarts from its last image.
    let restore = match link.fetch_image().await {
        Ok(image) => image,
        Err(LinkError::Closed(why)) => bail!("lost the shadow: {why}"),
        Err(e) => return Err(anyhow::Error::new(e).context("asking for the job's image")),
    };
    if restore.is_some() {
        info!("restarting from the last checkpoint");
    }
    let launch = JobLaunch {
        program,
        argv,
        env: spec.environment.clone(),
        scratch: args.scratch.clone(),
        root: spec.initialdir.clone(),
        stdin: attached.stdin,
        stdout: attached.stdout,
        stderr: attached.stderr,
        shim: args.shim.clone(),
        restore,
        control: Some(control),
        checkpoint_interval: starter::job::checkpoint_interval(&spec),
    };
    let limits = starter::sandbox::Limits::from_spec(&spec);
    // From here on a lost link is resumed within the job's lease.
    link.started(0)
        .await
        .map_err(|e| anyhow::Error::new(e).context("telling the shadow the job starts"))?;
    let (status, usage) = run_job_limited(launch, limits, link.backend())
        .await
        .context("running the job")?;
    Ok((status, usage))
}

/// The executable's file name: `argv[0]`, and its name in the scratch directory.
fn exec_name(executable: &str) -> anyhow::Result<String> {
    match Path::new(executable).file_name().and_then(|n| n.to_str()) {
        Some(n) if n != starter::job::SOCK_NAME => Ok(n.to_string()),
        _ => bail!("the executable `{executable}` has no usable file name"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Handle;
    use proto::fileop::FileReply;
    use proto::frame::{MAX_FRAME, read_frame_async, write_frame_async};
    use proto::job::{ExitStatus, JobSpec};
    use proto::shadow::{FromShadow, ToShadow};
    use proto::tls::{Identity, init_ca, issue};
    use std::collections::BTreeMap;
    use tokio::net::TcpListener;

    fn spec(executable: &str, transfer: bool, arguments: &[&str]) -> JobSpec {
        JobSpec {
            executable: executable.into(),
            transfer_executable: transfer,
            arguments: arguments.iter().map(|s| s.to_string()).collect(),
            input: None,
            output: Some("out".into()),
            error: Some("err".into()),
            initialdir: "/home/ann/run".into(),
            environment: vec![("GREETING".into(), "hello".into())],
            requirements: None,
            rank: None,
            request_cpus: 1,
            request_memory_mb: 0,
            request_disk_mb: 0,
            max_retries: 0,
            attributes: Default::default(),
        }
    }

    /// What the fake shadow saw: bytes written per handle and the last message.
    #[derive(Debug, Default)]
    struct Seen {
        written: BTreeMap<u64, Vec<u8>>,
        end: Option<ToShadow>,
        scratch_existed_at_end: bool,
    }

    /// Runs the starter against a fake shadow that attaches `spec` (stdout
    /// handle 1, stderr handle 2) and ships `exe` if asked.
    /// The shadow refuses the first `refusals` attaches ("no claim yet").
    async fn run_against(
        spec: JobSpec,
        exe: &'static [u8],
        refusals: usize,
    ) -> (anyhow::Result<()>, Seen, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let pki = d.path().join("pki");
        init_ca(&pki, "t").unwrap();
        issue(&pki, "submit", "schedd", &[]).unwrap();
        issue(&pki, "exec1", "ownerd", &[]).unwrap();
        let acc = Identity::load(&pki, "submit").unwrap().acceptor();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let scratch = d.path().join("scratch").join("4.2-c0ffee00");
        let scratch2 = scratch.clone();
        let shadow = tokio::spawn(async move {
            for _ in 0..refusals {
                let (s, _) = l.accept().await.unwrap();
                let mut s = acc.accept(s).await.unwrap();
                let _: ToShadow = read_frame_async(&mut s, MAX_FRAME).await.unwrap();
                let no = FromShadow::Refused {
                    reason: "no claim c0ffee00… for job 4.2".into(),
                };
                write_frame_async(&mut s, &no).await.unwrap();
            }
            let (s, _) = l.accept().await.unwrap();
            let mut s = acc.accept(s).await.unwrap();
            let mut seen = Seen::default();
            let ToShadow::Attach { job, .. } = read_frame_async(&mut s, MAX_FRAME).await.unwrap()
            else {
                panic!()
            };
            let a = Attached {
                job,
                spec,
                owner: "ann".into(),
                stdin: None,
                stdout: Some(Handle(1)),
                stderr: Some(Handle(2)),
                lease_secs: 60,
            };
            write_frame_async(&mut s, &FromShadow::Attached(a))
                .await
                .unwrap();
            loop {
                let m: ToShadow = read_frame_async(&mut s, MAX_FRAME).await.unwrap();
                let reply = match m {
                    ToShadow::FetchExecutable => FromShadow::ExecChunk {
                        data: exe.to_vec(),
                        last: true,
                    },
                    ToShadow::Write { h, data } => {
                        seen.written.entry(h.0).or_default().extend(data);
                        continue;
                    }
                    ToShadow::Call { id, .. } => FromShadow::Reply {
                        id,
                        reply: FileReply::Ok,
                    },
                    ToShadow::Started { .. }
                    | ToShadow::Ack { .. }
                    | ToShadow::CkptAbort { .. } => continue,
                    ToShadow::FetchImage => FromShadow::NoImage,
                    end @ (ToShadow::Exited { .. } | ToShadow::Failed { .. }) => {
                        seen.scratch_existed_at_end = scratch2.exists();
                        seen.end = Some(end);
                        write_frame_async(&mut s, &FromShadow::Done).await.unwrap();
                        return seen;
                    }
                    ToShadow::Attach { .. } => panic!("second attach"),
                    other => panic!("unexpected {other:?}"),
                };
                write_frame_async(&mut s, &reply).await.unwrap();
            }
        });
        let args = Args {
            pki,
            name: "exec1".into(),
            schedd_name: "submit".into(),
            schedd_addr: addr,
            claim: "c0ffee00".into(),
            job: JobId {
                cluster: 4,
                proc: 2,
            },
            scratch: scratch.clone(),
            shim: PathBuf::new(),
            checkpoint_full_every: 0,
        };
        let r = run(args, tokio::sync::mpsc::channel(1).1).await;
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), shadow)
            .await
            .unwrap()
            .unwrap();
        (r, seen, scratch)
    }

    fn text(seen: &Seen, h: u64) -> String {
        String::from_utf8_lossy(seen.written.get(&h).map_or(&[][..], |v| v)).into_owned()
    }

    #[tokio::test]
    async fn runs_a_local_program_with_remote_stdout_and_stderr() {
        let s = spec(
            "/bin/sh",
            false,
            &[
                "-c",
                "echo $GREETING from $0 in $(basename $PWD); echo oops >&2; exit 7",
            ],
        );
        let (r, seen, scratch) = run_against(s, b"", 0).await;
        r.unwrap();
        assert_eq!(text(&seen, 1), "hello from sh in tmp\n");
        assert_eq!(text(&seen, 2), "oops\n");
        assert!(
            matches!(
                seen.end,
                Some(ToShadow::Exited {
                    status: ExitStatus::Code(7),
                    ..
                })
            ),
            "{:?}",
            seen.end
        );
        assert!(!scratch.exists(), "scratch directory left behind");
        assert!(
            !seen.scratch_existed_at_end,
            "scratch directory removed before the exit is reported"
        );
    }

    #[tokio::test]
    async fn runs_a_shipped_executable_from_the_scratch_directory() {
        let s = spec("bin/greet.sh", true, &["world"]);
        // The schedd has not recorded the match for the first two attaches.
        let (r, seen, scratch) = run_against(
            s,
            b"#!/bin/sh\necho \"$(basename \"$0\") $1\"; ls -l \"$0\" | cut -c1-10\n",
            2,
        )
        .await;
        r.unwrap();
        assert_eq!(text(&seen, 1), "greet.sh world\n-rwxr-xr-x\n");
        assert!(
            matches!(
                seen.end,
                Some(ToShadow::Exited {
                    status: ExitStatus::Code(0),
                    ..
                })
            ),
            "{:?}",
            seen.end
        );
        assert!(!scratch.exists());
    }

    #[tokio::test]
    async fn a_missing_program_is_reported_as_failed() {
        let (r, seen, scratch) = run_against(spec("/nonexistent/prog", false, &[]), b"", 0).await;
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("/nonexistent/prog"), "{e}");
        match seen.end {
            Some(ToShadow::Failed { reason }) => {
                assert!(reason.contains("/nonexistent/prog"), "{reason}")
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(!scratch.exists());
    }

    /// Processes whose command line is exactly `argv`.
    fn processes(argv: &[&str]) -> usize {
        let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| *c == want)
            .count()
    }

    #[tokio::test]
    async fn losing_the_shadow_ends_the_job_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let pki = d.path().join("pki");
        init_ca(&pki, "t").unwrap();
        issue(&pki, "submit", "schedd", &[]).unwrap();
        issue(&pki, "exec1", "ownerd", &[]).unwrap();
        let acc = Identity::load(&pki, "submit").unwrap().acceptor();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let job_argv = ["sleep", "31.25"];
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = acc.accept(s).await.unwrap();
            let ToShadow::Attach { job, .. } = read_frame_async(&mut s, MAX_FRAME).await.unwrap()
            else {
                panic!()
            };
            let a = Attached {
                job,
                spec: spec("/bin/sleep", false, &["31.25"]),
                owner: "ann".into(),
                stdin: None,
                stdout: None,
                stderr: None,
                lease_secs: 60,
            };
            write_frame_async(&mut s, &FromShadow::Attached(a))
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            // The schedd goes away.
        });
        let scratch = d.path().join("scratch").join("4.2-c0ffee00");
        let args = Args {
            pki,
            name: "exec1".into(),
            schedd_name: "submit".into(),
            schedd_addr: addr,
            claim: "c0ffee00".into(),
            job: JobId {
                cluster: 4,
                proc: 2,
            },
            scratch: scratch.clone(),
            shim: PathBuf::new(),
            checkpoint_full_every: 0,
        };
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            run(args, tokio::sync::mpsc::channel(1).1),
        )
        .await
        .expect("the starter kept running without its shadow");
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("lost the shadow"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert!(!scratch.exists());
        // The job's process is gone too (killed, then reaped in a thread).
        for _ in 0..50 {
            if processes(&job_argv) == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the job's process outlived the starter's session");
    }

    #[test]
    fn exec_name_is_the_file_name() {
        assert_eq!(exec_name("/usr/bin/sort").unwrap(), "sort");
        assert_eq!(exec_name("prog").unwrap(), "prog");
        assert!(exec_name("/").is_err());
        assert!(exec_name("..").is_err());
        assert!(exec_name(".roost.sock").is_err());
    }

    /// The host pid of the process whose command line is exactly `argv`.
    fn pid_of(argv: &[&str]) -> Option<u32> {
        let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            (std::fs::read(e.path().join("cmdline")).ok()? == want).then_some(pid)
        })
    }

    /// The process state letter (`S`, `R`, `T`, ...) from /proc/PID/stat.
    fn proc_state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    /// The owner's side as roost-ownerd runs it (activity watcher and
    /// policy machine), driving this starter in-process: a touch of the
    /// activity file stops the job's processes; idling resumes them; a
    /// vacate ends the job and reports `Vacated`.
    #[tokio::test]
    async fn touching_the_activity_file_stops_the_job_and_idling_resumes_it() {
        use starter::policy_machine::{PolicyMachine, Step};
        let d = tempfile::tempdir().unwrap();
        let pki = d.path().join("pki");
        init_ca(&pki, "t").unwrap();
        issue(&pki, "submit", "schedd", &[]).unwrap();
        issue(&pki, "exec1", "ownerd", &[]).unwrap();
        let acc = Identity::load(&pki, "submit").unwrap().acceptor();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let job_argv = ["sleep", "31.7"];
        let shadow = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = acc.accept(s).await.unwrap();
            let ToShadow::Attach { job, .. } = read_frame_async(&mut s, MAX_FRAME).await.unwrap()
            else {
                panic!()
            };
            let a = Attached {
                job,
                spec: spec("/bin/sleep", false, &["31.7"]),
                owner: "ann".into(),
                stdin: None,
                stdout: None,
                stderr: None,
                lease_secs: 60,
            };
            write_frame_async(&mut s, &FromShadow::Attached(a))
                .await
                .unwrap();
            let mut seen = Vec::new();
            loop {
                let m: ToShadow = read_frame_async(&mut s, MAX_FRAME).await.unwrap();
                match m {
                    ToShadow::Started { .. } | ToShadow::Ack { .. } => {}
                    ToShadow::FetchImage => write_frame_async(&mut s, &FromShadow::NoImage)
                        .await
                        .unwrap(),
                    ToShadow::CkptAbort { reason } => {
                        seen.push(format!("not checkpointed: {reason}"))
                    }
                    ToShadow::Suspended => seen.push("suspended".to_string()),
                    ToShadow::Continued => seen.push("continued".to_string()),
                    ToShadow::Vacated {
                        reason,
                        checkpointed,
                    } => {
                        seen.push(format!("vacated {checkpointed} {reason}"));
                        write_frame_async(&mut s, &FromShadow::Done).await.unwrap();
                        return seen;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        let scratch = d.path().join("scratch").join("4.2-c0ffee00");
        let args = Args {
            pki,
            name: "exec1".into(),
            schedd_name: "submit".into(),
            schedd_addr: addr,
            claim: "c0ffee00".into(),
            job: JobId {
                cluster: 4,
                proc: 2,
            },
            scratch: scratch.clone(),
            shim: PathBuf::new(),
            checkpoint_full_every: 0,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let activity_file = d.path().join("activity");
        let owner = async {
            let policy = starter::ownerd::idle_policy(std::time::Duration::from_secs(1));
            let mut activity = starter::ownerd::watch_activity(
                activity_file.clone(),
                false,
                std::time::Duration::from_secs(3600),
            );
            let now = || policies::expr::now();
            let mut machine = PolicyMachine::new(now());
            machine.busy(now());
            let ad = |last: Option<std::time::SystemTime>| {
                let mut ad = policies::Ad::new();
                let idle = last.map_or(i64::MAX / 2, |t| {
                    t.elapsed().map_or(0, |d| d.as_secs() as i64)
                });
                ad.set("KeyboardIdle", idle);
                ad
            };
            let job = policies::Ad::new();
            let mut pid = None;
            for _ in 0..250 {
                pid = pid_of(&job_argv);
                if pid.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let pid = pid.expect("the job did not start");
            let mut latencies = Vec::new();
            for round in 0..3 {
                assert_eq!(
                    machine.running(&policy, &ad(*activity.borrow()), &job, now()),
                    None
                );
                let f = std::fs::File::create(&activity_file).unwrap();
                f.set_modified(std::time::SystemTime::now()).unwrap();
                drop(f);
                let touched = std::time::Instant::now();
                // The ownerd's loop: evaluate on every activity event.
                loop {
                    activity.changed().await.unwrap();
                    let last = *activity.borrow_and_update();
                    match machine.running(&policy, &ad(last), &job, now()) {
                        Some(Step::Suspend) => break,
                        None => continue,
                        other => panic!("round {round}: {other:?}"),
                    }
                }
                tx.send(Control::Suspend).await.unwrap();
                while proc_state(pid) != Some('T') {
                    assert!(
                        touched.elapsed() < std::time::Duration::from_secs(5),
                        "not stopped after 5 s"
                    );
                    tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                }
                let took = touched.elapsed();
                println!("round {round}: activity touched -> job stopped in {took:?}");
                latencies.push(took);
                // Idle for a second: the policy continues the job.
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    match machine.running(&policy, &ad(*activity.borrow()), &job, now()) {
                        Some(Step::Continue) => break,
                        None => continue,
                        other => panic!("round {round}: {other:?}"),
                    }
                }
                tx.send(Control::Continue).await.unwrap();
                let t = std::time::Instant::now();
                while proc_state(pid) == Some('T') {
                    assert!(
                        t.elapsed() < std::time::Duration::from_secs(5),
                        "never continued"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
            latencies.sort();
            println!("median activity -> SIGSTOP: {:?}", latencies[1]);
            match machine.preempt("preempted by job 9.0 of bob", now()) {
                Some(Step::Vacate(reason)) => tx
                    .send(Control::Vacate {
                        reason,
                        max_secs: None,
                    })
                    .await
                    .unwrap(),
                other => panic!("{other:?}"),
            }
            pid
        };
        let (r, pid) = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            tokio::join!(run(args, rx), owner)
        })
        .await
        .expect("the starter did not finish");
        r.unwrap();
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), shadow)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            seen,
            [
                "suspended",
                "continued",
                "suspended",
                "continued",
                "suspended",
                "continued",
                "not checkpointed: the job runs without the shim",
                "vacated false preempted by job 9.0 of bob"
            ]
        );
        assert!(!scratch.exists());
        for _ in 0..100 {
            if proc_state(pid).is_none() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the vacated job's process is still there");
    }

    /// What a checkpointing fake shadow saw in one session.
    #[derive(Debug, Default)]
    struct CkptSeen {
        image: Vec<u8>,
        commits: u32,
        end: Option<ToShadow>,
    }

    /// One starter session for `spec` against a fake shadow that keeps
    /// checkpoint images and hands out `image` on `FetchImage`.
    async fn ckpt_session(
        pki: &Path,
        spec: JobSpec,
        image: Option<Vec<u8>>,
        scratch: PathBuf,
        commands: tokio::sync::mpsc::Receiver<Control>,
    ) -> (anyhow::Result<()>, CkptSeen) {
        let acc = Identity::load(pki, "submit").unwrap().acceptor();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let shadow = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = acc.accept(s).await.unwrap();
            let ToShadow::Attach { job, .. } = read_frame_async(&mut s, MAX_FRAME).await.unwrap()
            else {
                panic!()
            };
            let a = Attached {
                job,
                spec,
                owner: "ann".into(),
                stdin: None,
                stdout: None,
                stderr: None,
                lease_secs: 60,
            };
            write_frame_async(&mut s, &FromShadow::Attached(a))
                .await
                .unwrap();
            let mut seen = CkptSeen::default();
            let mut incoming = Vec::new();
            loop {
                let m: ToShadow = read_frame_async(&mut s, MAX_FRAME).await.unwrap();
                let reply = match m {
                    ToShadow::FetchImage => match &image {
                        None => FromShadow::NoImage,
                        Some(img) => {
                            let pieces: Vec<&[u8]> = img.chunks(64 << 10).collect();
                            for (i, p) in pieces.iter().enumerate() {
                                let chunk = FromShadow::ImageChunk {
                                    data: p.to_vec(),
                                    last: i + 1 == pieces.len(),
                                };
                                write_frame_async(&mut s, &chunk).await.unwrap();
                            }
                            continue;
                        }
                    },
                    ToShadow::CkptBegin { .. } => {
                        incoming.clear();
                        continue;
                    }
                    ToShadow::CkptChunk { data } => {
                        incoming.extend(data);
                        continue;
                    }
                    ToShadow::CkptEnd { .. } => {
                        seen.image = std::mem::take(&mut incoming);
                        seen.commits += 1;
                        FromShadow::CkptCommitted {
                            bytes: seen.image.len() as u64,
                        }
                    }
                    ToShadow::Call { id, .. } => FromShadow::Reply {
                        id,
                        reply: FileReply::Ok,
                    },
                    ToShadow::Started { .. } | ToShadow::Ack { .. } | ToShadow::Write { .. } => {
                        continue;
                    }
                    end @ (ToShadow::Exited { .. }
                    | ToShadow::Failed { .. }
                    | ToShadow::Vacated { .. }) => {
                        seen.end = Some(end);
                        write_frame_async(&mut s, &FromShadow::Done).await.unwrap();
                        return seen;
                    }
                    other => panic!("unexpected {other:?}"),
                };
                write_frame_async(&mut s, &reply).await.unwrap();
            }
        });
        let args = Args {
            pki: pki.to_path_buf(),
            name: "exec1".into(),
            schedd_name: "submit".into(),
            schedd_addr: addr,
            claim: "c0ffee00".into(),
            job: JobId {
                cluster: 4,
                proc: 2,
            },
            scratch,
            shim: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/libroost_shim.so"),
            checkpoint_full_every: 0,
        };
        let r = run(args, commands).await;
        let seen = tokio::time::timeout(std::time::Duration::from_secs(30), shadow)
            .await
            .unwrap()
            .unwrap();
        (r, seen)
    }

    /// A vacate checkpoints the job and reports `Vacated { checkpointed:
    /// true }`; the next starter fetches the image and the job goes on
    /// from where it was (it does not start over).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vacated_job_is_checkpointed_and_the_next_starter_resumes_it() {
        let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/libroost_shim.so");
        if !shim.is_file() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "no shim");
            eprintln!("SKIPPED: build the shim with `cargo build -p syscall-shim`");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let pki = d.path().join("pki");
        init_ca(&pki, "t").unwrap();
        issue(&pki, "submit", "schedd", &[]).unwrap();
        issue(&pki, "exec1", "ownerd", &[]).unwrap();
        let job_argv = ["sleep", "4.25"];
        let job = || spec("/bin/sleep", false, &["4.25"]);

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let owner = async {
            for _ in 0..250 {
                if pid_of(&job_argv).is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            let reason = "the owner is back".to_string();
            tx.send(Control::Vacate {
                reason,
                max_secs: None,
            })
            .await
            .unwrap();
        };
        let scratch1 = d.path().join("scratch").join("4.2-1");
        let ((r, seen), ()) =
            tokio::join!(ckpt_session(&pki, job(), None, scratch1.clone(), rx), owner);
        r.unwrap();
        assert_eq!(seen.commits, 1);
        assert_eq!(
            seen.end,
            Some(ToShadow::Vacated {
                reason: "the owner is back".into(),
                checkpointed: true
            })
        );
        let raw = zstd::decode_all(&seen.image[..]).unwrap();
        assert_eq!(&raw[..8], &proto::ckpt::MAGIC);
        assert!(!scratch1.exists());
        assert!(pid_of(&job_argv).is_none(), "the vacated job is gone");

        let t = std::time::Instant::now();
        let scratch2 = d.path().join("scratch").join("4.2-2");
        let (r, seen2) = ckpt_session(
            &pki,
            job(),
            Some(seen.image),
            scratch2.clone(),
            tokio::sync::mpsc::channel(1).1,
        )
        .await;
        r.unwrap();
        assert!(
            matches!(
                seen2.end,
                Some(ToShadow::Exited {
                    status: ExitStatus::Code(0),
                    ..
                })
            ),
            "{:?}",
            seen2.end
        );
        // About 2.75 s were left to sleep, not 4.25.
        assert!(
            t.elapsed() < std::time::Duration::from_millis(3900),
            "{:?}",
            t.elapsed()
        );
        assert!(!scratch2.exists());
    }
}
