//! roost's benchmarks. Each figure is printed beside baselines measured in
//! the same run, with the ratios; every figure is a median.
//!
//! Remote I/O: a personal pool is started, and a C job (`bench/jobs/iobench.c`)
//! times its own 1-byte `pread`s and 1 MiB sequential reads and writes of a
//! file on the submit host, through shim → starter → TLS → shadow. Baselines
//! (see [`baseline`]): a 1-byte ping-pong and a bulk transfer over loopback,
//! on raw TCP and on TLS 1.3 (the remote path crosses TLS).
//!
//! Checkpoint and restart (`--ckpt`): see [`ckpt`].
//!
//! Owner activity → job stopped (`--activity [--rounds N]`): see [`activity`].
//!
//! A job's TCP connection through its shadow (`--net [--calls N] [--size-mib N] [--runs N]`): see [`net`].
//!
//! Usage: `cargo run --release -p roost-bench -- [--size-mib N] [--runs N] [--calls N] [--no-build]`
//! or `cargo run --release -p roost-bench -- --ckpt [--sizes 64,256,1024] [--runs N] [--workers N] [--no-pool] [--no-mist] [--no-build]`
//! or `cargo run --release -p roost-bench -- --activity [--rounds N] [--no-build]`

mod activity;
mod baseline;
mod ckpt;
mod mist;
mod net;

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
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

/// Builds the release binaries the pool runs; returns their directory.
fn build_roost() -> Result<PathBuf> {
    build(&["cli", "shadow", "starter", "matchmaker", "syscall-shim"])
}

/// Builds `packages` in release mode; returns the binaries' directory.
fn build(packages: &[&str]) -> Result<PathBuf> {
    let ws = workspace();
    eprintln!("building {} (release)…", packages.join(", "));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&ws).args(["build", "--release", "-q"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if !cmd.status()?.success() {
        bail!(
            "cargo build --release failed (--no-build runs the binaries already in target/release)"
        );
    }
    Ok(ws.join("target/release"))
}

/// Every number under `key` anywhere in `v`, summed.
fn sum_key(v: &serde_json::Value, key: &str) -> u64 {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, x)| {
                if k == key {
                    x.as_u64().unwrap_or(0)
                } else {
                    sum_key(x, key)
                }
            })
            .sum(),
        serde_json::Value::Array(a) => a.iter().map(|x| sum_key(x, key)).sum(),
        _ => 0,
    }
}

/// What the remote job measured, and what the shadow counted.
struct Remote {
    figures: Vec<(String, f64)>,
    bytes_read: u64,
    bytes_written: u64,
}

/// Runs iobench as a roost job in a personal pool under `tmp`.
fn remote_io(bin: &Path, tmp: &Path, size_mib: usize, runs: usize, calls: usize) -> Result<Remote> {
    let pool = tmp.join("pool");
    let job = tmp.join("job");
    std::fs::create_dir_all(&job)?;
    let st = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(job.join("iobench"))
        .arg(workspace().join("bench/jobs/iobench.c"))
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
    let pool_s = pool.to_str().context("temp dir is not UTF-8")?;
    roost(
        bin,
        &pool,
        tmp,
        &["pool", "up", "--dir", pool_s, "--hosts", "1"],
    )?;
    let result = (|| -> Result<Remote> {
        std::fs::write(
            job.join("job.toml"),
            format!(
                "executable = \"iobench\"\narguments = [\"big.bin\", \"out.bin\", \"{runs}\", \"{calls}\"]\noutput = \"iobench.txt\"\nerror = \"iobench.err\"\n"
            ),
        )?;
        let out = roost(bin, &pool, &job, &["submit", "job.toml"])?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!("job {id} running…");
        roost(bin, &pool, &job, &["wait", &id]).with_context(|| {
            format!(
                "iobench job failed: {}",
                std::fs::read_to_string(job.join("iobench.err")).unwrap_or_default()
            )
        })?;
        let log = roost(bin, &pool, &job, &["log", &id, "--json"])?;
        let log = String::from_utf8_lossy(&log.stdout);
        let events: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let events = serde_json::Value::Array(events);
        let text = std::fs::read_to_string(job.join("iobench.txt"))?;
        Ok(Remote {
            figures: text
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    Some((k.to_string(), v.trim().parse().ok()?))
                })
                .collect(),
            bytes_read: sum_key(&events, "bytes_read"),
            bytes_written: sum_key(&events, "bytes_written"),
        })
    })();
    let _ = roost(bin, &pool, tmp, &["pool", "down", "--dir", pool_s]);
    result
}

