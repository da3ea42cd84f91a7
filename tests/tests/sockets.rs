//! Sockets through the shadow: a job's TCP connections are held by its
//! shadow on the submit host, so a job reaches what only the submit host
//! can reach (here: servers bound to the submit host's own 127.0.0.1),
//! within the job's `network` list; a denial is a clean `EACCES` and an
//! event; `poll` over a pipe and a remote socket wakes once per event.

use roost_tests::{Pool, build_job, workspace};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A tiny HTTP server on `l`: every request gets `body`; counts requests.
fn serve_http(l: TcpListener, body: &'static str, hits: Arc<AtomicUsize>) {
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            hits.fetch_add(1, Ordering::SeqCst);
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// A server that answers each line with `ok` a second later (one client at a time).
fn serve_delayed(l: TcpListener) {
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                std::thread::sleep(Duration::from_secs(1));
                let _ = c.write_all(b"ok\n");
                line.clear();
            }
        }
    });
}

const BODY: &str = "<html>only the submit host can see this page</html>\n";

#[test]
fn jobs_reach_submit_host_servers_within_their_network_list() {
    let pool = Pool::start(1);
    // Bound in the submit host's namespace, on its loopback: the execute
    // host cannot route there.
    let (http, echo) = pool.in_netns("submit", || {
        (
            TcpListener::bind("127.0.0.1:0").unwrap(),
            TcpListener::bind("127.0.0.1:0").unwrap(),
        )
    });
    let port = http.local_addr().unwrap().port();
    let eport = echo.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    serve_http(http, BODY, hits.clone());
    serve_delayed(echo);
    let url = format!("http://127.0.0.1:{port}/page");
    // The execute host itself has no route to it.
    let direct = pool.exec_in(
        "exec1",
        &[
            "python3",
            "-c",
            &format!("import urllib.request as u; u.urlopen({url:?}, timeout=3)"),
        ],
    );
    assert!(
        !direct.status.success(),
        "exec1 reached the submit host's loopback directly"
    );

    let fetch = workspace().join("tests/jobs/sock_fetch.py");
    let allowed = pool.job_dir("fetch-allowed");
    std::fs::copy(&fetch, allowed.join("sock_fetch.py")).unwrap();
    let ok = pool.submit(
        &allowed,
        &format!(
            "executable = \"/usr/bin/python3\"\narguments = [\"sock_fetch.py\", {url:?}]\n\
             output = \"stdout.txt\"\nerror = \"stderr.txt\"\n\
             network = [\"127.0.0.1:{port}\", \"10.0.0.0/8\"]\n"
        ),
    );
    let denied = pool.job_dir("fetch-denied");
    std::fs::copy(&fetch, denied.join("sock_fetch.py")).unwrap();
    let no = pool.submit(
        &denied,
        &format!(
            "executable = \"/usr/bin/python3\"\narguments = [\"sock_fetch.py\", {url:?}]\n\
             output = \"stdout.txt\"\nerror = \"stderr.txt\"\n\
             network = [\"127.0.0.1:{}\"]\n",
            port.wrapping_add(1)
        ),
    );
    let poll_bin = build_job("sock_poll.c");
    let polldir = pool.job_dir("poll");
    std::fs::copy(&poll_bin, polldir.join("sock_poll")).unwrap();
    let pj = pool.submit(
        &polldir,
        &format!(
            "executable = \"sock_poll\"\narguments = [\"127.0.0.1\", \"{eport}\"]\n\
             output = \"stdout.txt\"\nerror = \"stderr.txt\"\n\
             network = [\"127.0.0.1:{eport}\"]\n"
        ),
    );
    let mut all = ok.clone();
    all.extend(no.clone());
    all.extend(pj.clone());
    pool.wait(&all, Duration::from_secs(120));
    let read =
        |d: &std::path::Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();

    // Allowed: the page arrives byte for byte.
    let j = pool.job(&ok[0]).unwrap();
    assert_eq!(
        j["exit"],
        serde_json::json!({"Code": 0}),
        "fetch job: {j}\nstdout: {}\nstderr: {}\n{}",
        read(&allowed, "stdout.txt"),
        read(&allowed, "stderr.txt"),
        pool.logs()
    );
    assert_eq!(read(&allowed, "out.txt"), BODY);
    assert!(read(&allowed, "stdout.txt").contains("status 200"));

    // Denied: EACCES for the job, a `network_denied` event, no request served.
    let j = pool.job(&no[0]).unwrap();
    assert_eq!(
        j["exit"],
        serde_json::json!({"Code": 3}),
        "denied job: {j}\n{}",
        read(&denied, "stderr.txt")
    );
    assert!(
        read(&denied, "stdout.txt").starts_with(&format!("error errno={}", libc::EACCES)),
        "{}",
        read(&denied, "stdout.txt")
    );
    let ev: Vec<_> = pool
        .log(&no[0])
        .into_iter()
        .filter(|e| e["event"] == "network_denied")
        .collect();
    assert_eq!(ev.len(), 1, "{:?}", pool.log(&no[0]));
    assert_eq!(ev[0]["call"], "connect");
    assert_eq!(ev[0]["to"], format!("127.0.0.1:{port}"));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "only the allowed job reached the server"
    );

    // poll: one wake-up for the pipe, one for the socket, and the two
    // seconds of waiting cost next to no CPU (a spinning wait burns them).
    let out = read(&polldir, "stdout.txt");
    let j = pool.job(&pj[0]).unwrap();
    assert_eq!(
        j["exit"],
        serde_json::json!({"Code": 0}),
        "poll job: {j}\n{out}\n{}",
        read(&polldir, "stderr.txt")
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..2],
        ["woke for the pipe", "woke for the socket: ok"],
        "{out}"
    );
    let stats: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(stats[..2], ["wakeups", "2"], "{out}");
    let cpu_us: u64 = stats[3].parse().unwrap();
    assert!(
        cpu_us < 500_000,
        "the job used {cpu_us} µs of CPU while waiting: {out}"
    );
}

