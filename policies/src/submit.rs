//! HTCondor submit files (`.sub`): the subset that maps onto a roost job
//! description, parsed into the same [`JobDescription`] as TOML files.
//!
//! Accepted: `executable`, `arguments` (old and new syntax), `input`,
//! `output`, `error`, `log`, `initialdir` (or `iwd`), `environment` (old
//! and new syntax), `requirements`, `rank`, `request_cpus`,
//! `request_memory` (MiB unless a unit is given), `request_disk` (KiB
//! unless a unit is given, as in HTCondor), `transfer_executable`,
//! `max_retries`, `notification`, `universe` (`vanilla` or `standard`),
//! `+Attr = expr` and `MY.Attr = expr`, `#` comments, `\` line
//! continuations, and one queue statement at the end: `queue`, `queue N`,
//! `queue [N] [vars] in|from (items)` or `queue [N] [vars] from FILE`.
//! Anything else is an error naming the line.

use crate::jobfile::{
    Args, Attr, Env, JobDescription, Notification, Queue, QueueItem, Text, check_attr_name,
    check_macro_name, parse_size_mb,
};
use crate::{Loc, PolicyError};
use std::path::Path;

/// Keys a submit file may set (besides `+Attr` and the queue statement).
pub const KEYS: &[&str] = &[
    "executable",
    "arguments",
    "input",
    "output",
    "error",
    "log",
    "initialdir",
    "iwd",
    "environment",
    "requirements",
    "rank",
    "request_cpus",
    "request_memory",
    "request_disk",
    "transfer_executable",
    "max_retries",
    "notification",
    "universe",
];

/// One logical line: continuation lines joined, with where it starts.
struct Line {
    number: usize,
    /// Column (1-based, characters) of the first non-blank character.
    col: usize,
    text: String,
}

