//! `roost-ownerd --check-policy FILE`: how the owner's policy evaluates
//! right now against this machine, and what would follow if the owner
//! touched the keyboard now.
//!
//! It goes through the daemon's own code: the policy is read by
//! [`crate::ownerd::load_policy`] (so a bad file gets the message the
//! daemon would give), the machine's ad is made by
//! [`crate::ownerd::machine_attrs`] from the same activity sources, and the
//! transitions come from [`PolicyMachine`] stepped once a simulated second,
//! as the daemon evaluates the policy (every [`crate::ownerd::POLICY_PERIOD`]).

use crate::policy_machine::{Activity, PolicyMachine, State, Step};
use policies::Ad;
use policies::expr::{self, Expr};
use policies::policy::{Decision, OwnerPolicy};
use std::fmt::Write;

/// How far ahead the scenarios are followed, in seconds.
pub const HORIZON_SECS: i64 = 4 * 3600;

/// One transition in a scenario, `at` seconds after the touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    pub at: i64,
    pub from: (State, Activity),
    pub to: (State, Activity),
    pub why: String,
    /// What the ownerd does to the job at this step, if anything.
    pub step: Option<String>,
}

/// Whether the owner goes on using the machine after the touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// One key press, then nothing.
    Leaves,
    /// Keeps typing (a key press every second).
    Stays,
}

/// `machine` as the policy sees it at `t` when the owner last touched the
/// keyboard at `touched`.
fn at(machine: &Ad, touched: i64, t: i64) -> Ad {
    let mut ad = machine.clone();
    ad.set("KeyboardIdle", (t - touched).max(0));
    ad.set("ConsoleIdle", (t - touched).max(0));
    ad
}

fn step_text(s: &Step) -> String {
    match s {
        Step::Suspend => "the job's processes are stopped".into(),
        Step::Continue => "the job's processes run again".into(),
        Step::Vacate(_) => {
            "vacate: the job is checkpointed and leaves once its image is home (below: if it has not)"
                .into()
        }
        Step::Kill(_) => "kill: the job is killed".into(),
    }
}

/// Follows the machine from `now` for [`HORIZON_SECS`] after a key press
/// at `now`: with a job that has just started running (`with_job`) or
/// without one. A vacating job is assumed not to have left, so that the
/// kill that would follow shows; a killed job leaves at the next second.
pub fn scenario(
    policy: &OwnerPolicy,
    machine: &Ad,
    now: i64,
    with_job: bool,
    owner: Owner,
) -> Vec<Timed> {
    let job = Ad::new();
    let mut m = PolicyMachine::new(now);
    m.idle(policy, &at(machine, now - HORIZON_SECS, now), now);
    if with_job {
        m.matched(now);
        m.busy(now);
    }
    m.take_log();
    let mut out = Vec::new();
    let mut has_job = with_job;
    let mut killed = false;
    for t in now..=now + HORIZON_SECS {
        let touched = match owner {
            Owner::Leaves => now,
            Owner::Stays => t,
        };
        let ad = at(machine, touched, t);
        let mut step = None;
        if has_job && killed {
            m.ended(policy, &ad, t);
            has_job = false;
        } else if has_job {
            step = m.running(policy, &ad, &job, t);
            killed = matches!(step, Some(Step::Kill(_)));
        } else {
            m.idle(policy, &ad, t);
        }
        let log = m.take_log();
        let n = log.len();
        for (i, tr) in log.into_iter().enumerate() {
            out.push(Timed {
                at: t - now,
                from: tr.from,
                to: tr.to,
                why: tr.why,
                step: if i + 1 == n {
                    step.as_ref().map(step_text)
                } else {
                    None
                },
            });
        }
    }
    out
}

fn pair(p: (State, Activity)) -> String {
    format!("{}/{}", p.0, p.1)
}

