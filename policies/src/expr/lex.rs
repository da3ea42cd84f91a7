//! Tokens of the expression language, each with its character column.

use super::ParseError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An integer literal's magnitude; up to 2^63 so that the most
    /// negative integer can be written.
    Int(u64),
    Real(f64),
    Str(String),
    Ident(String),
    /// Punctuation and operators.
    Sym(&'static str),
    End,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    /// 1-based character column.
    pub col: usize,
}

const SYMBOLS: &[&str] = &[
    "=?=", "=!=", "==", "!=", "<=", ">=", "&&", "||", "(", ")", "{", "}", "[", "]", ",", ";", ".",
    "?", ":", "=", "<", ">", "!", "+", "-", "*", "/", "%",
];

pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |col: usize, message: String| ParseError { col, message };
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let mut real = false;
            if i < chars.len() && chars[i] == '.' {
                real = true;
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    real = true;
                    i = j;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            if i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                return Err(err(
                    i + 1,
                    format!("unexpected '{}' after a number", chars[i]),
                ));
            }
            let text: String = chars[start..i].iter().collect();
            let tok = if real {
                let r: f64 = text
                    .parse()
                    .map_err(|_| err(col, format!("'{text}' is not a number")))?;
                if !r.is_finite() {
                    return Err(err(col, format!("real number '{text}' is out of range")));
                }
                Tok::Real(r)
            } else {
                match text.parse::<u64>() {
                    Ok(n) if n <= 1 << 63 => Tok::Int(n),
                    _ => {
                        return Err(err(
                            col,
                            format!("integer '{text}' is out of range (at most {})", i64::MAX),
                        ));
                    }
                }
            };
            out.push(Token { tok, col });
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(chars[start..i].iter().collect()),
                col,
            });
            continue;
        }
        if c == '"' {
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&c) = chars.get(i) else {
                    return Err(err(
                        col,
                        "unterminated string (expected a closing '\"')".into(),
                    ));
                };
                i += 1;
                match c {
                    '"' => break,
                    '\\' => {
                        let Some(&e) = chars.get(i) else {
                            return Err(err(
                                col,
                                "unterminated string (expected a closing '\"')".into(),
                            ));
                        };
                        i += 1;
                        match e {
                            'n' => s.push('\n'),
                            't' => s.push('\t'),
                            'r' => s.push('\r'),
                            'b' => s.push('\u{8}'),
                            'f' => s.push('\u{c}'),
                            '0'..='7' => {
                                // Up to three octal digits, as in C.
                                let mut v = e.to_digit(8).unwrap_or(0);
                                let mut n = 1;
                                while n < 3 {
                                    match chars.get(i).and_then(|c| c.to_digit(8)) {
                                        Some(d) if v * 8 + d <= 0o377 => {
                                            v = v * 8 + d;
                                            i += 1;
                                            n += 1;
                                        }
                                        _ => break,
                                    }
                                }
                                s.push(char::from_u32(v).unwrap_or('\u{fffd}'));
                            }
                            // Any other escaped character stands for itself.
                            other => s.push(other),
                        }
                    }
                    c => s.push(c),
                }
            }
            out.push(Token {
                tok: Tok::Str(s),
                col,
            });
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 3)].iter().collect();
        match SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            Some(sym) => {
                out.push(Token {
                    tok: Tok::Sym(sym),
                    col,
                });
                i += sym.chars().count();
            }
            None => return Err(err(col, format!("unexpected character '{c}'"))),
        }
    }
    out.push(Token {
        tok: Tok::End,
        col: chars.len() + 1,
    });
    Ok(out)
}