fn logical_lines(text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut pending: Option<Line> = None;
    for (i, raw) in text.lines().enumerate() {
        let (body, continues) = match raw.trim_end().strip_suffix('\\') {
            Some(b) => (b, true),
            None => (raw, false),
        };
        match pending.as_mut() {
            Some(p) => {
                p.text.push(' ');
                p.text.push_str(body.trim());
            }
            None => {
                let trimmed = body.trim_start();
                if trimmed.is_empty() && !continues {
                    continue;
                }
                pending = Some(Line {
                    number: i + 1,
                    col: body.chars().count() - trimmed.chars().count() + 1,
                    text: trimmed.trim_end().to_string(),
                });
            }
        }
        if !continues {
            out.extend(pending.take());
        }
    }
    out.extend(pending);
    out.retain(|l| !l.text.is_empty() && !l.text.starts_with('#'));
    out
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn loc(&self, line: usize, col: usize) -> Loc {
        Loc {
            file: self.file.to_string(),
            line,
            col,
        }
    }

    fn bad(&self, line: usize, col: usize, key: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::BadValue {
            loc: self.loc(line, col),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Parses a submit file. `file` names it in errors; `cwd` is the default
/// `initialdir` and where `queue ... from FILE` reads.
pub fn parse(file: &str, text: &str, cwd: &Path) -> Result<JobDescription, PolicyError> {
    let cx = Ctx { file };
    let mut d = JobDescription::empty(file, cwd);
    let mut executable = None;
    let mut queued = false;
    let lines = logical_lines(text);
    let mut idx = 0;
    while idx < lines.len() {
        let line = &lines[idx];
        idx += 1;
        let first_word = line
            .text
            .split(|c: char| c.is_whitespace() || c == '=')
            .next()
            .unwrap_or("");
        if first_word.eq_ignore_ascii_case("queue") && !line.text[5..].trim_start().starts_with('=')
        {
            if queued {
                return Err(PolicyError::Syntax {
                    loc: cx.loc(line.number, line.col),
                    message: "a second queue statement (roost accepts one, at the end)".into(),
                });
            }
            queued = true;
            let rest = line.text[5..].to_string();
            let mut extra = Vec::new();
            // An inline list may run over several lines, up to ')'.
            if rest.contains('(') && !rest.contains(')') {
                loop {
                    let Some(next) = lines.get(idx) else {
                        return Err(PolicyError::Syntax {
                            loc: cx.loc(line.number, line.col),
                            message: "queue list is not closed (expected ')')".into(),
                        });
                    };
                    idx += 1;
                    if next.text.contains(')') {
                        let before = next.text.split(')').next().unwrap_or("");
                        extra.push(before.to_string());
                        if !next
                            .text
                            .split_once(')')
                            .is_some_and(|(_, after)| after.trim().is_empty())
                        {
                            return Err(PolicyError::Syntax {
                                loc: cx.loc(next.number, next.col),
                                message: "unexpected text after ')'".into(),
                            });
                        }
                        break;
                    }
                    extra.push(next.text.clone());
                }
            }
            d.queue = queue(&cx, line, &rest, &extra, cwd)?;
            continue;
        }
        if queued {
            return Err(PolicyError::Syntax {
                loc: cx.loc(line.number, line.col),
                message: "statement after the queue statement (roost accepts one queue statement, at the end)".into(),
            });
        }
        let Some((raw_key, raw_value)) = line.text.split_once('=') else {
            return Err(PolicyError::Syntax {
                loc: cx.loc(line.number, line.col),
                message: "expected KEY = VALUE or a queue statement".into(),
            });
        };
        let key_text = raw_key.trim();
        let value = raw_value.trim();
        let value_col = line.col
            + raw_key.chars().count()
            + 1
            + (raw_value.chars().count() - raw_value.trim_start().chars().count());
        let text = |key: &str| Text {
            value: value.to_string(),
            key: key.to_string(),
            loc: cx.loc(line.number, value_col),
            body: Some(cx.loc(line.number, value_col)),
        };
        // Custom attributes: `+Name = expr` or `MY.Name = expr`.
        let custom = key_text.strip_prefix('+').or_else(|| {
            key_text
                .get(..3)
                .filter(|p| p.eq_ignore_ascii_case("my."))
                .map(|_| &key_text[3..])
        });
        if let Some(name) = custom {
            check_attr_name(name).map_err(|m| cx.bad(line.number, line.col, key_text, m))?;
            if d.attributes
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                return Err(cx.bad(
                    line.number,
                    line.col,
                    key_text,
                    format!("attribute {name} is set twice"),
                ));
            }
            d.attributes
                .push((name.to_string(), Attr::Expr(text(key_text))));
            continue;
        }
        let key = key_text.to_ascii_lowercase();
        let bad = |m: String| cx.bad(line.number, value_col, &key, m);
        match key.as_str() {
            "executable" => executable = Some(text(&key)),
            // Split after macro expansion, as condor_submit does: an item
            // value with blanks in it gives several words.
            "arguments" => d.arguments = Some(Args::Submit(text(&key))),
            "input" => d.input = Some(text(&key)),
            "output" => d.output = Some(text(&key)),
            "error" => d.error = Some(text(&key)),
            "log" => d.log = Some(text(&key)),
            "initialdir" | "iwd" => d.initialdir = Some(text("initialdir")),
            "environment" => d.environment = Some(Env::Submit(text(&key))),
            "requirements" => d.requirements = Some(text(&key)),
            "rank" => d.rank = Some(text(&key)),
            "request_cpus" => {
                d.request_cpus =
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| {
                            bad(format!(
                                "expected an integer of at least 1, found '{value}'"
                            ))
                        })?;
            }
            "request_memory" => {
                d.request_memory_mb = parse_size_mb(value).ok_or_else(|| {
                    bad(format!(
                        "expected MiB or a size like \"2 GB\", found '{value}'"
                    ))
                })?;
            }
            "request_disk" => {
                // A bare number is KiB in HTCondor submit files.
                let mb = if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) {
                    parse_size_mb(&format!("{value} KiB"))
                } else {
                    parse_size_mb(value)
                };
                d.request_disk_mb = mb.ok_or_else(|| {
                    bad(format!(
                        "expected KiB or a size like \"2 GB\", found '{value}'"
                    ))
                })?;
            }
            "transfer_executable" => {
                d.transfer_executable = Some(match value.to_ascii_lowercase().as_str() {
                    "true" | "yes" => true,
                    "false" | "no" => false,
                    _ => return Err(bad(format!("expected true or false, found '{value}'"))),
                });
            }
            "max_retries" => {
                d.max_retries = value.parse().map_err(|_| {
                    bad(format!("expected a non-negative integer, found '{value}'"))
                })?;
            }
            "notification" => {
                d.notification = Notification::parse(value).ok_or_else(|| {
                    bad(format!(
                        "expected never, always, complete or error, found '{value}'"
                    ))
                })?;
            }
            "universe" => {
                if !["vanilla", "standard"].contains(&value.to_ascii_lowercase().as_str()) {
                    return Err(bad(format!(
                        "roost runs vanilla and standard universe jobs, not '{value}'"
                    )));
                }
            }
            _ => {
                return Err(PolicyError::UnknownKey {
                    loc: cx.loc(line.number, line.col),
                    key: key_text.to_string(),
                    expected: format!("{}, +Attr, queue", KEYS.join(", ")),
                });
            }
        }
    }
    if !queued {
        return Err(PolicyError::MissingKey {
            file: file.to_string(),
            key: "queue".into(),
        });
    }
    d.executable = executable.ok_or_else(|| PolicyError::MissingKey {
        file: file.to_string(),
        key: "executable".into(),
    })?;
    d.validate()?;
    Ok(d)
}

