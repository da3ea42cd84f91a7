//! Tests of the queue database: states, events, recovery after a crash.

use super::*;
use std::collections::BTreeMap;

pub(crate) fn spec(exe: &str) -> JobSpec {
    JobSpec {
        executable: exe.into(),
        transfer_executable: true,
        arguments: vec!["a".into(), "b c".into()],
        input: None,
        output: Some("out".into()),
        error: None,
        initialdir: "/tmp".into(),
        environment: vec![("K".into(), "V".into())],
        requirements: None,
        rank: None,
        request_cpus: 1,
        request_memory_mb: 64,
        request_disk_mb: 10,
        max_retries: 0,
        attributes: BTreeMap::new(),
    }
}

fn events(q: &Queue, id: JobId) -> Vec<Value> {
    q.log(id)
        .unwrap()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn names(q: &Queue, id: JobId) -> Vec<String> {
    events(q, id)
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn submit_assigns_clusters_and_logs() {
    let d = tempfile::tempdir().unwrap();
    let mut q = Queue::open(&d.path().join("queue.db")).unwrap();
    let ids = q
        .submit("alice", "job.toml", |c| {
            Ok(vec![spec(&format!("p{c}")), spec("q")])
        })
        .unwrap();
    assert_eq!(
        ids,
        vec![
            JobId {
                cluster: 1,
                proc: 0
            },
            JobId {
                cluster: 1,
                proc: 1
            }
        ]
    );
    let ids2 = q.submit("bob", "b.toml", |_| Ok(vec![spec("x")])).unwrap();
    assert_eq!(
        ids2,
        vec![JobId {
            cluster: 2,
            proc: 0
        }]
    );
    let row = q.get(ids[0]).unwrap().unwrap();
    assert_eq!(row.spec, spec("p1"));
    assert_eq!(row.owner, "alice");
    assert_eq!(row.state, JobState::Idle);
    let ev = events(&q, ids[0]);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["event"], "submitted");
    assert_eq!(ev[0]["job"], "1.0");
    assert!(ev[0]["time"].as_i64().unwrap() > 1_600_000_000);
    // A rejected submission stores nothing and uses no cluster id.
    let e = q
        .submit("alice", "bad.toml", |_| Err("bad.toml:3: key 'x'".into()))
        .unwrap_err();
    assert_eq!(e.to_string(), "bad.toml:3: key 'x'");
    assert_eq!(
        q.submit("a", "f", |c| Ok(vec![spec(&c.to_string())]))
            .unwrap()[0]
            .cluster,
        3
    );
    assert_eq!(q.list(false).unwrap().len(), 4);
    assert!(
        q.log(JobId {
            cluster: 9,
            proc: 0
        })
        .unwrap()
        .is_none()
    );
}

#[test]
fn a_run_from_match_to_completion() {
    let d = tempfile::tempdir().unwrap();
    let mut q = Queue::open(&d.path().join("queue.db")).unwrap();
    let id = q.submit("alice", "j", |_| Ok(vec![spec("p")])).unwrap()[0];
    let claim = ClaimId("secret-claim".into());
    let host = HostName("exec1".into());
    assert_eq!(q.unclaimed_idle().unwrap().len(), 1);
    assert!(q.set_claim(id, &claim, &host).unwrap());
    assert!(
        !q.set_claim(id, &ClaimId("other".into()), &host).unwrap(),
        "one claim at a time"
    );
    assert!(q.unclaimed_idle().unwrap().is_empty());
    assert!(q.claimed(id, &ClaimId("wrong".into())).unwrap().is_none());
    assert_eq!(
        q.claimed(id, &claim).unwrap().unwrap().claim_host,
        Some(host.clone()),
        "the claim is the matched machine's"
    );
    assert!(q.claimed(id, &claim).unwrap().is_some());
    assert!(q.mark_running(id, &claim, &host).unwrap());
    assert!(
        q.claimed(id, &claim).unwrap().is_none(),
        "a running job takes no second starter"
    );
    let usage = Usage {
        wall_secs: 1.5,
        user_cpu_secs: 0.25,
        sys_cpu_secs: 0.5,
        bytes_read: 10,
        bytes_written: 20,
    };
    assert!(q.complete(id, ExitStatus::Code(3), &usage).unwrap());
    let row = q.get(id).unwrap().unwrap();
    assert_eq!(
        (row.state, row.exit, row.runs),
        (JobState::Completed, Some(ExitStatus::Code(3)), 1)
    );
    assert_eq!(
        names(&q, id),
        ["submitted", "matched", "executing", "completed"]
    );
    let ev = events(&q, id);
    assert_eq!(ev[2]["host"], "exec1");
    assert_eq!(ev[3]["exit_code"], 3);
    assert_eq!(ev[3]["wall_secs"], 1.5);
    assert_eq!(ev[3]["cpu_secs"], 0.75);
    assert_eq!(ev[3]["bytes_read"], 10);
    assert_eq!(ev[3]["bytes_written"], 20);
    assert!(
        !ev.iter().any(|e| e.to_string().contains("secret-claim")),
        "claims stay out of the log"
    );
    assert!(q.list(false).unwrap().is_empty());
    assert_eq!(q.list(true).unwrap()[0].exit, Some(ExitStatus::Code(3)));
}

#[test]
fn signal_exit_and_requeue() {
    let d = tempfile::tempdir().unwrap();
    let mut q = Queue::open(&d.path().join("queue.db")).unwrap();
    let id = q.submit("alice", "j", |_| Ok(vec![spec("p")])).unwrap()[0];
    let c = ClaimId("c1".into());
    let h = HostName("exec2".into());
    q.set_claim(id, &c, &h).unwrap();
    q.mark_running(id, &c, &h).unwrap();
    assert!(q.requeue(id, "evicted", "starter connection lost").unwrap());
    let row = q.get(id).unwrap().unwrap();
    assert_eq!(
        (row.state, row.claim, row.host),
        (JobState::Idle, None, None)
    );
    let c2 = ClaimId("c2".into());
    q.set_claim(id, &c2, &h).unwrap();
    assert!(
        !q.mark_running(id, &c, &h).unwrap(),
        "the old claim is dead"
    );
    q.mark_running(id, &c2, &h).unwrap();
    q.complete(id, ExitStatus::Signal(9), &Usage::default())
        .unwrap();
    let ev = events(&q, id);
    assert_eq!(ev.last().unwrap()["signal"], 9);
    assert_eq!(ev[3]["event"], "evicted");
    assert_eq!(ev[3]["reason"], "starter connection lost");
    assert_eq!(q.get(id).unwrap().unwrap().runs, 2);
}

#[test]
fn stale_claims_are_found_and_dropped() {
    let d = tempfile::tempdir().unwrap();
    let mut q = Queue::open(&d.path().join("queue.db")).unwrap();
    let id = q.submit("alice", "j", |_| Ok(vec![spec("p")])).unwrap()[0];
    let c = ClaimId("c".into());
    q.set_claim(id, &c, &HostName("e".into())).unwrap();
    assert!(q.stale_claims(now() - 60).unwrap().is_empty());
    assert_eq!(q.stale_claims(now() + 1).unwrap(), vec![(id, c.clone())]);
    assert!(!q.drop_claim(id, &ClaimId("x".into())).unwrap());
    assert!(q.drop_claim(id, &c).unwrap());
    assert_eq!(q.unclaimed_idle().unwrap().len(), 1);
}

#[test]
fn remove_idle_running_and_unknown() {
    let d = tempfile::tempdir().unwrap();
    let mut q = Queue::open(&d.path().join("queue.db")).unwrap();
    let ids = q
        .submit("alice", "j", |_| Ok(vec![spec("p"), spec("p"), spec("p")]))
        .unwrap();
    let c = ClaimId("c".into());
    let h = HostName("e".into());
    q.set_claim(ids[1], &c, &h).unwrap();
    q.mark_running(ids[1], &c, &h).unwrap();
    q.set_claim(ids[2], &ClaimId("d".into()), &h).unwrap();
    q.mark_running(ids[2], &ClaimId("d".into()), &h).unwrap();
    q.complete(ids[2], ExitStatus::Code(0), &Usage::default())
        .unwrap();
    let missing = JobId {
        cluster: 7,
        proc: 0,
    };
    let (removed, nf) = q
        .remove(&[ids[0], ids[1], ids[2], missing], "alice")
        .unwrap();
    assert_eq!(
        removed,
        vec![
            Removed {
                id: ids[0],
                was_running: false,
                claim: None
            },
            Removed {
                id: ids[1],
                was_running: true,
                claim: Some(c.clone())
            },
        ]
    );
    assert_eq!(nf, vec![ids[2], missing]);
    assert_eq!(q.get(ids[1]).unwrap().unwrap().state, JobState::Removed);
    // A removed job is not completed or requeued by a late shadow.
    assert!(
        !q.complete(ids[1], ExitStatus::Code(0), &Usage::default())
            .unwrap()
    );
    assert!(!q.requeue(ids[1], "evicted", "x").unwrap());
    assert_eq!(q.get(ids[1]).unwrap().unwrap().state, JobState::Removed);
    assert_eq!(names(&q, ids[1]).last().unwrap(), "removed");
}

#[test]
fn failures_hold_the_job_after_retries() {
    let d = tempfile::tempdir().unwrap();
    let mut q = Queue::open(&d.path().join("queue.db")).unwrap();
    let id = q.submit("alice", "j", |_| Ok(vec![spec("p")])).unwrap()[0];
    assert_eq!(q.failed(id, "no such file").unwrap(), Some(JobState::Idle));
    assert_eq!(q.failed(id, "no such file").unwrap(), Some(JobState::Idle));
    assert_eq!(q.failed(id, "no such file").unwrap(), Some(JobState::Held));
    assert_eq!(q.failed(id, "again").unwrap(), None);
    let ev = events(&q, id);
    assert_eq!(ev.last().unwrap()["event"], "held");
    assert!(
        ev.last().unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("no such file")
    );
}

#[test]
fn reopening_keeps_jobs_and_requeues_running_ones() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("queue.db");
    let ids;
    {
        let mut q = Queue::open(&path).unwrap();
        ids = q
            .submit("alice", "j", |_| Ok(vec![spec("p"), spec("p")]))
            .unwrap();
        let c = ClaimId("c".into());
        q.set_claim(ids[1], &c, &HostName("e".into())).unwrap();
        q.mark_running(ids[1], &c, &HostName("e".into())).unwrap();
        // Dropped without any shutdown, as after kill -9.
    }
    let mut q = Queue::open(&path).unwrap();
    let rows = q.list(false).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.state == JobState::Idle));
    assert_eq!(names(&q, ids[1]).last().unwrap(), "evicted");
    assert_eq!(
        q.submit("a", "f", |_| Ok(vec![spec("p")])).unwrap()[0].cluster,
        2
    );
}

