//! What the CLI prints: aligned tables that fit the terminal, the job and
//! machine tables, readable event logs, times and durations.

use proto::job::{ExitStatus, JobState, JobSummary, Transfer, TransferKind};
use proto::pool::{AdValue, MachineAd};
use serde_json::Value;
use std::io::IsTerminal;

/// Columns of the terminal on stdout, or `None` when stdout is not a
/// terminal (then nothing is cut).
pub fn terminal_width() -> Option<usize> {
    let out = std::io::stdout();
    if !out.is_terminal() {
        return None;
    }
    match rustix::termios::tcgetwinsize(&out) {
        Ok(w) if w.ws_col > 0 => Some(w.ws_col.into()),
        _ => std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()),
    }
}

/// Renders rows under headers, columns two spaces apart. With `width`, the
/// last column is cut (ending in `…`) so that lines fit.
pub fn table(headers: &[&str], rows: &[Vec<String>], width: Option<usize>) -> String {
    let n = headers.len();
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate().take(n) {
            if i + 1 == n {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.extend(std::iter::repeat_n(' ', w[i] - c.chars().count() + 2));
            }
        }
        let line = line.trim_end();
        match width {
            Some(max) if line.chars().count() > max => {
                let keep = max.saturating_sub(1);
                out.extend(line.chars().take(keep));
                out.push('…');
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A command line as a shell would take it back.
pub fn shell_words(words: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let quote = |w: &str| {
        let plain = !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        if plain {
            w.to_string()
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    words
        .into_iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn exit_text(e: Option<ExitStatus>) -> String {
    match e {
        Some(ExitStatus::Code(c)) => c.to_string(),
        Some(ExitStatus::Signal(s)) => format!("signal {s}"),
        None => "-".into(),
    }
}

/// Bytes as `512 B`, `12.5 kB`, `2.5 MB`, `1.2 GB` (powers of 1000).
pub fn bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Cells of a transfer's bar between the brackets.
pub const BAR_CELLS: usize = 20;

/// A transfer as one line: what moves, a bar, bytes and MB/s
/// (1 MB = 10^6 bytes):
/// `restart    [##########----------]  50%  1.0 MB / 2.0 MB  4.0 MB/s`.
/// A checkpoint's size is known only at its end, so its bar has no
/// percentage: a block of three `#` sweeps along it (placed by the
/// seconds so far) next to the bytes received.
pub fn transfer_bar(t: &Transfer) -> String {
    let rate = if t.secs > 0.0 {
        t.bytes as f64 / t.secs / 1e6
    } else {
        0.0
    };
    let (what, verb) = match t.kind {
        TransferKind::Checkpoint => ("checkpoint", "received"),
        TransferKind::Restart => ("restart", "sent"),
    };
    match t.total {
        Some(total) => {
            let frac = if total == 0 {
                1.0
            } else {
                (t.bytes as f64 / total as f64).clamp(0.0, 1.0)
            };
            let full = (frac * BAR_CELLS as f64).floor() as usize;
            format!(
                "{what:<10} [{}{}] {:>3}%  {} / {}  {rate:.1} MB/s",
                "#".repeat(full),
                "-".repeat(BAR_CELLS - full),
                (frac * 100.0).floor() as u32,
                bytes(t.bytes),
                bytes(total)
            )
        }
        None => {
            // Four steps a second, bouncing between the ends.
            let span = BAR_CELLS - 3;
            let step = (t.secs.max(0.0) * 4.0) as usize % (2 * span);
            let at = if step <= span { step } else { 2 * span - step };
            format!(
                "{what:<10} [{}###{}]  {} {verb}  {rate:.1} MB/s",
                "-".repeat(at),
                "-".repeat(span - at),
                bytes(t.bytes)
            )
        }
    }
}

/// One line per job with an image transfer in progress, `ID  bar`, or
/// nothing when none moves.
pub fn transfers(jobs: &[JobSummary]) -> String {
    let mut out = String::new();
    for j in jobs {
        if let Some(t) = &j.transfer {
            out.push_str(&format!("{}  {}\n", j.id, transfer_bar(t)));
        }
    }
    out
}

/// The CKPT column: how many checkpoints, the last image's size (with
/// `incr` for an increment), how long it took and its age (`now` in unix
/// seconds), or `-`.
pub fn ckpt_text(j: &JobSummary, now: i64) -> String {
    if j.checkpoints == 0 {
        return "-".into();
    }
    let size = |b: u64| {
        let incr = if j.ckpt_kind.as_deref() == Some("incremental") {
            " incr"
        } else {
            ""
        };
        match j.ckpt_secs {
            Some(s) => format!("{}{incr} in {s:.1}s", bytes(b)),
            None => format!("{}{incr}", bytes(b)),
        }
    };
    match (j.ckpt_bytes, j.ckpt_time) {
        (Some(b), Some(t)) => format!(
            "{}, {}, {} ago",
            j.checkpoints,
            size(b),
            duration((now - t).max(0) as f64)
        ),
        (Some(b), None) => format!("{}, {}", j.checkpoints, size(b)),
        _ => format!("{}, no image", j.checkpoints),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `roost q`: ID OWNER STATE HOST RUNS CKPT [EXIT] CMD, then a count by state.
pub fn queue(jobs: &[JobSummary], with_exit: bool, width: Option<usize>) -> String {
    queue_at(jobs, with_exit, width, now())
}

/// [`queue`] with checkpoint ages counted from `now` (unix seconds).
pub fn queue_at(jobs: &[JobSummary], with_exit: bool, width: Option<usize>, now: i64) -> String {
    let mut headers = vec!["ID", "OWNER", "STATE", "HOST", "RUNS", "CKPT"];
    if with_exit {
        headers.push("EXIT");
    }
    headers.push("CMD");
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let mut r = vec![
                j.id.to_string(),
                j.owner.clone(),
                j.state.as_str().to_string(),
                j.host
                    .as_ref()
                    .map_or_else(|| "-".into(), |h| h.to_string()),
                j.runs.to_string(),
                ckpt_text(j, now),
            ];
            if with_exit {
                r.push(exit_text(j.exit));
            }
            r.push(shell_words(
                std::iter::once(&j.executable).chain(&j.arguments),
            ));
            r
        })
        .collect();
    let mut out = table(&headers, &rows, width);
    out.push_str(&queue_totals(jobs));
    out.push('\n');
    for j in jobs {
        if let (JobState::Held, Some(why)) = (j.state, &j.hold_reason) {
            out.push_str(&format!("{} is held: {why}\n", j.id));
        }
    }
    out
}

/// `roost q --run`: ID OWNER HOST RUNS CKPT CMD, running jobs only.
pub fn queue_running(jobs: &[JobSummary], width: Option<usize>) -> String {
    queue_running_at(jobs, width, now())
}

/// [`queue_running`] with checkpoint ages counted from `now`.
pub fn queue_running_at(jobs: &[JobSummary], width: Option<usize>, now: i64) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.owner.clone(),
                j.host
                    .as_ref()
                    .map_or_else(|| "-".into(), |h| h.to_string()),
                j.runs.to_string(),
                ckpt_text(j, now),
                shell_words(std::iter::once(&j.executable).chain(&j.arguments)),
            ]
        })
        .collect();
    let mut out = table(
        &["ID", "OWNER", "HOST", "RUNS", "CKPT", "CMD"],
        &rows,
        width,
    );
    out.push_str(&match jobs.len() {
        0 => "no running jobs\n".to_string(),
        1 => "1 job running\n".to_string(),
        n => format!("{n} jobs running\n"),
    });
    out
}

/// `roost q --held`: ID OWNER RUNS CMD REASON, held jobs only.
pub fn queue_held(jobs: &[JobSummary], width: Option<usize>) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.owner.clone(),
                j.runs.to_string(),
                shell_words(std::iter::once(&j.executable).chain(&j.arguments)),
                j.hold_reason.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = table(&["ID", "OWNER", "RUNS", "CMD", "REASON"], &rows, width);
    out.push_str(&match jobs.len() {
        0 => "no held jobs\n".to_string(),
        1 => "1 job held (`roost release JOB` lets it run)\n".to_string(),
        n => format!("{n} jobs held (`roost release JOB` lets them run)\n"),
    });
    out
}

/// An ad as `Name = expression` lines, each indented by `indent`.
pub fn ad_lines(ad: &policies::Ad, indent: &str) -> String {
    ad.to_string()
        .lines()
        .map(|l| format!("{indent}{l}\n"))
        .collect()
}

/// `roost history`: ID OWNER STATE EXIT RUNS CKPT FINISHED CMD.
pub fn history(jobs: &[JobSummary], width: Option<usize>) -> String {
    let headers = [
        "ID", "OWNER", "STATE", "EXIT", "RUNS", "CKPT", "FINISHED", "CMD",
    ];
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.owner.clone(),
                j.state.as_str().to_string(),
                exit_text(j.exit),
                j.runs.to_string(),
                if j.checkpoints == 0 {
                    "-".into()
                } else {
                    j.checkpoints.to_string()
                },
                j.finished.map_or_else(|| "-".into(), utc),
                shell_words(std::iter::once(&j.executable).chain(&j.arguments)),
            ]
        })
        .collect();
    let mut out = table(&headers, &rows, width);
    if jobs.is_empty() {
        out.push_str("no finished jobs\n");
    }
    out
}