/// Splits HTCondor's argument syntax. New syntax (the whole value in double
/// quotes): words separated by blanks, `'...'` groups, `''` inside it is a
/// `'`, `""` is a `"`. Old syntax: words separated by blanks, `\"` is `"`.
pub(crate) fn condor_words(value: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    if let Some(inner) = value.strip_prefix('"') {
        let Some(inner) = inner.strip_suffix('"') else {
            return Err(format!("unterminated \" quote in {value}"));
        };
        let chars: Vec<char> = inner.chars().collect();
        let mut word = String::new();
        let mut in_word = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                '"' if chars.get(i) == Some(&'"') => {
                    i += 1;
                    in_word = true;
                    word.push('"');
                }
                '"' => return Err(format!("a lone \" inside {value} (write \"\" for a quote)")),
                '\'' => {
                    in_word = true;
                    loop {
                        match chars.get(i) {
                            Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                                word.push('\'');
                                i += 2;
                            }
                            Some('\'') => {
                                i += 1;
                                break;
                            }
                            Some(c) => {
                                word.push(*c);
                                i += 1;
                            }
                            None => return Err(format!("unterminated ' quote in {value}")),
                        }
                    }
                }
                c => {
                    in_word = true;
                    word.push(c);
                }
            }
        }
        if in_word {
            words.push(word);
        }
    } else {
        for w in value.split_whitespace() {
            words.push(w.replace("\\\"", "\""));
        }
    }
    Ok(words)
}