/// Sets the flag when dropped (also when the test fails inside a scope).
struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// An echo server: one thread per connection copies bytes back.
fn serve_echo(l: TcpListener) {
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
}

#[test]
fn a_connection_survives_checkpoint_and_migration_mid_stream() {
    use std::sync::atomic::AtomicBool;
    const LINES: usize = 100_000;
    let pool = Pool::start_with_policy(2, Some(roost_tests::FAST_POLICY));
    let echo = pool.in_netns("submit", || TcpListener::bind("127.0.0.1:0").unwrap());
    let port = echo.local_addr().unwrap().port();
    serve_echo(echo);
    let dir = pool.job_dir("echo");
    std::fs::copy(build_job("sock_echo.c"), dir.join("sock_echo")).unwrap();
    let ids = pool.submit(
        &dir,
        &format!(
            "executable = \"sock_echo\"\narguments = [\"127.0.0.1\", \"{port}\", \"{LINES}\"]\n\
             output = \"stdout.txt\"\nerror = \"stderr.txt\"\n\
             network = [\"127.0.0.1:{port}\"]\n"
        ),
    );
    let id = &ids[0];
    let first = pool.wait_event(id, "executing", 1, Duration::from_secs(60));
    let host = first["host"].as_str().unwrap().to_string();
    // Mid-stream: some lines are back, most are not.
    let t0 = std::time::Instant::now();
    while std::fs::metadata(dir.join("stdout.txt")).map_or(0, |m| m.len()) < 20_000 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no echo yet\n{}",
            pool.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = AtomicBool::new(false);
    let rc = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                pool.touch(&host);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let _owner = Stop(&stop);
        pool.wait_event(id, "vacated", 1, Duration::from_secs(90));
        // The owner stays: the job resumes on the other host.
        pool.wait(&ids, Duration::from_secs(180))
    });
    let out = std::fs::read_to_string(dir.join("stdout.txt")).unwrap_or_default();
    let err = std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
    assert_eq!(rc, 0, "{:?}\nstderr: {err}\n{}", pool.log(id), pool.logs());
    let j = pool.job(id).unwrap();
    assert_eq!(
        j["exit"],
        serde_json::json!({"Code": 0}),
        "{j}\nstdout tail: {:?}\nstderr: {err}",
        &out[out.len().saturating_sub(200)..]
    );
    let hosts: Vec<String> = pool
        .log(id)
        .into_iter()
        .filter(|e| e["event"] == "executing")
        .filter_map(|e| e["host"].as_str().map(str::to_string))
        .collect();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert_ne!(hosts[0], hosts[1], "the job must resume on another host");
    assert!(pool.log(id).iter().any(|e| e["event"] == "checkpointed"));
    // Every line back exactly once, in order.
    let want: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
    assert!(
        out == want,
        "{} bytes of {}; first difference at byte {:?}",
        out.len(),
        want.len(),
        out.bytes().zip(want.bytes()).position(|(a, b)| a != b)
    );
    assert_eq!(err, format!("{LINES} lines echoed\n"));
}

