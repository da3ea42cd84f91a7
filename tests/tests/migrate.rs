//! Checkpoint and migration across hosts: the owner returns, the job is
//! checkpointed, vacated and resumed on another host; a host dies and the
//! job resumes from its last periodic images (a full one and increments);
//! a job that cannot be checkpointed is restarted from the beginning. In every case the output
//! is byte-identical to a run that never moved.

use roost_tests::{FAST_POLICY, Pool, build_job, run_local};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn input(lines: usize) -> String {
    (0..lines)
        .map(|i| format!("input line {i} {}\n", "x".repeat(i % 37)))
        .collect()
}

fn hosts_of(pool: &Pool, id: &str, event: &str) -> Vec<String> {
    pool.log(id)
        .into_iter()
        .filter(|e| e["event"] == event)
        .filter_map(|e| e["host"].as_str().map(str::to_string))
        .collect()
}

fn events(pool: &Pool, id: &str) -> Vec<String> {
    pool.log(id)
        .into_iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect()
}

/// Keeps touching `host`'s activity file until dropped (the owner stays).
struct Owner<'a> {
    stop: &'a AtomicBool,
}
impl Drop for Owner<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn job_done(pool: &Pool, id: &str) -> Value {
    let j = pool.job(id).expect("job in the queue");
    assert_eq!(
        j["state"],
        "Completed",
        "job {id}: {j}\n{:?}\n{}",
        pool.log(id),
        pool.logs()
    );
    assert_eq!(j["exit"], serde_json::json!({"Code": 0}), "job {id}: {j}");
    j
}

#[test]
fn owner_returns_and_the_job_moves_with_identical_output() {
    let pool = Pool::start_with_policy(2, Some(FAST_POLICY));
    let dir = pool.job_dir("mover");
    let bin = build_job("migrate.c");
    std::fs::copy(&bin, dir.join("migrate")).unwrap();
    std::fs::write(dir.join("input.txt"), input(60)).unwrap();
    let ids = pool.submit(
        &dir,
        "executable = \"migrate\"\narguments = [\"256\", \"input.txt\", \"output.txt\", \"80\"]\noutput = \"stdout.txt\"\nerror = \"stderr.txt\"\n",
    );
    let id = &ids[0];
    let first = pool.wait_event(id, "executing", 1, Duration::from_secs(60));
    let host = first["host"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _owner = Owner { stop: &stop };
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                pool.touch(&host);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        pool.wait_event(id, "vacated", 1, Duration::from_secs(90));
        assert_eq!(
            pool.wait(&ids, Duration::from_secs(180)),
            0,
            "{:?}\n{}",
            pool.log(id),
            pool.logs()
        );
    });
    job_done(&pool, id);
    let ev = events(&pool, id);
    for want in [
        "suspended",
        "checkpointed",
        "vacated",
        "resumed",
        "completed",
    ] {
        assert!(ev.iter().any(|e| e == want), "no {want} event in {ev:?}");
    }
    let ran_on = hosts_of(&pool, id, "executing");
    assert_eq!(ran_on.len(), 2, "{ran_on:?}");
    assert_ne!(
        ran_on[0], ran_on[1],
        "the job must resume on another host: {ran_on:?}"
    );

    let local = std::env::temp_dir().join(format!("roost-local-mover-{}", pool.id));
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("input.txt"), input(60)).unwrap();
    let r = run_local(
        &local,
        &[bin.to_str().unwrap(), "256", "input.txt", "output.txt", "1"],
        None,
    );
    assert!(r.status.success());
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(dir.join("output.txt")).unwrap()),
        String::from_utf8_lossy(&std::fs::read(local.join("output.txt")).unwrap())
    );
    assert_eq!(std::fs::read(dir.join("stdout.txt")).unwrap(), r.stdout);
    let _ = std::fs::remove_dir_all(local);
}

