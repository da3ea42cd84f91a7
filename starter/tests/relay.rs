//! The relay and `run_job` without the shim: a test client speaks the shim
//! protocol on the job's socket, and plain programs use the stdin/stdout/
//! stderr placeholders directly.

mod common;

use common::{FsBackend, Seen, Std, read, run_in, submit_dir};
use proto::Handle;
use proto::fileop::{FileOp, FileReply};
use proto::frame::{self, MAX_FRAME};
use proto::job::ExitStatus;
use proto::shim::{InheritedFd, ShimReply, ShimRequest};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use starter::job::{JobError, JobLaunch, run_job};
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NO_SHIM: &str = "";
const LIMIT: Duration = Duration::from_secs(30);

/// Tests in this process that start jobs fork it; a fork holds a copy of
/// every fd the test client holds until it execs. The test that watches a
/// placeholder's EOF therefore runs alone (write), the others together (read).
static FORKS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A shim connection, spoken by the test.
struct Client {
    sock: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(path) {
                Ok(sock) => return Client { sock },
                Err(e) if Instant::now() > deadline => panic!("connect {}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Sends one request; returns the reply and the fd that came with it.
    fn ask(&mut self, req: &ShimRequest) -> (ShimReply, Option<OwnedFd>) {
        frame::write_frame(&mut self.sock, req).expect("send request");
        let mut hdr = [0u8; 4];
        let mut got = 0;
        let mut fd = None;
        while got < 4 {
            let mut space = [0u8; rustix::cmsg_space!(ScmRights(2))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let r = rustix::net::recvmsg(
                &self.sock,
                &mut [IoSliceMut::new(&mut hdr[got..])],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .expect("recvmsg");
            assert!(r.bytes > 0, "connection closed before the reply");
            got += r.bytes;
            for msg in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = msg {
                    for f in fds {
                        assert!(fd.is_none(), "more than one fd with a reply");
                        assert_eq!(
                            got, r.bytes,
                            "the fd must come with the frame's first bytes"
                        );
                        fd = Some(f);
                    }
                }
            }
        }
        let len = frame::check_header(hdr, MAX_FRAME).expect("header");
        let mut body = vec![0u8; len];
        self.sock.read_exact(&mut body).expect("reply body");
        (frame::decode_body(&body).expect("reply decodes"), fd)
    }

    /// Sends a request whose answer carries no fd.
    fn plain(&mut self, req: &ShimRequest) -> ShimReply {
        match self.ask(req) {
            (reply, None) => reply,
            (reply, Some(_)) => panic!("an fd came with {reply:?}"),
        }
    }

    fn call(&mut self, op: FileOp) -> FileReply {
        match self.ask(&ShimRequest::Call(op)) {
            (ShimReply::Reply(r), None) => r,
            other => panic!("unexpected answer to a call: {other:?}"),
        }
    }

    fn open(&mut self, path: &str, flags: i32) -> (Handle, OwnedFd) {
        let op = FileOp::Open {
            at: None,
            path: path.into(),
            flags,
            mode: 0o644,
        };
        match self.ask(&ShimRequest::Call(op)) {
            (ShimReply::Reply(FileReply::Opened { h, .. }), Some(fd)) => (h, fd),
            other => panic!("open {path}: {other:?}"),
        }
    }

    fn hello(&mut self, inherited: Vec<(i32, u64)>) -> Vec<InheritedFd> {
        match self.ask(&ShimRequest::Hello { pid: 1, inherited }) {
            (ShimReply::Welcome { remote }, None) => remote,
            other => panic!("unexpected answer to hello: {other:?}"),
        }
    }
}

fn inode(fd: impl AsFd) -> u64 {
    rustix::fs::fstat(fd).expect("fstat").st_ino
}

/// Runs a job that waits for a `stop` file in its scratch directory, runs
/// `client` against its shim socket, then stops it.
async fn with_client<T: Send + 'static>(
    backend: FsBackend,
    submit: &Path,
    client: impl FnOnce(&Path) -> T + Send + 'static,
) -> (ExitStatus, T) {
    let scratch = tempfile::tempdir().expect("scratch");
    let launch = JobLaunch {
        program: PathBuf::from("/bin/sh"),
        argv: vec![
            "sh".into(),
            "-c".into(),
            "while [ ! -e stop ]; do sleep 0.01; done".into(),
        ],
        env: vec![],
        scratch: scratch.path().to_path_buf(),
        root: submit.to_str().unwrap().to_string(),
        stdin: None,
        stdout: None,
        stderr: None,
        shim: PathBuf::from(NO_SHIM),
        restore: None,
        control: None,
        checkpoint_interval: None,
    };
    let job = tokio::spawn(run_job(launch, backend));
    let dir = scratch.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        let out = client(&dir.join(".roost.sock"));
        std::fs::write(dir.join("stop"), b"").expect("stop file");
        out
    })
    .await
    .expect("client");
    let (status, _) = tokio::time::timeout(LIMIT, job)
        .await
        .expect("job ends")
        .expect("job task")
        .expect("run_job");
    (status, out)
}