#[test]
fn events_also_go_to_the_users_own_log() {
    let d = tempfile::tempdir().unwrap();
    let mut q = Queue::open(&d.path().join("queue.db")).unwrap();
    let user_log = d.path().join("job.log");
    let ul = user_log.display().to_string();
    let ids = q
        .submit_jobs("alice", "j", |_| {
            Ok(vec![
                NewJob {
                    spec: spec("p"),
                    user_log: Some(ul.clone()),
                },
                NewJob {
                    spec: spec("p"),
                    user_log: None,
                },
            ])
        })
        .unwrap();
    let c = ClaimId("c".into());
    let h = HostName("exec1".into());
    q.set_claim(ids[0], &c, &h).unwrap();
    q.mark_running(ids[0], &c, &h).unwrap();
    q.complete(ids[0], ExitStatus::Code(0), &Usage::default())
        .unwrap();
    q.remove(&[ids[1]], "alice").unwrap();
    let text = std::fs::read_to_string(&user_log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        q.log(ids[0]).unwrap().unwrap(),
        "the same lines as the queue's log"
    );
    assert_eq!(lines.len(), 4);
    // A log that cannot be written does not stop the queue.
    let ids = q
        .submit_jobs("alice", "j", |_| {
            Ok(vec![NewJob {
                spec: spec("p"),
                user_log: Some("/nonexistent/dir/x.log".into()),
            }])
        })
        .unwrap();
    assert_eq!(q.remove(&ids, "alice").unwrap().0.len(), 1);
}

