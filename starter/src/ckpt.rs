//! Checkpoint images on the execute host.
//!
//! A checkpoint arrives on the job's checkpoint socket (`SCRATCH/.roost-ckpt.sock`):
//! the shim's handler writes either a refusal or an image
//! (`proto::ckpt`). A thread reads the image, compresses it with zstd on
//! the way and hands the compressed bytes to the relay actor in chunks of
//! at most [`CHUNK`] bytes, so the image is never held whole in memory or
//! written to this host's disk. A restarting process connects to the same
//! socket and asks for its remote fds (`REATTACH`). A restart is fed its
//! image through a pipe by another thread that decompresses it.
//!
//! The constants mirror the shim's (`syscall-shim/src/ckpt/mod.rs`).

use proto::ckpt::{
    FdRecord, KIND_INCREMENT, MAGIC, REATTACH, REFUSED, TablesError, read_tables, records,
};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// The signal that asks the shim for an image (`SIGRTMIN + 2` in glibc terms).
pub const SIG_CKPT: i32 = 36;
/// The `sigqueue` value of [`SIG_CKPT`] that welcomes an increment.
pub const WANT_INCREMENT: i32 = 1;
/// Env: path of the checkpoint socket, as the job sees it.
pub const ENV_CKPT_SOCK: &str = "ROOST_CKPT_SOCK";
/// Env: the fd a restarting process reads its image from.
pub const ENV_RESTORE_FD: &str = "ROOST_RESTORE_FD";
/// The fd number of the image pipe in a restarting process.
pub const RESTORE_FD: i32 = 1000;
/// Name of the checkpoint socket in the scratch directory.
pub const CKPT_SOCK_NAME: &str = ".roost-ckpt.sock";
/// Largest compressed piece handed to the backend (one `CkptChunk`).
pub const CHUNK: usize = 1 << 20;
/// zstd level: fast enough to keep up with the network.
const LEVEL: i32 = proto::ckpt::ZSTD_LEVEL;
/// Limits on the image's tables (the shim's own).
const MAX_REGIONS: u32 = 8192;
const MAX_FDS: u32 = 1024;
/// Time a peer of the checkpoint socket has to say what it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest refusal reason kept.
const MAX_REASON: u64 = 4096;

/// What the image reader hands the relay actor.
pub(crate) enum ImageMsg {
    /// Compressed bytes, in order.
    Chunk(Vec<u8>),
    /// The image is complete: its size before compression, its fd table,
    /// and the connection on which the shim waits for the commit.
    Done {
        raw_bytes: u64,
        fds: Vec<FdRecord>,
        conn: StdUnixStream,
        /// An increment over the previous image (not a full image).
        incremental: bool,
    },
    /// The image could not be read (why).
    Failed(String),
}

/// A peer of the checkpoint socket, once it said what it is.
pub(crate) enum CkptConn {
    /// An image follows (its magic already read).
    Image(StdUnixStream),
    /// The shim refused to take an image.
    Refused(String),
    /// A restarted process asks for placeholders for these remote fds.
    Reattach(UnixStream, Vec<FdRecord>),
}

/// Accepts peers of the checkpoint socket until aborted; each says what it
/// is in its own task, then goes to `tx`.
pub(crate) async fn accept_loop(listener: tokio::net::UnixListener, tx: mpsc::Sender<CkptConn>) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HELLO_TIMEOUT, classify(s)).await {
                        Ok(Ok(c)) => {
                            let _ = tx.send(c).await;
                        }
                        Ok(Err(e)) => warn!("a peer of the checkpoint socket: {e}"),
                        Err(_) => warn!("a peer of the checkpoint socket said nothing"),
                    }
                });
            }
            Err(e) => {
                warn!("accepting on the checkpoint socket failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn classify(mut s: UnixStream) -> io::Result<CkptConn> {
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic).await?;
    if magic == MAGIC {
        let s = s.into_std()?;
        s.set_nonblocking(false)?;
        Ok(CkptConn::Image(s))
    } else if magic == REFUSED {
        let mut why = Vec::new();
        (&mut s).take(MAX_REASON).read_to_end(&mut why).await?;
        Ok(CkptConn::Refused(
            String::from_utf8_lossy(&why).into_owned(),
        ))
    } else if magic == REATTACH {
        let n = s.read_u32_le().await?;
        if n > MAX_FDS {
            return Err(io::Error::other(format!("{n} fds to reattach")));
        }
        let mut b = vec![0u8; n as usize * size_of::<FdRecord>()];
        s.read_exact(&mut b).await?;
        Ok(CkptConn::Reattach(s, records(&b)))
    } else {
        Err(io::Error::other("unknown first bytes"))
    }
}

/// Starts a thread that reads one image from `conn` (its magic already
/// read), compresses it and sends it in pieces. It gives up at `deadline`.
pub(crate) fn spawn_reader(conn: StdUnixStream, deadline: Instant) -> mpsc::Receiver<ImageMsg> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut conn = conn;
        let left = deadline.saturating_duration_since(Instant::now());
        let r = conn
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())
            .and_then(|()| read_image(&mut conn, &tx));
        let msg = match r {
            Ok((raw_bytes, fds, incremental)) => {
                let _ = conn.set_read_timeout(None);
                ImageMsg::Done {
                    raw_bytes,
                    fds,
                    conn,
                    incremental,
                }
            }
            Err(why) => ImageMsg::Failed(why),
        };
        let _ = tx.blocking_send(msg);
    });
    rx
}

