//! Loopback baselines: a 1-byte ping-pong and a bulk one-way transfer, over
//! raw TCP and over TLS 1.3 (rustls with the pool's configuration from
//! `proto::tls`, certificates from a throwaway CA).
//!
//! Each side runs on its own thread; the TLS sides each run a
//! current-thread tokio runtime, as the starter does. Ping-pongs take the
//! cores to pin the client and the server to: on a VM a wake-up across
//! cores costs tens of µs more than one on the same core, so an unpinned
//! ping-pong flips between the two figures from run to run.

use anyhow::{Context, Result, bail};
use proto::tls::{Identity, init_ca, issue, server_name};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes per write in the bulk transfers.
const BULK_CHUNK: usize = 1 << 20;

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Core numbers for a ping-pong's client and server threads.
#[derive(Clone, Copy)]
pub struct Cores {
    pub client: usize,
    pub server: usize,
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> std::io::Result<()> {
    let mut set = rustix::process::CpuSet::new();
    set.set(cpu);
    rustix::process::sched_setaffinity(None, &set)?;
    Ok(())
}

/// Runs `f` on a new thread pinned to `cpu`.
fn on_core<T: Send + 'static>(
    cpu: usize,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    std::thread::spawn(move || {
        pin(cpu).with_context(|| format!("pinning a thread to cpu {cpu}"))?;
        f()
    })
}

/// Median round trip of a 1-byte TCP ping-pong over loopback, in µs.
pub fn tcp_pingpong_us(calls: usize, cores: Cores) -> Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let srv = on_core(cores.server, move || -> Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let cli = on_core(cores.client, move || -> Result<Vec<f64>> {
        let mut c = TcpStream::connect(addr)?;
        c.set_nodelay(true)?;
        let mut lat = Vec::with_capacity(calls);
        let mut b = [7u8; 1];
        for _ in 0..calls {
            let t0 = Instant::now();
            c.write_all(&b)?;
            c.read_exact(&mut b)?;
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        Ok(lat)
    });
    let lat = cli.join().expect("ping-pong client thread")?;
    srv.join().expect("ping-pong server thread")?;
    Ok(median(lat))
}

/// Median throughput of `bytes` over one loopback TCP connection, in MB/s.
pub fn tcp_bulk_mbs(bytes: usize, runs: usize) -> Result<f64> {
    let mut v = vec![];
    for _ in 0..runs {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let srv = std::thread::spawn(move || -> std::io::Result<usize> {
            let (mut s, _) = l.accept()?;
            let mut buf = vec![0u8; BULK_CHUNK];
            let mut total = 0;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(total);
                }
                total += n;
            }
        });
        let buf = vec![1u8; BULK_CHUNK];
        let t0 = Instant::now();
        let mut c = TcpStream::connect(addr)?;
        let mut sent = 0;
        while sent < bytes {
            c.write_all(&buf)?;
            sent += buf.len();
        }
        drop(c);
        let got = srv.join().expect("bulk server thread")?;
        let secs = t0.elapsed().as_secs_f64();
        if got != sent {
            bail!("loopback lost bytes: sent {sent}, got {got}");
        }
        v.push(sent as f64 / secs / 1e6);
    }
    Ok(median(v))
}

/// Two identities from a fresh CA in `dir`: (server, client).
pub fn tls_identities(dir: &Path) -> Result<(Identity, Identity)> {
    init_ca(dir, "bench").context("making the bench CA")?;
    issue(dir, "server", "schedd", &[]).context("issuing the server certificate")?;
    issue(dir, "client", "ownerd", &[]).context("issuing the client certificate")?;
    Ok((
        Identity::load(dir, "server")?,
        Identity::load(dir, "client")?,
    ))
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A TLS server on its own thread: accepts one connection and runs `serve` on it.
fn tls_server<F, Fut, T>(
    ids: &(Identity, Identity),
    core: Option<usize>,
    serve: F,
) -> Result<(std::net::SocketAddr, std::thread::JoinHandle<Result<T>>)>
where
    F: FnOnce(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
    T: Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0")?;
    l.set_nonblocking(true)?;
    let addr = l.local_addr()?;
    let acc = ids.0.acceptor();
    let h = std::thread::spawn(move || -> Result<T> {
        if let Some(cpu) = core {
            pin(cpu).with_context(|| format!("pinning a thread to cpu {cpu}"))?;
        }
        rt()?.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l)?;
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            let t = acc.accept(s).await.context("TLS accept")?;
            serve(t).await
        })
    });
    Ok((addr, h))
}

/// A connected TLS client stream to `addr`.
async fn tls_client(
    ids: &(Identity, Identity),
    addr: std::net::SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    ids.1
        .connector()
        .connect(server_name("server")?, s)
        .await
        .context("TLS connect")
}

/// Median round trip of a 1-byte ping-pong over TLS 1.3 on loopback, in µs
/// (each side flushes its byte: one TLS record each way).
pub fn tls_pingpong_us(ids: &(Identity, Identity), calls: usize, cores: Cores) -> Result<f64> {
    let (addr, srv) = tls_server(ids, Some(cores.server), |mut t| async move {
        let mut b = [0u8; 1];
        while t.read(&mut b).await? == 1 {
            t.write_all(&b).await?;
            t.flush().await?;
        }
        Ok(())
    })?;
    let ids = ids.clone();
    let cli = on_core(cores.client, move || {
        rt()?.block_on(async {
            let mut c = tls_client(&ids, addr).await?;
            let mut lat = Vec::with_capacity(calls);
            let mut b = [7u8; 1];
            for _ in 0..calls {
                let t0 = Instant::now();
                c.write_all(&b).await?;
                c.flush().await?;
                c.read_exact(&mut b).await?;
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            c.shutdown().await?;
            anyhow::Ok(lat)
        })
    });
    let lat = cli.join().expect("TLS ping-pong client thread")?;
    srv.join().expect("TLS ping-pong server thread")?;
    Ok(median(lat))
}

/// Median throughput of `bytes` over one TLS 1.3 loopback connection, in
/// MB/s (timed from the first byte, after the handshake).
pub fn tls_bulk_mbs(ids: &(Identity, Identity), bytes: usize, runs: usize) -> Result<f64> {
    let mut v = vec![];
    for _ in 0..runs {
        let (addr, srv) = tls_server(ids, None, |mut t| async move {
            let mut buf = vec![0u8; BULK_CHUNK];
            let mut total = 0usize;
            loop {
                let n = t.read(&mut buf).await?;
                if n == 0 {
                    t.shutdown().await?;
                    return Ok(total);
                }
                total += n;
            }
        })?;
        let (sent, secs) = rt()?.block_on(async {
            let mut c = tls_client(ids, addr).await?;
            let buf = vec![1u8; BULK_CHUNK];
            let t0 = Instant::now();
            let mut sent = 0;
            while sent < bytes {
                c.write_all(&buf).await?;
                sent += buf.len();
            }
            c.shutdown().await?;
            // Drain until the server closes: unread session tickets left in
            // our receive buffer would make our close a reset.
            let mut sink = [0u8; 4096];
            while c.read(&mut sink).await? > 0 {}
            anyhow::Ok((sent, t0))
        })?;
        let got = srv.join().expect("TLS bulk server thread")?;
        let secs = secs.elapsed().as_secs_f64();
        if got != sent {
            bail!("TLS loopback lost bytes: sent {sent}, got {got}");
        }
        v.push(sent as f64 / secs / 1e6);
    }
    Ok(median(v))
}
