//! Evaluation of an expression against a pair of ads (`MY` and `TARGET`).
//!
//! Semantics follow HTCondor's ClassAds, checked against HTCondor's own
//! library. Where roost differs on purpose:
//! - unscoped references look in `MY`, then in `TARGET` (HTCondor daemons
//!   do this; the bare library looks only in `MY`);
//! - a reference that is already being evaluated (a cycle) is `error`, as
//!   the HTCondor manual says;
//! - a real result that is not finite is `error`;
//! - `regexp` uses Rust's `regex` syntax (no look-around or
//!   back-references; such patterns are `error`);
//! - `size` and `substr` count characters, not bytes;
//! - a list converted to text (`string`, `strcat`, ...) shows its items'
//!   values, where HTCondor shows their unevaluated expressions;
//! - `stringListMember`, `stringListIMember` and `stringListSize` follow
//!   the HTCondor manual (the bare library lacks them).
//!
//! `policies/tests/differential.rs` checks everything else against
//! HTCondor's library on random expressions.

use super::{BinOp, Expr, Func, Scope, UnOp, Value};
use crate::ad::Ad;
use std::borrow::Cow;
use std::cmp::Ordering;

/// How deep evaluation may recurse (attribute indirections included)
/// before the result is `error`.
const MAX_EVAL_DEPTH: usize = 400;

/// Seconds since the Unix epoch, as `time()` reports it.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Evaluates `expr` with `my` as the ad it belongs to and `target` as the
/// other ad.
pub fn eval(expr: &Expr, my: &Ad, target: &Ad) -> Value {
    Evaluator::new(None).eval(expr, my, target).into_owned()
}

/// [`eval`] with `time()` fixed to `now`.
pub fn eval_at(expr: &Expr, my: &Ad, target: &Ad, now: i64) -> Value {
    Evaluator::new(Some(now))
        .eval(expr, my, target)
        .into_owned()
}

/// How many attribute references may be open at once (a longer chain
/// evaluates to `error`).
const MAX_OPEN_REFS: usize = 32;

struct Evaluator {
    /// `time()`, read from the clock on first use unless fixed.
    now: Option<i64>,
    /// Attributes being evaluated, as (ad address, key address): a
    /// reference to one of them is a cycle.
    open: [(usize, usize); MAX_OPEN_REFS],
    n_open: usize,
    depth: usize,
}

/// A value read as a truth value: booleans, and numbers (non-zero is true).
enum Truth {
    True,
    False,
    Undefined,
    Error,
}

fn truth(v: &Value) -> Truth {
    match v {
        Value::Bool(true) => Truth::True,
        Value::Bool(false) => Truth::False,
        Value::Int(i) => {
            if *i != 0 {
                Truth::True
            } else {
                Truth::False
            }
        }
        Value::Real(r) => {
            if *r != 0.0 {
                Truth::True
            } else {
                Truth::False
            }
        }
        Value::Undefined => Truth::Undefined,
        _ => Truth::Error,
    }
}

/// Values are borrowed from the expression or the ad where possible, so
/// comparing two strings copies neither.
type V<'a> = Cow<'a, Value>;

const ERROR: V<'static> = Cow::Owned(Value::Error);
const UNDEFINED: V<'static> = Cow::Owned(Value::Undefined);

fn bool_v(b: bool) -> V<'static> {
    Cow::Owned(Value::Bool(b))
}

impl Evaluator {
    fn new(now: Option<i64>) -> Self {
        Evaluator {
            now,
            open: [(0, 0); MAX_OPEN_REFS],
            n_open: 0,
            depth: 0,
        }
    }

    fn now(&mut self) -> i64 {
        *self.now.get_or_insert_with(now)
    }