fn main() -> Result<()> {
    let mut size_mib = 1024;
    let mut runs = 3;
    let mut calls = 20_000;
    let mut build = true;
    let mut ckpt_mode = false;
    let mut sizes = vec![64, 256, 1024];
    let mut workers = 1;
    let mut pool = true;
    let mut mist = true;
    let mut activity_mode = false;
    let mut net_mode = false;
    let mut rounds = 20;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ckpt" => ckpt_mode = true,
            "--activity" => activity_mode = true,
            "--net" => net_mode = true,
            "--rounds" => rounds = args.next().context("--rounds N")?.parse()?,
            "--sizes" => {
                sizes = args
                    .next()
                    .context("--sizes MIB,MIB,…")?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--sizes takes MiB numbers separated by commas")?
            }
            "--workers" => workers = args.next().context("--workers N")?.parse()?,
            "--no-pool" => pool = false,
            "--no-mist" => mist = false,
            "--size-mib" => size_mib = args.next().context("--size-mib N")?.parse()?,
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--calls" => calls = args.next().context("--calls N")?.parse()?,
            "--no-build" => build = false,
            "-h" | "--help" => {
                println!(
                    "usage: roost-bench [--size-mib N (default 1024)] [--runs N (default 3)] [--calls N (default 20000)] [--no-build (use target/release as it is)]"
                );
                println!(
                    "       roost-bench --ckpt [--sizes MIB,… (default 64,256,1024)] [--runs N (default 3)] [--workers N (zstd threads, default 1)] [--no-pool] [--no-mist] [--no-build]"
                );
                println!("       roost-bench --activity [--rounds N (default 20)] [--no-build]");
                println!(
                    "       roost-bench --net [--calls N (default 20000)] [--size-mib N (default 1024)] [--runs N (default 3)] [--no-build]"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if size_mib == 0 || runs == 0 || calls == 0 {
        bail!("--size-mib, --runs and --calls must be at least 1");
    }
    if net_mode {
        let bin = if build {
            build_roost()?
        } else {
            workspace().join("target/release")
        };
        let tmp = std::env::temp_dir().join(format!("roost-bench-net-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        let r = net::run(&bin, &tmp, calls, size_mib, runs);
        let _ = std::fs::remove_dir_all(&tmp);
        return r;
    }
    if activity_mode {
        if rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        let bin = if build {
            build_roost()?
        } else {
            workspace().join("target/release")
        };
        return activity::run(&bin, rounds);
    }
    if ckpt_mode {
        if sizes.is_empty() || sizes.contains(&0) {
            bail!("--sizes must name heaps of at least 1 MiB");
        }
        return ckpt_main(sizes, runs, workers, pool, mist, build);
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bin = if build {
        build_roost()?
    } else {
        workspace().join("target/release")
    };
    let tmp = std::env::temp_dir().join(format!("roost-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<()> {
        eprintln!("measuring loopback baselines (TCP, TLS 1.3)…");
        let bytes = size_mib << 20;
        let same = baseline::Cores {
            client: 0,
            server: 0,
        };
        let cross = baseline::Cores {
            client: 0,
            server: 1.min(ncpu - 1),
        };
        let ids = baseline::tls_identities(&tmp.join("tls"))?;
        let tcp_rtt = baseline::tcp_pingpong_us(calls, same)?;
        let tls_rtt = baseline::tls_pingpong_us(&ids, calls, same)?;
        let tcp_rtt_x = baseline::tcp_pingpong_us(calls, cross)?;
        let tls_rtt_x = baseline::tls_pingpong_us(&ids, calls, cross)?;
        let tcp_bulk = baseline::tcp_bulk_mbs(bytes, runs)?;
        let tls_bulk = baseline::tls_bulk_mbs(&ids, bytes, runs)?;
        eprintln!(
            "  ping-pong TCP {tcp_rtt:.1} µs, TLS {tls_rtt:.1} µs; bulk TCP {tcp_bulk:.0} MB/s, TLS {tls_bulk:.0} MB/s"
        );
        let remote = remote_io(&bin, &tmp, size_mib, runs, calls)?;
        let get = |k: &str| {
            remote
                .figures
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| *v)
                .with_context(|| format!("iobench printed no {k}"))
        };
        let (pread, seqread, seqwrite) = (
            get("pread1_us")?,
            get("seqread_MBps")?,
            get("seqwrite_MBps")?,
        );
        // The job's bytes must have crossed to the shadow, or the figures are local I/O.
        let want_read = (bytes * runs + calls) as u64;
        let want_written = (bytes * runs) as u64;
        if remote.bytes_read < want_read || remote.bytes_written < want_written {
            bail!(
                "the shadow counted {} bytes read and {} written, expected at least {want_read} and {want_written}: the I/O was not remote",
                remote.bytes_read,
                remote.bytes_written
            );
        }
        println!(
            "roost remote I/O: {size_mib} MiB file, medians of {runs} runs ({calls} calls for latency)"
        );
        println!(
            "shadow counted {:.1} MiB read, {:.1} MiB written",
            remote.bytes_read as f64 / 1048576.0,
            remote.bytes_written as f64 / 1048576.0
        );
        println!(
            "{:<32} {:>12} {:>12} {:>7} {:>12} {:>7}",
            "figure", "roost", "TCP", "ratio", "TLS 1.3", "ratio"
        );
        let lat = |v: f64| format!("{v:.1} µs");
        println!(
            "{:<32} {:>12} {:>12} {:>6.2}x {:>12} {:>6.2}x",
            "1-byte remote pread, latency",
            lat(pread),
            lat(tcp_rtt),
            pread / tcp_rtt,
            lat(tls_rtt),
            pread / tls_rtt
        );
        let rps = |us: f64| format!("{:.0}/s", 1e6 / us);
        println!(
            "{:<32} {:>12} {:>12} {:>7.2} {:>12} {:>7.2}",
            "  as round trips per second",
            rps(pread),
            rps(tcp_rtt),
            tcp_rtt / pread,
            rps(tls_rtt),
            tls_rtt / pread
        );
        println!(
            "{:<32} {:>12} {:>12} {:>7.2} {:>12} {:>7.2}",
            "  ping-pong across two cores",
            "",
            lat(tcp_rtt_x),
            pread / tcp_rtt_x,
            lat(tls_rtt_x),
            pread / tls_rtt_x
        );
        let mbs = |v: f64| format!("{v:.0} MB/s");
        for (what, v) in [
            ("sequential remote read", seqread),
            ("sequential remote write", seqwrite),
        ] {
            println!(
                "{:<32} {:>12} {:>12} {:>7.2} {:>12} {:>7.2}",
                what,
                mbs(v),
                mbs(tcp_bulk),
                v / tcp_bulk,
                mbs(tls_bulk),
                v / tls_bulk
            );
        }
        println!(
            "ping-pongs pinned to one core (a second line: client and server on two cores); bulk unpinned"
        );
        println!("goals: latency within 2x of a raw round trip; throughput at least 0.50 of raw");
        Ok(())
    })();
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&tmp);
    } else {
        eprintln!("kept {} for inspection", tmp.display());
    }
    result
}

/// `--ckpt`: builds what it needs (the pool's binaries only if `pool`).
fn ckpt_main(
    sizes: Vec<usize>,
    runs: usize,
    workers: u32,
    pool: bool,
    mist: bool,
    build_first: bool,
) -> Result<()> {
    if build_first {
        build(&["syscall-shim"])?;
        if pool {
            // Figures the user asked for are measured or the run fails;
            // `--no-pool` leaves them out on purpose.
            build_roost().context(
                "the pool's binaries did not build (use --no-pool to measure without them)",
            )?;
        }
    }
    let bin = workspace().join("target/release");
    let tmp = std::env::temp_dir().join(format!("roost-bench-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let o = ckpt::Opts {
        sizes,
        runs,
        workers,
        bin,
        pool,
        mist,
    };
    let result = ckpt::run(&o, &tmp);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&tmp);
    } else {
        eprintln!("kept {} for inspection", tmp.display());
    }
    result
}
