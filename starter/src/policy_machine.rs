//! The execute machine's states and activities, driven by the owner's
//! policy: a pure state machine over a clock the caller passes in.
//!
//! | state | activity | when |
//! |---|---|---|
//! | Owner | Idle | no job; `START` is `false` (the owner is using the machine) |
//! | Unclaimed | Idle | no job; the machine takes one |
//! | Matched | Idle | a claim arrived; its starter is being started |
//! | Claimed | Busy | the job runs |
//! | Claimed | Suspended | `SUSPEND` (with `WANT_SUSPEND`): the job's processes are stopped |
//! | Preempting | Vacating | `PREEMPT` (with `WANT_VACATE`), `SUSPEND` without `WANT_SUSPEND`, or the matchmaker preempted the claim |
//! | Preempting | Killing | `KILL`, `PREEMPT` without `WANT_VACATE`, or vacating took longer than `MaxVacateTime` |
//!
//! Every expression is evaluated with the machine's ad (plus `State`,
//! `Activity`, `EnteredCurrentActivity` and `CurrentTime` from this
//! machine) as `MY` and the running job's ad, if known, as `TARGET`.

use policies::Ad;
use policies::policy::{Decision, OwnerPolicy};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Owner,
    Unclaimed,
    Matched,
    Claimed,
    Preempting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Idle,
    Busy,
    Suspended,
    Vacating,
    Killing,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What the ownerd must do to the running job after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop the job's processes.
    Suspend,
    /// Let them run again.
    Continue,
    /// Leave the machine (checkpoint first where possible, then kill).
    Vacate(String),
    /// Kill the job now.
    Kill(String),
}

/// One transition, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: (State, Activity),
    pub to: (State, Activity),
    pub why: String,
}

/// The machine's state and activity, and since when.
#[derive(Debug, Clone)]
pub struct PolicyMachine {
    state: State,
    activity: Activity,
    /// Unix seconds when the current activity began.
    entered: i64,
    /// Transitions not yet taken by [`PolicyMachine::take_log`].
    log: Vec<Transition>,
}

