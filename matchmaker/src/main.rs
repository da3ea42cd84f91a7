//! `roost-matchmaker --pki DIR --name NAME --listen IP:PORT [--cycle-secs 2]
//! [--half-life-secs 86400] [--preempt-rank true|false]`
//!
//! The same port serves the pool page and `/metrics` to HTTPS clients
//! (ALPN `http/1.1`) that bring the web token (`DIR/web-token`) or a pool
//! certificate.

use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

/// The roost matchmaker: pairs idle jobs with idle machines.
#[derive(clap::Parser, Debug)]
#[command(name = "roost-matchmaker", version)]
struct Args {
    /// Read settings from this TOML file: keys are the long flags in snake
    /// case (see dist/config/roost-matchmaker.toml); flags given here win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory with ca.pem, NAME.pem and NAME.key.
    #[arg(long)]
    pki: PathBuf,
    /// This matchmaker's name (its certificate's name).
    #[arg(long)]
    name: String,
    /// Address to listen on for ownerds, schedds and users.
    #[arg(long)]
    listen: String,
    /// Seconds between negotiation cycles (cycles also run on new jobs and freed machines).
    #[arg(long, default_value_t = 2.0)]
    cycle_secs: f64,
    /// Half-life of each user's accumulated claimed time (fair share).
    #[arg(long, default_value_t = 86_400.0)]
    half_life_secs: f64,
    /// Preempt a running job for an idle one the machine ranks strictly higher.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    preempt_rank: bool,
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
    let args: Args = cliutil::parse_daemon();
    if !(args.cycle_secs.is_finite() && args.cycle_secs > 0.0) {
        anyhow::bail!(
            "--cycle-secs must be a positive number of seconds, not {}",
            args.cycle_secs
        );
    }
    if !(args.half_life_secs.is_finite() && args.half_life_secs > 0.0) {
        anyhow::bail!(
            "--half-life-secs must be a positive number of seconds, not {}",
            args.half_life_secs
        );
    }
    let identity = proto::tls::Identity::load(&args.pki, &args.name).with_context(|| {
        format!(
            "loading the certificate of `{}` from {}",
            args.name,
            args.pki.display()
        )
    })?;
    // The pool page and /metrics, for HTTPS clients on the same port.
    let web = proto::web::Web::load(&args.pki, &args.name).with_context(|| {
        format!(
            "loading the HTTPS set-up of `{}` from {}",
            args.name,
            args.pki.display()
        )
    })?;
    if web.token.is_none() {
        tracing::warn!(
            "no web token in {}/{}: the pool page needs a pool certificate",
            args.pki.display(),
            proto::web::TOKEN_FILE
        );
    }
    let mm = matchmaker::Matchmaker::bind(
        &identity,
        &args.listen,
        Duration::from_secs_f64(args.cycle_secs),
    )
    .await
    .context("starting the matchmaker")?
    .settings(matchmaker::Settings {
        cycle: Duration::from_secs_f64(args.cycle_secs),
        half_life: Duration::from_secs_f64(args.half_life_secs),
        preempt_rank: args.preempt_rank,
    })
    .web(web);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        }
    };
    mm.run(shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// dist/config/roost-matchmaker.toml shows every built-in default.
    #[test]
    fn the_shipped_config_says_what_the_defaults_are() {
        cliutil::assert_shipped::<super::Args>();
    }
}
