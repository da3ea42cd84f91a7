//! Matchmaking helpers: symmetric requirements and rank, as the matchmaker
//! and `roost why` use them.

use crate::ad::Ad;
use crate::expr::{self, Value};

/// `ad`'s `Requirements` hold against `other`: the expression evaluates to
/// `true` (or a non-zero number). An ad without `Requirements` accepts
/// everything; `undefined` and `error` reject.
pub fn requirements_hold(ad: &Ad, other: &Ad) -> bool {
    match ad.get("Requirements") {
        None => true,
        Some(e) => expr::eval(e, ad, other).is_true(),
    }
}

/// Both ads' requirements hold, each evaluated with itself as `MY` and the
/// other as `TARGET`.
pub fn symmetric_match(job: &Ad, machine: &Ad) -> bool {
    requirements_hold(job, machine) && requirements_hold(machine, job)
}

/// How much `ad` likes `other`: its `Rank` evaluated against `other`, as a
/// number (`true` is 1). A missing, non-numeric, `undefined` or `error`
/// rank is 0.
pub fn rank(ad: &Ad, other: &Ad) -> f64 {
    match ad.get("Rank") {
        None => 0.0,
        Some(e) => match expr::eval(e, ad, other) {
            Value::Int(i) => i as f64,
            Value::Real(r) if r.is_finite() => r,
            Value::Bool(b) => f64::from(u8::from(b)),
            _ => 0.0,
        },
    }
}

/// Why a job does or does not match a set of machines: what `roost why`
/// prints.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Each top-level `&&` clause of the job's `Requirements`, as text, with
    /// how many machines it rejects (evaluates to anything but true).
    pub clauses: Vec<(String, usize)>,
    /// Machines whose own `Requirements` reject the job.
    pub rejected_by_machine: usize,
    /// Machines the job matches (both sides accept).
    pub matches: usize,
    pub machines: usize,
}

/// Evaluates the job's requirements clause by clause, and the machines'
/// requirements, against every machine.
pub fn explain(job: &Ad, machines: &[Ad]) -> Explanation {
    let clauses: Vec<&crate::expr::Expr> = match job.get("Requirements") {
        Some(e) => e.clauses(),
        None => Vec::new(),
    };
    let mut counts = vec![0usize; clauses.len()];
    let mut rejected_by_machine = 0;
    let mut matches = 0;
    for m in machines {
        for (c, n) in clauses.iter().zip(counts.iter_mut()) {
            if !expr::eval(c, job, m).is_true() {
                *n += 1;
            }
        }
        let machine_ok = requirements_hold(m, job);
        if !machine_ok {
            rejected_by_machine += 1;
        }
        if machine_ok && requirements_hold(job, m) {
            matches += 1;
        }
    }
    Explanation {
        clauses: clauses.iter().map(|c| c.to_string()).zip(counts).collect(),
        rejected_by_machine,
        matches,
        machines: machines.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ad(text: &str) -> Ad {
        Ad::parse("test.ad", text).unwrap()
    }

    #[test]
    fn both_sides_must_accept() {
        let job = ad(
            "Requirements = Memory >= 2048 && OpSys == \"LINUX\"\nRequestMemory = 1024\nOwner = \"alice\"",
        );
        let big =
            ad("Memory = 4096\nOpSys = \"linux\"\nRequirements = TARGET.RequestMemory <= Memory");
        let small = ad("Memory = 1024\nOpSys = \"LINUX\"");
        let picky = ad("Memory = 8192\nOpSys = \"LINUX\"\nRequirements = TARGET.Owner == \"bob\"");
        assert!(symmetric_match(&job, &big));
        assert!(
            !symmetric_match(&job, &small),
            "job rejects the small machine"
        );
        assert!(!symmetric_match(&job, &picky), "the machine rejects alice");
        assert!(
            symmetric_match(&Ad::new(), &Ad::new()),
            "no requirements accept"
        );
    }

    #[test]
    fn undefined_and_error_requirements_reject() {
        let m = ad("Memory = 10");
        assert!(!requirements_hold(&ad("Requirements = Nope > 3"), &m));
        assert!(!requirements_hold(&ad("Requirements = 1 / 0"), &m));
        assert!(requirements_hold(&ad("Requirements = 1"), &m));
        assert!(!requirements_hold(&ad("Requirements = \"yes\""), &m));
    }

    #[test]
    fn rank_orders_candidates() {
        let job = ad("Rank = KFlops + (Memory > 2048 ? 1000 : 0)");
        let a = ad("KFlops = 500\nMemory = 4096");
        let b = ad("KFlops = 900\nMemory = 1024");
        assert_eq!(rank(&job, &a), 1500.0);
        assert_eq!(rank(&job, &b), 900.0);
        assert_eq!(rank(&ad("Rank = Nope"), &a), 0.0);
        assert_eq!(rank(&ad("Rank = TARGET.Memory > 2000"), &a), 1.0);
        assert_eq!(rank(&ad("Rank = 2.5"), &a), 2.5);
        assert_eq!(rank(&Ad::new(), &a), 0.0);
    }

    #[test]
    fn explain_counts_rejections_per_clause() {
        let job = ad(
            "Requirements = Memory >= 2048 && OpSys == \"LINUX\" && TARGET.Cpus > 1\nOwner = \"alice\"",
        );
        let machines = [
            ad("Memory = 4096\nOpSys = \"LINUX\"\nCpus = 4"),
            ad("Memory = 1024\nOpSys = \"LINUX\"\nCpus = 4"),
            ad("Memory = 8192\nOpSys = \"WINDOWS\"\nCpus = 1"),
            ad(
                "Memory = 8192\nOpSys = \"LINUX\"\nCpus = 8\nRequirements = TARGET.Owner == \"bob\"",
            ),
        ];
        let e = explain(&job, &machines);
        assert_eq!(
            e.clauses,
            [
                ("Memory >= 2048".to_string(), 1),
                ("OpSys == \"LINUX\"".to_string(), 1),
                ("TARGET.Cpus > 1".to_string(), 1),
            ]
        );
        assert_eq!((e.rejected_by_machine, e.matches, e.machines), (1, 1, 4));
    }
}
