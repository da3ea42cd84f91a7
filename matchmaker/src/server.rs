//! The matchmaker's TLS server and pool state.
//!
//! Every connection is a task. An ownerd keeps one connection open and sends
//! its [`MachineAd`] on change; the matchmaker keeps the latest ad per
//! machine and forgets the machine when that connection closes. A schedd
//! sends its idle jobs (the whole list, which replaces the previous one) and
//! `Release`s. A negotiation cycle runs when a job or a free machine appears
//! and on a timer; each pairing becomes a claim, pushed as `Claim` to the
//! ownerd and as `Matches` to the schedd.
//!
//! A claim is *matched* until the machine's ad names the claimed job
//! ([`ATTR_JOB_ID`], [`ATTR_CLIENT_MACHINE`]), then *taken* until an ad no
//! longer names it or the schedd releases it. A claim not taken within
//! [`CLAIM_ACK_TIMEOUT`] is withdrawn (`Release` to both sides).

use crate::negotiate::{self, FairShare, Options, Pairing, UNCLAIMED};
use crate::{ATTR_CLIENT_MACHINE, ATTR_JOB_ID, MatchmakerError};
use proto::frame::{MAX_FRAME, read_frame_async, write_frame_async};
use proto::pool::{AdValue, FromMatchmaker, JobAd, MachineAd, Match, ToMatchmaker};
use proto::tls::{Identity, PeerIdentity};
use proto::{ClaimId, HostName, JobId, ProtoError};
use rand::RngCore;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

/// How long a machine may take to show a claim in its ad.
pub const CLAIM_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// A job whose claim ended is not matched again for this long, so that a
/// job list the schedd sent before it heard of the match cannot start it twice.
pub const REMATCH_DELAY: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for one peer; a peer that lets this many pile up is cut off.
const OUTBOX: usize = 256;
/// The machine state the matchmaker shows while a claim is not yet taken.
const MATCHED: &str = "Matched";
/// The machine state while its owner uses it.
const OWNER: &str = "Owner";

type Outbox = mpsc::Sender<FromMatchmaker>;

/// `e` and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn new_claim() -> ClaimId {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    ClaimId(hex::encode(b))
}

struct MachineEntry {
    ad: MachineAd,
    /// `ad.attrs` parsed (an attribute that does not parse is `error`).
    parsed: Arc<policies::Ad>,
    conn: u64,
    tx: Outbox,
    claim: Option<ClaimId>,
}

struct ScheddEntry {
    addr: String,
    conn: u64,
    tx: Outbox,
    /// Idle jobs without a claim, with the counter value when first seen
    /// and the parsed ad with its [`negotiate::job_key`].
    jobs: Vec<(JobAd, u64, Arc<policies::Ad>, u64)>,
}

struct ClaimEntry {
    job: JobId,
    owner: String,
    /// The job's ad, for the machine's rank of it (preemption).
    job_ad: Arc<policies::Ad>,
    schedd: HostName,
    machine: HostName,
    /// The machine's ad has named the job.
    taken: bool,
    made: Instant,
}

/// Everything the matchmaker knows. Methods take `now` so tests can drive time.
pub(crate) struct State {
    machines: BTreeMap<HostName, MachineEntry>,
    schedds: BTreeMap<HostName, ScheddEntry>,
    claims: HashMap<ClaimId, ClaimEntry>,
    /// Jobs whose claim ended recently: (schedd, job) → when.
    recent: HashMap<(HostName, JobId), Instant>,
    seq: u64,
    opts: Options,
    share: FairShare,
    /// When usage was last added to `share`.
    accrued: Instant,
    /// Machines being vacated for a job that preempted them: machine →
    /// (schedd, job, since). The machine goes to that job once free.
    reserved: HashMap<HostName, (HostName, JobId, Instant)>,
    /// The schedds' queues and job events, for the pool page.
    view: crate::web::PoolView,
}

/// How long a preempting job keeps the machine it vacated reserved.
pub const RESERVATION: Duration = Duration::from_secs(60);

/// Negotiation settings of a matchmaker.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Seconds between timer-driven cycles.
    pub cycle: Duration,
    /// Half-life of the users' accumulated usage.
    pub half_life: Duration,
    pub preempt_rank: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cycle: Duration::from_secs(2),
            half_life: Duration::from_secs(86_400),
            preempt_rank: true,
        }
    }
}

/// An idle job offered to one cycle.
struct Offer {
    schedd: HostName,
    addr: String,
    job: JobId,
    owner: String,
    parsed: Arc<policies::Ad>,
    seen: u64,
    key: u64,
}

/// Does `ad` say its machine runs `job` for `schedd`?
fn names_job(ad: &MachineAd, job: JobId, schedd: &HostName) -> bool {
    let is = |k: &str, v: &str| matches!(ad.attrs.get(k), Some(AdValue::Str(s)) if s == v);
    is(ATTR_JOB_ID, &job.to_string()) && is(ATTR_CLIENT_MACHINE, &schedd.0)
}

impl State {
    pub(crate) fn new(settings: Settings, now: Instant) -> State {
        State {
            machines: BTreeMap::new(),
            schedds: BTreeMap::new(),
            claims: HashMap::new(),
            recent: HashMap::new(),
            seq: 0,
            opts: Options {
                preempt_rank: settings.preempt_rank,
            },
            share: FairShare::new(settings.half_life),
            accrued: now,
            reserved: HashMap::new(),
            view: crate::web::PoolView::default(),
        }
    }

    /// The schedds' queues and job events.
    pub(crate) fn view(&self) -> &crate::web::PoolView {
        &self.view
    }

    /// Takes a schedd's queue report.
    pub(crate) fn queue_report(&mut self, conn: u64, r: proto::pool::QueueReport) {
        self.view.report(conn, r);
    }