    fn eval<'a>(&mut self, e: &'a Expr, my: &'a Ad, target: &'a Ad) -> V<'a> {
        if self.depth >= MAX_EVAL_DEPTH {
            return ERROR;
        }
        self.depth += 1;
        let v = self.eval_inner(e, my, target);
        self.depth -= 1;
        v
    }

    fn eval_inner<'a>(&mut self, e: &'a Expr, my: &'a Ad, target: &'a Ad) -> V<'a> {
        match e {
            Expr::Lit(v) => Cow::Borrowed(v),
            Expr::List(items) => Cow::Owned(Value::List(
                items
                    .iter()
                    .map(|i| self.eval(i, my, target).into_owned())
                    .collect(),
            )),
            Expr::Attr { scope, name } => self.attr(*scope, name, my, target),
            Expr::Unary(op, a) => {
                let v = self.eval(a, my, target);
                Cow::Owned(unary(*op, &v))
            }
            Expr::Binary(BinOp::And, a, b) => {
                let l = self.eval(a, my, target);
                match truth(&l) {
                    Truth::Error => ERROR,
                    Truth::False => bool_v(false),
                    Truth::True => match truth(&self.eval(b, my, target)) {
                        Truth::True => bool_v(true),
                        Truth::False => bool_v(false),
                        Truth::Undefined => UNDEFINED,
                        Truth::Error => ERROR,
                    },
                    Truth::Undefined => match truth(&self.eval(b, my, target)) {
                        Truth::False => bool_v(false),
                        Truth::True | Truth::Undefined => UNDEFINED,
                        Truth::Error => ERROR,
                    },
                }
            }
            Expr::Binary(BinOp::Or, a, b) => {
                let l = self.eval(a, my, target);
                match truth(&l) {
                    Truth::Error => ERROR,
                    Truth::True => bool_v(true),
                    Truth::False => match truth(&self.eval(b, my, target)) {
                        Truth::True => bool_v(true),
                        Truth::False => bool_v(false),
                        Truth::Undefined => UNDEFINED,
                        Truth::Error => ERROR,
                    },
                    Truth::Undefined => match truth(&self.eval(b, my, target)) {
                        Truth::True => bool_v(true),
                        Truth::False | Truth::Undefined => UNDEFINED,
                        Truth::Error => ERROR,
                    },
                }
            }
            Expr::Binary(op, a, b) => {
                let l = self.eval(a, my, target);
                let r = self.eval(b, my, target);
                Cow::Owned(binary(*op, &l, &r))
            }
            Expr::Cond(c, t, f) => match truth(&self.eval(c, my, target)) {
                Truth::True => self.eval(t, my, target),
                Truth::False => self.eval(f, my, target),
                Truth::Undefined => UNDEFINED,
                Truth::Error => ERROR,
            },
            Expr::Call { func, args, .. } => self.call(*func, args, my, target),
        }
    }

    fn attr<'a>(&mut self, scope: Scope, name: &str, my: &'a Ad, target: &'a Ad) -> V<'a> {
        let found = match scope {
            Scope::My => my.get_entry(name).map(|kv| (kv, my, target)),
            Scope::Target => target.get_entry(name).map(|kv| (kv, target, my)),
            Scope::Auto => match my.get_entry(name) {
                Some(kv) => Some((kv, my, target)),
                None => target.get_entry(name).map(|kv| (kv, target, my)),
            },
        };
        let Some(((key, e), ad, other)) = found else {
            if scope == Scope::Auto && name.eq_ignore_ascii_case("CurrentTime") {
                return Cow::Owned(Value::Int(self.now()));
            }
            return UNDEFINED;
        };
        if let Expr::Lit(v) = e {
            return Cow::Borrowed(v);
        }
        let id = (ad as *const Ad as usize, key.as_ptr() as usize);
        if self.open[..self.n_open].contains(&id) || self.n_open == MAX_OPEN_REFS {
            return ERROR;
        }
        self.open[self.n_open] = id;
        self.n_open += 1;
        // The attribute is evaluated in its own ad: there, that ad is MY.
        let v = self.eval(e, ad, other);
        self.n_open -= 1;
        v
    }

    fn call<'a>(&mut self, func: Func, args: &'a [Expr], my: &'a Ad, target: &'a Ad) -> V<'a> {
        if func == Func::IfThenElse {
            // Lazy: only the chosen branch is evaluated.
            return match truth(&self.eval(&args[0], my, target)) {
                Truth::True => self.eval(&args[1], my, target),
                Truth::False => self.eval(&args[2], my, target),
                Truth::Undefined => UNDEFINED,
                Truth::Error => ERROR,
            };
        }
        let vals: Vec<Value> = args
            .iter()
            .map(|a| self.eval(a, my, target).into_owned())
            .collect();
        let now = if func == Func::Time { self.now() } else { 0 };
        Cow::Owned(call(func, vals, now))
    }
}

