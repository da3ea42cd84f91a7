//! Shared by the starter's integration tests: an in-process backend over
//! `shadow::fs::JobFs`, and running a job against it.
#![allow(dead_code)]

use proto::Handle;
use proto::fileop::{FileOp, FileReply};
use proto::job::{ExitStatus, Usage};
use shadow::fs::JobFs;
use starter::job::{JobLaunch, run_job};
use starter::relay::Backend;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A [`Backend`] that executes the job's calls on a `JobFs` in this process,
/// and records every call and write it saw.
#[derive(Clone)]
pub struct FsBackend {
    pub fs: Arc<Mutex<JobFs>>,
    pub log: Arc<Mutex<Vec<Seen>>>,
}

/// What the backend received, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Call(FileOp),
    Write(Handle, Vec<u8>),
}

impl FsBackend {
    pub fn new(root: &Path) -> FsBackend {
        FsBackend {
            fs: Arc::new(Mutex::new(JobFs::new(root).expect("JobFs::new"))),
            log: Arc::default(),
        }
    }

    /// Opens the job's stdin/stdout/stderr as the shadow does.
    pub fn open_std(&self, path: &str, flags: i32) -> Handle {
        self.fs
            .lock()
            .unwrap()
            .open_std(path, flags)
            .unwrap_or_else(|e| panic!("open_std({path}): errno {e}"))
    }

    /// The handle is still open on the backend.
    pub fn is_open(&self, h: Handle) -> bool {
        self.fs.lock().unwrap().handle_flags(h).is_some()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

impl Backend for FsBackend {
    async fn call(&mut self, op: FileOp) -> FileReply {
        self.log.lock().unwrap().push(Seen::Call(op.clone()));
        match shadow::fs::nonblocking_lock(&op) {
            // A waiting lock is retried, as the shadow does, so that the
            // runtime's thread never blocks.
            Some(try_op) => loop {
                match self.fs.lock().unwrap().call(try_op.clone()) {
                    FileReply::Err(e) if e == libc::EAGAIN || e == libc::EACCES => {}
                    r => break r,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            },
            None => self.fs.lock().unwrap().call(op),
        }
    }

    async fn write(&mut self, h: Handle, data: Vec<u8>) {
        self.log.lock().unwrap().push(Seen::Write(h, data.clone()));
        if let Err(e) = self.fs.lock().unwrap().write(h, &data) {
            panic!("write to {h:?} failed: errno {e}");
        }
    }
}

/// A job's stdin/stdout/stderr, as paths in its submit directory.
#[derive(Default, Clone)]
pub struct Std<'a> {
    pub input: Option<&'a str>,
    pub output: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// The outcome of one job run under the relay.
pub struct Ran {
    pub status: ExitStatus,
    pub usage: Usage,
    pub backend: FsBackend,
    pub handles: Vec<Handle>,
}

/// Runs `argv` (argv[0] is the program) as a job whose files are in
/// `submit`, from a fresh empty scratch directory, under `shim` (empty: no
/// preload). Asserts that the scratch directory holds nothing afterwards
/// and that every handle was closed.
pub async fn run_in(
    submit: &Path,
    argv: &[&str],
    std: Std<'_>,
    env: &[(&str, &str)],
    shim: &Path,
    limit: Duration,
) -> Ran {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let backend = FsBackend::new(submit);
    let stdin = std.input.map(|p| backend.open_std(p, libc::O_RDONLY));
    let out_flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    let stdout = std.output.map(|p| backend.open_std(p, out_flags));
    let stderr = std.error.map(|p| backend.open_std(p, out_flags));
    let launch = JobLaunch {
        program: PathBuf::from(argv[0]),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        scratch: scratch.path().to_path_buf(),
        root: submit.to_str().expect("utf-8 submit dir").to_string(),
        stdin,
        stdout,
        stderr,
        shim: shim.to_path_buf(),
        restore: None,
        control: None,
        checkpoint_interval: None,
    };
    let (status, usage) = tokio::time::timeout(limit, run_job(launch, backend.clone()))
        .await
        .unwrap_or_else(|_| panic!("job {argv:?} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("run_job({argv:?}): {e}"));
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("read scratch")
        .map(|e| e.expect("dirent").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "scratch directory not empty after {argv:?}: {left:?}"
    );
    let handles: Vec<Handle> = [stdin, stdout, stderr].into_iter().flatten().collect();
    for h in &handles {
        assert!(
            !backend.is_open(*h),
            "std handle {h:?} still open after {argv:?}"
        );
    }
    Ran {
        status,
        usage,
        backend,
        handles,
    }
}

/// A fresh directory for a job's files on the "submit host", outside every
/// path the shim treats as local (so not under /tmp).
pub fn submit_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("submit-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("submit dir")
}

/// Reads a file of a directory, or panics naming it.
pub fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name))
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.join(name).display()))
}