    /// Each claimed machine's job, the job's owner and its schedd.
    pub(crate) fn claims_by_machine(&self) -> HashMap<HostName, (JobId, String, HostName)> {
        self.claims
            .values()
            .map(|c| {
                (
                    c.machine.clone(),
                    (c.job, c.owner.clone(), c.schedd.clone()),
                )
            })
            .collect()
    }

    /// How many machines are in each state (as `roost status` shows them).
    pub(crate) fn machine_states(&self) -> Vec<(String, i64)> {
        let mut m: BTreeMap<String, i64> = BTreeMap::new();
        for ad in self.status() {
            *m.entry(ad.state).or_default() += 1;
        }
        m.into_iter().collect()
    }

    /// Stores a machine's ad. Returns true when the machine may now take a job.
    pub(crate) fn machine_ad(
        &mut self,
        conn: u64,
        tx: &Outbox,
        ad: MachineAd,
        now: Instant,
    ) -> bool {
        let name = ad.name.clone();
        let mut ended = None;
        let was_free = self
            .machines
            .get(&name)
            .is_some_and(|m| m.claim.is_none() && m.ad.state == UNCLAIMED);
        let entry = self.machines.entry(name.clone()).or_insert_with(|| {
            info!(machine = %name, state = %ad.state, "machine joined");
            MachineEntry {
                ad: ad.clone(),
                parsed: Arc::new(policies::Ad::new()),
                conn,
                tx: tx.clone(),
                claim: None,
            }
        });
        if entry.conn != conn {
            info!(machine = %name, "machine reconnected");
            entry.conn = conn;
            entry.tx = tx.clone();
        }
        if entry.ad.state != ad.state || entry.ad.activity != ad.activity {
            info!(machine = %name, state = %ad.state, activity = %ad.activity, "machine changed state");
        }
        if let Some(c) = entry.claim.clone()
            && let Some(ce) = self.claims.get_mut(&c)
        {
            let named = names_job(&ad, ce.job, &ce.schedd);
            if named && !ce.taken {
                ce.taken = true;
                info!(machine = %name, job = %ce.job, claim = %c, "claim taken");
            } else if !named && ce.taken {
                ended = Some((c, "the machine no longer runs the job", false));
            } else if !named && ad.state == OWNER {
                // An ownerd refuses claims while its owner is active.
                ended = Some((c, "the owner came back before the job started", true));
            }
        }
        entry.parsed = Arc::new(policies::Ad::from_wire_lossy(&ad.attrs));
        entry.ad = ad;
        if let Some((c, why, tell_schedd)) = ended {
            self.end_claim(&c, why, false, tell_schedd, now);
        }
        let free = self
            .machines
            .get(&name)
            .is_some_and(|m| m.claim.is_none() && m.ad.state == UNCLAIMED);
        free && !was_free
    }

    /// Replaces a schedd's idle jobs. Returns true when a job is new.
    pub(crate) fn jobs(
        &mut self,
        conn: u64,
        tx: &Outbox,
        schedd: HostName,
        addr: String,
        jobs: Vec<JobAd>,
    ) -> bool {
        let entry = self.schedds.entry(schedd.clone()).or_insert_with(|| {
            info!(schedd = %schedd, addr = %addr, "schedd joined");
            ScheddEntry {
                addr: addr.clone(),
                conn,
                tx: tx.clone(),
                jobs: Vec::new(),
            }
        });
        if entry.conn != conn {
            info!(schedd = %schedd, "schedd reconnected");
            entry.conn = conn;
            entry.tx = tx.clone();
        }
        entry.addr = addr;
        let old: HashMap<JobId, u64> = entry.jobs.iter().map(|(a, s, _, _)| (a.job, *s)).collect();
        let mut fresh = false;
        let mut seen = HashSet::new();
        let mut list = Vec::with_capacity(jobs.len());
        for ad in jobs {
            if !seen.insert(ad.job) {
                continue;
            }
            let s = match old.get(&ad.job) {
                Some(&s) => s,
                None => {
                    fresh = true;
                    self.seq += 1;
                    self.seq
                }
            };
            let mut parsed = policies::Ad::from_wire_lossy(&ad.attrs);
            // The schedd vouches for the owner; the ad cannot say otherwise.
            parsed.set("Owner", ad.owner.as_str());
            let key = negotiate::job_key(&parsed);
            list.push((ad, s, Arc::new(parsed), key));
        }
        debug!(schedd = %schedd, idle = list.len(), "job list");
        entry.jobs = list;
        fresh
    }

    /// A schedd ends one of its claims. Returns true when a machine was freed.
    pub(crate) fn release(&mut self, schedd: &HostName, claim: &ClaimId, now: Instant) -> bool {
        match self.claims.get(claim) {
            Some(c) if &c.schedd == schedd => {
                self.end_claim(claim, "released by the schedd", true, false, now);
                true
            }
            Some(_) => {
                warn!(schedd = %schedd, claim = %claim, "schedd released a claim it does not hold; ignored");
                false
            }
            None => {
                debug!(schedd = %schedd, claim = %claim, "release of an unknown or ended claim");
                false
            }
        }
    }

