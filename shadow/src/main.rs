//! roost-schedd: the job queue and the shadows (see the `shadow` library).
#![forbid(unsafe_code)]

use anyhow::Context;
use std::path::PathBuf;

/// The submit host's daemon: the persistent job queue, the CLI socket
/// (STATEDIR/schedd.sock) and one shadow per running job.
#[derive(Debug, clap::Parser)]
#[command(name = "roost-schedd", version)]
struct Args {
    /// Read settings from this TOML file: keys are the long flags in snake
    /// case (see dist/config/roost-schedd.toml); flags given here win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory with the pool CA and this schedd's certificate and key.
    #[arg(long, value_name = "DIR")]
    pki: PathBuf,
    /// This schedd's name (its certificate's name).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// State directory: schedd.sock (0600), queue.db and ckpt/ (checkpoint images).
    #[arg(long, value_name = "STATEDIR")]
    dir: PathBuf,
    /// Where starters reach the shadows (TLS).
    #[arg(long, value_name = "IP:PORT")]
    listen: String,
    /// The address sent to the matchmaker, if not --listen.
    #[arg(long, value_name = "IP:PORT")]
    advertise: Option<String>,
    /// The matchmaker's address.
    #[arg(long, value_name = "IP:PORT")]
    matchmaker: String,
    /// The matchmaker's certificate name.
    #[arg(long, value_name = "NAME")]
    matchmaker_name: String,
    /// Seconds a match may wait for its starter before the claim is given
    /// back and the job matched again.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    claim_timeout_secs: u64,
    /// Seconds a running job is kept while its starter is out of reach
    /// (the starter keeps it suspended as long), for jobs whose job file
    /// sets no `lease`; then the job goes back to the queue.
    #[arg(long, value_name = "SECS", default_value_t = 1200)]
    job_lease_secs: u64,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let a: Args = cliutil::parse_daemon();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if a.log_json {
        sub.json().init();
    } else {
        sub.init();
    }
    // HTTPS clients on the shadow port get /metrics (pool certificate or web token).
    let web = proto::web::Web::load(&a.pki, &a.name).with_context(|| {
        format!(
            "loading the HTTPS set-up of `{}` from {}",
            a.name,
            a.pki.display()
        )
    })?;
    shadow::metrics::enable_web(web);
    let cfg = shadow::Config {
        pki: a.pki,
        name: a.name,
        dir: a.dir,
        listen: a.listen,
        advertise: a.advertise,
        matchmaker: a.matchmaker,
        matchmaker_name: a.matchmaker_name,
        claim_timeout: std::time::Duration::from_secs(a.claim_timeout_secs),
        job_lease: std::time::Duration::from_secs(a.job_lease_secs),
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let bound = shadow::Schedd::bind(cfg.clone())
            .await
            .with_context(|| format!("starting the schedd in {}", cfg.dir.display()))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        bound.run(shutdown).await.context("running the schedd")
    })
}

#[cfg(test)]
mod tests {
    /// dist/config/roost-schedd.toml shows every built-in default.
    #[test]
    fn the_shipped_config_says_what_the_defaults_are() {
        cliutil::assert_shipped::<super::Args>();
    }
}
