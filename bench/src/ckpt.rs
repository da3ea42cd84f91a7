//! Checkpoint and restart: `roost-bench --ckpt`.
//!
//! A C job (`bench/jobs/ckptheap.c`) fills a heap of N MiB (each page half
//! pseudo-random, half a repeated pattern) and then beats: it writes the
//! monotonic clock and a hash of its heap into a file every millisecond. It
//! runs under the release shim with ASLR off, and the bench plays the
//! starter's and the schedd's parts:
//!
//! - **capture**: signal 36, the shim streams its image into a Unix socket,
//!   the bench reads and drops it and acks (`proto::ckpt::ACK_COMMITTED`);
//! - **checkpoint**: the same image through zstd at the pool's level
//!   (`proto::ckpt::ZSTD_LEVEL`, as the starter
//!   does it), over a TLS 1.3 loopback connection set up beforehand (the
//!   pool's `proto::tls`, a throwaway CA), into a file on the other side,
//!   which fsyncs it, renames it and acks back; the job's ack follows;
//! - **restart**: a fresh process of the job with `ROOST_RESTORE_FD` reading
//!   the image, from a raw file and from the zstd file decompressed into a
//!   pipe (as the starter feeds it), timed from the spawn until the restored
//!   process beats with its heap's hash.
//!
//! - **incremental checkpoint**: after the job changed 1% of its heap pages
//!   (SIGUSR1), an increment over the last committed image (the signal's
//!   `sigqueue` value asks for it, as the starter does), the same way as a
//!   checkpoint; beside the full checkpoint's time of the same heap.
//!
//! Checkpoint times run from sending the signal (a `kill` process, ~1 ms)
//! to the ack. Baselines in the same run: loopback TCP and TLS throughput,
//! disk write + fsync, zstd at that level on the same data. With a built pool
//! (`--no-pool` skips it), the real thing is timed too: `roost checkpoint`
//! in a personal pool, `seconds` and `bytes` from the job's event log.

