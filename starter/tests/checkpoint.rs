//! Checkpoint, vacate and restart of real programs under the real shim,
//! against a shadow file engine in this process that keeps the committed
//! image in memory with a snapshot of the job's files (as the schedd
//! does on disk). A job is checkpointed mid-run, killed, restarted in a
//! fresh scratch directory from the image, and its output must be
//! byte-identical to an uninterrupted run.

use proto::Handle;
use proto::fileop::{FileOp, FileReply};
use proto::job::ExitStatus;
use shadow::fs::{FsSnapshot, JobFs};
use starter::job::{CkptOutcome, JobControl, JobLaunch, run_job};
use starter::relay::Backend;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(120);

/// A prerequisite that is missing fails the test under `CI=true`;
/// elsewhere the test says so on stderr and does nothing.
fn prerequisite(what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing (CI=true, so this fails): {what}");
    }
    eprintln!("SKIPPED: prerequisite missing: {what}");
    false
}

fn shim() -> Option<PathBuf> {
    let path = std::env::var_os("ROOST_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/libroost_shim.so")
        });
    let ok = path.is_file();
    prerequisite(
        &format!(
            "{} (build it with `cargo build -p syscall-shim`)",
            path.display()
        ),
        ok,
    )
    .then_some(path)
}

/// A job that reads `input.txt` (or with `-`, its stdin) line by line, keeps a running hash and
/// 8 MiB of memory that every line changes, appends one line per input
/// line to `output.txt`, and prints a summary of all of it at the end.
const READER_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    FILE *in = argc > 1 && strcmp(argv[1], "-") == 0 ? stdin : fopen("input.txt", "r");
    if (!in) { perror("input.txt"); return 2; }
    int out = open("output.txt", O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0) { perror("output.txt"); return 2; }
    size_t n = 8 << 20;
    unsigned char *m = malloc(n);
    if (!m) return 3;
    for (size_t i = 0; i < n; i++) m[i] = (unsigned char)(i * 13 + i / 4096);
    char line[512];
    unsigned long h = 5381;
    int k = 0;
    while (fgets(line, sizeof line, in)) {
        for (char *c = line; *c; c++) h = h * 33 + (unsigned char)*c;
        for (size_t i = (k * 4099) % 4096; i < n; i += 4096) {
            m[i] ^= (unsigned char)h;
            h += m[i];
        }
        char buf[600];
        int len = snprintf(buf, sizeof buf, "%d %lu %s", k, h, line);
        if (write(out, buf, len) != len) { perror("write"); return 4; }
        k++;
        usleep(4000);
    }
    unsigned long s = 0;
    for (size_t i = 0; i < n; i += 64) s = s * 31 + m[i];
    printf("lines %d hash %lu memory %lu\n", k, h, s);
    return 0;
}
"#;

/// A pure-Python job: reads a CSV, computes slowly, writes results.
const PY: &str = r#"
import csv, time
rows = list(csv.reader(open("data.csv")))
acc = 0
with open("results.txt", "a") as out:
    for i, row in enumerate(rows[1:]):
        x = int(row[1])
        for j in range(3000):
            acc = (acc * 31 + x * j + i) % 1000003
        out.write(f"{i} {row[0]} {acc}\n")
        out.flush()
        time.sleep(0.004)
print("total", acc, len(rows))
"#;

/// Compiles [`READER_C`] once per test run.
fn reader_program() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("starter-jobs");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let src = dir.join(format!("ckpt_reader.{}.c", std::process::id()));
        std::fs::write(&src, READER_C).map_err(|e| e.to_string())?;
        let out = dir.join(format!("ckpt_reader.{}.tmp", std::process::id()));
        let o = Command::new("cc")
            .args(["-O1", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .output()
            .map_err(|e| format!("`cc` cannot run: {e}"))?;
        let _ = std::fs::remove_file(&src);
        assert!(
            o.status.success(),
            "building the test job failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let done = dir.join("ckpt_reader");
        std::fs::rename(&out, &done).map_err(|e| e.to_string())?;
        Ok(done)
    });
    match r {
        Ok(p) => Some(p.clone()),
        Err(e) => {
            prerequisite(e, false);
            None
        }
    }
}

