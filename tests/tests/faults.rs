//! The fault matrix: while jobs run, one party of the pool dies (`kill -9`
//! of a starter, an ownerd, the schedd, the matchmaker; an execute host's
//! namespace destroyed outright) or an execute host is cut off the network
//! for less or for longer than the jobs' lease, is brought back where that
//! makes sense, and every job must still complete exactly once with output
//! identical to a run without faults. Each fault gets a pool of its own; the cases run
//! at once and a table is printed at the end: fault, jobs, completed,
//! duplicates, lost.

use roost_tests::{Pool, job_id};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const JOBS: usize = 3;
const LINES: usize = 30;

/// A shell job that prints numbered lines slowly (about 6 s in all).
const SCRIPT: &str = "#!/bin/sh\ni=0\nwhile [ $i -lt 30 ]; do\n  i=$((i+1))\n  echo \"line $i of job $1\"\n  sleep 0.2\ndone\n";

fn expected(p: usize) -> String {
    (1..=LINES)
        .map(|i| format!("line {i} of job {p}\n"))
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Starter,
    Ownerd,
    Schedd,
    Matchmaker,
    HostDestroyed,
    /// The running job's host is cut off for [`SHORT_CUT`], within the
    /// jobs' lease of [`LONG_LEASE`]: its session picks up where it was.
    LinkCutShort,
    /// The running job's host is cut off for [`LONG_CUT`], beyond the
    /// jobs' lease of [`SHORT_LEASE`]: the job is requeued.
    LinkCutLong,
}

const SHORT_CUT: Duration = Duration::from_secs(15);
const LONG_LEASE: &str = "60s";
const LONG_CUT: Duration = Duration::from_secs(30);
const SHORT_LEASE: &str = "8s";

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Starter => "kill -9 starter",
            Fault::Ownerd => "kill -9 ownerd",
            Fault::Schedd => "kill -9 schedd",
            Fault::Matchmaker => "kill -9 matchmaker",
            Fault::HostDestroyed => "exec host destroyed",
            Fault::LinkCutShort => "link cut < lease",
            Fault::LinkCutLong => "link cut > lease",
        }
    }
}

struct Row {
    fault: Fault,
    jobs: usize,
    completed: usize,
    duplicates: usize,
    lost: usize,
    problems: Vec<String>,
}

