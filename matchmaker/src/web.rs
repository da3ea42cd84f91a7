//! The pool page and `/metrics`, served over HTTPS on the matchmaker's own
//! TLS port.
//!
//! A TLS client that offers ALPN `http/1.1` gets HTTPS instead of the
//! pool's framed protocol ([`proto::web::accept`]); it must bring the pool's
//! web token or a certificate from the pool CA ([`proto::web::admit`]).
//! Routes (all `GET`, read-only):
//!
//! - `/`: the page (`web/index.html`, embedded; no external resources).
//! - `/events`: Server-Sent Events; a `pool` event with the whole
//!   [`snapshot`] at once and after every change (coalesced over
//!   [`COALESCE`]), a comment every [`KEEPALIVE`].
//! - `/state`: the same snapshot once, as JSON.
//! - `/job?schedd=S&id=C.P`: one job's event log and its moves between hosts.
//! - `/metrics`: the Prometheus text format ([`crate::metrics`]).
//!
//! The page learns machines from their ads, and queues and job events from
//! the schedds' `Queue` reports ([`PoolView`]), which keep the last hour.

use crate::server::{Shared, State};
use proto::pool::{AdValue, QueueJob, QueueReport};
use proto::web::{Admission, Caller};
use proto::{HostName, JobId};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info};

/// Changes closer together than this go out as one update.
pub const COALESCE: Duration = Duration::from_millis(100);
/// How often an idle event stream carries a comment (keeps proxies open).
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// The page's window, in seconds.
pub const WINDOW: i64 = 3600;
/// The most job events kept for the page.
const MAX_EVENTS: usize = 50_000;
/// The ad attribute where an ownerd advertises its `/metrics` (`IP:PORT`).
pub const ATTR_METRICS: &str = "MetricsAddr";

const PAGE: &str = include_str!("web/index.html");

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// One job event a schedd reported.
#[derive(Debug, Clone)]
struct Event {
    schedd: HostName,
    time: i64,
    job: String,
    event: String,
    line: Value,
}

struct Queue {
    conn: u64,
    jobs: Vec<QueueJob>,
    metrics: Option<String>,
}

/// The schedds' queues and job events, as reported.
#[derive(Default)]
pub(crate) struct PoolView {
    queues: BTreeMap<HostName, Queue>,
    events: VecDeque<Event>,
    /// The newest event sequence number seen per schedd.
    seen: HashMap<HostName, i64>,
}

