//! Negotiation: which idle job goes to which machine, as a pure function
//! over ads.
//!
//! - Matching is symmetric: the job's `Requirements` must hold with the job
//!   as `MY` and the machine as `TARGET`, and the machine's `Requirements`
//!   (an ownerd advertises `Requirements = MY.Start`) the other way round.
//! - Users take turns by fair share ([`FairShare`]): the next machine goes
//!   to the user with the lowest *priority + claims held now*, where the
//!   priority is the user's claimed time, decayed with a half-life, in
//!   machines. Within a user, the oldest job first.
//! - A job takes the free matching machine it ranks highest (its `Rank`),
//!   ties broken by the machine's `Rank` of the job, then by name.
//! - With no free machine, a job may preempt a running claim (rank
//!   preemption): only where the machine's `Rank` of this job is strictly
//!   higher than of the job it runs; among those, the job's own rank picks.
//!
//! Jobs whose ads agree on every attribute any expression of the cycle can
//! read are grouped (*autoclusters*), so a cycle evaluates expressions once
//! per cluster and machine, not once per job and machine.

use policies::Ad;
use policies::expr::{self, Expr, Value};
use proto::HostName;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// The machine state that accepts a new claim.
pub const UNCLAIMED: &str = "Unclaimed";

/// A machine as one negotiation cycle sees it.
#[derive(Debug, Clone)]
pub struct Machine {
    pub name: HostName,
    pub ad: Arc<Ad>,
    /// It may take a job now (`Unclaimed`, no claim pending).
    pub free: bool,
    /// The job it runs under a claim that may be preempted.
    pub running: Option<Running>,
}

/// The job a claimed machine runs.
#[derive(Debug, Clone)]
pub struct Running {
    pub owner: String,
    pub ad: Arc<Ad>,
}

/// An idle job as one negotiation cycle sees it.
#[derive(Debug, Clone)]
pub struct Job {
    pub owner: String,
    pub ad: Arc<Ad>,
    /// When the matchmaker first saw it: smaller is older.
    pub seen: u64,
    /// [`job_key`] of `ad`, computed once when the job arrives.
    pub key: u64,
}

impl Job {
    pub fn new(owner: String, ad: Arc<Ad>, seen: u64) -> Job {
        let key = job_key(&ad);
        Job {
            owner,
            ad,
            seen,
            key,
        }
    }
}

/// A hash of the job's `Requirements` and `Rank` and of what they read of
/// the job: jobs with equal keys match and rank every machine alike.
pub fn job_key(job: &Ad) -> u64 {
    key_of(job, ["requirements", "rank"].into_iter())
}

/// One pairing: indices into the machine and job slices given to
/// [`negotiate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pairing {
    pub machine: usize,
    pub job: usize,
}

/// What a cycle decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Free machines given to jobs.
    pub matches: Vec<Pairing>,
    /// Running claims to vacate so that `job` can have `machine`.
    pub preemptions: Vec<Pairing>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Preempt a running job for one the machine ranks strictly higher.
    pub preempt_rank: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { preempt_rank: true }
    }
}

/// Each user's claimed time, decayed with a half-life.
///
/// `usage` grows by one second per claim-second and decays by half every
/// `half_life`; [`FairShare::priority`] is it divided by the mean lifetime,
/// i.e. the decayed average number of machines the user held. Lower is
/// better.
#[derive(Debug, Clone)]
pub struct FairShare {
    half_life: Duration,
    usage: HashMap<String, f64>,
}

impl FairShare {
    pub fn new(half_life: Duration) -> FairShare {
        FairShare {
            half_life: half_life.max(Duration::from_millis(1)),
            usage: HashMap::new(),
        }
    }

    fn tau(&self) -> f64 {
        self.half_life.as_secs_f64() / std::f64::consts::LN_2
    }

