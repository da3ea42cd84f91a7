//! The workstation owner's policy file (TOML, expressions as strings) and
//! the desktop default.
//!
//! ```toml
//! start = "KeyboardIdle > 15 * 60"
//! suspend = "KeyboardIdle < 60"
//! continue = "KeyboardIdle > 5 * 60"
//! preempt = 'Activity == "Suspended" && CurrentTime - EnteredCurrentActivity > 10 * 60'
//! kill = "CurrentTime - EnteredCurrentActivity > MaxVacateTime"
//! want_suspend = true
//! want_vacate = true
//! max_vacate_time = 600
//! rank = 'TARGET.Owner == "alice"'
//!
//! [attributes]
//! Department = "physics"
//! ```
//!
//! Every key is optional; a missing key keeps the desktop default. Each
//! expression is evaluated with the machine's ad as `MY` and the job's as
//! `TARGET`.

use crate::ad::Ad;
use crate::expr::{self, Expr, Value};
use crate::source::Source;
use crate::{Loc, PolicyError};
use toml_edit::{ImDocument, Item, Value as TomlValue};

/// The keys a policy file may hold.
pub const KEYS: &[&str] = &[
    "start",
    "suspend",
    "continue",
    "preempt",
    "kill",
    "want_suspend",
    "want_vacate",
    "max_vacate_time",
    "rank",
    "attributes",
];

/// The desktop policy: start after 15 idle minutes, suspend at the first
/// key press, continue after 5 idle minutes, vacate after 10 suspended
/// minutes, kill a vacate that takes longer than `max_vacate_time`.
pub const DESKTOP: &[(&str, &str)] = &[
    ("start", "KeyboardIdle > 15 * 60"),
    ("suspend", "KeyboardIdle < 60"),
    ("continue", "KeyboardIdle > 5 * 60"),
    (
        "preempt",
        "Activity == \"Suspended\" && CurrentTime - EnteredCurrentActivity > 10 * 60",
    ),
    (
        "kill",
        "CurrentTime - EnteredCurrentActivity > MaxVacateTime",
    ),
    ("want_suspend", "true"),
    ("want_vacate", "true"),
    ("max_vacate_time", "10 * 60"),
    ("rank", "0"),
];

/// One decision the owner daemon asks the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Start,
    Suspend,
    Continue,
    Preempt,
    Kill,
    WantSuspend,
    WantVacate,
}

/// An owner policy: every expression parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerPolicy {
    pub start: Expr,
    pub suspend: Expr,
    pub cont: Expr,
    pub preempt: Expr,
    pub kill: Expr,
    pub want_suspend: Expr,
    pub want_vacate: Expr,
    pub max_vacate_time: Expr,
    pub rank: Expr,
    /// Custom attributes the machine advertises.
    pub attributes: Vec<(String, Expr)>,
}

impl Default for OwnerPolicy {
    fn default() -> Self {
        OwnerPolicy::desktop()
    }
}

impl OwnerPolicy {
    /// The desktop default (see [`DESKTOP`]).
    pub fn desktop() -> OwnerPolicy {
        let get = |key: &str| {
            let text = DESKTOP
                .iter()
                .find(|(k, _)| *k == key)
                .map_or("false", |(_, t)| t);
            expr::parse(text).unwrap_or(Expr::Lit(Value::Error))
        };
        OwnerPolicy {
            start: get("start"),
            suspend: get("suspend"),
            cont: get("continue"),
            preempt: get("preempt"),
            kill: get("kill"),
            want_suspend: get("want_suspend"),
            want_vacate: get("want_vacate"),
            max_vacate_time: get("max_vacate_time"),
            rank: get("rank"),
            attributes: Vec::new(),
        }
    }

