//! The expression language: ClassAd-like expressions for requirements,
//! rank and owner policy.
//!
//! Values are three-valued in the ClassAd sense: besides booleans, integers,
//! reals, strings and lists there are `undefined` (a missing attribute) and
//! `error` (an ill-typed operation). Operators are total. Semantics follow
//! HTCondor's ClassAds (the manual's "ClassAd Evaluation Semantics", with
//! HTCondor's daemon behaviour for unscoped references: look in `MY`, then
//! in `TARGET`). The deliberate differences are listed in the `eval`
//! module's documentation.
//!
//! ```
//! use policies::expr::{Expr, Value};
//! use policies::ad::Ad;
//! let e: Expr = "TARGET.Memory >= 2048 && OpSys == \"linux\"".parse().unwrap();
//! let job = Ad::new();
//! let mut machine = Ad::new();
//! machine.set("Memory", 4096);
//! machine.set("OpSys", "LINUX");
//! assert_eq!(policies::expr::eval(&e, &job, &machine), Value::Bool(true));
//! ```

mod eval;
mod lex;
mod parse;
mod print;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use eval::{eval, eval_at, now};
pub use parse::{parse, parse_record};
pub(crate) use print::real_literal;

use std::fmt;

/// A parsed expression. `Display` prints text that parses back to an equal
/// tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `42`, `2.5`, `"text"`, `true`, `undefined`, `error`.
    Lit(Value),
    /// `{a, b, c}`.
    List(Vec<Expr>),
    /// `Memory`, `MY.Memory`, `TARGET.Memory`. `name` is kept as written;
    /// lookups ignore case.
    Attr {
        scope: Scope,
        name: String,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `cond ? then : else`.
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    /// A call of a built-in function; `name` as written.
    Call {
        func: Func,
        name: String,
        args: Vec<Expr>,
    },
}

/// Where an attribute reference looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Unscoped: the ad being evaluated, then the other ad.
    Auto,
    My,
    Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Plus,
    Not,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    /// `=?=` / `is`: same type and value, strings case-sensitive; never
    /// undefined.
    MetaEq,
    /// `=!=` / `isnt`.
    MetaNe,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    /// Binding strength; higher binds tighter.
    pub(crate) fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne | BinOp::MetaEq | BinOp::MetaNe => 3,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 4,
            BinOp::Add | BinOp::Sub => 5,
            BinOp::Mul | BinOp::Div | BinOp::Mod => 6,
        }
    }

    pub(crate) fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::MetaEq => "=?=",
            BinOp::MetaNe => "=!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
        }
    }
}

/// The built-in functions. Names are matched ignoring case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    IfThenElse,
    IsUndefined,
    IsError,
    IsString,
    IsInteger,
    IsReal,
    IsBoolean,
    IsList,
    Member,
    IdenticalMember,
    StringListMember,
    StringListIMember,
    StringListSize,
    Regexp,
    Strcat,
    Substr,
    Size,
    ToUpper,
    ToLower,
    Floor,
    Ceiling,
    Round,
    Int,
    Real,
    String,
    Min,
    Max,
    Time,
}