    /// Forgets what connection `conn` advertised.
    pub(crate) fn disconnect(&mut self, conn: u64, now: Instant) {
        let gone: Vec<HostName> = self
            .machines
            .iter()
            .filter(|(_, m)| m.conn == conn)
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(c) = self.machines.get(&name).and_then(|m| m.claim.clone()) {
                // A taken claim's starter talks to the schedd directly and
                // may outlive this connection; only an untaken one is void.
                let taken = self.claims.get(&c).is_some_and(|c| c.taken);
                self.end_claim(&c, "the machine left the pool", false, !taken, now);
            }
            self.machines.remove(&name);
            info!(machine = %name, "machine left");
        }
        self.view.disconnect(conn);
        self.schedds.retain(|name, s| {
            if s.conn == conn {
                info!(schedd = %name, "schedd left");
            }
            s.conn != conn
        });
    }

    /// Ends a claim; tells the ownerd and/or the schedd with `Release`.
    fn end_claim(
        &mut self,
        claim: &ClaimId,
        why: &str,
        tell_ownerd: bool,
        tell_schedd: bool,
        now: Instant,
    ) {
        let Some(c) = self.claims.remove(claim) else {
            return;
        };
        info!(machine = %c.machine, job = %c.job, schedd = %c.schedd, claim = %claim, "claim ended: {why}");
        self.recent.insert((c.schedd.clone(), c.job), now);
        if let Some(m) = self.machines.get_mut(&c.machine)
            && m.claim.as_ref() == Some(claim)
        {
            m.claim = None;
            if tell_ownerd {
                let _ = m.tx.try_send(FromMatchmaker::Release {
                    claim: claim.clone(),
                });
            }
        }
        if tell_schedd && let Some(s) = self.schedds.get(&c.schedd) {
            let _ = s.tx.try_send(FromMatchmaker::Release {
                claim: claim.clone(),
            });
        }
    }

    /// The machines as `roost status` shows them.
    pub(crate) fn status(&self) -> Vec<MachineAd> {
        self.machines
            .values()
            .map(|m| {
                let mut ad = m.ad.clone();
                if m.claim
                    .as_ref()
                    .and_then(|c| self.claims.get(c))
                    .is_some_and(|c| !c.taken)
                {
                    ad.state = MATCHED.into();
                }
                ad
            })
            .collect()
    }

    /// Adds the claims held since the last call to the users' usage.
    fn accrue(&mut self, now: Instant) {
        let mut held: HashMap<String, u32> = HashMap::new();
        for c in self.claims.values() {
            *held.entry(c.owner.clone()).or_insert(0) += 1;
        }
        self.share
            .accrue(&held, now.saturating_duration_since(self.accrued));
        self.accrued = now;
    }

    /// The machines as one cycle sees them.
    fn cycle_machines(&self) -> Vec<negotiate::Machine> {
        self.machines
            .values()
            .map(|m| {
                let claim = m.claim.as_ref().and_then(|c| self.claims.get(c));
                negotiate::Machine {
                    name: m.ad.name.clone(),
                    ad: m.parsed.clone(),
                    free: m.claim.is_none()
                        && m.ad.state == UNCLAIMED
                        && !self.reserved.contains_key(&m.ad.name),
                    running: claim
                        .filter(|c| c.taken && !self.reserved.contains_key(&m.ad.name))
                        .map(|c| negotiate::Running {
                            owner: c.owner.clone(),
                            ad: c.job_ad.clone(),
                        }),
                }
            })
            .collect()
    }

    /// `roost why`: the job against every machine known.
    pub(crate) fn why(&self, job: &JobAd) -> proto::pool::WhyReport {
        let mut parsed = policies::Ad::from_wire_lossy(&job.attrs);
        parsed.set("Owner", job.owner.as_str());
        let machines: Vec<(HostName, policies::Ad)> = self
            .machines
            .values()
            .map(|m| (m.ad.name.clone(), (*m.parsed).clone()))
            .collect();
        negotiate::why(job.job, &parsed, &machines)
    }

    /// One negotiation cycle. Returns the claims made.
    pub(crate) fn cycle(&mut self, now: Instant) -> Vec<Match> {
        let expired: Vec<ClaimId> = self
            .claims
            .iter()
            .filter(|(_, c)| !c.taken && now.duration_since(c.made) >= CLAIM_ACK_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        for c in expired {
            self.end_claim(&c, "the machine did not take it in time", true, true, now);
        }
        self.recent
            .retain(|_, t| now.duration_since(*t) < REMATCH_DELAY);
        self.accrue(now);
        let machines = &self.machines;
        self.reserved.retain(|m, (_, job, since)| {
            let keep = now.duration_since(*since) < RESERVATION && machines.contains_key(m);
            if !keep {
                info!(machine = %m, job = %job, "reservation for the preempting job ended");
            }
            keep
        });

        let claimed: HashSet<(&HostName, JobId)> =
            self.claims.values().map(|c| (&c.schedd, c.job)).collect();
        let mut offers = Vec::new();
        for (name, s) in &self.schedds {
            for (ad, seen, parsed, key) in &s.jobs {
                if claimed.contains(&(name, ad.job))
                    || self.recent.contains_key(&(name.clone(), ad.job))
                {
                    continue;
                }
                offers.push(Offer {
                    schedd: name.clone(),
                    addr: s.addr.clone(),
                    job: ad.job,
                    owner: ad.owner.clone(),
                    parsed: parsed.clone(),
                    seen: *seen,
                    key: *key,
                });
            }
        }
        if offers.is_empty() {
            return Vec::new();
        }

        // A vacated machine goes to the job that preempted it.
        let mut pairs: Vec<(HostName, usize)> = Vec::new();
        let mut reserved_jobs: HashSet<usize> = HashSet::new();
        let mut done_reservations = Vec::new();
        for (machine, (schedd, job, _)) in &self.reserved {
            let Some(i) = offers
                .iter()
                .position(|o| &o.schedd == schedd && o.job == *job)
            else {
                continue;
            };
            reserved_jobs.insert(i);
            let Some(m) = self.machines.get(machine) else {
                continue;
            };
            if m.claim.is_none() && m.ad.state == UNCLAIMED {
                done_reservations.push(machine.clone());
                if policies::symmetric_match(&offers[i].parsed, &m.parsed) {
                    pairs.push((machine.clone(), i));
                }
            }
        }
        for m in done_reservations {
            self.reserved.remove(&m);
        }

        let cycle_machines = self.cycle_machines();
        let index: Vec<usize> = (0..offers.len())
            .filter(|i| !reserved_jobs.contains(i))
            .collect();
        let cycle_jobs: Vec<negotiate::Job> = index
            .iter()
            .map(|&i| negotiate::Job {
                owner: offers[i].owner.clone(),
                ad: offers[i].parsed.clone(),
                seen: offers[i].seen,
                key: offers[i].key,
            })
            .collect();
        let outcome = negotiate::negotiate(&cycle_machines, &cycle_jobs, &self.share, self.opts);
        for Pairing { machine, job } in outcome.matches {
            pairs.push((cycle_machines[machine].name.clone(), index[job]));
        }
        for Pairing { machine, job } in outcome.preemptions {
            let name = &cycle_machines[machine].name;
            let o = &offers[index[job]];
            let Some(m) = self.machines.get(name) else {
                continue;
            };
            let Some(claim) = m.claim.clone() else {
                continue;
            };
            let reason = format!(
                "preempted by job {} of {} (the machine ranks it higher)",
                o.job, o.owner
            );
            info!(machine = %name, claim = %claim, job = %o.job, owner = %o.owner, "preempting");
            if let Err(e) = m.tx.try_send(FromMatchmaker::Vacate { claim, reason }) {
                warn!(machine = %name, "cannot tell the machine to vacate ({e})");
                continue;
            }
            self.reserved
                .insert(name.clone(), (o.schedd.clone(), o.job, now));
        }

        let mut made = Vec::new();
        let mut per_schedd: BTreeMap<HostName, Vec<Match>> = BTreeMap::new();
        let mut used = HashSet::new();
        for (machine, i) in pairs {
            let j = &offers[i];
            if !used.insert(machine.clone()) {
                continue;
            }
            let claim = new_claim();
            let Some(entry) = self.machines.get_mut(&machine) else {
                continue;
            };
            entry.claim = Some(claim.clone());
            info!(job = %j.job, owner = %j.owner, schedd = %j.schedd, machine = %machine, claim = %claim, "matched");
            self.claims.insert(
                claim.clone(),
                ClaimEntry {
                    job: j.job,
                    owner: j.owner.clone(),
                    job_ad: j.parsed.clone(),
                    schedd: j.schedd.clone(),
                    machine: machine.clone(),
                    taken: false,
                    made: now,
                },
            );
            if let Some(s) = self.schedds.get_mut(&j.schedd) {
                s.jobs.retain(|(a, _, _, _)| a.job != j.job);
            }
            let mt = Match {
                job: j.job,
                machine,
                claim,
            };
            per_schedd
                .entry(j.schedd.clone())
                .or_default()
                .push(mt.clone());
            made.push((mt, j.schedd.clone(), j.addr.clone()));
        }
        // The schedd hears of its claims before any starter can attach with one.
        let mut unsent = HashSet::new();
        for (schedd, matches) in per_schedd {
            let sent = self
                .schedds
                .get(&schedd)
                .map(|s| s.tx.try_send(FromMatchmaker::Matches(matches)));
            if let Some(Err(e)) = sent {
                warn!(schedd = %schedd, "cannot send matches to the schedd ({e}); withdrawing them");
                unsent.insert(schedd);
            }
        }
        let mut out = Vec::with_capacity(made.len());
        for (mt, schedd, addr) in made {
            if unsent.contains(&schedd) {
                self.end_claim(
                    &mt.claim,
                    "the schedd did not take the match",
                    false,
                    false,
                    now,
                );
                continue;
            }
            let push = FromMatchmaker::Claim {
                claim: mt.claim.clone(),
                job: mt.job,
                schedd,
                addr,
            };
            let pushed = self.machines.get(&mt.machine).map(|m| m.tx.try_send(push));
            if let Some(Err(e)) = pushed {
                warn!(machine = %mt.machine, "cannot push the claim to the machine ({e}); withdrawing it");
                self.end_claim(
                    &mt.claim,
                    "the machine did not take the claim",
                    false,
                    true,
                    now,
                );
                continue;
            }
            out.push(mt);
        }
        out
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    wake: Notify,
    /// The pool page's change notices and HTTPS set-up.
    pub(crate) hub: crate::web::Hub,
    /// The pool's deny list: a peer revoked while connected is dropped at
    /// its next message.
    deny: Arc<proto::tls::DenyList>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough data: the
        // maps are updated in single steps.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles one message (timed and counted by kind); `Err` is a
    /// refusal that closes the connection.
    fn handle(
        &self,
        conn: u64,
        peer: &PeerIdentity,
        tx: &Outbox,
        msg: ToMatchmaker,
    ) -> Result<Option<FromMatchmaker>, String> {
        let kind = match &msg {
            ToMatchmaker::Machine(_) => "machine",
            ToMatchmaker::Jobs { .. } => "jobs",
            ToMatchmaker::Release { .. } => "release",
            ToMatchmaker::Status => "status",
            ToMatchmaker::Why { .. } => "why",
            ToMatchmaker::Queue(_) => "queue",
        };
        let shows = matches!(kind, "machine" | "jobs" | "release" | "queue");
        let t0 = std::time::Instant::now();
        let r = self.handle_one(conn, peer, tx, msg);
        crate::metrics::call(kind, t0.elapsed());
        if shows && r.is_ok() {
            self.hub.changed();
        }
        r
    }

    fn handle_one(
        &self,
        conn: u64,
        peer: &PeerIdentity,
        tx: &Outbox,
        msg: ToMatchmaker,
    ) -> Result<Option<FromMatchmaker>, String> {
        let role = |want: &str, what: &str| {
            if peer.role == want {
                Ok(())
            } else {
                Err(format!(
                    "a certificate with role `{}` may not send {what} (only `{want}` may)",
                    peer.role
                ))
            }
        };
        let now = Instant::now();
        match msg {
            ToMatchmaker::Machine(ad) => {
                role("ownerd", "a machine ad")?;
                if ad.name.0 != peer.name {
                    return Err(format!(
                        "`{}` may not advertise machine `{}`",
                        peer.name, ad.name
                    ));
                }
                if self.lock().machine_ad(conn, tx, ad, now) {
                    self.wake.notify_one();
                }
                Ok(None)
            }
            ToMatchmaker::Jobs { schedd, addr, jobs } => {
                role("schedd", "jobs")?;
                if schedd.0 != peer.name {
                    return Err(format!(
                        "`{}` may not send jobs for schedd `{schedd}`",
                        peer.name
                    ));
                }
                if self.lock().jobs(conn, tx, schedd, addr, jobs) {
                    self.wake.notify_one();
                }
                Ok(None)
            }
            ToMatchmaker::Release { claim } => {
                role("schedd", "a release")?;
                if self
                    .lock()
                    .release(&HostName(peer.name.clone()), &claim, now)
                {
                    self.wake.notify_one();
                }
                Ok(None)
            }
            ToMatchmaker::Queue(report) => {
                role("schedd", "a queue report")?;
                if report.schedd.0 != peer.name {
                    return Err(format!(
                        "`{}` may not report the queue of schedd `{}`",
                        peer.name, report.schedd
                    ));
                }
                self.lock().queue_report(conn, report);
                Ok(None)
            }
            ToMatchmaker::Status => Ok(Some(FromMatchmaker::Machines(self.lock().status()))),
            ToMatchmaker::Why { job } => Ok(Some(FromMatchmaker::Why(self.lock().why(&job)))),
        }
    }
}

/// A bound matchmaker, ready to [`run`](Matchmaker::run).
pub struct Matchmaker {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    cycle: Duration,
}

impl Matchmaker {
    /// Binds `listen` with `identity`'s certificate; negotiates every `cycle`
    /// and on events, with the default [`Settings`] otherwise (see [`Matchmaker::settings`]).
    pub async fn bind(
        identity: &Identity,
        listen: &str,
        cycle: Duration,
    ) -> Result<Matchmaker, MatchmakerError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| MatchmakerError::Bind {
                addr: listen.into(),
                source,
            })?;
        Ok(Matchmaker {
            listener,
            tls: identity.server.clone(),
            shared: Arc::new(Shared {
                deny: identity.deny.clone(),
                hub: crate::web::Hub::new(None, identity.name.clone()),
                state: Mutex::new(State::new(
                    Settings {
                        cycle,
                        ..Settings::default()
                    },
                    Instant::now(),
                )),
                wake: Notify::new(),
            }),
            cycle,
        })
    }

    /// Replaces the negotiation settings (cycle period, fair-share
    /// half-life, rank preemption).
    pub fn settings(mut self, s: Settings) -> Matchmaker {
        self.cycle = s.cycle;
        let mut st = self.shared.lock();
        st.opts = Options {
            preempt_rank: s.preempt_rank,
        };
        st.share = FairShare::new(s.half_life);
        drop(st);
        self
    }

    /// Serves the pool page and `/metrics` to HTTPS clients (ALPN
    /// `http/1.1`) on the same port, with `web`'s certificate set-up and token.
    pub fn web(mut self, web: proto::web::Web) -> Matchmaker {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.hub.web = Some(web);
        }
        self
    }

    pub fn local_addr(&self) -> Result<SocketAddr, MatchmakerError> {
        self.listener
            .local_addr()
            .map_err(MatchmakerError::LocalAddr)
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), MatchmakerError> {
        let Matchmaker {
            listener,
            tls,
            shared,
            cycle,
        } = self;
        info!(addr = %listener.local_addr().map_err(MatchmakerError::LocalAddr)?, "matchmaker listening");
        let (stop_tx, stop_rx) = watch::channel(false);
        let cycler = tokio::spawn(cycle_loop(shared.clone(), cycle, stop_rx.clone()));
        let next_conn = AtomicU64::new(1);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok((stream, peer)) => {
                        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(serve(shared.clone(), tls.clone(), stream, peer, conn, stop_rx.clone()));
                    }
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        info!("matchmaker shutting down");
        let _ = stop_tx.send(true);
        cycler.abort();
        Ok(())
    }
}

