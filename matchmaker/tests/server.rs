//! The matchmaker in-process over real TLS: a fake ownerd and a fake schedd
//! get a claim; wrong roles, forged names, garbage and oversized frames and
//! foreign certificates close only their own connection.

use matchmaker::{ATTR_CLIENT_MACHINE, ATTR_JOB_ID, Matchmaker};
use proto::frame::{MAX_FRAME, read_frame_async, write_frame_async};
use proto::pool::{Ad, AdValue, FromMatchmaker, JobAd, MachineAd, ToMatchmaker};
use proto::tls::{Identity, init_ca, issue, server_name};
use proto::{HostName, JobId, ProtoError};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Conn = TlsStream<TcpStream>;

const WAIT: Duration = Duration::from_secs(10);

fn pki(dir: &Path) {
    init_ca(dir, "test").unwrap();
    for (name, role) in [
        ("cm", "matchmaker"),
        ("exec1", "ownerd"),
        ("exec2", "ownerd"),
        ("submit", "schedd"),
        ("alice", "user"),
    ] {
        issue(dir, name, role, &[]).unwrap();
    }
}

/// Starts a matchmaker whose timer would not fire during a test: cycles
/// must come from events.
async fn start(dir: &Path) -> SocketAddr {
    let id = Identity::load(dir, "cm").unwrap();
    let mm = Matchmaker::bind(&id, "127.0.0.1:0", Duration::from_secs(3600))
        .await
        .unwrap();
    let addr = mm.local_addr().unwrap();
    tokio::spawn(mm.run(std::future::pending()));
    addr
}

async fn connect(dir: &Path, name: &str, addr: SocketAddr) -> Conn {
    let id = Identity::load(dir, name).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    id.connector()
        .connect(server_name("cm").unwrap(), tcp)
        .await
        .unwrap()
}

async fn send(c: &mut Conn, m: &ToMatchmaker) {
    write_frame_async(c, m).await.unwrap();
}

async fn recv(c: &mut Conn) -> Result<FromMatchmaker, ProtoError> {
    tokio::time::timeout(WAIT, read_frame_async(c, MAX_FRAME))
        .await
        .expect("no message from the matchmaker")
}

fn machine(name: &str, state: &str, job: Option<&str>) -> ToMatchmaker {
    let mut attrs = Ad::new();
    attrs.insert("Machine".into(), AdValue::Str(name.into()));
    if let Some(j) = job {
        attrs.insert(ATTR_JOB_ID.into(), AdValue::Str(j.into()));
        attrs.insert(ATTR_CLIENT_MACHINE.into(), AdValue::Str("submit".into()));
    }
    ToMatchmaker::Machine(MachineAd {
        name: HostName(name.into()),
        state: state.into(),
        activity: "Idle".into(),
        attrs,
    })
}

fn jobs(ids: &[u64]) -> ToMatchmaker {
    ToMatchmaker::Jobs {
        schedd: HostName("submit".into()),
        addr: "127.0.0.1:7777".into(),
        jobs: ids
            .iter()
            .map(|&c| JobAd {
                job: JobId {
                    cluster: c,
                    proc: 0,
                },
                owner: "alice".into(),
                attrs: Ad::new(),
            })
            .collect(),
    }
}

/// `roost status` as user alice: (name, state) per machine.
async fn status(dir: &Path, addr: SocketAddr) -> Vec<(String, String)> {
    let mut c = connect(dir, "alice", addr).await;
    send(&mut c, &ToMatchmaker::Status).await;
    match recv(&mut c).await.unwrap() {
        FromMatchmaker::Machines(ms) => ms.into_iter().map(|m| (m.name.0, m.state)).collect(),
        other => panic!("expected Machines, got {other:?}"),
    }
}