fn queue_totals(jobs: &[JobSummary]) -> String {
    if jobs.is_empty() {
        return "no jobs".into();
    }
    let states = [
        JobState::Idle,
        JobState::Running,
        JobState::Held,
        JobState::Completed,
        JobState::Removed,
    ];
    let parts: Vec<String> = states
        .iter()
        .filter_map(|&s| {
            let n = jobs.iter().filter(|j| j.state == s).count();
            (n > 0).then(|| format!("{n} {}", s.as_str()))
        })
        .collect();
    let noun = if jobs.len() == 1 { "job" } else { "jobs" };
    format!("{} {noun}: {}", jobs.len(), parts.join(", "))
}

/// One expanded job for `roost submit --dry-run`: only what is set.
pub fn job_spec(id: &str, s: &proto::job::JobSpec) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = |k: &str, v: String| rows.push(vec![format!("  {k}"), v]);
    let shipped = if s.transfer_executable {
        "shipped from here"
    } else {
        "on the execute host"
    };
    row("executable", format!("{} ({shipped})", s.executable));
    if !s.arguments.is_empty() {
        row("arguments", shell_words(&s.arguments));
    }
    for (k, v) in [
        ("input", &s.input),
        ("output", &s.output),
        ("error", &s.error),
    ] {
        if let Some(v) = v {
            row(k, v.clone());
        }
    }
    row("initialdir", s.initialdir.clone());
    if !s.environment.is_empty() {
        row(
            "environment",
            shell_words(s.environment.iter().map(|(k, v)| format!("{k}={v}"))),
        );
    }
    if let Some(r) = &s.requirements {
        row("requirements", r.clone());
    }
    if let Some(r) = &s.rank {
        row("rank", r.clone());
    }
    row(
        "request",
        format!(
            "{} cpus, {} MB memory, {} MB disk",
            s.request_cpus, s.request_memory_mb, s.request_disk_mb
        ),
    );
    if s.max_retries > 0 {
        row("max_retries", s.max_retries.to_string());
    }
    for (k, v) in &s.attributes {
        row(&format!("+{k}"), v.clone());
    }
    let t = table(&["", ""], &rows, None);
    // The header row of `table` is empty here; the job id takes its place.
    format!(
        "job {id}\n{}",
        t.split_once('\n').map_or("", |(_, rest)| rest)
    )
}