use crate::baseline::{self, median};
use anyhow::{Context, Result, bail};
use proto::ckpt::{
    ACK_COMMITTED, FdRecord, ImageHeader, KIND_INCREMENT, MAGIC, REFUSED, RF_DATA, Region,
    bitmap_words,
};
use proto::tls::Identity;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes per piece handed from the compressor to the network (the starter's `CHUNK`).
const CHUNK: usize = 1 << 20;
/// Longest wait for a job to fill its heap, send an image or beat again.
const PATIENCE: Duration = Duration::from_secs(120);

/// DMTCP's figures from CHECKPOINT.md: heap MiB, ckpt plain / gzip seconds,
/// image plain / gzip MiB, restart plain / gzip seconds.
const DMTCP: &[(usize, f64, f64, u32, u32, f64, f64)] = &[
    (64, 0.48, 1.79, 86, 36, 0.19, 0.68),
    (256, 0.77, 4.51, 278, 133, 0.28, 1.47),
    (1024, 2.03, 20.5, 1046, 523, 0.65, 6.15),
];

pub struct Opts {
    pub sizes: Vec<usize>,
    pub runs: usize,
    /// zstd worker threads (0: compress on the reading thread).
    pub workers: u32,
    /// Release binaries (`libroost_shim.so`, and the pool's if `pool`).
    pub bin: PathBuf,
    pub pool: bool,
    /// Replay MIST's migration over 10 Mb/s links.
    pub mist: bool,
}

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn mbs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// CLOCK_MONOTONIC in ns (the clock the job beats with).
fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The job's last beat: (monotonic ns, heap hash), if it beat yet.
fn beat(path: &Path) -> Option<(u64, u64)> {
    let b = std::fs::read(path).ok()?;
    if b.len() < 16 {
        return None;
    }
    let ns = u64::from_le_bytes(b[..8].try_into().ok()?);
    let h = u64::from_le_bytes(b[8..16].try_into().ok()?);
    (ns > 0).then_some((ns, h))
}

/// Waits until the job beats after `after` (ns) with a good hash
/// (`want`, or any nonzero one); returns that beat.
fn await_beat(path: &Path, after: u64, want: Option<u64>, child: &mut Child) -> Result<(u64, u64)> {
    let t0 = Instant::now();
    loop {
        if let Some((ns, h)) = beat(path)
            && ns > after
            && h != 0
            && want.is_none_or(|w| w == h)
        {
            return Ok((ns, h));
        }
        if let Some(st) = child.try_wait()? {
            bail!("the job ended ({st}) instead of beating");
        }
        if t0.elapsed() > PATIENCE {
            bail!("the job did not beat within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// How a job process starts.
enum Start<'a> {
    Fresh,
    /// Restart, reading the image from this file.
    File(&'a Path),
    /// Restart, reading the image from the process's stdin (a pipe).
    Pipe,
}

/// Starts the job in `dir` with ASLR off, the shim preloaded only into it.
fn spawn(exe: &Path, shim: &Path, dir: &Path, heap_mib: usize, how: Start) -> Result<Child> {
    let (script, img): (&str, Option<&Path>) = match how {
        Start::Fresh => (
            r#"s=$1; shift; exec setarch -R env LD_PRELOAD="$s" "$@""#,
            None,
        ),
        Start::File(p) => (
            r#"s=$1; i=$2; shift 2; exec 1000<"$i" setarch -R env LD_PRELOAD="$s" ROOST_RESTORE_FD=1000 "$@""#,
            Some(p),
        ),
        Start::Pipe => (
            r#"s=$1; shift; exec 1000<&0 0</dev/null setarch -R env LD_PRELOAD="$s" ROOST_RESTORE_FD=1000 "$@""#,
            None,
        ),
    };
    // Fds the bench inherited without close-on-exec would be in the image
    // (and a pipe among them refused): the job gets 0-2 (and 1000) only.
    let script = format!(
        r#"for f in /proc/$$/fd/*; do n=${{f##*/}}; if [ "$n" -gt 2 ] && [ "$n" != 1000 ]; then eval "exec $n>&-"; fi; done 2>/dev/null; {script}"#
    );
    let mut c = Command::new("bash");
    c.args(["-c", &script, "bash"])
        .arg(shim)
        .args(img)
        .arg(exe)
        .args([&heap_mib.to_string(), "beat"])
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("ROOST_CKPT_SOCK", dir.join("ckpt.sock"))
        .stdin(if matches!(how, Start::Pipe) {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(std::fs::File::create(dir.join("stdout.txt"))?)
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("stderr.txt"))?,
        );
    c.spawn().context("starting the job")
}

/// Starts the job afresh in `dir`.
pub(crate) fn spawn_fresh(exe: &Path, shim: &Path, dir: &Path, heap_mib: usize) -> Result<Child> {
    // A beat left by an earlier process would pass for this one's.
    match std::fs::remove_file(dir.join("beat")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    spawn(exe, shim, dir, heap_mib, Start::Fresh)
}

/// Waits for a fresh job's first beat (its heap is filled).
pub(crate) fn first_beat(dir: &Path, child: &mut Child) -> Result<(u64, u64)> {
    await_beat(&dir.join("beat"), 0, None, child)
}

/// Sends the checkpoint signal; with `increment`, with the `sigqueue`
/// value that welcomes an increment (as the starter does).
fn signal(pid: u32, increment: bool) -> Result<()> {
    let mut c = Command::new("kill");
    if increment {
        c.args(["-q", "1"]);
    }
    let st = c
        .args(["-s", "36", &pid.to_string()])
        .status()
        .context("running kill")?;
    if !st.success() {
        bail!("kill -s 36 {pid} failed");
    }
    Ok(())
}

/// Asks the job to change 1% of its heap pages (SIGUSR1) and waits until
/// it has.
fn dirty_one_percent(dir: &Path, child: &mut Child) -> Result<()> {
    let dirtied = |p: &Path| {
        std::fs::read(p)
            .ok()
            .filter(|b| b.len() >= 24)
            .map_or(0, |b| {
                u64::from_le_bytes(b[16..24].try_into().unwrap_or([0; 8]))
            })
    };
    let beat = dir.join("beat");
    let before = dirtied(&beat);
    let st = Command::new("kill")
        .args(["-s", "USR1", &child.id().to_string()])
        .status()
        .context("running kill")?;
    if !st.success() {
        bail!("kill -s USR1 failed");
    }
    let t0 = Instant::now();
    while dirtied(&beat) <= before {
        if let Some(st) = child.try_wait()? {
            bail!("the job ended ({st}) instead of changing its pages");
        }
        if t0.elapsed() > PATIENCE {
            bail!("the job did not change its pages within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Accepts the shim's connection; fails if the job dies or nothing comes.
fn accept(l: &UnixListener, child: &mut Child, dir: &Path) -> Result<UnixStream> {
    let t0 = Instant::now();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(PATIENCE))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let err = || std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
                if let Some(st) = child.try_wait()? {
                    bail!(
                        "the job ended ({st}) instead of sending an image: {}",
                        err()
                    );
                }
                if t0.elapsed() > PATIENCE {
                    bail!("no image within {PATIENCE:?}: {}", err());
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => return Err(e).context("accepting the shim's connection"),
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Reads the header and tables; returns them and the length of the region
/// bytes (with their checksums) that follow.
fn read_head(s: &mut UnixStream) -> Result<(Vec<u8>, u64)> {
    let hsize = size_of::<ImageHeader>();
    let mut head = vec![0u8; hsize];
    s.read_exact(&mut head[..8])?;
    if head[..8] == REFUSED {
        let mut why = String::new();
        let _ = s.take(4096).read_to_string(&mut why);
        bail!("checkpoint refused: {why}");
    }
    if head[..8] != MAGIC {
        bail!("not an image (bad magic)");
    }
    s.read_exact(&mut head[8..])?;
    let nreg = u32_at(&head, std::mem::offset_of!(ImageHeader, nregions)) as usize;
    let nfds = u32_at(&head, std::mem::offset_of!(ImageHeader, nfds)) as usize;
    if nreg > 8192 || nfds > 1024 {
        bail!("image tables too large: {nreg} regions, {nfds} fds");
    }
    let rsize = size_of::<Region>();
    head.resize(hsize + nreg * rsize + nfds * size_of::<FdRecord>(), 0);
    s.read_exact(&mut head[hsize..])?;
    let mut data = 0;
    for i in 0..nreg {
        let r = &head[hsize + i * rsize..];
        let start = u64_at(r, std::mem::offset_of!(Region, start));
        let end = u64_at(r, std::mem::offset_of!(Region, end));
        if u32_at(r, std::mem::offset_of!(Region, flags)) & RF_DATA != 0 {
            let len = end
                .checked_sub(start)
                .context("a region ends before it starts")?;
            let pages = u64_at(r, std::mem::offset_of!(Region, pages));
            data += bitmap_words(len / 4096) * 8 + pages * 4096 + 8;
        }
    }
    Ok((head, data))
}

/// Reads `n` bytes from `s` in pieces, handing each to `f`.
fn stream(s: &mut UnixStream, n: u64, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        let got = s.read(&mut buf[..want])?;
        if got == 0 {
            bail!("the image ended early");
        }
        f(&buf[..got])?;
        left -= got as u64;
    }
    Ok(())
}

/// One capture into a Unix socket consumer: (seconds, raw image bytes).
fn capture(l: &UnixListener, child: &mut Child, dir: &Path) -> Result<(f64, u64)> {
    let t0 = Instant::now();
    signal(child.id(), false)?;
    let mut s = accept(l, child, dir)?;
    let (head, data) = read_head(&mut s)?;
    stream(&mut s, data, |_| Ok(()))?;
    s.write_all(&[ACK_COMMITTED])?;
    let secs = t0.elapsed().as_secs_f64();
    ack_drain(s);
    Ok((secs, head.len() as u64 + data))
}

fn ack_drain(mut s: UnixStream) {
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The schedd's side: receives length-prefixed pieces over TLS into
/// `dest.tmp`, fsyncs, renames to `dest`, fsyncs the directory, acks one
/// byte. Returns the bytes stored.
pub(crate) fn commit_server(
    ids: &(Identity, Identity),
    dest: PathBuf,
    at: Net,
) -> Result<(std::net::SocketAddr, std::thread::JoinHandle<Result<u64>>)> {
    let acc = ids.0.acceptor();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || -> Result<u64> {
        let l = at.listen()?;
        let _ = addr_tx.send(l.local_addr()?);
        rt()?.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l)?;
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            let mut t = acc.accept(s).await.context("TLS accept")?;
            let tmp = dest.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                let n = t.read_u32_le().await? as usize;
                if n == 0 {
                    break;
                }
                if n > CHUNK {
                    bail!("a piece of {n} bytes");
                }
                t.read_exact(&mut buf[..n]).await?;
                f.write_all(&buf[..n])?;
                total += n as u64;
            }
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &dest)?;
            std::fs::File::open(dest.parent().context("image path has a directory")?)?
                .sync_all()?;
            t.write_all(&[ACK_COMMITTED]).await?;
            t.flush().await?;
            t.shutdown().await?;
            Ok(total)
        })
    });
    match addr_rx.recv() {
        Ok(a) => Ok((a, h)),
        Err(_) => Err(h
            .join()
            .expect("commit server thread")
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("the commit server did not listen"))),
    }
}

/// Where a side of a transfer runs: a network namespace (its file under
/// `/run/netns`) or this one, and the address it listens on or dials.
#[derive(Clone)]
pub(crate) struct Net {
    pub ns: Option<PathBuf>,
    pub ip: std::net::IpAddr,
}

impl Net {
    pub fn loopback() -> Net {
        Net {
            ns: None,
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) -> Result<()> {
        if let Some(ns) = &self.ns {
            let f = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&f),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .with_context(|| format!("entering {}", ns.display()))?;
        }
        Ok(())
    }

    /// Enters the namespace and listens on an ephemeral port of `ip`.
    fn listen(&self) -> Result<std::net::TcpListener> {
        self.enter()?;
        let l = std::net::TcpListener::bind((self.ip, 0))?;
        l.set_nonblocking(true)?;
        Ok(l)
    }
}

/// The starter's side of the network: a TLS connection made before the
/// checkpoint; sends each piece from `rx`, then an end mark, and reports
/// the schedd's ack on `done`.
fn commit_client(
    ids: &(Identity, Identity),
    addr: std::net::SocketAddr,
    from: Net,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ready: std::sync::mpsc::Sender<()>,
    done: std::sync::mpsc::Sender<Result<()>>,
) -> std::thread::JoinHandle<()> {
    let conn = ids.1.connector();
    std::thread::spawn(move || {
        let r = (|| -> Result<()> {
            from.enter()?;
            rt()?.block_on(async move {
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let mut t = conn
                    .connect(proto::tls::server_name("server")?, s)
                    .await
                    .context("TLS connect")?;
                let _ = ready.send(());
                while let Some(piece) = rx.recv().await {
                    t.write_u32_le(piece.len() as u32).await?;
                    t.write_all(&piece).await?;
                }
                t.write_u32_le(0).await?;
                t.flush().await?;
                let mut a = [0u8; 1];
                t.read_exact(&mut a).await?;
                if a[0] != ACK_COMMITTED {
                    bail!("the commit side answered {:?}", a[0]);
                }
                Ok(())
            })
        })();
        let _ = done.send(r);
    })
}

/// One checkpoint the way the pool takes it, into `dest`:
/// (seconds, raw bytes, stored bytes).
/// `server` and `client` are where the schedd's and the starter's sides run.
pub(crate) fn checkpoint(
    l: &UnixListener,
    child: &mut Child,
    dir: &Path,
    ids: &(Identity, Identity),
    dest: &Path,
    workers: u32,
    nets: (Net, Net),
) -> Result<(f64, u64, u64)> {
    checkpoint_as(l, child, dir, ids, dest, workers, nets, false)
}

/// [`checkpoint`], asking for an increment with `increment` (and failing
/// if the shim sends a full image instead).
#[allow(clippy::too_many_arguments)]
fn checkpoint_as(
    l: &UnixListener,
    child: &mut Child,
    dir: &Path,
    ids: &(Identity, Identity),
    dest: &Path,
    workers: u32,
    (server, client): (Net, Net),
    increment: bool,
) -> Result<(f64, u64, u64)> {
    let (addr, server) = commit_server(ids, dest.to_path_buf(), server)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (done_tx, done) = std::sync::mpsc::channel();
    let client = commit_client(ids, addr, client, rx, ready_tx, done_tx);
    ready
        .recv_timeout(PATIENCE)
        .context("the TLS connection did not come up")?;

    let t0 = Instant::now();
    signal(child.id(), increment)?;
    let mut s = accept(l, child, dir)?;
    let (head, data) = read_head(&mut s)?;
    let kind = ImageHeader::from_bytes(&head).map_or(u32::MAX, |h| h.kind);
    if increment && kind != KIND_INCREMENT {
        bail!("asked for an increment, the shim sent a full image");
    }
    let mut enc =
        zstd::stream::write::Encoder::new(Vec::with_capacity(2 * CHUNK), proto::ckpt::ZSTD_LEVEL)?;
    if workers > 0 {
        enc.multithread(workers)?;
    }
    enc.write_all(&head)?;
    let ship = |out: &mut Vec<u8>, all: bool| -> Result<()> {
        if out.is_empty() || (!all && out.len() < CHUNK) {
            return Ok(());
        }
        for piece in std::mem::take(out).chunks(CHUNK) {
            tx.blocking_send(piece.to_vec())
                .map_err(|_| anyhow::anyhow!("the TLS sender went away"))?;
        }
        Ok(())
    };
    stream(&mut s, data, |b| {
        enc.write_all(b)?;
        ship(enc.get_mut(), false)
    })?;
    let mut out = enc.finish()?;
    ship(&mut out, true)?;
    drop(tx);
    done.recv_timeout(PATIENCE)
        .context("no commit from the TLS side")??;
    s.write_all(&[ACK_COMMITTED])?;
    let secs = t0.elapsed().as_secs_f64();
    ack_drain(s);
    client.join().expect("TLS client thread");
    let stored = server.join().expect("commit server thread")?;
    Ok((secs, head.len() as u64 + data, stored))
}

/// Where a restarting process reads its image from.
pub(crate) enum Feed<'a> {
    /// The raw image file is its restore fd.
    Raw(&'a Path),
    /// A zstd file, decompressed into a pipe.
    Zstd(&'a Path),
    /// A zstd image fetched over TLS from `addr` by a thread in `at` (the
    /// connection is made after the spawn), decompressed into a pipe.
    Tls {
        ids: &'a (Identity, Identity),
        addr: std::net::SocketAddr,
        at: Net,
    },
}

/// The schedd's side of a restart: serves `file` in length-prefixed pieces
/// over TLS to one client. Returns the bytes sent.
pub(crate) fn fetch_server(
    ids: &(Identity, Identity),
    file: PathBuf,
    at: Net,
) -> Result<(std::net::SocketAddr, std::thread::JoinHandle<Result<u64>>)> {
    let acc = ids.0.acceptor();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || -> Result<u64> {
        let l = at.listen()?;
        let _ = addr_tx.send(l.local_addr()?);
        rt()?.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l)?;
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            let mut t = acc.accept(s).await.context("TLS accept")?;
            let mut f = std::fs::File::open(&file)?;
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                let n = f.read(&mut buf)?;
                t.write_u32_le(n as u32).await?;
                if n == 0 {
                    break;
                }
                t.write_all(&buf[..n]).await?;
                total += n as u64;
            }
            t.flush().await?;
            t.shutdown().await?;
            Ok(total)
        })
    });
    match addr_rx.recv() {
        Ok(a) => Ok((a, h)),
        Err(_) => Err(h
            .join()
            .expect("fetch server thread")
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("the fetch server did not listen"))),
    }
}

