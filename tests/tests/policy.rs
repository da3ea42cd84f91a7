//! Matchmaking and the owner's policy across real hosts: requirements and
//! rank choose the host, `roost why` explains a job that fits nowhere, and
//! the owner's return suspends a job that idling resumes.

use roost_tests::{FAST_POLICY, Pool};
use std::time::{Duration, Instant};

/// A quick policy with custom attributes.
fn policy(attrs: &str, cont: &str, preempt: &str) -> String {
    FAST_POLICY
        .lines()
        .map(|l| {
            if l.starts_with("continue") {
                format!("continue = {cont:?}")
            } else if l.starts_with("preempt") {
                format!("preempt = '{preempt}'")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n[attributes]\n"
        + attrs
        + "\n"
}

fn host_of(pool: &Pool, id: &str) -> String {
    pool.log(id)
        .into_iter()
        .find(|e| e["event"] == "executing")
        .and_then(|e| e["host"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn requirements_and_rank_choose_the_host_and_why_names_the_clause() {
    let pool = Pool::start_with_policies(2, |h| {
        let attrs = if h == "exec1" {
            "Speed = 10\nDepartment = \"physics\""
        } else {
            "Speed = 100\nDepartment = \"chemistry\""
        };
        Some(policy(attrs, "KeyboardIdle > 60", "false"))
    });
    let dir = pool.job_dir("choosy");
    std::fs::write(dir.join("in.txt"), "x\n").unwrap();
    // Rank: both hosts fit; the faster one is chosen.
    let fast = pool.submit(
        &dir,
        "executable = \"/bin/cat\"\narguments = [\"in.txt\"]\nrank = 'Speed'\n",
    );
    assert_eq!(
        pool.wait(&fast, Duration::from_secs(120)),
        0,
        "{}",
        pool.logs()
    );
    assert_eq!(host_of(&pool, &fast[0]), "exec2");
    // Requirements: only exec1 fits, even though exec2 is faster.
    let phys = pool.submit(&dir, "executable = \"/bin/cat\"\narguments = [\"in.txt\"]\nrequirements = 'Department == \"physics\"'\nrank = 'Speed'\n");
    assert_eq!(
        pool.wait(&phys, Duration::from_secs(120)),
        0,
        "{}",
        pool.logs()
    );
    assert_eq!(host_of(&pool, &phys[0]), "exec1");
    // Fits nowhere: stays idle, and `roost why` names the clause.
    let none = pool.submit(&dir, "executable = \"/bin/cat\"\narguments = [\"in.txt\"]\nrequirements = 'Speed > 5 && Department == \"biology\"'\n");
    std::thread::sleep(Duration::from_secs(3));
    let j = pool.job(&none[0]).unwrap();
    assert_eq!(j["state"], "Idle", "{j}");
    let why = pool.roost(&["why", &none[0]]);
    let text =
        String::from_utf8_lossy(&why.stdout).to_string() + &String::from_utf8_lossy(&why.stderr);
    assert!(why.status.success(), "roost why failed: {text}");
    assert!(
        text.contains("Department == \"biology\""),
        "roost why does not name the clause:\n{text}"
    );
    assert!(
        text.contains('2'),
        "roost why does not count the machines:\n{text}"
    );
    let _ = pool.roost(&["rm", &none[0]]);
}

#[test]
fn the_owner_returning_suspends_the_job_and_idling_resumes_it() {
    let pool = Pool::start_with_policy(1, Some(&policy("", "KeyboardIdle > 2", "false")));
    let dir = pool.job_dir("sleeper");
    std::fs::write(
        dir.join("slow.sh"),
        "#!/bin/sh\ni=0\nwhile [ $i -lt 40 ]; do echo $i; i=$((i+1)); sleep 0.1; done\n",
    )
    .unwrap();
    std::fs::set_permissions(
        dir.join("slow.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ids = pool.submit(&dir, "executable = \"slow.sh\"\noutput = \"out.txt\"\n");
    pool.wait_event(&ids[0], "executing", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    pool.touch("exec1");
    pool.wait_event(&ids[0], "suspended", 1, Duration::from_secs(30));
    eprintln!(
        "owner activity to `suspended` in the job's log: {:?} (includes 100 ms log polling)",
        t0.elapsed()
    );
    // While suspended the job makes no progress.
    let before = std::fs::read_to_string(dir.join("out.txt")).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(1000));
    let after = std::fs::read_to_string(dir.join("out.txt")).unwrap_or_default();
    assert_eq!(before, after, "the job kept running while suspended");
    // The owner leaves: after 2 idle seconds the job continues on the same host.
    pool.wait_event(&ids[0], "unsuspended", 1, Duration::from_secs(30));
    assert_eq!(
        pool.wait(&ids, Duration::from_secs(120)),
        0,
        "{}",
        pool.logs()
    );
    let want: String = (0..40).map(|i| format!("{i}\n")).collect();
    assert_eq!(std::fs::read_to_string(dir.join("out.txt")).unwrap(), want);
    let execs = pool
        .log(&ids[0])
        .into_iter()
        .filter(|e| e["event"] == "executing")
        .count();
    assert_eq!(
        execs,
        1,
        "the job must not have moved: {:?}",
        pool.log(&ids[0])
    );
}
