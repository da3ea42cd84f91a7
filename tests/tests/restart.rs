//! A schedd killed (`kill -9`) and started again while its jobs run picks
//! them up where they were: each starter keeps its job stopped and dials
//! again, the new schedd finds the saved session, puts the job's files
//! back as they stood after the last message it applied, and the starter
//! sends again what came later. The job runs once, its output is what a
//! run without the restart writes, and its log says `reconnected`.

use roost_tests::Pool;
use serde_json::Value;
use std::time::Duration;

const LINES: usize = 60;

/// Prints numbered lines slowly (about 12 s), to stdout and to a file it
/// opens itself, with a rename half-way (calls a replay must not redo).
const SCRIPT: &str = "#!/bin/sh\ni=0\nwhile [ $i -lt 60 ]; do\n  i=$((i+1))\n  echo \"line $i of job $1\"\n  echo \"side $i\" >> side.$1\n  if [ $i -eq 30 ]; then mv side.$1 moved.$1; fi\n  sleep 0.2\ndone\n";

fn lines(prefix: &str, from: usize, to: usize) -> String {
    (from..=to).map(|i| format!("{prefix}{i}\n")).collect()
}

fn names(log: &[Value]) -> Vec<String> {
    log.iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_restarted_schedd_picks_up_its_running_jobs() {
    let pool = Pool::start(2);
    let dir = pool.job_dir("restart");
    {
        use std::os::unix::fs::PermissionsExt;
        let s = dir.join("lines.sh");
        std::fs::write(&s, SCRIPT).unwrap();
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let ids = pool.submit(
        &dir,
        "executable = \"lines.sh\"\narguments = [\"$(Process)\"]\noutput = \"out.$(Process)\"\nlease = \"90s\"\nqueue = 2\n",
    );
    // Both jobs run, a few seconds in.
    let t0 = std::time::Instant::now();
    while pool
        .queue()
        .iter()
        .filter(|j| j["state"] == "Running")
        .count()
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the jobs did not both start\n{}",
            pool.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    pool.kill_daemon("submit", libc::SIGKILL);
    std::thread::sleep(Duration::from_secs(2));
    pool.start_daemon("submit").unwrap();
    pool.wait_ready(2, Duration::from_secs(60)).unwrap();
    let rc = pool.wait(&ids, Duration::from_secs(180));
    assert_eq!(rc, 0, "roost wait exited {rc}\n{}", pool.logs());
    for (p, id) in ids.iter().enumerate() {
        let out = std::fs::read_to_string(dir.join(format!("out.{p}"))).unwrap_or_default();
        let want: String = (1..=LINES)
            .map(|i| format!("line {i} of job {p}\n"))
            .collect();
        assert_eq!(out, want, "job {id}'s output\n{}", pool.logs());
        let moved = std::fs::read_to_string(dir.join(format!("moved.{p}"))).unwrap_or_default();
        let side = std::fs::read_to_string(dir.join(format!("side.{p}"))).unwrap_or_default();
        assert_eq!(
            (moved, side),
            (lines("side ", 1, 30), lines("side ", 31, 60)),
            "job {id}'s own files\n{}",
            pool.logs()
        );
        let log = pool.log(id);
        let n = names(&log);
        let count = |e: &str| n.iter().filter(|x| *x == e).count();
        assert_eq!(
            (
                count("executing"),
                count("evicted"),
                count("reconnected"),
                count("completed")
            ),
            (1, 0, 1, 1),
            "job {id} should have run once, picked up by the restarted schedd: {n:?}\n{}",
            pool.logs()
        );
        let q = pool.job(id).expect("the job is in the queue");
        assert_eq!(q["runs"], 1, "job {id}: {q}");
    }
}

/// A starter killed with SIGKILL takes its job with it: no process of the
/// job is left on the execute host, and the job runs again, once.
#[test]
fn a_starter_killed_with_sigkill_leaves_no_job_behind() {
    let pool = Pool::start(1);
    let dir = pool.job_dir("starter-killed");
    std::fs::write(dir.join("spin.sh"), "#!/bin/sh\nsleep 3\necho done\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("spin.sh");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let ids = pool.submit(&dir, "executable = \"spin.sh\"\noutput = \"out\"\n");
    let (host, _) = pool.running_host(Duration::from_secs(60));
    let t0 = std::time::Instant::now();
    while roost_tests::job_pids(&dir).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the job's processes never showed\n{}",
            pool.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let first = roost_tests::job_pids(&dir);
    for p in pool.pids_named(&host, "roost-starter") {
        // SAFETY: kill(2) with a pid; no memory is involved.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let t0 = std::time::Instant::now();
    loop {
        let left: Vec<i32> = first
            .iter()
            .copied()
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the job's processes {left:?} outlived their starter\n{}",
            pool.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rc = pool.wait(&ids, Duration::from_secs(120));
    assert_eq!(rc, 0, "roost wait exited {rc}\n{}", pool.logs());
    assert_eq!(
        std::fs::read_to_string(dir.join("out")).unwrap_or_default(),
        "done\n"
    );
}

/// An ownerd killed with SIGKILL leaves its starter without anyone to
/// enforce the owner's policy: the starter vacates the job (checkpoint,
/// back to the queue), the restarted ownerd takes jobs again, and the job
/// completes once with its whole output.
#[test]
fn a_starter_whose_ownerd_dies_vacates_its_job() {
    let pool = Pool::start(1);
    let dir = pool.job_dir("ownerd-killed");
    {
        use std::os::unix::fs::PermissionsExt;
        let s = dir.join("lines.sh");
        std::fs::write(&s, SCRIPT).unwrap();
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let ids = pool.submit(
        &dir,
        "executable = \"lines.sh\"\narguments = [\"$(Process)\"]\noutput = \"out.$(Process)\"\n",
    );
    let (host, _) = pool.running_host(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    pool.kill_daemon(&host, libc::SIGKILL);
    let id = &ids[0];
    // Vacated from a checkpoint, or evicted when the image was refused (a
    // shell with a running `sleep` has two processes).
    let t0 = std::time::Instant::now();
    let left = loop {
        let log = pool.log(id);
        if let Some(e) = log
            .iter()
            .find(|e| e["event"] == "vacated" || e["event"] == "evicted")
        {
            break e.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the job did not leave its host: {log:?}\n{}",
            pool.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let why = left["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        why.contains("ownerd"),
        "vacated because {why:?}\n{}",
        pool.logs()
    );
    pool.start_daemon(&host).unwrap();
    let rc = pool.wait(&ids, Duration::from_secs(180));
    assert_eq!(rc, 0, "roost wait exited {rc}\n{}", pool.logs());
    let want: String = (1..=LINES)
        .map(|i| format!("line {i} of job 0\n"))
        .collect();
    let out = std::fs::read_to_string(dir.join("out.0")).unwrap_or_default();
    assert_eq!(out, want, "the job's output\n{}", pool.logs());
    let n = names(&pool.log(id));
    assert_eq!(
        n.iter().filter(|e| *e == "completed").count(),
        1,
        "{n:?}\n{}",
        pool.logs()
    );
}
