//! roost's benchmarks. Each figure is printed beside a baseline measured in
//! the same run, with the ratio; every figure is a median.
//!
//! Remote I/O: a personal pool is started, and a C job (`bench/jobs/iobench.c`)
//! times its own 1-byte `pread`s and 1 MiB sequential reads and writes of a
//! file on the submit host, through shim → starter → TLS → shadow. Baselines:
//! a 1-byte TCP ping-pong and a bulk TCP transfer over loopback.
//!
//! Usage: `cargo run --release -p roost-bench -- [--size-mib N] [--runs N]`

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median round trip of a 1-byte TCP ping-pong over loopback, in µs.
fn tcp_pingpong_us(calls: usize) -> Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let srv = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
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
    drop(c);
    let _ = srv.join();
    Ok(median(lat))
}

/// Median throughput of `bytes` over one loopback TCP connection, in MB/s.
fn tcp_bulk_mbs(bytes: usize, runs: usize) -> Result<f64> {
    let mut v = vec![];
    for _ in 0..runs {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let srv = std::thread::spawn(move || -> std::io::Result<usize> {
            let (mut s, _) = l.accept()?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(total);
                }
                total += n;
            }
        });
        let buf = vec![1u8; 1 << 20];
        let t0 = Instant::now();
        let mut c = TcpStream::connect(addr)?;
        let mut sent = 0;
        while sent < bytes {
            c.write_all(&buf)?;
            sent += buf.len();
        }
        drop(c);
        let got = srv.join().unwrap()?;
        let secs = t0.elapsed().as_secs_f64();
        if got != sent {
            bail!("loopback lost bytes: sent {sent}, got {got}");
        }
        v.push(sent as f64 / secs / 1e6);
    }
    Ok(median(v))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn roost(bin: &Path, pool: &Path, cwd: &Path, args: &[&str]) -> Result<std::process::Output> {
    let out = Command::new(bin.join("roost"))
        .args(args)
        .current_dir(cwd)
        .env("ROOST_POOL", pool)
        .output()
        .with_context(|| format!("running roost {args:?}"))?;
    if !out.status.success() {
        bail!(
            "roost {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs iobench as a roost job; returns its figures.
fn remote_io(size_mib: usize, runs: usize, calls: usize) -> Result<Vec<(String, f64)>> {
    let ws = workspace();
    eprintln!("building roost (release)…");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&ws)
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "cli",
            "-p",
            "shadow",
            "-p",
            "starter",
            "-p",
            "matchmaker",
            "-p",
            "syscall-shim",
        ])
        .status()?;
    if !st.success() {
        bail!("cargo build --release failed");
    }
    let bin = ws.join("target/release");
    let tmp = std::env::temp_dir().join(format!("roost-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let pool = tmp.join("pool");
    let job = tmp.join("job");
    std::fs::create_dir_all(&job)?;
    let st = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(job.join("iobench"))
        .arg(ws.join("bench/jobs/iobench.c"))
        .status()
        .context("running cc")?;
    if !st.success() {
        bail!("compiling iobench.c failed");
    }
    eprintln!("writing a {size_mib} MiB input file…");
    {
        let mut f = std::fs::File::create(job.join("big.bin"))?;
        let chunk: Vec<u8> = (0..1 << 20).map(|i: usize| (i * 31 % 251) as u8).collect();
        for _ in 0..size_mib {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
    }
    eprintln!("starting a personal pool…");
    roost(
        &bin,
        &pool,
        &tmp,
        &[
            "pool",
            "up",
            "--dir",
            pool.to_str().unwrap(),
            "--hosts",
            "1",
        ],
    )?;
    let result = (|| -> Result<Vec<(String, f64)>> {
        std::fs::write(
            job.join("job.toml"),
            format!(
                "executable = \"iobench\"\narguments = [\"big.bin\", \"out.bin\", \"{runs}\", \"{calls}\"]\noutput = \"iobench.txt\"\nerror = \"iobench.err\"\n"
            ),
        )?;
        let out = roost(&bin, &pool, &job, &["submit", "job.toml"])?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!("job {id} running…");
        roost(&bin, &pool, &job, &["wait", &id]).with_context(|| {
            format!(
                "iobench job failed: {}",
                std::fs::read_to_string(job.join("iobench.err")).unwrap_or_default()
            )
        })?;
        let text = std::fs::read_to_string(job.join("iobench.txt"))?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect())
    })();
    let _ = roost(
        &bin,
        &pool,
        &tmp,
        &["pool", "down", "--dir", pool.to_str().unwrap()],
    );
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn main() -> Result<()> {
    let mut size_mib = 1024;
    let mut runs = 3;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size-mib" => size_mib = args.next().context("--size-mib N")?.parse()?,
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "-h" | "--help" => {
                println!("usage: roost-bench [--size-mib N (default 1024)] [--runs N (default 3)]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let calls = 20_000;
    eprintln!("measuring loopback TCP baselines…");
    let rtt = tcp_pingpong_us(calls)?;
    let bulk = tcp_bulk_mbs(size_mib << 20, runs)?;
    let remote = remote_io(size_mib, runs, calls)?;
    let get = |k: &str| remote.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    println!("roost remote I/O, {size_mib} MiB file, medians ({runs} runs, {calls} calls)");
    println!(
        "{:<34} {:>12} {:>22} {:>8}",
        "figure", "roost", "baseline", "ratio"
    );
    if let Some(p) = get("pread1_us") {
        println!(
            "{:<34} {:>9.1} µs {:>14.1} µs (TCP) {:>7.2}x",
            "1-byte remote pread, latency",
            p,
            rtt,
            p / rtt
        );
        println!(
            "{:<34} {:>10.0}/s {:>13.0}/s (TCP) {:>7.2}",
            "  as round trips per second",
            1e6 / p,
            1e6 / rtt,
            rtt / p
        );
    }
    for (k, what) in [
        ("seqread_MBps", "sequential remote read"),
        ("seqwrite_MBps", "sequential remote write"),
    ] {
        if let Some(v) = get(k) {
            println!(
                "{:<34} {:>7.0} MB/s {:>12.0} MB/s (TCP) {:>7.2}",
                what,
                v,
                bulk,
                v / bulk
            );
        }
    }
    Ok(())
}
