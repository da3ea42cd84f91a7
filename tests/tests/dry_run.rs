//! `roost submit --dry-run` and `roost submit` against a real schedd go
//! through one code path: a malformed job file gets the same message and
//! exit status from both, and a good one describes as many jobs as the
//! schedd queues.

use roost_tests::ensure_built;
use std::path::Path;
use std::process::{Command, Output};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A personal pool with one execute host, stopped on drop.
struct PersonalPool {
    /// The test's scratch directory, removed at the end.
    root: std::path::PathBuf,
    dir: std::path::PathBuf,
    roost: std::path::PathBuf,
}

impl Drop for PersonalPool {
    fn drop(&mut self) {
        let _ = Command::new(&self.roost)
            .args(["pool", "down", "--grace", "2", "--dir"])
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn roost(pool: &PersonalPool, cwd: &Path, args: &[&str]) -> Output {
    Command::new(&pool.roost)
        .current_dir(cwd)
        .env("ROOST_POOL", &pool.dir)
        .env_remove("ROOST_SCHEDD_SOCK")
        .env_remove("ROOST_MATCHMAKER")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_bad_job_file_gets_the_same_message_from_the_dry_run_and_the_schedd() {
    let bin = ensure_built();
    let dir = std::env::temp_dir().join(format!("roost-dry-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pool = PersonalPool {
        root: dir.clone(),
        dir: dir.join("pool"),
        roost: bin.join("roost"),
    };
    let up = Command::new(&pool.roost)
        .args(["pool", "up", "--hosts", "1", "--dir"])
        .arg(&pool.dir)
        .env("ROOST_BIN_DIR", &bin)
        .output()
        .unwrap();
    assert!(up.status.success(), "pool up: {}", text(&up.stderr));
    let jobs = dir.join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();

    let bad = [
        (
            "unknown.toml",
            "executable = \"/bin/echo\"\nouptut = \"x\"\n",
        ),
        (
            "expr.toml",
            "executable = \"/bin/echo\"\nrequirements = \"Memory >= \"\n",
        ),
        ("missing.toml", "arguments = [\"x\"]\n"),
        (
            "macro.toml",
            "executable = \"/bin/echo\"\noutput = \"o.$(Nope)\"\n",
        ),
        ("syntax.toml", "executable = \n"),
        (
            "outside.sub",
            "executable = /bin/echo\noutput = ../out.txt\nqueue\n",
        ),
        ("zero.sub", "executable = /bin/echo\nqueue 0\n"),
        (
            "twice.sub",
            "executable = /bin/echo\nqueue 2\narguments = b\nqueue 1\n",
        ),
    ];
    for (name, body) in bad {
        std::fs::write(jobs.join(name), body).unwrap();
        let real = roost(&pool, &jobs, &["submit", name]);
        let dry = roost(&pool, &jobs, &["submit", "--dry-run", name]);
        assert_eq!(
            real.status.code(),
            Some(1),
            "{name}: {}",
            text(&real.stderr)
        );
        assert_eq!(dry.status.code(), Some(1), "{name}: {}", text(&dry.stderr));
        assert!(real.stdout.is_empty() && dry.stdout.is_empty(), "{name}");
        assert_eq!(text(&dry.stderr), text(&real.stderr), "{name}");
        assert!(
            text(&real.stderr).starts_with(&format!("roost: {name}")),
            "{name}: {}",
            text(&real.stderr)
        );
    }
    // A file that cannot be read: the same message too.
    let real = roost(&pool, &jobs, &["submit", "absent.toml"]);
    let dry = roost(&pool, &jobs, &["submit", "--dry-run", "absent.toml"]);
    assert_eq!(text(&dry.stderr), text(&real.stderr));
    assert_eq!(
        text(&real.stderr),
        "roost: cannot read the job file absent.toml: No such file or directory (os error 2)\n"
    );
    // Nothing was queued by any of them.
    let q = roost(&pool, &jobs, &["q", "--all", "--json"]);
    assert_eq!(text(&q.stdout).trim(), "[]", "{}", text(&q.stderr));

    // A good file: the dry run lists the jobs the schedd then queues.
    std::fs::write(
        jobs.join("good.sub"),
        "executable = /bin/echo\narguments = $(x)\nqueue x in (a, b, c)\n",
    )
    .unwrap();
    let dry = roost(&pool, &jobs, &["submit", "--dry-run", "good.sub"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry.stderr));
    let listing = text(&dry.stdout);
    assert!(
        listing.ends_with("3 jobs (not submitted; the schedd numbers the cluster)\n"),
        "{listing}"
    );
    for (i, arg) in ["a", "b", "c"].iter().enumerate() {
        assert!(listing.contains(&format!("job 0.{i}\n")), "{listing}");
        assert!(
            listing.contains(&format!("  arguments   {arg}\n")),
            "{listing}"
        );
    }
    let real = roost(&pool, &jobs, &["submit", "good.sub"]);
    assert_eq!(
        text(&real.stdout),
        "1.0\n1.1\n1.2\n",
        "{}",
        text(&real.stderr)
    );
}