    /// `elapsed` passed with `held[user]` claims per user.
    pub fn accrue(&mut self, held: &HashMap<String, u32>, elapsed: Duration) {
        let tau = self.tau();
        let decay = (-elapsed.as_secs_f64() / tau).exp();
        for u in self.usage.values_mut() {
            *u *= decay;
        }
        for (user, &n) in held {
            *self.usage.entry(user.clone()).or_insert(0.0) += f64::from(n) * tau * (1.0 - decay);
        }
        self.usage.retain(|_, u| *u > 1e-9);
    }

    /// Decayed claimed seconds of `user`.
    pub fn usage_secs(&self, user: &str) -> f64 {
        self.usage.get(user).copied().unwrap_or(0.0)
    }

    /// The decayed average number of machines `user` held.
    pub fn priority(&self, user: &str) -> f64 {
        self.usage_secs(user) / self.tau()
    }
}

/// A rank as a number: `Rank` evaluated with `my` as `MY`; missing,
/// non-numeric, `undefined` or `error` is 0.
fn rank_of(rank: Option<&Expr>, my: &Ad, target: &Ad, now: i64) -> f64 {
    match rank {
        None => 0.0,
        Some(e) => match expr::eval_at(e, my, target, now) {
            Value::Int(i) => i as f64,
            Value::Real(r) if r.is_finite() => r,
            Value::Bool(b) => f64::from(u8::from(b)),
            _ => 0.0,
        },
    }
}

fn holds(req: Option<&Expr>, my: &Ad, target: &Ad, now: i64) -> bool {
    req.is_none_or(|e| expr::eval_at(e, my, target, now).is_true())
}

/// Writes into a hasher, so an expression can be hashed without printing
/// it into a string.
struct HashWriter<'a>(&'a mut DefaultHasher);

impl std::fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

/// Lower-case names of every attribute an expression of the machines'
/// ads refers to: what a job's ad can be read for.
fn machine_side_names(machines: &[Machine]) -> Vec<String> {
    let mut seen_exprs: HashSet<u64> = HashSet::new();
    let mut names: HashSet<String> = HashSet::new();
    for m in machines {
        for (_, e) in m.ad.iter() {
            if matches!(e, Expr::Lit(_)) {
                continue;
            }
            let mut h = DefaultHasher::new();
            let _ = write!(HashWriter(&mut h), "{e}");
            if !seen_exprs.insert(h.finish()) {
                continue;
            }
            for (_, n) in e.references() {
                names.insert(n.to_ascii_lowercase());
            }
        }
    }
    let mut v: Vec<String> = names.into_iter().collect();
    v.sort();
    v
}

/// A hash of the job's attributes named in `start` and of everything
/// their expressions refer to in turn.
fn key_of<'a>(job: &'a Ad, start: impl Iterator<Item = &'a str>) -> u64 {
    let mut todo: Vec<&str> = start.collect();
    let mut done: Vec<&str> = Vec::with_capacity(todo.len() + 4);
    while let Some(name) = todo.pop() {
        if done.iter().any(|d| d.eq_ignore_ascii_case(name)) {
            continue;
        }
        done.push(name);
        if let Some(
            e @ (Expr::Attr { .. }
            | Expr::Unary(..)
            | Expr::Binary(..)
            | Expr::Cond(..)
            | Expr::Call { .. }
            | Expr::List(_)),
        ) = job.get(name)
        {
            for (_, n) in e.references() {
                todo.push(n);
            }
        }
    }
    // Order-independent: names are found in different orders in different jobs.
    let mut key = 0u64;
    for name in done {
        if let Some(e) = job.get(name) {
            let mut h = DefaultHasher::new();
            for b in name.bytes() {
                h.write_u8(b.to_ascii_lowercase());
            }
            h.write_u8(0);
            let _ = write!(HashWriter(&mut h), "{e}");
            key = key.wrapping_add(h.finish());
        }
    }
    key
}

/// A free machine a cluster matches, best first.
#[derive(Debug, Clone, Copy)]
struct Cand {
    job_rank: f64,
    machine_rank: f64,
    machine: usize,
}