impl PoolView {
    /// Takes a schedd's report (sent on connection `conn`).
    pub(crate) fn report(&mut self, conn: u64, r: QueueReport) {
        let last = self.seen.get(&r.schedd).copied().unwrap_or(i64::MIN);
        let mut newest = last;
        for (seq, line) in r.events {
            if seq <= last {
                continue;
            }
            newest = newest.max(seq);
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                debug!(schedd = %r.schedd, seq, "job event that is not JSON; ignored");
                continue;
            };
            crate::metrics::job_event(&v);
            self.events.push_back(Event {
                schedd: r.schedd.clone(),
                time: v["time"].as_i64().unwrap_or(0),
                job: v["job"].as_str().unwrap_or_default().to_string(),
                event: v["event"].as_str().unwrap_or_default().to_string(),
                line: v,
            });
        }
        self.seen.insert(r.schedd.clone(), newest);
        if !self.queues.contains_key(&r.schedd) {
            info!(schedd = %r.schedd, jobs = r.jobs.len(), "queue report");
        }
        self.queues.insert(
            r.schedd,
            Queue {
                conn,
                jobs: r.jobs,
                metrics: r.metrics,
            },
        );
        self.prune(unix_now());
    }

    /// Forgets the queues that connection `conn` reported (their events stay).
    pub(crate) fn disconnect(&mut self, conn: u64) {
        self.queues.retain(|_, q| q.conn != conn);
    }

    /// Drops events older than the window, unless their job is unfinished.
    fn prune(&mut self, now: i64) {
        let live: std::collections::HashSet<(HostName, String)> = self
            .queues
            .iter()
            .flat_map(|(s, q)| {
                q.jobs
                    .iter()
                    .filter(|j| j.state != "completed" && j.state != "removed")
                    .map(move |j| (s.clone(), j.id.to_string()))
            })
            .collect();
        self.events.retain(|e| {
            e.time >= now - WINDOW || live.contains(&(e.schedd.clone(), e.job.clone()))
        });
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// Jobs by state over every queue.
    pub(crate) fn job_states(&self) -> Vec<(String, i64)> {
        let mut m: BTreeMap<String, i64> = BTreeMap::new();
        for q in self.queues.values() {
            for j in &q.jobs {
                *m.entry(j.state.clone()).or_default() += 1;
            }
        }
        m.into_iter().collect()
    }

    fn owner_of(&self, schedd: &str, job: &str) -> Option<&str> {
        self.queues
            .iter()
            .find(|(s, _)| s.0 == schedd)
            .and_then(|(_, q)| q.jobs.iter().find(|j| j.id.to_string() == job))
            .map(|j| j.owner.as_str())
    }

    /// One job's events and the hosts it ran on, in order.
    fn job(&self, schedd: &str, job: &str) -> Value {
        let evs: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| e.schedd.0 == schedd && e.job == job)
            .collect();
        let mut moves: Vec<Value> = Vec::new();
        let mut last: Option<&str> = None;
        for e in &evs {
            if e.event == "executing"
                && let Some(h) = e.line["host"].as_str()
            {
                moves.push(json!({ "time": e.time, "from": last, "to": h }));
                last = Some(h);
            }
        }
        json!({
            "schedd": schedd,
            "job": job,
            "events": evs.iter().map(|e| e.line.clone()).collect::<Vec<_>>(),
            "moves": moves,
        })
    }

    /// The last hour per minute: jobs started, suspended, checkpointed,
    /// migrated (started on another host than their previous run) and
    /// completed, and the CPU time of the jobs that completed.
    fn timeline(&self, now: i64) -> Value {
        const KINDS: [&str; 5] = [
            "started",
            "suspended",
            "checkpointed",
            "migrated",
            "completed",
        ];
        let start = now - WINDOW;
        let mut minutes = vec![[0u32; 5]; (WINDOW / 60) as usize];
        let mut totals = [0u32; 5];
        let mut cpu_secs = 0.0;
        let mut last_host: HashMap<(&HostName, &str), &str> = HashMap::new();
        let mut recent = Vec::new();
        for e in &self.events {
            let mut kinds = Vec::new();
            match e.event.as_str() {
                "executing" => {
                    kinds.push(0);
                    let host = e.line["host"].as_str().unwrap_or_default();
                    if let Some(prev) = last_host.insert((&e.schedd, &e.job), host)
                        && prev != host
                    {
                        kinds.push(3);
                    }
                }
                "suspended" => kinds.push(1),
                "checkpointed" => kinds.push(2),
                "completed" => {
                    kinds.push(4);
                    if e.time >= start {
                        cpu_secs += e.line["cpu_secs"].as_f64().unwrap_or(0.0);
                    }
                }
                _ => {}
            }
            if e.time < start {
                continue;
            }
            let m = (((e.time - start) / 60) as usize).min(minutes.len() - 1);
            for k in kinds {
                minutes[m][k] += 1;
                totals[k] += 1;
            }
            recent.push(e);
        }
        let recent: Vec<Value> = recent
            .iter()
            .rev()
            .take(40)
            .map(|e| {
                json!({
                    "time": e.time, "schedd": e.schedd.0, "job": e.job, "event": e.event,
                    "host": e.line.get("host"),
                })
            })
            .collect();
        json!({
            "start": start,
            "kinds": KINDS,
            "minutes": minutes,
            "totals": KINDS.iter().zip(totals).map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "cpu_hours": cpu_secs / 3600.0,
            "recent": recent,
        })
    }
}

fn attr_str(ad: &proto::pool::Ad, k: &str) -> Option<String> {
    match ad.get(k)? {
        AdValue::Str(s) => Some(s.clone()),
        AdValue::Expr(s) => Some(s.clone()),
        AdValue::Int(i) => Some(i.to_string()),
        AdValue::Real(r) => Some(r.to_string()),
        AdValue::Bool(b) => Some(b.to_string()),
    }
}

fn attr_num(ad: &proto::pool::Ad, k: &str) -> Option<f64> {
    match ad.get(k)? {
        AdValue::Int(i) => Some(*i as f64),
        AdValue::Real(r) => Some(*r),
        _ => None,
    }
}

