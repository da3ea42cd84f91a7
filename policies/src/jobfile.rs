//! Job description files (TOML): parsed into a valid [`JobDescription`],
//! expanded into one [`JobSpec`] per queued process.
//!
//! ```toml
//! executable = "analyze"
//! arguments = "--in data.$(Process) --verbose"
//! output = "out.$(Cluster).$(Process)"
//! request_memory = "2 GB"
//! queue = 3
//! ```
//!
//! Every error names the file, the line and column, and the key. The same
//! checks that `expand` makes are made for every queue item at `parse`
//! time, so a `JobDescription` that exists expands without error.

use crate::source::Source;
use crate::{Loc, PolicyError};
use proto::job::JobSpec;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use toml_edit::{ImDocument, Item, TableLike, Value};

/// The keys a job file may hold, in the order error messages list them.
pub const KEYS: &[&str] = &[
    "executable",
    "arguments",
    "input",
    "output",
    "error",
    "log",
    "initialdir",
    "environment",
    "transfer_executable",
    "requirements",
    "rank",
    "request_cpus",
    "request_memory",
    "request_disk",
    "checkpoint_interval",
    "checkpoint_full_every",
    "lease",
    "network",
    "listen",
    "max_retries",
    "notification",
    "attributes",
    "queue",
];

/// A `network` entry: `host:port`, `[v6]:port`, `host`, `a.b.c.d/len`
/// (optionally `:port`), with no separators of the list inside.
fn network_entry_ok(e: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-.:/[]".contains(c);
    if e.is_empty() || !e.chars().all(ok_char) {
        return false;
    }
    let (host, port) = match e.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return false,
            },
            None => return false,
        },
        None => match e.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => (e, None),
            Some((h, p)) => (h, Some(p)),
            None => (e, None),
        },
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return false;
    }
    match host.split_once('/') {
        Some((ip, len)) => {
            ip.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128)
        }
        None => !host.is_empty(),
    }
}

/// Default `request_memory`, MiB.
pub const DEFAULT_REQUEST_MEMORY_MB: u64 = 128;
/// Default `request_disk`, MiB.
pub const DEFAULT_REQUEST_DISK_MB: u64 = 128;
/// The largest `queue` count one file may ask for.
pub const MAX_QUEUE: u64 = 1_000_000;

/// Macros every process defines; item macros may not reuse these names.
const BUILTIN_MACROS: &[&str] = &["Cluster", "ClusterId", "Process", "ProcId", "ItemIndex"];

/// When the user wants mail about the job (`notification`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Notification {
    #[default]
    Never,
    Always,
    Complete,
    Error,
}

impl Notification {
    pub fn as_str(self) -> &'static str {
        match self {
            Notification::Never => "never",
            Notification::Always => "always",
            Notification::Complete => "complete",
            Notification::Error => "error",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "never" => Notification::Never,
            "always" => Notification::Always,
            "complete" => Notification::Complete,
            "error" => Notification::Error,
            _ => return None,
        })
    }
}

/// One process of a cluster, fully expanded: the [`JobSpec`] the schedd
/// queues plus the settings that are the schedd's own business.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessDescription {
    pub spec: JobSpec,
    /// The user's own event log, an absolute path on the submit host.
    pub log: Option<String>,
    pub checkpoint_interval_secs: Option<u64>,
    pub notification: Notification,
}

