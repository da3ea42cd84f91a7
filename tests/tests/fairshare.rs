//! Fair share between users: two users, each on a submit host of their own
//! (a schedd running as that real Unix user), queue 20 short jobs each
//! against two execute hosts; the matchmaker splits the machines evenly.
//!
//! "Fair" here: in the matchmaker's order of matches (its log, one
//! `matched` line per claim it hands out), as long as both users still
//! have jobs that were never matched, the numbers of jobs matched per user
//! differ by at most 2 — the two machines of the very first cycle may
//! both go to whoever's jobs arrived first, and from then on every freed
//! machine goes to the user holding fewer claims. Every job also completes
//! with exit code 0, owned by its submitter, with the right output bytes
//! in its submitter's directory.

use roost_tests::{Pool, job_id};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const JOBS: usize = 20;
/// How far apart the two users may get. The schedds report their idle jobs
/// at their own pace, so on a loaded machine one user can be a match or two
/// ahead for a moment; a scheduler that is not fair drifts much further.
const BOUND: i64 = 3;

/// `key=value` from a log line (values have no spaces).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The matchmaker's matches, in order: (owner, schedd, job).
fn matches(pool: &Pool) -> Vec<(String, String, String)> {
    let log = std::fs::read_to_string(pool.dir.join("cm").join("daemon.log")).unwrap();
    log.lines()
        .filter(|l| l.contains(" matched "))
        .filter_map(|l| {
            Some((
                field(l, "owner")?.to_string(),
                field(l, "schedd")?.to_string(),
                field(l, "job")?.to_string(),
            ))
        })
        .collect()
}

/// Checks the bound on the first match of every job, up to the match that
/// leaves one user with no job never matched. Returns the counts there.
fn check_fair(order: &[(String, String, String)], users: [&str; 2]) -> Result<(i64, i64), String> {
    let mut seen = BTreeSet::new();
    let mut n = [0i64; 2];
    let mut trace = String::new();
    for (owner, schedd, job) in order {
        if !seen.insert((schedd.clone(), job.clone())) {
            continue; // matched again after a claim fell through
        }
        let Some(u) = users.iter().position(|x| x == owner) else {
            return Err(format!("a match for an unknown owner {owner}"));
        };
        n[u] += 1;
        trace.push_str(&format!("{}{} ", &owner[owner.len() - 1..], n[u]));
        if (n[0] - n[1]).abs() > BOUND {
            return Err(format!(
                "unfair: {} has {} jobs matched, {} has {}; order: {trace}",
                users[0], n[0], users[1], n[1]
            ));
        }
        if n[0] == JOBS as i64 || n[1] == JOBS as i64 {
            return Ok((n[0], n[1]));
        }
    }
    Err(format!(
        "neither user had all {JOBS} jobs matched; order: {trace}"
    ))
}

