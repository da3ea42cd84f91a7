//! Times negotiation cycles over synthetic ads: 1k jobs × 100 machines,
//! 10k × 1k and 100k × 10k (`cargo run --release -p matchmaker --example
//! negotiation [-- JOBSxMACHINES ...]`). Prints seconds per cycle and
//! matches per second.

use matchmaker::negotiate::{Job, Machine};
use matchmaker::{FairShare, Options, negotiate};
use policies::Ad;
use proto::HostName;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// Machines as ownerds advertise them: hardware, idle time and the desktop
/// policy (some owners prefer their group's jobs).
fn machines(n: usize, rng: &mut Rng) -> Vec<Machine> {
    (0..n)
        .map(|i| {
            let mut ad = Ad::new();
            ad.set("Machine", format!("exec{i}").as_str());
            ad.set("Arch", "X86_64");
            ad.set("OpSys", *rng.pick(&["LINUX", "LINUX", "LINUX", "FREEBSD"]));
            ad.set("Cpus", *rng.pick(&[1i64, 2, 4, 8]));
            ad.set("Memory", *rng.pick(&[1024i64, 2048, 4096, 8192, 16384]));
            ad.set("Disk", (rng.next() % 500_000) as i64);
            ad.set("KFlops", 500_000 + (rng.next() % 1_000_000) as i64);
            ad.set("KeyboardIdle", (rng.next() % 7200) as i64);
            ad.set("LoadAvg", 0.1);
            ad.set("State", "Unclaimed");
            ad.set("Activity", "Idle");
            let mut policy = policies::policy::OwnerPolicy::desktop();
            if i % 4 == 0 {
                policy.rank = "TARGET.Owner == \"user3\" ? 10 : 0".parse().unwrap();
            }
            policy.advertise(&mut ad);
            Machine {
                name: HostName(format!("exec{i}")),
                ad: Arc::new(ad),
                free: true,
                running: None,
            }
        })
        .collect()
}

fn jobs(n: usize, rng: &mut Rng) -> Vec<Job> {
    let reqs = [
        "Memory >= RequestMemory && OpSys == \"LINUX\"",
        "Memory >= RequestMemory && OpSys == \"LINUX\" && Arch == \"X86_64\"",
        "Cpus >= RequestCpus && Disk >= RequestDisk",
        "OpSys == \"FREEBSD\"",
        "Memory >= 8192 && KFlops > 1000000",
    ];
    let ranks = ["KFlops", "Memory", "0", "Cpus * 1000 + Memory"];
    (0..n)
        .map(|i| {
            let owner = format!("user{}", rng.next() % 20);
            let mut ad = Ad::new();
            ad.set("Owner", owner.as_str());
            ad.set("Cmd", "/home/sim/bin/sim");
            ad.set("RequestCpus", 1);
            ad.set("RequestMemory", *rng.pick(&[512i64, 1024, 2048, 4096]));
            ad.set("RequestDisk", 1000);
            ad.set("ClusterId", (i / 100) as i64);
            ad.set_expr("Requirements", rng.pick::<&str>(&reqs))
                .unwrap();
            ad.set_expr("Rank", rng.pick::<&str>(&ranks)).unwrap();
            Job::new(owner, Arc::new(ad), i as u64)
        })
        .collect()
}

fn main() {
    let sizes: Vec<(usize, usize)> = {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.is_empty() {
            vec![(1_000, 100), (10_000, 1_000), (100_000, 10_000)]
        } else {
            args.iter()
                .map(|a| {
                    let (j, m) = a.split_once('x').expect("JOBSxMACHINES");
                    (j.parse().expect("jobs"), m.parse().expect("machines"))
                })
                .collect()
        }
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let share = FairShare::new(Duration::from_secs(86_400));
    println!(
        "{:>8} {:>8} {:>10} {:>10} {:>14}",
        "jobs", "machines", "s/cycle", "matches", "matches/s"
    );
    for (nj, nm) in sizes {
        let ms = machines(nm, &mut rng);
        let js = jobs(nj, &mut rng);
        let runs = if nj >= 100_000 { 3 } else { 10 };
        let mut best = f64::MAX;
        let mut matched = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let o = negotiate(&ms, &js, &share, Options::default());
            best = best.min(t.elapsed().as_secs_f64());
            matched = o.matches.len();
        }
        println!(
            "{nj:>8} {nm:>8} {best:>10.4} {matched:>10} {:>14.0}",
            matched as f64 / best
        );
    }
}