/// What the in-memory shadow keeps.
#[derive(Default)]
struct Store {
    incoming: Option<Vec<u8>>,
    /// The last committed image and the job's files at its commit.
    image: Option<(Vec<u8>, FsSnapshot)>,
    commits: u32,
    aborts: Vec<String>,
    /// Largest chunk seen.
    biggest_chunk: usize,
}

/// A backend over `JobFs` that also stores checkpoint images.
#[derive(Clone)]
struct CkptBackend {
    fs: Arc<Mutex<JobFs>>,
    store: Arc<Mutex<Store>>,
}

impl CkptBackend {
    fn new(fs: JobFs, store: Arc<Mutex<Store>>) -> Self {
        CkptBackend {
            fs: Arc::new(Mutex::new(fs)),
            store,
        }
    }

    fn open_std(&self, path: &str, flags: i32) -> Handle {
        self.fs
            .lock()
            .unwrap()
            .open_std(path, flags)
            .unwrap_or_else(|e| panic!("open_std({path}): errno {e}"))
    }
}

impl Backend for CkptBackend {
    async fn call(&mut self, op: FileOp) -> FileReply {
        match shadow::fs::nonblocking_lock(&op) {
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
        if let Err(e) = self.fs.lock().unwrap().write(h, &data) {
            panic!("write to {h:?} failed: errno {e}");
        }
    }

    async fn ckpt_begin(&mut self, _reason: String) {
        self.store.lock().unwrap().incoming = Some(Vec::new());
    }

    async fn ckpt_chunk(&mut self, data: Vec<u8>) {
        let mut s = self.store.lock().unwrap();
        s.biggest_chunk = s.biggest_chunk.max(data.len());
        if let Some(img) = s.incoming.as_mut() {
            img.extend_from_slice(&data);
        }
    }

    async fn ckpt_end(
        &mut self,
        _raw_bytes: u64,
        _seconds: f64,
        streams: Vec<(Handle, i64)>,
    ) -> Result<u64, String> {
        let snap = self.fs.lock().unwrap().snapshot(&streams);
        let mut s = self.store.lock().unwrap();
        let img = s.incoming.take().ok_or("no image arrived")?;
        let bytes = img.len() as u64;
        s.image = Some((img, snap));
        s.commits += 1;
        Ok(bytes)
    }

    async fn ckpt_abort(&mut self, reason: String) {
        let mut s = self.store.lock().unwrap();
        s.incoming = None;
        s.aborts.push(reason);
    }
}

/// How one run of a job starts.
struct Run<'a> {
    program: &'a Path,
    /// Copy the program into the scratch directory (a shipped executable,
    /// seen by the job as `/tmp/NAME`).
    ship: bool,
    argv: &'a [&'a str],
    stdin: Option<Handle>,
    stdout: Option<Handle>,
    image: Option<Vec<u8>>,
    interval: Option<Duration>,
}