    /// Parses a policy file; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<OwnerPolicy, PolicyError> {
        let src = Source { file, text };
        let doc = ImDocument::parse(text).map_err(|e| PolicyError::Syntax {
            loc: src.loc(e.span().map_or(0, |s| s.start)),
            message: e
                .message()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; "),
        })?;
        let mut p = OwnerPolicy::desktop();
        for (key, item) in doc.as_table().iter() {
            let key_at = doc
                .as_table()
                .get_key_value(key)
                .and_then(|(k, _)| k.span())
                .map_or(0, |s| s.start);
            let slot = match key {
                "start" => &mut p.start,
                "suspend" => &mut p.suspend,
                "continue" => &mut p.cont,
                "preempt" => &mut p.preempt,
                "kill" => &mut p.kill,
                "want_suspend" => &mut p.want_suspend,
                "want_vacate" => &mut p.want_vacate,
                "max_vacate_time" => &mut p.max_vacate_time,
                "rank" => &mut p.rank,
                "attributes" => {
                    let Some(table) = item.as_table_like() else {
                        return Err(PolicyError::BadValue {
                            loc: src.loc(item.span().map_or(key_at, |s| s.start)),
                            key: key.into(),
                            message: "expected a table".into(),
                        });
                    };
                    for (name, v) in table.iter() {
                        let name_at = table
                            .get_key_value(name)
                            .and_then(|(k, _)| k.span())
                            .map_or(key_at, |s| s.start);
                        let akey = format!("attributes.{name}");
                        crate::jobfile::check_attr_name(name).map_err(|message| {
                            PolicyError::BadValue {
                                loc: src.loc(name_at),
                                key: akey.clone(),
                                message,
                            }
                        })?;
                        let e = attribute_value(&src, &akey, v, name_at)?;
                        p.attributes.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                        p.attributes.push((name.to_string(), e));
                    }
                    continue;
                }
                _ => {
                    return Err(PolicyError::UnknownKey {
                        loc: src.loc(key_at),
                        key: key.into(),
                        expected: KEYS.join(", "),
                    });
                }
            };
            *slot = expression(&src, key, item, key_at)?;
        }
        Ok(p)
    }

    fn expr_of(&self, d: Decision) -> &Expr {
        match d {
            Decision::Start => &self.start,
            Decision::Suspend => &self.suspend,
            Decision::Continue => &self.cont,
            Decision::Preempt => &self.preempt,
            Decision::Kill => &self.kill,
            Decision::WantSuspend => &self.want_suspend,
            Decision::WantVacate => &self.want_vacate,
        }
    }

    /// Evaluates one decision with the machine's ad as `MY` and the job's
    /// (empty when there is none) as `TARGET`; `undefined` and `error`
    /// count as false.
    pub fn decide(&self, d: Decision, machine: &Ad, job: &Ad) -> bool {
        self.evaluate(d, machine, job).is_true()
    }

    /// The value behind [`OwnerPolicy::decide`], for logs.
    pub fn evaluate(&self, d: Decision, machine: &Ad, job: &Ad) -> Value {
        let ad = self.with_policy(machine);
        expr::eval(self.expr_of(d), &ad, job)
    }

    /// Seconds a vacating job gets before it is killed.
    pub fn max_vacate_secs(&self, machine: &Ad, job: &Ad) -> u64 {
        match expr::eval(&self.max_vacate_time, machine, job) {
            Value::Int(i) => i.max(0) as u64,
            Value::Real(r) if r.is_finite() => r.max(0.0) as u64,
            _ => 0,
        }
    }

    /// `machine` plus what the policy advertises: `Start`, `Requirements`
    /// (= `START`, so a job is matched only where it may start), `Rank`,
    /// `MaxVacateTime`, `WantSuspend`, `WantVacate` and the custom
    /// attributes. Attributes already in `machine` are kept unless the
    /// policy sets them.
    pub fn with_policy(&self, machine: &Ad) -> Ad {
        let mut ad = machine.clone();
        self.advertise(&mut ad);
        ad
    }

    /// Adds what the policy advertises to `ad` (see
    /// [`OwnerPolicy::with_policy`]).
    pub fn advertise(&self, ad: &mut Ad) {
        for (name, e) in &self.attributes {
            ad.insert(name, e.clone());
        }
        ad.insert("Start", self.start.clone());
        ad.insert(
            "Requirements",
            Expr::Attr {
                scope: expr::Scope::My,
                name: "Start".into(),
            },
        );
        ad.insert("Rank", self.rank.clone());
        ad.insert("MaxVacateTime", self.max_vacate_time.clone());
        ad.insert("WantSuspend", self.want_suspend.clone());
        ad.insert("WantVacate", self.want_vacate.clone());
    }
}