/// A string value from the file, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Text {
    pub value: String,
    /// The key path for messages: `output`, `environment.PATH`, `queue[2].x`.
    pub key: String,
    /// Where the value starts.
    pub loc: Loc,
    /// Where the string's first character is, when the characters of the
    /// value map one to one onto the file (no escapes, one line): lets an
    /// expression's parse error point at its exact column.
    pub body: Option<Loc>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Args {
    /// Split shell-style after macro expansion.
    Line(Text),
    List(Vec<Text>),
    /// HTCondor's argument syntax (old or new), split after macro
    /// expansion as `condor_submit` does.
    Submit(Text),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Env {
    /// `"A=1 B='x y'"`, split shell-style after macro expansion.
    Line(Text),
    Table(Vec<(String, Text)>),
    /// HTCondor's environment syntax (old `A=1;B=2` or new `"A=1 B='x y'"`),
    /// split after macro expansion as `condor_submit` does.
    Submit(Text),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Attr {
    /// A string: becomes a quoted string literal.
    Str(Text),
    /// A number or boolean, already expression text.
    Literal(String),
    /// Expression text (an HTCondor submit file's `+Attr = expr`).
    Expr(Text),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueItem {
    pub loc: Loc,
    /// The item's position in its list, `$(ItemIndex)`: the processes of
    /// `queue N VAR in (...)` made from one item share it.
    pub index: u64,
    /// Macro name as written → value.
    pub vars: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Queue {
    Count(u64),
    Items(Vec<QueueItem>),
}

/// A parsed, valid job description: every key known and well-typed, every
/// macro defined, every path confined, every expression (`requirements`,
/// `rank`) well-formed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDescription {
    pub(crate) file: String,
    pub(crate) cwd: PathBuf,
    pub(crate) executable: Text,
    pub(crate) transfer_executable: Option<bool>,
    pub(crate) arguments: Option<Args>,
    pub(crate) input: Option<Text>,
    pub(crate) output: Option<Text>,
    pub(crate) error: Option<Text>,
    pub(crate) log: Option<Text>,
    pub(crate) initialdir: Option<Text>,
    pub(crate) environment: Option<Env>,
    pub(crate) requirements: Option<Text>,
    pub(crate) rank: Option<Text>,
    pub(crate) request_cpus: u32,
    pub(crate) request_memory_mb: u64,
    pub(crate) request_disk_mb: u64,
    pub(crate) checkpoint_interval_secs: Option<u64>,
    /// How long the job is kept while its execute host is out of reach
    /// (`JobLease`).
    pub(crate) lease_secs: Option<u64>,
    /// Increments between full periodic images (`CheckpointFullEvery`).
    pub(crate) checkpoint_full_every: Option<u32>,
    /// Destinations the job's sockets may reach (`Network`), and whether
    /// it may listen (`NetworkListen`).
    pub(crate) network: Vec<String>,
    pub(crate) listen: bool,
    pub(crate) max_retries: u32,
    pub(crate) notification: Notification,
    pub(crate) attributes: Vec<(String, Attr)>,
    pub(crate) queue: Queue,
}

/// Parses a job description. `file` names the file in errors; `cwd` is the
/// directory a relative `initialdir` is resolved against, and the default
/// `initialdir`.
pub fn parse(file: &str, text: &str, cwd: &Path) -> Result<JobDescription, PolicyError> {
    let src = Source { file, text };
    let doc = ImDocument::parse(text).map_err(|e| PolicyError::Syntax {
        loc: src.loc(e.span().map_or(0, |s| s.start)),
        message: one_line(e.message()),
    })?;
    let root = table_entries(doc.as_table(), 0, text);
    let p = Parser { src: &src };
    let mut d = JobDescription::empty(file, cwd);
    let mut executable = None;
    for (key, key_at, node) in &root {
        let key = key.as_str();
        match key {
            "executable" => executable = Some(p.text(key, node)?),
            "arguments" => {
                d.arguments = Some(match &node.kind {
                    Kind::Str(_) => Args::Line(p.text(key, node)?),
                    Kind::Array(items) => Args::List(
                        items
                            .iter()
                            .enumerate()
                            .map(|(i, n)| p.text(&format!("{key}[{i}]"), n))
                            .collect::<Result<_, _>>()?,
                    ),
                    _ => {
                        return Err(p.bad(node, key, "expected a string or an array of strings"));
                    }
                })
            }
            "input" => d.input = Some(p.text(key, node)?),
            "output" => d.output = Some(p.text(key, node)?),
            "error" => d.error = Some(p.text(key, node)?),
            "log" => d.log = Some(p.text(key, node)?),
            "initialdir" => d.initialdir = Some(p.text(key, node)?),
            "environment" => d.environment = Some(p.environment(node)?),
            "transfer_executable" => match node.kind {
                Kind::Bool(b) => d.transfer_executable = Some(b),
                _ => return Err(p.bad(node, key, "expected true or false")),
            },
            "requirements" => d.requirements = Some(p.text(key, node)?),
            "rank" => d.rank = Some(p.text(key, node)?),
            "request_cpus" => {
                let n = p.int(key, node, 1, u32::MAX as i64, "an integer of at least 1")?;
                d.request_cpus = n as u32;
            }
            "request_memory" => d.request_memory_mb = p.size(key, node)?,
            "request_disk" => d.request_disk_mb = p.size(key, node)?,
            "checkpoint_interval" => d.checkpoint_interval_secs = Some(p.duration(key, node)?),
            "lease" => d.lease_secs = Some(p.duration(key, node)?),
            "checkpoint_full_every" => {
                let n = p.int(key, node, 0, u32::MAX as i64, "a non-negative integer")?;
                d.checkpoint_full_every = Some(n as u32);
            }
            "network" => {
                let Kind::Array(items) = &node.kind else {
                    return Err(p.bad(
                        node,
                        key,
                        "expected an array of \"host:port\" or \"a.b.c.d/len\" strings",
                    ));
                };
                for (i, n) in items.iter().enumerate() {
                    let k = format!("{key}[{i}]");
                    let t = p.text(&k, n)?;
                    if !network_entry_ok(&t.value) {
                        return Err(p.bad(
                            n,
                            &k,
                            "expected \"host:port\", \"host\", \"a.b.c.d/len\" or \"[v6]:port\"",
                        ));
                    }
                    d.network.push(t.value.clone());
                }
            }
            "listen" => match node.kind {
                Kind::Bool(b) => d.listen = b,
                _ => return Err(p.bad(node, key, "expected true or false")),
            },
            "max_retries" => {
                let n = p.int(key, node, 0, u32::MAX as i64, "a non-negative integer")?;
                d.max_retries = n as u32;
            }
            "notification" => {
                let t = p.text(key, node)?;
                d.notification = Notification::parse(&t.value).ok_or_else(|| {
                    p.bad(
                        node,
                        key,
                        "expected one of \"never\", \"always\", \"complete\", \"error\"",
                    )
                })?;
            }
            "attributes" => d.attributes = p.attributes(node)?,
            "queue" => d.queue = p.queue(node)?,
            _ => {
                return Err(PolicyError::UnknownKey {
                    loc: src.loc(*key_at),
                    key: key.to_string(),
                    expected: KEYS.join(", "),
                });
            }
        }
    }
    d.executable = executable.ok_or_else(|| PolicyError::MissingKey {
        file: file.to_string(),
        key: "executable".into(),
    })?;
    d.validate()?;
    Ok(d)
}

/// Parses a job description in the format its name says: an HTCondor
/// submit file for `.sub`, `.submit`, `.condor` and `.jdl`, TOML otherwise.
pub fn parse_any(file: &str, text: &str, cwd: &Path) -> Result<JobDescription, PolicyError> {
    let ext = Path::new(file)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("sub" | "submit" | "condor" | "jdl") => crate::submit::parse(file, text, cwd),
        _ => parse(file, text, cwd),
    }
}

/// A submitted job file as the schedd checks it before it stores
/// anything. `roost submit --dry-run` takes the same steps, so a bad file
/// gets the same message from both; a message is the error's one-line text.
#[derive(Debug, Clone)]
pub struct Submission(JobDescription);

impl Submission {
    /// Parses `text` by `file`'s name ([`parse_any`]); `cwd` is the
    /// submitter's directory, which must be absolute (the default
    /// `initialdir`).
    pub fn parse(file: &str, text: &str, cwd: &str) -> Result<Submission, String> {
        if !Path::new(cwd).is_absolute() {
            return Err(format!(
                "{file}: the submit directory `{cwd}` is not absolute"
            ));
        }
        parse_any(file, text, Path::new(cwd))
            .map(Submission)
            .map_err(|e| e.to_string())
    }

    /// The cluster's processes ([`JobDescription::expand_full`]); a file
    /// that queues none is refused.
    pub fn expand(&self, cluster: u64) -> Result<Vec<ProcessDescription>, String> {
        let procs = self.0.expand_full(cluster).map_err(|e| e.to_string())?;
        if procs.is_empty() {
            return Err(format!("{}: the description queues no job", self.0.file()));
        }
        Ok(procs)
    }

    pub fn description(&self) -> &JobDescription {
        &self.0
    }
}

impl JobDescription {
    /// A description with every default set and an empty executable; the
    /// parsers fill it in and call [`JobDescription::validate`].
    pub(crate) fn empty(file: &str, cwd: &Path) -> Self {
        let cwd = std::path::absolute(cwd).unwrap_or_else(|_| cwd.to_path_buf());
        JobDescription {
            file: file.to_string(),
            cwd: normalize(&cwd),
            executable: Text {
                value: String::new(),
                key: "executable".into(),
                loc: Loc {
                    file: file.to_string(),
                    line: 1,
                    col: 1,
                },
                body: None,
            },
            transfer_executable: None,
            arguments: None,
            input: None,
            output: None,
            error: None,
            log: None,
            initialdir: None,
            environment: None,
            requirements: None,
            rank: None,
            request_cpus: 1,
            request_memory_mb: DEFAULT_REQUEST_MEMORY_MB,
            request_disk_mb: DEFAULT_REQUEST_DISK_MB,
            checkpoint_interval_secs: None,
            lease_secs: None,
            checkpoint_full_every: None,
            network: Vec::new(),
            listen: false,
            max_retries: 0,
            notification: Notification::Never,
            attributes: Vec::new(),
            queue: Queue::Count(1),
        }
    }

    /// Expands every queue item once, so that `expand` cannot fail later.
    pub(crate) fn validate(&self) -> Result<(), PolicyError> {
        match &self.queue {
            Queue::Count(_) => {
                self.expand_one(0, 0, None)?;
            }
            Queue::Items(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.expand_one(0, i as u32, Some(item))?;
                }
            }
        }
        Ok(())
    }

    /// The file name given to `parse`.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// How many processes `expand` returns.
    pub fn process_count(&self) -> u64 {
        match &self.queue {
            Queue::Count(n) => *n,
            Queue::Items(items) => items.len() as u64,
        }
    }

    /// One JobSpec per queued process, `$(Cluster)`/`$(Process)` and item
    /// macros expanded.
    pub fn expand(&self, cluster: u64) -> Result<Vec<JobSpec>, PolicyError> {
        Ok(self
            .expand_full(cluster)?
            .into_iter()
            .map(|p| p.spec)
            .collect())
    }

    /// Like [`JobDescription::expand`], with the schedd's own settings of
    /// each process (user log, checkpoint interval, notification).
    pub fn expand_full(&self, cluster: u64) -> Result<Vec<ProcessDescription>, PolicyError> {
        match &self.queue {
            Queue::Count(n) => (0..*n)
                .map(|p| self.expand_one(cluster, p as u32, None))
                .collect(),
            Queue::Items(items) => items
                .iter()
                .enumerate()
                .map(|(p, item)| self.expand_one(cluster, p as u32, Some(item)))
                .collect(),
        }
    }

    fn expand_one(
        &self,
        cluster: u64,
        proc: u32,
        item: Option<&QueueItem>,
    ) -> Result<ProcessDescription, PolicyError> {
        let m = Macros::new(cluster, proc, item);
        let bad = |t: &Text, message: String| PolicyError::BadValue {
            loc: t.loc.clone(),
            key: t.key.clone(),
            message,
        };
        let nonempty = |t: &Text| -> Result<String, PolicyError> {
            let s = m.subst(t)?;
            if s.is_empty() {
                return Err(bad(t, "must not be empty".into()));
            }
            if s.contains('\0') {
                return Err(bad(t, "must not contain a NUL character".into()));
            }
            Ok(s)
        };

        let initialdir = match &self.initialdir {
            Some(t) => normalize(&self.cwd.join(nonempty(t)?)),
            None => self.cwd.clone(),
        };
        let Some(initialdir_str) = initialdir.to_str().map(str::to_string) else {
            return Err(PolicyError::BadValue {
                loc: self
                    .initialdir
                    .as_ref()
                    .map_or_else(|| self.executable.loc.clone(), |t| t.loc.clone()),
                key: "initialdir".into(),
                message: format!("{} is not valid UTF-8", initialdir.display()),
            });
        };

        let exe_t = &self.executable;
        let executable = nonempty(exe_t)?;
        let exe = Path::new(&executable);
        let inside = if exe.is_absolute() {
            normalize(exe).starts_with(&initialdir)
        } else {
            !escapes(exe)
        };
        let transfer_executable = match self.transfer_executable {
            Some(true) | None if !inside && !exe.is_absolute() => {
                return Err(bad(
                    exe_t,
                    format!("'{executable}' leaves initialdir '{initialdir_str}'"),
                ));
            }
            Some(true) if !inside => {
                return Err(bad(
                    exe_t,
                    format!(
                        "'{executable}' is outside initialdir '{initialdir_str}' and cannot be \
                         transferred; set transfer_executable = false to run it from the \
                         execute host"
                    ),
                ));
            }
            Some(false) if !exe.is_absolute() => {
                return Err(bad(
                    exe_t,
                    "must be an absolute path when transfer_executable = false".into(),
                ));
            }
            Some(t) => t,
            None => inside,
        };

        let std_path = |t: &Option<Text>| -> Result<Option<String>, PolicyError> {
            let Some(t) = t else { return Ok(None) };
            let s = nonempty(t)?;
            if s == "/dev/null" {
                return Ok(None);
            }
            let p = Path::new(&s);
            if p.is_absolute() {
                if !normalize(p).starts_with(&initialdir) {
                    return Err(bad(
                        t,
                        format!("'{s}' is outside initialdir '{initialdir_str}'"),
                    ));
                }
            } else if escapes(p) {
                return Err(bad(
                    t,
                    format!("'{s}' leaves initialdir '{initialdir_str}'"),
                ));
            }
            Ok(Some(s))
        };
        let input = std_path(&self.input)?;
        let output = std_path(&self.output)?;
        let error = std_path(&self.error)?;
        let log = match &self.log {
            Some(t) => {
                let p = normalize(&initialdir.join(nonempty(t)?));
                Some(p.to_string_lossy().into_owned())
            }
            None => None,
        };

        let arguments = match &self.arguments {
            None => Vec::new(),
            Some(Args::Line(t)) => {
                let s = m.subst(t)?;
                split_words(&s).map_err(|e| bad(t, e))?
            }
            Some(Args::List(ts)) => ts.iter().map(|t| m.subst(t)).collect::<Result<_, _>>()?,
            Some(Args::Submit(t)) => {
                let s = m.subst(t)?;
                crate::submit::condor_words(&s).map_err(|e| bad(t, e))?
            }
        };
        if arguments.iter().any(|a| a.contains('\0')) {
            let t = self.arguments_text().expect("arguments are set");
            return Err(bad(t, "must not contain a NUL character".into()));
        }

        let mut environment: Vec<(String, String)> = Vec::new();
        match &self.environment {
            None => {}
            Some(Env::Line(t) | Env::Submit(t)) => {
                let s = m.subst(t)?;
                let words = match &self.environment {
                    Some(Env::Submit(_)) => crate::submit::environment_words(&s),
                    _ => split_words(&s),
                };
                for word in words.map_err(|e| bad(t, e))? {
                    let Some((name, value)) = word.split_once('=') else {
                        return Err(bad(
                            t,
                            format!("'{word}' is not NAME=VALUE (expected e.g. \"A=1 B='x y'\")"),
                        ));
                    };
                    check_env_name(name).map_err(|e| bad(t, e))?;
                    if environment.iter().any(|(n, _)| n == name) {
                        return Err(bad(t, format!("variable {name} is set twice")));
                    }
                    environment.push((name.to_string(), value.to_string()));
                }
            }
            Some(Env::Table(vars)) => {
                for (name, t) in vars {
                    environment.push((name.clone(), m.subst(t)?));
                }
            }
        }
        if environment.iter().any(|(_, v)| v.contains('\0')) {
            let t = self.environment_text().expect("environment is set");
            return Err(bad(t, "must not contain a NUL character".into()));
        }

        let requirements = self.expression(&m, &self.requirements)?;
        let rank = self.expression(&m, &self.rank)?;

        let mut attributes = BTreeMap::new();
        for (name, a) in &self.attributes {
            let text = match a {
                Attr::Str(t) => quote_string(&m.subst(t)?),
                Attr::Literal(s) => s.clone(),
                Attr::Expr(t) => self.expression(&m, &Some(t.clone()))?.unwrap_or_default(),
            };
            attributes.insert(name.clone(), text);
        }
        // The job ad carries the interval, as HTCondor's does; the starter
        // takes periodic checkpoints from it.
        if let Some(secs) = self.checkpoint_interval_secs {
            attributes.insert("CheckpointInterval".to_string(), secs.to_string());
        }
        // The shadow and the starter keep the job this long when the link
        // between them is lost.
        if let Some(secs) = self.lease_secs {
            attributes.insert("JobLease".to_string(), secs.to_string());
        }
        // Periodic images are increments with a full image every N.
        if let Some(n) = self.checkpoint_full_every {
            attributes.insert("CheckpointFullEvery".to_string(), n.to_string());
        }
        // The shadow enforces these on the job's sockets.
        if !self.network.is_empty() {
            attributes.insert("Network".to_string(), quote_string(&self.network.join(",")));
        }
        if self.listen {
            attributes.insert("NetworkListen".to_string(), "true".to_string());
        }

        Ok(ProcessDescription {
            spec: JobSpec {
                executable,
                transfer_executable,
                arguments,
                input,
                output,
                error,
                initialdir: initialdir_str,
                environment,
                requirements,
                rank,
                request_cpus: self.request_cpus,
                request_memory_mb: self.request_memory_mb,
                request_disk_mb: self.request_disk_mb,
                max_retries: self.max_retries,
                attributes,
            },
            log,
            checkpoint_interval_secs: self.checkpoint_interval_secs,
            notification: self.notification,
        })
    }

    fn arguments_text(&self) -> Option<&Text> {
        match &self.arguments {
            Some(Args::Line(t) | Args::Submit(t)) => Some(t),
            Some(Args::List(ts)) => ts.first(),
            None => None,
        }
    }

    fn environment_text(&self) -> Option<&Text> {
        match &self.environment {
            Some(Env::Line(t) | Env::Submit(t)) => Some(t),
            Some(Env::Table(vars)) => vars.first().map(|(_, t)| t),
            None => None,
        }
    }

    /// Expands an expression-valued key; the text must be non-empty.
    fn expression(&self, m: &Macros, t: &Option<Text>) -> Result<Option<String>, PolicyError> {
        let Some(t) = t else { return Ok(None) };
        let s = m.subst(t)?;
        if s.trim().is_empty() {
            return Err(PolicyError::BadValue {
                loc: t.loc.clone(),
                key: t.key.clone(),
                message: "must not be empty".into(),
            });
        }
        if let Err(source) = crate::expr::parse(&s) {
            // Point at the offending character when the text is in the
            // file as written (no macro changed it, no escapes).
            let loc = match &t.body {
                Some(body) if s == t.value => Loc {
                    col: body.col + source.col - 1,
                    ..body.clone()
                },
                _ => t.loc.clone(),
            };
            return Err(PolicyError::BadExpression {
                loc,
                key: t.key.clone(),
                source,
            });
        }
        Ok(Some(s))
    }
}

/// The macros one process sees.
struct Macros<'a> {
    builtin: [(&'static str, String); 5],
    item: Option<&'a QueueItem>,
}

impl<'a> Macros<'a> {
    fn new(cluster: u64, proc: u32, item: Option<&'a QueueItem>) -> Self {
        let (c, p) = (cluster.to_string(), proc.to_string());
        let index = item.map_or_else(|| p.clone(), |i| i.index.to_string());
        Macros {
            builtin: [
                ("Cluster", c.clone()),
                ("ClusterId", c),
                ("Process", p.clone()),
                ("ProcId", p.clone()),
                ("ItemIndex", index),
            ],
            item,
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        let builtin = self.builtin.iter().map(|(n, v)| (*n, v.as_str()));
        let items = self
            .item
            .into_iter()
            .flat_map(|i| i.vars.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        builtin
            .chain(items)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn known(&self) -> String {
        let mut names: Vec<&str> = self.builtin.iter().map(|(n, _)| *n).collect();
        if let Some(i) = self.item {
            names.extend(i.vars.iter().map(|(n, _)| n.as_str()));
        }
        names.join(", ")
    }

    /// Replaces every `$(name)` in `t`.
    fn subst(&self, t: &Text) -> Result<String, PolicyError> {
        let s = &t.value;
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(i) = rest.find("$(") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else {
                return Err(PolicyError::BadValue {
                    loc: t.loc.clone(),
                    key: t.key.clone(),
                    message: format!("unterminated macro '{}' (expected $(name))", &rest[i..]),
                });
            };
            let name = &after[..end];
            match self.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    return Err(PolicyError::UnknownMacro {
                        loc: t.loc.clone(),
                        key: t.key.clone(),
                        name: name.to_string(),
                        known: self.known(),
                    });
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// A TOML value with its position (a byte offset into the file).
#[derive(Debug)]
struct Node {
    at: usize,
    /// Offset of the first character of a string's content, when the
    /// content maps one to one onto the file.
    body_at: Option<usize>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Vec<(String, usize, Node)>),
}

impl Node {
    fn describe(&self) -> String {
        match &self.kind {
            Kind::Str(s) => format!("string {s:?}"),
            Kind::Int(i) => format!("integer {i}"),
            Kind::Float(f) => format!("float {f}"),
            Kind::Bool(b) => format!("boolean {b}"),
            Kind::Datetime(d) => format!("datetime {d}"),
            Kind::Array(_) => "an array".into(),
            Kind::Table(_) => "a table".into(),
        }
    }
}

fn table_entries(t: &dyn TableLike, fallback: usize, raw: &str) -> Vec<(String, usize, Node)> {
    t.iter()
        .map(|(k, item)| {
            let key_at = t
                .get_key_value(k)
                .and_then(|(key, _)| key.span())
                .map_or(fallback, |s| s.start);
            (k.to_string(), key_at, item_node(item, key_at, raw))
        })
        .collect()
}

fn item_node(item: &Item, fallback: usize, raw: &str) -> Node {
    let at = item.span().map_or(fallback, |s| s.start);
    match item {
        Item::Value(v) => value_node(v, fallback, raw),
        Item::Table(t) => Node {
            at,
            body_at: None,
            kind: Kind::Table(table_entries(t, at, raw)),
        },
        Item::ArrayOfTables(a) => Node {
            at,
            body_at: None,
            kind: Kind::Array(
                a.iter()
                    .map(|t| {
                        let tat = t.span().map_or(at, |s| s.start);
                        Node {
                            at: tat,
                            body_at: None,
                            kind: Kind::Table(table_entries(t, tat, raw)),
                        }
                    })
                    .collect(),
            ),
        },
        Item::None => Node {
            at,
            body_at: None,
            kind: Kind::Table(Vec::new()),
        },
    }
}

fn value_node(v: &Value, fallback: usize, raw: &str) -> Node {
    let span = v.span();
    let at = span.as_ref().map_or(fallback, |s| s.start);
    let (kind, body_at) = match v {
        Value::String(s) => {
            let body_at = span.and_then(|sp| {
                let src = raw.get(sp.clone())?;
                let single =
                    !src.contains('\n') && !src.starts_with("'''") && !src.starts_with("\"\"\"");
                let exact = src.starts_with('\'') || (src.starts_with('"') && !src.contains('\\'));
                (single && exact).then_some(sp.start + 1)
            });
            (Kind::Str(s.value().clone()), body_at)
        }
        Value::Integer(i) => (Kind::Int(*i.value()), None),
        Value::Float(f) => (Kind::Float(*f.value()), None),
        Value::Boolean(b) => (Kind::Bool(*b.value()), None),
        Value::Datetime(d) => (Kind::Datetime(d.value().to_string()), None),
        Value::Array(a) => (
            Kind::Array(a.iter().map(|v| value_node(v, at, raw)).collect()),
            None,
        ),
        Value::InlineTable(t) => (Kind::Table(table_entries(t, at, raw)), None),
    };
    Node { at, body_at, kind }
}

struct Parser<'a> {
    src: &'a Source<'a>,
}

impl Parser<'_> {
    fn bad(&self, node: &Node, key: &str, expected: &str) -> PolicyError {
        PolicyError::BadValue {
            loc: self.src.loc(node.at),
            key: key.to_string(),
            message: format!("{expected}, found {}", node.describe()),
        }
    }

    fn text(&self, key: &str, node: &Node) -> Result<Text, PolicyError> {
        match &node.kind {
            Kind::Str(s) => Ok(Text {
                value: s.clone(),
                key: key.to_string(),
                loc: self.src.loc(node.at),
                body: node.body_at.map(|o| self.src.loc(o)),
            }),
            _ => Err(self.bad(node, key, "expected a string")),
        }
    }

    fn int(
        &self,
        key: &str,
        node: &Node,
        min: i64,
        max: i64,
        what: &str,
    ) -> Result<i64, PolicyError> {
        match node.kind {
            Kind::Int(i) if (min..=max).contains(&i) => Ok(i),
            _ => Err(self.bad(node, key, &format!("expected {what}"))),
        }
    }

    /// MiB, as an integer or a string with a unit ("2 GB", "512M").
    fn size(&self, key: &str, node: &Node) -> Result<u64, PolicyError> {
        const WHAT: &str = "expected MiB as an integer or a size like \"512 MB\" or \"2 GB\"";
        match &node.kind {
            Kind::Int(i) if *i >= 0 => Ok(*i as u64),
            Kind::Str(s) => parse_size_mb(s).ok_or_else(|| self.bad(node, key, WHAT)),
            _ => Err(self.bad(node, key, WHAT)),
        }
    }

    /// Seconds, as an integer or a string like "30m" or "1h30m".
    fn duration(&self, key: &str, node: &Node) -> Result<u64, PolicyError> {
        const WHAT: &str =
            "expected seconds as an integer or a duration like \"90s\", \"30m\" or \"1h30m\"";
        match &node.kind {
            Kind::Int(i) if *i >= 0 => Ok(*i as u64),
            Kind::Str(s) => parse_duration_secs(s).ok_or_else(|| self.bad(node, key, WHAT)),
            _ => Err(self.bad(node, key, WHAT)),
        }
    }

    fn environment(&self, node: &Node) -> Result<Env, PolicyError> {
        match &node.kind {
            Kind::Str(_) => Ok(Env::Line(self.text("environment", node)?)),
            Kind::Table(entries) => {
                let mut vars = Vec::new();
                for (name, name_at, value) in entries {
                    let key = format!("environment.{name}");
                    check_env_name(name).map_err(|message| PolicyError::BadValue {
                        loc: self.src.loc(*name_at),
                        key: key.clone(),
                        message,
                    })?;
                    let text = match &value.kind {
                        Kind::Str(_) => self.text(&key, value)?,
                        Kind::Int(i) => self.literal_text(&key, value, i.to_string()),
                        Kind::Bool(b) => self.literal_text(&key, value, b.to_string()),
                        _ => return Err(self.bad(value, &key, "expected a string")),
                    };
                    vars.push((name.clone(), text));
                }
                Ok(Env::Table(vars))
            }
            _ => Err(self.bad(
                node,
                "environment",
                "expected a table of NAME = \"value\" or a string \"A=1 B=2\"",
            )),
        }
    }

    fn literal_text(&self, key: &str, node: &Node, value: String) -> Text {
        Text {
            value,
            key: key.to_string(),
            loc: self.src.loc(node.at),
            body: None,
        }
    }

    fn attributes(&self, node: &Node) -> Result<Vec<(String, Attr)>, PolicyError> {
        let Kind::Table(entries) = &node.kind else {
            return Err(self.bad(node, "attributes", "expected a table"));
        };
        let mut out: Vec<(String, Attr)> = Vec::new();
        for (name, name_at, value) in entries {
            let key = format!("attributes.{name}");
            let name_err = |message: String| PolicyError::BadValue {
                loc: self.src.loc(*name_at),
                key: key.clone(),
                message,
            };
            check_attr_name(name).map_err(name_err)?;
            if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                return Err(name_err(format!(
                    "attribute {name} is defined twice (names ignore case)"
                )));
            }
            let attr = match &value.kind {
                Kind::Str(_) => Attr::Str(self.text(&key, value)?),
                Kind::Int(i) => Attr::Literal(i.to_string()),
                Kind::Float(f) if f.is_finite() => Attr::Literal(crate::expr::real_literal(*f)),
                Kind::Bool(b) => Attr::Literal(b.to_string()),
                _ => {
                    return Err(self.bad(
                        value,
                        &key,
                        "expected a string, a finite number or a boolean",
                    ));
                }
            };
            out.push((name.clone(), attr));
        }
        Ok(out)
    }

    fn queue(&self, node: &Node) -> Result<Queue, PolicyError> {
        const WHAT: &str = "expected a count (1 or more) or a list of strings or tables";
        match &node.kind {
            Kind::Int(n) if (1..=MAX_QUEUE as i64).contains(n) => Ok(Queue::Count(*n as u64)),
            Kind::Int(n) if *n > MAX_QUEUE as i64 => Err(self.bad(
                node,
                "queue",
                &format!("expected at most {MAX_QUEUE} processes"),
            )),
            Kind::Array(items) if items.is_empty() => {
                Err(self.bad(node, "queue", "expected at least one item"))
            }
            Kind::Array(items) => {
                let tables = matches!(items[0].kind, Kind::Table(_));
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let key = format!("queue[{i}]");
                    let vars = match (&item.kind, tables) {
                        (Kind::Str(s), false) => vec![("Item".to_string(), s.clone())],
                        (Kind::Table(entries), true) => {
                            let mut vars: Vec<(String, String)> = Vec::new();
                            for (name, name_at, v) in entries {
                                let vkey = format!("{key}.{name}");
                                let name_err = |message: String| PolicyError::BadValue {
                                    loc: self.src.loc(*name_at),
                                    key: vkey.clone(),
                                    message,
                                };
                                check_macro_name(name).map_err(name_err)?;
                                if vars.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                                    return Err(name_err(format!(
                                        "macro {name} is defined twice (names ignore case)"
                                    )));
                                }
                                let value = match &v.kind {
                                    Kind::Str(s) => s.clone(),
                                    Kind::Int(i) => i.to_string(),
                                    Kind::Float(f) => f.to_string(),
                                    Kind::Bool(b) => b.to_string(),
                                    _ => {
                                        return Err(self.bad(
                                            v,
                                            &vkey,
                                            "expected a string, number or boolean",
                                        ));
                                    }
                                };
                                vars.push((name.clone(), value));
                            }
                            vars
                        }
                        _ if tables => {
                            return Err(self.bad(
                                item,
                                &key,
                                "expected a table like the first item",
                            ));
                        }
                        _ => {
                            return Err(self.bad(
                                item,
                                &key,
                                "expected a string like the first item",
                            ));
                        }
                    };
                    out.push(QueueItem {
                        loc: self.src.loc(item.at),
                        index: out.len() as u64,
                        vars,
                    });
                }
                Ok(Queue::Items(out))
            }
            _ => Err(self.bad(node, "queue", WHAT)),
        }
    }
}

/// Joins a multi-line parser message into one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(format!(
            "'{name}' is not an environment variable name (expected no '=' and not empty)"
        ));
    }
    Ok(())
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Words an attribute may not be called, because they are literals or
/// operators of the expression language.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "undefined",
    "error",
    "is",
    "isnt",
    "my",
    "target",
    "parent",
];

