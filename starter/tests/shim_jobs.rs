//! Real programs as jobs under the real shim (`libroost_shim.so`) against a
//! shadow file engine in this process: every file of the job lives in a
//! "submit" directory, the job runs from an empty scratch directory, and
//! each result must be byte-identical to the same program run locally.

mod common;

use common::{Std, read, run_in};
use proto::job::ExitStatus;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

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

/// The shim under test: `$ROOST_SHIM`, or the workspace's debug build.
fn shim() -> Option<PathBuf> {
    let path = std::env::var_os("ROOST_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/libroost_shim.so")
        });
    let ok = path.is_file();
    if ok {
        warn_if_stale(&path);
    }
    prerequisite(
        &format!(
            "{} (build it with `cargo build -p syscall-shim`)",
            path.display()
        ),
        ok,
    )
    .then_some(path)
}

/// Says so when the shim's sources are newer than the shim under test.
fn warn_if_stale(shim: &Path) {
    fn newest(dir: &Path) -> Option<std::time::SystemTime> {
        let mut t = None;
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let m = e.metadata().ok()?;
            let this = if m.is_dir() {
                newest(&e.path())
            } else {
                m.modified().ok()
            };
            t = t.max(this);
        }
        t
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../syscall-shim/src");
    let built = std::fs::metadata(shim).and_then(|m| m.modified()).ok();
    if let (Some(src), Some(built)) = (newest(&src), built)
        && src > built
    {
        eprintln!(
            "WARNING: {} is older than its sources; rebuild it with `cargo build -p syscall-shim`",
            shim.display()
        );
    }
}

fn jobs_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/jobs")
}

/// Compiles `tests/jobs/<source>` once per test run.
fn built(source: &'static str) -> Option<PathBuf> {
    static RAWIO: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static FSJOB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let cell = match source {
        "rawio.c" => &RAWIO,
        "fsjob.rs" => &FSJOB,
        _ => panic!("no recipe for {source}"),
    };
    let r = cell.get_or_init(|| {
        // The job's program is started by `run_job` itself, before any
        // shim, so it may live anywhere on this host.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("starter-jobs");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let stem = source.split('.').next().unwrap();
        let out = dir.join(format!("{stem}.{}.tmp", std::process::id()));
        let src = jobs_src().join(source);
        let (tool, mut cmd) = if source.ends_with(".c") {
            let mut c = Command::new("cc");
            c.args(["-O1", "-Wall", "-o"]).arg(&out).arg(&src);
            ("cc", c)
        } else {
            let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
            let mut c = Command::new(rustc);
            c.args(["-O", "--edition", "2021", "-o"])
                .arg(&out)
                .arg(&src);
            ("rustc", c)
        };
        let o = cmd
            .output()
            .map_err(|e| format!("`{tool}` cannot run: {e}"))?;
        assert!(
            o.status.success(),
            "building {source} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        // Renamed into place: a test run elsewhere may be running the old one.
        let done = dir.join(stem);
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

/// Deterministic text: lines of pseudo-random lowercase words.
fn words(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut s = String::new();
    for i in 0..n {
        for k in 0..(1 + i % 6) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if k > 0 {
                s.push(' ');
            }
            for j in 0..(2 + x % 6) {
                s.push((b'a' + ((x >> (j * 4)) % 9) as u8) as char);
            }
        }
        s.push('\n');
    }
    s.into_bytes()
}

fn binary(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7919) ^ (i >> 5)) as u8).collect()
}

fn csv() -> Vec<u8> {
    let mut s = String::from("name,x,y\n");
    for i in 0..400 {
        s.push_str(&format!(
            "p{i},{},{}.{}\n",
            i * 3 % 17,
            (i * i) % 101,
            i % 10
        ));
    }
    s.into_bytes()
}

