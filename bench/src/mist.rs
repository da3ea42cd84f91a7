//! MIST's headline experiment ("an 8 MB process migrates in 8 s on a
//! 10 Mb/s Ethernet"), replayed: three network namespaces (`submit`,
//! `exec1`, `exec2`), each execute host joined to the submit host by a veth
//! pair whose two ends are shaped with
//! `tc qdisc add dev DEV root tbf rate 10mbit burst 32kbit latency 400ms`.
//! A ckptheap job with 8 MiB of heap is checkpointed with its image going
//! exec1 → submit (zstd, TLS, file + fsync, ack), then restarted with the
//! image going submit → exec2 (a new TLS connection, decompressed into the
//! restarting process) until it runs again. Matchmaking between the two is
//! not included. Needs root, `ip` and `tc`.

use crate::ckpt::{self, Feed, Net};
use anyhow::{Context, Result, bail};
use proto::tls::Identity;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Heap of the migrated job, MiB.
pub const HEAP_MIB: usize = 8;
/// The shaped links' rate, bits per second (`tc`'s `10mbit`).
pub const LINK_BPS: f64 = 10e6;

/// One migration, medians over the runs.
pub struct Mist {
    pub raw: u64,
    pub sent_out: u64,
    pub sent_in: u64,
    pub ckpt: f64,
    pub restart: f64,
    pub total: f64,
}

fn sh(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The three namespaces; deleted (with their links) when dropped.
struct Hosts {
    names: Vec<String>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

impl Hosts {
    fn ns(&self, i: usize) -> PathBuf {
        Path::new("/run/netns").join(&self.names[i])
    }
}

fn hosts() -> Result<Hosts> {
    let pid = std::process::id();
    let h = Hosts {
        names: ["sub", "ex1", "ex2"]
            .iter()
            .map(|n| format!("rb{pid}-{n}"))
            .collect(),
    };
    let (sub, tbf) = (
        h.names[0].as_str(),
        [
            "root", "tbf", "rate", "10mbit", "burst", "32kbit", "latency", "400ms",
        ],
    );
    for n in &h.names {
        sh("ip", &["netns", "add", n])?;
        sh("ip", &["-n", n, "link", "set", "lo", "up"])?;
    }
    for i in 1..=2 {
        let ex = h.names[i].as_str();
        let dev = format!("e{i}");
        sh(
            "ip",
            &[
                "-n", sub, "link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns", ex,
            ],
        )?;
        sh(
            "ip",
            &[
                "-n",
                sub,
                "addr",
                "add",
                &format!("10.98.{i}.2/24"),
                "dev",
                &dev,
            ],
        )?;
        sh(
            "ip",
            &[
                "-n",
                ex,
                "addr",
                "add",
                &format!("10.98.{i}.1/24"),
                "dev",
                "eth0",
            ],
        )?;
        sh("ip", &["-n", sub, "link", "set", &dev, "up"])?;
        sh("ip", &["-n", ex, "link", "set", "eth0", "up"])?;
        for (ns, d) in [(sub, dev.as_str()), (ex, "eth0")] {
            let mut a = vec!["-n", ns, "qdisc", "add", "dev", d];
            a.extend(tbf);
            sh("tc", &a)?;
        }
    }
    Ok(h)
}

fn net(h: &Hosts, i: usize, ip: &str) -> Result<Net> {
    Ok(Net {
        ns: Some(h.ns(i)),
        ip: ip.parse().context("address")?,
    })
}

/// Runs the migration `runs` times with the job in `dir`.
pub fn run(
    exe: &Path,
    shim: &Path,
    dir: &Path,
    ids: &(Identity, Identity),
    runs: usize,
    workers: u32,
) -> Result<Mist> {
    if !rustix::process::geteuid().is_root() {
        bail!("needs root (network namespaces and tc)");
    }
    let h = hosts()?;
    std::fs::create_dir_all(dir)?;
    let l = UnixListener::bind(dir.join("ckpt.sock"))?;
    l.set_nonblocking(true)?;
    let img = dir.join("image.zst");
    let (mut ck, mut rs, mut tot) = (vec![], vec![], vec![]);
    let (mut raw, mut out, mut inn) = (0, 0, 0);
    for _ in 0..runs {
        let mut child = ckpt::spawn_fresh(exe, shim, dir, HEAP_MIB)?;
        let r = (|| -> Result<(f64, u64)> {
            let (_, hash) = ckpt::first_beat(dir, &mut child)?;
            let (secs, r, stored) = ckpt::checkpoint(
                &l,
                &mut child,
                dir,
                ids,
                &img,
                workers,
                (net(&h, 0, "10.98.1.2")?, net(&h, 1, "10.98.1.1")?),
            )?;
            (raw, out) = (r, stored);
            Ok((secs, hash))
        })();
        let _ = child.kill();
        let _ = child.wait();
        let (secs, hash) = r?;
        let (addr, server) = ckpt::fetch_server(ids, img.clone(), net(&h, 0, "10.98.2.2")?)?;
        let back = ckpt::restart(
            exe,
            shim,
            dir,
            HEAP_MIB,
            hash,
            Feed::Tls {
                ids,
                addr,
                at: net(&h, 2, "10.98.2.1")?,
            },
        )?;
        inn = server.join().expect("fetch server thread")?;
        ck.push(secs);
        rs.push(back);
        tot.push(secs + back);
    }
    drop(h);
    Ok(Mist {
        raw,
        sent_out: out,
        sent_in: inn,
        ckpt: crate::baseline::median(ck),
        restart: crate::baseline::median(rs),
        total: crate::baseline::median(tot),
    })
}