#[test]
fn a_dead_host_costs_only_the_work_since_the_last_periodic_image() {
    let pool = Pool::start(2);
    let dir = pool.job_dir("survivor");
    let bin = build_job("migrate.c");
    std::fs::copy(&bin, dir.join("migrate")).unwrap();
    std::fs::write(dir.join("input.txt"), input(50)).unwrap();
    let ids = pool.submit(
        &dir,
        "executable = \"migrate\"\narguments = [\"16\", \"input.txt\", \"output.txt\", \"100\", \"100\"]\noutput = \"stdout.txt\"\ncheckpoint_interval = 1\ncheckpoint_full_every = 3\n",
    );
    let id = &ids[0];
    let first = pool.wait_event(id, "executing", 1, Duration::from_secs(60));
    // A full image, then increments (each line rewrites 1% of the heap).
    pool.wait_event(id, "checkpointed", 3, Duration::from_secs(60));
    let host = first["host"].as_str().unwrap().to_string();
    pool.destroy_host(&host);
    assert_eq!(
        pool.wait(&ids, Duration::from_secs(180)),
        0,
        "{:?}\n{}",
        pool.log(id),
        pool.logs()
    );
    job_done(&pool, id);
    let ran_on = hosts_of(&pool, id, "executing");
    assert!(
        ran_on.len() >= 2 && ran_on.last().unwrap() != &host,
        "{ran_on:?}"
    );
    assert!(
        events(&pool, id).iter().any(|e| e == "resumed"),
        "{:?}",
        events(&pool, id)
    );
    // On the dead host: a full image first, then increments smaller than
    // it; the job resumed from that chain.
    let log = pool.log(id);
    let resumed_at = log.iter().position(|e| e["event"] == "resumed").unwrap();
    let images: Vec<&Value> = log[..resumed_at]
        .iter()
        .filter(|e| e["event"] == "checkpointed")
        .collect();
    assert!(images.len() >= 3, "{log:?}");
    assert_eq!(images[0]["kind"], "full", "{:?}", images);
    assert_eq!(images[1]["kind"], "incremental", "{:?}", images);
    assert_eq!(images[2]["kind"], "incremental", "{:?}", images);
    let size = |e: &Value, k: &str| e[k].as_u64().unwrap_or_else(|| panic!("no {k} in {e}"));
    for inc in images.iter().filter(|e| e["kind"] == "incremental") {
        assert!(
            size(inc, "raw_bytes") < size(images[0], "raw_bytes")
                && size(inc, "bytes") < size(images[0], "bytes"),
            "an increment is not smaller than the full image: {images:?}"
        );
        assert!(inc["seconds"].as_f64().is_some(), "{inc}");
    }
    // A restarted process has no page hashes: its first image is full.
    if let Some(next) = log[resumed_at..]
        .iter()
        .find(|e| e["event"] == "checkpointed")
    {
        assert_eq!(next["kind"], "full", "{log:?}");
    }

    let local = std::env::temp_dir().join(format!("roost-local-survivor-{}", pool.id));
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("input.txt"), input(50)).unwrap();
    let r = run_local(
        &local,
        &[
            bin.to_str().unwrap(),
            "16",
            "input.txt",
            "output.txt",
            "1",
            "100",
        ],
        None,
    );
    assert!(r.status.success());
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(dir.join("output.txt")).unwrap()),
        String::from_utf8_lossy(&std::fs::read(local.join("output.txt")).unwrap())
    );
    let _ = std::fs::remove_dir_all(local);
}