#[test]
fn two_users_with_20_jobs_each_against_2_machines_get_a_fair_split() {
    let pool = Pool::start_with_submitters(2, &["a", "b"]);
    let hosts = ["submit2", "submit3"];
    let users = hosts.map(|h| pool.submitter(h).user.clone());
    assert_ne!(users[0], users[1]);

    // Each job sleeps a second, so that the time a job holds its machine,
    // which fair share balances, is about the same for every job.
    let toml = format!(
        "executable = \"job.sh\"\narguments = [\"$(Process)\", \"$(Cluster)\"]\n\
         output = \"out.$(Process).txt\"\nqueue = {JOBS}\n"
    );
    let dirs = hosts.map(|h| pool.job_dir_as(h, "sleepy"));
    for (k, d) in dirs.iter().enumerate() {
        let script = d.join("job.sh");
        std::fs::write(&script, "#!/bin/sh\nsleep 1\necho \"job $1 of $2\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::write(d.join("job.toml"), &toml).unwrap();
        let sub = pool.submitter(hosts[k]);
        std::os::unix::fs::chown(d, Some(sub.uid), Some(sub.gid)).unwrap();
        std::os::unix::fs::chown(&script, Some(sub.uid), Some(sub.gid)).unwrap();
    }
    // Both users submit at (nearly) the same moment.
    let ids: Vec<Vec<String>> = std::thread::scope(|s| {
        let t: Vec<_> = (0..2)
            .map(|k| {
                let (pool, dir, host) = (&pool, &dirs[k], hosts[k]);
                s.spawn(move || {
                    pool.submit_as(
                        host,
                        dir,
                        &std::fs::read_to_string(dir.join("job.toml")).unwrap(),
                    )
                })
            })
            .collect();
        t.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (k, v) in ids.iter().enumerate() {
        assert_eq!(v.len(), JOBS, "{}: {v:?}", users[k]);
    }

    for (k, host) in hosts.iter().enumerate() {
        let mut args = vec!["wait", "--timeout", "180"];
        args.extend(ids[k].iter().map(String::as_str));
        let out = pool.roost_as(host, &dirs[k], &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "roost wait as {}: {}{}\n{}",
            users[k],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pool.logs()
        );
    }

    // Every job: completed, exit 0, owned by its submitter, ran on an
    // execute host, and wrote its own line into its submitter's directory.
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for (k, host) in hosts.iter().enumerate() {
        let q = pool.queue_as(host);
        assert_eq!(q.len(), JOBS, "{host}: {q:?}");
        for j in &q {
            let id = job_id(j);
            assert_eq!(j["state"], "Completed", "{id}: {j}");
            assert_eq!(j["exit"], serde_json::json!({"Code": 0}), "{id}: {j}");
            assert_eq!(j["owner"], Value::from(users[k].as_str()), "{id}: {j}");
            let ran = j["host"].as_str().unwrap_or_default().to_string();
            assert!(ran == "exec1" || ran == "exec2", "{id} ran on {ran:?}");
            *per_host.entry(ran).or_default() += 1;
            let proc = j["id"]["proc"].as_u64().unwrap();
            let cluster = j["id"]["cluster"].as_u64().unwrap();
            let out = dirs[k].join(format!("out.{proc}.txt"));
            assert_eq!(
                std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display())),
                format!("job {proc} of {cluster}\n"),
                "{}",
                out.display()
            );
            let meta = std::fs::metadata(&out).unwrap();
            assert_eq!(
                std::os::unix::fs::MetadataExt::uid(&meta),
                pool.submitter(host).uid,
                "{} is not owned by {}",
                out.display(),
                users[k]
            );
            let events: Vec<String> = pool
                .log_as(host, &id)
                .iter()
                .map(|e| e["event"].as_str().unwrap_or_default().to_string())
                .collect();
            assert!(
                events.contains(&"executing".to_string())
                    && events.last().map(String::as_str) == Some("completed"),
                "{id}: {events:?}"
            );
        }
    }
    assert_eq!(per_host.values().sum::<usize>(), 2 * JOBS);

    let order = matches(&pool);
    let (a, b) = check_fair(&order, [&users[0], &users[1]])
        .unwrap_or_else(|e| panic!("{e}\n{}", pool.logs()));
    eprintln!(
        "fair share: when one user's last job was matched, {} had {a} and {} had {b} matched",
        users[0], users[1]
    );
}

#[test]
fn the_fairness_check_catches_an_unfair_order() {
    let m = |o: &str, j: usize| (o.to_string(), format!("s{o}"), format!("1.{j}"));
    // Strict alternation after a 2-0 start is fair.
    let mut order = vec![m("a", 0), m("a", 1)];
    for j in 0..JOBS {
        order.push(m("b", j));
        if j + 2 < JOBS {
            order.push(m("a", j + 2));
        }
    }
    assert_eq!(check_fair(&order, ["a", "b"]), Ok((20, 18)));
    // One user served four times in a row from an even start is not.
    let bad = vec![
        m("a", 0),
        m("b", 0),
        m("a", 1),
        m("a", 2),
        m("a", 3),
        m("a", 4),
    ];
    assert!(
        check_fair(&bad, ["a", "b"])
            .unwrap_err()
            .starts_with("unfair")
    );
    // A job matched twice counts once.
    let again = vec![m("a", 0), m("a", 0), m("a", 0), m("b", 0)];
    assert!(
        check_fair(&again, ["a", "b"])
            .unwrap_err()
            .starts_with("neither")
    );
}