#[tokio::test]
async fn a_call_sees_every_earlier_write_and_eof_closes_the_handle() {
    let _forks = FORKS.write().await;
    let submit = submit_dir();
    let backend = FsBackend::new(submit.path());
    let root = submit.path().to_str().unwrap().as_bytes().to_vec();
    let (status, h) = with_client(backend.clone(), submit.path(), move |sock| {
        let mut c = Client::connect(sock);
        assert_eq!(c.hello(vec![]), vec![]);
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
        let (h, fd) = c.open("data.txt", flags);
        let mut f = std::fs::File::from(fd);
        f.write_all(b"hello ").unwrap();
        f.write_all(b"world\n").unwrap();
        // The placeholder's bytes are applied before the next call.
        match c.call(FileOp::Fstat { h }) {
            FileReply::Stat(st) => assert_eq!(st.size, 12),
            other => panic!("fstat: {other:?}"),
        }
        // Another image of the job finds the placeholder among its fds.
        let mut c2 = Client::connect(sock);
        let ino = inode(&f);
        let remote = c2.hello(vec![(7, ino), (8, ino + 1_000_000)]);
        assert_eq!(
            remote,
            vec![InheritedFd {
                fd: 7,
                h,
                flags: libc::O_WRONLY,
                stream: false,
                dir: false
            }]
        );
        f.write_all(b"tail\n").unwrap();
        drop(f);
        // The last copy is closed: the handle is closed before the next call.
        assert_eq!(c2.call(FileOp::Getcwd), FileReply::Path(root));
        assert_eq!(c.plain(&ShimRequest::Flush), ShimReply::Ok);
        h
    })
    .await;
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(read(submit.path(), "data.txt"), b"hello world\ntail\n");
    assert!(!backend.is_open(h));
    let seen = backend.seen();
    let close = seen
        .iter()
        .position(|s| *s == Seen::Call(FileOp::Close { h }))
        .expect("Close");
    let getcwd = seen
        .iter()
        .position(|s| *s == Seen::Call(FileOp::Getcwd))
        .expect("Getcwd");
    let tail = seen
        .iter()
        .position(|s| *s == Seen::Write(h, b"tail\n".to_vec()))
        .expect("tail");
    assert!(tail < close && close < getcwd, "order: {seen:?}");
    assert_eq!(seen.last(), Some(&Seen::Call(FileOp::Barrier)));
}

