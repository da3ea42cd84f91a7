//! Nobody in where they don't belong: in one pool, a certificate from
//! another CA, an expired one, a user's certificate used as a daemon, a
//! replayed claim token and a revoked (deny-listed) certificate are each
//! refused with a log line that says why, and the daemons keep serving
//! (a job submitted afterwards completes with its output).
//!
//! The intruders are TLS clients in this test, run inside the pool's host
//! namespaces; their certificates come from `roost pool add-host` /
//! `add-user` (the pool CA), from a CA of their own, or with a validity
//! period in the past.

use proto::frame::{read_frame_async, write_frame_async};
use proto::pool::{FromMatchmaker, MachineAd, ToMatchmaker};
use proto::shadow::{FromShadow, ToShadow};
use proto::tls::{Identity, server_name};
use proto::{ClaimId, HostName, JobId};
use roost_tests::{MATCHMAKER_PORT, Pool, SHADOW_PORT};
use std::path::Path;
use std::time::{Duration, Instant};

const MAX: u32 = 1 << 20;

/// Runs `f` on a fresh runtime in `host`'s network namespace.
fn on<T: Send>(pool: &Pool, host: &str, f: impl std::future::Future<Output = T> + Send) -> T {
    pool.in_netns(host, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
}

/// What happened to one request over TLS.
#[derive(Debug)]
enum Outcome<T> {
    /// The handshake or the connection failed (the server refused us).
    Refused(String),
    /// An answer.
    Reply(T),
}

/// Connects to `addr` (certificate name `name`) as `id`, sends `msg`,
/// reads one reply (one function per wire, so the types stay concrete).
macro_rules! asker {
    ($fn:ident, $q:ty, $a:ty) => {
        async fn $fn(id: &Identity, addr: &str, name: &str, msg: &$q) -> Outcome<$a> {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
            let mut tls = match id
                .connector()
                .connect(server_name(name).unwrap(), tcp)
                .await
            {
                Ok(t) => t,
                Err(e) => return Outcome::Refused(format!("handshake: {e}")),
            };
            // In TLS 1.3 the server checks the client's certificate after
            // the client's side of the handshake is done: a refusal shows
            // on first use.
            if let Err(e) = write_frame_async(&mut tls, msg).await {
                return Outcome::Refused(format!("write: {e}"));
            }
            match tokio::time::timeout(Duration::from_secs(10), read_frame_async(&mut tls, MAX))
                .await
            {
                Ok(Ok(a)) => Outcome::Reply(a),
                Ok(Err(e)) => Outcome::Refused(format!("read: {e}")),
                Err(_) => panic!("no answer and no refusal from {addr} in 10 s"),
            }
        }
    };
}
asker!(ask_mm, ToMatchmaker, FromMatchmaker);
asker!(ask_shadow, ToShadow, FromShadow);

/// Waits until `host`'s daemon log has a line containing every one of
/// `parts`; returns it.
fn log_line(pool: &Pool, host: &str, parts: &[&str]) -> String {
    let path = pool.dir.join(host).join("daemon.log");
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            eprintln!("{host}: {l}");
            return l.to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no line with {parts:?} in {}:\n{}",
            path.display(),
            text
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn roost_ok(pool: &Pool, args: &[&str]) -> String {
    let out = pool.roost(args);
    assert!(
        out.status.success(),
        "roost {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The full claim token of the starter running `job` in this pool, from
/// its environment (what root on the execute host can read).
fn running_claim(pool: &Pool, job: &str) -> ClaimId {
    let dir = pool.dir.display().to_string();
    let t0 = Instant::now();
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_starter = args.first().is_some_and(|a| a.ends_with("roost-starter"))
                && args.windows(2).any(|w| w[0] == "--job" && w[1] == job)
                && args.iter().any(|a| a.starts_with(&dir));
            if !is_starter {
                continue;
            }
            if let Ok(env) = std::fs::read(e.path().join("environ")) {
                for v in env.split(|b| *b == 0) {
                    if let Some(c) = v.strip_prefix(b"ROOST_CLAIM=") {
                        return ClaimId(String::from_utf8_lossy(c).into_owned());
                    }
                }
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no starter of job {job} found"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A certificate from a CA of its own, named like a pool host, presented
/// by a client that trusts the pool CA (so only the server can refuse it).
fn forged(dir: &Path, pool_pki: &Path) -> Identity {
    proto::tls::init_ca(dir, "forged").unwrap();
    proto::tls::issue(dir, "exec1", "ownerd", &[]).unwrap();
    std::fs::copy(pool_pki.join("ca.pem"), dir.join("ca.pem")).unwrap();
    Identity::load(dir, "exec1").unwrap()
}

#[test]
fn intruders_are_refused_with_a_reason_and_the_pool_keeps_serving() {
    let pool = Pool::start(1);
    let pki = pool.dir.join("pki");
    let mm = pool.matchmaker_addr();
    let shadow = pool.shadow_addr();
    assert_eq!(mm, format!("{}:{MATCHMAKER_PORT}", pool.host("cm").ip));
    assert_eq!(shadow, format!("{}:{SHADOW_PORT}", pool.host("submit").ip));

    // Certificates: a user's from `roost pool add-user`, an expired host's.
    roost_ok(
        &pool,
        &[
            "pool",
            "add-user",
            "mallory",
            "--dir",
            pool.dir.to_str().unwrap(),
        ],
    );
    let mallory = Identity::load(&pki, "mallory").unwrap();
    let now = std::time::SystemTime::now();
    proto::tls::issue_valid(
        &pki,
        "exec-old",
        "ownerd",
        &[],
        Some(proto::tls::Validity {
            not_before: now - Duration::from_secs(30 * 86_400),
            not_after: now - Duration::from_secs(86_400),
        }),
    )
    .unwrap();
    let expired = Identity::load(&pki, "exec-old").unwrap();
    let forged_dir = pool.dir.join("forged");
    let forger = forged(&forged_dir, &pki);

    // A user's certificate may ask the matchmaker for the machines...
    match on(
        &pool,
        "submit",
        ask_mm(&mallory, &mm, "cm", &ToMatchmaker::Status),
    ) {
        Outcome::Reply(FromMatchmaker::Machines(m)) => assert_eq!(m.len(), 1, "{m:?}"),
        other => panic!("status as a user: {other:?}"),
    }
    // ...but not act as a daemon: advertise a machine to the matchmaker,
    let ad = MachineAd {
        name: HostName("mallory".into()),
        state: "Unclaimed".into(),
        activity: "Idle".into(),
        attrs: Default::default(),
    };
    match on(
        &pool,
        "submit",
        ask_mm(&mallory, &mm, "cm", &ToMatchmaker::Machine(ad.clone())),
    ) {
        Outcome::Reply(FromMatchmaker::Error { message }) => assert!(
            message.contains("role `user` may not send a machine ad"),
            "{message}"
        ),
        other => panic!("a machine ad from a user certificate: {other:?}"),
    }
    log_line(
        &pool,
        "cm",
        &["refused:", "role `user` may not send a machine ad"],
    );
    // or attach to a job's shadow as a starter.
    let attach = ToShadow::Attach {
        claim: ClaimId("ab".repeat(32)),
        job: JobId {
            cluster: 1,
            proc: 0,
        },
        host: HostName("mallory".into()),
    };
    match on(
        &pool,
        "exec1",
        ask_shadow(&mallory, &shadow, "submit", &attach),
    ) {
        Outcome::Refused(why) => eprintln!("refused: {why}"),
        Outcome::Reply(r) => panic!("the shadow answered a user certificate: {r:?}"),
    }
    log_line(
        &pool,
        "submit",
        &["only starters may attach", "name=mallory", "role=user"],
    );

    // A certificate of another CA, named like a pool host.
    match on(
        &pool,
        "exec1",
        ask_mm(&forger, &mm, "cm", &ToMatchmaker::Status),
    ) {
        Outcome::Refused(why) => eprintln!("refused: {why}"),
        Outcome::Reply(r) => panic!("the matchmaker answered a forged certificate: {r:?}"),
    }
    log_line(&pool, "cm", &["TLS handshake refused", "UnknownIssuer"]);
    log_line(
        &pool,
        "cm",
        &["a certificate naming `exec1` (role `ownerd`) is not signed by this pool's CA"],
    );
    match on(
        &pool,
        "exec1",
        ask_shadow(&forger, &shadow, "submit", &attach),
    ) {
        Outcome::Refused(why) => eprintln!("refused: {why}"),
        Outcome::Reply(r) => panic!("the shadow answered a forged certificate: {r:?}"),
    }
    log_line(&pool, "submit", &["TLS handshake failed", "UnknownIssuer"]);

    // An expired certificate of the pool CA.
    match on(
        &pool,
        "exec1",
        ask_mm(&expired, &mm, "cm", &ToMatchmaker::Status),
    ) {
        Outcome::Refused(why) => eprintln!("refused: {why}"),
        Outcome::Reply(r) => panic!("the matchmaker answered an expired certificate: {r:?}"),
    }
    log_line(
        &pool,
        "cm",
        &["TLS handshake refused", "certificate expired"],
    );
    log_line(
        &pool,
        "cm",
        &["a certificate naming `exec-old` (role `ownerd`) has expired"],
    );

    // A replayed claim token: while its job runs, and after.
    let dir = pool.job_dir("claim");
    let ids = pool.submit(
        &dir,
        "executable = \"/bin/sh\"\narguments = [\"-c\", \"sleep 2; echo done\"]\noutput = \"out.txt\"\n",
    );
    let claim = running_claim(&pool, &ids[0]);
    let job: JobId = {
        let (c, p) = ids[0].split_once('.').unwrap();
        JobId {
            cluster: c.parse().unwrap(),
            proc: p.parse().unwrap(),
        }
    };
    let exec1 = Identity::load(&pki, "exec1").unwrap();
    let replay = ToShadow::Attach {
        claim: claim.clone(),
        job,
        host: HostName("exec1".into()),
    };
    match on(
        &pool,
        "exec1",
        ask_shadow(&exec1, &shadow, "submit", &replay),
    ) {
        // The claim is in use: only the starter that took it runs the job.
        Outcome::Reply(FromShadow::Refused { reason }) => {
            assert!(reason.contains("unknown, used or expired"), "{reason}")
        }
        other => panic!("a second attach with a running claim: {other:?}"),
    }
    assert_eq!(
        pool.wait(&ids, Duration::from_secs(60)),
        0,
        "{}",
        pool.logs()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "done\n"
    );
    match on(
        &pool,
        "exec1",
        ask_shadow(&exec1, &shadow, "submit", &replay),
    ) {
        Outcome::Reply(FromShadow::Refused { reason }) => {
            assert!(reason.contains("unknown, used or expired"), "{reason}")
        }
        other => panic!("an attach with a used claim: {other:?}"),
    }
    log_line(
        &pool,
        "submit",
        &["attach refused", "unknown, used or expired"],
    );

    // Revocation: `roost pool revoke` puts mallory on the deny list, and
    // the running matchmaker refuses her from the next connection on.
    let out = roost_ok(
        &pool,
        &[
            "pool",
            "revoke",
            "mallory",
            "--dir",
            pool.dir.to_str().unwrap(),
        ],
    );
    let serial = proto::tls::file_serial(&pki.join("mallory.pem")).unwrap();
    assert!(out.contains(&serial), "{out}");
    match on(
        &pool,
        "submit",
        ask_mm(&mallory, &mm, "cm", &ToMatchmaker::Status),
    ) {
        Outcome::Refused(why) => eprintln!("refused: {why}"),
        Outcome::Reply(r) => panic!("the matchmaker answered a revoked certificate: {r:?}"),
    }
    log_line(
        &pool,
        "cm",
        &[
            "`mallory` (role `user`)",
            &format!("serial {serial} is revoked"),
        ],
    );

    // Every daemon kept serving: a new job runs and completes.
    let dir = pool.job_dir("after");
    let ids = pool.submit(
        &dir,
        "executable = \"/bin/echo\"\narguments = [\"still\", \"serving\"]\noutput = \"out.txt\"\n",
    );
    assert_eq!(
        pool.wait(&ids, Duration::from_secs(60)),
        0,
        "{}",
        pool.logs()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "still serving\n"
    );
    let status = roost_ok(&pool, &["status", "--json"]);
    assert!(status.contains("exec1"), "{status}");

    // A daemon revoked while connected: exec1's ownerd keeps one connection
    // to the matchmaker open; at its next ad (every few seconds) the
    // matchmaker drops it, the machine leaves the pool, and its reconnects
    // are refused in the handshake.
    roost_ok(
        &pool,
        &[
            "pool",
            "revoke",
            "exec1",
            "--dir",
            pool.dir.to_str().unwrap(),
        ],
    );
    log_line(
        &pool,
        "cm",
        &["peer=exec1", "revoked while connected; closing"],
    );
    log_line(&pool, "cm", &["machine left", "machine=exec1"]);
    let serial = proto::tls::file_serial(&pki.join("exec1.pem")).unwrap();
    log_line(
        &pool,
        "cm",
        &[
            "`exec1` (role `ownerd`)",
            &format!("serial {serial} is revoked"),
        ],
    );
    let from_exec1 = format!("peer={}:", pool.host("exec1").ip);
    log_line(
        &pool,
        "cm",
        &["TLS handshake refused", "Revoked", &from_exec1],
    );
    log_line(
        &pool,
        "exec1",
        &["bad frame from the matchmaker", "CertificateRevoked"],
    );
    let status = roost_ok(&pool, &["status", "--json"]);
    assert!(!status.contains("exec1"), "{status}");
}
