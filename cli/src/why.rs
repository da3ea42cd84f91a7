//! `roost why JOB`: why a job is not running. The job's ad comes from the
//! schedd; the matchmaker evaluates it against every machine it knows
//! (`ToMatchmaker::Why`). If the matchmaker cannot explain, the same
//! report is computed here against the machines `roost status` lists.

use crate::ads::machine_ad;
use crate::render::table;
use policies::ad::Ad;
use policies::expr::{self, Expr};
use proto::ids::{HostName, JobId};
use proto::job::{JobState, JobSummary};
use proto::pool::{MachineAd, WhyReport};
use serde::Serialize;

/// Where the report came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Source {
    Matchmaker,
    /// Computed by the CLI; `reason` is what the matchmaker said.
    Local {
        reason: String,
    },
}

/// What `roost why` found, as `--json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Why {
    pub job: JobId,
    pub owner: String,
    pub state: JobState,
    pub host: Option<HostName>,
    pub hold_reason: Option<String>,
    /// The job's `Requirements`, if it has any.
    pub requirements: Option<String>,
    /// `None` when the job needs no machine (running or finished).
    pub report: Option<WhyReport>,
    pub source: Option<Source>,
}

impl Why {
    /// A job that needs no explanation: it runs or has ended.
    pub fn settled(j: &JobSummary) -> Option<Why> {
        let needs = matches!(j.state, JobState::Idle | JobState::Held);
        (!needs).then(|| Why {
            job: j.id,
            owner: j.owner.clone(),
            state: j.state,
            host: j.host.clone(),
            hold_reason: j.hold_reason.clone(),
            requirements: None,
            report: None,
            source: None,
        })
    }
}

/// The expression `name` / `MY.name` leads to in `ad`, following plain
/// attribute references (`Requirements = START` → `START`'s expression),
/// with the last name followed (upper-cased) as its label, as the
/// matchmaker reports it.
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

/// The first clause of `ad`'s requirements that does not hold against
/// `other` (the whole expression if no single clause fails), when the
/// requirements as a whole reject it.
fn refusing_clause(ad: &Ad, other: &Ad) -> Option<String> {
    let req = ad.get("Requirements")?;
    if expr::eval(req, ad, other).is_true() {
        return None;
    }
    let (label, body) = resolve(ad, req);
    let failing = body
        .clauses()
        .into_iter()
        .find(|c| !expr::eval(c, ad, other).is_true())
        .unwrap_or(body);
    Some(if label.is_empty() {
        failing.to_string()
    } else {
        format!("{label}: {failing}")
    })
}

/// The report the matchmaker would give, computed here against `machines`
/// (clause counts from `policies::matching::explain`).
pub fn local_report(job: JobId, ad: &Ad, machines: &[MachineAd]) -> WhyReport {
    let ads: Vec<Ad> = machines.iter().map(machine_ad).collect();
    let e = policies::matching::explain(ad, &ads);
    let mut machine_refusals = Vec::new();
    let mut matching = Vec::new();
    for (m, mad) in machines.iter().zip(&ads) {
        match refusing_clause(mad, ad) {
            Some(c) => machine_refusals.push((m.name.clone(), c)),
            None if policies::matching::requirements_hold(ad, mad) => matching.push(m.name.clone()),
            None => {}
        }
    }
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    WhyReport {
        job,
        machines: n(e.machines),
        clauses: e.clauses.into_iter().map(|(c, k)| (c, n(k))).collect(),
        machine_refusals,
        matching,
    }
}

fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What `roost why` prints.
pub fn render(w: &Why, width: Option<usize>) -> String {
    let mut out = String::new();
    let Some(r) = &w.report else {
        let line = match (w.state, &w.host) {
            (JobState::Running, Some(h)) => {
                format!("Job {} is running on {h}: it has its machine.\n", w.job)
            }
            (JobState::Running, None) => format!("Job {} is running.\n", w.job),
            (s, _) => format!(
                "Job {} is {}: it no longer needs a machine.\n",
                w.job,
                s.as_str()
            ),
        };
        return line;
    };
    out.push_str(&format!(
        "Job {} ({}, {}) against {}",
        w.job,
        w.owner,
        w.state.as_str(),
        plural(r.machines, "machine", "machines")
    ));
    match &w.source {
        Some(Source::Local { reason }) => out.push_str(&format!(
            " (computed here from `roost status`; the matchmaker said: {reason})"
        )),
        _ => out.push_str(" the matchmaker knows"),
    }
    out.push_str(":\n");
    if let (JobState::Held, Some(why)) = (w.state, &w.hold_reason) {
        out.push_str(&format!(
            "It is held ({why}); `roost release {}` lets it be matched.\n",
            w.job
        ));
    }
    out.push('\n');
    if r.machines == 0 {
        out.push_str(
            "No machine has reported to the matchmaker: the pool has nowhere to run it.\n",
        );
        return out;
    }
    if r.clauses.is_empty() {
        out.push_str("The job has no requirements: it accepts every machine.\n");
    } else {
        out.push_str("The job's requirements, clause by clause:\n");
        let rows: Vec<Vec<String>> = r
            .clauses
            .iter()
            .map(|(c, n)| vec![format!("  {n} of {}", r.machines), c.clone()])
            .collect();
        out.push_str(&table(&["  REJECTS", "CLAUSE"], &rows, width));
    }
    out.push('\n');
    if r.machine_refusals.is_empty() {
        out.push_str("No machine's own requirements reject the job.\n");
    } else {
        out.push_str("Machines whose own requirements reject the job:\n");
        let rows: Vec<Vec<String>> = r
            .machine_refusals
            .iter()
            .map(|(h, c)| vec![format!("  {h}"), c.clone()])
            .collect();
        out.push_str(&table(&["  MACHINE", "FAILING CLAUSE"], &rows, width));
    }
    out.push('\n');
    if r.matching.is_empty() {
        let worst = r.clauses.iter().max_by_key(|(_, n)| *n);
        match worst {
            Some((c, n)) if *n > 0 => out.push_str(&format!(
                "No machine matches now. The clause that rejects the most machines is `{c}` ({n} of {}).\n",
                r.machines
            )),
            _ if !r.machine_refusals.is_empty() => out.push_str(
                "No machine matches now: the job accepts them, but their own requirements reject it.\n",
            ),
            _ => out.push_str("No machine matches now.\n"),
        }
    } else {
        let names: Vec<String> = r.matching.iter().map(|h| h.to_string()).collect();
        let verb = if w.state == JobState::Held {
            "would match once released"
        } else {
            "match now; the job runs when one of them is free and the matchmaker next negotiates"
        };
        out.push_str(&format!(
            "{} {verb}: {}\n",
            plural(
                u32::try_from(names.len()).unwrap_or(u32::MAX),
                "machine",
                "machines"
            ),
            names.join(", ")
        ));
    }
    out
}