fn by_preference(a: &Cand, b: &Cand) -> std::cmp::Ordering {
    b.job_rank
        .total_cmp(&a.job_rank)
        .then(b.machine_rank.total_cmp(&a.machine_rank))
        .then(a.machine.cmp(&b.machine))
}

/// Jobs that agree on their `Requirements`, `Rank` and what those read of
/// the job: the job side of matching is the same for all of them.
struct JobSide {
    rep: usize,
    /// Free machines its requirements accept, by its rank, best first.
    free: Option<Vec<(f64, usize)>>,
}

/// Jobs that agree on what the machines' expressions read of a job: the
/// machine side of matching is the same for all of them.
struct MachineSide {
    rep: usize,
    /// Per machine whose policy reads the job: its rank of the job, or
    /// `None` where its requirements refuse it (and for the others).
    ranks: Option<Vec<Option<f64>>>,
}

/// Jobs that agree on everything any expression of the cycle reads.
struct Cluster {
    rep: usize,
    side: usize,
    mside: usize,
    /// Free matching machines, best first; computed on first use.
    free: Option<Vec<Cand>>,
    next: usize,
    /// Running claims this cluster may preempt, best first.
    preempt: Option<Vec<Cand>>,
    next_preempt: usize,
}

/// A machine's `Requirements` and `Rank` when they read nothing of the job.
#[derive(Debug, Clone, Copy)]
struct Fixed {
    req: bool,
    rank: f64,
}

/// Does `e`, evaluated with `ad` as `MY`, read anything of `TARGET`?
fn reads_target(ad: &Ad, e: &Expr) -> bool {
    let mut todo = vec![e];
    let mut seen: Vec<&str> = Vec::new();
    while let Some(e) = todo.pop() {
        if matches!(e, Expr::Lit(_)) {
            continue;
        }
        for (scope, name) in e.references() {
            match scope {
                expr::Scope::Target => return true,
                expr::Scope::My | expr::Scope::Auto => {
                    if seen.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                        continue;
                    }
                    seen.push(name);
                    match ad.get(name) {
                        Some(next) => todo.push(next),
                        None if scope == expr::Scope::Auto => return true,
                        None => {}
                    }
                }
            }
        }
    }
    false
}

fn fixed(m: &Machine, now: i64) -> Option<Fixed> {
    let req = m.ad.get("Requirements");
    let rank = m.ad.get("Rank");
    if req.is_some_and(|e| reads_target(&m.ad, e)) || rank.is_some_and(|e| reads_target(&m.ad, e)) {
        return None;
    }
    let none = Ad::new();
    Some(Fixed {
        req: holds(req, &m.ad, &none, now),
        rank: rank_of(rank, &m.ad, &none, now),
    })
}

/// Next user to serve: lowest priority + claims first, then name.
#[derive(Debug, PartialEq)]
struct Turn {
    key: f64,
    user: usize,
    name: String,
}

impl Eq for Turn {}