/// Sends what the encoder produced so far, in pieces of at most [`CHUNK`].
fn ship(out: &mut Vec<u8>, tx: &mpsc::Sender<ImageMsg>, all: bool) -> Result<(), String> {
    if out.is_empty() || (!all && out.len() < CHUNK) {
        return Ok(());
    }
    let data = std::mem::take(out);
    for piece in data.chunks(CHUNK) {
        tx.blocking_send(ImageMsg::Chunk(piece.to_vec()))
            .map_err(|_| "the checkpoint was given up".to_string())?;
    }
    Ok(())
}

/// Reads and checks the header and tables, then streams the whole image
/// through zstd. Returns the raw size, the fd table and whether the image
/// is an increment.
fn read_image(
    conn: &mut StdUnixStream,
    tx: &mpsc::Sender<ImageMsg>,
) -> Result<(u64, Vec<FdRecord>, bool), String> {
    let io = |what: &str, e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("timed out reading the image's {what}")
        }
        io::ErrorKind::UnexpectedEof => format!("the image ends in its {what}"),
        _ => format!("reading the image's {what}: {e}"),
    };
    // SAFETY: sysconf takes a name and returns a number.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u32;
    // The magic was read by `classify`.
    let mut src = std::io::Read::chain(&MAGIC[..], &mut *conn);
    let t = read_tables(&mut src, page, MAX_REGIONS, MAX_FDS).map_err(|e| match e {
        TablesError::Io(what, e) => io(what, e),
        TablesError::Bad(why) => why,
    })?;
    let (h, fds, data) = (t.header, t.fds, t.data_len);
    debug_assert_eq!(t.regions.len(), h.nregions as usize);
    let raw_bytes = t.bytes.len() as u64 + data;

    let mut enc = zstd::stream::write::Encoder::new(Vec::with_capacity(2 * CHUNK), LEVEL)
        .map_err(|e| format!("zstd: {e}"))?;
    // A worker thread compresses while this one reads; without the
    // feature (or on failure) compression runs here.
    if let Err(e) = enc.multithread(1) {
        debug!("zstd without a worker thread: {e}");
    }
    enc.write_all(&t.bytes).map_err(|e| format!("zstd: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut left = data;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = match conn.read(&mut buf[..want]) {
            Ok(0) => return Err("the image ends in its memory".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("memory", e)),
        };
        enc.write_all(&buf[..n]).map_err(|e| format!("zstd: {e}"))?;
        left -= n as u64;
        ship(enc.get_mut(), tx, false)?;
    }
    let mut out = enc.finish().map_err(|e| format!("zstd: {e}"))?;
    ship(&mut out, tx, true)?;
    Ok((raw_bytes, fds, h.kind == KIND_INCREMENT))
}

/// Compressed image bytes from a channel, as a reader.
struct Chunks {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Starts a thread that decompresses the image arriving on `rx` into
/// `pipe` (the write end of the restarting process's image pipe). What
/// arrives after the process stopped reading is taken and dropped, so that
/// the sender never waits for it.
pub(crate) fn spawn_feeder(rx: mpsc::Receiver<Vec<u8>>, pipe: OwnedFd) {
    std::thread::spawn(move || {
        let mut pipe = std::fs::File::from(pipe);
        let src = Chunks {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        let mut dec = match zstd::stream::read::Decoder::new(src) {
            Ok(d) => d,
            Err(e) => {
                warn!("cannot start decompressing the image: {e}");
                return;
            }
        };
        match io::copy(&mut dec, &mut pipe) {
            Ok(n) => debug!(bytes = n, "image fed to the restarting process"),
            Err(e) => warn!("feeding the image to the restarting process stopped: {e}"),
        }
        drop(pipe);
        let mut src = dec.finish().into_inner();
        while src.rx.blocking_recv().is_some() {}
    });
}

/// One process: its pid, state letter and process group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Proc {
    pub pid: i32,
    pub state: u8,
    pub pgrp: i32,
}

/// Reads `/proc/PID/stat`.
pub(crate) fn proc_stat(pid: i32) -> Option<Proc> {
    let s = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = s.iter().rposition(|&c| c == b')')?;
    let rest = std::str::from_utf8(&s[close + 1..]).ok()?;
    let mut f = rest.split_ascii_whitespace();
    let state = f.next()?.bytes().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    Some(Proc { pid, state, pgrp })
}

/// The processes of process group `pgid`.
pub(crate) fn group_members(pgid: i32) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .filter(|p| p.pgrp == pgid)
        .collect()
}

/// The process has a handler for `sig` (`SigCgt` in `/proc/PID/status`).
pub(crate) fn catches(pid: i32, sig: i32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1u64 << (sig - 1)) != 0)
}