#[tokio::test]
async fn a_stream_pushes_the_whole_file_then_eof() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    let content: Vec<u8> = (0..(1u32 << 20) + 7).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(submit.path().join("big.bin"), &content).unwrap();
    let backend = FsBackend::new(submit.path());
    let (status, (h, got, remote)) = with_client(backend.clone(), submit.path(), |sock| {
        let mut c = Client::connect(sock);
        c.hello(vec![]);
        let (h, fd) = c.open("big.bin", libc::O_RDONLY);
        assert_eq!(c.plain(&ShimRequest::Stream { h }), ShimReply::Ok);
        let remote = Client::connect(sock).hello(vec![(0, inode(&fd))]);
        let mut got = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut got).unwrap();
        (h, got, remote)
    })
    .await;
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(
        remote,
        vec![InheritedFd {
            fd: 0,
            h,
            flags: libc::O_RDONLY,
            stream: true,
            dir: false
        }]
    );
    assert!(
        got == content,
        "streamed {} bytes, file has {}",
        got.len(),
        content.len()
    );
    assert!(!backend.is_open(h));
    let reads = backend
        .seen()
        .iter()
        .filter(|s| matches!(s, Seen::Call(FileOp::Read { h: rh, .. }) if *rh == h))
        .count();
    // 1 MiB + 7 in 256 KiB reads, and the empty read at the end.
    assert_eq!(reads, 6);
}

#[tokio::test]
async fn open_errors_and_directories() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    std::fs::create_dir(submit.path().join("sub")).unwrap();
    let backend = FsBackend::new(submit.path());
    let (status, ()) = with_client(backend.clone(), submit.path(), |sock| {
        let mut c = Client::connect(sock);
        c.hello(vec![]);
        let missing = FileOp::Open {
            at: None,
            path: b"nope".to_vec(),
            flags: 0,
            mode: 0,
        };
        assert_eq!(
            c.plain(&ShimRequest::Call(missing)),
            ShimReply::Reply(FileReply::Err(libc::ENOENT))
        );
        let escape = FileOp::Open {
            at: None,
            path: b"../x".to_vec(),
            flags: 0,
            mode: 0,
        };
        assert_eq!(
            c.plain(&ShimRequest::Call(escape)),
            ShimReply::Reply(FileReply::Err(libc::EACCES))
        );
        let (h, fd) = c.open("sub", libc::O_RDONLY | libc::O_DIRECTORY);
        let remote = c.hello(vec![(3, inode(&fd))]);
        assert_eq!(
            remote,
            vec![InheritedFd {
                fd: 3,
                h,
                flags: libc::O_RDONLY | libc::O_DIRECTORY,
                stream: false,
                dir: true
            }]
        );
    })
    .await;
    assert_eq!(status, ExitStatus::Code(0));
}

#[tokio::test]
async fn a_malformed_frame_closes_only_that_connection() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    let backend = FsBackend::new(submit.path());
    let (status, ()) = with_client(backend, submit.path(), |sock| {
        // Connected first: it waits for the listener, and it must outlive the bad ones.
        let mut good = Client::connect(sock);
        let mut bad = UnixStream::connect(sock).unwrap();
        bad.write_all(&[3, 0, 0, 0, 9, 1, 2]).unwrap();
        let mut rest = Vec::new();
        bad.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "no reply to a bad frame");
        let mut huge = UnixStream::connect(sock).unwrap();
        huge.write_all(&(MAX_FRAME + 1).to_le_bytes()).unwrap();
        huge.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "no reply to an oversized frame");
        assert_eq!(good.hello(vec![]), vec![]);
        assert_eq!(Client::connect(sock).hello(vec![]), vec![]);
    })
    .await;
    assert_eq!(status, ExitStatus::Code(0));
}

