//! Printing: expressions as text that parses back to the same tree, and
//! values as HTCondor's `string()` would write them.

use super::parse::is_reserved;
use super::{Expr, Scope, UnOp, Value};
use std::fmt::{self, Write};

/// A real as literal text that reads back as the same real: the shortest
/// form, always with a `.` or an exponent. Non-finite reals have no
/// literal and print as the call that makes them.
pub(crate) fn real_literal(r: f64) -> String {
    if r.is_nan() {
        return "real(\"NaN\")".into();
    }
    if r.is_infinite() {
        return if r > 0.0 {
            "real(\"INF\")"
        } else {
            "real(\"-INF\")"
        }
        .into();
    }
    let s = format!("{r:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// A real as HTCondor converts it to a string (`%.15E`, `0.0` for zero).
pub(crate) fn real_to_string(r: f64) -> String {
    if r == 0.0 {
        return if r.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    if r.is_nan() {
        return "NaN".into();
    }
    if r.is_infinite() {
        return if r > 0.0 { "INF" } else { "-INF" }.into();
    }
    let s = format!("{r:.15E}");
    match s.split_once('E') {
        Some((mantissa, exp)) => {
            let e: i32 = exp.parse().unwrap_or(0);
            let sign = if e < 0 { '-' } else { '+' };
            format!("{mantissa}E{sign}{:02}", e.unsigned_abs())
        }
        None => s,
    }
}

/// A string as a literal with the escapes the lexer reads.
pub(crate) fn quote(s: &str, out: &mut impl Write) -> fmt::Result {
    out.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\t' => out.write_str("\\t")?,
            '\r' => out.write_str("\\r")?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

impl Value {
    /// The value as a string, as `string()` and `strcat()` convert it:
    /// strings unquoted, reals in HTCondor's `%.15E` form.
    pub fn to_plain_string(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Real(r) => real_to_string(*r),
            Value::List(items) => {
                let inner: Vec<String> = items.iter().map(|v| v.to_string()).collect();
                format!("{{ {} }}", inner.join(","))
            }
            v => v.to_string(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Undefined => f.write_str("undefined"),
            Value::Error => f.write_str("error"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Real(r) => f.write_str(&real_literal(*r)),
            Value::Str(s) => quote(s, f),
            Value::List(items) => {
                f.write_char('{')?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_char('}')
            }
        }
    }
}

/// Binding strength of an expression's top operator (higher binds tighter).
fn precedence(e: &Expr) -> u8 {
    match e {
        Expr::Cond(..) => 0,
        Expr::Binary(op, ..) => op.precedence(),
        Expr::Unary(..) => 7,
        // A negative literal prints with a leading '-', like a unary minus.
        Expr::Lit(Value::Int(i)) if *i < 0 => 7,
        Expr::Lit(Value::Real(r)) if r.is_sign_negative() => 7,
        _ => 8,
    }
}

fn child(f: &mut fmt::Formatter<'_>, e: &Expr, parens: bool) -> fmt::Result {
    if parens {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Lit(v) => write!(f, "{v}"),
            Expr::List(items) => {
                f.write_char('{')?;
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_char('}')
            }
            Expr::Attr { scope, name } => {
                // An unscoped name that is a keyword, or `my`/`target`, can
                // only be written scoped; such names never come from the
                // parser, so this only guards hand-built trees.
                if *scope == Scope::Auto && is_reserved(name) {
                    write!(f, "MY.{name}")
                } else {
                    write!(f, "{scope}{name}")
                }
            }
            Expr::Unary(op, e) => {
                f.write_str(match op {
                    UnOp::Neg => "-",
                    UnOp::Plus => "+",
                    UnOp::Not => "!",
                })?;
                // Parenthesize anything below unary, anything that itself
                // starts with a sign (so "- -1" never reads as "--"), and a
                // number after a minus (the parser folds "-1" into one
                // literal, so the negation of 1 prints as "-(1)").
                // A unary operand goes after a space instead ("- -x"): as
                // many levels as the source had, not one more per sign.
                if matches!(**e, Expr::Unary(..)) {
                    return write!(f, " {e}");
                }
                let number = matches!(**e, Expr::Lit(Value::Int(_) | Value::Real(_)));
                child(f, e, precedence(e) <= 7 || (*op == UnOp::Neg && number))
            }
            Expr::Binary(op, l, r) => {
                let p = op.precedence();
                child(f, l, precedence(l) < p)?;
                write!(f, " {} ", op.symbol())?;
                child(f, r, precedence(r) <= p)
            }
            Expr::Cond(c, t, e) => {
                child(f, c, precedence(c) == 0)?;
                write!(f, " ? {t} : {e}")
            }
            Expr::Call { name, args, .. } => {
                write!(f, "{name}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_char(')')
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reals_print_like_htcondor_strings() {
        assert_eq!(real_to_string(2.5), "2.500000000000000E+00");
        assert_eq!(real_to_string(0.1), "1.000000000000000E-01");
        assert_eq!(real_to_string(1e300), "1.000000000000000E+300");
        assert_eq!(real_to_string(-2.5), "-2.500000000000000E+00");
        assert_eq!(real_to_string(0.0), "0.0");
        assert_eq!(real_to_string(-0.0), "-0.0");
        assert_eq!(real_to_string(123456789.0), "1.234567890000000E+08");
    }

    #[test]
    fn real_literals_keep_a_point_or_exponent() {
        assert_eq!(real_literal(2.0), "2.0");
        assert_eq!(real_literal(0.1), "0.1");
        assert_eq!(real_literal(1e300), "1e300");
        assert_eq!(real_literal(-1.5e-7), "-1.5e-7");
    }
}