fn unary(op: UnOp, v: &Value) -> Value {
    match (op, v) {
        (_, Value::Undefined) => Value::Undefined,
        (_, Value::Error) => Value::Error,
        (UnOp::Not, v) => match truth(v) {
            Truth::True => Value::Bool(false),
            Truth::False => Value::Bool(true),
            _ => Value::Error,
        },
        (UnOp::Neg, Value::Int(i)) => Value::Int(i.wrapping_neg()),
        (UnOp::Neg, Value::Real(r)) => Value::Real(-r),
        (UnOp::Plus, v @ (Value::Int(_) | Value::Real(_))) => v.clone(),
        _ => Value::Error,
    }
}

/// A number for arithmetic and comparison (booleans count as 0 and 1).
#[derive(Clone, Copy)]
enum Num {
    I(i64),
    R(f64),
}

fn num(v: &Value) -> Option<Num> {
    match v {
        Value::Int(i) => Some(Num::I(*i)),
        Value::Real(r) => Some(Num::R(*r)),
        Value::Bool(b) => Some(Num::I(i64::from(*b))),
        _ => None,
    }
}

fn real(n: Num) -> f64 {
    match n {
        Num::I(i) => i as f64,
        Num::R(r) => r,
    }
}

fn finite(r: f64) -> Value {
    if r.is_finite() {
        Value::Real(r)
    } else {
        Value::Error
    }
}

fn arith(op: BinOp, l: Num, r: Num) -> Value {
    match (l, r) {
        (Num::I(a), Num::I(b)) => match op {
            BinOp::Add => Value::Int(a.wrapping_add(b)),
            BinOp::Sub => Value::Int(a.wrapping_sub(b)),
            BinOp::Mul => Value::Int(a.wrapping_mul(b)),
            BinOp::Div if b == 0 => Value::Error,
            // The one overflowing division gives the largest integer, as
            // HTCondor does.
            BinOp::Div => Value::Int(a.checked_div(b).unwrap_or(i64::MAX)),
            BinOp::Mod if b == 0 => Value::Error,
            BinOp::Mod => Value::Int(a.wrapping_rem(b)),
            _ => Value::Error,
        },
        (a, b) => {
            let (a, b) = (real(a), real(b));
            match op {
                BinOp::Add => finite(a + b),
                BinOp::Sub => finite(a - b),
                BinOp::Mul => finite(a * b),
                BinOp::Div if b == 0.0 => Value::Error,
                BinOp::Div => finite(a / b),
                // `%` is for integers only.
                _ => Value::Error,
            }
        }
    }
}

/// `==`-style comparison: numbers by value, strings ignoring case.
/// `None` when the operands cannot be compared.
fn compare(l: &Value, r: &Value) -> Option<Ordering> {
    match (l, r) {
        (Value::Str(a), Value::Str(b)) => Some(cmp_ignore_case(a, b)),
        _ => match (num(l)?, num(r)?) {
            (Num::I(a), Num::I(b)) => Some(a.cmp(&b)),
            (a, b) => real(a).partial_cmp(&real(b)),
        },
    }
}

fn cmp_ignore_case(a: &str, b: &str) -> Ordering {
    let a = a.bytes().map(|c| c.to_ascii_lowercase());
    let b = b.bytes().map(|c| c.to_ascii_lowercase());
    a.cmp(b)
}

/// `=?=`: same type and same value, strings case-sensitive.
fn identical_values(l: &Value, r: &Value) -> Option<bool> {
    Some(match (l, r) {
        (Value::Undefined, Value::Undefined) | (Value::Error, Value::Error) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Int(a), Value::Int(b)) => a == b,
        (Value::Real(a), Value::Real(b)) => a == b,
        (Value::Str(a), Value::Str(b)) => a == b,
        // HTCondor does not define identity of two lists.
        (Value::List(_), Value::List(_)) => return None,
        _ => false,
    })
}