impl Ord for Turn {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: reverse.
        o.key
            .total_cmp(&self.key)
            .then_with(|| o.name.cmp(&self.name))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// One negotiation cycle. Each machine and each job appears at most once
/// in the outcome; only `free` machines are matched, only machines with a
/// `running` job are preempted.
pub fn negotiate(machines: &[Machine], jobs: &[Job], share: &FairShare, opts: Options) -> Outcome {
    let mut out = Outcome::default();
    let any_free = machines.iter().any(|m| m.free);
    let any_running = opts.preempt_rank && machines.iter().any(|m| m.running.is_some());
    if jobs.is_empty() || !(any_free || any_running) {
        return out;
    }
    let now = expr::now();
    let fixed: Vec<Option<Fixed>> = machines.iter().map(|m| fixed(m, now)).collect();

    // Autoclusters: by what the job side reads, and by everything.
    let names = machine_side_names(machines);
    let mut side_of: HashMap<u64, usize> = HashMap::new();
    let mut sides: Vec<JobSide> = Vec::new();
    let mut mside_of: HashMap<u64, usize> = HashMap::new();
    let mut msides: Vec<MachineSide> = Vec::new();
    let mut cluster_of: HashMap<(usize, usize), usize> = HashMap::new();
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut job_cluster: Vec<usize> = Vec::with_capacity(jobs.len());
    for (i, j) in jobs.iter().enumerate() {
        let side = *side_of.entry(j.key).or_insert_with(|| {
            sides.push(JobSide { rep: i, free: None });
            sides.len() - 1
        });
        let mk = key_of(&j.ad, names.iter().map(String::as_str));
        let mside = *mside_of.entry(mk).or_insert_with(|| {
            msides.push(MachineSide {
                rep: i,
                ranks: None,
            });
            msides.len() - 1
        });
        let c = *cluster_of.entry((side, mside)).or_insert_with(|| {
            clusters.push(Cluster {
                rep: i,
                side,
                mside,
                free: None,
                next: 0,
                preempt: None,
                next_preempt: 0,
            });
            clusters.len() - 1
        });
        job_cluster.push(c);
    }

    // Users and their jobs, oldest first.
    let mut user_ix: HashMap<&str, usize> = HashMap::new();
    let mut queues: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        let u = *user_ix.entry(j.owner.as_str()).or_insert_with(|| {
            queues.push((j.owner.as_str(), Vec::new()));
            queues.len() - 1
        });
        queues[u].1.push(i);
    }
    for (_, q) in &mut queues {
        q.sort_by_key(|&i| jobs[i].seen);
    }
    let mut held: HashMap<&str, u32> = HashMap::new();
    for m in machines {
        if let Some(r) = &m.running {
            *held.entry(r.owner.as_str()).or_insert(0) += 1;
        }
    }
    let mut heap: BinaryHeap<Turn> = queues
        .iter()
        .enumerate()
        .map(|(u, (name, _))| Turn {
            key: share.priority(name) + f64::from(held.get(name).copied().unwrap_or(0)),
            user: u,
            name: name.to_string(),
        })
        .collect();
    let mut cursor = vec![0usize; queues.len()];
    let mut taken = vec![false; machines.len()];
    let mut exhausted = vec![false; clusters.len()];