/// Polls `status` until it equals `want`.
async fn status_becomes(dir: &Path, addr: SocketAddr, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = status(dir, addr).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status stayed {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a refusal the matchmaker closes the connection: an `Error` (if
/// given) and then end of stream.
async fn expect_closed(c: &mut Conn, error_mentions: Option<&str>) {
    if let Some(word) = error_mentions {
        match recv(c).await {
            Ok(FromMatchmaker::Error { message }) => assert!(message.contains(word), "{message}"),
            other => panic!("expected an Error naming {word:?}, got {other:?}"),
        }
    }
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(WAIT, c.read(&mut b))
        .await
        .expect("connection not closed");
    assert!(matches!(n, Ok(0) | Err(_)), "connection still open: {n:?}");
}

#[tokio::test]
async fn job_gets_a_claim_pushed_to_ownerd_and_schedd() {
    let d = tempfile::tempdir().unwrap();
    pki(d.path());
    let addr = start(d.path()).await;

    let mut own = connect(d.path(), "exec1", addr).await;
    send(&mut own, &machine("exec1", "Unclaimed", None)).await;
    status_becomes(d.path(), addr, &[("exec1", "Unclaimed")]).await;

    let mut sch = connect(d.path(), "submit", addr).await;
    send(&mut sch, &jobs(&[1])).await;

    let FromMatchmaker::Claim {
        claim,
        job,
        schedd,
        addr: shadow,
    } = recv(&mut own).await.unwrap()
    else {
        panic!("ownerd got no claim")
    };
    assert_eq!(
        job,
        JobId {
            cluster: 1,
            proc: 0
        }
    );
    assert_eq!(schedd, HostName("submit".into()));
    assert_eq!(shadow, "127.0.0.1:7777");
    assert_eq!(claim.0.len(), 64, "claim is 32 bytes of hex");
    let FromMatchmaker::Matches(ms) = recv(&mut sch).await.unwrap() else {
        panic!("schedd got no matches")
    };
    assert_eq!(ms.len(), 1);
    assert_eq!(
        (ms[0].job, &ms[0].machine, &ms[0].claim),
        (job, &HostName("exec1".into()), &claim)
    );
    assert_eq!(
        status(d.path(), addr).await,
        vec![("exec1".into(), "Matched".into())]
    );

    // The ownerd runs it, then finishes; a new job then gets the machine.
    send(&mut own, &machine("exec1", "Claimed", Some("1.0"))).await;
    status_becomes(d.path(), addr, &[("exec1", "Claimed")]).await;
    send(&mut own, &machine("exec1", "Unclaimed", None)).await;
    status_becomes(d.path(), addr, &[("exec1", "Unclaimed")]).await;
    send(&mut sch, &jobs(&[2])).await;
    let FromMatchmaker::Claim {
        job, claim: second, ..
    } = recv(&mut own).await.unwrap()
    else {
        panic!("ownerd got no second claim")
    };
    assert_eq!(
        job,
        JobId {
            cluster: 2,
            proc: 0
        }
    );
    assert_ne!(second, claim);

    // The schedd releases it: the ownerd hears, the machine is free again.
    send(
        &mut sch,
        &ToMatchmaker::Release {
            claim: second.clone(),
        },
    )
    .await;
    assert_eq!(
        recv(&mut own).await.unwrap(),
        FromMatchmaker::Release { claim: second }
    );
    let FromMatchmaker::Matches(_) = recv(&mut sch).await.unwrap() else {
        panic!()
    };
    status_becomes(d.path(), addr, &[("exec1", "Unclaimed")]).await;

    // A closed ownerd connection takes its machine out of the pool.
    drop(own);
    status_becomes(d.path(), addr, &[]).await;
}

#[tokio::test]
async fn wrong_roles_forgeries_and_garbage_close_only_their_connection() {
    // Debug logging formats everything peers send, as `RUST_LOG=debug` would.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_test_writer()
        .try_init();
    let d = tempfile::tempdir().unwrap();
    pki(d.path());
    let addr = start(d.path()).await;
    let mut own = connect(d.path(), "exec1", addr).await;
    send(&mut own, &machine("exec1", "Owner", None)).await;
    status_becomes(d.path(), addr, &[("exec1", "Owner")]).await;

    // A user may not advertise a machine, an ownerd may not send jobs or
    // releases, a schedd may not advertise a machine.
    let mut c = connect(d.path(), "alice", addr).await;
    send(&mut c, &machine("alice", "Unclaimed", None)).await;
    expect_closed(&mut c, Some("`user`")).await;
    let mut c = connect(d.path(), "exec2", addr).await;
    send(&mut c, &jobs(&[1])).await;
    expect_closed(&mut c, Some("`ownerd`")).await;
    let mut c = connect(d.path(), "exec2", addr).await;
    send(
        &mut c,
        &ToMatchmaker::Release {
            claim: proto::ClaimId("00".into()),
        },
    )
    .await;
    expect_closed(&mut c, Some("`ownerd`")).await;
    let mut c = connect(d.path(), "submit", addr).await;
    send(&mut c, &machine("submit", "Unclaimed", None)).await;
    expect_closed(&mut c, Some("`schedd`")).await;
    // exec2 may not speak for exec1.
    let mut c = connect(d.path(), "exec2", addr).await;
    send(&mut c, &machine("exec1", "Unclaimed", None)).await;
    expect_closed(&mut c, Some("exec1")).await;

    // Garbage after a good handshake: undecodable, unknown version, too large.
    for bytes in [
        vec![4u8, 0, 0, 0, 1, 0xff, 0xff, 0xff],
        vec![2u8, 0, 0, 0, 9, 0],
        (MAX_FRAME + 1).to_le_bytes().to_vec(),
    ] {
        let mut c = connect(d.path(), "exec2", addr).await;
        c.write_all(&bytes).await.unwrap();
        c.flush().await.unwrap();
        expect_closed(&mut c, None).await;
    }

    // Not TLS at all.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut b = [0u8; 64];
    let _ = tokio::time::timeout(WAIT, raw.read(&mut b))
        .await
        .expect("plaintext connection not closed");

    // A certificate from another pool's CA.
    let other = d.path().join("other");
    init_ca(&other, "other").unwrap();
    issue(&other, "exec1", "ownerd", &[]).unwrap();
    let intruder = Identity::load(&other, "exec1").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let refused = match intruder
        .connector()
        .connect(server_name("cm").unwrap(), tcp)
        .await
    {
        Err(_) => true,
        // TLS 1.3: the client may finish before the server rejects its certificate.
        Ok(mut c) => {
            let _ = c
                .write_all(&proto::frame::encode(&machine("exec1", "Unclaimed", None)).unwrap())
                .await;
            let mut b = [0u8; 1];
            matches!(
                tokio::time::timeout(WAIT, c.read(&mut b)).await.unwrap(),
                Ok(0) | Err(_)
            )
        }
    };
    assert!(refused, "a foreign certificate was accepted");

    // A schedd releasing a claim it never had, with a token that is not
    // even ASCII, is ignored; its connection keeps working.
    let mut sch = connect(d.path(), "submit", addr).await;
    let odd = proto::ClaimId("aéééééééé".into());
    send(&mut sch, &ToMatchmaker::Release { claim: odd }).await;
    send(&mut sch, &ToMatchmaker::Status).await;
    assert!(matches!(
        recv(&mut sch).await,
        Ok(FromMatchmaker::Machines(_))
    ));

    // The legitimate ownerd is untouched and can still be matched.
    status_becomes(d.path(), addr, &[("exec1", "Owner")]).await;
    send(&mut own, &machine("exec1", "Unclaimed", None)).await;
    send(&mut sch, &jobs(&[3])).await;
    let FromMatchmaker::Claim { job, .. } = recv(&mut own).await.unwrap() else {
        panic!("no claim")
    };
    assert_eq!(
        job,
        JobId {
            cluster: 3,
            proc: 0
        }
    );
}
