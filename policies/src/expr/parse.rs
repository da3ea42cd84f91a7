//! The parser: precedence climbing over the token list, with a bound on
//! nesting so that no input can exhaust the stack.

use super::lex::{Tok, Token, tokenize};
use super::{BinOp, Expr, Func, ParseError, Scope, UnOp, Value};

/// Deepest tree a parsed expression may be (parentheses, operators and
/// calls all count).
pub const MAX_DEPTH: usize = 128;

/// Parses one expression.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let mut p = Parser {
        toks: tokenize(src)?,
        pos: 0,
    };
    let (e, _) = p.expr(0)?;
    p.expect_end()?;
    Ok(e)
}

/// Parses a new-ClassAd record, `[ Name = expr; Other = expr ]`, into its
/// attributes in order.
pub fn parse_record(src: &str) -> Result<Vec<(String, Expr)>, ParseError> {
    let mut p = Parser {
        toks: tokenize(src)?,
        pos: 0,
    };
    p.expect_sym("[")?;
    let mut out = Vec::new();
    loop {
        if p.eat_sym("]") {
            break;
        }
        let (name, _) = p.attr_name()?;
        p.expect_sym("=")?;
        let (e, _) = p.expr(0)?;
        out.push((name, e));
        if p.eat_sym(";") {
            continue;
        }
        p.expect_sym("]")?;
        break;
    }
    p.expect_end()?;
    Ok(out)
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

fn keyword(s: &str, kw: &str) -> bool {
    s.eq_ignore_ascii_case(kw)
}

/// Words that are literals or operators, never attribute names.
pub(crate) fn is_reserved(s: &str) -> bool {
    ["true", "false", "undefined", "error", "is", "isnt"]
        .iter()
        .any(|k| keyword(s, k))
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.toks[self.pos]
    }

    fn next(&mut self) -> Token {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn describe(t: &Tok) -> String {
        match t {
            Tok::Int(n) => format!("'{n}'"),
            Tok::Real(r) => format!("'{r}'"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Sym(s) => format!("'{s}'"),
            Tok::End => "the end".into(),
        }
    }

    fn error<T>(&self, col: usize, message: String) -> Result<T, ParseError> {
        Err(ParseError { col, message })
    }

    fn unexpected<T>(&self, expected: &str) -> Result<T, ParseError> {
        let t = self.peek();
        self.error(
            t.col,
            format!("expected {expected}, found {}", Self::describe(&t.tok)),
        )
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        if self.peek().tok == Tok::Sym(sym_static(sym)) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, sym: &str) -> Result<(), ParseError> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            self.unexpected(&format!("'{sym}'"))
        }
    }

    fn expect_end(&self) -> Result<(), ParseError> {
        if self.peek().tok == Tok::End {
            Ok(())
        } else {
            self.unexpected("an operator or the end of the expression")
        }
    }

    fn attr_name(&mut self) -> Result<(String, usize), ParseError> {
        match self.peek().tok.clone() {
            Tok::Ident(s) if !is_reserved(&s) => {
                let col = self.next().col;
                Ok((s, col))
            }
            _ => self.unexpected("an attribute name"),
        }
    }

    fn check_depth(&self, depth: usize, col: usize) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            self.error(
                col,
                format!("expression is nested too deeply (more than {MAX_DEPTH} levels)"),
            )
        } else {
            Ok(())
        }
    }

    /// A full expression: the conditional operator, right-associative.
    fn expr(&mut self, depth: usize) -> Result<(Expr, usize), ParseError> {
        let col = self.peek().col;
        self.check_depth(depth, col)?;
        let (cond, d0) = self.binary(1, depth)?;
        if !self.eat_sym("?") {
            return Ok((cond, d0));
        }
        let (then, d1) = self.expr(depth + 1)?;
        self.expect_sym(":")?;
        let (els, d2) = self.expr(depth + 1)?;
        let d = d0.max(d1).max(d2) + 1;
        self.check_depth(d, col)?;
        Ok((Expr::Cond(Box::new(cond), Box::new(then), Box::new(els)), d))
    }

    fn binop(&self) -> Option<BinOp> {
        Some(match &self.peek().tok {
            Tok::Sym(s) => match *s {
                "||" => BinOp::Or,
                "&&" => BinOp::And,
                "==" => BinOp::Eq,
                "!=" => BinOp::Ne,
                "=?=" => BinOp::MetaEq,
                "=!=" => BinOp::MetaNe,
                "<" => BinOp::Lt,
                "<=" => BinOp::Le,
                ">" => BinOp::Gt,
                ">=" => BinOp::Ge,
                "+" => BinOp::Add,
                "-" => BinOp::Sub,
                "*" => BinOp::Mul,
                "/" => BinOp::Div,
                "%" => BinOp::Mod,
                _ => return None,
            },
            Tok::Ident(s) if keyword(s, "is") => BinOp::MetaEq,
            Tok::Ident(s) if keyword(s, "isnt") => BinOp::MetaNe,
            _ => return None,
        })
    }

    /// Left-associative binary operators of at least `min` precedence.
    fn binary(&mut self, min: u8, depth: usize) -> Result<(Expr, usize), ParseError> {
        let col = self.peek().col;
        let (mut lhs, mut d) = self.unary(depth)?;
        while let Some(op) = self.binop().filter(|op| op.precedence() >= min) {
            self.next();
            let (rhs, rd) = self.binary(op.precedence() + 1, depth)?;
            d = d.max(rd) + 1;
            self.check_depth(d, col)?;
            lhs = Expr::Binary(op, Box::new(lhs), Box::new(rhs));
        }
        Ok((lhs, d))
    }

    fn unary(&mut self, depth: usize) -> Result<(Expr, usize), ParseError> {
        let t = self.peek().clone();
        self.check_depth(depth, t.col)?;
        let op = match t.tok {
            Tok::Sym("-") => UnOp::Neg,
            Tok::Sym("+") => UnOp::Plus,
            Tok::Sym("!") => UnOp::Not,
            _ => return self.primary(depth),
        };
        self.next();
        if op == UnOp::Neg {
            // A minus sign on a number literal is part of the literal.
            match self.peek().tok {
                Tok::Int(n) => {
                    self.next();
                    return Ok((Expr::Lit(Value::Int((n as i64).wrapping_neg())), 1));
                }
                Tok::Real(r) => {
                    self.next();
                    return Ok((Expr::Lit(Value::Real(-r)), 1));
                }
                _ => {}
            }
        }
        let (e, d) = self.unary(depth + 1)?;
        Ok((Expr::Unary(op, Box::new(e)), d + 1))
    }

    fn primary(&mut self, depth: usize) -> Result<(Expr, usize), ParseError> {
        let t = self.peek().clone();
        if matches!(t.tok, Tok::End | Tok::Sym(_)) && !matches!(t.tok, Tok::Sym("(" | "{")) {
            return self.unexpected("an expression");
        }
        if let Tok::Ident(s) = &t.tok
            && (keyword(s, "is") || keyword(s, "isnt"))
        {
            return self.unexpected("an expression");
        }
        self.next();
        let e = match t.tok {
            Tok::Int(n) => {
                if n > i64::MAX as u64 {
                    return self.error(
                        t.col,
                        format!("integer '{n}' is out of range (at most {})", i64::MAX),
                    );
                }
                return Ok((Expr::Lit(Value::Int(n as i64)), 1));
            }
            Tok::Real(r) => return Ok((Expr::Lit(Value::Real(r)), 1)),
            Tok::Str(s) => return Ok((Expr::Lit(Value::Str(s)), 1)),
            Tok::Sym("(") => {
                let (e, d) = self.expr(depth + 1)?;
                self.expect_sym(")")?;
                return Ok((e, d));
            }
            Tok::Sym("{") => {
                let (items, d) = self.items("}", depth)?;
                return Ok((Expr::List(items), d + 1));
            }
            Tok::Ident(name) => name,
            Tok::Sym(_) | Tok::End => return self.unexpected("an expression"),
        };
        let name = e;
        if keyword(&name, "true") {
            return Ok((Expr::Lit(Value::Bool(true)), 1));
        }
        if keyword(&name, "false") {
            return Ok((Expr::Lit(Value::Bool(false)), 1));
        }
        if keyword(&name, "undefined") {
            return Ok((Expr::Lit(Value::Undefined), 1));
        }
        if keyword(&name, "error") {
            return Ok((Expr::Lit(Value::Error), 1));
        }
        if self.eat_sym("(") {
            let Some(func) = Func::lookup(&name) else {
                let known: Vec<&str> = Func::ALL.iter().map(|(n, ..)| *n).collect();
                return self.error(
                    t.col,
                    format!("unknown function '{name}' (known: {})", known.join(", ")),
                );
            };
            let (args, d) = self.items(")", depth)?;
            let (lo, hi) = func.arity();
            if args.len() < lo || args.len() > hi {
                let want = match (lo, hi) {
                    (lo, hi) if lo == hi => format!("{lo}"),
                    (lo, usize::MAX) => format!("at least {lo}"),
                    (lo, hi) => format!("{lo} to {hi}"),
                };
                let s = if hi == 1 && lo == 1 { "" } else { "s" };
                return self.error(
                    t.col,
                    format!(
                        "{}() takes {want} argument{s}, found {}",
                        func.name(),
                        args.len()
                    ),
                );
            }
            return Ok((Expr::Call { func, name, args }, d + 1));
        }
        let scope = if keyword(&name, "my") && self.peek().tok == Tok::Sym(".") {
            Scope::My
        } else if keyword(&name, "target") && self.peek().tok == Tok::Sym(".") {
            Scope::Target
        } else {
            return Ok((
                Expr::Attr {
                    scope: Scope::Auto,
                    name,
                },
                1,
            ));
        };
        self.next();
        let (name, _) = self.attr_name()?;
        Ok((Expr::Attr { scope, name }, 1))
    }

    /// Comma-separated expressions up to `close` (already past the opener).
    fn items(&mut self, close: &str, depth: usize) -> Result<(Vec<Expr>, usize), ParseError> {
        let mut items = Vec::new();
        let mut d = 0;
        if self.eat_sym(close) {
            return Ok((items, d));
        }
        loop {
            let (e, ed) = self.expr(depth + 1)?;
            d = d.max(ed);
            items.push(e);
            if self.eat_sym(",") {
                continue;
            }
            if self.eat_sym(close) {
                return Ok((items, d));
            }
            return self.unexpected(&format!("',' or '{close}'"));
        }
    }
}

/// The `'static` spelling of a symbol, for comparing with tokens.
fn sym_static(s: &str) -> &'static str {
    match s {
        "(" => "(",
        ")" => ")",
        "{" => "{",
        "}" => "}",
        "[" => "[",
        "]" => "]",
        "," => ",",
        ";" => ";",
        "." => ".",
        "?" => "?",
        ":" => ":",
        "=" => "=",
        _ => "",
    }
}
