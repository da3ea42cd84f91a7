//! Asking the matchmaker for its machines (`ToMatchmaker::Status`) over
//! mutual TLS with the pool's `user` certificate.

use crate::pool::{PoolConfig, PoolDir, USER};
use anyhow::{Context, Result, bail};
use proto::frame::{MAX_FRAME, read_frame_async, write_frame_async};
use proto::pool::{FromMatchmaker, MachineAd, ToMatchmaker};
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
        let what = || {
            format!(
                "asking the matchmaker {} at {} for its machines",
                self.name, self.addr
            )
        };
        self.rt
            .block_on(async { tokio::time::timeout(timeout, self.status()).await })
            .map_err(|_| anyhow::anyhow!("no answer within {} s", timeout.as_secs_f64()))
            .and_then(|r| r)
            .with_context(what)
    }

    async fn status(&self) -> Result<Vec<MachineAd>> {
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
        write_frame_async(&mut tls, &ToMatchmaker::Status).await?;
        let reply: FromMatchmaker = read_frame_async(&mut tls, MAX_FRAME).await?;
        // close_notify, so the matchmaker sees a clean end; its absence changes nothing here.
        let _ = tls.shutdown().await;
        match reply {
            FromMatchmaker::Machines(m) => Ok(m),
            FromMatchmaker::Error { message } => bail!("the matchmaker refused: {message}"),
            other => bail!("the matchmaker answered {other:?} instead of its machines"),
        }
    }
}