fn bad(src: &Source, at: usize, key: &str, message: String) -> PolicyError {
    PolicyError::BadValue {
        loc: src.loc(at),
        key: key.into(),
        message,
    }
}

/// A policy value: an expression string, or a boolean or number literal.
fn expression(src: &Source, key: &str, item: &Item, key_at: usize) -> Result<Expr, PolicyError> {
    let at = item.span().map_or(key_at, |s| s.start);
    match item.as_value() {
        Some(TomlValue::String(s)) => {
            let text = s.value();
            if text.trim().is_empty() {
                return Err(bad(src, at, key, "must not be empty".into()));
            }
            expr::parse(text).map_err(|source| {
                let raw = item.span().and_then(|sp| src.text.get(sp)).unwrap_or("");
                let exact = !raw.contains('\n')
                    && (raw.starts_with('\'') && !raw.starts_with("'''")
                        || raw.starts_with('"')
                            && !raw.contains('\\')
                            && !raw.starts_with("\"\"\""));
                let loc = if exact {
                    let body = src.loc(at + 1);
                    Loc {
                        col: body.col + source.col - 1,
                        ..body
                    }
                } else {
                    src.loc(at)
                };
                PolicyError::BadExpression {
                    loc,
                    key: key.into(),
                    source,
                }
            })
        }
        Some(TomlValue::Boolean(b)) => Ok(Expr::Lit(Value::Bool(*b.value()))),
        Some(TomlValue::Integer(i)) => Ok(Expr::Lit(Value::Int(*i.value()))),
        Some(TomlValue::Float(f)) if f.value().is_finite() => {
            Ok(Expr::Lit(Value::Real(*f.value())))
        }
        _ => Err(bad(
            src,
            at,
            key,
            "expected an expression string, a boolean or a number".into(),
        )),
    }
}

