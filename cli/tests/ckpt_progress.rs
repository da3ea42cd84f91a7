//! `roost checkpoint --wait`, `roost vacate --wait` and `roost q --watch`
//! (the real binary) against a real schedd in-process, whose job's starter
//! is played here over real TLS, streaming its checkpoint image slowly.

use proto::cli::{CliReply, CliRequest};
use proto::fileop::{FileOp, FileReply};
use proto::frame::{MAX_FRAME, read_frame, read_frame_async, write_frame, write_frame_async};
use proto::pool::{FromMatchmaker, Match, ToMatchmaker};
use proto::shadow::{FromShadow, ToShadow};
use proto::tls::Identity;
use proto::{ClaimId, HostName, JobId};
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(20);

fn pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    proto::tls::init_ca(&pki, "test").unwrap();
    proto::tls::issue(&pki, "submit", "schedd", &[]).unwrap();
    proto::tls::issue(&pki, "cm", "matchmaker", &[]).unwrap();
    proto::tls::issue(&pki, "exec1", "ownerd", &[]).unwrap();
    pki
}

/// A matchmaker that matches the first idle job it hears of to exec1 with
/// claim `k1`, once.
async fn fake_mm(pki: &Path) -> String {
    let id = Identity::load(pki, "cm").unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut t = id.acceptor().accept(tcp).await.unwrap();
        let mut matched = false;
        while let Ok(m) = read_frame_async::<_, ToMatchmaker>(&mut t, MAX_FRAME).await {
            if let ToMatchmaker::Jobs { jobs, .. } = m
                && !matched
                && let Some(j) = jobs.first()
            {
                let m = Match {
                    job: j.job,
                    machine: HostName("exec1".into()),
                    claim: ClaimId("k1".into()),
                };
                write_frame_async(&mut t, &FromMatchmaker::Matches(vec![m]))
                    .await
                    .unwrap();
                matched = true;
            }
        }
    });
    addr
}

fn cli(sock: &Path, req: &CliRequest) -> CliReply {
    let mut s = UnixStream::connect(sock).unwrap();
    write_frame(&mut s, req).unwrap();
    read_frame(&mut s, MAX_FRAME).unwrap()
}

