//! Ads: case-insensitive maps from attribute names to expressions, as
//! machines and jobs advertise themselves, with conversion from and to the
//! wire form (`proto::pool::Ad`) and from ClassAd text.

use crate::expr::{self, Expr, Value};
use crate::{Loc, PolicyError};
use proto::pool::AdValue;
use std::cmp::Ordering;
use std::fmt;

/// An ad. Names keep the spelling they were inserted with and compare
/// ignoring ASCII case.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ad {
    /// Sorted by [`cmp_key`], so lookups need no allocation.
    attrs: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    key: String,
    name: String,
    expr: Expr,
}

/// The order entries are kept in: by length, then by lower-case bytes.
/// `key` is already lower-case; `name` is folded byte by byte, so a lookup
/// allocates nothing and most probes stop at the length.
fn cmp_key(key: &str, name: &str) -> Ordering {
    key.len().cmp(&name.len()).then_with(|| {
        for (k, n) in key.bytes().zip(name.bytes()) {
            let n = n.to_ascii_lowercase();
            if k != n {
                return k.cmp(&n);
            }
        }
        Ordering::Equal
    })
}

impl Ad {
    pub fn new() -> Ad {
        Ad::default()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.attrs.binary_search_by(|e| cmp_key(&e.key, name))
    }

    /// Sets `name` to `expr`, replacing any attribute of the same name
    /// (in any case).
    pub fn insert(&mut self, name: &str, expr: Expr) {
        let entry = Entry {
            key: name.to_ascii_lowercase(),
            name: name.to_string(),
            expr,
        };
        match self.find(name) {
            Ok(i) => self.attrs[i] = entry,
            Err(i) => self.attrs.insert(i, entry),
        }
    }

    /// Sets `name` to a literal value.
    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        self.insert(name, value.into().to_expr());
    }

    /// Sets `name` to an expression given as text.
    pub fn set_expr(&mut self, name: &str, text: &str) -> Result<(), PolicyError> {
        let e = expr::parse(text).map_err(|source| PolicyError::BadAttribute {
            name: name.to_string(),
            source,
        })?;
        self.insert(name, e);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Expr> {
        self.find(name).ok().map(|i| &self.attrs[i].expr)
    }

    /// The lower-case key and the expression of `name`.
    pub(crate) fn get_entry(&self, name: &str) -> Option<(&str, &Expr)> {
        self.find(name)
            .ok()
            .map(|i| (self.attrs[i].key.as_str(), &self.attrs[i].expr))
    }

    pub fn remove(&mut self, name: &str) -> Option<Expr> {
        self.find(name).ok().map(|i| self.attrs.remove(i).expr)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Attributes (names as written) in alphabetical order, ignoring case.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Expr)> {
        let mut entries: Vec<&Entry> = self.attrs.iter().collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        entries.into_iter().map(|e| (e.name.as_str(), &e.expr))
    }

    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }

    /// The value of `MY.name` with `target` as the other ad (`undefined`
    /// if there is no such attribute).
    pub fn eval_attr(&self, name: &str, target: &Ad) -> Value {
        let e = Expr::Attr {
            scope: expr::Scope::My,
            name: name.to_string(),
        };
        expr::eval(&e, self, target)
    }

    /// Reads an ad from the wire. An expression that does not parse is an
    /// error naming the attribute.
    pub fn from_wire(wire: &proto::pool::Ad) -> Result<Ad, PolicyError> {
        let mut ad = Ad::new();
        for (name, v) in wire {
            let e = match v {
                AdValue::Expr(text) => {
                    expr::parse(text).map_err(|source| PolicyError::BadAttribute {
                        name: name.clone(),
                        source,
                    })?
                }
                v => literal(v),
            };
            ad.insert(name, e);
        }
        Ok(ad)
    }

    /// Reads an ad from the wire; an expression that does not parse becomes
    /// `error`, so one bad attribute cannot take a whole ad out of matching.
    pub fn from_wire_lossy(wire: &proto::pool::Ad) -> Ad {
        let mut ad = Ad::new();
        for (name, v) in wire {
            let e = match v {
                AdValue::Expr(text) => expr::parse(text).unwrap_or(Expr::Lit(Value::Error)),
                v => literal(v),
            };
            ad.insert(name, e);
        }
        ad
    }

    /// The wire form: literals as typed values, everything else as text.
    pub fn to_wire(&self) -> proto::pool::Ad {
        self.attrs
            .iter()
            .map(|e| {
                let v = match &e.expr {
                    Expr::Lit(Value::Int(i)) => AdValue::Int(*i),
                    Expr::Lit(Value::Real(r)) if r.is_finite() => AdValue::Real(*r),
                    Expr::Lit(Value::Str(s)) => AdValue::Str(s.clone()),
                    Expr::Lit(Value::Bool(b)) => AdValue::Bool(*b),
                    other => AdValue::Expr(other.to_string()),
                };
                (e.name.clone(), v)
            })
            .collect()
    }

    /// Parses ClassAd text: either a new-style record `[ A = 1; B = "x" ]`
    /// or old-style lines `A = 1`, with `#` comment lines. `file` names
    /// the text in errors.
    pub fn parse(file: &str, text: &str) -> Result<Ad, PolicyError> {
        let mut ad = Ad::new();
        let trimmed = text.trim_start();
        if trimmed.starts_with('[') {
            let attrs = expr::parse_record(text).map_err(|e| PolicyError::Syntax {
                loc: loc_of_char(file, text, e.col),
                message: e.message,
            })?;
            for (name, e) in attrs {
                ad.insert(&name, e);
            }
            return Ok(ad);
        }
        for (n, line) in text.lines().enumerate() {
            let body = line.trim();
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            let indent = line.chars().take_while(|c| c.is_whitespace()).count();
            let loc = |col: usize| Loc {
                file: file.to_string(),
                line: n + 1,
                col,
            };
            let Some((name, value)) = body.split_once('=') else {
                return Err(PolicyError::Syntax {
                    loc: loc(indent + 1),
                    message: "expected NAME = EXPRESSION".into(),
                });
            };
            let name = name.trim();
            if let Err(message) = crate::jobfile::check_attr_name(name) {
                return Err(PolicyError::Syntax {
                    loc: loc(indent + 1),
                    message,
                });
            }
            let value_col = indent + body.split_once('=').map_or(0, |(a, _)| a.chars().count()) + 2;
            let e = expr::parse(value).map_err(|e| PolicyError::Syntax {
                loc: loc(value_col + e.col - 1),
                message: format!("attribute {name}: {}", e.message),
            })?;
            ad.insert(name, e);
        }
        Ok(ad)
    }
}