#[test]
fn checkpoints_holds_and_history() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("queue.db");
    let ids;
    let (c, h) = (ClaimId("c".into()), HostName("e".into()));
    let img = |seq| NewImage {
        seq,
        bytes: 10 * u64::from(seq),
        raw_bytes: 99,
        seconds: 0.5,
        fs: "{}".into(),
        reason: "periodic".into(),
        kind: "full",
    };
    {
        let mut q = Queue::open(&path).unwrap();
        ids = q
            .submit("alice", "j", |_| Ok(vec![spec("p"), spec("p"), spec("p")]))
            .unwrap();
        assert!(
            !q.checkpointed(ids[0], &img(1)).unwrap(),
            "idle: nothing stored"
        );
        q.set_claim(ids[0], &c, &h).unwrap();
        q.mark_running(ids[0], &c, &h).unwrap();
        assert!(q.checkpointed(ids[0], &img(1)).unwrap());
        assert!(q.checkpointed(ids[0], &img(2)).unwrap());
        let r = q.get(ids[0]).unwrap().unwrap();
        assert_eq!((r.checkpoints, r.image.unwrap().seq), (2, 2));
        // A hold asked for while it runs waits for it to leave its host.
        let out = q.hold(&[ids[0], ids[1], ids[1]], "why", "alice").unwrap();
        assert_eq!(out.done, vec![ids[0], ids[1]]);
        assert_eq!(out.vacating, vec![ids[0]]);
        assert_eq!(out.refused, vec![(ids[1], "already held".to_string())]);
        assert_eq!(q.get(ids[0]).unwrap().unwrap().state, JobState::Running);
        // kill -9 here.
    }
    let mut q = Queue::open(&path).unwrap();
    let r = q.get(ids[0]).unwrap().unwrap();
    assert_eq!(
        (r.state, r.hold_reason.as_deref()),
        (JobState::Held, Some("why"))
    );
    assert_eq!(
        r.image.as_ref().map(|i| i.bytes),
        Some(20),
        "the image survives"
    );
    let e = events(&q, ids[0]);
    let n = e.len();
    assert_eq!(e[n - 2]["event"], "evicted");
    assert_eq!(e[n - 2]["from_checkpoint"], true);
    assert_eq!(e[n - 1]["event"], "held");
    assert_eq!(q.images().unwrap(), vec![(ids[0], JobState::Held, 2)]);
    q.image_lost(ids[0], "gone").unwrap();
    assert!(q.get(ids[0]).unwrap().unwrap().image.is_none());
    assert_eq!(names(&q, ids[0]).last().unwrap(), "checkpoint_lost");

    let (done, refused) = q.release(&[ids[0], ids[2]], "alice").unwrap();
    assert_eq!(done, vec![ids[0]]);
    assert_eq!(refused[0].0, ids[2]);
    assert_eq!(q.get(ids[0]).unwrap().unwrap().state, JobState::Idle);
    assert!(
        q.unclaimed_idle().unwrap().iter().all(|r| r.id != ids[1]),
        "held: not matched"
    );
    // A job that fails while a hold waits for it is held.
    q.set_claim(ids[0], &c, &h).unwrap();
    q.mark_running(ids[0], &c, &h).unwrap();
    q.hold(&[ids[0]], "later", "alice").unwrap();
    assert_eq!(q.failed(ids[0], "crashed").unwrap(), Some(JobState::Held));
    assert_eq!(
        q.get(ids[0]).unwrap().unwrap().hold_reason.as_deref(),
        Some("later")
    );

    q.remove(&[ids[2]], "alice").unwrap();
    q.remove(&[ids[1]], "alice").unwrap();
    let hist = q.history(None).unwrap();
    assert_eq!(hist.len(), 2);
    assert!(
        hist.iter()
            .all(|j| j.state == JobState::Removed && j.finished.is_some())
    );
    assert_eq!(q.history(Some(1)).unwrap().len(), 1);
}
