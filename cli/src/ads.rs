//! Expressions and ads on the command line: `roost eval`, `--constraint`
//! filters for `roost status` and `roost q`, ad files, and parse errors
//! that point at the column.

use anyhow::{Context, Result};
use policies::ad::Ad;
use policies::expr::{self, Expr, Value};
use proto::pool::MachineAd;
use std::path::Path;

/// A parse error as the user sees it: the message, then the text with a
/// caret under the offending character. `what` names where the text came
/// from (`--constraint`, `the expression`).
pub fn parse_error(what: &str, text: &str, e: &policies::ParseError) -> String {
    let col = e.col.max(1);
    // Tabs would shift the caret; show them as one space each.
    let shown: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "{what}: column {col}: {}\n  {shown}\n  {}^",
        e.message,
        " ".repeat(col - 1)
    )
}

/// Parses `text`, or fails with [`parse_error`]'s message.
pub fn parse_expr(what: &str, text: &str) -> Result<Expr> {
    expr::parse(text).map_err(|e| anyhow::anyhow!("{}", parse_error(what, text, &e)))
}

/// Reads an ad file: old-style `Name = expr` lines or a `[ a = 1; b = 2 ]`
/// record.
pub fn load_ad(path: &Path) -> Result<Ad> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the ad file {}", path.display()))?;
    Ad::parse(&path.display().to_string(), &text).map_err(anyhow::Error::new)
}

/// How `roost eval` prints a value: as `classad_eval` does (strings
/// quoted, `undefined`, `error`, lists in braces).
pub fn value_text(v: &Value) -> String {
    v.to_string()
}

/// `roost eval EXPR...`: each expression's value, one per line, with `my`
/// as `MY` and `target` as `TARGET`.
pub fn eval_lines(exprs: &[String], my: &Ad, target: &Ad) -> Result<String> {
    let mut out = String::new();
    for (i, text) in exprs.iter().enumerate() {
        let what = if exprs.len() == 1 {
            "the expression".to_string()
        } else {
            format!("expression {}", i + 1)
        };
        let e = parse_expr(&what, text)?;
        out.push_str(&value_text(&expr::eval(&e, my, target)));
        out.push('\n');
    }
    Ok(out)
}

/// A `--constraint`: an expression each listed ad must make true (with the
/// ad as `MY`; `undefined` and `error` leave the ad out).
#[derive(Debug, Clone)]
pub struct Constraint {
    expr: Expr,
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Constraint> {
        Ok(Constraint {
            expr: parse_expr("--constraint", text)?,
        })
    }

    pub fn holds(&self, ad: &Ad) -> bool {
        expr::eval(&self.expr, ad, &Ad::new()).is_true()
    }
}

/// A machine's ad as the matchmaker matches it: its attributes (one that
/// does not parse is `error`), with `Machine`, `Name`, `State` and
/// `Activity` from the ad's own fields unless it sets them.
pub fn machine_ad(m: &MachineAd) -> Ad {
    let mut ad = Ad::from_wire_lossy(&m.attrs);
    for (k, v) in [
        ("Machine", &m.name.0),
        ("Name", &m.name.0),
        ("State", &m.state),
        ("Activity", &m.activity),
    ] {
        if !ad.contains(k) {
            ad.set(k, v.as_str());
        }
    }
    ad
}

/// The machines `c` keeps (all of them without a constraint).
pub fn filter_machines(ms: Vec<MachineAd>, c: Option<&Constraint>) -> Vec<MachineAd> {
    match c {
        None => ms,
        Some(c) => ms.into_iter().filter(|m| c.holds(&machine_ad(m))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ids::HostName;
    use proto::pool::AdValue;

    fn ad(text: &str) -> Ad {
        Ad::parse("t.ad", text).unwrap()
    }

    #[test]
    fn eval_prints_values_like_classad_eval() {
        let my = ad("RequestMemory = 2048\nOwner = \"ann\"");
        let target = ad("[ Memory = 4096; OpSys = \"LINUX\"; KFlops = 1.5e6 ]");
        let exprs: Vec<String> = [
            "TARGET.Memory >= MY.RequestMemory && OpSys == \"linux\"",
            "strcat(Owner, \"@\", OpSys)",
            "Nope",
            "1/0",
            "KFlops / 2",
            "{1, \"a\"}",
            "isUndefined(Nope) ? Memory : 0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            eval_lines(&exprs, &my, &target).unwrap(),
            "true\n\"ann@LINUX\"\nundefined\nerror\n750000.0\n{1, \"a\"}\n4096\n"
        );
    }

    #[test]
    fn parse_errors_point_at_the_column() {
        let e = eval_lines(&["Memory >= ".into()], &Ad::new(), &Ad::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the expression: column 11: expected an expression, found the end\n  Memory >= \n            ^"
        );
        let e = Constraint::parse("State == \"Unclaimed\" &&& 1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--constraint: column 24: unexpected character '&'\n  State == \"Unclaimed\" &&& 1\n                         ^"
        );
        let e = eval_lines(&["1".into(), "(2".into()], &Ad::new(), &Ad::new()).unwrap_err();
        assert!(e.to_string().starts_with("expression 2: column 3: "), "{e}");
    }

    #[test]
    fn ad_files_in_both_forms_and_their_errors() {
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join("m.ad");
        std::fs::write(&old, "Memory = 4096\n# note\nOpSys = \"LINUX\"\n").unwrap();
        let new = d.path().join("n.ad");
        std::fs::write(&new, "[ Memory = 4096; OpSys = \"LINUX\" ]").unwrap();
        assert_eq!(load_ad(&old).unwrap(), load_ad(&new).unwrap());
        let bad = d.path().join("bad.ad");
        std::fs::write(&bad, "Memory = 4096\nStart = KeyboardIdle >\n").unwrap();
        assert_eq!(
            load_ad(&bad).unwrap_err().to_string(),
            format!(
                "{}:2:23: attribute Start: expected an expression, found the end",
                bad.display()
            )
        );
        let missing = d.path().join("none.ad");
        assert_eq!(
            load_ad(&missing).unwrap_err().to_string(),
            format!("cannot read the ad file {}", missing.display())
        );
    }

    #[test]
    fn constraints_filter_machines_by_their_ads() {
        let m = |name: &str, state: &str, mem: i64| {
            let mut attrs = proto::pool::Ad::new();
            attrs.insert("Memory".into(), AdValue::Int(mem));
            attrs.insert("Start".into(), AdValue::Expr("KeyboardIdle >".into()));
            MachineAd {
                name: HostName(name.into()),
                state: state.into(),
                activity: "Idle".into(),
                attrs,
            }
        };
        let ms = vec![
            m("exec1", "Unclaimed", 4096),
            m("exec2", "Owner", 8192),
            m("exec3", "Unclaimed", 1024),
        ];
        let names = |v: Vec<MachineAd>| v.into_iter().map(|m| m.name.0).collect::<Vec<_>>();
        let c = Constraint::parse("State == \"unclaimed\" && Memory > 2000").unwrap();
        assert_eq!(names(filter_machines(ms.clone(), Some(&c))), ["exec1"]);
        let c = Constraint::parse("Machine == \"exec2\" || Nope").unwrap();
        assert_eq!(names(filter_machines(ms.clone(), Some(&c))), ["exec2"]);
        let c = Constraint::parse("Start").unwrap();
        assert!(filter_machines(ms.clone(), Some(&c)).is_empty());
        assert_eq!(filter_machines(ms, None).len(), 3);
    }
}
