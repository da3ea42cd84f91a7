//! End to end: jobs run on an execute host while every byte they read or
//! write lives on the submit host; bad input and a killed schedd lose nothing.

use roost_tests::{Pool, build_job, copy_dir, job_id, run_local, workspace};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Deterministic text: `n` lines of pseudo-random lowercase words.
fn words(n: usize) -> String {
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut s = String::new();
    for i in 0..n {
        let mut line = String::new();
        for _ in 0..(1 + i % 5) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 2 + (x % 7) as usize;
            for k in 0..len {
                line.push((b'a' + ((x >> (k * 5)) % 8) as u8) as char);
            }
            line.push(' ');
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

fn binary(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7919) ^ (i >> 3)) as u8).collect()
}

/// A job directory with the inputs every test job reads.
fn populate(dir: &Path) {
    std::fs::write(dir.join("words.txt"), words(5000)).unwrap();
    std::fs::write(dir.join("data.bin"), binary(300_000)).unwrap();
    let mut csv = String::from("name,x,y\n");
    for i in 0..500 {
        csv.push_str(&format!("p{i},{},{}\n", i * 3 % 17, (i * i) % 101));
    }
    std::fs::write(dir.join("points.csv"), csv).unwrap();
    std::fs::write(
        dir.join("pipeline.sh"),
        "#!/bin/sh\ncat words.txt | tr a-z A-Z | sort | uniq -c > out.txt\necho pipeline done\n",
    )
    .unwrap();
    std::fs::set_permissions(
        dir.join("pipeline.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
}

struct Case {
    name: &'static str,
    executable: String,
    args: Vec<String>,
    /// Files the job writes, compared with the local run.
    outputs: Vec<&'static str>,
    stdin: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    let jobs = workspace().join("tests/jobs");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let rawio = build_job("rawio.c");
    let fsjob = build_job("fsjob.rs");
    vec![
        Case {
            name: "sort",
            executable: "/usr/bin/sort".into(),
            args: s(&["words.txt"]),
            outputs: vec![],
            stdin: None,
        },
        Case {
            name: "sort-stdin",
            executable: "/usr/bin/sort".into(),
            args: s(&["-r"]),
            outputs: vec![],
            stdin: Some("words.txt"),
        },
        Case {
            name: "sha256sum",
            executable: "/usr/bin/sha256sum".into(),
            args: s(&["words.txt", "data.bin"]),
            outputs: vec![],
            stdin: None,
        },
        Case {
            name: "gzip",
            executable: "/bin/gzip".into(),
            args: s(&["-c", "-n", "data.bin"]),
            outputs: vec![],
            stdin: None,
        },
        Case {
            name: "cp",
            executable: "/bin/cp".into(),
            args: s(&["data.bin", "copy.bin"]),
            outputs: vec!["copy.bin"],
            stdin: None,
        },
        Case {
            name: "pipeline",
            executable: "pipeline.sh".into(),
            args: vec![],
            outputs: vec!["out.txt"],
            stdin: None,
        },
        Case {
            name: "python",
            executable: "/usr/bin/python3".into(),
            args: s(&["csv2json.py", "points.csv", "points.json"]),
            outputs: vec!["points.json"],
            stdin: None,
        },
        Case {
            name: "rawio",
            executable: rawio.display().to_string(),
            args: s(&["data.bin", "rawio.out"]),
            outputs: vec!["rawio.out"],
            stdin: None,
        },
        Case {
            name: "fsjob",
            executable: fsjob.display().to_string(),
            args: s(&["words.txt", "fsjob.out"]),
            outputs: vec!["fsjob.out"],
            stdin: None,
        },
    ]
    .into_iter()
    .map(|mut c| {
        // Compiled test jobs are shipped from the job directory like a user's own program.
        if c.executable.starts_with('/')
            && !c.executable.starts_with("/usr")
            && !c.executable.starts_with("/bin")
        {
            c.executable = Path::new(&c.executable)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
        }
        let _ = &jobs;
        c
    })
    .collect()
}

fn toml_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[test]
fn real_programs_run_remotely_with_identical_output() {
    let pool = Pool::start(2);
    let cases = cases();
    let mut submitted = vec![];
    for c in &cases {
        let dir = pool.job_dir(c.name);
        populate(&dir);
        std::fs::copy(
            workspace().join("tests/jobs/csv2json.py"),
            dir.join("csv2json.py"),
        )
        .unwrap();
        for j in ["rawio.c", "fsjob.rs"] {
            let b = build_job(j);
            std::fs::copy(&b, dir.join(b.file_name().unwrap())).unwrap();
        }
        // The same program, run here without roost, is the reference.
        let local =
            std::env::temp_dir().join(format!("roost-local-{}-{}", std::process::id(), c.name));
        let _ = std::fs::remove_dir_all(&local);
        copy_dir(&dir, &local);
        let exe = if c.executable.starts_with('/') {
            c.executable.clone()
        } else {
            local.join(&c.executable).display().to_string()
        };
        let mut argv = vec![exe.as_str()];
        argv.extend(c.args.iter().map(String::as_str));
        let reference = run_local(&local, &argv, c.stdin.map(|s| local.join(s)).as_deref());
        assert!(
            reference.status.success(),
            "{} fails locally: {}",
            c.name,
            String::from_utf8_lossy(&reference.stderr)
        );

        let mut job = format!(
            "executable = {:?}\narguments = {}\noutput = \"stdout.txt\"\nerror = \"stderr.txt\"\n",
            c.executable,
            toml_list(&c.args)
        );
        if let Some(i) = c.stdin {
            job.push_str(&format!("input = {i:?}\n"));
        }
        let ids = pool.submit(&dir, &job);
        assert_eq!(ids.len(), 1, "one job per submit: {ids:?}");
        submitted.push((c, dir, local, reference, ids[0].clone()));
    }
    let all: Vec<String> = submitted.iter().map(|s| s.4.clone()).collect();
    let rc = pool.wait(&all, Duration::from_secs(240));
    let mut failures = vec![];
    for (c, dir, local, reference, id) in &submitted {
        let q = pool
            .job(id)
            .unwrap_or_else(|| panic!("job {id} missing from the queue"));
        let stdout = std::fs::read(dir.join("stdout.txt")).unwrap_or_default();
        let stderr =
            String::from_utf8_lossy(&std::fs::read(dir.join("stderr.txt")).unwrap_or_default())
                .to_string();
        if q["state"] != "Completed" || q["exit"] != serde_json::json!({"Code": 0}) {
            failures.push(format!(
                "{}: job {id} ended {} exit {} stderr: {stderr}",
                c.name, q["state"], q["exit"]
            ));
            continue;
        }
        if stdout != reference.stdout {
            failures.push(format!(
                "{}: stdout differs ({} bytes remote, {} local)\nremote: {:?}\nlocal: {:?}",
                c.name,
                stdout.len(),
                reference.stdout.len(),
                String::from_utf8_lossy(&stdout[..stdout.len().min(200)]),
                String::from_utf8_lossy(&reference.stdout[..reference.stdout.len().min(200)])
            ));
        }
        for o in &c.outputs {
            let r = std::fs::read(dir.join(o)).unwrap_or_default();
            let l = std::fs::read(local.join(o)).unwrap();
            if r != l {
                failures.push(format!(
                    "{}: {o} differs ({} bytes remote, {} local)",
                    c.name,
                    r.len(),
                    l.len()
                ));
            }
        }
        let events = pool.log(id);
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
        let host = events
            .iter()
            .find(|e| e["event"] == "executing")
            .and_then(|e| e["host"].as_str())
            .unwrap_or("");
        if !host.starts_with("exec")
            || !kinds.contains(&"submitted")
            || !kinds.contains(&"completed")
        {
            failures.push(format!(
                "{}: event log {kinds:?} (executing on {host:?})",
                c.name
            ));
        }
        let _ = std::fs::remove_dir_all(local);
    }
    // Nothing of any job is left on the execute hosts.
    for h in ["exec1", "exec2"] {
        let scratch = pool.dir.join(h).join("scratch");
        let left: Vec<_> = std::fs::read_dir(&scratch)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        if !left.is_empty() {
            failures.push(format!("{h}: scratch not cleaned: {left:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "roost wait exited {rc}\n{}\n{}",
        failures.join("\n"),
        pool.logs()
    );
    assert_eq!(rc, 0);
}

#[test]
fn path_escapes_get_eacces_and_the_job_continues() {
    let pool = Pool::start(1);
    let secret_dir = pool.job_dir("secret");
    std::fs::write(secret_dir.join("secret.txt"), "TOP-SECRET-BYTES\n").unwrap();
    let dir = pool.job_dir("escaper");
    std::os::unix::fs::symlink("../secret/secret.txt", dir.join("link.txt")).unwrap();
    std::fs::write(dir.join("mine.txt"), "my own data\n").unwrap();
    // An absolute path on the submit host outside the job's directory (and
    // outside the system paths a job reads locally): the user's home.
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let abs_path = Path::new(&home).join(format!(".roost-test-secret-{}", pool.id));
    std::fs::write(&abs_path, "TOP-SECRET-HOME\n").unwrap();
    let abs = abs_path.display().to_string();
    std::fs::write(
        dir.join("escape.sh"),
        format!(
            "#!/bin/sh\nfor p in ../../etc/passwd ../secret/secret.txt {abs} link.txt; do\n  cat \"$p\" 2>&1 || echo \"refused $p\"\ndone\ncat mine.txt\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.join("escape.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ids = pool.submit(&dir, "executable = \"escape.sh\"\noutput = \"out.txt\"\n");
    assert_eq!(
        pool.wait(&ids, Duration::from_secs(120)),
        0,
        "{}",
        pool.logs()
    );
    let out = std::fs::read_to_string(dir.join("out.txt")).unwrap();
    assert!(
        !out.contains("TOP-SECRET"),
        "the job read a file outside its directory:\n{out}"
    );
    assert!(
        !out.contains("root:x:0"),
        "the job read the submit host's /etc/passwd through ..:\n{out}"
    );
    assert_eq!(
        out.matches("Permission denied").count(),
        4,
        "each escape gets EACCES:\n{out}"
    );
    assert_eq!(out.matches("refused ").count(), 4, "{out}");
    assert!(out.ends_with("my own data\n"), "the job continued:\n{out}");
    let log = std::fs::read_to_string(pool.dir.join("submit/daemon.log")).unwrap();
    assert!(
        log.contains("secret.txt"),
        "the shadow logs the refused path:\n{log}"
    );
}

/// A TLS client with the given identity, for poking at daemons.
async fn tls_connect(
    pool: &Pool,
    pki: &Path,
    who: &str,
    addr: &str,
    server: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let _ = pool;
    let id = proto::tls::Identity::load(pki, who).expect("load identity");
    let s = tokio::net::TcpStream::connect(addr).await?;
    id.connector()
        .connect(proto::tls::server_name(server).unwrap(), s)
        .await
}

fn in_netns<T>(ns: &str, f: impl FnOnce() -> T + Send) -> T
where
    T: Send,
{
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let f0 = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
            // SAFETY: setns on this fresh thread only; the fd is a valid netns file.
            let r =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f0), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {ns}");
            f()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn malformed_frames_and_wrong_certificates_close_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pool = Pool::start(1);
    let pki = pool.dir.join("pki");
    // A certificate from another pool.
    let other = pool.dir.join("other-pki");
    proto::tls::init_ca(&other, "intruders").unwrap();
    proto::tls::issue(&other, "exec1", "ownerd", &[]).unwrap();
    let shadow = pool.shadow_addr();
    let mm = pool.matchmaker_addr();
    let ns = pool.host("exec1").ns.clone();
    in_netns(&ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for addr in [&shadow, &mm] {
                // Plain garbage instead of a TLS handshake.
                let mut s = tokio::net::TcpStream::connect(addr.as_str()).await.unwrap();
                s.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\x01garbage")
                    .await
                    .unwrap();
                let mut b = vec![0u8; 64];
                let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
                    .await
                    .expect("not closed");
                assert!(matches!(n, Ok(_) | Err(_)));
                // A certificate from another CA.
                let r = tls_connect(
                    &pool,
                    &other,
                    "exec1",
                    addr,
                    if addr == &shadow { "submit" } else { "cm" },
                )
                .await;
                if let Ok(mut t) = r {
                    // TLS 1.3: the server's refusal arrives on the first read.
                    let _ = t.write_all(&proto::frame::encode(&1u8).unwrap()).await;
                    let mut b = vec![0u8; 16];
                    let r = tokio::time::timeout(Duration::from_secs(10), t.read(&mut b))
                        .await
                        .expect("not closed");
                    assert!(
                        matches!(r, Ok(0) | Err(_)),
                        "a foreign certificate was served: {r:?}"
                    );
                }
                // A valid certificate, then an oversized frame, then a frame that doesn't decode.
                for bad in [
                    vec![0xff, 0xff, 0xff, 0x7f, 1],
                    vec![4, 0, 0, 0, 1, 0xff, 0xff, 0xff],
                ] {
                    let mut t = tls_connect(
                        &pool,
                        &pki,
                        "exec1",
                        addr,
                        if addr == &shadow { "submit" } else { "cm" },
                    )
                    .await
                    .expect("a pool certificate is accepted");
                    t.write_all(&bad).await.unwrap();
                    t.flush().await.unwrap();
                    let mut b = vec![0u8; 16];
                    let r = tokio::time::timeout(Duration::from_secs(10), t.read(&mut b))
                        .await
                        .expect("not closed");
                    assert!(
                        matches!(r, Ok(0) | Err(_)),
                        "bad frame not answered by a close: {r:?}"
                    );
                }
            }
        });
    });
    // Garbage on the CLI socket.
    {
        use std::io::{Read, Write};
        let mut s =
            std::os::unix::net::UnixStream::connect(pool.dir.join("submit/schedd.sock")).unwrap();
        s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
        let mut b = vec![];
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut b);
    }
    // Every daemon still serves: a job runs to completion.
    let dir = pool.job_dir("after");
    std::fs::write(dir.join("in.txt"), "still serving\n").unwrap();
    let ids = pool.submit(
        &dir,
        "executable = \"/bin/cat\"\narguments = \"in.txt\"\noutput = \"out.txt\"\n",
    );
    assert_eq!(
        pool.wait(&ids, Duration::from_secs(120)),
        0,
        "{}",
        pool.logs()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "still serving\n"
    );
    let logs = pool.logs();
    assert!(
        logs.matches("closed").count()
            + logs.matches("refused").count()
            + logs.matches("rejected").count()
            >= 2,
        "the daemons log why they closed:\n{logs}"
    );
}

#[test]
fn schedd_killed_after_submit_loses_no_job() {
    let pool = Pool::start(1);
    // No matches while the schedd dies: the matchmaker is down too.
    let dir = pool.job_dir("survivor");
    std::fs::write(dir.join("in.txt"), words(100)).unwrap();
    pool.kill_daemon("cm", libc::SIGKILL);
    let ids = pool.submit(&dir, "executable = \"/usr/bin/sort\"\narguments = [\"in.txt\"]\noutput = \"out.txt\"\nqueue = 3\n");
    assert_eq!(ids.len(), 3);
    pool.kill_daemon("submit", libc::SIGKILL);
    pool.start_daemon("submit").unwrap();
    pool.start_daemon("cm").unwrap();
    pool.wait_ready(1, Duration::from_secs(60)).unwrap();
    let q = pool.queue();
    let have: Vec<String> = q.iter().map(job_id).collect();
    for id in &ids {
        assert!(
            have.contains(id),
            "job {id} lost after kill -9 of the schedd: {q:?}"
        );
    }
    assert_eq!(
        pool.wait(&ids, Duration::from_secs(180)),
        0,
        "{}",
        pool.logs()
    );
    let local = run_local(&dir, &["/usr/bin/sort", "in.txt"], None);
    assert_eq!(std::fs::read(dir.join("out.txt")).unwrap(), local.stdout);
    let v: Vec<Value> = pool.log(&ids[0]);
    assert!(v.iter().any(|e| e["event"] == "completed"));
}
