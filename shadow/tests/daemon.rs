//! The schedd in-process: the CLI socket, the shadow port and the
//! matchmaker client, driven with real frames over real sockets.

use proto::cli::{CliReply, CliRequest};
use proto::fileop::{FileOp, FileReply};
use proto::frame::{MAX_FRAME, read_frame_async, write_frame_async};
use proto::job::{ExitStatus, JobState, Usage};
use proto::pool::{FromMatchmaker, Match, ToMatchmaker};
use proto::shadow::{FromShadow, ToShadow};
use proto::tls::Identity;
use proto::{ClaimId, HostName, JobId};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};

const T: Duration = Duration::from_secs(20);

struct Pool {
    tmp: tempfile::TempDir,
    pki: PathBuf,
    sock: PathBuf,
    shadow: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Pool {
    fn dir(&self) -> &Path {
        self.tmp.path()
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

fn pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    proto::tls::init_ca(&pki, "test").unwrap();
    proto::tls::issue(&pki, "submit", "schedd", &[]).unwrap();
    proto::tls::issue(&pki, "cm", "matchmaker", &[]).unwrap();
    proto::tls::issue(&pki, "exec1", "ownerd", &[]).unwrap();
    proto::tls::issue(&pki, "exec2", "ownerd", &[]).unwrap();
    proto::tls::issue(&pki, "alice", "user", &[]).unwrap();
    pki
}

/// Starts a schedd on a temp dir; `mm` is the matchmaker address.
async fn start(mm: Option<String>) -> Pool {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    start_in(tmp, pki, mm).await
}

async fn start_in(tmp: tempfile::TempDir, pki: PathBuf, mm: Option<String>) -> Pool {
    start_with(tmp, pki, mm, Duration::from_secs(60)).await
}

async fn start_with(
    tmp: tempfile::TempDir,
    pki: PathBuf,
    mm: Option<String>,
    claim_timeout: Duration,
) -> Pool {
    let cfg = shadow::Config {
        pki: pki.clone(),
        name: "submit".into(),
        dir: tmp.path().join("submit"),
        listen: "127.0.0.1:0".into(),
        advertise: None,
        // Port 1 refuses: the client keeps retrying in the background.
        matchmaker: mm.unwrap_or_else(|| "127.0.0.1:1".into()),
        matchmaker_name: "cm".into(),
        claim_timeout,
        job_lease: shadow::JOB_LEASE,
    };
    let bound = shadow::Schedd::bind(cfg).await.unwrap();
    let sock = bound.sock().to_path_buf();
    let shadow = bound.shadow_addr();
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
        pki,
        sock,
        shadow,
        stop: Some(tx),
        task: Some(task),
    }
}

async fn cli(sock: &Path, req: &CliRequest) -> CliReply {
    let mut s = UnixStream::connect(sock).await.unwrap();
    write_frame_async(&mut s, req).await.unwrap();
    tokio::time::timeout(T, read_frame_async(&mut s, MAX_FRAME))
        .await
        .unwrap()
        .unwrap()
}

async fn submit(p: &Pool, text: &str) -> Vec<JobId> {
    let req = CliRequest::Submit {
        file: "job.toml".into(),
        text: text.into(),
        cwd: p.dir().join("work").display().to_string(),
    };
    match cli(&p.sock, &req).await {
        CliReply::Submitted { jobs } => jobs,
        r => panic!("submit: {r:?}"),
    }
}

async fn queue(p: &Pool, all: bool) -> Vec<proto::job::JobSummary> {
    match cli(&p.sock, &CliRequest::Queue { all }).await {
        CliReply::Queue { jobs } => jobs,
        r => panic!("queue: {r:?}"),
    }
}

async fn log(p: &Pool, job: JobId) -> Vec<Value> {
    match cli(&p.sock, &CliRequest::Log { job }).await {
        CliReply::Log { lines } => lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        r => panic!("log: {r:?}"),
    }
}

fn events(v: &[Value]) -> Vec<String> {
    v.iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

fn me() -> String {
    let uid = rustix::process::geteuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| uid.to_string())
}

fn workdir(p: &Pool) -> PathBuf {
    let w = p.dir().join("work");
    std::fs::create_dir_all(&w).unwrap();
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_submit_queue_remove_log_over_the_socket() {
    let mut p = start(None).await;
    workdir(&p);
    let mode = std::fs::metadata(&p.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(cli(&p.sock, &CliRequest::Ping).await, CliReply::Pong);

    let ids = submit(&p, "executable = \"prog\"\narguments = \"x $(Process)\"\noutput = \"out.$(Process)\"\nqueue = 2\n").await;
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
    let q = queue(&p, false).await;
    assert_eq!(q.len(), 2);
    assert_eq!(q[1].arguments, vec!["x".to_string(), "1".to_string()]);
    assert_eq!(q[0].state, JobState::Idle);
    assert_eq!(q[0].owner, me());

    // A bad description names the file, the line and the key; nothing is queued.
    let bad = CliRequest::Submit {
        file: "bad.toml".into(),
        text: "executable = \"p\"\nbogus_key = 3\n".into(),
        cwd: workdir(&p).display().to_string(),
    };
    match cli(&p.sock, &bad).await {
        CliReply::Error { message } => {
            assert!(message.contains("bad.toml"), "{message}");
            assert!(message.contains('2'), "{message}");
            assert!(message.contains("bogus_key"), "{message}");
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(queue(&p, true).await.len(), 2);

    let gone = JobId {
        cluster: 9,
        proc: 0,
    };
    match cli(
        &p.sock,
        &CliRequest::Remove {
            jobs: vec![ids[0], gone],
        },
    )
    .await
    {
        CliReply::Removed { jobs, not_found } => {
            assert_eq!(jobs, vec![ids[0]]);
            assert_eq!(not_found, vec![gone]);
        }
        r => panic!("{r:?}"),
    }
    let q = queue(&p, false).await;
    assert_eq!(q.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[1]]);
    let all = queue(&p, true).await;
    assert_eq!(all[0].state, JobState::Removed);
    let l = log(&p, ids[0]).await;
    assert_eq!(events(&l), ["submitted", "removed"]);
    assert_eq!(l[0]["job"], "1.0");
    match cli(&p.sock, &CliRequest::Log { job: gone }).await {
        CliReply::Error { message } => assert!(message.contains("9.0"), "{message}"),
        r => panic!("{r:?}"),
    }

    // The user's own event log, and an HTCondor submit file.
    let req = CliRequest::Submit {
        file: "job.sub".into(),
        text: "executable = prog\nlog = job.log\nqueue\n".into(),
        cwd: workdir(&p).display().to_string(),
    };
    let CliReply::Submitted { jobs: sub } = cli(&p.sock, &req).await else {
        panic!()
    };
    assert_eq!(
        sub,
        vec![JobId {
            cluster: 2,
            proc: 0
        }]
    );
    let CliReply::Removed { .. } = cli(&p.sock, &CliRequest::Remove { jobs: sub.clone() }).await
    else {
        panic!()
    };
    let user_log = std::fs::read_to_string(workdir(&p).join("job.log")).unwrap();
    let kinds: Vec<String> = user_log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["submitted", "removed"]);

    // Several requests on one connection.
    let mut s = UnixStream::connect(&p.sock).await.unwrap();
    for _ in 0..3 {
        write_frame_async(&mut s, &CliRequest::Ping).await.unwrap();
        let r: CliReply = read_frame_async(&mut s, MAX_FRAME).await.unwrap();
        assert_eq!(r, CliReply::Pong);
    }
    p.stop().await;
    assert!(!p.sock.exists(), "the socket is removed on shutdown");
}

/// Whether the peer closes the connection (after at most a TLS alert).
async fn closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut b = [0u8; 64];
    let mut seen = 0;
    loop {
        match tokio::time::timeout(T, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) if seen + n <= 64 => seen += n,
            Ok(Ok(_)) | Err(_) => return false,
        }
    }
}

async fn tls_to(p: &Pool, name: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    let id = Identity::load(&p.pki, name).unwrap();
    let tcp = TcpStream::connect(p.shadow).await.unwrap();
    id.connector()
        .connect(proto::tls::server_name("submit").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    let p = start(None).await;
    // A client that stays connected throughout.
    let mut good = UnixStream::connect(&p.sock).await.unwrap();

    let mut garbage = UnixStream::connect(&p.sock).await.unwrap();
    garbage
        .write_all(&[3, 0, 0, 0, proto::FRAME_VERSION, 0xff, 0xff])
        .await
        .unwrap();
    assert!(
        closed(&mut garbage).await,
        "garbage frame closes the CLI connection"
    );

    let mut big = UnixStream::connect(&p.sock).await.unwrap();
    big.write_all(&(MAX_FRAME + 1).to_le_bytes()).await.unwrap();
    assert!(
        closed(&mut big).await,
        "oversized frame closes the CLI connection"
    );

    let mut version = UnixStream::connect(&p.sock).await.unwrap();
    version.write_all(&[2, 0, 0, 0, 77, 0]).await.unwrap();
    assert!(
        closed(&mut version).await,
        "unknown version closes the CLI connection"
    );

    write_frame_async(&mut good, &CliRequest::Ping)
        .await
        .unwrap();
    let r: CliReply = read_frame_async(&mut good, MAX_FRAME).await.unwrap();
    assert_eq!(r, CliReply::Pong);

    // The shadow port: a plaintext client fails the TLS handshake.
    let mut plain = TcpStream::connect(p.shadow).await.unwrap();
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert!(
        closed(&mut plain).await,
        "a failed handshake closes the connection"
    );

    // A certificate from another CA is refused.
    let other = p.dir().join("other");
    proto::tls::init_ca(&other, "other").unwrap();
    proto::tls::issue(&other, "exec1", "ownerd", &[]).unwrap();
    let intruder = Identity::load(&other, "exec1").unwrap();
    let tcp = TcpStream::connect(p.shadow).await.unwrap();
    let r = intruder
        .connector()
        .connect(proto::tls::server_name("submit").unwrap(), tcp)
        .await;
    if let Ok(mut t) = r {
        assert!(closed(&mut t).await, "a foreign certificate is refused");
    }

    let mut starter_garbage = tls_to(&p, "exec1").await;
    starter_garbage
        .write_all(&[3, 0, 0, 0, proto::FRAME_VERSION, 0xff, 0xff])
        .await
        .unwrap();
    starter_garbage.flush().await.unwrap();
    assert!(
        closed(&mut starter_garbage).await,
        "garbage frame closes the shadow connection"
    );

    let mut starter_big = tls_to(&p, "exec1").await;
    starter_big
        .write_all(&(MAX_FRAME + 1).to_le_bytes())
        .await
        .unwrap();
    starter_big.flush().await.unwrap();
    assert!(
        closed(&mut starter_big).await,
        "oversized frame closes the shadow connection"
    );

    // A user certificate may not attach.
    let mut user = tls_to(&p, "alice").await;
    let attach = ToShadow::Attach {
        claim: ClaimId("x".into()),
        job: JobId {
            cluster: 1,
            proc: 0,
        },
        host: HostName("alice".into()),
    };
    let _ = write_frame_async(&mut user, &attach).await;
    assert!(closed(&mut user).await);

    // The shadow port still serves: an unknown claim is refused with a reason.
    let mut starter = tls_to(&p, "exec1").await;
    let attach = ToShadow::Attach {
        claim: ClaimId("no-such-claim".into()),
        job: JobId {
            cluster: 1,
            proc: 0,
        },
        host: HostName("exec1".into()),
    };
    write_frame_async(&mut starter, &attach).await.unwrap();
    match read_frame_async(&mut starter, MAX_FRAME).await.unwrap() {
        FromShadow::Refused { reason } => assert!(reason.contains("1.0"), "{reason}"),
        r => panic!("{r:?}"),
    }
    // And the CLI still serves too.
    write_frame_async(&mut good, &CliRequest::Ping)
        .await
        .unwrap();
    let r: CliReply = read_frame_async(&mut good, MAX_FRAME).await.unwrap();
    assert_eq!(r, CliReply::Pong);
}

/// A matchmaker stand-in: records what the schedd sends and lets the test
/// push messages to it.
struct FakeMm {
    addr: String,
    from_schedd: mpsc::UnboundedReceiver<ToMatchmaker>,
    to_schedd: mpsc::UnboundedSender<FromMatchmaker>,
}

async fn fake_mm(pki: &Path) -> FakeMm {
    let id = Identity::load(pki, "cm").unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (in_tx, from_schedd) = mpsc::unbounded_channel();
    let (to_schedd, mut out_rx) = mpsc::unbounded_channel::<FromMatchmaker>();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let t = id.acceptor().accept(tcp).await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(t);
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                write_frame_async(&mut wr, &m).await.unwrap();
            }
        });
        while let Ok(m) = read_frame_async::<_, ToMatchmaker>(&mut rd, MAX_FRAME).await {
            if in_tx.send(m).is_err() {
                return;
            }
        }
    });
    FakeMm {
        addr,
        from_schedd,
        to_schedd,
    }
}