/// Size of a file on the submit host (0 if absent).
fn size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// Touches `host` until the job's `nth` `vacated` event and until it runs
/// again (elsewhere: the owner is still at `host`).
fn vacate(pool: &Pool, id: &str, host: &str, nth: usize) {
    use std::sync::atomic::AtomicBool;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                pool.touch(host);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let _owner = Stop(&stop);
        pool.wait_event(id, "vacated", nth, Duration::from_secs(90));
        pool.wait_event(id, "executing", nth + 1, Duration::from_secs(90));
    });
}

#[test]
fn master_and_worker_keep_talking_while_the_worker_migrates_twice() {
    const N: usize = 10_000;
    let pool = Pool::start_with_policy(3, Some(roost_tests::FAST_POLICY));
    let dir = pool.job_dir("mw");
    std::fs::copy(build_job("sock_mw.c"), dir.join("sock_mw")).unwrap();
    let ids = pool.submit(
        &dir,
        &format!(
            "executable = \"sock_mw\"\narguments = [\"$(Process)\", \"$(Cluster).0\", \"{N}\"]\n\
             output = \"out.$(Process).txt\"\nerror = \"err.$(Process).txt\"\n\
             listen = true\nqueue = 2\n"
        ),
    );
    assert_eq!(ids.len(), 2, "{ids:?}");
    let (master, worker) = (&ids[0], &ids[1]);
    let out1 = dir.join("out.1.txt");
    for round in 1..=2 {
        let ev = pool.wait_event(worker, "executing", round, Duration::from_secs(60));
        let host = ev["host"].as_str().unwrap().to_string();
        // Wait for progress on this host, then the owner comes back.
        let before = size(&out1);
        let t0 = std::time::Instant::now();
        while size(&out1) < before + 20_000 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the worker makes no progress (round {round})\n{:?}\n{}",
                pool.log(worker),
                pool.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        vacate(&pool, worker, &host, round);
    }
    let rc = pool.wait(&ids, Duration::from_secs(180));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert_eq!(
        rc,
        0,
        "master: {} {}\nworker: {}\n{:?}\n{}",
        read("out.0.txt"),
        read("err.0.txt"),
        read("err.1.txt"),
        pool.log(worker),
        pool.logs()
    );
    let total = N * (N - 1) / 2;
    assert_eq!(
        read("out.0.txt"),
        format!("master: {N} messages, total {total}\n")
    );
    let w = read("out.1.txt");
    assert!(
        w.ends_with(&format!("worker: {N} messages, total {total}\n")),
        "{}",
        &w[w.len().saturating_sub(300)..]
    );
    let hosts: Vec<String> = pool
        .log(worker)
        .into_iter()
        .filter(|e| e["event"] == "executing")
        .filter_map(|e| e["host"].as_str().map(str::to_string))
        .collect();
    assert_eq!(hosts.len(), 3, "the worker ran on {hosts:?}");
    assert!(hosts[0] != hosts[1] && hosts[1] != hosts[2], "{hosts:?}");
    let m = pool
        .log(master)
        .into_iter()
        .filter(|e| e["event"] == "executing")
        .count();
    assert_eq!(m, 1, "the master never moved");
}