/// The job's `Requirements` text, if any.
pub fn requirements_text(ad: &Ad) -> Option<String> {
    ad.get("Requirements").map(Expr::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::pool::AdValue;

    fn machine(name: &str, attrs: &[(&str, AdValue)]) -> MachineAd {
        MachineAd {
            name: HostName(name.into()),
            state: "Unclaimed".into(),
            activity: "Idle".into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    fn pool() -> Vec<MachineAd> {
        use AdValue::*;
        vec![
            machine(
                "exec1",
                &[("Memory", Int(4096)), ("OpSys", Str("LINUX".into()))],
            ),
            machine(
                "exec2",
                &[("Memory", Int(1024)), ("OpSys", Str("LINUX".into()))],
            ),
            machine(
                "exec3",
                &[
                    ("Memory", Int(8192)),
                    ("OpSys", Str("LINUX".into())),
                    ("KeyboardIdle", Int(30)),
                    (
                        "Requirements",
                        Expr("TARGET.Owner =!= \"mallory\" && KeyboardIdle > 900".into()),
                    ),
                ],
            ),
        ]
    }

    const JOB: JobId = JobId {
        cluster: 7,
        proc: 0,
    };

    fn why(job: &Ad, state: JobState) -> Why {
        Why {
            job: JOB,
            owner: "ann".into(),
            state,
            host: None,
            hold_reason: (state == JobState::Held).then(|| "input not ready".into()),
            requirements: requirements_text(job),
            report: Some(local_report(JOB, job, &pool())),
            source: Some(Source::Local {
                reason: "unknown request".into(),
            }),
        }
    }

    #[test]
    fn local_report_counts_clauses_and_names_refusing_machines() {
        let job = Ad::parse(
            "job",
            "Owner = \"ann\"\nRequirements = Memory >= 2048 && OpSys == \"LINUX\"",
        )
        .unwrap();
        let r = local_report(JOB, &job, &pool());
        assert_eq!(r.machines, 3);
        assert_eq!(
            r.clauses,
            [
                ("Memory >= 2048".to_string(), 1),
                ("OpSys == \"LINUX\"".to_string(), 0)
            ]
        );
        assert_eq!(
            r.machine_refusals,
            [(HostName("exec3".into()), "KeyboardIdle > 900".to_string())]
        );
        assert_eq!(r.matching, [HostName("exec1".into())]);
    }

    #[test]
    fn why_renders_clauses_refusals_and_matches() {
        let job = Ad::parse(
            "job",
            "Owner = \"ann\"\nRequirements = Memory >= 16384 && OpSys == \"LINUX\"",
        )
        .unwrap();
        assert_eq!(
            render(&why(&job, JobState::Idle), None),
            "\
Job 7.0 (ann, idle) against 3 machines (computed here from `roost status`; the matchmaker said: unknown request):

The job's requirements, clause by clause:
  REJECTS  CLAUSE
  3 of 3   Memory >= 16384
  0 of 3   OpSys == \"LINUX\"

Machines whose own requirements reject the job:
  MACHINE  FAILING CLAUSE
  exec3    KeyboardIdle > 900

No machine matches now. The clause that rejects the most machines is `Memory >= 16384` (3 of 3).
"
        );
        let easy = Ad::parse("job", "Owner = \"ann\"").unwrap();
        let mut w = why(&easy, JobState::Held);
        w.source = Some(Source::Matchmaker);
        assert_eq!(
            render(&w, None),
            "\
Job 7.0 (ann, held) against 3 machines the matchmaker knows:
It is held (input not ready); `roost release 7.0` lets it be matched.

The job has no requirements: it accepts every machine.

Machines whose own requirements reject the job:
  MACHINE  FAILING CLAUSE
  exec3    KeyboardIdle > 900

2 machines would match once released: exec1, exec2
"
        );
    }

    #[test]
    fn running_and_finished_jobs_say_so() {
        let mut j = JobSummary {
            id: JOB,
            owner: "ann".into(),
            state: JobState::Running,
            executable: "x".into(),
            arguments: vec![],
            host: Some(HostName("exec1".into())),
            submitted: 0,
            exit: None,
            runs: 1,
            checkpoints: 0,
            ckpt_bytes: None,
            ckpt_time: None,
            ckpt_kind: None,
            ckpt_secs: None,
            finished: None,
            hold_reason: None,
            transfer: None,
        };
        assert_eq!(
            render(&Why::settled(&j).unwrap(), None),
            "Job 7.0 is running on exec1: it has its machine.\n"
        );
        j.state = JobState::Completed;
        assert_eq!(
            render(&Why::settled(&j).unwrap(), None),
            "Job 7.0 is completed: it no longer needs a machine.\n"
        );
        j.state = JobState::Idle;
        assert!(Why::settled(&j).is_none());
    }

    #[test]
    fn machines_that_all_refuse_are_blamed() {
        let job = Ad::parse("job", "Owner = \"ann\"\nRequirements = Memory > 1").unwrap();
        let busy = machine(
            "exec9",
            &[
                ("Memory", AdValue::Int(64)),
                ("KeyboardIdle", AdValue::Int(1)),
                ("Requirements", AdValue::Expr("Start".into())),
                ("Start", AdValue::Expr("KeyboardIdle >= 2".into())),
            ],
        );
        let w = Why {
            report: Some(local_report(JOB, &job, &[busy])),
            source: Some(Source::Matchmaker),
            ..why(&job, JobState::Idle)
        };
        assert_eq!(
            render(&w, None),
            "\
Job 7.0 (ann, idle) against 1 machine the matchmaker knows:

The job's requirements, clause by clause:
  REJECTS  CLAUSE
  0 of 1   Memory > 1

Machines whose own requirements reject the job:
  MACHINE  FAILING CLAUSE
  exec9    START: KeyboardIdle >= 2

No machine matches now: the job accepts them, but their own requirements reject it.
"
        );
    }

    #[test]
    fn no_machines_at_all() {
        let job = Ad::parse("job", "Requirements = Memory > 1").unwrap();
        let w = Why {
            report: Some(local_report(JOB, &job, &[])),
            source: Some(Source::Matchmaker),
            ..why(&job, JobState::Idle)
        };
        assert_eq!(
            render(&w, None),
            "\
Job 7.0 (ann, idle) against 0 machines the matchmaker knows:

No machine has reported to the matchmaker: the pool has nowhere to run it.
"
        );
    }
}