/// An ad attribute by name, case-insensitively (as the expression language
/// compares names).
pub fn attr<'a>(m: &'a MachineAd, name: &str) -> Option<&'a AdValue> {
    m.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn num(v: Option<&AdValue>) -> Option<f64> {
    match v? {
        AdValue::Int(i) => Some(*i as f64),
        AdValue::Real(r) => Some(*r),
        _ => None,
    }
}

fn value_text(v: &AdValue) -> String {
    match v {
        AdValue::Int(i) => i.to_string(),
        AdValue::Real(r) => r.to_string(),
        AdValue::Str(s) | AdValue::Expr(s) => s.clone(),
        AdValue::Bool(b) => b.to_string(),
    }
}

/// `roost status`: NAME STATE ACTIVITY KBDIDLE LOADAVG MEMORY.
pub fn machines(ms: &[MachineAd], width: Option<usize>) -> String {
    let rows: Vec<Vec<String>> = ms
        .iter()
        .map(|m| {
            let idle = match num(attr(m, "KeyboardIdle")) {
                Some(s) => duration(s),
                None => attr(m, "KeyboardIdle").map_or_else(|| "-".into(), value_text),
            };
            let load = num(attr(m, "LoadAvg")).map_or_else(|| "-".into(), |l| format!("{l:.2}"));
            let mem = num(attr(m, "Memory")).map_or_else(|| "-".into(), |mb| format!("{mb:.0} MB"));
            vec![
                m.name.to_string(),
                m.state.clone(),
                m.activity.clone(),
                idle,
                load,
                mem,
            ]
        })
        .collect();
    if ms.is_empty() {
        return "no machines have reported to the matchmaker\n".into();
    }
    let mut out = table(
        &["NAME", "STATE", "ACTIVITY", "KBDIDLE", "LOADAVG", "MEMORY"],
        &rows,
        width,
    );
    {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for m in ms {
            match counts.iter_mut().find(|(s, _)| *s == m.state) {
                Some((_, n)) => *n += 1,
                None => counts.push((m.state.clone(), 1)),
            }
        }
        let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let noun = if ms.len() == 1 { "machine" } else { "machines" };
        out.push_str(&format!("{} {noun}: {}\n", ms.len(), parts.join(", ")));
    }
    out
}

