//! Asking the matchmaker for its machines (`ToMatchmaker::Status`) and
//! why a job does not run (`ToMatchmaker::Why`), over mutual TLS with the
//! pool's `user` certificate.

use crate::pool::{PoolConfig, PoolDir, USER};
use anyhow::{Context, Result, bail};
use proto::frame::{MAX_FRAME, read_frame_async, write_frame_async};
use proto::pool::{FromMatchmaker, JobAd, MachineAd, ToMatchmaker, WhyReport};
use proto::tls::{Identity, server_name};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The CLI's TLS identity and where the matchmaker is.
pub struct Matchmaker {
    identity: Identity,
    name: String,
    addr: String,
    rt: tokio::runtime::Runtime,
}

impl Matchmaker {
    pub fn new(pool: &PoolDir, cfg: &PoolConfig) -> Result<Matchmaker> {
        let pki = pool.pki();
        let identity = Identity::load(&pki, USER).with_context(|| {
            format!(
                "cannot load the `{USER}` certificate from {}",
                pki.display()
            )
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Matchmaker {
            identity,
            name: cfg.matchmaker.name.clone(),
            addr: cfg.matchmaker.addr.clone(),
            rt,
        })
    }

    /// Every machine the matchmaker knows, as it last heard of it.
    pub fn machines(&self, timeout: Duration) -> Result<Vec<MachineAd>> {
        match self.ask(&ToMatchmaker::Status, "its machines", timeout)? {
            FromMatchmaker::Machines(m) => Ok(m),
            FromMatchmaker::Error { message } => bail!(
                "asking the matchmaker {} at {} for its machines: it refused: {message}",
                self.name,
                self.addr
            ),
            other => bail!("the matchmaker answered {other:?} instead of its machines"),
        }
    }

    /// The matchmaker's explanation of `job`: `Ok(Err(message))` when it
    /// answers with an error (it cannot explain jobs, or not this one).
    pub fn why(&self, job: JobAd, timeout: Duration) -> Result<Result<WhyReport, String>> {
        match self.ask(
            &ToMatchmaker::Why { job },
            "why the job does not run",
            timeout,
        )? {
            FromMatchmaker::Why(r) => Ok(Ok(r)),
            FromMatchmaker::Error { message } => Ok(Err(message)),
            other => bail!("the matchmaker answered {other:?} instead of an explanation"),
        }
    }

    /// Sends one message on a new connection and reads one reply.
    fn ask(&self, msg: &ToMatchmaker, what: &str, timeout: Duration) -> Result<FromMatchmaker> {
        let ctx = || {
            format!(
                "asking the matchmaker {} at {} for {what}",
                self.name, self.addr
            )
        };
        self.rt
            .block_on(async { tokio::time::timeout(timeout, self.exchange(msg)).await })
            .map_err(|_| anyhow::anyhow!("no answer within {} s", timeout.as_secs_f64()))
            .and_then(|r| r)
            .with_context(ctx)
    }

    async fn exchange(&self, msg: &ToMatchmaker) -> Result<FromMatchmaker> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .context("cannot connect (is the pool up?)")?;
        let name = server_name(&self.name)?;
        let mut tls = self
            .identity
            .connector()
            .connect(name, tcp)
            .await
            .context("TLS handshake failed")?;
        write_frame_async(&mut tls, msg).await?;
        let reply: FromMatchmaker = read_frame_async(&mut tls, MAX_FRAME).await?;
        // close_notify, so the matchmaker sees a clean end; its absence changes nothing here.
        let _ = tls.shutdown().await;
        Ok(reply)
    }
}