/// The starter's side of a restart: fetches the image over TLS and
/// decompresses it into `pipe`.
fn fetch_into(
    ids: &(Identity, Identity),
    addr: std::net::SocketAddr,
    at: &Net,
    pipe: std::process::ChildStdin,
) -> Result<()> {
    at.enter()?;
    let conn = ids.1.connector();
    rt()?.block_on(async move {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut t = conn
            .connect(proto::tls::server_name("server")?, s)
            .await
            .context("TLS connect")?;
        let mut dec = zstd::stream::write::Decoder::new(pipe)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = t.read_u32_le().await? as usize;
            if n == 0 {
                break;
            }
            if n > CHUNK {
                bail!("a piece of {n} bytes");
            }
            t.read_exact(&mut buf[..n]).await?;
            dec.write_all(&buf[..n])?;
        }
        dec.flush()?;
        Ok(())
    })
}

/// One restart: seconds from the spawn until the restored process beats
/// with the heap's hash.
pub(crate) fn restart(
    exe: &Path,
    shim: &Path,
    dir: &Path,
    heap: usize,
    hash: u64,
    feed: Feed,
) -> Result<f64> {
    let t0 = now_ns();
    let how = match feed {
        Feed::Raw(p) => Start::File(p),
        _ => Start::Pipe,
    };
    let mut child = spawn(exe, shim, dir, heap, how)?;
    let feeder = match feed {
        Feed::Raw(_) => None,
        Feed::Zstd(z) => {
            let mut pipe = child.stdin.take().context("the job has no stdin pipe")?;
            let z = z.to_path_buf();
            Some(std::thread::spawn(move || -> Result<()> {
                let mut d = zstd::stream::read::Decoder::new(std::fs::File::open(z)?)?;
                std::io::copy(&mut d, &mut pipe)?;
                Ok(())
            }))
        }
        Feed::Tls { ids, addr, at } => {
            let pipe = child.stdin.take().context("the job has no stdin pipe")?;
            let ids = ids.clone();
            Some(std::thread::spawn(move || {
                fetch_into(&ids, addr, &at, pipe)
            }))
        }
    };
    let r = await_beat(&dir.join("beat"), t0, Some(hash), &mut child)
        .map(|(ns, _)| (ns - t0) as f64 / 1e9)
        .with_context(|| {
            format!(
                "restarted job: {}",
                std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default()
            )
        });
    let _ = child.kill();
    let _ = child.wait();
    if let Some(f) = feeder {
        f.join().expect("image feeder thread")?;
    }
    r
}

