//! Every code block in docs/admin-guide.md and docs/user-guide.md is run.
//!
//! A guide's blocks run in order in a fresh scratch directory (which is
//! also `$HOME`), with this build's programs first on `PATH`. A fenced
//! block's info string says what it is:
//!
//! - ```` ```sh ```` : run with bash (`set -euo pipefail`) in the directory
//!   and with the exported variables the previous `sh` block left, as if
//!   typed into one shell; it must exit 0 (or `exit=N`).
//! - `file=NAME` (any language): the block is written to NAME first.
//! - `check=submit` / `check=refused`: `roost submit --dry-run NAME` must
//!   exit 0 / exit 1 (a refused file; `expect="TEXT"` must be in the
//!   message).
//! - `check=policy` / `check=policy-refused`: `roost-ownerd --check-policy
//!   NAME` must exit 0 / exit 1 (with `expect="TEXT"` in its message).
//! - `check=config:PROGRAM`: `PROGRAM --config NAME --help` must accept
//!   the file (its keys and values).
//! - `norun="why"`: not run, with the reason; every other block runs.
//!
//! Processes a guide starts in the background write their pid to a
//! `*.pid` file in the scratch directory; they and any pool the guide
//! started (a directory with `pool.toml`) are stopped at the end, also
//! when a block fails.

use roost_tests::{ensure_built, require, workspace};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One fenced code block.
#[derive(Debug)]
struct Block {
    /// Line of the opening fence (1-based).
    line: usize,
    lang: String,
    attrs: BTreeMap<String, String>,
    body: String,
}

/// `key=value` and `key="value with spaces"` words after the language.
fn attrs(info: &str) -> (String, BTreeMap<String, String>) {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in info.trim().chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut it = words.into_iter();
    let lang = it.next().unwrap_or_default();
    let map = it
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (w, String::new()),
        })
        .collect();
    (lang, map)
}

fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in md.lines().enumerate() {
        match &mut open {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    let (lang, attrs) = attrs(info);
                    open = Some(Block {
                        line: i + 1,
                        lang,
                        attrs,
                        body: String::new(),
                    });
                }
            }
            Some(b) => {
                if line.trim_end() == "```" {
                    out.extend(open.take());
                } else {
                    b.body.push_str(line);
                    b.body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "an unclosed code block");
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Stops what a guide left running in `dir`.
struct Cleanup {
    dir: PathBuf,
    bin: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut dirs = vec![self.dir.clone()];
        while let Some(d) = dirs.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    if p.join("pool.toml").is_file() {
                        let _ = Command::new(self.bin.join("roost"))
                            .args(["pool", "down", "--grace", "2", "--dir"])
                            .arg(&p)
                            .output();
                    }
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "pid") {
                    let pid = std::fs::read_to_string(&p)
                        .ok()
                        .and_then(|t| t.trim().parse::<i32>().ok());
                    if let Some(pid) = pid.filter(|p| *p > 1) {
                        // SAFETY: kill has no memory preconditions; the pid is
                        // one the guide started and wrote down.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

/// Runs every block of `guide` (a path under the workspace); returns how
/// many blocks ran and how many were marked `norun`.
fn run_guide(guide: &str) -> (usize, usize) {
    let bin = ensure_built();
    let md = std::fs::read_to_string(workspace().join(guide)).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "roost-guide-{}-{}",
        std::process::id(),
        guide.replace('/', "-")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup {
        dir: dir.clone(),
        bin: bin.clone(),
    };
    let env_file = dir.join(".guide-env");
    let cwd_file = dir.join(".guide-cwd");
    std::fs::write(&cwd_file, dir.display().to_string()).unwrap();
    std::fs::write(&env_file, "").unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (mut ran, mut skipped) = (0, 0);
    let here = |b: &Block| format!("{guide}:{} (```{})", b.line, b.lang);
    let cmd = |program: &Path| {
        let mut c = Command::new(program);
        c.current_dir(&dir)
            .env("HOME", &dir)
            .env("PATH", &path)
            .env("ROOST_BIN_DIR", &bin)
            .env_remove("ROOST_POOL")
            .env_remove("ROOST_SCHEDD_SOCK")
            .env_remove("ROOST_MATCHMAKER");
        c
    };
    let show = |o: &Output| {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            o.status.code(),
            text(&o.stdout),
            text(&o.stderr)
        )
    };
    for b in blocks(&md) {
        if let Some(why) = b.attrs.get("norun") {
            assert!(!why.trim().is_empty(), "{}: norun needs a reason", here(&b));
            skipped += 1;
            continue;
        }
        let mut did = false;
        if let Some(name) = b.attrs.get("file") {
            let f = dir.join(name);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, &b.body).unwrap();
            did = true;
        }
        let check = b.attrs.get("check").map(String::as_str);
        let file = || {
            b.attrs
                .get("file")
                .unwrap_or_else(|| panic!("{}: check= needs file=", here(&b)))
                .clone()
        };
        match (b.lang.as_str(), check) {
            ("sh", None) => {
                let script = format!(
                    "set -a; source {env}; set +a; cd \"$(cat {cwd})\"; set -euo pipefail\n{body}\n\
                     export -p > {env}; pwd > {cwd}\n",
                    env = env_file.display(),
                    cwd = cwd_file.display(),
                    body = b.body
                );
                // Output goes to files, not pipes: a daemon the block starts
                // in the background would hold a pipe open.
                let (out, err) = (dir.join(".guide-out"), dir.join(".guide-err"));
                let status = cmd(Path::new("timeout"))
                    .args(["300", "bash", "-c", &script])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::fs::File::create(&out).unwrap())
                    .stderr(std::fs::File::create(&err).unwrap())
                    .status()
                    .unwrap();
                let o = Output {
                    status,
                    stdout: std::fs::read(&out).unwrap(),
                    stderr: std::fs::read(&err).unwrap(),
                };
                let want: i32 = b.attrs.get("exit").map_or(0, |e| e.parse().unwrap());
                assert_eq!(
                    o.status.code(),
                    Some(want),
                    "{} failed:\n{}\n{}",
                    here(&b),
                    b.body,
                    show(&o)
                );
                if let Some(expect) = b.attrs.get("expect") {
                    let all = text(&o.stdout) + &text(&o.stderr);
                    assert!(
                        all.contains(expect.as_str()),
                        "{}: no {expect:?} in\n{}",
                        here(&b),
                        show(&o)
                    );
                }
            }
            (_, Some("submit" | "refused")) => {
                let o = cmd(&bin.join("roost"))
                    .args(["submit", "--dry-run", &file()])
                    .output()
                    .unwrap();
                let want = if check == Some("submit") { 0 } else { 1 };
                assert_eq!(o.status.code(), Some(want), "{}:\n{}", here(&b), show(&o));
                if let Some(expect) = b.attrs.get("expect") {
                    assert!(
                        text(&o.stderr).contains(expect.as_str()),
                        "{}: no {expect:?} in\n{}",
                        here(&b),
                        show(&o)
                    );
                }
            }
            (_, Some(c @ ("policy" | "policy-refused"))) => {
                let o = cmd(&bin.join("roost-ownerd"))
                    .args(["--check-policy", &file(), "--devices", "false"])
                    .output()
                    .unwrap();
                let want = if c == "policy" { 0 } else { 1 };
                assert_eq!(o.status.code(), Some(want), "{}:\n{}", here(&b), show(&o));
                if let Some(expect) = b.attrs.get("expect") {
                    assert!(
                        text(&o.stderr).contains(expect.as_str()),
                        "{}: no {expect:?} in\n{}",
                        here(&b),
                        show(&o)
                    );
                }
            }
            (_, Some(c)) if c.starts_with("config:") => {
                let program = &c["config:".len()..];
                let o = cmd(&bin.join(program))
                    .args(["--config", &file(), "--help"])
                    .output()
                    .unwrap();
                assert_eq!(o.status.code(), Some(0), "{}:\n{}", here(&b), show(&o));
            }
            (_, Some(c)) => panic!("{}: unknown check={c}", here(&b)),
            (_, None) => assert!(
                did,
                "{}: a block must run, write a file, or say norun=\"why\"",
                here(&b)
            ),
        }
        ran += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{guide}: {ran} blocks run, {skipped} not run");
    (ran, skipped)
}

#[test]
fn block_info_strings_are_parsed() {
    let b = blocks(
        "x\n```toml file=job.toml check=refused expect=\"unknown key 'x'\"\nx = 1\n```\n\n```sh\necho hi\n```\n",
    );
    assert_eq!(b.len(), 2);
    assert_eq!((b[0].line, b[0].lang.as_str()), (2, "toml"));
    assert_eq!(b[0].attrs["expect"], "unknown key 'x'");
    assert_eq!(b[0].attrs["check"], "refused");
    assert_eq!(b[0].body, "x = 1\n");
    assert_eq!(
        (b[1].lang.as_str(), b[1].body.as_str()),
        ("sh", "echo hi\n")
    );
}

#[test]
fn the_admin_guide_runs() {
    require(
        "openssl",
        Command::new("openssl").arg("version").output().is_ok(),
    );
    let (ran, skipped) = run_guide("docs/admin-guide.md");
    assert!(
        ran >= 10 && skipped <= ran / 2,
        "ran {ran}, not run {skipped}"
    );
}

#[test]
fn the_user_guide_runs() {
    let (ran, skipped) = run_guide("docs/user-guide.md");
    assert!(
        ran >= 10 && skipped <= ran / 2,
        "ran {ran}, not run {skipped}"
    );
}

/// The user's guide has a row for every key a job file may hold: the keys
/// are the ones `roost submit` lists when it meets an unknown one.
#[test]
fn the_user_guide_lists_every_job_file_key() {
    let bin = ensure_built();
    let dir = std::env::temp_dir().join(format!("roost-guide-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("k.toml"),
        "executable = \"/bin/true\"\nnot_a_key = 1\n",
    )
    .unwrap();
    let o = Command::new(bin.join("roost"))
        .current_dir(&dir)
        .args(["submit", "--dry-run", "k.toml"])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let msg = text(&o.stderr);
    let keys = msg
        .split_once("(expected one of: ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(list, _)| list.split(", ").map(str::to_string).collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("no key list in {msg:?}"));
    assert!(keys.len() > 10, "{keys:?}");
    let guide = std::fs::read_to_string(workspace().join("docs/user-guide.md")).unwrap();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| {
            let k = if *k == "attributes" {
                "[attributes]"
            } else {
                k.as_str()
            };
            !guide
                .lines()
                .any(|l| l.starts_with('|') && l.contains(&format!("`{k}`")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/user-guide.md has no table row for {missing:?}"
    );
}

/// The README links both guides.
#[test]
fn the_readme_links_the_guides() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    assert!(
        readme.contains("(docs/admin-guide.md)"),
        "README lacks the admin guide"
    );
    assert!(
        readme.contains("(docs/user-guide.md)"),
        "README lacks the user guide"
    );
}
