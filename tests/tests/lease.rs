//! Job leases across a cut network link ([`Pool::cut_link`]): the execute
//! host running a job is cut off from the submit host and the central
//! manager without anything being killed.
//!
//! - Cut for less than the job's lease: the starter stops the job and
//!   dials again, the shadow parks the session (`disconnected`); when the
//!   link is back the session goes on where it was (`reconnected`), the
//!   job runs once, and its output is what it is without a cut.
//! - The same with a job that writes all through the cut and makes no
//!   call that waits for the submit host: what it wrote before the
//!   starter noticed arrives once, in order.
//! - The submit host cut off for less than the lease: every running
//!   job is parked and picked up again.
//! - Cut for longer than the lease: the shadow gives the job up
//!   (`evicted`, because of the lease) and it runs again on the other
//!   host; the starter on the cut-off host kills its job when its own
//!   lease clock runs out, and nothing of the job is left there once the
//!   link is back; the pool goes on matching jobs to that host.

use roost_tests::{Pool, build_job, job_pids, run_local};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const LINES: usize = 60;

/// A shell job that prints numbered lines slowly (about 12 s in all).
fn script() -> String {
    format!(
        "#!/bin/sh\ni=0\nwhile [ $i -lt {LINES} ]; do\n  i=$((i+1))\n  echo \"line $i of job $1\"\n  sleep 0.2\ndone\n"
    )
}

fn expected(p: usize) -> String {
    (1..=LINES)
        .map(|i| format!("line {i} of job {p}\n"))
        .collect()
}