/// What a directory holds: relative path → file bytes, or a directory.
fn tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel, None);
                walk(root, &e.path(), out);
            } else if ft.is_symlink() {
                let t = std::fs::read_link(e.path()).unwrap();
                out.insert(rel, Some(format!("-> {}", t.display()).into_bytes()));
            } else {
                out.insert(rel, Some(std::fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn show(b: &Option<Vec<u8>>) -> String {
    match b {
        None => "<dir>".into(),
        Some(b) => {
            let s = String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
            format!("{} bytes: {s:?}", b.len())
        }
    }
}

/// How two versions of one entry differ, for the failure message.
fn difference(
    name: &str,
    local: Option<&Option<Vec<u8>>>,
    job: Option<&Option<Vec<u8>>>,
) -> String {
    let at = match (local, job) {
        (Some(Some(l)), Some(Some(j))) => {
            let i = l.iter().zip(j.iter()).take_while(|(a, b)| a == b).count();
            format!(" (first difference at byte {i})")
        }
        _ => String::new(),
    };
    format!(
        "{name}{at}:\n  local: {}\n  job:   {}",
        local.map(show).unwrap_or("<missing>".into()),
        job.map(show).unwrap_or("<missing>".into())
    )
}

/// Runs `argv` locally in a copy of `files` and as a job on `files` in a
/// submit directory; asserts the same exit status and the same directory
/// contents, byte for byte (stdout/stderr are files there).
async fn same_as_local(files: &[(&str, Vec<u8>)], argv: &[&str], std: Std<'_>) {
    let Some(shim) = shim() else { return };
    let base = common::submit_dir();
    let (local, submit) = (base.path().join("local"), base.path().join("submit"));
    for dir in [&local, &submit] {
        std::fs::create_dir(dir).unwrap();
        for (name, data) in files {
            std::fs::write(dir.join(name), data).unwrap();
        }
    }

    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&local)
        .env_clear()
        .env("PATH", DEFAULT_PATH);
    let file = |name: Option<&str>, create: bool| match name {
        None => Stdio::null(),
        Some(n) if create => std::fs::File::create(local.join(n)).unwrap().into(),
        Some(n) => std::fs::File::open(local.join(n)).unwrap().into(),
    };
    cmd.stdin(file(std.input, false))
        .stdout(file(std.output, true))
        .stderr(file(std.error, true));
    let local_status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {argv:?} locally: {e}"));

    let env: Vec<(&str, String)> = std::env::var("ROOST_SHIM_LOG")
        .map(|v| vec![("ROOST_SHIM_LOG", v)])
        .unwrap_or_default();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let ran = run_in(&submit, argv, std, &env, &shim, LIMIT).await;

    let (want, got) = (tree(&local), tree(&submit));
    let mut diffs = Vec::new();
    for name in want
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (want.get(name), got.get(name)) {
            (Some(w), Some(g)) if w == g => {}
            (w, g) => diffs.push(difference(name, w, g)),
        }
    }
    let local_exit = match local_status.code() {
        Some(c) => ExitStatus::Code(c),
        None => ExitStatus::Signal(
            std::os::unix::process::ExitStatusExt::signal(&local_status).unwrap(),
        ),
    };
    assert!(
        diffs.is_empty() && local_exit == ran.status,
        "{argv:?} under the shim differs from the local run\nexit: local {local_exit:?}, job {:?}\n{}",
        ran.status,
        diffs.join("\n")
    );
}

fn std_files() -> Std<'static> {
    Std {
        input: None,
        output: Some("stdout.txt"),
        error: Some("stderr.txt"),
    }
}

#[tokio::test]
async fn c_program_with_raw_calls() {
    let Some(rawio) = built("rawio.c") else {
        return;
    };
    let exe = rawio.to_str().unwrap();
    same_as_local(
        &[("data.bin", binary(300_000))],
        &[exe, "data.bin", "rawio.out"],
        std_files(),
    )
    .await;
}

#[tokio::test]
async fn rust_program_with_std_fs() {
    let Some(fsjob) = built("fsjob.rs") else {
        return;
    };
    let exe = fsjob.to_str().unwrap();
    same_as_local(
        &[("words.txt", words(3000))],
        &[exe, "words.txt", "fsjob.out"],
        std_files(),
    )
    .await;
}

#[tokio::test]
async fn python_reads_csv_and_writes_json() {
    if !prerequisite("/usr/bin/python3", Path::new("/usr/bin/python3").is_file()) {
        return;
    }
    let script = std::fs::read(jobs_src().join("csv2json.py")).unwrap();
    same_as_local(
        &[("csv2json.py", script), ("points.csv", csv())],
        &[
            "/usr/bin/python3",
            "csv2json.py",
            "points.csv",
            "points.json",
        ],
        std_files(),
    )
    .await;
}

#[tokio::test]
async fn sort_a_file() {
    same_as_local(
        &[("words.txt", words(5000))],
        &["/usr/bin/sort", "words.txt"],
        std_files(),
    )
    .await;
}

#[tokio::test]
async fn sort_stdin_into_a_file() {
    let std = Std {
        input: Some("words.txt"),
        ..std_files()
    };
    same_as_local(
        &[("words.txt", words(5000))],
        &["/usr/bin/sort", "-r", "-o", "sorted.txt"],
        std,
    )
    .await;
}

#[tokio::test]
async fn sha256sum_of_two_files() {
    let files = [("words.txt", words(2000)), ("data.bin", binary(200_000))];
    same_as_local(
        &files,
        &["/usr/bin/sha256sum", "words.txt", "data.bin"],
        std_files(),
    )
    .await;
}

#[tokio::test]
async fn gzip_to_stdout() {
    same_as_local(
        &[("data.bin", binary(300_000))],
        &["/bin/gzip", "-c", "-n", "data.bin"],
        std_files(),
    )
    .await;
}

#[tokio::test]
async fn gzip_a_file_in_place() {
    same_as_local(
        &[("words.txt", words(4000))],
        &["/bin/gzip", "-n", "-k", "words.txt"],
        std_files(),
    )
    .await;
}