/// Figures for one heap size, medians.
struct Heap {
    mib: usize,
    raw: u64,
    stored: u64,
    capture: f64,
    ckpt: f64,
    restart_raw: f64,
    restart_zst: f64,
    /// Incremental checkpoint after 1% of the heap's pages changed:
    /// seconds, raw bytes, stored bytes.
    inc: (f64, u64, u64),
}

fn measure_heap(
    o: &Opts,
    exe: &Path,
    dir: &Path,
    heap: usize,
    ids: &(Identity, Identity),
) -> Result<Heap> {
    std::fs::create_dir_all(dir)?;
    let shim = o.bin.join("libroost_shim.so");
    let sock = dir.join("ckpt.sock");
    let l = UnixListener::bind(&sock)?;
    l.set_nonblocking(true)?;
    let mut child = spawn_fresh(exe, &shim, dir, heap)?;
    let r = (|| -> Result<Heap> {
        let (_, hash) = first_beat(dir, &mut child)?;
        let mut cap = vec![];
        let mut ck = vec![];
        let (mut raw, mut stored) = (0, 0);
        let img = dir.join("image.zst");
        for _ in 0..o.runs {
            let (s, r) = capture(&l, &mut child, dir)?;
            cap.push(s);
            raw = r;
            await_beat(&dir.join("beat"), now_ns(), Some(hash), &mut child)?;
        }
        for _ in 0..o.runs {
            let (s, r, st) = checkpoint(
                &l,
                &mut child,
                dir,
                ids,
                &img,
                o.workers,
                (Net::loopback(), Net::loopback()),
            )?;
            ck.push(s);
            (raw, stored) = (r, st);
            await_beat(&dir.join("beat"), now_ns(), Some(hash), &mut child)?;
        }
        // Increments over the last committed image, each after the job
        // changed 1% of its heap pages.
        let mut inc = vec![];
        let (mut inc_raw, mut inc_stored) = (0, 0);
        let inc_img = dir.join("increment.zst");
        for _ in 0..o.runs {
            dirty_one_percent(dir, &mut child)?;
            let (s, r, st) = checkpoint_as(
                &l,
                &mut child,
                dir,
                ids,
                &inc_img,
                o.workers,
                (Net::loopback(), Net::loopback()),
                true,
            )?;
            inc.push(s);
            (inc_raw, inc_stored) = (r, st);
            await_beat(&dir.join("beat"), now_ns(), Some(hash), &mut child)?;
        }
        let _ = child.kill();
        let _ = child.wait();
        let raw_img = dir.join("image.raw");
        zstd::stream::copy_decode(std::fs::File::open(&img)?, std::fs::File::create(&raw_img)?)?;
        let mut rr = vec![];
        let mut rz = vec![];
        for _ in 0..o.runs {
            rr.push(restart(exe, &shim, dir, heap, hash, Feed::Raw(&raw_img))?);
        }
        for _ in 0..o.runs {
            rz.push(restart(exe, &shim, dir, heap, hash, Feed::Zstd(&img))?);
        }
        Ok(Heap {
            mib: heap,
            raw,
            stored,
            capture: median(cap),
            ckpt: median(ck),
            restart_raw: median(rr),
            restart_zst: median(rz),
            inc: (median(inc), inc_raw, inc_stored),
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    r
}

/// The job's data, as `ckptheap.c` writes it.
fn heap_data(bytes: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let pat = [0x0123_4567_89ab_cdefu64, 0xfedc_ba98_7654_3210];
    while v.len() < bytes {
        for _ in 0..256 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        for i in 256..512 {
            v.extend_from_slice(&pat[i & 1].to_le_bytes());
        }
    }
    v.truncate(bytes);
    v
}

/// Median MB/s of writing `bytes` of `data` to a file in `dir` and fsyncing it.
fn disk_mbs(dir: &Path, data: &[u8], bytes: usize, runs: usize) -> Result<f64> {
    let p = dir.join("disk.bin");
    let mut v = vec![];
    for _ in 0..runs {
        let _ = std::fs::remove_file(&p);
        let t0 = Instant::now();
        let mut f = std::fs::File::create(&p)?;
        let mut n = 0;
        while n < bytes {
            let k = (bytes - n).min(data.len()).min(CHUNK);
            f.write_all(&data[..k])?;
            n += k;
        }
        f.sync_all()?;
        v.push(mbs(bytes as u64, t0.elapsed().as_secs_f64()));
    }
    let _ = std::fs::remove_file(&p);
    Ok(median(v))
}

/// Median zstd throughput at the pool's level (MB/s of input) and ratio on `data`.
fn zstd_mbs(data: &[u8], runs: usize, workers: u32) -> Result<(f64, f64)> {
    let mut v = vec![];
    let mut ratio = 0.0;
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), proto::ckpt::ZSTD_LEVEL)?;
        if workers > 0 {
            enc.multithread(workers)?;
        }
        for c in data.chunks(CHUNK) {
            enc.write_all(c)?;
        }
        let out = enc.finish()?;
        v.push(mbs(data.len() as u64, t0.elapsed().as_secs_f64()));
        ratio = out.len() as f64 / data.len() as f64;
    }
    Ok((median(v), ratio))
}

/// One `roost checkpoint` in a personal pool: (heap MiB, seconds, bytes, raw bytes).
type PoolFigure = (usize, f64, u64, u64);

fn field(v: &serde_json::Value, key: &str) -> Option<serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .cloned()
            .or_else(|| m.values().find_map(|x| field(x, key))),
        _ => None,
    }
}