fn job_dir(pool: &Pool, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = pool.job_dir(name);
    let s = dir.join("lines.sh");
    std::fs::write(&s, script()).unwrap();
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn names(log: &[Value]) -> Vec<String> {
    log.iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn count(log: &[Value], event: &str) -> usize {
    log.iter().filter(|e| e["event"] == event).count()
}

/// The processes on `host` of the job started in `dir` (the script and
/// its `sleep`), with their names.
fn job_pids_on(pool: &Pool, host: &str, dir: &Path) -> Vec<(i32, String)> {
    let on = pool.host_pids(host);
    job_pids(dir)
        .into_iter()
        .filter(|p| on.contains(p))
        .map(|p| (p, comm(p)))
        .collect()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// `pid`'s state letter from `/proc/PID/stat` (`T`: stopped).
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The daemon log of `host` (an execute host's includes its starters').
fn daemon_log(pool: &Pool, host: &str) -> String {
    std::fs::read_to_string(pool.dir.join(host).join("daemon.log")).unwrap_or_default()
}

/// The job (process `p` of its cluster) completed once, with the output
/// of a run without faults.
fn assert_completed_once(pool: &Pool, dir: &Path, id: &str, log: &[Value]) {
    assert_completed_once_as(pool, dir, id, log, 0, "out.txt")
}

fn assert_completed_once_as(
    pool: &Pool,
    dir: &Path,
    id: &str,
    log: &[Value],
    p: usize,
    file: &str,
) {
    let j = pool
        .job(id)
        .unwrap_or_else(|| panic!("job {id} is not in the queue\n{}", pool.logs()));
    assert_eq!(
        j["state"],
        "Completed",
        "job {id}: {j}; events {:?}\n{}",
        names(log),
        pool.logs()
    );
    assert_eq!(
        count(log, "completed"),
        1,
        "job {id} completed {} times: {:?}\n{}",
        count(log, "completed"),
        names(log),
        pool.logs()
    );
    let out = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    assert!(
        out == expected(p),
        "job {id}: output differs from a run without faults:\n{out}\nevents {:?}\n{}",
        names(log),
        pool.logs()
    );
}

#[test]
fn a_link_cut_shorter_than_the_lease_is_ridden_out_without_a_restart() {
    let t0 = Instant::now();
    let pool = Pool::start(2);
    let dir = job_dir(&pool, "lease-short");
    let ids = pool.submit(
        &dir,
        "executable = \"lines.sh\"\narguments = [\"0\"]\noutput = \"out.txt\"\nlease = \"60s\"\n",
    );
    let (host, id) = pool.running_host(Duration::from_secs(60));
    assert_eq!(ids, std::slice::from_ref(&id), "\n{}", pool.logs());
    std::thread::sleep(Duration::from_secs(2));

    pool.cut_link(&host);
    let cut = Instant::now();
    // Once the starter notices (6 s without a word, by design), the job is
    // stopped: every process of it (a `sleep` may be a zombie its shell
    // has not reaped yet). Watched until just before the link comes back.
    let mut states: Vec<(String, Option<char>)> = vec![];
    let mut stopped_at = None;
    std::thread::sleep(Duration::from_secs(6));
    while cut.elapsed() < Duration::from_millis(14_500) {
        states = job_pids_on(&pool, &host, &dir)
            .into_iter()
            .map(|(p, c)| (c, state(p)))
            .collect();
        if states
            .iter()
            .any(|(c, s)| c == "lines.sh" && *s == Some('T'))
            && states.iter().all(|(_, s)| matches!(s, Some('T' | 'Z')))
        {
            stopped_at = Some(cut.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("the job's processes during the cut: {states:?}, all stopped {stopped_at:?} into it");
    std::thread::sleep(Duration::from_secs(15).saturating_sub(cut.elapsed()));
    pool.restore_link(&host);
    eprintln!(
        "{host} was cut off for {:.1} s",
        cut.elapsed().as_secs_f64()
    );

    let rc = pool.wait(&ids, Duration::from_secs(180));
    let log = pool.log(&id);
    eprintln!("job {id}: {:?}", names(&log));
    assert_eq!(
        rc,
        0,
        "roost wait: {rc}; events {:?}\n{}",
        names(&log),
        pool.logs()
    );
    assert!(
        stopped_at.is_some(),
        "the job's processes on {host} were not all stopped during the cut: {states:?}\n{}",
        pool.logs()
    );
    assert_completed_once(&pool, &dir, &id, &log);
    let ev = names(&log);
    let at = |n: &str| ev.iter().position(|e| e == n);
    let (Some(d), Some(r)) = (at("disconnected"), at("reconnected")) else {
        panic!(
            "job {id}: no disconnected/reconnected pair in {ev:?}\n{}",
            pool.logs()
        );
    };
    assert!(
        d < r,
        "job {id}: reconnected before disconnected: {ev:?}\n{}",
        pool.logs()
    );
    assert_eq!(
        log[d]["lease_secs"],
        60,
        "job {id}: {}\n{}",
        log[d],
        pool.logs()
    );
    assert!(
        log[d]["reason"].as_str().is_some_and(|s| !s.is_empty()),
        "job {id}: disconnected without a reason: {}\n{}",
        log[d],
        pool.logs()
    );
    for bad in ["evicted", "vacated", "resumed", "shadow_error"] {
        assert_eq!(
            count(&log, bad),
            0,
            "job {id}: a cut shorter than the lease led to {bad:?}: {ev:?}\n{}",
            pool.logs()
        );
    }
    assert_eq!(
        count(&log, "executing"),
        1,
        "job {id} ran more than once: {ev:?}\n{}",
        pool.logs()
    );
    let j = pool.job(&id).unwrap();
    assert_eq!(
        j["host"],
        Value::from(host.as_str()),
        "job {id}: {j}\n{}",
        pool.logs()
    );
    eprintln!("test time {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn a_link_cut_longer_than_the_lease_requeues_the_job_on_another_host() {
    let t0 = Instant::now();
    let pool = Pool::start(2);
    let dir = job_dir(&pool, "lease-long");
    let ids = pool.submit(
        &dir,
        "executable = \"lines.sh\"\narguments = [\"0\"]\noutput = \"out.txt\"\nlease = \"8s\"\n",
    );
    let (host, id) = pool.running_host(Duration::from_secs(60));
    assert_eq!(ids, std::slice::from_ref(&id), "\n{}", pool.logs());
    let other = if host == "exec1" { "exec2" } else { "exec1" };
    std::thread::sleep(Duration::from_secs(2));

    pool.cut_link(&host);
    let cut = Instant::now();
    let evicted = pool.wait_event(&id, "evicted", 1, Duration::from_secs(120));
    eprintln!(
        "evicted {:.1} s into the cut: {evicted}",
        cut.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(40).saturating_sub(cut.elapsed()));
    // The starter's own lease clock ran out long ago: it killed its job.
    let left_in_cut = job_pids_on(&pool, &host, &dir);
    pool.restore_link(&host);
    eprintln!(
        "{host} was cut off for {:.1} s",
        cut.elapsed().as_secs_f64()
    );

    let rc = pool.wait(&ids, Duration::from_secs(180));
    let log = pool.log(&id);
    let ev = names(&log);
    eprintln!("job {id}: {ev:?}");
    assert_eq!(rc, 0, "roost wait: {rc}; events {ev:?}\n{}", pool.logs());
    assert_completed_once(&pool, &dir, &id, &log);
    assert!(
        evicted["reason"]
            .as_str()
            .is_some_and(|r| r.contains("lease")),
        "job {id}: the eviction does not name the lease: {evicted}\n{}",
        pool.logs()
    );
    let at = |n: &str| ev.iter().position(|e| e == n);
    assert!(
        at("disconnected").is_some_and(|d| Some(d) < at("evicted")),
        "job {id}: no disconnected before evicted: {ev:?}\n{}",
        pool.logs()
    );
    assert_eq!(
        count(&log, "reconnected"),
        0,
        "job {id}: reconnected after its lease expired: {ev:?}\n{}",
        pool.logs()
    );
    let hosts: Vec<&str> = log
        .iter()
        .filter(|e| e["event"] == "executing")
        .filter_map(|e| e["host"].as_str())
        .collect();
    assert_eq!(
        hosts,
        [host.as_str(), other],
        "job {id}: where it ran: {ev:?}\n{}",
        pool.logs()
    );
    let j = pool.job(&id).unwrap();
    assert_eq!(
        j["host"],
        Value::from(other),
        "job {id}: {j}\n{}",
        pool.logs()
    );

    assert!(
        left_in_cut.is_empty(),
        "40 s into the cut (lease 8 s) the job still has processes on {host}: {left_in_cut:?}\n{}",
        pool.logs()
    );
    // The job is over: nothing of it is left anywhere (a process that
    // exits as its job ends gets a moment to go).
    let mut left = job_pids(&dir);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        left = job_pids(&dir);
    }
    let left: Vec<(i32, String)> = left.into_iter().map(|p| (p, comm(p))).collect();
    assert!(
        left.is_empty(),
        "after the job completed on {other} and {host}'s link came back, it still has processes: {left:?}\n{}",
        pool.logs()
    );
    let cut_log = daemon_log(&pool, &host);
    let expired: Vec<&str> = cut_log
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("lease") && l.contains("expire")
        })
        .collect();
    eprintln!("{host}: {expired:?}");
    assert!(
        !expired.is_empty(),
        "the starter on {host} did not log that its lease expired\n{}",
        pool.logs()
    );
    let refused = daemon_log(&pool, "submit")
        .lines()
        .filter(|l| l.contains("resume refused"))
        .count();
    eprintln!("the schedd refused {refused} late resume(s) from {host}");

    // The pool goes on: a job for each host, the one that was cut off included.
    let more = pool.job_dir("after-cut");
    let mut after = vec![];
    for h in ["exec1", "exec2"] {
        after.extend(pool.submit(
            &more,
            &format!(
                "executable = \"/bin/echo\"\narguments = [\"on\", \"{h}\"]\noutput = \"out.{h}\"\n\
                 requirements = 'Machine == \"{h}\"'\n"
            ),
        ));
    }
    let rc = pool.wait(&after, Duration::from_secs(120));
    assert_eq!(
        rc,
        0,
        "jobs after the cut: roost wait {rc}; {:?}\n{}",
        pool.queue(),
        pool.logs()
    );
    for h in ["exec1", "exec2"] {
        assert_eq!(
            std::fs::read_to_string(more.join(format!("out.{h}"))).unwrap_or_default(),
            format!("on {h}\n"),
            "\n{}",
            pool.logs()
        );
    }
    eprintln!("test time {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn what_a_job_writes_into_a_short_cut_arrives_once() {
    let t0 = Instant::now();
    let pool = Pool::start(2);
    let dir = pool.job_dir("lease-writer");
    let bin = build_job("ckptloop.c");
    std::fs::copy(&bin, dir.join("ckptloop")).unwrap();
    // 400 lines, one every 50 ms (some 20 s), written and flushed one by
    // one into stdout with no call that waits for an answer.
    let args = ["1", "400"];
    let ids = pool.submit(
        &dir,
        "executable = \"ckptloop\"\narguments = [\"1\", \"400\"]\noutput = \"out.txt\"\nlease = \"60s\"\n",
    );
    let (host, id) = pool.running_host(Duration::from_secs(60));
    assert_eq!(ids, std::slice::from_ref(&id), "\n{}", pool.logs());
    std::thread::sleep(Duration::from_secs(2));

    pool.cut_link(&host);
    let cut = Instant::now();
    let mut states: Vec<(String, Option<char>)> = vec![];
    let mut stopped_at = None;
    std::thread::sleep(Duration::from_secs(6));
    while cut.elapsed() < Duration::from_millis(14_500) {
        states = job_pids_on(&pool, &host, &dir)
            .into_iter()
            .map(|(p, c)| (c, state(p)))
            .collect();
        if !states.is_empty() && states.iter().all(|(_, s)| *s == Some('T')) {
            stopped_at = Some(cut.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let written = std::fs::read(dir.join("out.txt")).unwrap_or_default().len();
    eprintln!(
        "the job's processes during the cut: {states:?}, all stopped {stopped_at:?} into it; {written} bytes of output on the submit host"
    );
    std::thread::sleep(Duration::from_secs(15).saturating_sub(cut.elapsed()));
    pool.restore_link(&host);

    let rc = pool.wait(&ids, Duration::from_secs(180));
    let log = pool.log(&id);
    let ev = names(&log);
    eprintln!("job {id}: {ev:?}");
    assert_eq!(rc, 0, "roost wait: {rc}; events {ev:?}\n{}", pool.logs());
    let local = std::env::temp_dir().join(format!("roost-local-lease-{}", pool.id));
    std::fs::create_dir_all(&local).unwrap();
    let want = run_local(&local, &[bin.to_str().unwrap(), args[0], args[1]], None);
    assert!(want.status.success());
    let _ = std::fs::remove_dir_all(&local);
    let out = std::fs::read(dir.join("out.txt")).unwrap_or_default();
    assert!(
        out == want.stdout,
        "job {id}: output differs from a run without faults ({} bytes, {} expected):\n{}\nevents {ev:?}\n{}",
        out.len(),
        want.stdout.len(),
        String::from_utf8_lossy(&out),
        pool.logs()
    );
    assert_eq!(
        (count(&log, "completed"), count(&log, "executing")),
        (1, 1),
        "job {id}: {ev:?}\n{}",
        pool.logs()
    );
    assert!(
        ev.iter().any(|e| e == "reconnected") && count(&log, "evicted") == 0,
        "job {id}, cut off within its lease, was not simply reconnected: {ev:?}\n{}",
        pool.logs()
    );
    assert!(
        stopped_at.is_some(),
        "the job's processes on {host} were not all stopped during the cut: {states:?}\n{}",
        pool.logs()
    );
    eprintln!("test time {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn a_short_cut_of_the_submit_host_parks_and_resumes_every_running_job() {
    let t0 = Instant::now();
    let pool = Pool::start(2);
    let dir = job_dir(&pool, "lease-submit");
    let ids = pool.submit(
        &dir,
        "executable = \"lines.sh\"\narguments = [\"$(Process)\"]\noutput = \"out.$(Process)\"\nlease = \"60s\"\nqueue = 2\n",
    );
    assert_eq!(ids.len(), 2, "{ids:?}\n{}", pool.logs());
    // Both jobs run (one per host) before the cut.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pool
        .queue()
        .iter()
        .filter(|j| j["state"] == "Running")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the two jobs did not both start: {:?}\n{}",
            pool.queue(),
            pool.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    pool.cut_link("submit");
    std::thread::sleep(Duration::from_secs(15));
    pool.restore_link("submit");

    let rc = pool.wait(&ids, Duration::from_secs(180));
    assert_eq!(rc, 0, "roost wait: {rc}\n{}", pool.logs());
    for (p, id) in ids.iter().enumerate() {
        let log = pool.log(id);
        let ev = names(&log);
        eprintln!("job {id}: {ev:?}");
        assert_completed_once_as(&pool, &dir, id, &log, p, &format!("out.{p}"));
        assert!(
            ev.iter().any(|e| e == "reconnected")
                && count(&log, "evicted") == 0
                && count(&log, "executing") == 1,
            "job {id}, its submit host cut off within its lease, was not simply reconnected: {ev:?}\n{}",
            pool.logs()
        );
    }
    eprintln!("test time {:.1} s", t0.elapsed().as_secs_f64());
}
