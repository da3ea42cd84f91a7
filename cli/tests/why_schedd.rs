//! The real `roost` binary against the real schedd library in-process and
//! a scripted matchmaker on TLS: `roost why` (with and without the
//! matchmaker's explanation), `roost q --constraint/--run/--held`,
//! `roost status --constraint`, `roost eval` and `roost submit --dry-run`.

use cli::pool::{PoolDir, init};
use proto::frame::{MAX_FRAME, read_frame_async, write_frame_async};
use proto::ids::HostName;
use proto::pool::{AdValue, FromMatchmaker, JobAd, MachineAd, ToMatchmaker, WhyReport};
use proto::tls::Identity;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A pool directory with a running schedd (its matchmaker link refused,
/// so it keeps retrying in the background) and a scripted matchmaker.
struct Pool {
    tmp: tempfile::TempDir,
    mm_addr: String,
    /// `Why` messages the matchmaker received.
    whys: Arc<Mutex<Vec<JobAd>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Pool {
    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn work(&self) -> PathBuf {
        self.dir().join("work")
    }

    /// Runs `roost ARGS` in the pool's `work/` directory.
    async fn roost(&self, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_roost"));
        cmd.args(args)
            .current_dir(self.work())
            .env("ROOST_POOL", self.dir())
            .env("ROOST_MATCHMAKER", &self.mm_addr)
            .env_remove("ROOST_SCHEDD_SOCK");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

fn machine(name: &str, state: &str, attrs: &[(&str, AdValue)]) -> MachineAd {
    MachineAd {
        name: HostName(name.into()),
        state: state.into(),
        activity: "Idle".into(),
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

fn machines() -> Vec<MachineAd> {
    use AdValue::*;
    vec![
        machine(
            "exec1",
            "Unclaimed",
            &[
                ("Memory", Int(2048)),
                ("OpSys", Str("LINUX".into())),
                ("KeyboardIdle", Int(1200)),
            ],
        ),
        machine(
            "exec2",
            "Owner",
            &[
                ("Memory", Int(8192)),
                ("OpSys", Str("LINUX".into())),
                ("KeyboardIdle", Int(3)),
                ("Requirements", Expr("START".into())),
                ("START", Expr("KeyboardIdle > 15 * 60".into())),
            ],
        ),
    ]
}

/// How the scripted matchmaker answers `Why`.
#[derive(Clone, Copy)]
enum WhyMode {
    /// As a matchmaker that does not know the request.
    Refuse,
    /// With a fixed report.
    Explain,
}

fn fixed_report(job: &JobAd) -> WhyReport {
    WhyReport {
        job: job.job,
        machines: 2,
        clauses: vec![
            ("Memory >= 4096".into(), 1),
            ("OpSys == \"LINUX\"".into(), 0),
        ],
        machine_refusals: vec![(
            HostName("exec2".into()),
            "START: KeyboardIdle > 15 * 60".into(),
        )],
        matching: vec![],
    }
}

async fn start(mode: WhyMode) -> Pool {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolDir::new(tmp.path()).unwrap();
    init(&pool, 2, false).unwrap();
    std::fs::create_dir_all(tmp.path().join("work")).unwrap();

    let id = Identity::load(&pool.pki(), "cm").unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mm_addr = l.local_addr().unwrap().to_string();
    let whys: Arc<Mutex<Vec<JobAd>>> = Arc::default();
    let seen = whys.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let id = id.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut t = id.acceptor().accept(tcp).await.unwrap();
                let msg: ToMatchmaker = read_frame_async(&mut t, MAX_FRAME).await.unwrap();
                let reply = match (msg, mode) {
                    (ToMatchmaker::Status, _) => FromMatchmaker::Machines(machines()),
                    (ToMatchmaker::Why { job }, WhyMode::Refuse) => {
                        seen.lock().unwrap().push(job);
                        FromMatchmaker::Error {
                            message: "unexpected message from a user".into(),
                        }
                    }
                    (ToMatchmaker::Why { job }, WhyMode::Explain) => {
                        let r = fixed_report(&job);
                        seen.lock().unwrap().push(job);
                        FromMatchmaker::Why(r)
                    }
                    (other, _) => FromMatchmaker::Error {
                        message: format!("not scripted: {other:?}"),
                    },
                };
                write_frame_async(&mut t, &reply).await.unwrap();
                let _ = t.shutdown().await;
            });
        }
    });

    let cfg = shadow::Config {
        pki: pool.pki(),
        name: "submit".into(),
        dir: pool.host_dir("submit"),
        listen: "127.0.0.1:0".into(),
        advertise: None,
        // Port 1 refuses: the schedd's matchmaker client retries in the background.
        matchmaker: "127.0.0.1:1".into(),
        matchmaker_name: "cm".into(),
        claim_timeout: std::time::Duration::from_secs(60),
        job_lease: shadow::JOB_LEASE,
    };
    let bound = shadow::Schedd::bind(cfg).await.unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        bound
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Pool {
        tmp,
        mm_addr,
        whys,
        stop: Some(tx),
        task: Some(task),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// Submits `job.toml` with `body`; returns the owner the schedd recorded.
async fn submit(p: &Pool, body: &str) -> String {
    std::fs::write(p.work().join("job.toml"), body).unwrap();
    let out = p.roost(&["submit", "job.toml"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let q = p.roost(&["q", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
    v[0]["owner"].as_str().unwrap().to_string()
}

const JOB: &str = "executable = \"/bin/true\"\nrequirements = 'Memory >= 4096 && OpSys == \"LINUX\"'\nrequest_memory = 512\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_computes_locally_when_the_matchmaker_cannot_explain() {
    let mut p = start(WhyMode::Refuse).await;
    let owner = submit(&p, JOB).await;
    let out = p.roost(&["why", "1.0"]).await;
    assert_eq!(text(&out.stderr), "");
    assert_eq!(
        text(&out.stdout),
        format!(
            "\
Job 1.0 ({owner}, idle) against 2 machines (computed here from `roost status`; the matchmaker said: unexpected message from a user):

The job's requirements, clause by clause:
  REJECTS  CLAUSE
  1 of 2   Memory >= 4096
  0 of 2   OpSys == \"LINUX\"

Machines whose own requirements reject the job:
  MACHINE  FAILING CLAUSE
  exec2    START: KeyboardIdle > 15 * 60

No machine matches now. The clause that rejects the most machines is `Memory >= 4096` (1 of 2).
"
        )
    );
    assert!(out.status.success());
    // The matchmaker was sent the job's ad as the schedd built it.
    let sent = p.whys.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].job.to_string(), "1.0");
    assert_eq!(sent[0].owner, owner);
    let a = &sent[0].attrs;
    assert_eq!(
        a.get("Requirements"),
        Some(&AdValue::Expr(
            "Memory >= 4096 && OpSys == \"LINUX\"".into()
        ))
    );
    assert_eq!(a.get("RequestMemory"), Some(&AdValue::Int(512)));
    assert_eq!(a.get("JobState"), Some(&AdValue::Str("idle".into())));
    assert_eq!(a.get("ClusterId"), Some(&AdValue::Int(1)));

    let out = p.roost(&["why", "9.0"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "roost: no job 9.0 in the queue (`roost q --all` lists every job)\n"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_prints_the_matchmakers_report_and_json() {
    let mut p = start(WhyMode::Explain).await;
    let owner = submit(&p, JOB).await;
    let out = p.roost(&["why", "1"]).await;
    assert_eq!(
        text(&out.stdout),
        format!(
            "\
Job 1.0 ({owner}, idle) against 2 machines the matchmaker knows:

The job's requirements, clause by clause:
  REJECTS  CLAUSE
  1 of 2   Memory >= 4096
  0 of 2   OpSys == \"LINUX\"

Machines whose own requirements reject the job:
  MACHINE  FAILING CLAUSE
  exec2    START: KeyboardIdle > 15 * 60

No machine matches now. The clause that rejects the most machines is `Memory >= 4096` (1 of 2).
"
        )
    );
    let out = p.roost(&["why", "1.0", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "Idle");
    assert_eq!(v["source"]["kind"], "matchmaker");
    assert_eq!(v["requirements"], "Memory >= 4096 && OpSys == \"LINUX\"");
    assert_eq!(v["report"]["clauses"][0][1], 1);
    assert_eq!(v["report"]["machine_refusals"][0][0], "exec2");

    // A held job is still explained, with how to release it.
    let out = p
        .roost(&["hold", "1.0", "--reason", "input not ready"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = p.roost(&["why", "1.0"]).await;
    let shown = text(&out.stdout);
    assert!(
        shown.starts_with(&format!(
            "Job 1.0 ({owner}, held) against 2 machines the matchmaker knows:\n\
             It is held (input not ready); `roost release 1.0` lets it be matched.\n"
        )),
        "{shown}"
    );
    // A removed job needs no machine; the matchmaker is not asked.
    let before = p.whys.lock().unwrap().len();
    let out = p.roost(&["rm", "1.0"]).await;
    assert!(out.status.success());
    let out = p.roost(&["why", "1.0"]).await;
    assert_eq!(
        text(&out.stdout),
        "Job 1.0 is removed: it no longer needs a machine.\n"
    );
    assert_eq!(p.whys.lock().unwrap().len(), before);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q_filters_by_constraint_state_and_status_by_constraint() {
    let mut p = start(WhyMode::Refuse).await;
    let owner = submit(&p, "executable = \"/bin/echo\"\nrequest_memory = 512\n").await;
    submit(
        &p,
        "executable = \"/bin/echo\"\narguments = [\"$(Process)\"]\nrequest_memory = 2048\nqueue = 2\n[attributes]\nProject = \"physics\"\n",
    )
    .await;
    let out = p
        .roost(&[
            "q",
            "--constraint",
            "RequestMemory >= 1000 && Project == \"PHYSICS\"",
        ])
        .await;
    let w = owner.len().max(5);
    assert_eq!(
        text(&out.stdout),
        format!(
            "\
ID   {:<w$}  STATE  HOST  RUNS  CKPT  CMD
2.0  {owner:<w$}  idle   -     0     -     /bin/echo 0
2.1  {owner:<w$}  idle   -     0     -     /bin/echo 1
2 jobs: 2 idle
",
            "OWNER"
        )
    );
    let out = p.roost(&["q", "--constraint", "RequestMemory >"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "roost: --constraint: column 16: expected an expression, found the end\n  RequestMemory >\n                 ^\n"
    );

    let out = p.roost(&["hold", "2.1", "--reason", "disk full"]).await;
    assert!(out.status.success());
    let out = p.roost(&["q", "--held"]).await;
    let held = text(&out.stdout);
    assert!(held.starts_with("ID   OWNER"), "{held}");
    assert!(held.contains("/bin/echo 1  disk full\n"), "{held}");
    assert!(
        held.ends_with("1 job held (`roost release JOB` lets it run)\n"),
        "{held}"
    );
    let out = p.roost(&["q", "--run"]).await;
    assert_eq!(
        text(&out.stdout),
        "ID  OWNER  HOST  RUNS  CKPT  CMD\nno running jobs\n"
    );
    let out = p.roost(&["q", "--held", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["hold_reason"], "disk full");

    let out = p
        .roost(&[
            "status",
            "--constraint",
            "State == \"unclaimed\" || Memory > 4096",
        ])
        .await;
    assert_eq!(
        text(&out.stdout),
        "\
NAME   STATE      ACTIVITY  KBDIDLE  LOADAVG  MEMORY
exec1  Unclaimed  Idle      20m00s   -        2048 MB
exec2  Owner      Idle      3s       -        8192 MB
2 machines: 1 Unclaimed, 1 Owner
"
    );
    let out = p
        .roost(&["status", "--json", "--constraint", "START"])
        .await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!([]));
    let out = p.roost(&["status", "--constraint", "Memory >= 4096"]).await;
    assert!(text(&out.stdout).starts_with("NAME   STATE  ACTIVITY"));
    assert!(text(&out.stdout).contains("exec2  Owner"));
    assert!(!text(&out.stdout).contains("exec1"));
    p.stop().await;
}

#[test]
fn eval_against_ad_files() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("job.ad"),
        "RequestMemory = 2048\nOwner = \"ann\"\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("m.ad"),
        "[ Memory = 4096; OpSys = \"LINUX\"; Start = KeyboardIdle > 900 ]",
    )
    .unwrap();
    let roost = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_roost"))
            .args(args)
            .current_dir(d.path())
            .output()
            .unwrap()
    };
    let out = roost(&[
        "eval",
        "TARGET.Memory >= RequestMemory",
        "Start",
        "strcat(Owner, \"/\", OpSys)",
        "--my",
        "job.ad",
        "--target",
        "m.ad",
    ]);
    assert_eq!(text(&out.stdout), "true\nundefined\n\"ann/LINUX\"\n");
    assert!(out.status.success());
    let out = roost(&["eval", "1 + (2"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "roost: the expression: column 7: expected ')', found the end\n  1 + (2\n        ^\n"
    );
    let out = roost(&["eval", "x", "--my", "none.ad"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("roost: cannot read the ad file none.ad: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn dry_run_reads_submit_files_and_shows_ads() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("job.sub"),
        "executable = /bin/echo\narguments = hello $(Process)\nrequest_memory = 256\nrequirements = Memory > 1024\n+Project = \"physics\"\nqueue 2\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["submit", "--dry-run", "job.sub"])
        .current_dir(d.path())
        .env("USER", "ann")
        .output()
        .unwrap();
    let dir = d.path().display().to_string();
    assert_eq!(text(&out.stderr), "");
    let job = |p: u32| {
        format!(
            "\
job 0.{p}
  executable    /bin/echo (on the execute host)
  arguments     hello {p}
  initialdir    {dir}
  requirements  Memory > 1024
  request       1 cpus, 256 MB memory, 128 MB disk
  +Project      \"physics\"
  ad:
    Cmd = \"/bin/echo\"
    Iwd = \"{dir}\"
    MaxRetries = 0
    MyType = \"Job\"
    Owner = \"ann\"
    Project = \"physics\"
    RequestCpus = 1
    RequestDisk = 128
    RequestMemory = 256
    Requirements = Memory > 1024
"
        )
    };
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}{}2 jobs (not submitted; the schedd numbers the cluster)\n",
            job(0),
            job(1)
        )
    );
}
