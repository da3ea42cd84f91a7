//! `--net`: a job's TCP connection to a server on the submit host, through
//! shim → starter → TLS → shadow → the server, next to the same client run
//! natively on the submit host against the same server.
//!
//! The client is `bench/jobs/netbench.c`: 1-byte round trips per second,
//! and upload and download MB/s. The server runs in this process on
//! 127.0.0.1. The job runs in a personal pool (one execute host on this
//! machine, its job in a sandbox without a network of its own) with
//! `network = ["127.0.0.1:PORT"]`. Figures are medians over the runs; the
//! ratio is job / native.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

/// Serves the netbench protocol on `l` until the process ends.
fn serve(l: TcpListener) {
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            std::thread::spawn(move || -> std::io::Result<()> {
                c.set_nodelay(true)?;
                let mut w = c.try_clone()?;
                let mut r = BufReader::new(c);
                let mut hdr = String::new();
                r.read_line(&mut hdr)?;
                let (kind, n) = hdr.trim().split_once(' ').unwrap_or(("", "0"));
                let n: u64 = n.parse().unwrap_or(0);
                let mut buf = vec![0u8; 1 << 20];
                match kind {
                    "P" => {
                        let mut b = [0u8; 1];
                        for _ in 0..n {
                            r.read_exact(&mut b)?;
                            w.write_all(&b)?;
                        }
                    }
                    "B" => {
                        let mut left = n;
                        while left > 0 {
                            let k = r.read(&mut buf[..(left.min(1 << 20)) as usize])?;
                            if k == 0 {
                                break;
                            }
                            left -= k as u64;
                        }
                        w.write_all(b"k")?;
                    }
                    "D" => {
                        let mut left = n;
                        while left > 0 {
                            let k = left.min(1 << 20) as usize;
                            w.write_all(&buf[..k])?;
                            left -= k as u64;
                        }
                    }
                    _ => {}
                }
                Ok(())
            });
        }
    });
}

/// Medians of each figure of netbench's output.
fn figures(text: &str) -> Vec<(String, f64)> {
    let mut names: Vec<String> = Vec::new();
    let mut vals: Vec<Vec<f64>> = Vec::new();
    for l in text.lines() {
        let Some((k, v)) = l.split_once(' ') else {
            continue;
        };
        let Ok(v) = v.trim().parse::<f64>() else {
            continue;
        };
        match names.iter().position(|n| n == k) {
            Some(i) => vals[i].push(v),
            None => {
                names.push(k.to_string());
                vals.push(vec![v]);
            }
        }
    }
    names
        .into_iter()
        .zip(vals)
        .map(|(n, v)| (n, crate::baseline::median(v)))
        .collect()
}

/// Runs the comparison; `bin` holds the pool's programs.
pub fn run(bin: &Path, tmp: &Path, calls: usize, mib: usize, runs: usize) -> Result<()> {
    let job = tmp.join("netjob");
    std::fs::create_dir_all(&job)?;
    let st = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(job.join("netbench"))
        .arg(crate::workspace().join("bench/jobs/netbench.c"))
        .status()
        .context("running cc")?;
    if !st.success() {
        bail!("compiling netbench.c failed");
    }
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    serve(l);
    let args = |p: &str| {
        vec![
            "127.0.0.1".to_string(),
            p.to_string(),
            calls.to_string(),
            mib.to_string(),
            runs.to_string(),
        ]
    };
    eprintln!("native client on the submit host…");
    let native = Command::new(job.join("netbench"))
        .args(args(&port.to_string()))
        .output()
        .context("running netbench natively")?;
    if !native.status.success() {
        bail!(
            "native netbench failed: {}",
            String::from_utf8_lossy(&native.stderr)
        );
    }
    let native = figures(&String::from_utf8_lossy(&native.stdout));

    let pool = tmp.join("netpool");
    let pool_s = pool.to_str().context("temp dir is not UTF-8")?;
    eprintln!("starting a personal pool…");
    crate::roost(
        bin,
        &pool,
        tmp,
        &["pool", "up", "--dir", pool_s, "--hosts", "1"],
    )?;
    let remote = (|| -> Result<Vec<(String, f64)>> {
        let a: Vec<String> = args(&port.to_string())
            .iter()
            .map(|s| format!("{s:?}"))
            .collect();
        std::fs::write(
            job.join("job.toml"),
            format!(
                "executable = \"netbench\"\narguments = [{}]\noutput = \"net.txt\"\nerror = \"net.err\"\nnetwork = [\"127.0.0.1:{port}\"]\n",
                a.join(", ")
            ),
        )?;
        let out = crate::roost(bin, &pool, &job, &["submit", "job.toml"])?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!("job {id} running…");
        crate::roost(bin, &pool, &job, &["wait", &id]).with_context(|| {
            format!(
                "netbench job failed: {}",
                std::fs::read_to_string(job.join("net.err")).unwrap_or_default()
            )
        })?;
        Ok(figures(&std::fs::read_to_string(job.join("net.txt"))?))
    })();
    let _ = crate::roost(bin, &pool, tmp, &["pool", "down", "--dir", pool_s]);
    let remote = remote?;
    println!(
        "job TCP connection through its shadow vs the same client natively (medians of {runs} runs)"
    );
    println!(
        "{:<24} {:>14} {:>14} {:>8}",
        "figure", "job", "native", "ratio"
    );
    for (name, native_v) in &native {
        let job_v = remote
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .with_context(|| format!("the job printed no {name}"))?;
        println!(
            "{name:<24} {job_v:>14.1} {native_v:>14.1} {:>8.3}",
            job_v / native_v
        );
    }
    Ok(())
}