#[tokio::test]
async fn cp_a_file() {
    same_as_local(
        &[("data.bin", binary(1 << 20))],
        &["/bin/cp", "data.bin", "copy.bin"],
        std_files(),
    )
    .await;
}

#[tokio::test]
async fn sh_script_with_a_pipeline() {
    let script = b"cat in.txt | tr a-z A-Z | sort | uniq -c > out\necho pipeline done\n".to_vec();
    same_as_local(
        &[("pipeline.sh", script), ("in.txt", words(3000))],
        &["/bin/sh", "pipeline.sh"],
        std_files(),
    )
    .await;
}

#[tokio::test]
async fn paths_that_leave_the_job_directory_get_eacces() {
    let Some(shim) = shim() else { return };
    let base = common::submit_dir();
    let (submit, outside) = (base.path().join("submit"), base.path().join("outside"));
    std::fs::create_dir(&submit).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), b"TOP SECRET\n").unwrap();
    std::os::unix::fs::symlink("../outside/secret.txt", submit.join("link")).unwrap();
    // The absolute path: a file of the submit host outside the job's
    // directory and outside the system paths a job reads locally (the
    // user's home; this checkout may itself live under /tmp, which is local).
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let abs =
        std::path::Path::new(&home).join(format!(".roost-starter-secret-{}", std::process::id()));
    std::fs::write(&abs, b"TOP SECRET\n").unwrap();
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _gone = Gone(abs.clone());
    let secret = abs.to_str().unwrap();
    let script = "for p in ../../etc/passwd \"$1\" link; do\n\
                  \x20 if cat \"$p\"; then echo \"$p: read\"; else echo \"$p: refused\"; fi\n\
                  done\n\
                  echo continued > after.txt\n";
    std::fs::write(submit.join("escape.sh"), script).unwrap();
    let ran = run_in(
        &submit,
        &["/bin/sh", "escape.sh", secret],
        std_files(),
        &[],
        &shim,
        LIMIT,
    )
    .await;
    let out = String::from_utf8_lossy(&read(&submit, "stdout.txt")).into_owned();
    let err = String::from_utf8_lossy(&read(&submit, "stderr.txt")).into_owned();
    assert_eq!(
        (ran.status, out.as_str(), err.as_str()),
        (
            ExitStatus::Code(0),
            format!("../../etc/passwd: refused\n{secret}: refused\nlink: refused\n").as_str(),
            format!(
                "cat: ../../etc/passwd: Permission denied\ncat: {secret}: Permission denied\n\
                 cat: link: Permission denied\n"
            )
            .as_str(),
        )
    );
    assert_eq!(read(&submit, "after.txt"), b"continued\n");
}

#[tokio::test]
async fn sh_redirects_files_into_programs() {
    // The shell opens the files; `sort` and `wc` find them at fd 0 after
    // exec and read them as streams.
    let script =
        b"sort -r < in.txt > sorted.txt\nwc -l < in.txt\ncat in.txt in.txt | wc -c >> sorted.txt\n"
            .to_vec();
    same_as_local(
        &[("redirect.sh", script), ("in.txt", words(4000))],
        &["/bin/sh", "redirect.sh"],
        std_files(),
    )
    .await;
}

#[tokio::test]
async fn large_files_through_cp_and_sha256sum() {
    let files = [("big.bin", binary(8 << 20))];
    same_as_local(
        &files,
        &[
            "/bin/sh",
            "-c",
            "cp big.bin big2.bin && sha256sum big.bin big2.bin",
        ],
        std_files(),
    )
    .await;
}

#[tokio::test]
async fn everyday_commands_in_a_script() {
    let script = b"set -e
mkdir -p d/e
cp in.txt d/e/copy.txt
ls d d/e
mv d/e/copy.txt d/moved.txt
ln -s moved.txt d/link.txt
cat d/link.txt | head -3
awk '{ n += NF } END { print n }' in.txt
wc -l -c in.txt d/moved.txt
find d | sort
test -f d/moved.txt && echo exists
test -d d/e && echo dir
rm -r d/e
dd if=in.txt of=part.txt bs=100 count=3 status=none
tail -c 50 in.txt > tail.txt
touch empty
python3 -c 'import os, subprocess; print(sorted(os.listdir(\"d\"))); subprocess.run([\"cat\", \"part.txt\"], check=True)'
"
    .to_vec();
    same_as_local(
        &[("mix.sh", script), ("in.txt", words(2000))],
        &["/bin/sh", "mix.sh"],
        std_files(),
    )
    .await;
}

#[tokio::test]
async fn sed_edits_a_file_in_place() {
    // `sed -i` writes a temporary file next to the original (mkostemp)
    // and renames it over it.
    let files = [("in.txt", words(1000))];
    same_as_local(
        &files,
        &["/bin/sed", "-i", "s/a/A/g", "in.txt"],
        std_files(),
    )
    .await;
}