fn binary(op: BinOp, l: &Value, r: &Value) -> Value {
    match op {
        BinOp::MetaEq => identical_values(l, r).map_or(Value::Error, Value::Bool),
        BinOp::MetaNe => identical_values(l, r).map_or(Value::Error, |b| Value::Bool(!b)),
        _ if matches!(l, Value::Error) || matches!(r, Value::Error) => Value::Error,
        _ if matches!(l, Value::Undefined) || matches!(r, Value::Undefined) => Value::Undefined,
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => match (num(l), num(r)) {
            (Some(a), Some(b)) => arith(op, a, b),
            _ => Value::Error,
        },
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let Some(ord) = compare(l, r) else {
                // Incomparable: a type mismatch, or a NaN.
                return if num(l).is_some() && num(r).is_some() {
                    Value::Bool(op == BinOp::Ne)
                } else {
                    Value::Error
                };
            };
            Value::Bool(match op {
                BinOp::Eq => ord == Ordering::Equal,
                BinOp::Ne => ord != Ordering::Equal,
                BinOp::Lt => ord == Ordering::Less,
                BinOp::Le => ord != Ordering::Greater,
                BinOp::Gt => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            })
        }
        BinOp::And | BinOp::Or => Value::Error,
    }
}

/// The undefined or error among strict arguments, error first.
fn strict(vals: &[Value]) -> Option<Value> {
    if vals.iter().any(|v| matches!(v, Value::Error)) {
        Some(Value::Error)
    } else if vals.iter().any(|v| matches!(v, Value::Undefined)) {
        Some(Value::Undefined)
    } else {
        None
    }
}

/// A C-`strtod`-like prefix parse: leading blanks, then the longest number.
fn parse_real_prefix(s: &str) -> Option<f64> {
    let s = s.trim_start();
    let lower = s.to_ascii_lowercase();
    for (word, v) in [
        ("inf", f64::INFINITY),
        ("+inf", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
        ("nan", f64::NAN),
    ] {
        if lower.starts_with(word) {
            return Some(v);
        }
    }
    (1..=s.len())
        .rev()
        .filter(|&n| s.is_char_boundary(n))
        .find_map(|n| {
            let p = &s[..n];
            // Rust accepts "inf"/"nan" spellings handled above, and rejects
            // a trailing 'e' or sign, as strtod would back off from them.
            p.parse::<f64>().ok().filter(|_| {
                p.bytes()
                    .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
            })
        })
}

/// A real converted to an integer as C on x86 does: out-of-range and NaN
/// give the most negative integer.
fn real_to_int(r: f64) -> i64 {
    // 2^63, exactly representable.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if r.is_nan() || !(-LIMIT..LIMIT).contains(&r) {
        i64::MIN
    } else {
        r as i64
    }
}

fn split_list<'s>(list: &'s str, delims: &'s str) -> impl Iterator<Item = &'s str> {
    list.split(move |c: char| delims.contains(c))
        .filter(|s| !s.is_empty())
}

/// How many compiled patterns each thread keeps: matchmaking evaluates the
/// same `regexp` against every machine.
const REGEX_CACHE: usize = 64;

/// A pattern with its `i`, `m` and `s` options, and what it compiled to.
type CachedRegex = ((String, [bool; 3]), Option<regex::Regex>);