    while let Some(mut turn) = heap.pop() {
        let (_, q) = &queues[turn.user];
        let mut got = false;
        while cursor[turn.user] < q.len() {
            let j = q[cursor[turn.user]];
            cursor[turn.user] += 1;
            let c = job_cluster[j];
            if exhausted[c] {
                continue;
            }
            let cl = &mut clusters[c];
            let rep = &jobs[cl.rep].ad;
            if cl.free.is_none() {
                let side = &mut sides[cl.side];
                let side_rep = &jobs[side.rep].ad;
                let by_job = side.free.get_or_insert_with(|| {
                    let (jreq, jrank) = (side_rep.get("Requirements"), side_rep.get("Rank"));
                    let mut v: Vec<(f64, usize)> = machines
                        .iter()
                        .enumerate()
                        .filter(|(i, m)| {
                            m.free
                                && fixed[*i].is_none_or(|f| f.req)
                                && holds(jreq, side_rep, &m.ad, now)
                        })
                        .map(|(i, m)| (rank_of(jrank, side_rep, &m.ad, now), i))
                        .collect();
                    v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    v
                });
                let ms = &mut msides[cl.mside];
                let ms_rep = &jobs[ms.rep].ad;
                let ranks = ms.ranks.get_or_insert_with(|| {
                    machines
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            if !m.free || fixed[i].is_some() {
                                return None;
                            }
                            holds(m.ad.get("Requirements"), &m.ad, ms_rep, now)
                                .then(|| rank_of(m.ad.get("Rank"), &m.ad, ms_rep, now))
                        })
                        .collect()
                });
                let mut v: Vec<Cand> = by_job
                    .iter()
                    .filter(|&&(_, i)| !taken[i])
                    .filter_map(|&(job_rank, i)| {
                        let machine_rank = match fixed[i] {
                            Some(f) => f.rank,
                            None => ranks[i]?,
                        };
                        Some(Cand {
                            job_rank,
                            machine_rank,
                            machine: i,
                        })
                    })
                    .collect();
                // Already in job-rank order: a stable sort only reorders ties.
                v.sort_by(by_preference);
                cl.free = Some(v);
            }
            let free = cl.free.as_deref().unwrap_or_default();
            while cl.next < free.len() && taken[free[cl.next].machine] {
                cl.next += 1;
            }
            if let Some(best) = free.get(cl.next) {
                taken[best.machine] = true;
                out.matches.push(Pairing {
                    machine: best.machine,
                    job: j,
                });
                got = true;
                break;
            }
            if opts.preempt_rank {
                let pre = cl.preempt.get_or_insert_with(|| {
                    let (jreq, jrank) = (rep.get("Requirements"), rep.get("Rank"));
                    let mut v: Vec<Cand> = machines
                        .iter()
                        .enumerate()
                        .filter_map(|(i, m)| {
                            let r = m.running.as_ref()?;
                            let mrank = m.ad.get("Rank");
                            let new = rank_of(mrank, &m.ad, rep, now);
                            let old = rank_of(mrank, &m.ad, &r.ad, now);
                            (new > old
                                && holds(jreq, rep, &m.ad, now)
                                && holds(m.ad.get("Requirements"), &m.ad, rep, now))
                            .then(|| Cand {
                                job_rank: rank_of(jrank, rep, &m.ad, now),
                                machine_rank: new,
                                machine: i,
                            })
                        })
                        .collect();
                    v.sort_by(by_preference);
                    v
                });
                while cl.next_preempt < pre.len() && taken[pre[cl.next_preempt].machine] {
                    cl.next_preempt += 1;
                }
                if let Some(best) = pre.get(cl.next_preempt) {
                    taken[best.machine] = true;
                    out.preemptions.push(Pairing {
                        machine: best.machine,
                        job: j,
                    });
                    got = true;
                    break;
                }
            }
            exhausted[c] = true;
        }
        if got {
            turn.key += 1.0;
            heap.push(turn);
        }
    }
    out
}

/// The expression `MY.name` / `name` leads to in `ad`, following plain
/// attribute references (`Requirements = MY.Start` → `Start`'s expression).
fn resolve<'a>(ad: &'a Ad, e: &'a Expr) -> (String, &'a Expr) {
    let mut cur = e;
    let mut label = String::new();
    for _ in 0..8 {
        match cur {
            Expr::Attr {
                scope: expr::Scope::My | expr::Scope::Auto,
                name,
            } => match ad.get(name) {
                Some(next) => {
                    label = name.to_uppercase();
                    cur = next;
                }
                None => break,
            },
            _ => break,
        }
    }
    (label, cur)
}

