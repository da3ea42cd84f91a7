//! Negotiation: which idle job goes to which free machine.
//!
//! The server hands a [`Negotiator`] the machines that may take a job and the
//! idle jobs that have no claim, and gets back pairs. The policy lives behind
//! the trait so that matching on requirements, rank and fair share can replace
//! [`OldestFirst`] without touching the server.

use proto::HostName;
use proto::pool::{JobAd, MachineAd};
use std::collections::BTreeMap;

/// The machine state that accepts a new claim.
pub const UNCLAIMED: &str = "Unclaimed";

/// An idle job as the matchmaker knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleJob {
    /// The schedd that queued it.
    pub schedd: HostName,
    /// Where that schedd's shadows listen.
    pub addr: String,
    pub ad: JobAd,
    /// When the matchmaker first saw this job: a counter, smaller is older.
    pub seen: u64,
}

/// One pairing: indices into the machine and job slices given to
/// [`Negotiator::negotiate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pairing {
    pub machine: usize,
    pub job: usize,
}

/// A negotiation policy.
pub trait Negotiator: Send + 'static {
    /// Pairs `machines` with `jobs`. Each machine and each job appears in at
    /// most one pairing. `machines` may hold machines that cannot take a job
    /// (e.g. state `Owner`); the policy must skip them.
    fn negotiate(&mut self, machines: &[MachineAd], jobs: &[IdleJob]) -> Vec<Pairing>;
}

/// Any `Unclaimed` machine takes the oldest idle job, taking turns between
/// submitters: each (schedd, owner) gets one job per round, the submitter
/// whose oldest job waited longest first. Machines are taken in name order.
#[derive(Debug, Default, Clone, Copy)]
pub struct OldestFirst;

impl Negotiator for OldestFirst {
    fn negotiate(&mut self, machines: &[MachineAd], jobs: &[IdleJob]) -> Vec<Pairing> {
        oldest_first(machines, jobs)
    }
}

/// The [`OldestFirst`] policy as a pure function.
pub fn oldest_first(machines: &[MachineAd], jobs: &[IdleJob]) -> Vec<Pairing> {
    let mut free: Vec<usize> = (0..machines.len())
        .filter(|&i| machines[i].state == UNCLAIMED)
        .collect();
    free.sort_by(|&a, &b| machines[a].name.cmp(&machines[b].name));
    if free.is_empty() || jobs.is_empty() {
        return Vec::new();
    }

    // Each submitter's jobs, oldest first.
    let mut queues: BTreeMap<(&HostName, &str), Vec<usize>> = BTreeMap::new();
    for (i, j) in jobs.iter().enumerate() {
        queues
            .entry((&j.schedd, j.ad.owner.as_str()))
            .or_default()
            .push(i);
    }
    let key = |i: usize| (jobs[i].seen, jobs[i].ad.job);
    let mut queues: Vec<Vec<usize>> = queues
        .into_values()
        .map(|mut q| {
            q.sort_by_key(|&i| key(i));
            q
        })
        .collect();
    queues.sort_by_key(|q| key(q[0]));

    let mut order = Vec::with_capacity(free.len());
    let mut round = 0;
    while order.len() < free.len() {
        let before = order.len();
        for q in &queues {
            if let Some(&j) = q.get(round) {
                order.push(j);
                if order.len() == free.len() {
                    break;
                }
            }
        }
        if order.len() == before {
            break;
        }
        round += 1;
    }
    free.into_iter()
        .zip(order)
        .map(|(machine, job)| Pairing { machine, job })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::JobId;
    use proto::pool::Ad;

    fn machine(name: &str, state: &str) -> MachineAd {
        MachineAd {
            name: HostName(name.into()),
            state: state.into(),
            activity: "Idle".into(),
            attrs: Ad::new(),
        }
    }

    fn job(schedd: &str, owner: &str, cluster: u64, seen: u64) -> IdleJob {
        IdleJob {
            schedd: HostName(schedd.into()),
            addr: "127.0.0.1:1".into(),
            ad: JobAd {
                job: JobId { cluster, proc: 0 },
                owner: owner.into(),
                attrs: Ad::new(),
            },
            seen,
        }
    }

    /// (machine name, job cluster) for each pairing.
    fn named(machines: &[MachineAd], jobs: &[IdleJob], p: &[Pairing]) -> Vec<(String, u64)> {
        p.iter()
            .map(|p| {
                (
                    machines[p.machine].name.0.clone(),
                    jobs[p.job].ad.job.cluster,
                )
            })
            .collect()
    }

    #[test]
    fn only_unclaimed_machines_get_jobs() {
        let ms = vec![
            machine("exec1", "Owner"),
            machine("exec2", "Unclaimed"),
            machine("exec3", "Claimed"),
            machine("exec4", "Matched"),
        ];
        let js = vec![job("submit", "ann", 1, 0), job("submit", "ann", 2, 1)];
        let p = oldest_first(&ms, &js);
        assert_eq!(named(&ms, &js, &p), vec![("exec2".into(), 1)]);
    }

    #[test]
    fn oldest_job_first_and_machines_in_name_order() {
        let ms = vec![machine("exec2", "Unclaimed"), machine("exec1", "Unclaimed")];
        let js = vec![
            job("submit", "ann", 7, 5),
            job("submit", "ann", 3, 9),
            job("submit", "ann", 5, 2),
        ];
        let p = oldest_first(&ms, &js);
        assert_eq!(
            named(&ms, &js, &p),
            vec![("exec1".into(), 5), ("exec2".into(), 7)]
        );
    }

    #[test]
    fn same_arrival_breaks_ties_by_job_id() {
        let ms = vec![machine("exec1", "Unclaimed")];
        let js = vec![job("submit", "ann", 9, 1), job("submit", "ann", 4, 1)];
        assert_eq!(
            named(&ms, &js, &oldest_first(&ms, &js)),
            vec![("exec1".into(), 4)]
        );
    }

    #[test]
    fn submitters_take_turns() {
        let ms: Vec<_> = (1..=4)
            .map(|i| machine(&format!("exec{i}"), "Unclaimed"))
            .collect();
        // ann queued three jobs before bob's first; bob's job is on another schedd.
        let js = vec![
            job("submit", "ann", 1, 0),
            job("submit", "ann", 2, 1),
            job("submit", "ann", 3, 2),
            job("submit2", "bob", 10, 3),
            job("submit2", "bob", 11, 4),
            job("submit", "cat", 20, 5),
        ];
        let p = oldest_first(&ms, &js);
        assert_eq!(
            named(&ms, &js, &p),
            vec![
                ("exec1".into(), 1),
                ("exec2".into(), 10),
                ("exec3".into(), 20),
                ("exec4".into(), 2)
            ]
        );
    }

    #[test]
    fn more_machines_than_jobs_and_nothing_to_do() {
        let ms: Vec<_> = (1..=3)
            .map(|i| machine(&format!("exec{i}"), "Unclaimed"))
            .collect();
        let js = vec![job("submit", "ann", 1, 0)];
        assert_eq!(
            named(&ms, &js, &oldest_first(&ms, &js)),
            vec![("exec1".into(), 1)]
        );
        assert!(oldest_first(&ms, &[]).is_empty());
        assert!(oldest_first(&[], &js).is_empty());
    }
}
