//! The execute host's sandbox against hostile jobs: static programs that
//! bypass the shim with raw system calls can't read the owner's files,
//! write outside their scratch directory, trace, mount, make namespaces or
//! reach the host's loopback; a double-forked daemon does not outlive its
//! job; a fork bomb and a disk filler stop at their limits and the next job
//! runs; and a job keeps its pid (2, under our init) across a migration.

use roost_tests::{FAST_POLICY, Pool, build_job, require, workspace};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Compiles `tests/jobs/NAME.c` statically (no shim can be preloaded into
/// it), once per test process.
fn build_static(name: &str) -> PathBuf {
    let out_dir = std::env::temp_dir().join(format!("roost-static-jobs-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(name);
    if out.exists() {
        return out;
    }
    require(
        "a C compiler `cc` with a static libc",
        Path::new("/usr/lib/x86_64-linux-gnu/libc.a").exists()
            && Command::new("cc").arg("--version").output().is_ok(),
    );
    let tmp = out_dir.join(format!("{name}.part"));
    let status = Command::new("cc")
        .args(["-static", "-O1", "-Wall", "-o"])
        .arg(&tmp)
        .arg(workspace().join("tests/jobs").join(format!("{name}.c")))
        .status()
        .expect("running cc");
    assert!(status.success(), "building {name} failed");
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// The `key value` lines of a probe's output.
fn lines(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn done(pool: &Pool, id: &str) {
    let j = pool.job(id).expect("job in the queue");
    assert_eq!(
        j["state"],
        "Completed",
        "job {id}: {j}\n{:?}\n{}",
        pool.log(id),
        pool.logs()
    );
    assert_eq!(j["exit"], serde_json::json!({"Code": 0}), "job {id}: {j}");
}

/// Processes of this machine with `marker` in their command line.
fn running_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let c = std::fs::read(e.path().join("cmdline")).ok()?;
            c.windows(marker.len())
                .any(|w| w == marker.as_bytes())
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// The owner's files on the execute host (all hosts share this machine's
/// file system): a private one in `/root` and a world-readable one outside
/// the system's directories. Removed when dropped.
struct OwnerFiles {
    secret: PathBuf,
    public_dir: PathBuf,
}

impl OwnerFiles {
    fn new(tag: &str) -> OwnerFiles {
        use std::os::unix::fs::PermissionsExt;
        let secret = PathBuf::from(format!("/root/roost-secret-{tag}"));
        std::fs::write(&secret, "owner secret\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let public_dir = PathBuf::from(format!("/srv/roost-owner-{tag}"));
        std::fs::create_dir_all(&public_dir).unwrap();
        std::fs::set_permissions(&public_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let public = public_dir.join("notes.txt");
        std::fs::write(&public, "owner notes\n").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        OwnerFiles { secret, public_dir }
    }
}

impl Drop for OwnerFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.secret);
        let _ = std::fs::remove_dir_all(&self.public_dir);
    }
}

#[test]
fn hostile_jobs_are_held_by_the_sandbox() {
    let pool = Pool::start(1);
    let tag = format!("{}-{}", std::process::id(), pool.id);
    let owner = OwnerFiles::new(&tag);
    // A service on the execute host's loopback.
    let listener = pool.in_netns("exec1", || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    let port = listener.local_addr().unwrap().port();

    let dir = pool.job_dir("hostile");
    for name in [
        "hostile_probe",
        "hostile_daemon",
        "hostile_forkbomb",
        "hostile_diskfill",
    ] {
        std::fs::copy(build_static(name), dir.join(name)).unwrap();
    }
    let marker = format!("roost-daemon-{tag}");
    let probe = pool.submit(
        &dir,
        &format!(
            "executable = \"hostile_probe\"\narguments = [{:?}, {:?}, \"{port}\"]\n\
             output = \"probe.out\"\nerror = \"probe.err\"\n\
             requirements = 'HasLandlock && HasSeccomp && LandlockAbi >= 1'\n",
            owner.secret.display().to_string(),
            owner.public_dir.join("notes.txt").display().to_string(),
        ),
    );
    let daemon = pool.submit(
        &dir,
        &format!(
            "executable = \"hostile_daemon\"\narguments = [{marker:?}]\noutput = \"daemon.out\"\n"
        ),
    );
    let bomb = pool.submit(
        &dir,
        "executable = \"hostile_forkbomb\"\noutput = \"bomb.out\"\n",
    );
    let fill = pool.submit(
        &dir,
        "executable = \"hostile_diskfill\"\noutput = \"fill.out\"\nrequest_disk = 16\n",
    );
    let all: Vec<String> = [&probe, &daemon, &bomb, &fill]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    assert_eq!(
        pool.wait(&all, Duration::from_secs(180)),
        0,
        "{:?}\n{}",
        pool.queue(),
        pool.logs()
    );
    for id in &all {
        done(&pool, id);
    }

    // Raw system calls: the owner's files stay unread, nothing is written
    // outside scratch, the dangerous calls are refused, no network.
    let out = std::fs::read_to_string(dir.join("probe.out")).unwrap();
    println!("probe:\n{out}");
    let got = lines(&out);
    let want = [
        ("pid", "2"),
        ("read-secret", "ENOENT"),
        ("read-public", "EACCES"),
        ("read-system", "OK"),
        ("write-scratch", "OK"),
        ("ptrace", "EPERM"),
        ("unshare", "EPERM"),
        ("mount", "EPERM"),
        ("connect", "ENETUNREACH"),
        ("seccomp", "2"),
        ("no-new-privs", "1"),
    ];
    for (k, v) in want {
        let g = got.get(k).map(String::as_str).unwrap_or("(missing)");
        assert!(
            g == v || (v == "OK" && g.starts_with("OK")),
            "{k}: {g}, want {v}\n{out}"
        );
    }
    for k in ["write-etc", "write-var-tmp"] {
        let g = &got[k];
        assert!(g == "EACCES" || g == "EROFS", "{k}: {g}\n{out}");
    }
    assert_ne!(got["uid"], "0", "the job runs as root\n{out}");
    assert!(!got["read-secret"].contains("owner"), "{out}");
    assert!(!Path::new("/etc/roost-hostile-probe").exists());
    assert!(!Path::new("/var/tmp/roost-hostile-probe").exists());
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the job reached the host's loopback service"
    );

    // The daemon ran, and is gone with its job.
    assert_eq!(
        std::fs::read_to_string(dir.join("daemon.out")).unwrap(),
        "daemon started\n"
    );
    assert_eq!(
        running_with(&marker),
        Vec::<String>::new(),
        "the job's daemon survived its job"
    );

    // The fork bomb hit the process limit.
    let bombed = std::fs::read_to_string(dir.join("bomb.out")).unwrap();
    println!("fork bomb: {bombed}");
    let n: u64 = bombed
        .strip_prefix("fork refused after ")
        .and_then(|r| r.strip_suffix(" forks: EAGAIN\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("fork bomb said {bombed:?}"));
    assert!(n < 256, "{n} forks before the limit");

    // The disk filler stopped at its 16 MiB quota.
    let filled = std::fs::read_to_string(dir.join("fill.out")).unwrap();
    println!("disk filler: {filled}");
    let (bytes, why) = filled
        .strip_prefix("wrote ")
        .and_then(|r| r.trim_end().split_once(" bytes, then "))
        .unwrap_or_else(|| panic!("disk filler said {filled:?}"));
    let bytes: u64 = bytes.parse().unwrap();
    assert!(why == "ENOSPC" || why == "EFBIG", "{filled}");
    assert!(
        (15 << 20..=16 << 20).contains(&bytes),
        "wrote {bytes} bytes with a 16 MiB quota"
    );

    // A job vacated (here by a hold) while its daemon runs: nothing of
    // it is left once the hold is recorded (after the starter reported
    // the job's end).
    let stay = format!("roost-staying-daemon-{tag}");
    let staying = pool.submit(
        &dir,
        &format!(
            "executable = \"hostile_daemon\"\narguments = [{stay:?}, \"stay\"]\noutput = \"stay.out\"\n"
        ),
    );
    pool.wait_event(&staying[0], "executing", 1, Duration::from_secs(60));
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while running_with(&stay).len() < 2 {
        assert!(
            std::time::Instant::now() < until,
            "the staying job and its daemon never ran: {:?}",
            pool.log(&staying[0])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = pool.roost(&["hold", &staying[0]]);
    assert!(out.status.success(), "{out:?}");
    pool.wait_event(&staying[0], "held", 1, Duration::from_secs(90));
    assert_eq!(
        running_with(&stay),
        Vec::<String>::new(),
        "the vacated job's processes survived"
    );

    // The ownerd stays healthy: the next job runs.
    let next = pool.submit(
        &dir,
        "executable = \"/bin/echo\"\narguments = [\"still\", \"serving\"]\noutput = \"next.out\"\n",
    );
    assert_eq!(
        pool.wait(&next, Duration::from_secs(60)),
        0,
        "{}",
        pool.logs()
    );
    done(&pool, &next[0]);
    assert_eq!(
        std::fs::read_to_string(dir.join("next.out")).unwrap(),
        "still serving\n"
    );
}

#[test]
fn a_job_keeps_its_pid_across_a_migration() {
    let pool = Pool::start_with_policy(2, Some(FAST_POLICY));
    let dir = pool.job_dir("pid");
    std::fs::copy(build_job("sandbox_pid.c"), dir.join("sandbox_pid")).unwrap();
    let ids = pool.submit(
        &dir,
        "executable = \"sandbox_pid\"\narguments = [\"80\"]\noutput = \"stdout.txt\"\nerror = \"stderr.txt\"\n",
    );
    let id = &ids[0];
    let first = pool.wait_event(id, "executing", 1, Duration::from_secs(60));
    let host = first["host"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                pool.touch(&host);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        pool.wait_event(id, "vacated", 1, Duration::from_secs(90));
        let ok = pool.wait(&ids, Duration::from_secs(180));
        stop.store(true, Ordering::SeqCst);
        assert_eq!(ok, 0, "{:?}\n{}", pool.log(id), pool.logs());
    });
    done(&pool, id);
    let hosts: Vec<String> = pool
        .log(id)
        .into_iter()
        .filter(|e| e["event"] == "executing")
        .filter_map(|e| e["host"].as_str().map(str::to_string))
        .collect();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert_ne!(hosts[0], hosts[1], "the job must resume on another host");
    assert!(
        pool.log(id).iter().any(|e| e["event"] == "checkpointed"),
        "{:?}",
        pool.log(id)
    );
    let out = std::fs::read_to_string(dir.join("stdout.txt")).unwrap();
    let pids: Vec<&str> = out.lines().filter(|l| l.starts_with("pid ")).collect();
    assert_eq!(pids, ["pid 2", "pid 2"], "{out}");
    let steps = out.lines().filter(|l| l.starts_with("step ")).count();
    assert_eq!(steps, 80, "{out}");
}