impl PolicyMachine {
    pub fn new(now: i64) -> PolicyMachine {
        PolicyMachine {
            state: State::Owner,
            activity: Activity::Idle,
            entered: now,
            log: Vec::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn activity(&self) -> Activity {
        self.activity
    }

    /// Unix seconds when the current activity began.
    pub fn entered(&self) -> i64 {
        self.entered
    }

    /// The transitions since the last call, oldest first.
    pub fn take_log(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.log)
    }

    fn go(&mut self, state: State, activity: Activity, now: i64, why: impl Into<String>) {
        if (state, activity) == (self.state, self.activity) {
            return;
        }
        self.log.push(Transition {
            from: (self.state, self.activity),
            to: (state, activity),
            why: why.into(),
        });
        self.state = state;
        self.activity = activity;
        self.entered = now;
    }

    /// Adds `State`, `Activity`, `EnteredCurrentActivity` and
    /// `CurrentTime` to `ad`.
    pub fn annotate(&self, ad: &mut Ad, now: i64) {
        ad.set("State", self.state.to_string().as_str());
        ad.set("Activity", self.activity.to_string().as_str());
        ad.set("EnteredCurrentActivity", self.entered);
        ad.set("CurrentTime", now);
    }

    fn decide(&self, policy: &OwnerPolicy, d: Decision, machine: &Ad, job: &Ad, now: i64) -> bool {
        let mut ad = machine.clone();
        self.annotate(&mut ad, now);
        policy.decide(d, &ad, job)
    }

    /// Without a job: `Owner` while `START` is `false`, else `Unclaimed`.
    pub fn idle(&mut self, policy: &OwnerPolicy, machine: &Ad, now: i64) {
        if !matches!(self.state, State::Owner | State::Unclaimed) {
            return;
        }
        let mut ad = machine.clone();
        self.annotate(&mut ad, now);
        let start = policy.evaluate(Decision::Start, &ad, &Ad::new());
        if start == policies::Value::Bool(false) {
            self.go(State::Owner, Activity::Idle, now, "START is false");
        } else {
            self.go(
                State::Unclaimed,
                Activity::Idle,
                now,
                format!("START is {start}"),
            );
        }
    }

    /// Whether a claim may be accepted now.
    pub fn takes_claims(&self) -> bool {
        self.state == State::Unclaimed
    }

    /// A claim arrived and its starter is starting.
    pub fn matched(&mut self, now: i64) {
        self.go(State::Matched, Activity::Idle, now, "claim accepted");
    }

    /// The starter runs the job.
    pub fn busy(&mut self, now: i64) {
        self.go(State::Claimed, Activity::Busy, now, "the job runs");
    }

    /// The job and its starter are gone.
    pub fn ended(&mut self, policy: &OwnerPolicy, machine: &Ad, now: i64) {
        self.go(State::Unclaimed, Activity::Idle, now, "the job left");
        self.idle(policy, machine, now);
    }

    /// The matchmaker preempted the claim for a better job.
    pub fn preempt(&mut self, reason: &str, now: i64) -> Option<Step> {
        match self.state {
            State::Matched | State::Claimed => {
                self.go(State::Preempting, Activity::Vacating, now, reason);
                Some(Step::Vacate(reason.to_string()))
            }
            _ => None,
        }
    }

    /// Evaluates the policy while a job runs; returns what to do to it.
    pub fn running(
        &mut self,
        policy: &OwnerPolicy,
        machine: &Ad,
        job: &Ad,
        now: i64,
    ) -> Option<Step> {
        let d = |m: &Self, which| m.decide(policy, which, machine, job, now);
        match (self.state, self.activity) {
            (State::Claimed, Activity::Busy | Activity::Suspended) => {
                if d(self, Decision::Preempt) {
                    return Some(self.leave(policy, machine, job, now, "PREEMPT is true"));
                }
                if self.activity == Activity::Busy {
                    if d(self, Decision::Suspend) {
                        if d(self, Decision::WantSuspend) {
                            self.go(State::Claimed, Activity::Suspended, now, "SUSPEND is true");
                            return Some(Step::Suspend);
                        }
                        return Some(self.leave(
                            policy,
                            machine,
                            job,
                            now,
                            "SUSPEND is true and WANT_SUSPEND is not",
                        ));
                    }
                } else if d(self, Decision::Continue) {
                    self.go(State::Claimed, Activity::Busy, now, "CONTINUE is true");
                    return Some(Step::Continue);
                }
                None
            }
            (State::Preempting, Activity::Vacating) => {
                let mut ad = machine.clone();
                self.annotate(&mut ad, now);
                let max = policy.max_vacate_secs(&policy.with_policy(&ad), job);
                let took = now.saturating_sub(self.entered);
                if d(self, Decision::Kill) {
                    self.go(State::Preempting, Activity::Killing, now, "KILL is true");
                    Some(Step::Kill("the owner's policy kills the job (KILL)".into()))
                } else if took > i64::try_from(max).unwrap_or(i64::MAX) {
                    self.go(
                        State::Preempting,
                        Activity::Killing,
                        now,
                        format!("vacating took more than MaxVacateTime ({max} s)"),
                    );
                    Some(Step::Kill(format!(
                        "vacating took more than the owner's MaxVacateTime ({max} s)"
                    )))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Vacate (with `WANT_VACATE`) or kill.
    fn leave(&mut self, policy: &OwnerPolicy, machine: &Ad, job: &Ad, now: i64, why: &str) -> Step {
        if self.decide(policy, Decision::WantVacate, machine, job, now) {
            self.go(State::Preempting, Activity::Vacating, now, why);
            Step::Vacate(format!("the owner's policy vacates the job ({why})"))
        } else {
            self.go(
                State::Preempting,
                Activity::Killing,
                now,
                format!("{why}; WANT_VACATE is false"),
            );
            Step::Kill(format!("the owner's policy kills the job ({why})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine's ad with `KeyboardIdle` computed from the last activity.
    fn machine(last_activity: i64, now: i64) -> Ad {
        let mut ad = Ad::new();
        ad.set("KeyboardIdle", now - last_activity);
        ad
    }

    #[test]
    fn desktop_policy_over_a_fake_clock() {
        let p = OwnerPolicy::desktop();
        let job = Ad::new();
        let t0 = 1_000_000;
        let mut touched = t0;
        let mut m = PolicyMachine::new(t0);
        // The owner works: Owner; 15 idle minutes later: Unclaimed.
        m.idle(&p, &machine(touched, t0 + 60), t0 + 60);
        assert_eq!((m.state(), m.activity()), (State::Owner, Activity::Idle));
        assert!(!m.takes_claims());
        m.idle(&p, &machine(touched, t0 + 15 * 60), t0 + 15 * 60);
        assert_eq!(m.state(), State::Owner, "exactly 15 minutes is not more");
        let t = t0 + 15 * 60 + 1;
        m.idle(&p, &machine(touched, t), t);
        assert_eq!(
            (m.state(), m.activity()),
            (State::Unclaimed, Activity::Idle)
        );
        assert!(m.takes_claims());
        m.matched(t);
        m.busy(t);
        assert_eq!((m.state(), m.activity()), (State::Claimed, Activity::Busy));
        assert_eq!(m.running(&p, &machine(touched, t + 10), &job, t + 10), None);

        // The first key press suspends.
        let t = t + 100;
        touched = t;
        assert_eq!(
            m.running(&p, &machine(touched, t), &job, t),
            Some(Step::Suspend)
        );
        assert_eq!(
            (m.state(), m.activity()),
            (State::Claimed, Activity::Suspended)
        );
        assert_eq!(m.entered(), t);
        // Idle 5 minutes (and a second): continue.
        assert_eq!(
            m.running(&p, &machine(touched, t + 300), &job, t + 300),
            None
        );
        let t = t + 301;
        assert_eq!(
            m.running(&p, &machine(touched, t), &job, t),
            Some(Step::Continue)
        );
        assert_eq!((m.state(), m.activity()), (State::Claimed, Activity::Busy));

        // Back and staying: suspended, then vacated after 10 suspended minutes.
        let t = t + 50;
        touched = t;
        assert_eq!(
            m.running(&p, &machine(touched, t), &job, t),
            Some(Step::Suspend)
        );
        let suspended_at = t;
        for k in 1..=10 {
            let now = suspended_at + k * 60;
            touched = now - 5;
            assert_eq!(
                m.running(&p, &machine(touched, now), &job, now),
                None,
                "minute {k}"
            );
        }
        let now = suspended_at + 10 * 60 + 1;
        let step = m.running(&p, &machine(now - 5, now), &job, now);
        assert!(
            matches!(&step, Some(Step::Vacate(why)) if why.contains("PREEMPT")),
            "{step:?}"
        );
        assert_eq!(
            (m.state(), m.activity()),
            (State::Preempting, Activity::Vacating)
        );

        // The job does not leave: killed once vacating exceeds MaxVacateTime (600 s).
        let vac = now;
        assert_eq!(
            m.running(&p, &machine(vac, vac + 600), &job, vac + 600),
            None
        );
        let step = m.running(&p, &machine(vac, vac + 601), &job, vac + 601);
        assert!(matches!(&step, Some(Step::Kill(_))), "{step:?}");
        assert_eq!(
            (m.state(), m.activity()),
            (State::Preempting, Activity::Killing)
        );
        assert_eq!(
            m.running(&p, &machine(vac, vac + 700), &job, vac + 700),
            None
        );

        // The job is gone; the owner is still there.
        m.ended(&p, &machine(vac + 690, vac + 700), vac + 700);
        assert_eq!((m.state(), m.activity()), (State::Owner, Activity::Idle));

        let log = m.take_log();
        let path: Vec<String> = log
            .iter()
            .map(|t| format!("{}/{}", t.to.0, t.to.1))
            .collect();
        assert_eq!(
            path,
            [
                "Unclaimed/Idle",
                "Matched/Idle",
                "Claimed/Busy",
                "Claimed/Suspended",
                "Claimed/Busy",
                "Claimed/Suspended",
                "Preempting/Vacating",
                "Preempting/Killing",
                "Unclaimed/Idle",
                "Owner/Idle"
            ]
        );
        assert!(m.take_log().is_empty());
    }

    #[test]
    fn kill_and_want_flags_from_a_policy_file() {
        let p = OwnerPolicy::parse(
            "p.toml",
            "suspend = \"KeyboardIdle < 10\"\nwant_suspend = false\nwant_vacate = false\n",
        )
        .unwrap();
        let mut m = PolicyMachine::new(0);
        m.busy(100);
        // SUSPEND without WANT_SUSPEND leaves; without WANT_VACATE by kill.
        let step = m.running(&p, &machine(100, 101), &Ad::new(), 101);
        assert!(matches!(&step, Some(Step::Kill(_))), "{step:?}");
        assert_eq!(m.activity(), Activity::Killing);

        let p = OwnerPolicy::parse("p.toml", "kill = \"Activity == \\\"Vacating\\\"\"\n").unwrap();
        let mut m = PolicyMachine::new(0);
        m.busy(0);
        assert_eq!(
            m.preempt("preempted by job 2.0 of alice", 5),
            Some(Step::Vacate("preempted by job 2.0 of alice".into()))
        );
        assert_eq!(m.preempt("again", 6), None, "already leaving");
        let step = m.running(&p, &machine(0, 7), &Ad::new(), 7);
        assert!(
            matches!(&step, Some(Step::Kill(why)) if why.contains("KILL")),
            "{step:?}"
        );
    }

    #[test]
    fn start_that_reads_the_job_keeps_the_machine_unclaimed() {
        let p = OwnerPolicy::parse("p.toml", "start = 'TARGET.Owner != \"mallory\"'\n").unwrap();
        let mut m = PolicyMachine::new(0);
        m.idle(&p, &machine(0, 1), 1);
        assert_eq!(m.state(), State::Unclaimed);
    }
}