/// Runs one job; `during` gets its control handle while it runs (spawned).
async fn run<F, Fut>(
    backend: CkptBackend,
    submit: &Path,
    r: Run<'_>,
    during: F,
) -> (ExitStatus, Vec<CkptOutcome>)
where
    F: FnOnce(JobControl) -> Fut,
    Fut: Future<Output = Vec<CkptOutcome>> + Send + 'static,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let scratch = tempfile::tempdir().expect("scratch");
    let program = if r.ship {
        let name = r.program.file_name().unwrap();
        let dest = scratch.path().join(name);
        std::fs::copy(r.program, &dest).expect("copy the program");
        dest
    } else {
        r.program.to_path_buf()
    };
    let (ctl, rx) = JobControl::new();
    let restore = r.image.map(|img| {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for piece in img.chunks(300 << 10) {
                if tx.send(piece.to_vec()).await.is_err() {
                    return;
                }
            }
        });
        rx
    });
    let mut launch = JobLaunch::new(
        program,
        r.argv.iter().map(|s| s.to_string()).collect(),
        scratch.path().to_path_buf(),
        submit.to_str().unwrap().to_string(),
    );
    launch.stdin = r.stdin;
    launch.stdout = r.stdout;
    launch.checkpoint_interval = r.interval;
    launch.shim = shim().expect("shim");
    launch.restore = restore;
    launch.control = Some(rx);
    let side = tokio::spawn(during(ctl));
    let (status, _usage) = tokio::time::timeout(LIMIT, run_job(launch, backend))
        .await
        .expect("the job did not finish in time")
        .expect("run_job");
    let outcomes = side.await.expect("the controlling task");
    (status, outcomes)
}