impl Func {
    pub(crate) const ALL: &'static [(&'static str, Func, usize, usize)] = &[
        // name, function, fewest and most arguments
        ("ifThenElse", Func::IfThenElse, 3, 3),
        ("isUndefined", Func::IsUndefined, 1, 1),
        ("isError", Func::IsError, 1, 1),
        ("isString", Func::IsString, 1, 1),
        ("isInteger", Func::IsInteger, 1, 1),
        ("isReal", Func::IsReal, 1, 1),
        ("isBoolean", Func::IsBoolean, 1, 1),
        ("isList", Func::IsList, 1, 1),
        ("member", Func::Member, 2, 2),
        ("identicalMember", Func::IdenticalMember, 2, 2),
        ("stringListMember", Func::StringListMember, 2, 3),
        ("stringListIMember", Func::StringListIMember, 2, 3),
        ("stringListSize", Func::StringListSize, 1, 2),
        ("regexp", Func::Regexp, 2, 3),
        ("strcat", Func::Strcat, 0, usize::MAX),
        ("substr", Func::Substr, 2, 3),
        ("size", Func::Size, 1, 1),
        ("toUpper", Func::ToUpper, 1, 1),
        ("toLower", Func::ToLower, 1, 1),
        ("floor", Func::Floor, 1, 1),
        ("ceiling", Func::Ceiling, 1, 1),
        ("round", Func::Round, 1, 1),
        ("int", Func::Int, 1, 1),
        ("real", Func::Real, 1, 1),
        ("string", Func::String, 1, 1),
        ("min", Func::Min, 1, 1),
        ("max", Func::Max, 1, 1),
        ("time", Func::Time, 0, 0),
    ];

    pub fn lookup(name: &str) -> Option<Func> {
        Func::ALL
            .iter()
            .find(|(n, ..)| n.eq_ignore_ascii_case(name))
            .map(|(_, f, ..)| *f)
    }

    /// The canonical spelling.
    pub fn name(self) -> &'static str {
        Func::ALL
            .iter()
            .find(|(_, f, ..)| *f == self)
            .map_or("?", |(n, ..)| n)
    }

    pub(crate) fn arity(self) -> (usize, usize) {
        Func::ALL
            .iter()
            .find(|(_, f, ..)| *f == self)
            .map_or((0, 0), |(_, _, lo, hi)| (*lo, *hi))
    }
}

/// The value of an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Undefined,
    Error,
    Bool(bool),
    Int(i64),
    Real(f64),
    Str(String),
    List(Vec<Value>),
}

impl Value {
    /// `true` only for `true` and non-zero numbers: how a requirement or
    /// a policy expression is read.
    pub fn is_true(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Real(r) => *r != 0.0,
            _ => false,
        }
    }

    /// A number as `f64` (booleans count as 0 and 1).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Real(r) => Some(*r),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The literal expression for this value.
    pub fn to_expr(&self) -> Expr {
        match self {
            Value::List(items) => Expr::List(items.iter().map(Value::to_expr).collect()),
            v => Expr::Lit(v.clone()),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Undefined => "undefined",
            Value::Error => "error",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Real(_) => "real",
            Value::Str(_) => "string",
            Value::List(_) => "list",
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i.into())
    }
}
impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i.into())
    }
}
impl From<f64> for Value {
    fn from(r: f64) -> Self {
        Value::Real(r)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

/// A syntax error in an expression; `col` counts characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {col}: {message}")]
pub struct ParseError {
    pub col: usize,
    pub message: String,
}

impl std::str::FromStr for Expr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse(s)
    }
}

impl Expr {
    /// The top-level `&&` clauses, left to right (one clause if there is
    /// no `&&` at the top): what `roost why` counts rejections by.
    pub fn clauses(&self) -> Vec<&Expr> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            match e {
                Expr::Binary(BinOp::And, l, r) => {
                    stack.push(r);
                    stack.push(l);
                }
                e => out.push(e),
            }
        }
        out
    }

    /// Every attribute this expression refers to, with its scope, in order
    /// of first appearance.
    pub fn references(&self) -> Vec<(Scope, &str)> {
        let mut out: Vec<(Scope, &str)> = Vec::new();
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            match e {
                Expr::Lit(_) => {}
                Expr::Attr { scope, name } => {
                    if !out
                        .iter()
                        .any(|(s, n)| s == scope && n.eq_ignore_ascii_case(name))
                    {
                        out.push((*scope, name));
                    }
                }
                Expr::List(items) | Expr::Call { args: items, .. } => {
                    stack.extend(items.iter().rev())
                }
                Expr::Unary(_, a) => stack.push(a),
                Expr::Binary(_, a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                Expr::Cond(a, b, c) => {
                    stack.push(c);
                    stack.push(b);
                    stack.push(a);
                }
            }
        }
        out
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Auto => "",
            Scope::My => "MY.",
            Scope::Target => "TARGET.",
        })
    }
}
