//! `/metrics` of every daemon of a live pool, read over HTTPS as Prometheus
//! would and parsed by a Prometheus text-format parser: the families are
//! there, the gauges say what the pool is, and the counters move as a job
//! runs, is checkpointed and completes. A request without the token or a
//! certificate is refused and counted; `roost pool urls` lists every
//! endpoint.

use prometheus_parse::{Sample, Scrape, Value};
use roost_tests::{MATCHMAKER_PORT, OWNERD_METRICS_PORT, Pool, SHADOW_PORT, build_job};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// How a request proves itself.
#[derive(Clone, Copy)]
enum Auth {
    Token,
    Cert,
    Nothing,
}

/// `GET path` from `addr` (whose certificate is `name`) over HTTPS, from
/// the submit host; the status code and body.
fn get(pool: &Pool, addr: &str, name: &str, path: &str, auth: Auth) -> (u16, String) {
    let pki = pool.dir.join("pki");
    let token = std::fs::read_to_string(pki.join("web-token")).expect("pki/web-token");
    let mut cfg = match auth {
        Auth::Cert => (*proto::tls::Identity::load(&pki, "user").unwrap().client).clone(),
        Auth::Token | Auth::Nothing => {
            let pem = std::fs::read(pki.join("ca.pem")).unwrap();
            let (_, ca) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls::pki_types::CertificateDer::from(ca.contents))
                .unwrap();
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Auth::Token = auth {
        req.push_str(&format!("Authorization: Bearer {}\r\n", token.trim()));
    }
    req.push_str("\r\n");
    let (addr, name) = (addr.to_string(), name.to_string());
    let raw = pool.in_netns("submit", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .unwrap_or_else(|e| panic!("TLS to {addr}: {e}"));
            tls.write_all(req.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await.unwrap();
            buf
        })
    });
    let text = String::from_utf8(raw).expect("an HTTP answer in UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP head");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

struct Daemon {
    addr: String,
    name: &'static str,
}

fn daemons(pool: &Pool) -> [Daemon; 3] {
    [
        Daemon {
            addr: format!("{}:{MATCHMAKER_PORT}", pool.host("cm").ip),
            name: "cm",
        },
        Daemon {
            addr: format!("{}:{SHADOW_PORT}", pool.host("submit").ip),
            name: "submit",
        },
        Daemon {
            addr: format!("{}:{OWNERD_METRICS_PORT}", pool.host("exec1").ip),
            name: "exec1",
        },
    ]
}

/// `/metrics` of `d`, parsed.
fn scrape(pool: &Pool, d: &Daemon) -> Scrape {
    let (status, body) = get(pool, &d.addr, d.name, "/metrics", Auth::Token);
    assert_eq!(status, 200, "{} /metrics: {body}", d.name);
    Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{} /metrics does not parse ({e}):\n{body}", d.name))
}

/// The value of `metric` with exactly these labels (a histogram's count).
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == metric
                && x.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
        .collect();
    let [one] = found[..] else {
        panic!(
            "{metric}{labels:?}: {} samples in {:?}",
            found.len(),
            s.samples.iter().map(|x| &x.metric).collect::<Vec<_>>()
        )
    };
    match &one.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(b) => b.last().map_or(0.0, |c| c.count),
        Value::Summary(_) => panic!("{metric} is a summary"),
    }
}