fn roost(sock: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(args)
        .env_remove("ROOST_POOL")
        .env("ROOST_SCHEDD_SOCK", sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn finish(c: Child) -> Output {
    tokio::time::timeout(
        T,
        tokio::task::spawn_blocking(move || c.wait_with_output().unwrap()),
    )
    .await
    .expect("roost did not end")
    .unwrap()
}

async fn next<S: AsyncRead + Unpin>(s: &mut S) -> FromShadow {
    tokio::time::timeout(T, read_frame_async(s, MAX_FRAME))
        .await
        .expect("no message from the shadow")
        .unwrap()
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, m: ToShadow) {
    write_frame_async(s, &m).await.unwrap();
}

/// The bytes a checkpoint bar says were received (`... 262.1 kB received ...`).
fn received(bar: &str) -> f64 {
    let after = bar.split("]  ").nth(1).unwrap();
    let mut w = after.split(' ');
    let n: f64 = w.next().unwrap().parse().unwrap();
    let unit = match w.next().unwrap() {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        u => panic!("unit {u} in {bar}"),
    };
    n * unit
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A full checkpoint image the schedd accepts (a sealed header, no
/// regions, 2 MiB of data that does not compress), zstd-compressed as a
/// starter sends it: (raw size, compressed bytes).
fn image() -> (u64, Vec<u8>) {
    use proto::ckpt::{ARCH_X86_64, ImageHeader, KIND_FULL, KSigaction, MAGIC, VERSION, checksum};
    let mut h = ImageHeader {
        magic: MAGIC,
        version: VERSION,
        arch: ARCH_X86_64,
        page_size: 4096,
        nregions: 0,
        nfds: 0,
        umask: 0o22,
        fs_base: 0,
        frame: 0,
        brk: 0,
        sigactions: [KSigaction::default(); 65],
        kind: KIND_FULL,
        flags: 0,
        image_id: 1,
        parent_id: 0,
        tables_sum: checksum(&[]) ^ checksum(&[]).rotate_left(1),
        header_sum: 0,
    };
    h.seal();
    let mut raw = h.as_bytes().to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..(2 << 20) / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        raw.extend_from_slice(&x.to_le_bytes());
    }
    let z = zstd::encode_all(&raw[..], 1).unwrap();
    (raw.len() as u64, z)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_and_vacate_wait_show_the_transfer_and_the_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let mm = fake_mm(&pki).await;
    let cfg = shadow::Config {
        pki: pki.clone(),
        name: "submit".into(),
        dir: tmp.path().join("submit"),
        listen: "127.0.0.1:0".into(),
        advertise: None,
        matchmaker: mm,
        matchmaker_name: "cm".into(),
        claim_timeout: Duration::from_secs(60),
        job_lease: shadow::JOB_LEASE,
    };
    let bound = shadow::Schedd::bind(cfg).await.unwrap();
    let sock = bound.sock().to_path_buf();
    let shadow_addr = bound.shadow_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let schedd = tokio::spawn(async move {
        bound
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("prog"), b"x").unwrap();
    let CliReply::Submitted { jobs } = cli(
        &sock,
        &CliRequest::Submit {
            file: "job.toml".into(),
            text: "executable = \"prog\"\n".into(),
            cwd: work.display().to_string(),
        },
    ) else {
        panic!("not submitted")
    };
    let job: JobId = jobs[0];

    // The starter attaches with the claim the matchmaker gave.
    let id = Identity::load(&pki, "exec1").unwrap();
    let t0 = Instant::now();
    let mut s = loop {
        let tcp = TcpStream::connect(shadow_addr).await.unwrap();
        let mut s = id
            .connector()
            .connect(proto::tls::server_name("submit").unwrap(), tcp)
            .await
            .unwrap();
        let m = ToShadow::Attach {
            claim: ClaimId("k1".into()),
            job,
            host: HostName("exec1".into()),
        };
        send(&mut s, m).await;
        if let Ok(Ok(FromShadow::Attached(_))) =
            tokio::time::timeout(T, read_frame_async(&mut s, MAX_FRAME)).await
        {
            break s;
        }
        assert!(t0.elapsed() < T, "never attached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // `roost q --watch` into a pipe: snapshots without cursor codes.
    let mut watch = roost(&sock, &["q", "--watch", "--interval", "0.1"]);
    let watch_out = watch.stdout.take().unwrap();
    let watched = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(watch_out).lines() {
            let Ok(l) = l else { break };
            let bar = l.contains("checkpoint [");
            lines.push(l);
            if bar {
                break;
            }
        }
        lines
    });

    let ckpt = roost(&sock, &["checkpoint", "--wait", &job.to_string()]);
    assert_eq!(next(&mut s).await, FromShadow::Checkpoint { vacate: false });
    send(
        &mut s,
        ToShadow::CkptBegin {
            reason: "user".into(),
        },
    )
    .await;
    let (raw_len, zimage) = image();
    for piece in zimage.chunks(zimage.len().div_ceil(8)) {
        send(
            &mut s,
            ToShadow::CkptChunk {
                data: piece.to_vec(),
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    send(
        &mut s,
        ToShadow::CkptEnd {
            raw_bytes: raw_len,
            seconds: 1.6,
            streams: Vec::new(),
        },
    )
    .await;
    let r = next(&mut s).await;
    assert!(
        matches!(r, FromShadow::CkptCommitted { bytes } if bytes == zimage.len() as u64),
        "{r:?}"
    );

    let out = finish(ckpt).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0], format!("checkpointing {job}"));
    assert!(lines[1].starts_with(&format!("{job}: ")), "{stdout}");
    assert!(lines[1].contains("checkpointed"), "{stdout}");
    // stderr is a pipe: one bar line each time more bytes arrived, rising.
    let bars: Vec<&str> = stderr.lines().collect();
    assert!(bars.len() >= 3, "{stderr}");
    // The first line may come before the first byte (0 B received).
    let mut last = -1.0;
    for b in &bars {
        assert!(b.starts_with(&format!("{job}  checkpoint [")), "{stderr}");
        assert!(b.ends_with(" MB/s"), "{stderr}");
        assert!(!b.contains('\x1b') && !b.contains('\r'), "{stderr:?}");
        let got = received(b);
        assert!(got > last, "{stderr}");
        last = got;
    }

    let shown = tokio::task::spawn_blocking(move || watched.join().unwrap())
        .await
        .unwrap();
    watch.kill().unwrap();
    watch.wait().unwrap();
    let all = shown.join("\n");
    assert!(!all.contains('\x1b'), "{all:?}");
    assert!(shown.iter().any(|l| l.starts_with("ID ")), "{all}");
    let bar = shown.last().unwrap();
    assert!(bar.starts_with(&format!("{job}  checkpoint [")), "{all}");
    assert!(
        bar.contains(" received  ") && bar.ends_with(" MB/s"),
        "{all}"
    );

    // A vacate whose checkpoint is refused: the job is evicted; status 1.
    let vacate = roost(&sock, &["vacate", "--wait", &job.to_string()]);
    assert_eq!(next(&mut s).await, FromShadow::Checkpoint { vacate: true });
    assert_eq!(
        {
            send(
                &mut s,
                ToShadow::Call {
                    id: 1,
                    op: FileOp::Barrier,
                },
            )
            .await;
            next(&mut s).await
        },
        FromShadow::Reply {
            id: 1,
            reply: FileReply::Ok
        }
    );
    send(
        &mut s,
        ToShadow::CkptAbort {
            reason: "the job has 2 threads".into(),
        },
    )
    .await;
    send(
        &mut s,
        ToShadow::Vacated {
            reason: "the job has 2 threads".into(),
            checkpointed: false,
        },
    )
    .await;
    assert_eq!(next(&mut s).await, FromShadow::Done);
    let out = finish(vacate).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0], format!("vacating {job}"));
    assert!(lines[1].starts_with(&format!("{job}: ")), "{stdout}");
    assert!(lines[1].contains("evicted"), "{stdout}");
    assert_eq!(text(&out.stderr), "", "no transfer moved");

    let _ = stop.send(());
    schedd.await.unwrap();
}