#[tokio::test]
async fn stdin_stdout_stderr_are_remote_without_the_shim() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    let input: Vec<u8> = (0..300_000u32)
        .map(|i| b"abcdefghij\n"[(i % 11) as usize])
        .collect();
    std::fs::write(submit.path().join("in.txt"), &input).unwrap();
    let std = Std {
        input: Some("in.txt"),
        output: Some("out.txt"),
        error: Some("err.txt"),
    };
    let ran = run_in(
        submit.path(),
        &["/bin/sh", "-c", "cat; echo to-stderr >&2; exit 3"],
        std,
        &[],
        Path::new(NO_SHIM),
        LIMIT,
    )
    .await;
    assert_eq!(ran.status, ExitStatus::Code(3));
    assert!(
        read(submit.path(), "out.txt") == input,
        "stdout differs from stdin"
    );
    assert_eq!(read(submit.path(), "err.txt"), b"to-stderr\n");
    assert!(ran.usage.wall_secs > 0.0);
}

#[tokio::test]
async fn environment_and_working_directory() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    let std = Std {
        output: Some("env.txt"),
        ..Std::default()
    };
    let script = "pwd; echo \"$ROOST_ROOT|$ROOST_CWD|$PATH|$LD_PRELOAD|$MINE\"; \
                  [ -S \"$ROOST_SOCK\" ] && echo sock";
    let ran = run_in(
        submit.path(),
        &["/bin/sh", "-c", script],
        std,
        &[("MINE", "x y")],
        Path::new(NO_SHIM),
        LIMIT,
    )
    .await;
    assert_eq!(ran.status, ExitStatus::Code(0));
    let out = String::from_utf8(read(submit.path(), "env.txt")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let root = submit.path().to_str().unwrap();
    assert_eq!(
        lines[0], "/tmp",
        "real cwd is the scratch dir, seen as /tmp: {out}"
    );
    assert_eq!(
        lines[1],
        format!("{root}|{root}|/usr/local/bin:/usr/bin:/bin||x y")
    );
    assert_eq!(lines[2], "sock");
}

#[tokio::test]
async fn a_job_killed_by_a_signal_reports_it() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    let ran = run_in(
        submit.path(),
        &["/bin/sh", "-c", "kill -TERM $$"],
        Std::default(),
        &[],
        Path::new(NO_SHIM),
        LIMIT,
    )
    .await;
    assert_eq!(ran.status, ExitStatus::Signal(libc::SIGTERM));
}

/// A process of this host has `arg` in its command line (the job's pids
/// are those of its own pid namespace).
fn running_with_arg(arg: &[u8]) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .any(|c| c.windows(arg.len()).any(|w| w == arg))
}

#[tokio::test]
async fn processes_left_behind_are_killed_at_once() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    let std = Std {
        output: Some("pid"),
        ..Std::default()
    };
    let start = Instant::now();
    let ran = run_in(
        submit.path(),
        &[
            "/bin/sh",
            "-c",
            "sleep 30.0417 </dev/null >/dev/null 2>&1 & echo $!",
        ],
        std,
        &[],
        Path::new(NO_SHIM),
        LIMIT,
    )
    .await;
    assert_eq!(ran.status, ExitStatus::Code(0));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    // The pid is the job's (its own pid namespace): look for the process
    // by its command line on this host.
    let pid: i32 = String::from_utf8(read(submit.path(), "pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid > 2, "pid {pid} in the job's namespace");
    assert!(
        !running_with_arg(b"30.0417"),
        "the job's background process survived"
    );
}

#[tokio::test]
async fn a_process_holding_stdout_is_killed_after_a_grace() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    let std = Std {
        output: Some("out"),
        ..Std::default()
    };
    let start = Instant::now();
    let ran = run_in(
        submit.path(),
        &[
            "/bin/sh",
            "-c",
            "(sleep 1; echo late; exec sleep 30.0419) & echo $!",
        ],
        std,
        &[],
        Path::new(NO_SHIM),
        LIMIT,
    )
    .await;
    let took = start.elapsed();
    assert_eq!(ran.status, ExitStatus::Code(0));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    let out = String::from_utf8(read(submit.path(), "out")).unwrap();
    let (pid, late) = out.split_once('\n').unwrap();
    // What it wrote within the grace is kept.
    assert_eq!(late, "late\n");
    assert!(
        pid.parse::<i32>().unwrap() > 2,
        "pid {pid} in the job's namespace"
    );
    assert!(
        !running_with_arg(b"30.0419"),
        "the job's background process survived"
    );
}

