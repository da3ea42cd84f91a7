//! The real `roost` binary against a scripted schedd on a Unix socket:
//! what the user sees (stdout, stderr, exit status) for submit, q, rm, log
//! and wait.

use proto::cli::{CliReply, CliRequest};
use proto::frame::{MAX_FRAME, read_frame, write_frame};
use proto::ids::{HostName, JobId};
use proto::job::{ExitStatus, JobState, JobSummary};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;

/// Serves one connection per reply from `answer`, recording each request,
/// until `answer` returns `None`.
fn fake(
    sock: &Path,
    mut answer: impl FnMut(&CliRequest) -> Option<CliReply> + Send + 'static,
) -> JoinHandle<Vec<CliRequest>> {
    let l = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        loop {
            let (mut c, _) = l.accept().unwrap();
            let req: CliRequest = read_frame(&mut c, MAX_FRAME).unwrap();
            let reply = answer(&req);
            seen.push(req);
            match reply {
                Some(r) => write_frame(&mut c, &r).unwrap(),
                None => return seen,
            }
        }
    })
}

fn roost(sock: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(args)
        .current_dir(cwd)
        .env_remove("ROOST_POOL")
        .env("ROOST_SCHEDD_SOCK", sock)
        .output()
        .unwrap()
}

fn job(proc: u32, state: JobState, exit: Option<ExitStatus>) -> JobSummary {
    JobSummary {
        id: JobId { cluster: 4, proc },
        owner: "ann".into(),
        state,
        executable: "/bin/sort".into(),
        arguments: vec!["words.txt".into()],
        host: (state != JobState::Idle).then(|| HostName("exec1".into())),
        submitted: 1_795_464_062,
        exit,
        runs: u32::from(state != JobState::Idle),
        checkpoints: 0,
        ckpt_bytes: None,
        ckpt_time: None,
        ckpt_kind: None,
        ckpt_secs: None,
        finished: None,
        hold_reason: None,
        transfer: None,
    }
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("schedd.sock");
    (d, sock)
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap()
}

#[test]
fn submit_prints_ids_and_sends_file_text_and_cwd() {
    let (d, sock) = setup();
    std::fs::write(
        d.path().join("job.toml"),
        "executable = \"/bin/sort\"\nqueue = 2\n",
    )
    .unwrap();
    let server = fake(&sock, |r| match r {
        CliRequest::Submit { .. } => Some(CliReply::Submitted {
            jobs: vec![
                JobId {
                    cluster: 4,
                    proc: 0,
                },
                JobId {
                    cluster: 4,
                    proc: 1,
                },
            ],
        }),
        _ => None,
    });
    let out = roost(&sock, d.path(), &["submit", "job.toml"]);
    assert_eq!(text(&out.stdout), "4.0\n4.1\n");
    assert!(out.status.success());
    let _ = std::os::unix::net::UnixStream::connect(&sock)
        .map(|mut s| write_frame(&mut s, &CliRequest::Ping));
    let seen = server.join().unwrap();
    assert_eq!(
        seen[0],
        CliRequest::Submit {
            file: "job.toml".into(),
            text: "executable = \"/bin/sort\"\nqueue = 2\n".into(),
            cwd: d.path().canonicalize().unwrap().display().to_string(),
        }
    );
}