#[test]
fn python_migrated_twice_and_a_threaded_job_restarted_from_scratch() {
    let pool = Pool::start(2);
    // Python: a pure-Python loop over a CSV, results appended as it goes.
    let py = pool.job_dir("python");
    let mut csv = String::from("a,b\n");
    for i in 0..40 {
        csv.push_str(&format!("{i},{}\n", (i * 7919) % 1009));
    }
    std::fs::write(py.join("data.csv"), &csv).unwrap();
    std::fs::write(
        py.join("walk.py"),
        "import csv, time, hashlib\nacc = 0\nwith open('data.csv') as f, open('result.txt', 'a') as out:\n    for row in csv.DictReader(f):\n        for k in range(20000):\n            acc = (acc * 31 + int(row['a']) * k + int(row['b'])) % 1000000007\n        out.write(f\"{row['a']} {acc} {hashlib.sha1(str(acc).encode()).hexdigest()[:10]}\\n\")\n        out.flush()\n        time.sleep(0.1)\nprint('total', acc)\n",
    )
    .unwrap();
    let pids = pool.submit(&py, "executable = \"/usr/bin/python3\"\narguments = [\"walk.py\"]\noutput = \"stdout.txt\"\nerror = \"stderr.txt\"\n");
    // Threads: not checkpointable; a vacate restarts it from the beginning.
    let th = pool.job_dir("threads");
    let tbin = build_job("threads.c");
    std::fs::copy(&tbin, th.join("threads")).unwrap();
    let tids = pool.submit(
        &th,
        "executable = \"threads\"\narguments = [\"120\", \"threads.out\"]\n",
    );

    pool.wait_event(&pids[0], "executing", 1, Duration::from_secs(60));
    pool.wait_event(&tids[0], "executing", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1000));
    let out = pool.roost(&["vacate", &tids[0]]);
    assert!(
        out.status.success(),
        "roost vacate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = pool.wait_event(&tids[0], "checkpoint_refused", 1, Duration::from_secs(60));
    assert!(
        refused["reason"].as_str().unwrap_or("").contains("thread"),
        "{refused}"
    );
    pool.wait_event(&tids[0], "evicted", 1, Duration::from_secs(60));
    for n in 1..=2 {
        std::thread::sleep(Duration::from_millis(1200));
        let out = pool.roost(&["vacate", &pids[0]]);
        assert!(
            out.status.success(),
            "roost vacate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pool.wait_event(&pids[0], "vacated", n, Duration::from_secs(60));
        pool.wait_event(&pids[0], "resumed", n, Duration::from_secs(60));
    }

    let mut all = pids.clone();
    all.extend(tids.iter().cloned());
    assert_eq!(
        pool.wait(&all, Duration::from_secs(240)),
        0,
        "{}",
        pool.logs()
    );
    job_done(&pool, &pids[0]);
    job_done(&pool, &tids[0]);

    let local = std::env::temp_dir().join(format!("roost-local-py-{}", pool.id));
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("data.csv"), &csv).unwrap();
    std::fs::copy(py.join("walk.py"), local.join("walk.py")).unwrap();
    let r = run_local(&local, &["/usr/bin/python3", "walk.py"], None);
    assert!(r.status.success());
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(py.join("result.txt")).unwrap()),
        String::from_utf8_lossy(&std::fs::read(local.join("result.txt")).unwrap())
    );
    assert_eq!(std::fs::read(py.join("stdout.txt")).unwrap(), r.stdout);
    let r = run_local(
        &local,
        &[tbin.to_str().unwrap(), "120", "threads.out"],
        None,
    );
    assert!(r.status.success());
    assert_eq!(
        std::fs::read(th.join("threads.out")).unwrap(),
        std::fs::read(local.join("threads.out")).unwrap()
    );
    let _ = std::fs::remove_dir_all(local);
}

#[test]
fn a_vacate_checkpoint_past_the_owners_max_vacate_time_is_abandoned() {
    // The owner's policy gives a vacate no time at all: the checkpoint is
    // abandoned, the job killed and requeued, and its log says why.
    let policy = FAST_POLICY.replace("max_vacate_time = 120", "max_vacate_time = 0");
    let pool = Pool::start_with_policy(1, Some(&policy));
    let dir = pool.job_dir("impatient");
    let bin = build_job("migrate.c");
    std::fs::copy(&bin, dir.join("migrate")).unwrap();
    std::fs::write(dir.join("input.txt"), input(200)).unwrap();
    let ids = pool.submit(
        &dir,
        "executable = \"migrate\"\narguments = [\"64\", \"input.txt\", \"output.txt\", \"100\"]\n",
    );
    let id = &ids[0];
    let first = pool.wait_event(id, "executing", 1, Duration::from_secs(60));
    let host = first["host"].as_str().unwrap().to_string();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _owner = Owner { stop: &stop };
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                pool.touch(&host);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        pool.wait_event(id, "evicted", 1, Duration::from_secs(90));
    });
    let log = pool.log(id);
    let abandoned = log
        .iter()
        .find(|e| e["event"] == "checkpoint_refused")
        .unwrap_or_else(|| panic!("no abandoned checkpoint in {log:?}"));
    let why = abandoned["reason"].as_str().unwrap_or("");
    assert!(
        why.contains("max_vacate_time (0 s)") && why.contains("job killed"),
        "{abandoned}"
    );
    assert!(!log.iter().any(|e| e["event"] == "checkpointed"), "{log:?}");
    let out = pool.roost(&["rm", id]);
    assert!(out.status.success());
}