/// Vacates the job once `file` has `at_least` lines.
fn vacate_at(file: PathBuf, at_least: usize) -> impl FnOnce(JobControl) -> VacateFut {
    move |ctl| {
        Box::pin(async move {
            loop {
                let n =
                    std::fs::read(&file).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
                if n >= at_least {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let o = ctl
                .vacate("the owner is back", Duration::from_secs(60))
                .await
                .expect("an outcome");
            vec![o]
        })
    }
}

type VacateFut = std::pin::Pin<Box<dyn Future<Output = Vec<CkptOutcome>> + Send>>;

fn nothing(_: JobControl) -> VacateFut {
    Box::pin(async { Vec::new() })
}

fn lines(n: usize) -> String {
    let mut s = String::new();
    let mut x: u32 = 7;
    for i in 0..n {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        s.push_str(&format!("line {i} {}\n", x >> 8));
    }
    s
}

fn submit_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("submit-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("submit dir")
}

fn read(dir: &Path, name: &str) -> String {
    String::from_utf8(std::fs::read(dir.join(name)).unwrap()).unwrap()
}

/// The image and file snapshot the store holds.
fn image(store: &Arc<Mutex<Store>>) -> (Vec<u8>, FsSnapshot) {
    store
        .lock()
        .unwrap()
        .image
        .clone()
        .expect("a committed image")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_program_vacated_mid_run_restarts_elsewhere_with_identical_output() {
    let (Some(_), Some(prog)) = (shim(), reader_program()) else {
        return;
    };
    let input = lines(600);
    let out_flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;

    // Uninterrupted.
    let plain = submit_dir();
    std::fs::write(plain.path().join("input.txt"), &input).unwrap();
    let store = Arc::new(Mutex::new(Store::default()));
    let b = CkptBackend::new(JobFs::new(plain.path()).unwrap(), store.clone());
    let stdout = b.open_std("stdout.txt", out_flags);
    let run1 = Run {
        program: &prog,
        ship: true,
        argv: &["reader"],
        stdout: Some(stdout),
        image: None,
        stdin: None,
        interval: None,
    };
    let (status, _) = run(b, plain.path(), run1, nothing).await;
    assert_eq!(status, ExitStatus::Code(0));
    let want_out = read(plain.path(), "output.txt");
    let want_stdout = read(plain.path(), "stdout.txt");
    assert_eq!(want_out.lines().count(), 600);
    assert!(want_stdout.starts_with("lines 600 hash "), "{want_stdout}");

    // Vacated with a checkpoint about a third of the way through.
    let moved = submit_dir();
    std::fs::write(moved.path().join("input.txt"), &input).unwrap();
    let store = Arc::new(Mutex::new(Store::default()));
    let b = CkptBackend::new(JobFs::new(moved.path()).unwrap(), store.clone());
    let stdout = b.open_std("stdout.txt", out_flags);
    let run2 = Run {
        program: &prog,
        ship: true,
        argv: &["reader"],
        stdout: Some(stdout),
        image: None,
        stdin: None,
        interval: None,
    };
    let (status, outcomes) = run(
        b,
        moved.path(),
        run2,
        vacate_at(moved.path().join("output.txt"), 150),
    )
    .await;
    assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
    assert!(outcomes[0].committed(), "{outcomes:?}");
    let CkptOutcome::Committed { raw_bytes, .. } = outcomes[0] else {
        unreachable!()
    };
    assert!(raw_bytes > 8 << 20, "the image holds the job's memory");
    let partial = read(moved.path(), "output.txt");
    let done = partial.lines().count();
    assert!(done > 10 && done < 600, "vacated mid-run: {done} lines");
    assert!(store.lock().unwrap().biggest_chunk <= 1 << 20);

    // Restarted in a fresh scratch directory from the image.
    let (img, snap) = image(&store);
    assert!((img.len() as u64) < raw_bytes, "the image is compressed");
    let fs = JobFs::restore(moved.path(), &snap).expect("restore the job's files");
    let b = CkptBackend::new(fs, store.clone());
    let run3 = Run {
        program: &prog,
        ship: true,
        argv: &["reader"],
        stdout: None,
        image: Some(img),
        stdin: None,
        interval: None,
    };
    let (status, _) = run(b, moved.path(), run3, nothing).await;
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(read(moved.path(), "output.txt"), want_out);
    assert_eq!(read(moved.path(), "stdout.txt"), want_stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_script_restarted_twice_gives_the_same_results() {
    let python = Path::new("/usr/bin/python3");
    if shim().is_none() || !prerequisite("/usr/bin/python3", python.is_file()) {
        return;
    }
    let mut data = String::from("name,x\n");
    for i in 0..300 {
        data.push_str(&format!("p{i},{}\n", (i * 37) % 101));
    }
    let out_flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    let prepare = |dir: &Path| {
        std::fs::write(dir.join("data.csv"), &data).unwrap();
        std::fs::write(dir.join("job.py"), PY).unwrap();
    };
    let argv = ["python3", "job.py"];

    let plain = submit_dir();
    prepare(plain.path());
    let store = Arc::new(Mutex::new(Store::default()));
    let b = CkptBackend::new(JobFs::new(plain.path()).unwrap(), store);
    let stdout = b.open_std("stdout.txt", out_flags);
    let r = Run {
        program: python,
        ship: false,
        argv: &argv,
        stdout: Some(stdout),
        image: None,
        stdin: None,
        interval: None,
    };
    let (status, _) = run(b, plain.path(), r, nothing).await;
    assert_eq!(status, ExitStatus::Code(0));
    let want = read(plain.path(), "results.txt");
    let want_stdout = read(plain.path(), "stdout.txt");
    assert_eq!(want.lines().count(), 300);
    assert!(want_stdout.starts_with("total "), "{want_stdout}");

    let moved = submit_dir();
    prepare(moved.path());
    let store = Arc::new(Mutex::new(Store::default()));
    let b = CkptBackend::new(JobFs::new(moved.path()).unwrap(), store.clone());
    let stdout = b.open_std("stdout.txt", out_flags);
    let r = Run {
        program: python,
        ship: false,
        argv: &argv,
        stdout: Some(stdout),
        image: None,
        stdin: None,
        interval: None,
    };
    let results = moved.path().join("results.txt");
    let (status, outcomes) = run(b, moved.path(), r, vacate_at(results.clone(), 60)).await;
    assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
    assert!(outcomes[0].committed(), "{outcomes:?}");
    let mut progress = vec![read(moved.path(), "results.txt").lines().count()];

    // Restarted from the image, vacated again, restarted from the second image.
    for round in 0..2 {
        let (img, snap) = image(&store);
        let fs = JobFs::restore(moved.path(), &snap).expect("restore the job's files");
        let b = CkptBackend::new(fs, store.clone());
        let r = Run {
            program: python,
            ship: false,
            argv: &argv,
            stdout: None,
            image: Some(img),
            stdin: None,
            interval: None,
        };
        let results = results.clone();
        let during = move |ctl: JobControl| -> VacateFut {
            if round == 0 {
                vacate_at(results, 150)(ctl)
            } else {
                nothing(ctl)
            }
        };
        let (status, outcomes) = run(b, moved.path(), r, during).await;
        if round == 0 {
            assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
            assert!(outcomes[0].committed(), "{outcomes:?}");
            progress.push(read(moved.path(), "results.txt").lines().count());
        } else {
            assert_eq!(status, ExitStatus::Code(0));
        }
    }
    assert!(
        progress[0] > 0 && progress[0] < progress[1] && progress[1] < 300,
        "each run went on from the last image: {progress:?}"
    );
    assert_eq!(store.lock().unwrap().commits, 2);
    assert_eq!(read(moved.path(), "results.txt"), want);
    assert_eq!(read(moved.path(), "stdout.txt"), want_stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_two_processes_is_not_checkpointable_and_vacate_kills_it() {
    let Some(_) = shim() else { return };
    let submit = submit_dir();
    let store = Arc::new(Mutex::new(Store::default()));
    let b = CkptBackend::new(JobFs::new(submit.path()).unwrap(), store.clone());
    let stdout = b.open_std("stdout.txt", libc::O_WRONLY | libc::O_CREAT);
    let r = Run {
        program: Path::new("/bin/sh"),
        ship: false,
        argv: &["sh", "-c", "echo start; sleep 30; echo end"],
        stdout: Some(stdout),
        image: None,
        stdin: None,
        interval: None,
    };
    let started = std::time::Instant::now();
    let (status, outcomes) = run(b, submit.path(), r, |ctl| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let plain = ctl.checkpoint("asked by a test").await.expect("an outcome");
            let vacated = ctl
                .vacate("the owner is back", Duration::from_secs(10))
                .await
                .expect("an outcome");
            vec![plain, vacated]
        }) as VacateFut
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "vacate was prompt"
    );
    assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
    for o in &outcomes {
        match o {
            CkptOutcome::NotCheckpointable(why) => {
                assert!(why.contains("2 processes"), "{why}")
            }
            other => panic!("expected NotCheckpointable, got {other:?}"),
        }
    }
    let s = store.lock().unwrap();
    assert!(s.image.is_none());
    assert_eq!(s.aborts.len(), 2, "{:?}", s.aborts);
    assert!(s.aborts[0].contains("2 processes"), "{:?}", s.aborts);
    drop(s);
    assert_eq!(read(submit.path(), "stdout.txt"), "start\n");
}

/// Runs the reader job to its end in a new submit directory holding
/// `input`; returns the directory, the store and the outcomes of `during`.
async fn reader_run<F, Fut>(
    prog: &Path,
    input: &str,
    from_stdin: bool,
    interval: Option<Duration>,
    during: F,
) -> (
    tempfile::TempDir,
    Arc<Mutex<Store>>,
    ExitStatus,
    Vec<CkptOutcome>,
)
where
    F: FnOnce(JobControl, PathBuf) -> Fut,
    Fut: Future<Output = Vec<CkptOutcome>> + Send + 'static,
{
    let dir = submit_dir();
    let output = dir.path().join("output.txt");
    std::fs::write(dir.path().join("input.txt"), input).unwrap();
    let store = Arc::new(Mutex::new(Store::default()));
    let b = CkptBackend::new(JobFs::new(dir.path()).unwrap(), store.clone());
    let stdout = b.open_std("stdout.txt", libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC);
    let stdin = from_stdin.then(|| b.open_std("input.txt", libc::O_RDONLY));
    let argv: &[&str] = if from_stdin {
        &["reader", "-"]
    } else {
        &["reader"]
    };
    let r = Run {
        program: prog,
        ship: true,
        argv,
        stdout: Some(stdout),
        image: None,
        stdin,
        interval,
    };
    let (status, outcomes) = run(b, dir.path(), r, |ctl| during(ctl, output)).await;
    (dir, store, status, outcomes)
}

/// Restarts the reader job from the store's image in `dir`.
async fn reader_restart(prog: &Path, dir: &Path, store: &Arc<Mutex<Store>>) -> ExitStatus {
    let (img, snap) = image(store);
    let fs = JobFs::restore(dir, &snap).expect("restore the job's files");
    let b = CkptBackend::new(fs, store.clone());
    let r = Run {
        program: prog,
        ship: true,
        argv: &["reader"],
        stdout: None,
        image: Some(img),
        stdin: None,
        interval: None,
    };
    run(b, dir, r, nothing).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reading_its_stdin_resumes_where_it_had_read() {
    let (Some(_), Some(prog)) = (shim(), reader_program()) else {
        return;
    };
    let input = lines(500);
    let (plain, _, status, _) = reader_run(&prog, &input, true, None, |c, _| nothing(c)).await;
    assert_eq!(status, ExitStatus::Code(0));
    let want_out = read(plain.path(), "output.txt");
    assert_eq!(want_out.lines().count(), 500);
    let want_stdout = read(plain.path(), "stdout.txt");

    let (moved, store, status, outcomes) = reader_run(&prog, &input, true, None, |ctl, out| {
        vacate_at(out, 120)(ctl)
    })
    .await;
    assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
    assert!(outcomes[0].committed(), "{outcomes:?}");
    let done = read(moved.path(), "output.txt").lines().count();
    assert!(done > 10 && done < 500, "vacated mid-run: {done} lines");
    // The stream was pushed ahead of the job; the image records what the
    // job had consumed, which is less than the whole file.
    let (_, snap) = image(&store);
    let stdin = snap
        .handles
        .iter()
        .find(|h| h.path == b"input.txt")
        .unwrap();
    assert!(
        stdin.offset > 0 && (stdin.offset as usize) < input.len(),
        "{stdin:?}"
    );
    assert_eq!(
        reader_restart(&prog, moved.path(), &store).await,
        ExitStatus::Code(0)
    );
    assert_eq!(read(moved.path(), "output.txt"), want_out);
    assert_eq!(read(moved.path(), "stdout.txt"), want_stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_and_suspended_checkpoints_let_the_job_go_on_and_restart_from_the_last() {
    let (Some(_), Some(prog)) = (shim(), reader_program()) else {
        return;
    };
    let input = lines(700);
    let (plain, _, _, _) = reader_run(&prog, &input, false, None, |c, _| nothing(c)).await;
    let want_out = read(plain.path(), "output.txt");
    let want_stdout = read(plain.path(), "stdout.txt");

    // Images every 700 ms, and one asked for while the job is suspended.
    // The program under its own name, to find its process.
    let own = prog.with_file_name("ckpt_susp");
    if !own.exists() {
        let tmp = prog.with_file_name(format!("ckpt_susp.{}", std::process::id()));
        std::fs::copy(&prog, &tmp).unwrap();
        std::fs::rename(&tmp, &own).unwrap();
    }
    let (dir, store, status, outcomes) = reader_run(
        &own,
        &input,
        false,
        Some(Duration::from_millis(700)),
        |ctl, _| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                ctl.suspend();
                tokio::time::sleep(Duration::from_millis(100)).await;
                let pid = job_pid("ckpt_susp").expect("the job's process");
                assert_eq!(state(pid), Some('T'));
                let o = ctl.checkpoint("while suspended").await.expect("an outcome");
                // Still stopped after the image, until continued.
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(state(pid), Some('T'));
                ctl.resume();
                vec![o]
            }) as VacateFut
        },
    )
    .await;
    assert_eq!(status, ExitStatus::Code(0));
    assert!(outcomes[0].committed(), "{outcomes:?}");
    let commits = store.lock().unwrap().commits;
    assert!(commits >= 3, "{commits} images");
    // Checkpoints did not disturb the job.
    assert_eq!(read(dir.path(), "output.txt"), want_out);
    assert_eq!(read(dir.path(), "stdout.txt"), want_stdout);

    // The host dies after the last image: the job restarts from it (the
    // files are cut back to their size at that image) and ends the same.
    assert_eq!(
        reader_restart(&own, dir.path(), &store).await,
        ExitStatus::Code(0)
    );
    assert_eq!(read(dir.path(), "output.txt"), want_out);
    assert_eq!(read(dir.path(), "stdout.txt"), want_stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_image_is_a_restore_error() {
    let (Some(shim), Some(prog)) = (shim(), reader_program()) else {
        return;
    };
    let (dir, store, _, outcomes) = reader_run(&prog, &lines(400), false, None, |ctl, out| {
        vacate_at(out, 100)(ctl)
    })
    .await;
    assert!(outcomes[0].committed(), "{outcomes:?}");
    let (img, snap) = image(&store);
    // Raw (not compressed) bytes that are not an image.
    let bad = zstd::encode_all(&b"ROOSTCK\x01 but not an image at all"[..], 1).unwrap();
    for data in [bad, img[..img.len() / 2].to_vec()] {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::copy(&prog, scratch.path().join("reader")).unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(data).await.unwrap();
        drop(tx);
        let mut launch = JobLaunch::new(
            scratch.path().join("reader"),
            vec!["reader".into()],
            scratch.path().to_path_buf(),
            dir.path().to_str().unwrap().to_string(),
        );
        launch.shim = shim.clone();
        launch.restore = Some(rx);
        let fs = JobFs::restore(dir.path(), &snap).unwrap();
        let b = CkptBackend::new(fs, store.clone());
        let r = tokio::time::timeout(LIMIT, run_job(launch, b))
            .await
            .unwrap();
        match r {
            Err(starter::job::JobError::Restore(why)) => assert!(!why.is_empty()),
            other => panic!("expected a restore error, got {other:?}"),
        }
    }
}

/// The pid of the process named `comm`.
fn job_pid(comm: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
}

fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

/// A vacate whose checkpoint cannot finish within the owner's
/// `max_vacate_time` (here 0 s) is abandoned: the job is killed and the
/// reason, sent on as the checkpoint's abort, names the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vacate_past_max_vacate_time_abandons_the_checkpoint_and_kills_the_job() {
    let (Some(_), Some(prog)) = (shim(), reader_program()) else {
        panic!("prerequisite missing: the shim and the reader program");
    };
    let dir = submit_dir();
    std::fs::write(dir.path().join("input.txt"), lines(600)).unwrap();
    let store = Arc::new(Mutex::new(Store::default()));
    let b = CkptBackend::new(JobFs::new(dir.path()).unwrap(), store.clone());
    let stdout = b.open_std("stdout.txt", libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC);
    let r = Run {
        program: &prog,
        ship: true,
        argv: &["reader"],
        stdout: Some(stdout),
        image: None,
        stdin: None,
        interval: None,
    };
    let out = dir.path().join("output.txt");
    let during = move |ctl: JobControl| -> VacateFut {
        Box::pin(async move {
            while std::fs::read(&out).map_or(0, |b| b.len()) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let o = ctl
                .vacate("the owner is back", Duration::ZERO)
                .await
                .expect("an outcome");
            vec![o]
        })
    };
    let (status, outcomes) = run(b, dir.path(), r, during).await;
    assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
    let CkptOutcome::Failed(why) = &outcomes[0] else {
        panic!("expected an abandoned checkpoint, got {outcomes:?}");
    };
    assert!(
        why.contains("max_vacate_time (0 s)") && why.contains("job killed"),
        "{why}"
    );
    let s = store.lock().unwrap();
    assert!(s.image.is_none(), "no image may be committed");
    assert!(s.aborts.iter().any(|a| a == why), "{:?}", s.aborts);
    assert!(
        read(dir.path(), "output.txt").lines().count() < 600,
        "the job was killed before it finished"
    );
}