fn literal(v: &AdValue) -> Expr {
    Expr::Lit(match v {
        AdValue::Int(i) => Value::Int(*i),
        AdValue::Real(r) => Value::Real(*r),
        AdValue::Str(s) => Value::Str(s.clone()),
        AdValue::Bool(b) => Value::Bool(*b),
        AdValue::Expr(_) => Value::Error,
    })
}

/// The line and column of the `col`-th character (1-based) of `text`.
fn loc_of_char(file: &str, text: &str, col: usize) -> Loc {
    let offset = text
        .char_indices()
        .nth(col.saturating_sub(1))
        .map_or(text.len(), |(i, _)| i);
    crate::source::Source { file, text }.loc(offset)
}

impl TryFrom<&proto::pool::Ad> for Ad {
    type Error = PolicyError;
    fn try_from(wire: &proto::pool::Ad) -> Result<Ad, PolicyError> {
        Ad::from_wire(wire)
    }
}

/// Old-style ClassAd text: one `Name = expression` per line.
impl fmt::Display for Ad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, e) in self.iter() {
            writeln!(f, "{name} = {e}")?;
        }
        Ok(())
    }
}

/// The ad a queued job advertises for matchmaking: its owner, resource
/// requests, `Requirements` and `Rank` (when given) and its custom
/// attributes. Expression texts in a `JobSpec` made by
/// [`crate::jobfile`] always parse; one that does not is an error naming
/// the attribute.
pub fn job_ad(spec: &proto::job::JobSpec, owner: &str) -> Result<Ad, PolicyError> {
    let mut ad = Ad::new();
    // Custom attributes first, so that the description's own keys win.
    for (name, text) in &spec.attributes {
        ad.set_expr(name, text)?;
    }
    ad.set("MyType", "Job");
    ad.set("Owner", owner);
    ad.set("Cmd", spec.executable.as_str());
    ad.set("Iwd", spec.initialdir.as_str());
    ad.set("RequestCpus", spec.request_cpus);
    ad.set("RequestMemory", clamp_i64(spec.request_memory_mb));
    ad.set("RequestDisk", clamp_i64(spec.request_disk_mb));
    ad.set("MaxRetries", spec.max_retries);
    if let Some(r) = &spec.requirements {
        ad.set_expr("Requirements", r)?;
    }
    if let Some(r) = &spec.rank {
        ad.set_expr("Rank", r)?;
    }
    Ok(ad)
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::parse;

    #[test]
    fn names_ignore_case_and_keep_their_spelling() {
        let mut ad = Ad::new();
        ad.set("Memory", 4096);
        ad.set("memory", 2048);
        assert_eq!(ad.len(), 1);
        assert_eq!(ad.get("MEMORY"), Some(&parse("2048").unwrap()));
        assert_eq!(ad.iter().next().map(|(n, _)| n), Some("memory"));
        assert!(ad.remove("MeMoRy").is_some());
        assert!(ad.is_empty());
    }

    #[test]
    fn wire_round_trip() {
        let mut wire = proto::pool::Ad::new();
        wire.insert("Memory".into(), AdValue::Int(4096));
        wire.insert("LoadAvg".into(), AdValue::Real(0.25));
        wire.insert("OpSys".into(), AdValue::Str("LINUX".into()));
        wire.insert("HasRoost".into(), AdValue::Bool(true));
        wire.insert(
            "Start".into(),
            AdValue::Expr("KeyboardIdle > 15 * 60".into()),
        );
        let ad = Ad::from_wire(&wire).unwrap();
        assert_eq!(ad.eval_attr("memory", &Ad::new()), Value::Int(4096));
        assert_eq!(ad.to_wire(), wire);

        wire.insert("Bad".into(), AdValue::Expr("1 +".into()));
        let err = Ad::from_wire(&wire).unwrap_err();
        assert_eq!(
            err.to_string(),
            "attribute Bad: bad expression at column 4: expected an expression, found the end"
        );
        let lossy = Ad::from_wire_lossy(&wire);
        assert_eq!(lossy.eval_attr("Bad", &Ad::new()), Value::Error);
        assert_eq!(lossy.eval_attr("Memory", &Ad::new()), Value::Int(4096));
    }

    #[test]
    fn text_forms_parse() {
        let old = Ad::parse(
            "m.ad",
            "# a machine\nMemory = 4096\n  OpSys = \"LINUX\"\nStart = KeyboardIdle > 900\n",
        )
        .unwrap();
        let new = Ad::parse(
            "m.ad",
            "[ Memory = 4096; OpSys = \"LINUX\"; Start = KeyboardIdle > 900 ]",
        )
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(
            old.to_string(),
            "Memory = 4096\nOpSys = \"LINUX\"\nStart = KeyboardIdle > 900\n"
        );
        assert_eq!(Ad::parse("m.ad", &old.to_string()).unwrap(), old);

        let cases = [
            (
                "Memory = 4096\nStart = KeyboardIdle >\n",
                "m.ad:2:23: attribute Start: expected an expression, found the end",
            ),
            ("Memory 4096\n", "m.ad:1:1: expected NAME = EXPRESSION"),
            (
                "\n  1x = 2\n",
                "m.ad:2:3: '1x' is not an attribute name (expected letters, digits and '_', not starting with a digit)",
            ),
            (
                "[ A = 1;\n  B = ]",
                "m.ad:2:7: expected an expression, found ']'",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                Ad::parse("m.ad", text).unwrap_err().to_string(),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn job_ads_carry_the_description() {
        let d = crate::jobfile::parse(
            "job.toml",
            "executable = \"sim\"\nrequirements = 'OpSys == \"LINUX\"'\nrank = \"KFlops\"\nrequest_memory = \"2 GB\"\n[attributes]\nProject = \"physics\"\nOwner = \"mallory\"\n",
            std::path::Path::new("/home/alice"),
        )
        .unwrap();
        let spec = d.expand(7).unwrap().remove(0);
        let ad = job_ad(&spec, "alice").unwrap();
        let none = Ad::new();
        assert_eq!(ad.eval_attr("Owner", &none), Value::from("alice"));
        assert_eq!(ad.eval_attr("RequestMemory", &none), Value::Int(2048));
        assert_eq!(ad.eval_attr("RequestCpus", &none), Value::Int(1));
        assert_eq!(ad.eval_attr("Project", &none), Value::from("physics"));
        assert_eq!(
            ad.get("Requirements").unwrap().to_string(),
            "OpSys == \"LINUX\""
        );
        assert_eq!(ad.get("Rank").unwrap().to_string(), "KFlops");
    }
}
