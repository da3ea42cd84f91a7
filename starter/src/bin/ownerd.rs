//! `roost-ownerd --pki DIR --name NAME --dir STATEDIR --matchmaker IP:PORT
//! --matchmaker-name NAME [--activity-file FILE] [--idle-secs N | --policy FILE]
//! [--devices true|false] [--starter PATH] [--shim PATH]`

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// The roost owner daemon: offers this machine to the pool while its owner is away.
#[derive(Parser, Debug)]
#[command(name = "roost-ownerd", version)]
struct Args {
    /// Directory with ca.pem, NAME.pem and NAME.key.
    #[arg(long)]
    pki: PathBuf,
    /// This host's name (its certificate's name).
    #[arg(long)]
    name: String,
    /// State directory; scratch directories go under DIR/scratch.
    #[arg(long)]
    dir: PathBuf,
    /// The matchmaker's address.
    #[arg(long)]
    matchmaker: String,
    /// The matchmaker's certificate name.
    #[arg(long)]
    matchmaker_name: String,
    /// A file whose access or modification counts as the owner's activity
    /// [default: DIR/activity].
    #[arg(long)]
    activity_file: Option<PathBuf>,
    /// The owner's policy (TOML) [default: the desktop policy].
    #[arg(long, conflicts_with = "idle_secs")]
    policy: Option<PathBuf>,
    /// The desktop policy with this many idle seconds instead of 15 minutes
    /// to start and 5 to continue; any activity within them suspends.
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Count the use of terminals (/dev/tty*, /dev/pts/*) and input devices
    /// (/dev/input/*) as the owner's activity too.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    devices: bool,
    /// The starter program [default: roost-starter next to this program].
    #[arg(long)]
    starter: Option<PathBuf>,
    /// The shim library [default: libroost_shim.so next to this program].
    #[arg(long)]
    shim: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let policy = match (&args.policy, args.idle_secs) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading the policy file {}", file.display()))?;
            policies::policy::OwnerPolicy::parse(&file.display().to_string(), &text)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("the owner's policy is not valid; not starting")?
        }
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
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let cfg = starter::ownerd::Config {
        pki: std::path::absolute(&args.pki)
            .with_context(|| format!("resolving {}", args.pki.display()))?,
        name: args.name,
        activity_file: args.activity_file.unwrap_or_else(|| dir.join("activity")),
        dir,
        matchmaker: args.matchmaker,
        matchmaker_name: args.matchmaker_name,
        devices: args.devices,
        policy,
        starter,
        shim,
        release_grace: starter::ownerd::RELEASE_GRACE,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        }
    };
    starter::ownerd::run(cfg, shutdown)
        .await
        .context("roost-ownerd")?;
    Ok(())
}