impl FakeMm {
    /// Waits for a message the predicate accepts.
    async fn expect(&mut self, what: &str, f: impl Fn(&ToMatchmaker) -> bool) -> ToMatchmaker {
        tokio::time::timeout(T, async {
            loop {
                let m = self
                    .from_schedd
                    .recv()
                    .await
                    .expect("schedd connection ended");
                if f(&m) {
                    return m;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {what} from the schedd"))
    }

    async fn idle_jobs(&mut self, n: usize) -> Vec<JobId> {
        let m = self
            .expect(
                &format!("{n} idle jobs"),
                |m| matches!(m, ToMatchmaker::Jobs { jobs, .. } if jobs.len() == n),
            )
            .await;
        let ToMatchmaker::Jobs { jobs, schedd, .. } = m else {
            unreachable!()
        };
        assert_eq!(schedd.0, "submit");
        jobs.into_iter().map(|j| j.job).collect()
    }

    fn matched(&self, job: JobId, machine: &str, claim: &str) {
        let m = Match {
            job,
            machine: HostName(machine.into()),
            claim: ClaimId(claim.into()),
        };
        self.to_schedd
            .send(FromMatchmaker::Matches(vec![m]))
            .unwrap();
    }

    async fn released(&mut self, claim: &str) {
        let c = ClaimId(claim.into());
        self.expect(
            "a release",
            |m| matches!(m, ToMatchmaker::Release { claim } if *claim == c),
        )
        .await;
    }
}

type Starter = tokio_rustls::client::TlsStream<TcpStream>;

async fn attach(p: &Pool, host: &str, job: JobId, claim: &str) -> (Starter, FromShadow) {
    let mut s = tls_to(p, host).await;
    let m = ToShadow::Attach {
        claim: ClaimId(claim.into()),
        job,
        host: HostName(host.into()),
    };
    write_frame_async(&mut s, &m).await.unwrap();
    let r = tokio::time::timeout(T, read_frame_async(&mut s, MAX_FRAME))
        .await
        .unwrap()
        .unwrap();
    (s, r)
}

async fn call(s: &mut Starter, id: u64, op: FileOp) -> FileReply {
    write_frame_async(s, &ToShadow::Call { id, op })
        .await
        .unwrap();
    match next(s).await {
        FromShadow::Reply { id: got, reply } => {
            assert_eq!(got, id);
            reply
        }
        r => panic!("{r:?}"),
    }
}

async fn wait_state(p: &Pool, job: JobId, want: JobState) {
    let t0 = std::time::Instant::now();
    loop {
        let q = queue(p, true).await;
        if q.iter().any(|j| j.id == job && j.state == want) {
            return;
        }
        assert!(t0.elapsed() < T, "job {job} never became {want:?}: {q:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_through_the_shadow() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let mut mm = fake_mm(&pki).await;
    let p = start_in(tmp, pki, Some(mm.addr.clone())).await;
    let w = workdir(&p);
    std::fs::write(w.join("prog"), vec![7u8; 2_500_000]).unwrap();
    std::fs::write(w.join("in.txt"), b"input bytes\n").unwrap();
    std::fs::write(w.join("out.txt"), b"stale output that must go").unwrap();
    std::fs::write(p.dir().join("secret"), b"private").unwrap();
    let text =
        "executable = \"prog\"\ninput = \"in.txt\"\noutput = \"out.txt\"\nerror = \"err.txt\"\n";
    let job = submit(&p, text).await[0];
    assert_eq!(mm.idle_jobs(1).await, vec![job]);

    // A starter with no claim, or the wrong one, is refused.
    let (_, r) = attach(&p, "exec1", job, "guess").await;
    assert!(matches!(r, FromShadow::Refused { .. }), "{r:?}");
    mm.matched(job, "exec1", "claim-1");
    // Once claimed, the job is no longer offered.
    assert_eq!(mm.idle_jobs(0).await, Vec::<JobId>::new());
    // A different host with the right claim but a certificate for another name.
    let mut s = tls_to(&p, "exec2").await;
    let m = ToShadow::Attach {
        claim: ClaimId("claim-1".into()),
        job,
        host: HostName("exec1".into()),
    };
    write_frame_async(&mut s, &m).await.unwrap();
    let r: FromShadow = next(&mut s).await;
    assert!(matches!(r, FromShadow::Refused { .. }), "{r:?}");
    // Another execute host, honest about its name, with exec1's claim.
    let (_, r) = attach(&p, "exec2", job, "claim-1").await;
    match r {
        FromShadow::Refused { reason } => assert!(
            reason.contains("was given to `exec1`, not to `exec2`"),
            "{reason}"
        ),
        r => panic!("a claim used from another machine was accepted: {r:?}"),
    }

    let (mut s, r) = attach(&p, "exec1", job, "claim-1").await;
    let FromShadow::Attached(a) = r else {
        panic!("{r:?}")
    };
    assert_eq!(a.job, job);
    assert_eq!(a.spec.executable, "prog");
    assert_eq!(a.owner, me());
    let (stdin, stdout, stderr) = (a.stdin.unwrap(), a.stdout.unwrap(), a.stderr.unwrap());
    assert_eq!(
        std::fs::read(w.join("out.txt")).unwrap(),
        b"",
        "output truncated at attach"
    );
    wait_state(&p, job, JobState::Running).await;
    // The same claim cannot attach twice.
    let (_, r) = attach(&p, "exec1", job, "claim-1").await;
    assert!(matches!(r, FromShadow::Refused { .. }), "{r:?}");

    write_frame_async(&mut s, &ToShadow::FetchExecutable)
        .await
        .unwrap();
    let mut exe = Vec::new();
    loop {
        match next(&mut s).await {
            FromShadow::ExecChunk { data, last } => {
                assert!(data.len() <= 1 << 20);
                exe.extend_from_slice(&data);
                if last {
                    break;
                }
            }
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(exe, vec![7u8; 2_500_000]);

    write_frame_async(&mut s, &ToShadow::Started { pid: 1 })
        .await
        .unwrap();
    assert_eq!(
        call(&mut s, 1, FileOp::Read { h: stdin, len: 5 }).await,
        FileReply::Data(b"input".to_vec())
    );
    write_frame_async(
        &mut s,
        &ToShadow::Write {
            h: stdout,
            data: b"hello ".to_vec(),
        },
    )
    .await
    .unwrap();
    write_frame_async(
        &mut s,
        &ToShadow::Write {
            h: stdout,
            data: b"world\n".to_vec(),
        },
    )
    .await
    .unwrap();
    write_frame_async(
        &mut s,
        &ToShadow::Write {
            h: stderr,
            data: b"warn\n".to_vec(),
        },
    )
    .await
    .unwrap();
    // A write to a handle that is not open comes back as WriteFailed.
    write_frame_async(
        &mut s,
        &ToShadow::Write {
            h: proto::Handle(999),
            data: b"x".to_vec(),
        },
    )
    .await
    .unwrap();
    match next(&mut s).await {
        FromShadow::WriteFailed { h, errno } => assert_eq!((h.0, errno), (999, libc::EBADF)),
        r => panic!("{r:?}"),
    }
    assert_eq!(call(&mut s, 2, FileOp::Barrier).await, FileReply::Ok);
    assert_eq!(std::fs::read(w.join("out.txt")).unwrap(), b"hello world\n");
    // The job's escapes are refused; the job goes on.
    let esc = FileOp::Open {
        at: None,
        path: b"../secret".to_vec(),
        flags: libc::O_RDONLY,
        mode: 0,
    };
    assert_eq!(call(&mut s, 3, esc).await, FileReply::Err(libc::EACCES));
    let FileReply::Opened { h, .. } = call(
        &mut s,
        4,
        FileOp::Open {
            at: None,
            path: b"new.txt".to_vec(),
            flags: libc::O_WRONLY | libc::O_CREAT,
            mode: 0o644,
        },
    )
    .await
    else {
        panic!()
    };
    assert_eq!(
        call(
            &mut s,
            5,
            FileOp::Write {
                h,
                data: b"12345".to_vec()
            }
        )
        .await,
        FileReply::Count(5)
    );

    let usage = Usage {
        wall_secs: 2.0,
        user_cpu_secs: 0.5,
        sys_cpu_secs: 0.25,
        bytes_read: 0,
        bytes_written: 0,
    };
    write_frame_async(
        &mut s,
        &ToShadow::Exited {
            status: ExitStatus::Code(0),
            usage,
        },
    )
    .await
    .unwrap();
    let r: FromShadow = next(&mut s).await;
    assert_eq!(r, FromShadow::Done);
    mm.released("claim-1").await;

    assert_eq!(std::fs::read(w.join("err.txt")).unwrap(), b"warn\n");
    assert_eq!(std::fs::read(w.join("new.txt")).unwrap(), b"12345");
    let q = queue(&p, true).await;
    assert_eq!(
        (q[0].state, q[0].exit, q[0].runs),
        (JobState::Completed, Some(ExitStatus::Code(0)), 1)
    );
    assert_eq!(q[0].host.as_ref().unwrap().0, "exec1");
    let l = log(&p, job).await;
    let names = events(&l);
    assert_eq!(names, ["submitted", "matched", "executing", "completed"]);
    assert_eq!(l[2]["host"], "exec1");
    let done = &l[3];
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["wall_secs"], 2.0);
    assert_eq!(done["cpu_secs"], 0.75);
    assert_eq!(done["bytes_read"], 5);
    assert_eq!(done["bytes_written"], 12 + 5 + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_starter_requeues_and_removal_ends_the_shadow() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let mut mm = fake_mm(&pki).await;
    let p = start_in(tmp, pki, Some(mm.addr.clone())).await;
    let w = workdir(&p);
    std::fs::write(w.join("prog"), b"#!/bin/sh\n").unwrap();
    let job = submit(&p, "executable = \"prog\"\noutput = \"out\"\n").await[0];
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    mm.matched(job, "exec1", "c1");
    let (s, r) = attach(&p, "exec1", job, "c1").await;
    assert!(matches!(r, FromShadow::Attached(_)), "{r:?}");
    wait_state(&p, job, JobState::Running).await;
    drop(s);
    wait_state(&p, job, JobState::Idle).await;
    mm.released("c1").await;
    let l = log(&p, job).await;
    assert_eq!(events(&l), ["submitted", "matched", "executing", "evicted"]);
    assert!(
        l[3]["reason"].as_str().unwrap().contains("closed"),
        "{}",
        l[3]
    );

    // Matched again; this time the user removes it while it runs.
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    mm.matched(job, "exec2", "c2");
    let (mut s, r) = attach(&p, "exec2", job, "c2").await;
    assert!(matches!(r, FromShadow::Attached(_)), "{r:?}");
    wait_state(&p, job, JobState::Running).await;
    match cli(&p.sock, &CliRequest::Remove { jobs: vec![job] }).await {
        CliReply::Removed { jobs, .. } => assert_eq!(jobs, vec![job]),
        r => panic!("{r:?}"),
    }
    assert!(closed(&mut s).await, "the starter's connection is closed");
    mm.released("c2").await;
    let q = queue(&p, true).await;
    assert_eq!(q[0].state, JobState::Removed);
    assert_eq!(q[0].runs, 2);
    assert_eq!(events(&log(&p, job).await).last().unwrap(), "removed");

    // A claim the matchmaker withdraws is dropped; a missing input holds
    // the job after repeated failures instead of looping.
    let job = submit(&p, "executable = \"prog\"\ninput = \"missing\"\n").await[0];
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    mm.matched(job, "exec1", "w1");
    assert_eq!(mm.idle_jobs(0).await, Vec::<JobId>::new());
    mm.to_schedd
        .send(FromMatchmaker::Release {
            claim: ClaimId("w1".into()),
        })
        .unwrap();
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    for i in 0..3 {
        let c = format!("m{i}");
        mm.matched(job, "exec1", &c);
        let t0 = std::time::Instant::now();
        loop {
            let (_, r) = attach(&p, "exec1", job, &c).await;
            let FromShadow::Refused { reason } = r else {
                panic!("{r:?}")
            };
            if reason.contains("missing") {
                break;
            }
            assert!(t0.elapsed() < T, "{reason}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    wait_state(&p, job, JobState::Held).await;
    let l = log(&p, job).await;
    assert_eq!(events(&l).last().unwrap(), "held");
}

#[test]
fn kill_9_loses_no_submitted_job() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let dir = tmp.path().join("submit");
    std::fs::create_dir_all(tmp.path().join("work")).unwrap();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_roost-schedd"))
            .args([
                "--pki",
                pki.to_str().unwrap(),
                "--name",
                "submit",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--matchmaker",
                "127.0.0.1:1",
                "--matchmaker-name",
                "cm",
            ])
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let sock = dir.join("schedd.sock");
    let request = |req: &CliRequest| -> Option<CliReply> {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).ok()?;
        proto::frame::write_frame(&mut s, req).ok()?;
        proto::frame::read_frame(&mut s, MAX_FRAME).ok()
    };
    let ready = |_: ()| {
        let t0 = std::time::Instant::now();
        while request(&CliRequest::Ping) != Some(CliReply::Pong) {
            assert!(t0.elapsed() < T, "schedd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut child = spawn();
    ready(());
    let req = CliRequest::Submit {
        file: "j.toml".into(),
        text: "executable = \"p\"\nqueue = 3\n".into(),
        cwd: tmp.path().join("work").display().to_string(),
    };
    let Some(CliReply::Submitted { jobs }) = request(&req) else {
        panic!()
    };
    assert_eq!(jobs.len(), 3);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut child = spawn();
    ready(());
    let Some(CliReply::Queue { jobs: q }) = request(&CliRequest::Queue { all: true }) else {
        panic!()
    };
    assert_eq!(q.iter().map(|j| j.id).collect::<Vec<_>>(), jobs);
    assert!(q.iter().all(|j| j.state == JobState::Idle));
    // SIGTERM ends it cleanly.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::Term,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_lock_is_granted_when_another_job_unlocks() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let mut mm = fake_mm(&pki).await;
    let p = start_in(tmp, pki, Some(mm.addr.clone())).await;
    let w = workdir(&p);
    std::fs::write(w.join("prog"), b"x").unwrap();
    std::fs::write(w.join("shared.db"), b"0123456789").unwrap();
    let ids = submit(&p, "executable = \"prog\"\nqueue = 2\n").await;
    assert_eq!(mm.idle_jobs(2).await, ids);
    mm.matched(ids[0], "exec1", "a");
    mm.matched(ids[1], "exec2", "b");
    let (mut a, r) = attach(&p, "exec1", ids[0], "a").await;
    assert!(matches!(r, FromShadow::Attached(_)), "{r:?}");
    let (mut b, r) = attach(&p, "exec2", ids[1], "b").await;
    assert!(matches!(r, FromShadow::Attached(_)), "{r:?}");
    let open = FileOp::Open {
        at: None,
        path: b"shared.db".to_vec(),
        flags: libc::O_RDWR,
        mode: 0,
    };
    let FileReply::Opened { h: ha, .. } = call(&mut a, 1, open.clone()).await else {
        panic!()
    };
    let FileReply::Opened { h: hb, .. } = call(&mut b, 1, open).await else {
        panic!()
    };
    let wr = proto::fileop::Flock {
        typ: libc::F_WRLCK as i16,
        whence: 0,
        start: 0,
        len: 0,
        pid: 0,
    };
    let un = proto::fileop::Flock {
        typ: libc::F_UNLCK as i16,
        ..wr
    };
    assert_eq!(
        call(
            &mut a,
            2,
            FileOp::Lock {
                h: ha,
                cmd: libc::F_SETLK,
                lock: wr
            }
        )
        .await,
        FileReply::Ok
    );
    write_frame_async(
        &mut b,
        &ToShadow::Call {
            id: 2,
            op: FileOp::Lock {
                h: hb,
                cmd: libc::F_SETLKW,
                lock: wr,
            },
        },
    )
    .await
    .unwrap();
    let early = tokio::time::timeout(
        Duration::from_millis(300),
        read_frame_async::<_, FromShadow>(&mut b, MAX_FRAME),
    )
    .await;
    assert!(early.is_err(), "the lock was granted while held: {early:?}");
    // The other job's shadow is not held up meanwhile.
    assert_eq!(
        call(
            &mut a,
            3,
            FileOp::Lock {
                h: ha,
                cmd: libc::F_SETLK,
                lock: un
            }
        )
        .await,
        FileReply::Ok
    );
    match next(&mut b).await {
        FromShadow::Reply { id: 2, reply } => assert_eq!(reply, FileReply::Ok),
        r => panic!("{r:?}"),
    }
    let FileReply::Lock(got) = call(
        &mut a,
        4,
        FileOp::Lock {
            h: ha,
            cmd: libc::F_GETLK,
            lock: wr,
        },
    )
    .await
    else {
        panic!()
    };
    assert_eq!(got.typ, libc::F_WRLCK as i16, "job b holds the lock now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_claim_is_given_back_and_the_job_matched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let mut mm = fake_mm(&pki).await;
    let p = start_with(tmp, pki, Some(mm.addr.clone()), Duration::from_secs(1)).await;
    workdir(&p);
    let job = submit(&p, "executable = \"prog\"\n").await[0];
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    mm.matched(job, "exec1", "never-used");
    assert_eq!(mm.idle_jobs(0).await, Vec::<JobId>::new());
    // No starter comes: after the claim timeout (1 s here) it is released.
    mm.released("never-used").await;
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    let (_, r) = attach(&p, "exec1", job, "never-used").await;
    assert!(matches!(r, FromShadow::Refused { .. }), "{r:?}");
    assert_eq!(queue(&p, false).await[0].state, JobState::Idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_starters_racing_with_one_claim_get_one_job() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let mut mm = fake_mm(&pki).await;
    let p = start_in(tmp, pki, Some(mm.addr.clone())).await;
    let w = workdir(&p);
    std::fs::write(w.join("prog"), b"x").unwrap();
    let job = submit(&p, "executable = \"prog\"\noutput = \"out\"\n").await[0];
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    mm.matched(job, "exec1", "one");
    let (a, b) = tokio::join!(
        attach(&p, "exec1", job, "one"),
        attach(&p, "exec1", job, "one")
    );
    let attached = [&a.1, &b.1]
        .iter()
        .filter(|r| matches!(r, FromShadow::Attached(_)))
        .count();
    let refused = [&a.1, &b.1]
        .iter()
        .filter(|r| matches!(r, FromShadow::Refused { .. }))
        .count();
    assert_eq!((attached, refused), (1, 1), "{:?} / {:?}", a.1, b.1);
    wait_state(&p, job, JobState::Running).await;
    let l = log(&p, job).await;
    assert_eq!(events(&l), ["submitted", "matched", "executing"]);
}

/// The shadow's next message, past its heartbeats (`Ack`).
async fn next(s: &mut Starter) -> FromShadow {
    loop {
        let m = tokio::time::timeout(T, read_frame_async(&mut *s, MAX_FRAME))
            .await
            .expect("no message from the shadow")
            .unwrap();
        if !matches!(m, FromShadow::Ack { .. }) {
            return m;
        }
    }
}

async fn send(s: &mut Starter, m: ToShadow) {
    write_frame_async(s, &m).await.unwrap();
}

/// Streams `image` as a checkpoint in chunks of `chunk` bytes and returns
/// the shadow's answer.
async fn checkpoint(s: &mut Starter, image: &[u8], chunk: usize, reason: &str) -> FromShadow {
    send(
        s,
        ToShadow::CkptBegin {
            reason: reason.into(),
        },
    )
    .await;
    for c in image.chunks(chunk) {
        send(s, ToShadow::CkptChunk { data: c.to_vec() }).await;
    }
    send(
        s,
        ToShadow::CkptEnd {
            raw_bytes: image.len() as u64 * 3,
            seconds: 0.25,
            streams: Vec::new(),
        },
    )
    .await;
    next(s).await
}

async fn fetch_image(s: &mut Starter) -> Option<Vec<u8>> {
    send(s, ToShadow::FetchImage).await;
    let mut img = Vec::new();
    loop {
        match next(s).await {
            FromShadow::ImageChunk { data, last } => {
                assert!(data.len() <= 1 << 20, "chunk of {}", data.len());
                img.extend_from_slice(&data);
                if last {
                    return Some(img);
                }
            }
            FromShadow::NoImage => return None,
            r => panic!("{r:?}"),
        }
    }
}

/// The files in the job's checkpoint directory.
fn ckpt_files(p: &Pool, job: JobId) -> Vec<String> {
    let d = p.dir().join("submit/ckpt").join(job.to_string());
    let mut v: Vec<String> = std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `n` bytes that the schedd takes for a full checkpoint image, as a
/// starter sends it: a zstd frame holding a sealed image header, then a
/// zstd skippable frame of pseudo-random bytes (from `seed`) up to `n`.
fn image_bytes(n: usize, seed: u32) -> Vec<u8> {
    use proto::ckpt::{ARCH_X86_64, ImageHeader, KIND_FULL, KSigaction, MAGIC, VERSION, checksum};
    let mut h = ImageHeader {
        magic: MAGIC,
        version: VERSION,
        arch: ARCH_X86_64,
        page_size: 4096,
        nregions: 0,
        nfds: 0,
        umask: 0o22,
        fs_base: 0,
        frame: 0,
        brk: 0,
        sigactions: [KSigaction::default(); 65],
        kind: KIND_FULL,
        flags: 0,
        image_id: seed as u64,
        parent_id: 0,
        tables_sum: checksum(&[]) ^ checksum(&[]).rotate_left(1),
        header_sum: 0,
    };
    h.seal();
    let mut out = zstd::encode_all(h.as_bytes(), 1).unwrap();
    assert!(n >= out.len() + 8, "an image of {n} bytes is too small");
    let pad = n - out.len() - 8;
    out.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    out.extend_from_slice(&(pad as u32).to_le_bytes());
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    out.extend((0..pad).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_committed_fetched_back_and_the_job_resumes_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let mut mm = fake_mm(&pki).await;
    let p = start_in(tmp, pki, Some(mm.addr.clone())).await;
    let w = workdir(&p);
    std::fs::write(w.join("prog"), b"x").unwrap();
    std::fs::write(w.join("in.txt"), b"line 1\nline 2\nline 3\n").unwrap();
    std::fs::write(w.join("data.csv"), b"a,b\n1,2\n3,4\n").unwrap();
    let text =
        "executable = \"prog\"\ninput = \"in.txt\"\noutput = \"out.txt\"\nerror = \"err.txt\"\n";
    let job = submit(&p, text).await[0];
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    mm.matched(job, "exec1", "c1");
    let (mut s, r) = attach(&p, "exec1", job, "c1").await;
    let FromShadow::Attached(a) = r else {
        panic!("{r:?}")
    };
    let std1 = (a.stdin, a.stdout, a.stderr);
    let (stdin, stdout) = (a.stdin.unwrap(), a.stdout.unwrap());
    assert_eq!(
        fetch_image(&mut s).await,
        None,
        "no image before the first checkpoint"
    );

    // The job reads a line, opens a data file, writes some output.
    assert_eq!(
        call(&mut s, 1, FileOp::Read { h: stdin, len: 7 }).await,
        FileReply::Data(b"line 1\n".to_vec())
    );
    let FileReply::Opened { h: data, .. } = call(
        &mut s,
        2,
        FileOp::Open {
            at: None,
            path: b"data.csv".to_vec(),
            flags: libc::O_RDONLY,
            mode: 0,
        },
    )
    .await
    else {
        panic!()
    };
    assert_eq!(
        call(&mut s, 3, FileOp::Read { h: data, len: 4 }).await,
        FileReply::Data(b"a,b\n".to_vec())
    );
    send(
        &mut s,
        ToShadow::Write {
            h: stdout,
            data: b"result 1\n".to_vec(),
        },
    )
    .await;

    // A checkpoint of 2.5 MB in uneven chunks is stored as it came.
    let image = image_bytes(2_500_000, 1);
    let r = checkpoint(&mut s, &image, 700_001, "periodic").await;
    assert_eq!(
        r,
        FromShadow::CkptCommitted {
            bytes: image.len() as u64
        }
    );
    assert_eq!(ckpt_files(&p, job), ["image.1.zst"]);
    assert_eq!(
        fetch_image(&mut s).await.unwrap(),
        image,
        "fetched back byte-identical"
    );
    let q = queue(&p, false).await;
    assert_eq!(
        (q[0].checkpoints, q[0].ckpt_bytes),
        (1, Some(image.len() as u64))
    );
    assert!(q[0].ckpt_time.is_some());
    let l = log(&p, job).await;
    let c = l.iter().find(|e| e["event"] == "checkpointed").unwrap();
    assert_eq!(c["bytes"], image.len() as u64);
    assert_eq!(c["raw_bytes"], image.len() as u64 * 3);
    assert_eq!(c["seconds"], 0.25);
    assert_eq!(c["reason"], "periodic");

    // The job goes on past the checkpoint.
    send(
        &mut s,
        ToShadow::Write {
            h: stdout,
            data: b"result 2 (lost with the host)\n".to_vec(),
        },
    )
    .await;
    assert_eq!(
        call(&mut s, 4, FileOp::Read { h: data, len: 4 }).await,
        FileReply::Data(b"1,2\n".to_vec())
    );
    // A refused checkpoint and one that cannot be committed leave the image as it was.
    send(
        &mut s,
        ToShadow::CkptAbort {
            reason: "2 threads".into(),
        },
    )
    .await;
    send(
        &mut s,
        ToShadow::CkptEnd {
            raw_bytes: 1,
            seconds: 0.0,
            streams: Vec::new(),
        },
    )
    .await;
    assert!(matches!(next(&mut s).await, FromShadow::CkptFailed { .. }));
    // The execute host dies in the middle of the next checkpoint.
    send(
        &mut s,
        ToShadow::CkptBegin {
            reason: "vacate".into(),
        },
    )
    .await;
    send(
        &mut s,
        ToShadow::CkptChunk {
            data: image_bytes(300_000, 2),
        },
    )
    .await;
    assert_eq!(call(&mut s, 5, FileOp::Barrier).await, FileReply::Ok);
    assert!(ckpt_files(&p, job).contains(&"image.tmp".to_string()));
    drop(s);
    wait_state(&p, job, JobState::Idle).await;
    mm.released("c1").await;
    assert_eq!(
        ckpt_files(&p, job),
        ["image.1.zst"],
        "previous image kept, no tmp"
    );
    assert_eq!(
        std::fs::read(w.join("out.txt")).unwrap(),
        b"result 1\nresult 2 (lost with the host)\n"
    );

    // Matched again elsewhere: the job's files are as they were at the checkpoint.
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    mm.matched(job, "exec2", "c2");
    let (mut s, r) = attach(&p, "exec2", job, "c2").await;
    let FromShadow::Attached(a) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        (a.stdin, a.stdout, a.stderr),
        std1,
        "the snapshot's std handles"
    );
    assert_eq!(std::fs::read(w.join("out.txt")).unwrap(), b"result 1\n");
    assert_eq!(fetch_image(&mut s).await.unwrap(), image);
    assert_eq!(
        call(&mut s, 1, FileOp::Read { h: stdin, len: 7 }).await,
        FileReply::Data(b"line 2\n".to_vec())
    );
    assert_eq!(
        call(&mut s, 2, FileOp::Read { h: data, len: 4 }).await,
        FileReply::Data(b"1,2\n".to_vec())
    );
    send(
        &mut s,
        ToShadow::Write {
            h: stdout,
            data: b"result 2\n".to_vec(),
        },
    )
    .await;
    send(
        &mut s,
        ToShadow::Exited {
            status: ExitStatus::Code(0),
            usage: Usage::default(),
        },
    )
    .await;
    assert_eq!(next(&mut s).await, FromShadow::Done);
    assert_eq!(
        std::fs::read(w.join("out.txt")).unwrap(),
        b"result 1\nresult 2\n",
        "the output of a run that never moved"
    );
    let l = log(&p, job).await;
    assert_eq!(
        events(&l),
        [
            "submitted",
            "matched",
            "executing",
            "checkpointed",
            "checkpoint_refused",
            "checkpoint_failed",
            "evicted",
            "matched",
            "executing",
            "resumed",
            "completed"
        ]
    );
    assert_eq!(l[4]["reason"], "2 threads");
    assert_eq!(l[6]["from_checkpoint"], true);
    assert_eq!(l[9]["host"], "exec2");
    assert_eq!(l[9]["image_bytes"], image.len() as u64);
    assert!(
        ckpt_files(&p, job).is_empty(),
        "images go when the job completes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_and_missing_images_are_handled_at_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let mut mm = fake_mm(&pki).await;
    let mut p = start_in(tmp, pki, Some(mm.addr.clone())).await;
    let w = workdir(&p);
    std::fs::write(w.join("prog"), b"x").unwrap();
    let ids = submit(
        &p,
        "executable = \"prog\"\noutput = \"out.$(Process)\"\nqueue = 2\n",
    )
    .await;
    assert_eq!(mm.idle_jobs(2).await, ids);
    for (i, &job) in ids.iter().enumerate() {
        let claim = format!("c{i}");
        mm.matched(job, "exec1", &claim);
        let (mut s, r) = attach(&p, "exec1", job, &claim).await;
        assert!(matches!(r, FromShadow::Attached(_)), "{r:?}");
        let r = checkpoint(&mut s, &image_bytes(1000, 3), 100, "periodic").await;
        assert!(matches!(r, FromShadow::CkptCommitted { .. }), "{r:?}");
        // A checkpoint that was still arriving, and one renamed into place
        // whose row was never written, when the schedd was killed.
        send(
            &mut s,
            ToShadow::CkptBegin {
                reason: "periodic".into(),
            },
        )
        .await;
        send(&mut s, ToShadow::CkptChunk { data: vec![1; 10] }).await;
        assert_eq!(call(&mut s, 1, FileOp::Barrier).await, FileReply::Ok);
        std::fs::write(
            p.dir()
                .join("submit/ckpt")
                .join(job.to_string())
                .join("image.2.zst"),
            b"never committed",
        )
        .unwrap();
        std::mem::forget(s);
    }
    // The first job's image is lost from under the schedd.
    std::fs::remove_file(
        p.dir()
            .join("submit/ckpt")
            .join(ids[0].to_string())
            .join("image.1.zst"),
    )
    .unwrap();
    std::fs::create_dir_all(p.dir().join("submit/ckpt/77.0")).unwrap();
    p.stop().await;
    let Pool { tmp, pki, .. } = p;
    let p = start_in(tmp, pki, None).await;
    assert!(
        !p.dir().join("submit/ckpt/77.0").exists(),
        "unknown job's directory removed"
    );
    assert_eq!(ckpt_files(&p, ids[0]), Vec::<String>::new());
    assert_eq!(ckpt_files(&p, ids[1]), ["image.1.zst"]);
    let q = queue(&p, false).await;
    assert_eq!(q[0].ckpt_bytes, None);
    assert_eq!(q[1].ckpt_bytes, Some(1000));
    assert!(
        q.iter()
            .all(|j| j.state == JobState::Idle && j.checkpoints == 1)
    );
    let l = log(&p, ids[0]).await;
    assert!(events(&l).contains(&"checkpoint_lost".to_string()), "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_vacate_hold_release_and_history_over_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let mut mm = fake_mm(&pki).await;
    let p = start_in(tmp, pki, Some(mm.addr.clone())).await;
    let w = workdir(&p);
    std::fs::write(w.join("prog"), b"x").unwrap();
    let ids = submit(&p, "executable = \"prog\"\nqueue = 3\n").await;
    let (job, other, third) = (ids[0], ids[1], ids[2]);
    assert_eq!(mm.idle_jobs(3).await, ids);
    mm.matched(job, "exec1", "k1");
    let (mut s, r) = attach(&p, "exec1", job, "k1").await;
    assert!(matches!(r, FromShadow::Attached(_)), "{r:?}");
    wait_state(&p, job, JobState::Running).await;
    let nobody = JobId {
        cluster: 99,
        proc: 0,
    };

    // roost checkpoint: the attached starter is asked; others are refused with why.
    let r = cli(
        &p.sock,
        &CliRequest::Checkpoint {
            jobs: vec![job, other, nobody],
        },
    )
    .await;
    let CliReply::Acted {
        done,
        vacating,
        refused,
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!((done, vacating), (vec![job], vec![]));
    assert_eq!(refused.len(), 2);
    assert!(refused[0].1.contains("idle"), "{refused:?}");
    assert!(refused[1].1.contains("no such job"), "{refused:?}");
    assert_eq!(next(&mut s).await, FromShadow::Checkpoint { vacate: false });
    // The session still serves calls after the push.
    assert_eq!(call(&mut s, 1, FileOp::Barrier).await, FileReply::Ok);
    let r = cli(&p.sock, &CliRequest::Vacate { jobs: vec![job] }).await;
    assert!(
        matches!(&r, CliReply::Acted { done, vacating, .. } if *done == vec![job] && *vacating == vec![job]),
        "{r:?}"
    );
    assert_eq!(next(&mut s).await, FromShadow::Checkpoint { vacate: true });

    // roost hold of the running job: it is vacated first, then held.
    let r = cli(
        &p.sock,
        &CliRequest::Hold {
            jobs: vec![job, other],
            reason: "disk full".into(),
        },
    )
    .await;
    let CliReply::Acted { done, vacating, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!((done, vacating), (vec![job, other], vec![job]));
    assert_eq!(next(&mut s).await, FromShadow::Checkpoint { vacate: true });
    send(&mut s, ToShadow::Suspended).await;
    send(&mut s, ToShadow::Continued).await;
    send(
        &mut s,
        ToShadow::Vacated {
            reason: "2 threads: killed".into(),
            checkpointed: false,
        },
    )
    .await;
    assert_eq!(next(&mut s).await, FromShadow::Done);
    wait_state(&p, job, JobState::Held).await;
    mm.released("k1").await;
    let l = log(&p, job).await;
    assert_eq!(
        events(&l),
        [
            "submitted",
            "matched",
            "executing",
            "suspended",
            "unsuspended",
            "evicted",
            "held"
        ]
    );
    assert_eq!(l[5]["from_checkpoint"], false);
    assert_eq!(l[6]["reason"], "disk full");
    let q = queue(&p, false).await;
    assert_eq!(q[0].hold_reason.as_deref(), Some("disk full"));
    assert_eq!(q[1].state, JobState::Held, "an idle job is held at once");
    // Held jobs are not offered to the matchmaker.
    assert_eq!(mm.idle_jobs(1).await, vec![third]);

    let r = cli(
        &p.sock,
        &CliRequest::Hold {
            jobs: vec![job],
            reason: String::new(),
        },
    )
    .await;
    assert!(
        matches!(&r, CliReply::Acted { done, refused, .. } if done.is_empty() && refused[0].1.contains("already held")),
        "{r:?}"
    );
    let r = cli(
        &p.sock,
        &CliRequest::Release {
            jobs: vec![job, other, third],
        },
    )
    .await;
    let CliReply::Acted { done, refused, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(done, vec![job, other]);
    assert_eq!(refused[0].0, third);
    assert_eq!(mm.idle_jobs(3).await, ids);
    assert_eq!(events(&log(&p, job).await).last().unwrap(), "released");

    // Vacated with a checkpoint: back to the queue, to resume from the image.
    mm.matched(job, "exec1", "k4");
    let (mut s, r) = attach(&p, "exec1", job, "k4").await;
    assert!(matches!(r, FromShadow::Attached(_)), "{r:?}");
    let r = checkpoint(&mut s, &image_bytes(1000, 9), 200, "vacate").await;
    assert_eq!(r, FromShadow::CkptCommitted { bytes: 1000 });
    send(
        &mut s,
        ToShadow::Vacated {
            reason: "the owner came back".into(),
            checkpointed: true,
        },
    )
    .await;
    assert_eq!(next(&mut s).await, FromShadow::Done);
    wait_state(&p, job, JobState::Idle).await;
    mm.released("k4").await;
    let l = log(&p, job).await;
    let last = l.last().unwrap();
    assert_eq!(last["event"], "vacated");
    assert_eq!(last["reason"], "the owner came back");
    assert_eq!(last["from_checkpoint"], true);
    assert_eq!(last["image_bytes"], 1000);

    // roost history: finished jobs, newest first.
    mm.matched(third, "exec2", "k3");
    let (mut s, r) = attach(&p, "exec2", third, "k3").await;
    assert!(matches!(r, FromShadow::Attached(_)), "{r:?}");
    send(
        &mut s,
        ToShadow::Exited {
            status: ExitStatus::Code(3),
            usage: Usage::default(),
        },
    )
    .await;
    assert_eq!(next(&mut s).await, FromShadow::Done);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let CliReply::Removed { .. } = cli(&p.sock, &CliRequest::Remove { jobs: vec![other] }).await
    else {
        panic!()
    };
    let r = cli(&p.sock, &CliRequest::History { limit: None }).await;
    let CliReply::History { jobs } = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![other, third]
    );
    assert_eq!(jobs[1].exit, Some(ExitStatus::Code(3)));
    assert!(jobs.iter().all(|j| j.finished.is_some()));
    let r = cli(&p.sock, &CliRequest::History { limit: Some(1) }).await;
    assert!(
        matches!(&r, CliReply::History { jobs } if jobs.len() == 1 && jobs[0].id == other),
        "{r:?}"
    );
}

/// A free TCP port on the loopback (for a daemon started as a process).
fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_schedd_during_a_transfer_keeps_the_last_image() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let dir = tmp.path().join("submit");
    let w = tmp.path().join("work");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::write(w.join("prog"), b"x").unwrap();
    let shadow = free_port();
    let spawn = |mm: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_roost-schedd"))
            .args(["--pki", pki.to_str().unwrap(), "--name", "submit"])
            .args(["--dir", dir.to_str().unwrap()])
            .args(["--listen", &shadow.to_string()])
            .args(["--matchmaker", mm, "--matchmaker-name", "cm"])
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let sock = dir.join("schedd.sock");
    let ready = || async {
        let t0 = std::time::Instant::now();
        loop {
            if let Ok(mut s) = UnixStream::connect(&sock).await
                && write_frame_async(&mut s, &CliRequest::Ping).await.is_ok()
                && let Ok(CliReply::Pong) = read_frame_async(&mut s, MAX_FRAME).await
            {
                return;
            }
            assert!(t0.elapsed() < T, "schedd did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let starter = |claim: &'static str, job: JobId| {
        let pki = pki.clone();
        async move {
            let id = Identity::load(&pki, "exec1").unwrap();
            let tcp = TcpStream::connect(shadow).await.unwrap();
            let mut s = id
                .connector()
                .connect(proto::tls::server_name("submit").unwrap(), tcp)
                .await
                .unwrap();
            let m = ToShadow::Attach {
                claim: ClaimId(claim.into()),
                job,
                host: HostName("exec1".into()),
            };
            write_frame_async(&mut s, &m).await.unwrap();
            let r: FromShadow = next(&mut s).await;
            (s, r)
        }
    };

    let mut mm = fake_mm(&pki).await;
    let mut child = spawn(&mm.addr);
    ready().await;
    let req = CliRequest::Submit {
        file: "j.toml".into(),
        text: "executable = \"prog\"\noutput = \"out\"\n".into(),
        cwd: w.display().to_string(),
    };
    let CliReply::Submitted { jobs } = cli(&sock, &req).await else {
        panic!()
    };
    let job = jobs[0];
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    mm.matched(job, "exec1", "c1");
    let (mut s, r) = starter("c1", job).await;
    let FromShadow::Attached(a) = r else {
        panic!("{r:?}")
    };
    let image = image_bytes(3_000_000, 7);
    let r = checkpoint(&mut s, &image, 1 << 20, "periodic").await;
    assert_eq!(
        r,
        FromShadow::CkptCommitted {
            bytes: image.len() as u64
        }
    );
    // The next checkpoint is on its way when the schedd is killed.
    send(
        &mut s,
        ToShadow::CkptBegin {
            reason: "periodic".into(),
        },
    )
    .await;
    send(
        &mut s,
        ToShadow::CkptChunk {
            data: image_bytes(2_000_000, 8),
        },
    )
    .await;
    assert_eq!(call(&mut s, 1, FileOp::Barrier).await, FileReply::Ok);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(s);

    let mut mm = fake_mm(&pki).await;
    let mut child = spawn(&mm.addr);
    ready().await;
    let files: Vec<String> = std::fs::read_dir(dir.join("ckpt").join(job.to_string()))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["image.1.zst"], "the last good image, no tmp");
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    mm.matched(job, "exec1", "c2");
    let (mut s, r) = starter("c2", job).await;
    let FromShadow::Attached(b) = r else {
        panic!("{r:?}")
    };
    assert_eq!(b.stdout, a.stdout);
    assert_eq!(fetch_image(&mut s).await.unwrap(), image);
    let CliReply::Log { lines } = cli(&sock, &CliRequest::Log { job }).await else {
        panic!()
    };
    let l: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events(&l),
        [
            "submitted",
            "matched",
            "executing",
            "checkpointed",
            "evicted",
            "matched",
            "executing",
            "resumed"
        ]
    );
    assert_eq!(l[4]["from_checkpoint"], true);
    assert_eq!(l[7]["image_bytes"], image.len() as u64);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The job's image transfer as `roost q` sees it.
async fn transfer(p: &Pool, job: JobId) -> Option<proto::job::Transfer> {
    queue(p, false)
        .await
        .into_iter()
        .find(|j| j.id == job)
        .and_then(|j| j.transfer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_transfers_in_progress_show_in_the_queue() {
    use proto::job::TransferKind;
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let mut mm = fake_mm(&pki).await;
    let p = start_in(tmp, pki, Some(mm.addr.clone())).await;
    let w = workdir(&p);
    std::fs::write(w.join("prog"), b"x").unwrap();
    let job = submit(&p, "executable = \"prog\"\n").await[0];
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    mm.matched(job, "exec1", "c1");
    let (mut s, r) = attach(&p, "exec1", job, "c1").await;
    assert!(matches!(r, FromShadow::Attached(_)), "{r:?}");
    wait_state(&p, job, JobState::Running).await;
    assert_eq!(transfer(&p, job).await, None);

    // A checkpoint arriving slowly: bytes so far, no total, time running.
    let image = image_bytes(16 << 20, 7);
    send(
        &mut s,
        ToShadow::CkptBegin {
            reason: "vacate".into(),
        },
    )
    .await;
    let mut secs = 0.0;
    for (i, c) in image.chunks(1 << 20).enumerate() {
        send(&mut s, ToShadow::CkptChunk { data: c.to_vec() }).await;
        assert_eq!(call(&mut s, i as u64, FileOp::Barrier).await, FileReply::Ok);
        let t = transfer(&p, job).await.expect("a transfer in progress");
        assert_eq!(t.kind, TransferKind::Checkpoint);
        assert_eq!(t.bytes, ((i + 1) << 20) as u64);
        assert_eq!(t.total, None);
        assert!(t.secs > secs, "{} after {secs}", t.secs);
        secs = t.secs;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(secs >= 0.25, "{secs}");
    send(
        &mut s,
        ToShadow::CkptEnd {
            raw_bytes: image.len() as u64,
            seconds: 0.3,
            streams: Vec::new(),
        },
    )
    .await;
    let r = next(&mut s).await;
    assert!(matches!(r, FromShadow::CkptCommitted { .. }), "{r:?}");
    assert_eq!(transfer(&p, job).await, None, "shown only while it moves");

    // A restart image the starter reads slowly: its size is known.
    send(&mut s, ToShadow::FetchImage).await;
    let t0 = std::time::Instant::now();
    let t = loop {
        if let Some(t) = transfer(&p, job).await {
            break t;
        }
        assert!(t0.elapsed() < T, "the restart transfer never showed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(t.kind, TransferKind::Restart);
    assert_eq!(t.total, Some(image.len() as u64));
    assert!(t.bytes < image.len() as u64, "{t:?}");
    let mut got = Vec::new();
    let mut seen = t.bytes;
    loop {
        let FromShadow::ImageChunk { data, last } = next(&mut s).await else {
            panic!("not an image chunk")
        };
        got.extend_from_slice(&data);
        if last {
            break;
        }
        if let Some(t) = transfer(&p, job).await {
            assert!(t.bytes >= seen, "{t:?}");
            seen = t.bytes;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, image);
    assert_eq!(call(&mut s, 99, FileOp::Barrier).await, FileReply::Ok);
    assert_eq!(transfer(&p, job).await, None);
}

async fn resume(
    p: &Pool,
    cert: &str,
    host: &str,
    job: JobId,
    claim: &str,
    received: u64,
) -> (Starter, FromShadow) {
    let mut s = tls_to(p, cert).await;
    let m = ToShadow::Resume {
        claim: ClaimId(claim.into()),
        job,
        host: HostName(host.into()),
        received,
    };
    write_frame_async(&mut s, &m).await.unwrap();
    let r = next(&mut s).await;
    (s, r)
}

/// A starter that dials again with `Resume` gets the session back where it
/// was (what it missed is sent again, the job's output goes on in order);
/// a resume with another claim, from another host, or after the job ended
/// is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starter_that_dials_again_resumes_its_session_and_others_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let mut mm = fake_mm(&pki).await;
    let p = start_in(tmp, pki, Some(mm.addr.clone())).await;
    let w = workdir(&p);
    std::fs::write(w.join("prog"), b"#!/bin/sh\n").unwrap();
    let job = submit(
        &p,
        "executable = \"prog\"\noutput = \"out.txt\"\nlease = 30\n",
    )
    .await[0];
    assert_eq!(mm.idle_jobs(1).await, vec![job]);
    mm.matched(job, "exec1", "claim-1");
    let (mut s, r) = attach(&p, "exec1", job, "claim-1").await;
    let FromShadow::Attached(a) = r else {
        panic!("{r:?}")
    };
    assert_eq!(a.lease_secs, 30);
    let out = a.stdout.unwrap();
    // Counted from the starter: Started, Write, Call.
    write_frame_async(&mut s, &ToShadow::Started { pid: 2 })
        .await
        .unwrap();
    let one = ToShadow::Write {
        h: out,
        data: b"one ".to_vec(),
    };
    write_frame_async(&mut s, &one).await.unwrap();
    assert_eq!(call(&mut s, 1, FileOp::Barrier).await, FileReply::Ok);

    // Another claim, or another host's certificate, gets nothing.
    let (_, r) = resume(&p, "exec1", "exec1", job, "claim-2", 0).await;
    match r {
        FromShadow::Refused { reason } => {
            assert!(reason.contains("no longer holds job"), "{reason}")
        }
        r => panic!("{r:?}"),
    }
    let (_, r) = resume(&p, "exec2", "exec1", job, "claim-1", 0).await;
    assert!(matches!(r, FromShadow::Refused { .. }), "{r:?}");

    // The holder dials again, saying the reply to its call never arrived.
    let (mut s2, r) = resume(&p, "exec1", "exec1", job, "claim-1", 0).await;
    assert_eq!(r, FromShadow::Resumed { received: 3 });
    assert_eq!(
        next(&mut s2).await,
        FromShadow::Reply {
            id: 1,
            reply: FileReply::Ok
        }
    );
    drop(s);
    let two = ToShadow::Write {
        h: out,
        data: b"two\n".to_vec(),
    };
    write_frame_async(&mut s2, &two).await.unwrap();
    assert_eq!(call(&mut s2, 2, FileOp::Barrier).await, FileReply::Ok);
    assert_eq!(std::fs::read(w.join("out.txt")).unwrap(), b"one two\n");
    let exited = ToShadow::Exited {
        status: ExitStatus::Code(0),
        usage: Usage::default(),
    };
    write_frame_async(&mut s2, &exited).await.unwrap();
    assert_eq!(next(&mut s2).await, FromShadow::Done);

    // The session is over: a late resume is refused.
    let (_, r) = resume(&p, "exec1", "exec1", job, "claim-1", 2).await;
    match r {
        FromShadow::Refused { reason } => {
            assert!(reason.contains("has no session to resume"), "{reason}")
        }
        r => panic!("{r:?}"),
    }
    let l = log(&p, job).await;
    assert_eq!(
        events(&l),
        ["submitted", "matched", "executing", "completed"]
    );
}