pub(crate) fn check_attr_name(name: &str) -> Result<(), String> {
    if !is_identifier(name) {
        return Err(format!(
            "'{name}' is not an attribute name (expected letters, digits and '_', not starting with a digit)"
        ));
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(format!("'{name}' is a reserved word"));
    }
    Ok(())
}

pub(crate) fn check_macro_name(name: &str) -> Result<(), String> {
    if !is_identifier(name) {
        return Err(format!(
            "'{name}' is not a macro name (expected letters, digits and '_', not starting with a digit)"
        ));
    }
    if BUILTIN_MACROS.iter().any(|b| b.eq_ignore_ascii_case(name)) {
        return Err(format!("'{name}' is a built-in macro"));
    }
    Ok(())
}

/// A string as an expression-language string literal.
pub(crate) fn quote_string(s: &str) -> String {
    crate::expr::Value::Str(s.to_string()).to_string()
}

/// Splits a command line into words, shell-style: whitespace separates,
/// `'...'` is literal, `"..."` allows `\"` and `\\`, a backslash outside
/// quotes escapes the next character.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated ' quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated \" quote in {s:?}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated \" quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("trailing backslash in {s:?}")),
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
    Ok(words)
}

/// "2 GB", "512M", "1.5 GiB", "2048" (MiB) → MiB, rounded up.
pub fn parse_size_mb(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let kib_per_unit: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "k" | "kb" | "kib" => 1.0,
        "" | "m" | "mb" | "mib" => 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let mb = (n * kib_per_unit / 1024.0).ceil();
    (mb.is_finite() && mb < u64::MAX as f64).then_some(mb as u64)
}

/// "90", "90s", "30m", "1h30m", "2d" → seconds.
pub fn parse_duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        let n: u64 = num.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        num.clear();
    }
    num.is_empty().then_some(total)
}

/// Resolves `.` and `..` without touching the file system.
pub(crate) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => out.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                let last_is_parent =
                    matches!(out.components().next_back(), Some(Component::ParentDir));
                if out.as_os_str().is_empty() || last_is_parent {
                    out.push("..");
                } else {
                    out.pop();
                }
            }
            Component::Normal(x) => out.push(x),
        }
    }
    out
}

/// A relative path that climbs above its starting directory.
fn escapes(rel: &Path) -> bool {
    matches!(
        normalize(rel).components().next(),
        Some(Component::ParentDir)
    )
}

#[cfg(test)]
mod tests;
