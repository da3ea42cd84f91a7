//! A load run: two users, each on a submit host of their own, queue 100
//! short jobs each (200 in all) against three execute hosts, with a job
//! lease of 10 s; while the jobs run, the host of a running job is cut off
//! the network for 25 s (longer than the lease) and then put back. Every
//! job must complete exactly once (one `completed` event, state
//! `Completed`) with the bytes a run without faults writes. A table is
//! printed: user, jobs, completed, duplicates, lost (and the evictions and
//! disconnections the event logs show); and the wall time.

use roost_tests::{Pool, job_id};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const PER_USER: usize = 100;
const HOSTS: [&str; 2] = ["submit2", "submit3"];
const CUT: Duration = Duration::from_secs(25);

/// A short job: a few lines, naming itself, around a short sleep.
const SCRIPT: &str = "#!/bin/sh\necho \"job $1 of cluster $2 starts\"\nsleep 0.2\necho \"job $1 line 2\"\necho \"job $1 of cluster $2 ends\"\n";

fn expected(cluster: u64, p: u64) -> String {
    format!(
        "job {p} of cluster {cluster} starts\njob {p} line 2\njob {p} of cluster {cluster} ends\n"
    )
}

struct Row {
    user: String,
    jobs: usize,
    completed: usize,
    duplicates: usize,
    lost: usize,
    evicted: usize,
    disconnected: usize,
    problems: Vec<String>,
}

/// Jobs of both submitters that are running, with their hosts.
fn running(pool: &Pool) -> Vec<(String, String)> {
    HOSTS
        .iter()
        .flat_map(|h| pool.queue_as(h))
        .filter(|j| j["state"] == "Running")
        .filter_map(|j| Some((job_id(&j), j["host"].as_str()?.to_string())))
        .collect()
}

fn completed(pool: &Pool) -> usize {
    HOSTS
        .iter()
        .flat_map(|h| pool.queue_as(h))
        .filter(|j| j["state"] == "Completed")
        .count()
}

/// Checks every job of `host`'s user: state, completions, output.
fn check(pool: &Pool, host: &str, dir: &Path, ids: &[String]) -> Row {
    let sub = pool.submitter(host);
    let mut row = Row {
        user: sub.user.clone(),
        jobs: ids.len(),
        completed: 0,
        duplicates: 0,
        lost: 0,
        evicted: 0,
        disconnected: 0,
        problems: vec![],
    };
    let q = pool.queue_as(host);
    for id in ids {
        let j = q.iter().find(|j| job_id(j) == *id);
        let log: Vec<Value> = pool.log_as(host, id);
        let completions = log.iter().filter(|e| e["event"] == "completed").count();
        row.evicted += log.iter().filter(|e| e["event"] == "evicted").count();
        row.disconnected += log.iter().filter(|e| e["event"] == "disconnected").count();
        let (cluster, p) = id.split_once('.').unwrap();
        let (cluster, p): (u64, u64) = (cluster.parse().unwrap(), p.parse().unwrap());
        let want = expected(cluster, p);
        let out = std::fs::read_to_string(dir.join(format!("out.{p}"))).unwrap_or_default();
        let done = j.is_some_and(|j| j["state"] == "Completed");
        if !done || completions == 0 {
            row.lost += 1;
            row.problems.push(format!(
                "job {id} of {} did not complete: {}; log: {log:?}",
                row.user,
                j.map(Value::to_string).unwrap_or_default()
            ));
        } else if completions > 1 || out.len() > want.len() {
            row.duplicates += 1;
            row.problems.push(format!(
                "job {id} of {} completed {completions} times; output {out:?}",
                row.user
            ));
        } else if out != want {
            row.lost += 1;
            row.problems.push(format!(
                "job {id} of {}: output differs from a run without faults: {out:?}",
                row.user
            ));
        } else {
            row.completed += 1;
        }
    }
    row
}

#[test]
fn two_hundred_jobs_of_two_users_complete_once_while_a_host_is_cut_off() {
    let t0 = Instant::now();
    let pool = Pool::start_with_submitters(3, &["a", "b"]);
    let up = t0.elapsed();
    let toml = format!(
        "executable = \"job.sh\"\narguments = [\"$(Process)\", \"$(Cluster)\"]\n\
         output = \"out.$(Process)\"\nlease = \"10s\"\nqueue = {PER_USER}\n"
    );
    let dirs = HOSTS.map(|h| pool.job_dir_as(h, "load"));
    for (k, d) in dirs.iter().enumerate() {
        let script = d.join("job.sh");
        std::fs::write(&script, SCRIPT).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let sub = pool.submitter(HOSTS[k]);
        std::os::unix::fs::chown(&script, Some(sub.uid), Some(sub.gid)).unwrap();
    }
    let t_submit = Instant::now();
    let ids: Vec<Vec<String>> = std::thread::scope(|s| {
        let t: Vec<_> = (0..2)
            .map(|k| {
                let (pool, dir, toml) = (&pool, &dirs[k], &toml);
                s.spawn(move || pool.submit_as(HOSTS[k], dir, toml))
            })
            .collect();
        t.into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    for v in &ids {
        assert_eq!(v.len(), PER_USER, "{v:?}\n{}", pool.logs());
    }

    // Cut off a host that runs a job, once the run is well under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (victim, host) = loop {
        if completed(&pool) >= PER_USER / 5
            && let Some(r) = running(&pool).into_iter().next()
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the load run did not get going: {} completed, none running\n{}",
            completed(&pool),
            pool.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let before_cut = completed(&pool);
    pool.cut_link(&host);
    let cut = Instant::now();
    std::thread::sleep(CUT);
    pool.restore_link(&host);
    let during_cut = completed(&pool) - before_cut;
    eprintln!(
        "{host} (running job {victim}) was cut off for {:.1} s, {} s into the run with {before_cut} jobs done; {during_cut} completed meanwhile",
        cut.elapsed().as_secs_f64(),
        (cut - t_submit).as_secs(),
    );

    for (k, host) in HOSTS.iter().enumerate() {
        let mut args = vec!["wait", "--timeout", "300"];
        args.extend(ids[k].iter().map(String::as_str));
        let out = pool.roost_as(host, &dirs[k], &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "roost wait as {}: {}{}\n{}",
            pool.submitter(host).user,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pool.logs()
        );
    }
    let wall = t_submit.elapsed();

    let rows: Vec<Row> = (0..2)
        .map(|k| check(&pool, HOSTS[k], &dirs[k], &ids[k]))
        .collect();
    println!(
        "{:<16} {:>5} {:>10} {:>11} {:>5} {:>8} {:>13}",
        "user", "jobs", "completed", "duplicates", "lost", "evicted", "disconnected"
    );
    for r in &rows {
        println!(
            "{:<16} {:>5} {:>10} {:>11} {:>5} {:>8} {:>13}",
            r.user, r.jobs, r.completed, r.duplicates, r.lost, r.evicted, r.disconnected
        );
    }
    println!(
        "{} jobs through 3 execute hosts, {host} cut off for {} s: {:.1} s from submission to the last completion (pool start-up {:.1} s)",
        2 * PER_USER,
        CUT.as_secs(),
        wall.as_secs_f64(),
        up.as_secs_f64()
    );
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| format!("== {}\n{}", r.user, r.problems.join("\n")))
        .collect();
    assert!(bad.is_empty(), "{}\n{}", bad.join("\n"), pool.logs());
}