thread_local! {
    static REGEXES: std::cell::RefCell<Vec<CachedRegex>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// `None` when the pattern is not a valid regular expression.
fn regex_match(pat: &str, opts: &str, target: &str) -> Option<bool> {
    let flags = [opts.contains('i'), opts.contains('m'), opts.contains('s')];
    REGEXES.with(|cache| {
        let mut cache = cache.borrow_mut();
        let hit = cache.iter().position(|((p, f), _)| p == pat && *f == flags);
        let i = match hit {
            Some(i) => i,
            None => {
                let re = regex::RegexBuilder::new(pat)
                    .case_insensitive(flags[0])
                    .multi_line(flags[1])
                    .dot_matches_new_line(flags[2])
                    .size_limit(1 << 20)
                    .build()
                    .ok();
                if cache.len() == REGEX_CACHE {
                    cache.remove(0);
                }
                cache.push(((pat.to_string(), flags), re));
                cache.len() - 1
            }
        };
        cache[i].1.as_ref().map(|re| re.is_match(target))
    })
}

fn call(func: Func, mut vals: Vec<Value>, now: i64) -> Value {
    use Value as V;
    match func {
        Func::IfThenElse => Value::Error, // handled lazily by the evaluator
        Func::IsUndefined => V::Bool(matches!(vals[0], V::Undefined)),
        Func::IsError => V::Bool(matches!(vals[0], V::Error)),
        Func::IsString => V::Bool(matches!(vals[0], V::Str(_))),
        Func::IsInteger => V::Bool(matches!(vals[0], V::Int(_))),
        Func::IsReal => V::Bool(matches!(vals[0], V::Real(_))),
        Func::IsBoolean => V::Bool(matches!(vals[0], V::Bool(_))),
        Func::IsList => V::Bool(matches!(vals[0], V::List(_))),
        Func::Member | Func::IdenticalMember => {
            let (x, list) = (&vals[0], &vals[1]);
            let identical = func == Func::IdenticalMember;
            match (x, list) {
                (_, V::Undefined) => V::Undefined,
                (V::Undefined, _) if !identical => V::Undefined,
                (V::Error, _) if !identical => V::Error,
                (V::List(_), _) => V::Error,
                (x, V::List(items)) => V::Bool(items.iter().any(|i| {
                    if identical {
                        identical_values(x, i) == Some(true)
                    } else {
                        binary(BinOp::Eq, x, i) == V::Bool(true)
                    }
                })),
                _ => V::Error,
            }
        }
        Func::StringListMember | Func::StringListIMember => {
            let delims = match vals.get(2) {
                Some(V::Str(d)) => d.as_str(),
                Some(_) => return V::Error,
                None => ", ",
            };
            match (&vals[0], &vals[1]) {
                (V::Str(x), V::Str(list)) => V::Bool(split_list(list, delims).any(|item| {
                    if func == Func::StringListMember {
                        item == x
                    } else {
                        item.eq_ignore_ascii_case(x)
                    }
                })),
                _ => V::Error,
            }
        }
        Func::StringListSize => {
            let delims = match vals.get(1) {
                Some(V::Str(d)) => d.as_str(),
                Some(_) => return V::Error,
                None => ", ",
            };
            match &vals[0] {
                V::Str(list) => V::Int(split_list(list, delims).count() as i64),
                _ => V::Error,
            }
        }
        Func::Regexp => {
            if let Some(v) = strict(&vals) {
                return v;
            }
            let opts = match vals.get(2) {
                Some(V::Str(o)) => o.as_str(),
                Some(_) => return V::Error,
                None => "",
            };
            match (&vals[0], &vals[1]) {
                (V::Str(pat), V::Str(target)) => {
                    regex_match(pat, opts, target).map_or(V::Error, V::Bool)
                }
                _ => V::Error,
            }
        }
        Func::Strcat => {
            if let Some(v) = strict(&vals) {
                // The first exceptional argument decides, as in HTCondor.
                let first = vals
                    .iter()
                    .find(|v| matches!(v, V::Undefined | V::Error))
                    .cloned();
                return first.unwrap_or(v);
            }
            V::Str(vals.iter().map(Value::to_plain_string).collect())
        }
        Func::Substr => {
            // Here `undefined` outranks `error`, as in HTCondor.
            if vals.iter().any(|v| matches!(v, V::Undefined)) {
                return V::Undefined;
            }
            if let Some(v) = strict(&vals) {
                return v;
            }
            let V::Str(s) = &vals[0] else { return V::Error };
            // Offsets and lengths are C `int`s in HTCondor: larger values
            // wrap the same way here.
            let V::Int(off) = vals[1] else {
                return V::Error;
            };
            let off = i64::from(off as i32);
            let chars: Vec<char> = s.chars().collect();
            let len = chars.len() as i64;
            let start = if off < 0 {
                (len + off).max(0)
            } else {
                off.min(len)
            };
            let count = match vals.get(2) {
                None => len - start,
                Some(V::Int(n)) => match i64::from(*n as i32) {
                    n if n < 0 => (len - start + n).max(0),
                    n => n.min(len - start),
                },
                Some(_) => return V::Error,
            };
            V::Str(
                chars[start as usize..(start + count) as usize]
                    .iter()
                    .collect(),
            )
        }
        Func::Size => match &vals[0] {
            V::Str(s) => V::Int(s.chars().count() as i64),
            V::List(items) => V::Int(items.len() as i64),
            V::Undefined => V::Undefined,
            _ => V::Error,
        },
        Func::ToUpper | Func::ToLower => match &vals[0] {
            V::Undefined => V::Undefined,
            V::Error => V::Error,
            v => {
                let s = v.to_plain_string();
                V::Str(if func == Func::ToUpper {
                    s.to_ascii_uppercase()
                } else {
                    s.to_ascii_lowercase()
                })
            }
        },
        Func::Floor | Func::Ceiling | Func::Round => {
            let r = match &vals[0] {
                V::Int(i) => return V::Int(*i),
                V::Bool(b) => return V::Int(i64::from(*b)),
                V::Real(r) => *r,
                V::Str(s) => match parse_real_prefix(s) {
                    Some(r) => r,
                    None => return V::Error,
                },
                _ => return V::Error,
            };
            V::Int(real_to_int(match func {
                Func::Floor => r.floor(),
                Func::Ceiling => r.ceil(),
                _ => r.round_ties_even(),
            }))
        }
        Func::Int => match &vals[0] {
            V::Int(i) => V::Int(*i),
            V::Bool(b) => V::Int(i64::from(*b)),
            V::Real(r) => V::Int(real_to_int(r.trunc())),
            // HTCondor reads the string as a real, then truncates it.
            V::Str(s) => parse_real_prefix(s).map_or(V::Error, |r| V::Int(real_to_int(r.trunc()))),
            V::Undefined => V::Undefined,
            _ => V::Error,
        },
        Func::Real => match &vals[0] {
            V::Int(i) => V::Real(*i as f64),
            V::Bool(b) => V::Real(f64::from(u8::from(*b))),
            V::Real(r) => V::Real(*r),
            V::Str(s) => parse_real_prefix(s).map_or(V::Error, V::Real),
            V::Undefined => V::Undefined,
            _ => V::Error,
        },
        Func::String => match &vals[0] {
            V::Undefined => V::Undefined,
            V::Error => V::Error,
            v => V::Str(v.to_plain_string()),
        },
        Func::Min | Func::Max => match vals.swap_remove(0) {
            V::Undefined => V::Undefined,
            V::List(items) => {
                let mut best: Option<Num> = None;
                let mut any_real = false;
                for item in &items {
                    let n = match item {
                        V::Undefined => continue,
                        v => match num(v) {
                            Some(n) => n,
                            None => return V::Error,
                        },
                    };
                    any_real |= matches!(n, Num::R(_));
                    let better = best.is_none_or(|b| {
                        let ord = real(n).partial_cmp(&real(b));
                        if func == Func::Min {
                            ord == Some(Ordering::Less)
                        } else {
                            ord == Some(Ordering::Greater)
                        }
                    });
                    if better {
                        best = Some(n);
                    }
                }
                let counted = items.iter().filter(|v| !matches!(v, V::Undefined)).count();
                match best {
                    None => V::Undefined,
                    // A single item comes back as it is (a boolean stays one).
                    Some(_) if counted == 1 => items
                        .into_iter()
                        .find(|v| !matches!(v, V::Undefined))
                        .unwrap_or(V::Undefined),
                    Some(n) if any_real => V::Real(real(n)),
                    Some(Num::I(i)) => V::Int(i),
                    Some(Num::R(r)) => V::Real(r),
                }
            }
            _ => V::Error,
        },
        Func::Time => V::Int(now),
    }
}