/// A custom attribute: TOML strings are string values; to advertise an
/// expression, write it as `{ expr = "..." }`.
fn attribute_value(
    src: &Source,
    key: &str,
    item: &Item,
    name_at: usize,
) -> Result<Expr, PolicyError> {
    let at = item.span().map_or(name_at, |s| s.start);
    match item.as_value() {
        Some(TomlValue::String(s)) => Ok(Expr::Lit(Value::Str(s.value().clone()))),
        Some(TomlValue::InlineTable(t)) if t.len() == 1 && t.contains_key("expr") => {
            let inner = t.get("expr").expect("checked");
            match inner.as_str() {
                Some(text) => expr::parse(text).map_err(|source| PolicyError::BadExpression {
                    loc: src.loc(inner.span().map_or(at, |s| s.start)),
                    key: key.into(),
                    source,
                }),
                None => Err(bad(src, at, key, "expected expr = \"expression\"".into())),
            }
        }
        _ => expression(src, key, item, name_at).map_err(|_| {
            bad(
                src,
                at,
                key,
                "expected a string, a number, a boolean or { expr = \"...\" }".into(),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(keyboard_idle: i64, activity: &str, entered: i64) -> Ad {
        let mut m = Ad::new();
        m.set("KeyboardIdle", keyboard_idle);
        m.set("Activity", activity);
        m.set("EnteredCurrentActivity", entered);
        m
    }

    #[test]
    fn desktop_policy_decides_like_a_desktop() {
        let p = OwnerPolicy::desktop();
        let job = Ad::new();
        let now = expr::now();
        assert!(!p.decide(Decision::Start, &machine(60, "Idle", now), &job));
        assert!(p.decide(Decision::Start, &machine(16 * 60, "Idle", now), &job));
        assert!(p.decide(Decision::Suspend, &machine(0, "Busy", now), &job));
        assert!(!p.decide(Decision::Suspend, &machine(120, "Busy", now), &job));
        assert!(!p.decide(Decision::Continue, &machine(60, "Suspended", now), &job));
        assert!(p.decide(Decision::Continue, &machine(6 * 60, "Suspended", now), &job));
        assert!(!p.decide(Decision::Preempt, &machine(0, "Suspended", now - 60), &job));
        assert!(p.decide(
            Decision::Preempt,
            &machine(0, "Suspended", now - 11 * 60),
            &job
        ));
        assert!(!p.decide(Decision::Preempt, &machine(0, "Busy", now - 11 * 60), &job));
        assert!(!p.decide(Decision::Kill, &machine(0, "Vacating", now - 60), &job));
        assert!(p.decide(Decision::Kill, &machine(0, "Vacating", now - 11 * 60), &job));
        assert!(p.decide(Decision::WantSuspend, &machine(0, "Busy", now), &job));
        assert_eq!(p.max_vacate_secs(&Ad::new(), &job), 600);
    }

    #[test]
    fn policy_file_overrides_defaults() {
        let text = r#"
start = 'KeyboardIdle > 5 && TARGET.Owner != "mallory"'
suspend = "KeyboardIdle < 2"
want_vacate = false
max_vacate_time = 30
rank = 'TARGET.Owner == "alice" ? 10 : 0'

[attributes]
Department = "physics"
HasGpu = false
Cores = 8
Fast = { expr = "Cores > 4" }
"#;
        let p = OwnerPolicy::parse("policy.toml", text).unwrap();
        let alice = Ad::parse("job", "Owner = \"alice\"").unwrap();
        let mallory = Ad::parse("job", "Owner = \"mallory\"").unwrap();
        let m = machine(10, "Idle", 0);
        assert!(p.decide(Decision::Start, &m, &alice));
        assert!(!p.decide(Decision::Start, &m, &mallory));
        assert!(!p.decide(Decision::WantVacate, &m, &alice));
        assert_eq!(p.cont.to_string(), DESKTOP[2].1);
        assert_eq!(p.max_vacate_secs(&m, &alice), 30);

        let ad = p.with_policy(&m);
        assert_eq!(ad.eval_attr("Department", &alice), Value::from("physics"));
        assert_eq!(ad.eval_attr("Fast", &alice), Value::Bool(true));
        assert_eq!(ad.eval_attr("Rank", &alice), Value::Int(10));
        assert!(crate::matching::symmetric_match(&alice, &ad));
        assert!(!crate::matching::symmetric_match(&mallory, &ad));
        assert_eq!(crate::matching::rank(&ad, &alice), 10.0);
    }

    #[test]
    fn bad_policy_files_name_line_and_key() {
        let cases = [
            (
                "start = \"true\"\nsuspnd = \"false\"\n",
                "policy.toml:2:1: unknown key 'suspnd' (expected one of: start, suspend, continue, preempt, kill, want_suspend, want_vacate, max_vacate_time, rank, attributes)",
            ),
            (
                "\nstart = \"KeyboardIdle >\"\n",
                "policy.toml:2:24: key 'start': bad expression: expected an expression, found the end",
            ),
            (
                "kill = [1]\n",
                "policy.toml:1:8: key 'kill': expected an expression string, a boolean or a number",
            ),
            (
                "rank = \"  \"\n",
                "policy.toml:1:8: key 'rank': must not be empty",
            ),
            (
                "[attributes]\nx-y = 1\n",
                "policy.toml:2:1: key 'attributes.x-y': 'x-y' is not an attribute name (expected letters, digits and '_', not starting with a digit)",
            ),
            (
                "[attributes]\nFast = { expr = \"1 +\" }\n",
                "policy.toml:2:17: key 'attributes.Fast': bad expression: expected an expression, found the end",
            ),
        ];
        for (text, want) in cases {
            let got = OwnerPolicy::parse("policy.toml", text)
                .unwrap_err()
                .to_string();
            assert_eq!(got, want, "{text}");
        }
    }
}