/// Everything the page shows, as JSON.
pub(crate) fn snapshot(st: &State, name: &str) -> Value {
    let now = unix_now();
    let view = st.view();
    let claims = st.claims_by_machine();
    let machines: Vec<Value> = st
        .status()
        .into_iter()
        .map(|m| {
            let job = attr_str(&m.attrs, crate::ATTR_JOB_ID);
            let schedd = attr_str(&m.attrs, crate::ATTR_CLIENT_MACHINE);
            let claim = claims.get(&m.name);
            let user = claim.map(|(_, owner, _)| owner.clone()).or_else(|| {
                job.as_deref()
                    .zip(schedd.as_deref())
                    .and_then(|(j, s)| view.owner_of(s, j).map(str::to_string))
            });
            json!({
                "name": m.name.0,
                "state": m.state,
                "activity": m.activity,
                "idle": attr_num(&m.attrs, "KeyboardIdle"),
                "load": attr_num(&m.attrs, "LoadAvg"),
                "job": job.or_else(|| claim.map(|(j, _, _)| j.to_string())),
                "schedd": schedd.or_else(|| claim.map(|(_, _, s)| s.0.clone())),
                "user": user,
                "metrics": attr_str(&m.attrs, ATTR_METRICS),
            })
        })
        .collect();
    let queues: Vec<Value> = view
        .queues
        .iter()
        .map(|(s, q)| {
            json!({
                "schedd": s.0,
                "metrics": q.metrics,
                "jobs": q.jobs.iter().map(|j| json!({
                    "id": j.id.to_string(), "owner": j.owner, "state": j.state,
                    "executable": j.executable, "host": j.host.as_ref().map(|h| &h.0),
                    "runs": j.runs, "checkpoints": j.checkpoints,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "matchmaker": name,
        "now": now,
        "machines": machines,
        "queues": queues,
        "timeline": view.timeline(now),
    })
}

/// What the HTTPS side of the matchmaker needs.
pub(crate) struct Hub {
    /// Bumped on every change the page shows.
    version: watch::Sender<u64>,
    pub(crate) web: Option<proto::web::Web>,
    /// The matchmaker's name (shown on the page).
    pub(crate) name: String,
}

impl Hub {
    pub(crate) fn new(web: Option<proto::web::Web>, name: String) -> Hub {
        Hub {
            version: watch::channel(0).0,
            web,
            name,
        }
    }

    /// Something the page shows changed.
    pub(crate) fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

async fn respond(tls: &mut TlsStream<TcpStream>, status: u16, ctype: &str, body: &[u8]) {
    if let Err(e) = proto::web::respond(tls, status, ctype, &[], body).await {
        debug!("HTTP response not sent: {e}");
    }
}

/// Answers one HTTPS connection.
pub(crate) async fn serve(shared: Arc<Shared>, mut tls: TlsStream<TcpStream>) {
    let token = shared.hub.web.as_ref().and_then(|w| w.token.clone());
    let admitted = tokio::time::timeout(
        Duration::from_secs(10),
        proto::web::admit(&mut tls, token.as_deref()),
    )
    .await;
    let (req, who) = match admitted {
        Ok(Ok(Admission::Serve(req, who))) => (req, who),
        Ok(Ok(Admission::Answered)) => return,
        Ok(Ok(Admission::Refused)) => return crate::metrics::rejected("unauthorized"),
        Ok(Err(e)) => {
            debug!("HTTP request refused: {e}");
            return crate::metrics::rejected("bad request");
        }
        Err(_) => return crate::metrics::rejected("bad request"),
    };
    let who = match &who {
        Caller::Cert(p) => format!("{} ({})", p.name, p.role),
        Caller::Token => "token".to_string(),
    };
    debug!(path = %req.path, %who, "HTTP request");
    let html = "text/html; charset=utf-8";
    let js = "application/json";
    match req.path.as_str() {
        "/" | "/index.html" => respond(&mut tls, 200, html, PAGE.as_bytes()).await,
        "/state" => {
            let body = snapshot(&shared.lock(), &shared.hub.name).to_string();
            respond(&mut tls, 200, js, body.as_bytes()).await
        }
        "/metrics" => {
            let body = {
                let st = shared.lock();
                crate::metrics::render(&st.machine_states(), &st.view().job_states())
            };
            respond(
                &mut tls,
                200,
                proto::web::METRICS_CONTENT_TYPE,
                body.as_bytes(),
            )
            .await
        }
        "/job" => {
            let (Some(schedd), Some(id)) = (req.param("schedd"), req.param("id")) else {
                return respond(
                    &mut tls,
                    400,
                    "text/plain; charset=utf-8",
                    b"/job needs ?schedd=NAME&id=CLUSTER.PROC\n",
                )
                .await;
            };
            if id.parse::<JobId>().is_err() {
                let msg = format!("`{id}` is not a job id (CLUSTER.PROC)\n");
                return respond(&mut tls, 400, "text/plain; charset=utf-8", msg.as_bytes()).await;
            }
            let body = shared.lock().view().job(schedd, id).to_string();
            respond(&mut tls, 200, js, body.as_bytes()).await
        }
        "/events" => events(&shared, tls).await,
        _ => {
            respond(
                &mut tls,
                404,
                "text/plain; charset=utf-8",
                b"no such page; try / or /metrics\n",
            )
            .await
        }
    }
}

/// The Server-Sent Events stream of snapshots.
async fn events(shared: &Shared, mut tls: TlsStream<TcpStream>) {
    let mut rx = shared.hub.version.subscribe();
    if proto::web::start_sse(&mut tls).await.is_err() {
        return;
    }
    loop {
        rx.borrow_and_update();
        let body = snapshot(&shared.lock(), &shared.hub.name).to_string();
        if proto::web::sse_event(&mut tls, "pool", &body)
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                r = rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                    break;
                }
                _ = tokio::time::sleep(KEEPALIVE) => {
                    use tokio::io::AsyncWriteExt;
                    if tls.write_all(b": keepalive\n\n").await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(COALESCE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64, time: i64, event: &str, extra: Value) -> (i64, String) {
        let mut v = json!({ "time": time, "job": "1.0", "event": event });
        if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
            m.extend(e);
        }
        (seq, v.to_string())
    }

    fn report(state: &str, events: Vec<(i64, String)>) -> QueueReport {
        QueueReport {
            schedd: HostName("submit".into()),
            jobs: vec![QueueJob {
                id: JobId {
                    cluster: 1,
                    proc: 0,
                },
                owner: "ann".into(),
                state: state.into(),
                executable: "sim".into(),
                host: None,
                runs: 2,
                checkpoints: 1,
            }],
            events,
            metrics: None,
        }
    }

    #[test]
    fn events_are_kept_once_and_the_timeline_counts_moves_and_cpu() {
        let now = unix_now();
        let mut v = PoolView::default();
        v.report(
            1,
            report(
                "running",
                vec![
                    ev(1, now - 50, "submitted", json!({})),
                    ev(2, now - 40, "executing", json!({ "host": "exec1" })),
                    ev(3, now - 30, "suspended", json!({})),
                    ev(4, now - 29, "checkpointed", json!({ "bytes": 10 })),
                    ev(5, now - 28, "vacated", json!({})),
                ],
            ),
        );
        // A report that repeats records (a reconnect) adds only new ones.
        v.report(
            1,
            report(
                "completed",
                vec![
                    ev(5, now - 28, "vacated", json!({})),
                    ev(6, now - 20, "executing", json!({ "host": "exec2" })),
                    ev(7, now - 5, "completed", json!({ "cpu_secs": 5400.0 })),
                ],
            ),
        );
        let t = v.timeline(now);
        assert_eq!(
            t["totals"],
            json!({"started": 2, "suspended": 1, "checkpointed": 1, "migrated": 1, "completed": 1})
        );
        assert_eq!(t["cpu_hours"], json!(1.5));
        assert_eq!(t["recent"].as_array().unwrap().len(), 7);
        let j = v.job("submit", "1.0");
        assert_eq!(j["events"].as_array().unwrap().len(), 7);
        let moves: Vec<(Value, Value)> = j["moves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["from"].clone(), m["to"].clone()))
            .collect();
        assert_eq!(
            moves,
            vec![
                (Value::Null, json!("exec1")),
                (json!("exec1"), json!("exec2"))
            ]
        );
        assert_eq!(v.job_states(), vec![("completed".to_string(), 1)]);
        // The schedd leaves: its queue goes, the hour's events stay.
        v.disconnect(1);
        assert!(v.job_states().is_empty());
        assert_eq!(
            v.job("submit", "1.0")["events"].as_array().unwrap().len(),
            7
        );
    }

    #[test]
    fn a_finished_job_s_old_events_leave_the_window() {
        let now = unix_now();
        let mut v = PoolView::default();
        v.report(
            1,
            report(
                "completed",
                vec![
                    ev(1, now - 2 * WINDOW, "executing", json!({ "host": "exec1" })),
                    ev(2, now - 10, "completed", json!({ "cpu_secs": 1.0 })),
                ],
            ),
        );
        let t = v.timeline(now);
        assert_eq!(t["totals"]["started"], json!(0));
        assert_eq!(t["totals"]["completed"], json!(1));
        assert_eq!(
            v.job("submit", "1.0")["events"].as_array().unwrap().len(),
            1
        );
    }
}
