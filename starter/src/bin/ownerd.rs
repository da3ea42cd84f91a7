//! `roost-ownerd --pki DIR --name NAME --dir STATEDIR --matchmaker IP:PORT
//! --matchmaker-name NAME [--activity-file FILE] [--idle-secs N | --policy FILE]
//! [--devices true|false] [--starter PATH] [--shim PATH] [--config FILE]
//! [--metrics-listen IP:PORT]`
//!
//! `roost-ownerd --check-policy FILE [--name NAME] [--dir DIR]
//! [--activity-file FILE] [--devices true|false]` prints how the policy
//! evaluates now against this machine and what a key press now would lead
//! to ([`starter::check_policy`]), and exits.

use anyhow::Context;
use starter::ownerd::{Observed, load_policy, machine_attrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The roost owner daemon: offers this machine to the pool while its owner is away.
#[derive(clap::Parser, Debug)]
#[command(name = "roost-ownerd", version, max_term_width = 100)]
struct Args {
    /// Read settings from this TOML file: keys are the long flags in snake
    /// case (see /usr/share/doc/roost/roost-ownerd.toml); flags given here win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory with ca.pem, NAME.pem and NAME.key.
    #[arg(long, value_name = "DIR", required_unless_present = "check_policy")]
    pki: Option<PathBuf>,
    /// This host's name (its certificate's name).
    #[arg(long, value_name = "NAME", required_unless_present = "check_policy")]
    name: Option<String>,
    /// State directory; scratch directories go under DIR/scratch.
    #[arg(long, value_name = "DIR", required_unless_present = "check_policy")]
    dir: Option<PathBuf>,
    /// The matchmaker's address.
    #[arg(long, value_name = "IP:PORT", required_unless_present = "check_policy")]
    matchmaker: Option<String>,
    /// The matchmaker's certificate name.
    #[arg(long, value_name = "NAME", required_unless_present = "check_policy")]
    matchmaker_name: Option<String>,
    /// A file whose access or modification counts as the owner's activity
    /// [default: DIR/activity].
    #[arg(long, value_name = "FILE")]
    activity_file: Option<PathBuf>,
    /// The owner's policy (TOML) [default: the desktop policy].
    #[arg(long, value_name = "FILE", conflicts_with = "idle_secs")]
    policy: Option<PathBuf>,
    /// The desktop policy with this many idle seconds instead of 15 minutes
    /// to start and 5 to continue; any activity within them suspends.
    #[arg(long, value_name = "SECS")]
    idle_secs: Option<u64>,
    /// Count the use of terminals (/dev/tty*, /dev/pts/*) and input devices
    /// (/dev/input/*) as the owner's activity too.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    devices: bool,
    /// The starter program [default: roost-starter next to this program].
    #[arg(long, value_name = "PATH")]
    starter: Option<PathBuf>,
    /// The shim library [default: libroost_shim.so next to this program].
    #[arg(long, value_name = "PATH")]
    shim: Option<PathBuf>,
    /// Serve `/metrics` over HTTPS here (IP:PORT; port 0 picks one); the
    /// address goes into the machine's ad as MetricsAddr.
    #[arg(long, value_name = "IP:PORT")]
    metrics_listen: Option<String>,
    /// Print how the policy FILE evaluates now against this machine (its
    /// ad from --name, --dir, --activity-file, --devices) and what would
    /// follow if the owner touched the keyboard now; then exit (status 1
    /// if the file is not valid, with the message the daemon would give).
    #[arg(long, value_name = "FILE", help_heading = cliutil::NOT_CONFIG)]
    check_policy: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Args = cliutil::parse_daemon();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roost-ownerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(file) = &args.check_policy {
        return check_policy(file, &args);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let policy = match (&args.policy, args.idle_secs) {
        (Some(file), _) => load_policy(file)?,
        (None, Some(n)) => starter::ownerd::idle_policy(Duration::from_secs(n)),
        (None, None) => policies::policy::OwnerPolicy::desktop(),
    };
    let here = || -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe().context("finding this program's path")?;
        Ok(exe.parent().map(PathBuf::from).unwrap_or_default())
    };
    let starter = match args.starter {
        Some(p) => p,
        None => here()?.join("roost-starter"),
    };
    let shim = match args.shim {
        Some(p) => p,
        None => here()?.join("libroost_shim.so"),
    };
    // clap makes these present unless --check-policy is given.
    let (Some(pki), Some(name), Some(dir), Some(matchmaker), Some(matchmaker_name)) = (
        args.pki,
        args.name,
        args.dir,
        args.matchmaker,
        args.matchmaker_name,
    ) else {
        anyhow::bail!("--pki, --name, --dir, --matchmaker and --matchmaker-name are required");
    };
    let dir = std::path::absolute(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    let cfg = starter::ownerd::Config {
        pki: std::path::absolute(&pki).with_context(|| format!("resolving {}", pki.display()))?,
        name,
        activity_file: args.activity_file.unwrap_or_else(|| dir.join("activity")),
        dir,
        matchmaker,
        matchmaker_name,
        devices: args.devices,
        policy,
        starter,
        shim,
        release_grace: starter::ownerd::RELEASE_GRACE,
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
            }
        };
        if let Some(listen) = &args.metrics_listen {
            serve_metrics(&cfg.pki, &cfg.name, listen).await?;
        }
        starter::ownerd::run(cfg, shutdown)
            .await
            .context("roost-ownerd")
    })
}

/// `--metrics-listen`: binds `listen` and serves `/metrics` there over
/// HTTPS (pool certificate or web token), in the background.
async fn serve_metrics(pki: &std::path::Path, name: &str, listen: &str) -> anyhow::Result<()> {
    let web = proto::web::Web::load(pki, name).with_context(|| {
        format!(
            "loading the HTTPS set-up of `{name}` from {}",
            pki.display()
        )
    })?;
    let l = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for /metrics"))?;
    let addr = l.local_addr().context("reading the /metrics address")?;
    tracing::info!(%addr, "serving /metrics");
    starter::metrics::set_addr(addr.to_string());
    tokio::spawn(proto::web::serve_metrics(
        l,
        web,
        starter::metrics::render,
        starter::metrics::rejected,
    ));
    Ok(())
}

/// `--check-policy FILE`: the report on stdout.
fn check_policy(file: &std::path::Path, args: &Args) -> anyhow::Result<()> {
    let policy = load_policy(file)?;
    let host = match &args.name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into()),
    };
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let activity_file = args
        .activity_file
        .clone()
        .unwrap_or_else(|| dir.join("activity"));
    let mut sources = vec![activity_file];
    if args.devices {
        sources.extend(starter::ownerd::device_files());
    }
    let machine = machine_attrs(&Observed {
        name: &host,
        dir: &dir,
        speed: starter::ownerd::measure_speed(),
        last_activity: starter::ownerd::newest_activity(&sources),
        since: starter::ownerd::boot_time(),
        job_load: 0.0,
        job: None,
    });
    let report = starter::check_policy::report(
        &file.display().to_string(),
        &policy,
        &machine,
        policies::expr::now(),
    );
    print!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// dist/config/roost-ownerd.toml shows every built-in default.
    #[test]
    fn the_shipped_config_says_what_the_defaults_are() {
        cliutil::assert_shipped::<super::Args>();
    }
}