/// The report `--check-policy` prints: the machine's ad, each policy
/// expression's value now without a job and with one, and the four
/// scenarios (job or none; the owner leaves again or stays).
pub fn report(file: &str, policy: &OwnerPolicy, machine: &Ad, now: i64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "The owner's policy {file} is valid.\n");
    let _ = writeln!(s, "This machine's ad now (MY in every expression):");
    for (name, e) in machine.iter() {
        let _ = writeln!(s, "  {name} = {e}");
    }

    let mut idle = PolicyMachine::new(now);
    idle.idle(policy, machine, now);
    let mut busy = PolicyMachine::new(now);
    busy.matched(now);
    busy.busy(now);
    let job = Ad::new();
    let with = |m: &PolicyMachine| {
        let mut ad = machine.clone();
        m.annotate(&mut ad, now);
        policy.with_policy(&ad)
    };
    let (ad_idle, ad_busy) = (with(&idle), with(&busy));
    let mut rows: Vec<(String, &Expr, Option<Decision>)> = vec![
        ("start".into(), &policy.start, Some(Decision::Start)),
        ("suspend".into(), &policy.suspend, Some(Decision::Suspend)),
        ("continue".into(), &policy.cont, Some(Decision::Continue)),
        ("preempt".into(), &policy.preempt, Some(Decision::Preempt)),
        ("kill".into(), &policy.kill, Some(Decision::Kill)),
        (
            "want_suspend".into(),
            &policy.want_suspend,
            Some(Decision::WantSuspend),
        ),
        (
            "want_vacate".into(),
            &policy.want_vacate,
            Some(Decision::WantVacate),
        ),
        ("max_vacate_time".into(), &policy.max_vacate_time, None),
        ("rank".into(), &policy.rank, None),
    ];
    for (name, e) in &policy.attributes {
        rows.push((format!("attributes.{name}"), e, None));
    }
    let value = |ad: &Ad, e: &Expr, d: Option<Decision>| match d {
        Some(d) => policy.evaluate(d, ad, &job).to_string(),
        None => expr::eval(e, ad, &job).to_string(),
    };
    let _ = writeln!(
        s,
        "\nThe policy now (TARGET: the job's ad, empty here; undefined and error count as false):"
    );
    let idle_col = format!("no job ({})", pair((idle.state(), idle.activity())));
    let busy_col = "a job running (Claimed/Busy)".to_string();
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|(name, e, d)| {
            [
                name.clone(),
                value(&ad_idle, e, *d),
                value(&ad_busy, e, *d),
                e.to_string(),
            ]
        })
        .collect();
    let width = |i: usize, head: &str| {
        cells
            .iter()
            .map(|c| c[i].len())
            .max()
            .unwrap_or(0)
            .max(head.len())
    };
    let (w0, w1, w2) = (width(0, "key"), width(1, &idle_col), width(2, &busy_col));
    let _ = writeln!(
        s,
        "  {:w0$}  {idle_col:w1$}  {busy_col:w2$}  expression",
        "key"
    );
    for [name, v1, v2, e] in &cells {
        let _ = writeln!(s, "  {name:w0$}  {v1:w1$}  {v2:w2$}  {e}");
    }
    let takes = if idle.takes_claims() {
        "takes jobs now"
    } else {
        "takes no job now"
    };
    let _ = writeln!(
        s,
        "\nWithout a job this machine is {} and {takes}.",
        pair((idle.state(), idle.activity()))
    );

    for (with_job, owner, title) in [
        (
            true,
            Owner::Leaves,
            "If the owner touched the keyboard now, once, while a job runs:",
        ),
        (
            true,
            Owner::Stays,
            "If the owner touched the keyboard now and kept using the machine, while a job runs:",
        ),
        (
            false,
            Owner::Leaves,
            "If the owner touched the keyboard now, once, with no job:",
        ),
        (
            false,
            Owner::Stays,
            "If the owner touched the keyboard now and kept using the machine, with no job:",
        ),
    ] {
        let _ = writeln!(s, "\n{title}");
        let steps = scenario(policy, machine, now, with_job, owner);
        if steps.is_empty() {
            let _ = writeln!(
                s,
                "  nothing changes (within {} hours)",
                HORIZON_SECS / 3600
            );
        }
        for t in &steps {
            let _ = write!(
                s,
                "  +{:>5}s  {} -> {}: {}",
                t.at,
                pair(t.from),
                pair(t.to),
                t.why
            );
            match &t.step {
                Some(x) => {
                    let _ = writeln!(s, "; {x}");
                }
                None => s.push('\n'),
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(idle: i64) -> Ad {
        let mut ad = Ad::new();
        ad.set("Machine", "exec1");
        ad.set("KeyboardIdle", idle);
        ad
    }

    fn path(steps: &[Timed]) -> Vec<String> {
        steps
            .iter()
            .map(|t| format!("+{} {}", t.at, pair(t.to)))
            .collect()
    }

    #[test]
    fn desktop_policy_a_touch_suspends_and_five_idle_minutes_continue() {
        let p = OwnerPolicy::desktop();
        let now = 2_000_000;
        let steps = scenario(&p, &machine(3600), now, true, Owner::Leaves);
        assert_eq!(path(&steps), ["+0 Claimed/Suspended", "+301 Claimed/Busy"]);
        assert_eq!(steps[0].why, "SUSPEND is true");
        assert_eq!(
            steps[0].step.as_deref(),
            Some("the job's processes are stopped")
        );
    }

    #[test]
    fn desktop_policy_an_owner_who_stays_gets_the_machine_back() {
        let p = OwnerPolicy::desktop();
        let now = 2_000_000;
        let steps = scenario(&p, &machine(3600), now, true, Owner::Stays);
        assert_eq!(
            path(&steps),
            [
                "+0 Claimed/Suspended",
                "+601 Preempting/Vacating",
                "+1202 Preempting/Killing",
                "+1203 Unclaimed/Idle",
                "+1203 Owner/Idle"
            ]
        );
        assert!(
            steps[1].step.as_deref().unwrap().starts_with("vacate:"),
            "{steps:?}"
        );
        let steps = scenario(&p, &machine(3600), now, false, Owner::Leaves);
        assert_eq!(path(&steps), ["+0 Owner/Idle", "+901 Unclaimed/Idle"]);
    }

    #[test]
    fn the_report_shows_values_and_transitions() {
        let p = OwnerPolicy::parse(
            "p.toml",
            "want_suspend = false\n[attributes]\nDepartment = \"physics\"\n",
        )
        .unwrap();
        let r = report("p.toml", &p, &machine(3600), 2_000_000);
        assert!(r.contains("  KeyboardIdle = 3600\n"), "{r}");
        let start = r
            .lines()
            .find(|l| l.trim_start().starts_with("start "))
            .unwrap();
        assert!(
            start.contains("true") && start.ends_with("KeyboardIdle > 15 * 60"),
            "{start}"
        );
        assert!(r.contains("attributes.Department"), "{r}");
        assert!(
            r.contains("Without a job this machine is Unclaimed/Idle and takes jobs now."),
            "{r}"
        );
        assert!(
            r.contains("+    0s  Claimed/Busy -> Preempting/Vacating: SUSPEND is true and WANT_SUSPEND is not; vacate:"),
            "{r}"
        );
    }
}