/// The sum of `metric` over every label set.
fn total(s: &Scrape, metric: &str) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.last().map_or(0.0, |c| c.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

#[test]
fn every_daemon_serves_metrics_and_the_counters_move_as_a_job_runs() {
    let pool = Pool::start(1);
    let [mm, schedd, ownerd] = daemons(&pool);

    let m0 = scrape(&pool, &mm);
    let s0 = scrape(&pool, &schedd);
    let o0 = scrape(&pool, &ownerd);
    assert_eq!(value(&m0, "roost_machines", &[("state", "Unclaimed")]), 1.0);
    assert_eq!(value(&m0, "roost_machines", &[("state", "Claimed")]), 0.0);
    assert!(value(&m0, "roost_negotiation_cycle_seconds", &[]) >= 1.0);
    for s in [&m0, &s0, &o0] {
        assert_eq!(value(s, "roost_lease_expiries_total", &[]), 0.0);
        assert!(
            s.samples
                .iter()
                .any(|x| x.metric == "roost_rejected_connections_total"),
            "no roost_rejected_connections_total"
        );
    }
    assert_eq!(value(&s0, "roost_jobs", &[("state", "completed")]), 0.0);
    assert_eq!(value(&s0, "roost_checkpoints_total", &[]), 0.0);
    assert_eq!(
        value(
            &o0,
            "roost_machines",
            &[("state", "Unclaimed"), ("activity", "Idle")]
        ),
        1.0
    );
    assert_eq!(value(&o0, "roost_jobs_started_total", &[]), 0.0);

    // Without the token or a certificate: refused, and counted.
    let unauthorized = |s: &Scrape| {
        value(
            s,
            "roost_rejected_connections_total",
            &[("reason", "unauthorized")],
        )
    };
    let (status, body) = get(&pool, &mm.addr, mm.name, "/metrics", Auth::Nothing);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token"), "{body}");
    let (status, _) = get(&pool, &mm.addr, mm.name, "/metrics", Auth::Cert);
    assert_eq!(status, 200);
    assert_eq!(unauthorized(&scrape(&pool, &mm)), unauthorized(&m0) + 1.0);

    // A job that reads and writes on the submit host, checkpointed once.
    let dir = pool.job_dir("metered");
    std::fs::copy(build_job("migrate.c"), dir.join("migrate")).unwrap();
    let input: String = (0..60).map(|i| format!("line {i}\n")).collect();
    std::fs::write(dir.join("input.txt"), input).unwrap();
    let ids = pool.submit(
        &dir,
        "executable = \"migrate\"\narguments = [\"8\", \"input.txt\", \"output.txt\", \"100\"]\n\
         output = \"stdout.txt\"\n",
    );
    let id = &ids[0];
    pool.wait_event(id, "executing", 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let out = pool.roost(&["checkpoint", id]);
    assert!(
        out.status.success(),
        "roost checkpoint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ck = pool.wait_event(id, "checkpointed", 1, Duration::from_secs(30));
    assert_eq!(
        pool.wait(&ids, Duration::from_secs(40)),
        0,
        "{}",
        pool.logs()
    );

    let s1 = scrape(&pool, &schedd);
    assert_eq!(value(&s1, "roost_jobs", &[("state", "completed")]), 1.0);
    assert_eq!(value(&s1, "roost_jobs", &[("state", "running")]), 0.0);
    assert!(total(&s1, "roost_remote_calls_total") > total(&s0, "roost_remote_calls_total"));
    assert!(value(&s1, "roost_remote_calls_total", &[("call", "open")]) >= 1.0);
    assert_eq!(
        total(&s1, "roost_remote_call_seconds"),
        total(&s1, "roost_remote_calls_total"),
        "one latency per call"
    );
    assert_eq!(value(&s1, "roost_checkpoints_total", &[]), 1.0);
    assert_eq!(
        value(&s1, "roost_checkpoint_bytes_total", &[]),
        ck["bytes"].as_f64().unwrap()
    );
    assert_eq!(value(&s1, "roost_checkpoint_seconds", &[]), 1.0);
    assert_eq!(
        value(&s1, "roost_job_events_total", &[("event", "completed")]),
        1.0
    );

    // The matchmaker hears of the queue within a report or two.
    let t0 = Instant::now();
    let m1 = loop {
        let m = scrape(&pool, &mm);
        if value(&m, "roost_jobs", &[("state", "completed")]) == 1.0 {
            break m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the matchmaker's roost_jobs never showed the completed job"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(value(&m1, "roost_matches_total", &[]) >= 1.0);
    assert!(
        value(&m1, "roost_negotiation_cycle_seconds", &[])
            > value(&m0, "roost_negotiation_cycle_seconds", &[])
    );
    assert!(
        value(&m1, "roost_remote_calls_total", &[("call", "queue")])
            > value(&m0, "roost_remote_calls_total", &[("call", "queue")])
    );
    assert_eq!(
        value(&m1, "roost_checkpoint_bytes_total", &[]),
        ck["bytes"].as_f64().unwrap()
    );

    let o1 = scrape(&pool, &ownerd);
    assert_eq!(value(&o1, "roost_jobs_started_total", &[]), 1.0);
    assert!(value(&o1, "roost_activity_changes_total", &[("activity", "Busy")]) >= 1.0);

    // `roost pool urls` lists each daemon's endpoints.
    let out = pool.roost(&["pool", "urls", "--json"]);
    assert!(
        out.status.success(),
        "roost pool urls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let urls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = std::fs::read_to_string(pool.dir.join("pki/web-token")).unwrap();
    let want = serde_json::json!([
        {"daemon": "cm", "what": "pool page", "url": format!("https://{}/?token={}", mm.addr, token.trim())},
        {"daemon": "cm", "what": "metrics", "url": format!("https://{}/metrics", mm.addr)},
        {"daemon": "submit", "what": "metrics", "url": format!("https://{}/metrics", schedd.addr)},
        {"daemon": "exec1", "what": "metrics", "url": format!("https://{}/metrics", ownerd.addr)},
    ]);
    assert_eq!(urls, want);
}