/// Machine ads as plain JSON: attributes as JSON values, expressions as strings.
pub fn machines_json(ms: &[MachineAd]) -> Value {
    let ad = |m: &MachineAd| {
        let attrs: serde_json::Map<String, Value> = m
            .attrs
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    AdValue::Int(i) => Value::from(*i),
                    AdValue::Real(r) => Value::from(*r),
                    AdValue::Bool(b) => Value::from(*b),
                    AdValue::Str(s) | AdValue::Expr(s) => Value::from(s.clone()),
                };
                (k.clone(), v)
            })
            .collect();
        serde_json::json!({
            "name": m.name.0, "state": m.state, "activity": m.activity, "attrs": attrs,
        })
    };
    Value::Array(ms.iter().map(ad).collect())
}

/// Seconds as `45s`, `12m05s`, `3h07m`, `2d04h`, `3y`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        86400..31_536_000 => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
        _ => format!("{}y", s / 31_536_000),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

const TIME_KEYS: &[&str] = &["time", "ts", "timestamp", "at"];
const EVENT_KEYS: &[&str] = &["event", "type", "kind"];

fn time_text(v: &Value) -> String {
    match v {
        Value::Number(n) => {
            let s = n.as_f64().unwrap_or(0.0);
            // Milliseconds if it is too large to be seconds of this era.
            let s = if s > 1e11 { s / 1000.0 } else { s };
            utc(s.floor() as i64)
        }
        Value::String(s) => s.replace('T', " ").trim_end_matches('Z').to_string(),
        other => other.to_string(),
    }
}

fn field_text(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => s.clone(),
        Value::Number(n) if n.is_f64() => {
            let t = format!("{:.3}", n.as_f64().unwrap_or(0.0));
            t.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        other => other.to_string(),
    }
}

/// Details shown first, in this order; the rest follow by name. `job` is
/// left out: a log belongs to one job.
const FIRST_KEYS: &[&str] = &[
    "host",
    "exit_code",
    "signal",
    "reason",
    "bytes",
    "raw_bytes",
    "seconds",
    "image_bytes",
    "from_checkpoint",
    "wall_secs",
    "cpu_secs",
    "bytes_read",
    "bytes_written",
];

