//! `roost pool up` with stand-in daemons (shell scripts in ROOST_BIN_DIR):
//! a daemon that dies or a pool that never gets ready is reported with its
//! log, and what was started is stopped again.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const SLEEPER: &str = "#!/bin/sh\necho \"$0 up\" >&2\nexec sleep 60\n";

fn bin_dir(root: &Path, schedd: &str) -> std::path::PathBuf {
    let bins = root.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for (name, text) in [
        ("roost-matchmaker", SLEEPER),
        ("roost-schedd", schedd),
        ("roost-ownerd", SLEEPER),
        ("roost-starter", ""),
        ("libroost_shim.so", ""),
    ] {
        let p = bins.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bins
}

fn pool_up(root: &Path, bins: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["pool", "up", "--dir"])
        .arg(root.join("pool"))
        .args(extra)
        .env("ROOST_BIN_DIR", bins)
        .env_remove("ROOST_POOL")
        .output()
        .unwrap()
}

/// Whether `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next());
            state == Some(Some('Z'))
        }
    }
}

fn wait_ended(pid: &str) -> bool {
    for _ in 0..50 {
        if ended(pid) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

#[test]
fn a_daemon_that_dies_is_shown_with_its_log_and_the_rest_is_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let bins = bin_dir(
        tmp.path(),
        "#!/bin/sh\necho 'Error: cannot bind 127.0.0.1:9: Address in use' >&2\nexit 3\n",
    );
    let out = pool_up(tmp.path(), &bins, &["--hosts", "1", "--timeout", "20"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        out.stdout.is_empty(),
        "an export line although the pool is not up"
    );
    assert!(
        err.contains("the daemons this command started were stopped")
            && err.contains(
                "submit (roost-schedd) exited (exit status: 3) while the pool was starting"
            )
            && err.contains("  | Error: cannot bind 127.0.0.1:9: Address in use"),
        "{err}"
    );
    let pool = tmp.path().join("pool");
    for pid_file in ["cm/matchmaker.pid", "exec1/ownerd.pid"] {
        let pid = std::fs::read_to_string(pool.join(pid_file)).unwrap();
        assert!(wait_ended(&pid), "{pid_file}: pid {pid} still runs");
    }
    // The log got a header line for this start and the daemon's own words.
    let log = std::fs::read_to_string(pool.join("submit/schedd.log")).unwrap();
    assert!(
        log.starts_with("--- roost pool up: roost-schedd starts at "),
        "{log}"
    );
}

#[test]
fn a_pool_that_never_gets_ready_times_out_naming_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let bins = bin_dir(tmp.path(), SLEEPER);
    let t = std::time::Instant::now();
    let out = pool_up(tmp.path(), &bins, &["--timeout", "1"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(t.elapsed().as_secs() < 15, "took {:?}", t.elapsed());
    let pool = tmp.path().join("pool");
    assert!(err.contains("not ready after 1 s"), "{err}");
    assert!(
        err.contains(&format!(
            "the schedd does not answer on {}",
            pool.join("submit/schedd.sock").display()
        )),
        "{err}"
    );
    assert!(
        err.contains("the matchmaker has not heard from exec2"),
        "{err}"
    );
    assert!(
        err.contains("roost-ownerd up"),
        "the ownerd's log is not shown: {err}"
    );
    for pid_file in [
        "cm/matchmaker.pid",
        "submit/schedd.pid",
        "exec1/ownerd.pid",
        "exec2/ownerd.pid",
    ] {
        let pid = std::fs::read_to_string(pool.join(pid_file)).unwrap();
        assert!(wait_ended(&pid), "{pid_file}: pid {pid} still runs");
    }
    // Idle hosts: the activity files are as old as they can be.
    let m = std::fs::metadata(pool.join("exec1/activity"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(m, std::time::SystemTime::UNIX_EPOCH);
}