#[test]
fn submit_refused_prints_the_schedds_message_and_exits_1() {
    let (d, sock) = setup();
    std::fs::write(d.path().join("bad.toml"), "exectuable = 1\n").unwrap();
    let server = fake(&sock, |_| {
        Some(CliReply::Error {
            message: "bad.toml:1:1: unknown key 'exectuable'".into(),
        })
    });
    let out = roost(&sock, d.path(), &["submit", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "roost: bad.toml:1:1: unknown key 'exectuable'\n"
    );
    drop(server);

    let out = roost(&sock, d.path(), &["submit", "missing.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("roost: cannot read the job file missing.toml: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn q_json_is_the_job_summaries_and_the_table_is_readable() {
    let (d, sock) = setup();
    let jobs = vec![
        job(0, JobState::Running, None),
        job(1, JobState::Idle, None),
    ];
    let reply = jobs.clone();
    let _server = fake(&sock, move |_| {
        Some(CliReply::Queue {
            jobs: reply.clone(),
        })
    });
    let out = roost(&sock, d.path(), &["q", "--json"]);
    assert!(out.status.success());
    let back: Vec<JobSummary> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(back, jobs);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["id"], serde_json::json!({"cluster": 4, "proc": 0}));
    assert_eq!(v[0]["state"], "Running");

    let out = roost(&sock, d.path(), &["q"]);
    assert_eq!(
        text(&out.stdout),
        "\
ID   OWNER  STATE    HOST   RUNS  CKPT  CMD
4.0  ann    running  exec1  1     -     /bin/sort words.txt
4.1  ann    idle     -      0     -     /bin/sort words.txt
2 jobs: 1 idle, 1 running
"
    );
}

#[test]
fn rm_of_a_cluster_removes_its_jobs_and_reports_unknown_ones() {
    let (d, sock) = setup();
    let server = fake(&sock, |r| match r {
        CliRequest::Queue { .. } => Some(CliReply::Queue {
            jobs: vec![
                job(0, JobState::Running, None),
                job(1, JobState::Idle, None),
            ],
        }),
        CliRequest::Remove { jobs } => Some(CliReply::Removed {
            jobs: jobs.iter().copied().filter(|j| j.cluster == 4).collect(),
            not_found: jobs.iter().copied().filter(|j| j.cluster != 4).collect(),
        }),
        _ => None,
    });
    let out = roost(&sock, d.path(), &["rm", "4", "9.2"]);
    assert_eq!(text(&out.stdout), "removed 4.0\nremoved 4.1\n");
    assert_eq!(
        text(&out.stderr),
        "roost: no job 9.2 in the queue (`roost q` lists them)\n"
    );
    assert_eq!(out.status.code(), Some(1));
    let _ = std::os::unix::net::UnixStream::connect(&sock)
        .map(|mut s| write_frame(&mut s, &CliRequest::Ping));
    let seen = server.join().unwrap();
    assert_eq!(
        seen[1],
        CliRequest::Remove {
            jobs: vec![
                JobId {
                    cluster: 4,
                    proc: 0
                },
                JobId {
                    cluster: 4,
                    proc: 1
                },
                JobId {
                    cluster: 9,
                    proc: 2
                }
            ]
        }
    );
}

#[test]
fn log_json_is_verbatim_and_plain_is_readable() {
    let (d, sock) = setup();
    let lines = vec![
        r#"{"time":1795464062,"event":"submitted"}"#.to_string(),
        r#"{"time":1795464063,"event":"executing","host":"exec1"}"#.to_string(),
    ];
    let reply = lines.clone();
    let _server = fake(&sock, move |_| {
        Some(CliReply::Log {
            lines: reply.clone(),
        })
    });
    let out = roost(&sock, d.path(), &["log", "4.0", "--json"]);
    assert_eq!(text(&out.stdout), format!("{}\n{}\n", lines[0], lines[1]));
    let out = roost(&sock, d.path(), &["log", "4.0"]);
    assert_eq!(
        text(&out.stdout),
        "2026-11-23 20:01:02  submitted\n2026-11-23 20:01:03  executing    host=exec1\n"
    );
}

#[test]
fn wait_exits_with_the_jobs_exit_code_after_it_completes() {
    let (d, sock) = setup();
    let mut polls = 0;
    let _server = fake(&sock, move |_| {
        polls += 1;
        let state = if polls < 3 {
            JobState::Running
        } else {
            JobState::Completed
        };
        let exit = (polls >= 3).then_some(ExitStatus::Code(3));
        Some(CliReply::Queue {
            jobs: vec![job(0, state, exit), job(1, JobState::Idle, None)],
        })
    });
    let t = std::time::Instant::now();
    let out = roost(&sock, d.path(), &["wait", "4.0"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(t.elapsed().as_millis() >= 400, "did not poll");
    // No progress line on a stderr that is not a terminal; just the outcome.
    assert_eq!(text(&out.stderr), "roost: job 4.0 exited with status 3\n");
}

#[test]
fn wait_reports_signals_removals_and_timeouts() {
    let (d, sock) = setup();
    let _server = fake(&sock, |_| {
        Some(CliReply::Queue {
            jobs: vec![
                job(0, JobState::Removed, None),
                job(1, JobState::Completed, Some(ExitStatus::Signal(9))),
                job(2, JobState::Running, None),
            ],
        })
    });
    let out = roost(&sock, d.path(), &["wait", "4.0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "roost: job 4.0 was removed\n");
    let out = roost(&sock, d.path(), &["wait", "4.0", "4.1"]);
    assert_eq!(out.status.code(), Some(137));
    let out = roost(&sock, d.path(), &["wait", "4.2", "--timeout", "0.3"]);
    assert_eq!(out.status.code(), Some(124));
    assert_eq!(
        text(&out.stderr),
        "roost: gave up after 0.3 s: 4.2 running on exec1 (0s)\n"
    );
    let out = roost(&sock, d.path(), &["wait", "5.0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "roost: no job 5.0 in the queue (`roost q --all` lists every job)\n"
    );
}

#[test]
fn checkpoint_vacate_hold_release_say_what_was_done_and_why_not() {
    let (d, sock) = setup();
    let id = |proc| JobId { cluster: 4, proc };
    let server = fake(&sock, move |r| match r {
        CliRequest::Queue { .. } => Some(CliReply::Queue {
            jobs: vec![
                job(0, JobState::Running, None),
                job(1, JobState::Idle, None),
            ],
        }),
        CliRequest::Checkpoint { jobs } | CliRequest::Vacate { jobs } => Some(CliReply::Acted {
            done: vec![jobs[0]],
            vacating: if matches!(r, CliRequest::Vacate { .. }) {
                vec![jobs[0]]
            } else {
                vec![]
            },
            refused: jobs[1..]
                .iter()
                .map(|&j| (j, "the job is idle, not running".to_string()))
                .collect(),
        }),
        CliRequest::Hold { jobs, .. } => Some(CliReply::Acted {
            done: jobs.clone(),
            vacating: vec![jobs[0]],
            refused: vec![],
        }),
        CliRequest::Release { jobs } => Some(CliReply::Acted {
            done: jobs.clone(),
            vacating: vec![],
            refused: vec![],
        }),
        CliRequest::History { .. } => Some(CliReply::History {
            jobs: vec![JobSummary {
                finished: Some(1_795_464_062),
                checkpoints: 2,
                ..job(2, JobState::Completed, Some(ExitStatus::Code(0)))
            }],
        }),
        _ => None,
    });
    let out = roost(&sock, d.path(), &["checkpoint", "4"]);
    assert_eq!(text(&out.stdout), "checkpointing 4.0\n");
    assert_eq!(
        text(&out.stderr),
        "roost: 4.1: the job is idle, not running\n"
    );
    assert_eq!(out.status.code(), Some(1));
    let out = roost(&sock, d.path(), &["vacate", "4.0"]);
    assert_eq!(text(&out.stdout), "vacating 4.0\n");
    assert!(out.status.success());
    let out = roost(
        &sock,
        d.path(),
        &["hold", "4.0", "4.1", "--reason", "bad input"],
    );
    assert_eq!(
        text(&out.stdout),
        "holding 4.0 (vacating it from its host first)\nheld 4.1\n"
    );
    assert!(out.status.success());
    let out = roost(&sock, d.path(), &["release", "4.1"]);
    assert_eq!(text(&out.stdout), "released 4.1\n");
    let out = roost(&sock, d.path(), &["history"]);
    assert_eq!(
        text(&out.stdout),
        "\
ID   OWNER  STATE      EXIT  RUNS  CKPT  FINISHED             CMD
4.2  ann    completed  0     1     2     2026-11-23 20:01:02  /bin/sort words.txt
"
    );
    let out = roost(&sock, d.path(), &["history", "--json", "--limit", "1"]);
    let back: Vec<JobSummary> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((back[0].id, back[0].checkpoints), (id(2), 2));
    let _ = std::os::unix::net::UnixStream::connect(&sock)
        .map(|mut s| write_frame(&mut s, &CliRequest::Ping));
    let seen = server.join().unwrap();
    assert_eq!(
        seen[1],
        CliRequest::Checkpoint {
            jobs: vec![id(0), id(1)]
        }
    );
    assert_eq!(seen[2], CliRequest::Vacate { jobs: vec![id(0)] });
    assert_eq!(
        seen[3],
        CliRequest::Hold {
            jobs: vec![id(0), id(1)],
            reason: "bad input".into()
        }
    );
    assert_eq!(seen[4], CliRequest::Release { jobs: vec![id(1)] });
    assert_eq!(seen[6], CliRequest::History { limit: Some(1) });
}