/// Injects the fault into a running job's host; returns that job.
fn inject(pool: &Pool, fault: Fault) -> String {
    let (host, job) = pool.running_host(Duration::from_secs(60));
    // Let the job get some way in first.
    std::thread::sleep(Duration::from_secs(2));
    match fault {
        Fault::Starter => {
            let pids = pool.pids_named(&host, "roost-starter");
            assert!(!pids.is_empty(), "no starter on {host}\n{}", pool.logs());
            for p in pids {
                // SAFETY: kill(2) with a pid; no memory is involved.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        Fault::Ownerd => {
            pool.kill_daemon(&host, libc::SIGKILL);
            std::thread::sleep(Duration::from_secs(1));
            pool.start_daemon(&host).unwrap();
        }
        Fault::Schedd => {
            pool.kill_daemon("submit", libc::SIGKILL);
            std::thread::sleep(Duration::from_secs(1));
            pool.start_daemon("submit").unwrap();
            pool.wait_ready(2, Duration::from_secs(60)).unwrap();
        }
        Fault::Matchmaker => {
            pool.kill_daemon("cm", libc::SIGKILL);
            std::thread::sleep(Duration::from_secs(1));
            pool.start_daemon("cm").unwrap();
            pool.wait_ready(2, Duration::from_secs(60)).unwrap();
        }
        Fault::HostDestroyed => pool.destroy_host(&host),
        Fault::LinkCutShort | Fault::LinkCutLong => {
            pool.cut_link(&host);
            std::thread::sleep(if matches!(fault, Fault::LinkCutShort) {
                SHORT_CUT
            } else {
                LONG_CUT
            });
            pool.restore_link(&host);
        }
    }
    job
}

fn case(fault: Fault) -> Row {
    let pool = Pool::start(2);
    let dir = pool.job_dir("faults");
    let script = dir.join("lines.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    set_exec(&script);
    let lease = match fault {
        Fault::LinkCutShort => format!("lease = \"{LONG_LEASE}\"\n"),
        Fault::LinkCutLong => format!("lease = \"{SHORT_LEASE}\"\n"),
        _ => String::new(),
    };
    let ids = pool.submit(
        &dir,
        &format!(
            "executable = \"lines.sh\"\narguments = [\"$(Process)\"]\noutput = \"out.$(Process)\"\n{lease}queue = {JOBS}\n"
        ),
    );
    assert_eq!(ids.len(), JOBS);
    let hit = inject(&pool, fault);
    let rc = pool.wait(&ids, Duration::from_secs(240));
    let mut row = Row {
        fault,
        jobs: JOBS,
        completed: 0,
        duplicates: 0,
        lost: 0,
        problems: vec![],
    };
    if rc != 0 {
        row.problems.push(format!("roost wait exited {rc}"));
    }
    let q = pool.queue();
    for (p, id) in ids.iter().enumerate() {
        let done = q
            .iter()
            .find(|j| job_id(j) == *id)
            .is_some_and(|j| j["state"] == "Completed");
        let out = std::fs::read_to_string(dir.join(format!("out.{p}"))).unwrap_or_default();
        let log: Vec<Value> = pool.log(id);
        let completions = log.iter().filter(|e| e["event"] == "completed").count();
        if !done || completions == 0 {
            row.lost += 1;
            row.problems
                .push(format!("job {id} did not complete; log: {log:?}"));
        } else if completions > 1 || out.len() > expected(p).len() {
            row.duplicates += 1;
            row.problems.push(format!(
                "job {id} completed {completions} times; output {} bytes",
                out.len()
            ));
        } else if out != expected(p) {
            row.lost += 1;
            row.problems.push(format!(
                "job {id}: output differs from a fault-free run: {out:?}"
            ));
        } else {
            row.completed += 1;
        }
    }
    // What the lease must have done to the job whose host was cut off.
    let log = pool.log(&hit);
    let reconnected = log.iter().any(|e| e["event"] == "reconnected");
    let evicted = log.iter().any(|e| e["event"] == "evicted");
    let evicted_for_lease = log.iter().any(|e| {
        e["event"] == "evicted" && e["reason"].as_str().is_some_and(|r| r.contains("lease"))
    });
    let lease_problem = match fault {
        Fault::LinkCutShort if !reconnected || evicted => {
            Some("cut off within its lease, was not simply reconnected")
        }
        Fault::LinkCutLong if !evicted_for_lease => {
            Some("cut off beyond its lease, was not evicted for it")
        }
        _ => None,
    };
    if let Some(p) = lease_problem {
        row.problems.push(format!("job {hit}, {p}; log: {log:?}"));
    }
    if !row.problems.is_empty() {
        row.problems.push(pool.logs());
    }
    row
}

fn set_exec(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn every_job_completes_exactly_once_whatever_dies() {
    let faults = [
        Fault::Starter,
        Fault::Ownerd,
        Fault::Schedd,
        Fault::Matchmaker,
        Fault::HostDestroyed,
        Fault::LinkCutShort,
        Fault::LinkCutLong,
    ];
    let rows: Vec<Row> = std::thread::scope(|s| {
        let hs: Vec<_> = faults.iter().map(|&f| s.spawn(move || case(f))).collect();
        hs.into_iter()
            .map(|h| h.join().expect("a fault case panicked"))
            .collect()
    });
    println!(
        "{:<22} {:>5} {:>10} {:>11} {:>5}",
        "fault", "jobs", "completed", "duplicates", "lost"
    );
    for r in &rows {
        println!(
            "{:<22} {:>5} {:>10} {:>11} {:>5}",
            r.fault.name(),
            r.jobs,
            r.completed,
            r.duplicates,
            r.lost
        );
    }
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| format!("== {}\n{}", r.fault.name(), r.problems.join("\n")))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