/// Checkpoint events of job `id` in its log.
fn checkpoints(bin: &Path, pool: &Path, cwd: &Path, id: &str) -> Result<Vec<serde_json::Value>> {
    let out = crate::roost(bin, pool, cwd, &["log", id, "--json"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            field(e, "event").and_then(|x| x.as_str().map(str::to_string))
                == Some("checkpointed".into())
        })
        .collect())
}

/// `roost checkpoint` of a ckptheap job per heap size in a personal pool.
fn pool_figures(o: &Opts, exe: &Path, tmp: &Path) -> Result<Vec<PoolFigure>> {
    let bin = &o.bin;
    let pool = tmp.join("pool");
    let pool_s = pool.to_str().context("temp dir is not UTF-8")?;
    eprintln!("starting a personal pool…");
    crate::roost(
        bin,
        &pool,
        tmp,
        &["pool", "up", "--dir", pool_s, "--hosts", "1"],
    )?;
    let r = (|| -> Result<Vec<PoolFigure>> {
        let mut figs = vec![];
        for &heap in &o.sizes {
            let job = tmp.join(format!("pooljob{heap}"));
            std::fs::create_dir_all(&job)?;
            std::fs::copy(exe, job.join("ckptheap"))?;
            std::fs::write(
                job.join("job.toml"),
                format!(
                    "executable = \"ckptheap\"\narguments = [\"{heap}\", \"beat\", \"50\"]\noutput = \"out.txt\"\nerror = \"err.txt\"\n"
                ),
            )?;
            let out = crate::roost(bin, &pool, &job, &["submit", "job.toml"])?;
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            eprintln!("  pool job {id}: {heap} MiB heap…");
            let t0 = Instant::now();
            while beat(&job.join("beat")).is_none_or(|(_, h)| h == 0) {
                if t0.elapsed() > PATIENCE {
                    bail!(
                        "pool job {id} did not start beating: {}",
                        std::fs::read_to_string(job.join("err.txt")).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut secs = vec![];
            let (mut bytes, mut raw) = (0, 0);
            for n in 1..=o.runs {
                crate::roost(bin, &pool, &job, &["checkpoint", &id])?;
                let t0 = Instant::now();
                let ev = loop {
                    let evs = checkpoints(bin, &pool, &job, &id)?;
                    if evs.len() >= n {
                        break evs[n - 1].clone();
                    }
                    if t0.elapsed() > PATIENCE {
                        bail!("no checkpointed event for job {id} within {PATIENCE:?}");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                let num = |k: &str| field(&ev, k).and_then(|x| x.as_f64()).unwrap_or(0.0);
                secs.push(num("seconds"));
                bytes = num("bytes") as u64;
                raw = num("raw_bytes") as u64;
            }
            let _ = crate::roost(bin, &pool, &job, &["rm", &id]);
            figs.push((heap, median(secs), bytes, raw));
        }
        Ok(figs)
    })();
    let _ = crate::roost(bin, &pool, tmp, &["pool", "down", "--dir", pool_s]);
    r
}

pub fn run(o: &Opts, tmp: &Path) -> Result<()> {
    let exe = tmp.join("ckptheap");
    let st = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(crate::workspace().join("bench/jobs/ckptheap.c"))
        .status()
        .context("running cc")?;
    if !st.success() {
        bail!("compiling ckptheap.c failed");
    }
    let load0 = loadavg();
    let biggest = *o.sizes.iter().max().context("no sizes")?;
    let bytes = biggest << 20;
    eprintln!("measuring baselines with {biggest} MiB (TCP, TLS 1.3, disk, zstd)…");
    let ids = baseline::tls_identities(&tmp.join("tls"))?;
    let tcp = baseline::tcp_bulk_mbs(bytes, o.runs)?;
    let tls = baseline::tls_bulk_mbs(&ids, bytes, o.runs)?;
    let data = heap_data(bytes.min(256 << 20));
    let disk = disk_mbs(tmp, &data, bytes, o.runs)?;
    let (zstd1, ratio) = zstd_mbs(&data, o.runs, 0)?;
    let (zstdw, _) = if o.workers > 0 {
        zstd_mbs(&data, o.runs, o.workers)?
    } else {
        (zstd1, ratio)
    };
    drop(data);
    let mut heaps = vec![];
    for &h in &o.sizes {
        eprintln!("heap {h} MiB: capture, checkpoint, restart ×{}…", o.runs);
        heaps.push(measure_heap(
            o,
            &exe,
            &tmp.join(format!("heap{h}")),
            h,
            &ids,
        )?);
    }
    let mist = o.mist.then(|| {
        eprintln!(
            "MIST: {} MiB heap over 10 Mb/s links ×{}…",
            crate::mist::HEAP_MIB,
            o.runs
        );
        crate::mist::run(
            &exe,
            &o.bin.join("libroost_shim.so"),
            &tmp.join("mist"),
            &ids,
            o.runs,
            o.workers,
        )
    });
    let pool = if o.pool {
        Some(pool_figures(o, &exe, tmp))
    } else {
        None
    };

    let limit = tcp.min(disk);
    let goal = limit * 0.5;
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {ncpu} cores; load average {load0} at the start, {} at the end (other work competes for the cores)",
        loadavg()
    );
    println!(
        "roost checkpoint/restart: medians of {} runs; zstd level {}{}; MB = 10^6 bytes, MB/s of the raw image",
        o.runs,
        proto::ckpt::ZSTD_LEVEL,
        if o.workers > 0 {
            format!(" with {} worker thread(s)", o.workers)
        } else {
            " on the reading thread".into()
        }
    );
    println!(
        "baselines ({biggest} MiB, same run): loopback TCP {tcp:.0} MB/s, TLS 1.3 loopback {tls:.0} MB/s, disk write+fsync {disk:.0} MB/s"
    );
    println!(
        "  zstd level {} on the job's data: {zstd1:.0} MB/s one thread{}, ratio {ratio:.2}",
        proto::ckpt::ZSTD_LEVEL,
        if o.workers > 0 {
            format!(", {zstdw:.0} MB/s with {} worker(s)", o.workers)
        } else {
            String::new()
        }
    );
    println!(
        "goal: checkpoint and restart ≥ 50% of min(TCP, disk) = {goal:.0} MB/s (limit {limit:.0} MB/s)"
    );
    let mut all_met = true;
    for h in &heaps {
        let d = DMTCP.iter().find(|d| d.0 == h.mib);
        println!();
        println!(
            "{} MiB heap: image {:.1} MiB raw, {:.1} MiB zstd ({:.2}){}",
            h.mib,
            mib(h.raw),
            mib(h.stored),
            h.stored as f64 / h.raw as f64,
            d.map(|d| format!("; DMTCP {} MiB plain, {} MiB gzip", d.3, d.4))
                .unwrap_or_default()
        );
        println!(
            "  {:<44} {:>8} {:>9} {:>9}  DMTCP",
            "figure", "seconds", "MB/s", "goal"
        );
        let rows: [(&str, f64, bool, String); 4] = [
            (
                "capture into a Unix socket consumer",
                h.capture,
                false,
                String::new(),
            ),
            (
                "checkpoint: zstd + TLS 1.3 + file + fsync",
                h.ckpt,
                true,
                d.map(|d| format!("{:.2} s plain (no fsync), {:.2} s gzip -1", d.1, d.2))
                    .unwrap_or_default(),
            ),
            (
                "restart from the raw image file",
                h.restart_raw,
                false,
                d.map(|d| format!("{:.2} s plain", d.5)).unwrap_or_default(),
            ),
            (
                "restart from the zstd file (through a pipe)",
                h.restart_zst,
                true,
                d.map(|d| format!("{:.2} s gzip", d.6)).unwrap_or_default(),
            ),
        ];
        for (what, secs, judged, dm) in rows {
            let rate = mbs(h.raw, secs);
            let verdict = if judged {
                all_met &= rate >= goal;
                if rate >= goal { "met" } else { "NOT met" }
            } else {
                ""
            };
            println!("  {what:<44} {secs:>8.3} {rate:>9.0} {verdict:>9}  {dm}");
        }
        let (isecs, iraw, istored) = h.inc;
        let share = isecs / h.ckpt;
        all_met &= share <= 0.05;
        println!(
            "  {:<44} {isecs:>8.3} {:>9} {:>9}  image {:.2} MiB raw, {:.2} MiB zstd; {:.1}% of the full checkpoint's time (goal ≤ 5%)",
            "incremental checkpoint, 1% of pages changed",
            "",
            if share <= 0.05 { "met" } else { "NOT met" },
            mib(iraw),
            mib(istored),
            share * 100.0
        );
    }
    println!();
    match pool {
        None => println!("pool (roost checkpoint): not measured (--no-pool)"),
        Some(Err(e)) => println!("pool (roost checkpoint): failed: {e:#}"),
        Some(Ok(figs)) => {
            println!(
                "pool: `roost checkpoint` in a personal pool (starter → TLS → schedd, fsync), `seconds` from the event log"
            );
            for (heap, secs, bytes, raw) in figs {
                println!(
                    "  {heap} MiB heap: {secs:.3} s, {:.1} MiB sent of {:.1} MiB raw, {:.0} MB/s",
                    mib(bytes),
                    mib(raw),
                    mbs(raw, secs)
                );
            }
        }
    }
    match mist {
        None => println!("MIST: not measured (--no-mist)"),
        Some(Err(e)) => println!("MIST: not measured: {e:#}"),
        Some(Ok(m)) => {
            let limit = |b: u64| b as f64 * 8.0 / crate::mist::LINK_BPS;
            println!(
                "MIST: a process with {} MiB of heap ({:.1} MiB image, {:.1} MiB zstd) over 10 Mb/s links (tbf on both ends of each veth)",
                crate::mist::HEAP_MIB,
                mib(m.raw),
                mib(m.sent_out)
            );
            println!(
                "  checkpoint exec1 → submit (zstd, TLS, fsync, ack)   {:>7.2} s   link limit for {:.1} MiB: {:.2} s",
                m.ckpt,
                mib(m.sent_out),
                limit(m.sent_out)
            );
            println!(
                "  restart submit → exec2 (TLS connect, fetch, run)    {:>7.2} s   link limit for {:.1} MiB: {:.2} s",
                m.restart,
                mib(m.sent_in),
                limit(m.sent_in)
            );
            println!(
                "  migration (two legs through the submit host)        {:>7.2} s   MIST: 8 s (one direct transfer); link limit {:.2} s",
                m.total,
                limit(m.sent_out) + limit(m.sent_in)
            );
        }
    }
    println!(
        "goal (checkpoint and restart from zstd ≥ {goal:.0} MB/s, increments ≤ 5% of a full checkpoint, at every size): {}",
        if all_met { "met" } else { "NOT met" }
    );
    Ok(())
}