/// Splits an HTCondor `environment` value into `NAME=VALUE` words: the new
/// syntax (the whole value in double quotes) as [`condor_words`], the old
/// syntax at `;`.
pub(crate) fn environment_words(value: &str) -> Result<Vec<String>, String> {
    if value.starts_with('"') {
        return condor_words(value);
    }
    Ok(value
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

/// The queue statement after the word `queue`; `extra` holds the lines of
/// a multi-line inline list.
fn queue(
    cx: &Ctx,
    line: &Line,
    rest: &str,
    extra: &[String],
    cwd: &Path,
) -> Result<Queue, PolicyError> {
    let bad = |m: String| cx.bad(line.number, line.col, "queue", m);
    let first = match (find_word(rest, "from"), find_word(rest, "in")) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    let (head, source) = match first {
        Some((i, w)) => (&rest[..i], Some((w, rest[i + w.len()..].trim()))),
        None => (rest, None),
    };
    if find_word(head, "matching").is_some()
        || (first.is_none() && find_word(rest, "matching").is_some())
    {
        return Err(bad(
            "'queue ... matching' is not supported (use 'from' or 'in')".into(),
        ));
    }
    let mut words = head
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty());
    let mut count: u64 = 1;
    let mut vars: Vec<String> = Vec::new();
    if let Some(first) = words.next() {
        match first.parse::<u64>() {
            Ok(n) if (1..=crate::jobfile::MAX_QUEUE).contains(&n) => count = n,
            Ok(n) => {
                return Err(bad(format!(
                    "expected a count from 1 to {}, found {n}",
                    crate::jobfile::MAX_QUEUE
                )));
            }
            Err(_) => vars.push(first.to_string()),
        }
    }
    vars.extend(words.map(str::to_string));
    let Some((how, source)) = source else {
        if !vars.is_empty() {
            return Err(bad(format!(
                "expected 'queue N' or 'queue VARS from (...)', found 'queue{rest}'"
            )));
        }
        return Ok(Queue::Count(count));
    };
    if vars.is_empty() {
        vars.push("Item".into());
    }
    for v in &vars {
        check_macro_name(v).map_err(&bad)?;
    }
    // The item lines: inline `( ... )` or the named file's lines.
    let item_lines: Vec<String> = if let Some(inline) = source.strip_prefix('(') {
        let mut lines = Vec::new();
        match inline.split_once(')') {
            Some((body, after)) => {
                if !after.trim().is_empty() {
                    return Err(bad(format!(
                        "unexpected text after ')': '{}'",
                        after.trim()
                    )));
                }
                lines.push(body.to_string());
            }
            None => {
                lines.push(inline.to_string());
                lines.extend(extra.iter().cloned());
            }
        }
        lines
    } else if how.eq_ignore_ascii_case("from") && !source.is_empty() {
        let path = cwd.join(source);
        std::fs::read_to_string(&path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?
            .lines()
            .map(str::to_string)
            .collect()
    } else {
        return Err(bad(
            "expected '(' and a list of items, or a file name after 'from'".into(),
        ));
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    if how.eq_ignore_ascii_case("in") {
        // `in`: items separated by commas or blanks, one variable each.
        for l in &item_lines {
            for item in l
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
            {
                rows.push(vec![item.to_string()]);
            }
        }
    } else {
        // `from`: one item per line; fields split by commas or blanks, the
        // last variable takes the rest of the line.
        for l in item_lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let mut fields = Vec::new();
            let mut rest = l;
            for _ in 0..vars.len() - 1 {
                let (f, r) = rest
                    .split_once(|c: char| c == ',' || c.is_whitespace())
                    .unwrap_or((rest, ""));
                fields.push(f.to_string());
                rest = r.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
            }
            fields.push(rest.to_string());
            rows.push(fields);
        }
    }
    if rows.is_empty() {
        return Err(bad("the item list is empty".into()));
    }
    let mut items = Vec::new();
    for (index, row) in rows.into_iter().enumerate() {
        for _ in 0..count {
            items.push(QueueItem {
                loc: cx.loc(line.number, line.col),
                index: index as u64,
                vars: vars.iter().cloned().zip(row.iter().cloned()).collect(),
            });
        }
    }
    if items.len() as u64 > crate::jobfile::MAX_QUEUE {
        return Err(bad(format!(
            "more than {} processes",
            crate::jobfile::MAX_QUEUE
        )));
    }
    Ok(Queue::Items(items))
}

/// The byte offset of `word` standing alone (ignoring case) in `s`.
fn find_word<'w>(s: &str, word: &'w str) -> Option<(usize, &'w str)> {
    let lower = s.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(word) {
        let start = from + i;
        let end = start + word.len();
        let word_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let before_ok = start == 0 || !word_char(lower.as_bytes()[start - 1]);
        let after_ok = end == lower.len() || !word_char(lower.as_bytes()[end]);
        if before_ok && after_ok {
            return Some((start, word));
        }
        from = end;
    }
    None
}

#[cfg(test)]
mod tests;