/// One event-log line (a JSON object) as `TIME  EVENT  key=value ...`.
/// Lines that are not JSON objects are shown as they are.
pub fn log_line(line: &str) -> String {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let pick = |keys: &[&str]| keys.iter().find_map(|k| map.get_key_value(*k));
    let time = pick(TIME_KEYS);
    let event = pick(EVENT_KEYS);
    let mut keys: Vec<&String> = map
        .keys()
        .filter(|k| {
            k.as_str() != "job"
                && time.is_none_or(|(tk, _)| tk != *k)
                && event.is_none_or(|(ek, _)| ek != *k)
        })
        .collect();
    let rank = |k: &str| {
        FIRST_KEYS
            .iter()
            .position(|f| *f == k)
            .unwrap_or(FIRST_KEYS.len())
    };
    keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    let mut details = Vec::new();
    for k in keys {
        match &map[k] {
            Value::Null => {}
            Value::Object(inner) => {
                for (ik, iv) in inner {
                    if !iv.is_null() {
                        details.push(format!("{k}.{ik}={}", field_text(iv)));
                    }
                }
            }
            v => details.push(format!("{k}={}", field_text(v))),
        }
    }
    let time = time.map_or_else(|| "-".into(), |(_, v)| time_text(v));
    let event = event.map_or_else(|| "-".into(), |(_, v)| field_text(v));
    format!("{time}  {event:<12} {}", details.join(" "))
        .trim_end()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ids::{HostName, JobId};

    fn job(c: u64, p: u32, state: JobState, host: Option<&str>, args: &[&str]) -> JobSummary {
        JobSummary {
            id: JobId {
                cluster: c,
                proc: p,
            },
            owner: "ann".into(),
            state,
            executable: "/home/ann/upper.sh".into(),
            arguments: args.iter().map(|s| s.to_string()).collect(),
            host: host.map(|h| HostName(h.into())),
            submitted: 0,
            exit: (state == JobState::Completed).then_some(ExitStatus::Code(0)),
            runs: u32::from(host.is_some()),
            checkpoints: 0,
            ckpt_bytes: None,
            ckpt_time: None,
            ckpt_kind: None,
            ckpt_secs: None,
            finished: None,
            hold_reason: None,
            transfer: None,
        }
    }

    fn tr(kind: TransferKind, bytes: u64, total: Option<u64>, secs: f64) -> Transfer {
        Transfer {
            kind,
            bytes,
            total,
            secs,
        }
    }

    #[test]
    fn a_restart_bar_fills_with_the_bytes_sent() {
        let t = tr(TransferKind::Restart, 1_000_000, Some(2_000_000), 0.25);
        assert_eq!(
            transfer_bar(&t),
            "restart    [##########----------]  50%  1.0 MB / 2.0 MB  4.0 MB/s"
        );
        let t = tr(TransferKind::Restart, 2_000_000, Some(2_000_000), 2.0);
        assert_eq!(
            transfer_bar(&t),
            "restart    [####################] 100%  2.0 MB / 2.0 MB  1.0 MB/s"
        );
        let t = tr(TransferKind::Restart, 0, Some(0), 0.0);
        assert_eq!(
            transfer_bar(&t),
            "restart    [####################] 100%  0 B / 0 B  0.0 MB/s"
        );
        let t = tr(TransferKind::Restart, 99, Some(1000), 1.0);
        assert!(transfer_bar(&t).contains("[#---"), "{}", transfer_bar(&t));
        assert!(transfer_bar(&t).contains("   9%"), "{}", transfer_bar(&t));
    }

    #[test]
    fn a_checkpoint_bar_shows_bytes_and_rate_with_a_moving_block() {
        let t = tr(TransferKind::Checkpoint, 3_500_000, None, 0.0);
        assert_eq!(
            transfer_bar(&t),
            "checkpoint [###-----------------]  3.5 MB received  0.0 MB/s"
        );
        let t = tr(TransferKind::Checkpoint, 3_500_000, None, 0.5);
        assert_eq!(
            transfer_bar(&t),
            "checkpoint [--###---------------]  3.5 MB received  7.0 MB/s"
        );
        // At the right end it turns back.
        let t = tr(TransferKind::Checkpoint, 0, None, 17.0 / 4.0);
        assert!(transfer_bar(&t).contains("[-----------------###]"));
        let t = tr(TransferKind::Checkpoint, 0, None, 18.0 / 4.0);
        assert!(transfer_bar(&t).contains("[----------------###-]"));
        let mut j = job(3, 1, JobState::Running, Some("exec1"), &[]);
        assert_eq!(transfers(std::slice::from_ref(&j)), "");
        j.transfer = Some(tr(TransferKind::Checkpoint, 1000, None, 1.0));
        assert_eq!(
            transfers(&[j]),
            "3.1  checkpoint [----###-------------]  1.0 kB received  0.0 MB/s\n"
        );
    }

    #[test]
    fn queue_table_is_aligned_and_counts_states() {
        let jobs = vec![
            job(
                1,
                0,
                JobState::Running,
                Some("exec1"),
                &["in.txt", "out put.txt"],
            ),
            job(12, 3, JobState::Idle, None, &[]),
        ];
        let mut jobs = jobs;
        jobs[0].checkpoints = 2;
        jobs[0].ckpt_bytes = Some(2_500_000);
        jobs[0].ckpt_time = Some(1000);
        assert_eq!(
            queue_at(&jobs, false, None, 1185),
            "\
ID    OWNER  STATE    HOST   RUNS  CKPT                  CMD
1.0   ann    running  exec1  1     2, 2.5 MB, 3m05s ago  /home/ann/upper.sh in.txt 'out put.txt'
12.3  ann    idle     -      0     -                     /home/ann/upper.sh
2 jobs: 1 idle, 1 running
"
        );
        jobs[0].ckpt_kind = Some("incremental".into());
        jobs[0].ckpt_secs = Some(0.42);
        assert_eq!(
            ckpt_text(&jobs[0], 1185),
            "2, 2.5 MB incr in 0.4s, 3m05s ago"
        );
        jobs[0].ckpt_kind = Some("full".into());
        assert_eq!(ckpt_text(&jobs[0], 1185), "2, 2.5 MB in 0.4s, 3m05s ago");
    }

    #[test]
    fn queue_table_with_exit_and_empty() {
        let mut j = job(3, 0, JobState::Completed, Some("exec2"), &[]);
        j.exit = Some(ExitStatus::Signal(9));
        assert_eq!(
            queue(&[j.clone()], true, None),
            "\
ID   OWNER  STATE      HOST   RUNS  CKPT  EXIT      CMD
3.0  ann    completed  exec2  1     -     signal 9  /home/ann/upper.sh
1 job: 1 completed
"
        );
        assert_eq!(
            queue(&[], false, None),
            "ID  OWNER  STATE  HOST  RUNS  CKPT  CMD\nno jobs\n"
        );
        let mut held = job(5, 1, JobState::Held, None, &[]);
        held.hold_reason = Some("disk full".into());
        assert_eq!(
            queue(&[held], false, None),
            "\
ID   OWNER  STATE  HOST  RUNS  CKPT  CMD
5.1  ann    held   -     0     -     /home/ann/upper.sh
1 job: 1 held
5.1 is held: disk full
"
        );
        j.finished = Some(1_795_464_062);
        j.checkpoints = 4;
        assert_eq!(
            history(&[j], None),
            "\
ID   OWNER  STATE      EXIT      RUNS  CKPT  FINISHED             CMD
3.0  ann    completed  signal 9  1     4     2026-11-23 20:01:02  /home/ann/upper.sh
"
        );
        assert_eq!(
            history(&[], None),
            "ID  OWNER  STATE  EXIT  RUNS  CKPT  FINISHED  CMD\nno finished jobs\n"
        );
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_250_000_000), "1.2 GB");
    }

    #[test]
    fn running_and_held_listings() {
        let mut a = job(1, 0, JobState::Running, Some("exec2"), &["x y"]);
        a.runs = 2;
        assert_eq!(
            queue_running_at(&[a], None, 0),
            "\
ID   OWNER  HOST   RUNS  CKPT  CMD
1.0  ann    exec2  2     -     /home/ann/upper.sh 'x y'
1 job running
"
        );
        assert_eq!(
            queue_running_at(&[], None, 0),
            "ID  OWNER  HOST  RUNS  CKPT  CMD\nno running jobs\n"
        );
        let mut h = job(5, 1, JobState::Held, None, &[]);
        h.hold_reason = Some("held by ann: input not ready".into());
        let mut h2 = job(5, 2, JobState::Held, None, &[]);
        h2.hold_reason = None;
        let t = queue_held(&[h, h2], Some(60));
        assert_eq!(
            t,
            "\
ID   OWNER  RUNS  CMD                 REASON
5.1  ann    0     /home/ann/upper.sh  held by ann: input no…
5.2  ann    0     /home/ann/upper.sh  -
2 jobs held (`roost release JOB` lets them run)
"
        );
        assert!(t.lines().all(|l| l.chars().count() <= 60), "{t}");
    }

    #[test]
    fn table_cuts_the_last_column_to_the_width() {
        let rows = vec![vec![
            "1".to_string(),
            "a long command line here".to_string(),
        ]];
        let t = table(&["ID", "CMD"], &rows, Some(12));
        assert_eq!(t, "ID  CMD\n1   a long …\n");
        assert!(t.lines().all(|l| l.chars().count() <= 12));
    }

    #[test]
    fn machine_table_reads_attributes_case_insensitively() {
        let mut attrs = proto::pool::Ad::new();
        attrs.insert("KeyboardIdle".into(), AdValue::Int(754));
        attrs.insert("loadavg".into(), AdValue::Real(0.3));
        attrs.insert("Memory".into(), AdValue::Int(2048));
        let a = MachineAd {
            name: HostName("exec1".into()),
            state: "Unclaimed".into(),
            activity: "Idle".into(),
            attrs,
        };
        let b = MachineAd {
            name: HostName("exec2".into()),
            state: "Owner".into(),
            activity: "Idle".into(),
            attrs: Default::default(),
        };
        assert_eq!(
            machines(&[a.clone(), b], None),
            "\
NAME   STATE      ACTIVITY  KBDIDLE  LOADAVG  MEMORY
exec1  Unclaimed  Idle      12m34s   0.30     2048 MB
exec2  Owner      Idle      -        -        -
2 machines: 1 Unclaimed, 1 Owner
"
        );
        assert_eq!(
            machines_json(&[a]).to_string(),
            r#"[{"activity":"Idle","attrs":{"KeyboardIdle":754,"Memory":2048,"loadavg":0.3},"name":"exec1","state":"Unclaimed"}]"#
        );
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_464_062), "2026-11-23 20:01:02");
        assert_eq!(duration(5.9), "5s");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(duration(90061.0), "1d01h");
        assert_eq!(duration(-1.0), "-");
        assert_eq!(duration(1_795_464_062.0), "56y");
    }

    #[test]
    fn log_lines_read_well() {
        assert_eq!(
            log_line(r#"{"time":1795464062,"event":"executing","host":"exec1"}"#),
            "2026-11-23 20:01:02  executing    host=exec1"
        );
        assert_eq!(
            log_line(
                r#"{"event":"completed","time":1795464062000,"exit":{"Code":0},"usage":{"wall_secs":1.5},"note":"two words"}"#
            ),
            r#"2026-11-23 20:01:02  completed    exit.Code=0 note="two words" usage.wall_secs=1.5"#
        );
        assert_eq!(
            log_line(
                r#"{"time":1795464062,"job":"1.0","event":"completed","bytes_read":130,"bytes_written":130,"cpu_secs":0.0123,"exit_code":0,"sys_cpu_secs":0.01,"user_cpu_secs":0.0023,"wall_secs":1.25}"#
            ),
            "2026-11-23 20:01:02  completed    exit_code=0 wall_secs=1.25 cpu_secs=0.012 bytes_read=130 \
             bytes_written=130 sys_cpu_secs=0.01 user_cpu_secs=0.002"
        );
        assert_eq!(log_line("not json"), "not json");
        assert_eq!(
            log_line(r#"{"ts":"2026-11-23T20:01:02Z","type":"submitted"}"#),
            "2026-11-23 20:01:02  submitted"
        );
    }

    #[test]
    fn dry_run_shows_what_is_set() {
        let spec = proto::job::JobSpec {
            executable: "upper.sh".into(),
            transfer_executable: true,
            arguments: vec!["in put".into()],
            input: None,
            output: Some("out.0".into()),
            error: None,
            initialdir: "/home/ann/j".into(),
            environment: vec![("A".into(), "1".into())],
            requirements: None,
            rank: None,
            request_cpus: 1,
            request_memory_mb: 128,
            request_disk_mb: 128,
            max_retries: 0,
            attributes: Default::default(),
        };
        assert_eq!(
            job_spec("0.0", &spec),
            "\
job 0.0
  executable   upper.sh (shipped from here)
  arguments    'in put'
  output       out.0
  initialdir   /home/ann/j
  environment  A=1
  request      1 cpus, 128 MB memory, 128 MB disk
"
        );
    }

    #[test]
    fn shell_words_quote_what_needs_it() {
        assert_eq!(
            shell_words(["a", "b c", "", "it's"]),
            r#"a 'b c' '' 'it'\''s'"#
        );
    }
}