/// Why `job` does or does not match, against these machines (see
/// [`proto::pool::WhyReport`]).
pub fn why(job_id: proto::JobId, job: &Ad, machines: &[(HostName, Ad)]) -> proto::pool::WhyReport {
    let now = expr::now();
    let clauses: Vec<&Expr> = job.get("Requirements").map_or(Vec::new(), Expr::clauses);
    let mut counts = vec![0u32; clauses.len()];
    let mut refusals = Vec::new();
    let mut matching = Vec::new();
    for (name, m) in machines {
        let mut job_ok = true;
        for (i, c) in clauses.iter().enumerate() {
            if !expr::eval_at(c, job, m, now).is_true() {
                counts[i] += 1;
                job_ok = false;
            }
        }
        let machine_ok = match m.get("Requirements") {
            None => true,
            Some(req) => {
                if expr::eval_at(req, m, job, now).is_true() {
                    true
                } else {
                    let (label, body) = resolve(m, req);
                    let failing = body
                        .clauses()
                        .into_iter()
                        .find(|c| !expr::eval_at(c, m, job, now).is_true())
                        .unwrap_or(body);
                    let text = if label.is_empty() {
                        failing.to_string()
                    } else {
                        format!("{label}: {failing}")
                    };
                    refusals.push((name.clone(), text));
                    false
                }
            }
        };
        if job_ok && machine_ok {
            matching.push(name.clone());
        }
    }
    proto::pool::WhyReport {
        job: job_id,
        machines: u32::try_from(machines.len()).unwrap_or(u32::MAX),
        clauses: clauses.iter().map(|c| c.to_string()).zip(counts).collect(),
        machine_refusals: refusals,
        matching,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ad(text: &str) -> Ad {
        Ad::parse("test.ad", text).unwrap()
    }

    fn machine(name: &str, text: &str) -> Machine {
        Machine {
            name: HostName(name.into()),
            ad: Arc::new(ad(text)),
            free: true,
            running: None,
        }
    }

    fn job(owner: &str, seen: u64, text: &str) -> Job {
        let mut a = ad(text);
        a.set("Owner", owner);
        Job::new(owner.into(), Arc::new(a), seen)
    }

    fn share() -> FairShare {
        FairShare::new(Duration::from_secs(86_400))
    }

    fn names(ms: &[Machine], p: &[Pairing]) -> Vec<(String, usize)> {
        p.iter()
            .map(|p| (ms[p.machine].name.0.clone(), p.job))
            .collect()
    }

    #[test]
    fn both_requirements_must_hold() {
        let ms = vec![
            machine("small", "Memory = 1024\nOpSys = \"LINUX\""),
            machine(
                "picky",
                "Memory = 8192\nOpSys = \"LINUX\"\nStart = TARGET.Owner == \"bob\"\nRequirements = MY.Start",
            ),
            machine("big", "Memory = 4096\nOpSys = \"LINUX\""),
        ];
        let js = vec![job(
            "alice",
            0,
            "Requirements = Memory >= 2048 && OpSys == \"LINUX\"",
        )];
        let o = negotiate(&ms, &js, &share(), Options::default());
        assert_eq!(names(&ms, &o.matches), vec![("big".into(), 0)]);
        // bob is welcome on `picky` and ranks nothing: lowest index wins the tie.
        let js = vec![job("bob", 0, "Requirements = Memory >= 2048")];
        let o = negotiate(&ms, &js, &share(), Options::default());
        assert_eq!(names(&ms, &o.matches), vec![("picky".into(), 0)]);
    }

    #[test]
    fn job_rank_picks_the_machine_then_machine_rank_breaks_ties() {
        let ms = vec![
            machine("slow", "KFlops = 100"),
            machine("fast", "KFlops = 900"),
            machine("mid", "KFlops = 500"),
        ];
        let js = vec![
            job("alice", 0, "Rank = KFlops"),
            job("alice", 1, "Rank = KFlops"),
        ];
        let o = negotiate(&ms, &js, &share(), Options::default());
        assert_eq!(
            names(&ms, &o.matches),
            vec![("fast".into(), 0), ("mid".into(), 1)]
        );
        // Equal job rank: the machine that likes the job more.
        let ms = vec![
            machine("a", "Rank = 0"),
            machine("b", "Rank = TARGET.Owner == \"alice\" ? 5 : 0"),
        ];
        let js = vec![job("alice", 0, "")];
        let o = negotiate(&ms, &js, &share(), Options::default());
        assert_eq!(names(&ms, &o.matches), vec![("b".into(), 0)]);
    }

    #[test]
    fn only_free_machines_are_matched() {
        let mut ms = vec![machine("exec1", ""), machine("exec2", "")];
        ms[0].free = false;
        let js = vec![job("alice", 0, ""), job("alice", 1, "")];
        let o = negotiate(&ms, &js, &share(), Options::default());
        assert_eq!(names(&ms, &o.matches), vec![("exec2".into(), 0)]);
        assert!(o.preemptions.is_empty());
    }

    /// Two users with 20 jobs each on 2 machines: every job runs 60 s;
    /// alice queued all of hers first.
    #[test]
    fn fair_share_splits_two_machines_between_two_users() {
        let ms = vec![machine("exec1", ""), machine("exec2", "")];
        let mut js: Vec<Job> = (0..20).map(|i| job("alice", i, "")).collect();
        js.extend((20..40).map(|i| job("bob", i, "")));
        let mut fs = share();
        let mut done = vec![false; js.len()];
        let mut order = Vec::new();
        for _round in 0..20 {
            let idle: Vec<usize> = (0..js.len()).filter(|&i| !done[i]).collect();
            let cycle_jobs: Vec<Job> = idle.iter().map(|&i| js[i].clone()).collect();
            let o = negotiate(&ms, &cycle_jobs, &fs, Options::default());
            let mut held = HashMap::new();
            for p in &o.matches {
                let j = idle[p.job];
                done[j] = true;
                order.push(js[j].owner.clone());
                *held.entry(js[j].owner.clone()).or_insert(0) += 1;
            }
            fs.accrue(&held, Duration::from_secs(60));
        }
        assert_eq!(order.len(), 40);
        // After every pair of matches each user has had the same number.
        for k in (2..=40).step_by(2) {
            let a = order[..k].iter().filter(|o| *o == "alice").count();
            assert_eq!(a * 2, k, "after {k} matches alice had {a}: {order:?}");
        }
    }

    #[test]
    fn past_usage_gives_way_to_the_newcomer() {
        let ms = vec![
            machine("exec1", ""),
            machine("exec2", ""),
            machine("exec3", ""),
        ];
        let js: Vec<Job> = (0..5)
            .map(|i| job("alice", i, ""))
            .chain((5..10).map(|i| job("bob", i, "")))
            .collect();
        let mut fs = share();
        // alice held 3 machines for a day; bob nothing.
        fs.accrue(
            &HashMap::from([("alice".to_string(), 3)]),
            Duration::from_secs(86_400),
        );
        assert!(
            (fs.priority("alice") - 1.5).abs() < 1e-9,
            "{}",
            fs.priority("alice")
        );
        assert!(
            (fs.usage_secs("alice") - 3.0 * 86_400.0 / 2.0 / std::f64::consts::LN_2).abs() < 1.0
        );
        let o = negotiate(&ms, &js, &fs, Options::default());
        let owners: Vec<&str> = o.matches.iter().map(|p| js[p.job].owner.as_str()).collect();
        // bob (0, then 1) goes before alice (1.5) until he holds 2 machines.
        assert_eq!(owners, vec!["bob", "bob", "alice"]);
        // A day later alice's usage has halved.
        fs.accrue(&HashMap::new(), Duration::from_secs(86_400));
        assert!((fs.priority("alice") - 0.75).abs() < 1e-9);
    }

    fn running(name: &str, text: &str, owner: &str, job_text: &str) -> Machine {
        let mut m = machine(name, text);
        m.free = false;
        let mut a = ad(job_text);
        a.set("Owner", owner);
        m.running = Some(Running {
            owner: owner.into(),
            ad: Arc::new(a),
        });
        m
    }

    #[test]
    fn preemption_only_for_a_strictly_higher_machine_rank() {
        let pref = "Rank = TARGET.Owner == \"alice\" ? 10 : 0";
        let ms = vec![
            running("exec1", pref, "bob", ""),
            running("exec2", "Rank = 0", "carl", ""),
        ];
        let js = vec![job("alice", 0, ""), job("dave", 1, "")];
        let o = negotiate(&ms, &js, &share(), Options::default());
        assert!(o.matches.is_empty());
        assert_eq!(names(&ms, &o.preemptions), vec![("exec1".into(), 0)]);
        // Off: nothing happens.
        let o = negotiate(
            &ms,
            &js,
            &share(),
            Options {
                preempt_rank: false,
            },
        );
        assert_eq!(o, Outcome::default());
        // The machine already runs a job it ranks as high: no preemption.
        let ms = vec![running("exec1", pref, "alice", "")];
        let o = negotiate(&ms, &js, &share(), Options::default());
        assert!(o.preemptions.is_empty());
        // A free machine is taken before anything is preempted.
        let ms = vec![running("exec1", pref, "bob", ""), machine("exec2", "")];
        let o = negotiate(&ms, &js[..1], &share(), Options::default());
        assert_eq!(names(&ms, &o.matches), vec![("exec2".into(), 0)]);
        assert!(o.preemptions.is_empty());
        // Requirements still hold for preemption.
        let ms = vec![running("exec1", &format!("{pref}\nMemory = 10"), "bob", "")];
        let js = vec![job("alice", 0, "Requirements = Memory > 100")];
        assert!(
            negotiate(&ms, &js, &share(), Options::default())
                .preemptions
                .is_empty()
        );
    }

    #[test]
    fn jobs_that_read_alike_share_a_cluster() {
        let ms = vec![machine("m", "Requirements = TARGET.RequestMemory < 100")];
        let names = machine_side_names(&ms);
        assert_eq!(names, vec!["requestmemory".to_string()]);
        let a = ad("RequestMemory = 10\nCmd = \"a\"");
        let b = ad("RequestMemory = 10\nCmd = \"b\"");
        let c = ad("RequestMemory = 20\nCmd = \"a\"");
        let d = ad("RequestMemory = 10\nRequirements = Foo\nFoo = 1");
        let e = ad("RequestMemory = 10\nRequirements = Foo\nFoo = 2");
        let mkey = |j: &Ad| key_of(j, names.iter().map(String::as_str));
        assert_eq!(mkey(&a), mkey(&b));
        assert_ne!(mkey(&a), mkey(&c));
        assert_eq!(
            job_key(&a),
            job_key(&c),
            "no requirements read RequestMemory"
        );
        assert_ne!(job_key(&d), job_key(&e), "Requirements reads Foo");
        assert_ne!(job_key(&a), job_key(&d));
    }

    #[test]
    fn why_counts_clauses_and_names_refusing_machines() {
        let ms: Vec<(HostName, Ad)> = [
            ("exec1", "Memory = 1024\nOpSys = \"LINUX\"\nKeyboardIdle = 5000\nStart = KeyboardIdle > 900\nRequirements = MY.Start"),
            ("exec2", "Memory = 4096\nOpSys = \"WINDOWS\"\nKeyboardIdle = 5000\nStart = KeyboardIdle > 900\nRequirements = MY.Start"),
            ("exec3", "Memory = 8192\nOpSys = \"LINUX\"\nKeyboardIdle = 3\nStart = KeyboardIdle > 900 && TARGET.Owner != \"mallory\"\nRequirements = MY.Start"),
            ("exec4", "Memory = 8192\nOpSys = \"LINUX\"\nKeyboardIdle = 5000\nStart = KeyboardIdle > 900\nRequirements = MY.Start"),
        ]
        .iter()
        .map(|(n, t)| (HostName(n.to_string()), ad(t)))
        .collect();
        let j = ad("Owner = \"alice\"\nRequirements = Memory >= 2048 && OpSys == \"LINUX\"");
        let id = proto::JobId {
            cluster: 3,
            proc: 0,
        };
        let r = why(id, &j, &ms);
        assert_eq!(r.job, id);
        assert_eq!(r.machines, 4);
        assert_eq!(
            r.clauses,
            vec![
                ("Memory >= 2048".to_string(), 1),
                ("OpSys == \"LINUX\"".to_string(), 1)
            ]
        );
        assert_eq!(
            r.machine_refusals,
            vec![(
                HostName("exec3".into()),
                "START: KeyboardIdle > 900".to_string()
            )]
        );
        assert_eq!(r.matching, vec![HostName("exec4".into())]);
        // No requirements: no clauses, every willing machine matches.
        let r = why(id, &ad("Owner = \"alice\""), &ms);
        assert!(r.clauses.is_empty());
        assert_eq!(r.matching.len(), 3);
    }
}