async fn cycle_loop(shared: Arc<Shared>, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let started = std::time::Instant::now();
        let made = shared.lock().cycle(Instant::now());
        let m = crate::metrics::get();
        m.cycle_seconds.observe(started.elapsed().as_secs_f64());
        m.matches.inc_by(made.len() as u64);
        if !made.is_empty() {
            shared.hub.changed();
            debug!(
                matches = made.len(),
                micros = started.elapsed().as_micros() as u64,
                "negotiation cycle"
            );
        }
    }
}

async fn serve(
    shared: Arc<Shared>,
    pool_tls: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    addr: SocketAddr,
    conn: u64,
    mut stop: watch::Receiver<bool>,
) {
    // HTTPS clients (ALPN http/1.1) get the pool page; pool members the frames.
    let web = shared.hub.web.as_ref().map(|w| &w.config);
    let accept = proto::web::accept(stream, &pool_tls, web);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(proto::web::Accepted::Pool(t))) => t,
        Ok(Ok(proto::web::Accepted::Web(t))) => return crate::web::serve(shared, t).await,
        Ok(Err(e)) => {
            crate::metrics::rejected("tls");
            warn!(peer = %addr, "TLS handshake refused: {}", chain(&e));
            return;
        }
        Err(_) => {
            crate::metrics::rejected("tls");
            warn!(peer = %addr, "TLS handshake timed out");
            return;
        }
    };
    let Some(peer) = proto::tls::server_peer(&tls) else {
        crate::metrics::rejected("certificate");
        warn!(peer = %addr, "certificate names no holder or role; closing");
        return;
    };
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    let span = info_span!("conn", peer = %peer.name, role = %peer.role, id = conn);
    async move {
        debug!(%addr, "connected");
        let (mut rd, mut wr) = tokio::io::split(tls);
        let (tx, mut rx) = mpsc::channel::<FromMatchmaker>(OUTBOX);
        let mut writer = tokio::spawn(
            async move {
                while let Some(m) = rx.recv().await {
                    if let Err(e) = write_frame_async(&mut wr, &m).await {
                        debug!("write failed: {}", chain(&e));
                        return;
                    }
                }
                let _ = wr.shutdown().await;
            }
            .in_current_span(),
        );
        loop {
            let r: Result<ToMatchmaker, ProtoError> = tokio::select! {
                r = read_frame_async(&mut rd, MAX_FRAME) => r,
                _ = stop.changed() => break,
            };
            // Revoked since the handshake (the deny list changed): closed.
            if let Some(c) = &cert
                && shared.deny.check(c).is_err()
            {
                crate::metrics::rejected("revoked");
                warn!("the peer's certificate was revoked while connected; closing");
                break;
            }
            match r {
                Ok(msg) => match shared.handle(conn, &peer, &tx, msg) {
                    Ok(Some(reply)) => {
                        if tx.try_send(reply).is_err() {
                            warn!("peer does not read its replies; closing");
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(why) => {
                        crate::metrics::rejected("refused");
                        warn!("refused: {why}; closing");
                        let _ = tx.try_send(FromMatchmaker::Error { message: why });
                        break;
                    }
                },
                Err(ProtoError::Closed) => {
                    debug!("closed by peer");
                    break;
                }
                Err(e) => {
                    warn!("bad frame, closing: {}", chain(&e));
                    break;
                }
            }
        }
        shared.lock().disconnect(conn, Instant::now());
        shared.wake.notify_one();
        shared.hub.changed();
        drop(tx);
        // Let queued messages (e.g. a refusal) go out, then close.
        if tokio::time::timeout(Duration::from_secs(5), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::pool::Ad;

    fn ad(name: &str, state: &str, running: Option<(&str, &str)>) -> MachineAd {
        let mut attrs = Ad::new();
        if let Some((job, schedd)) = running {
            attrs.insert(ATTR_JOB_ID.into(), AdValue::Str(job.into()));
            attrs.insert(ATTR_CLIENT_MACHINE.into(), AdValue::Str(schedd.into()));
        }
        MachineAd {
            name: HostName(name.into()),
            state: state.into(),
            activity: "Idle".into(),
            attrs,
        }
    }

    fn job(cluster: u64) -> JobAd {
        JobAd {
            job: JobId { cluster, proc: 0 },
            owner: "ann".into(),
            attrs: Ad::new(),
        }
    }

    fn drain(rx: &mut mpsc::Receiver<FromMatchmaker>) -> Vec<FromMatchmaker> {
        let mut v = Vec::new();
        while let Ok(m) = rx.try_recv() {
            v.push(m);
        }
        v
    }

    struct Pool {
        st: State,
        own_tx: Outbox,
        own_rx: mpsc::Receiver<FromMatchmaker>,
        sch_tx: Outbox,
        sch_rx: mpsc::Receiver<FromMatchmaker>,
        t0: Instant,
    }

    /// exec1 (conn 1, Unclaimed) and schedd `submit` (conn 2) with job 1.0, after one cycle.
    fn matched_pool() -> (Pool, ClaimId) {
        let (own_tx, own_rx) = mpsc::channel(16);
        let (sch_tx, sch_rx) = mpsc::channel(16);
        let mut p = Pool {
            st: State::new(Settings::default(), Instant::now()),
            own_tx,
            own_rx,
            sch_tx,
            sch_rx,
            t0: Instant::now(),
        };
        assert!(p.st.machine_ad(1, &p.own_tx, ad("exec1", "Unclaimed", None), p.t0));
        assert!(p.st.jobs(
            2,
            &p.sch_tx,
            HostName("submit".into()),
            "10.0.0.2:9618".into(),
            vec![job(1)]
        ));
        let made = p.st.cycle(p.t0);
        assert_eq!(made.len(), 1);
        let claim = made[0].claim.clone();
        assert_eq!(claim.0.len(), 64);
        assert!(claim.0.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            drain(&mut p.own_rx),
            vec![FromMatchmaker::Claim {
                claim: claim.clone(),
                job: JobId {
                    cluster: 1,
                    proc: 0
                },
                schedd: HostName("submit".into()),
                addr: "10.0.0.2:9618".into(),
            }]
        );
        assert_eq!(
            drain(&mut p.sch_rx),
            vec![FromMatchmaker::Matches(vec![Match {
                job: JobId {
                    cluster: 1,
                    proc: 0
                },
                machine: HostName("exec1".into()),
                claim: claim.clone()
            }])]
        );
        assert_eq!(p.st.status()[0].state, "Matched");
        (p, claim)
    }

    #[test]
    fn matched_job_is_not_matched_twice_while_claimed() {
        let (mut p, _) = matched_pool();
        // A stale list from the schedd still names 1.0; a second machine appears.
        p.st.jobs(
            2,
            &p.sch_tx,
            HostName("submit".into()),
            "10.0.0.2:9618".into(),
            vec![job(1)],
        );
        let (tx2, mut rx2) = mpsc::channel(16);
        p.st.machine_ad(3, &tx2, ad("exec2", "Unclaimed", None), p.t0);
        assert!(p.st.cycle(p.t0).is_empty());
        assert!(drain(&mut rx2).is_empty());
        // An ad sent before the ownerd saw the claim does not free the machine.
        p.st.machine_ad(1, &p.own_tx, ad("exec1", "Unclaimed", None), p.t0);
        assert_eq!(p.st.status()[0].state, "Matched");
    }

    #[test]
    fn claim_taken_then_finished_frees_the_machine_after_the_rematch_delay() {
        let (mut p, _) = matched_pool();
        p.st.machine_ad(
            1,
            &p.own_tx,
            ad("exec1", "Claimed", Some(("1.0", "submit"))),
            p.t0,
        );
        assert_eq!(p.st.status()[0].state, "Claimed");
        // The job ends; the ownerd advertises Unclaimed without the job.
        let t1 = p.t0 + Duration::from_secs(3);
        assert!(p.st.machine_ad(1, &p.own_tx, ad("exec1", "Unclaimed", None), t1));
        assert_eq!(p.st.status()[0].state, "Unclaimed");
        // The schedd's stale list still shows 1.0 idle: not rematched yet.
        p.st.jobs(
            2,
            &p.sch_tx,
            HostName("submit".into()),
            "10.0.0.2:9618".into(),
            vec![job(1), job(2)],
        );
        let made = p.st.cycle(t1);
        assert_eq!(
            made.iter().map(|m| m.job.cluster).collect::<Vec<_>>(),
            vec![2]
        );
        p.st.machine_ad(
            1,
            &p.own_tx,
            ad("exec1", "Claimed", Some(("2.0", "submit"))),
            t1,
        );
        p.st.machine_ad(1, &p.own_tx, ad("exec1", "Unclaimed", None), t1);
        assert!(p.st.cycle(t1).is_empty());
        let made = p.st.cycle(t1 + REMATCH_DELAY);
        assert_eq!(
            made.iter().map(|m| m.job.cluster).collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn owner_state_keeps_a_taken_claim_until_the_job_leaves() {
        let (mut p, claim) = matched_pool();
        p.st.machine_ad(
            1,
            &p.own_tx,
            ad("exec1", "Claimed", Some(("1.0", "submit"))),
            p.t0,
        );
        // The owner came back while the job runs: Owner, job still named.
        p.st.machine_ad(
            1,
            &p.own_tx,
            ad("exec1", "Owner", Some(("1.0", "submit"))),
            p.t0,
        );
        assert!(p.st.claims.contains_key(&claim));
        // The owner left again while the job still runs: not free for a new job.
        assert!(!p.st.machine_ad(
            1,
            &p.own_tx,
            ad("exec1", "Claimed", Some(("1.0", "submit"))),
            p.t0
        ));
        p.st.jobs(
            2,
            &p.sch_tx,
            HostName("submit".into()),
            "a".into(),
            vec![job(5)],
        );
        assert!(p.st.cycle(p.t0).is_empty());
    }

    #[test]
    fn owner_returning_before_the_claim_is_taken_withdraws_it() {
        let (mut p, claim) = matched_pool();
        p.st.machine_ad(1, &p.own_tx, ad("exec1", "Owner", None), p.t0);
        assert!(!p.st.claims.contains_key(&claim));
        assert_eq!(
            drain(&mut p.sch_rx),
            vec![FromMatchmaker::Release { claim }]
        );
        assert_eq!(p.st.status()[0].state, "Owner");
    }

    #[test]
    fn schedd_release_frees_the_machine_and_tells_the_ownerd() {
        let (mut p, claim) = matched_pool();
        // Another schedd cannot release it.
        assert!(!p.st.release(&HostName("other".into()), &claim, p.t0));
        assert!(drain(&mut p.own_rx).is_empty());
        assert!(p.st.release(&HostName("submit".into()), &claim, p.t0));
        assert_eq!(
            drain(&mut p.own_rx),
            vec![FromMatchmaker::Release { claim }]
        );
        assert_eq!(p.st.status()[0].state, "Unclaimed");
    }

    #[test]
    fn untaken_claim_expires_and_both_sides_hear_of_it() {
        let (mut p, claim) = matched_pool();
        assert!(
            p.st.cycle(p.t0 + CLAIM_ACK_TIMEOUT - Duration::from_millis(1))
                .is_empty()
        );
        assert!(p.st.claims.contains_key(&claim));
        p.st.cycle(p.t0 + CLAIM_ACK_TIMEOUT);
        assert!(!p.st.claims.contains_key(&claim));
        assert_eq!(
            drain(&mut p.own_rx),
            vec![FromMatchmaker::Release {
                claim: claim.clone()
            }]
        );
        assert_eq!(
            drain(&mut p.sch_rx),
            vec![FromMatchmaker::Release { claim }]
        );
    }

    #[test]
    fn schedd_hears_first_and_a_claim_the_machine_cannot_take_is_withdrawn() {
        let (own_tx, mut own_rx) = mpsc::channel(1);
        let (sch_tx, mut sch_rx) = mpsc::channel(16);
        let mut st = State::new(Settings::default(), Instant::now());
        let t0 = Instant::now();
        st.machine_ad(1, &own_tx, ad("exec1", "Unclaimed", None), t0);
        // The ownerd does not read: its outbox is full.
        own_tx.try_send(FromMatchmaker::Ack).unwrap();
        st.jobs(
            2,
            &sch_tx,
            HostName("submit".into()),
            "a".into(),
            vec![job(1)],
        );
        assert!(st.cycle(t0).is_empty());
        let got = drain(&mut sch_rx);
        let [
            FromMatchmaker::Matches(ms),
            FromMatchmaker::Release { claim },
        ] = &got[..]
        else {
            panic!("expected Matches then Release, got {got:?}")
        };
        assert_eq!(&ms[0].claim, claim);
        assert_eq!(drain(&mut own_rx), vec![FromMatchmaker::Ack]);
        assert!(st.claims.is_empty());
        assert_eq!(st.status()[0].state, "Unclaimed");
    }

    #[test]
    fn closed_connection_drops_its_machine_and_schedd() {
        let (mut p, claim) = matched_pool();
        p.st.disconnect(1, p.t0);
        assert!(p.st.status().is_empty());
        assert!(!p.st.claims.contains_key(&claim));
        assert_eq!(
            drain(&mut p.sch_rx),
            vec![FromMatchmaker::Release { claim }]
        );
        p.st.disconnect(2, p.t0);
        assert!(p.st.schedds.is_empty());
    }

    #[test]
    fn reconnected_machine_survives_the_old_connection_closing() {
        let (mut p, _) = matched_pool();
        let (tx, _rx) = mpsc::channel(16);
        p.st.machine_ad(
            7,
            &tx,
            ad("exec1", "Claimed", Some(("1.0", "submit"))),
            p.t0,
        );
        p.st.disconnect(1, p.t0);
        assert_eq!(p.st.status().len(), 1);
    }

    fn owned(cluster: u64, owner: &str) -> JobAd {
        JobAd {
            job: JobId { cluster, proc: 0 },
            owner: owner.into(),
            attrs: Ad::new(),
        }
    }

    #[test]
    fn a_job_the_machine_ranks_higher_preempts_and_gets_the_machine() {
        let (own_tx, mut own_rx) = mpsc::channel(16);
        let (sch_tx, mut sch_rx) = mpsc::channel(16);
        let t0 = Instant::now();
        let mut st = State::new(Settings::default(), t0);
        let mut m = ad("exec1", "Unclaimed", None);
        m.attrs.insert(
            "Rank".into(),
            AdValue::Expr("TARGET.Owner == \"alice\" ? 10 : 0".into()),
        );
        st.machine_ad(1, &own_tx, m.clone(), t0);
        let submit = HostName("submit".into());
        st.jobs(
            2,
            &sch_tx,
            submit.clone(),
            "a".into(),
            vec![owned(1, "bob")],
        );
        let claim = st.cycle(t0)[0].claim.clone();
        drain(&mut own_rx);
        drain(&mut sch_rx);
        let mut running = ad("exec1", "Claimed", Some(("1.0", "submit")));
        running.attrs.insert("Rank".into(), m.attrs["Rank"].clone());
        st.machine_ad(1, &own_tx, running, t0);
        // carl's job is older, but only alice's is ranked higher than bob's.
        st.jobs(
            2,
            &sch_tx,
            submit.clone(),
            "a".into(),
            vec![owned(3, "carl"), owned(2, "alice")],
        );
        assert!(st.cycle(t0).is_empty());
        let got = drain(&mut own_rx);
        assert!(
            matches!(&got[..], [FromMatchmaker::Vacate { claim: c, reason }]
                if *c == claim && reason.contains("job 2.0 of alice")),
            "{got:?}"
        );
        // Still vacating: not preempted twice.
        assert!(st.cycle(t0).is_empty());
        assert!(drain(&mut own_rx).is_empty());
        // The machine is free again: it goes to alice's job, not carl's.
        st.machine_ad(1, &own_tx, m, t0);
        let made = st.cycle(t0);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].job.cluster, 2);

        // With rank preemption off nothing is vacated.
        let mut st = State::new(
            Settings {
                preempt_rank: false,
                ..Settings::default()
            },
            t0,
        );
        let mut m = ad("exec1", "Claimed", Some(("1.0", "submit")));
        m.attrs.insert(
            "Rank".into(),
            AdValue::Expr("TARGET.Owner == \"alice\" ? 10 : 0".into()),
        );
        st.machine_ad(1, &own_tx, ad("exec1", "Unclaimed", None), t0);
        st.jobs(
            2,
            &sch_tx,
            submit.clone(),
            "a".into(),
            vec![owned(1, "bob")],
        );
        st.cycle(t0);
        st.machine_ad(1, &own_tx, m, t0);
        st.jobs(2, &sch_tx, submit, "a".into(), vec![owned(2, "alice")]);
        drain(&mut own_rx);
        assert!(st.cycle(t0).is_empty());
        assert!(drain(&mut own_rx).is_empty());
    }

    #[test]
    fn why_reports_clauses_and_machines() {
        let (tx, _rx) = mpsc::channel(16);
        let t0 = Instant::now();
        let mut st = State::new(Settings::default(), t0);
        for (name, mem) in [("exec1", 1024), ("exec2", 4096)] {
            let mut m = ad(name, "Unclaimed", None);
            m.attrs.insert("Memory".into(), AdValue::Int(mem));
            st.machine_ad(1, &tx, m, t0);
        }
        let mut j = owned(7, "ann");
        j.attrs.insert(
            "Requirements".into(),
            AdValue::Expr("Memory >= 2048 && TARGET.Memory < 100000".into()),
        );
        let r = st.why(&j);
        assert_eq!(r.machines, 2);
        assert_eq!(
            r.clauses,
            vec![
                ("Memory >= 2048".to_string(), 1),
                ("TARGET.Memory < 100000".to_string(), 0)
            ]
        );
        assert!(r.machine_refusals.is_empty());
        assert_eq!(r.matching, vec![HostName("exec2".into())]);
    }
}