#[tokio::test]
async fn a_program_that_cannot_start_is_an_error() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    let scratch = tempfile::tempdir().unwrap();
    let launch = JobLaunch {
        program: PathBuf::from("/nonexistent/prog"),
        argv: vec!["prog".into()],
        env: vec![],
        scratch: scratch.path().to_path_buf(),
        root: submit.path().to_str().unwrap().to_string(),
        stdin: None,
        stdout: None,
        stderr: None,
        shim: PathBuf::from(NO_SHIM),
        restore: None,
        control: None,
        checkpoint_interval: None,
    };
    let err = run_job(launch, FsBackend::new(submit.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::Spawn { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "cannot start the job's program /nonexistent/prog"
    );
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "socket left behind"
    );
}

#[tokio::test]
async fn unread_stdin_does_not_hold_the_job() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    std::fs::write(submit.path().join("in.bin"), binary(4 << 20)).unwrap();
    let std = Std {
        input: Some("in.bin"),
        output: Some("out.txt"),
        ..Std::default()
    };
    let start = Instant::now();
    let ran = run_in(
        submit.path(),
        &["/bin/sh", "-c", "head -c 10 >/dev/null; echo read some"],
        std,
        &[],
        Path::new(NO_SHIM),
        LIMIT,
    )
    .await;
    assert_eq!(ran.status, ExitStatus::Code(0));
    assert_eq!(read(submit.path(), "out.txt"), b"read some\n");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn large_output_and_input_pass_through_with_back_pressure() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    let data = binary(24 << 20);
    std::fs::write(submit.path().join("in.bin"), &data).unwrap();
    let std = Std {
        input: Some("in.bin"),
        output: Some("out.bin"),
        ..Std::default()
    };
    let ran = run_in(
        submit.path(),
        &["/bin/cat"],
        std,
        &[],
        Path::new(NO_SHIM),
        LIMIT,
    )
    .await;
    assert_eq!(ran.status, ExitStatus::Code(0));
    assert!(
        read(submit.path(), "out.bin") == data,
        "24 MiB through stdin and stdout differ"
    );
}

#[tokio::test]
async fn usage_counts_the_jobs_cpu_time() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    let burn = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done";
    let ran = run_in(
        submit.path(),
        &["/bin/sh", "-c", burn],
        Std::default(),
        &[],
        Path::new(NO_SHIM),
        LIMIT,
    )
    .await;
    assert_eq!(ran.status, ExitStatus::Code(0));
    let cpu = ran.usage.user_cpu_secs + ran.usage.sys_cpu_secs;
    assert!(cpu > 0.05, "cpu {cpu} s");
    assert!(
        ran.usage.wall_secs >= cpu * 0.9,
        "wall {} s < cpu {cpu} s",
        ran.usage.wall_secs
    );
}

fn binary(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7919) ^ (i >> 9)) as u8).collect()
}

#[tokio::test]
async fn a_process_that_left_the_group_cannot_hold_the_job_forever() {
    let _forks = FORKS.read().await;
    let submit = submit_dir();
    let std = Std {
        output: Some("out"),
        ..Std::default()
    };
    let start = Instant::now();
    // setsid(1) puts the sleep in a session of its own, out of reach of a
    // process-group kill, with the job's stdout; it dies with the job's pid
    // namespace after the grace.
    let ran = run_in(
        submit.path(),
        &["/bin/sh", "-c", "setsid sleep 60 & echo $!"],
        std,
        &[],
        Path::new(NO_SHIM),
        LIMIT,
    )
    .await;
    let took = start.elapsed();
    let pid: i32 = String::from_utf8(read(submit.path(), "out"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::Kill);
    }
    assert_eq!(ran.status, ExitStatus::Code(0));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}
