//! Command-line support shared by roost's programs.
//!
//! - `--config FILE` for the daemons ([`parse_daemon`]): a TOML file whose
//!   keys are the daemon's long flags in snake case (`cycle_secs = 2`
//!   for `--cycle-secs 2`). The file's settings are put on the command line
//!   *before* the real arguments and the command lets a later occurrence
//!   of a flag override an earlier one, so a flag beats the file and the
//!   file beats the built-in default, with clap doing every check of every
//!   value exactly as for a flag.
//! - The documented default config of a daemon ([`default_config`]) and the
//!   check that a shipped file says what the built-in defaults are
//!   ([`check_shipped`]), so the shipped files cannot drift.
//! - Man pages ([`man_pages`]) and shell completions ([`completions`])
//!   generated from the clap definitions. A daemon answers the hidden
//!   first argument [`PRINT_MAN`] with its man page on stdout, which is how
//!   `roost man` collects the daemons' pages.
//!
//! Flags under the help heading [`NOT_CONFIG`] (one-off commands such as
//! `roost-ownerd --check-policy`) are not config keys.
#![forbid(unsafe_code)]

use clap::{ArgAction, Command, Parser};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The hidden first argument that makes a daemon print its man page.
pub const PRINT_MAN: &str = "--print-man-page";
/// Help heading of flags that are not settings and so not config keys.
pub const NOT_CONFIG: &str = "One-off commands";

/// What can be wrong with a `--config` file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: unknown key '{key}' (expected one of: {expected})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        expected: String,
    },
    #[error("{path}: key '{key}': expected {expected}")]
    BadValue {
        path: PathBuf,
        key: String,
        expected: &'static str,
    },
    #[error("{path}: key '{key}': {message}")]
    BadFlagValue {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("--config needs a file name")]
    NoPath,
}

/// How a config key is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A flag without a value (`--log-json`): `key = true` sets it.
    Switch,
    /// A flag with a value.
    Value,
}

/// One setting a config file may hold.
#[derive(Debug, Clone)]
pub struct Key {
    /// The key in the file: the long flag in snake case.
    pub key: String,
    /// The long flag, without dashes.
    pub long: String,
    pub kind: Kind,
    /// The built-in default, as clap writes it; `None` when there is none.
    pub default: Option<String>,
    /// The flag's help text.
    pub help: String,
    /// The flag must be given (here or in the file).
    pub required: bool,
}

/// The settings of `cmd` that a config file may hold, in the order of its
/// flags.
pub fn config_keys(cmd: &Command) -> Vec<Key> {
    let mut cmd = cmd.clone();
    cmd.build();
    cmd.get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version" | "config"))
        .filter(|a| a.get_help_heading() != Some(NOT_CONFIG) && !a.is_hide_set())
        .filter_map(|a| {
            let long = a.get_long()?.to_string();
            let kind = match a.get_action() {
                ArgAction::SetTrue => Kind::Switch,
                _ => Kind::Value,
            };
            let default = match a.get_default_values() {
                [] if kind == Kind::Switch => Some("false".to_string()),
                [] => None,
                vs => Some(
                    vs.iter()
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            };
            Some(Key {
                key: long.replace('-', "_"),
                long,
                kind,
                default,
                help: a
                    .get_long_help()
                    .or(a.get_help())
                    .map(|h| h.to_string())
                    .unwrap_or_default(),
                required: a.is_required_set(),
            })
        })
        .collect()
}

/// The value of `--config FILE` / `--config=FILE` in `argv` (after the
/// program name), if any.
fn config_path(argv: &[OsString]) -> Result<Option<PathBuf>, ConfigError> {
    let mut it = argv.iter().skip(1);
    let mut found = None;
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            found = Some(PathBuf::from(it.next().ok_or(ConfigError::NoPath)?));
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            found = Some(PathBuf::from(v));
        }
    }
    Ok(found)
}

/// A TOML value as a flag's value text.
fn value_text(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The flags a config file's text stands for, in the file's key order.
pub fn config_args(cmd: &Command, path: &Path, text: &str) -> Result<Vec<OsString>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
    let keys = config_keys(cmd);
    let mut args = Vec::new();
    for (k, v) in &table {
        let Some(key) = keys.iter().find(|x| x.key == *k || x.long == *k) else {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: k.clone(),
                expected: keys
                    .iter()
                    .map(|x| x.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        match key.kind {
            Kind::Switch => match v {
                toml::Value::Boolean(true) => args.push(format!("--{}", key.long).into()),
                toml::Value::Boolean(false) => {}
                _ => {
                    return Err(ConfigError::BadValue {
                        path: path.to_path_buf(),
                        key: k.clone(),
                        expected: "true or false",
                    });
                }
            },
            Kind::Value => {
                let text = value_text(v).ok_or_else(|| ConfigError::BadValue {
                    path: path.to_path_buf(),
                    key: k.clone(),
                    expected: "a string, a number or a boolean",
                })?;
                args.push(format!("--{}={text}", key.long).into());
            }
        }
    }
    Ok(args)
}

/// `argv` with the settings of its `--config FILE` (if any) put before the
/// real arguments, so that the real ones win.
pub fn merge_config(cmd: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    Ok(merge(cmd, argv)?.0)
}

/// A config file and the flags it stands for.
type FromFile = (PathBuf, Vec<OsString>);

/// [`merge_config`], and the config file with the flags it stood for.
fn merge(
    cmd: &Command,
    argv: Vec<OsString>,
) -> Result<(Vec<OsString>, Option<FromFile>), ConfigError> {
    let Some(path) = config_path(&argv)? else {
        return Ok((argv, None));
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let from_file = config_args(cmd, &path, &text)?;
    let mut out = Vec::with_capacity(argv.len() + from_file.len());
    let mut it = argv.into_iter();
    out.extend(it.next());
    out.extend(from_file.iter().cloned());
    out.extend(it);
    Ok((out, Some((path, from_file))))
}

/// The file's setting whose value clap refuses, as an error naming the
/// file and the key (clap's own message would name only the flag).
fn bad_file_value(cmd: &Command, path: &Path, from_file: &[OsString]) -> Option<ConfigError> {
    use clap::error::ErrorKind;
    let prog = OsString::from(cmd.get_name());
    from_file.iter().find_map(|arg| {
        let e = cmd
            .clone()
            .try_get_matches_from([prog.clone(), arg.clone()])
            .err()?;
        if !matches!(
            e.kind(),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation
        ) {
            return None;
        }
        let flag = arg.to_string_lossy();
        let key = flag
            .trim_start_matches("--")
            .split('=')
            .next()
            .unwrap_or_default()
            .replace('-', "_");
        let message = e
            .render()
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string();
        Some(ConfigError::BadFlagValue {
            path: path.to_path_buf(),
            key,
            message,
        })
    })
}

/// Parses a daemon's command line from `argv`, `--config FILE` included.
pub fn try_parse_daemon_from<A: Parser>(argv: Vec<OsString>) -> Result<A, DaemonArgsError> {
    let cmd = A::command().args_override_self(true);
    let (argv, file) = merge(&cmd, argv).map_err(DaemonArgsError::Config)?;
    let m = cmd.clone().try_get_matches_from(argv).map_err(|e| {
        file.as_ref()
            .and_then(|(path, from_file)| bad_file_value(&cmd, path, from_file))
            .map_or(DaemonArgsError::Clap(e), DaemonArgsError::Config)
    })?;
    A::from_arg_matches(&m).map_err(DaemonArgsError::Clap)
}

/// Why a daemon's command line was refused.
#[derive(Debug, thiserror::Error)]
pub enum DaemonArgsError {
    #[error(transparent)]
    Config(ConfigError),
    #[error(transparent)]
    Clap(clap::Error),
}

/// Parses the daemon's own command line (see [`try_parse_daemon_from`]);
/// prints the man page for [`PRINT_MAN`]; on an error prints it and exits
/// as clap does (status 2; 0 for `--help` and `--version`).
pub fn parse_daemon<A: Parser>() -> A {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == PRINT_MAN) {
        let mut out = std::io::stdout().lock();
        let r = clap_mangen::Man::new(A::command()).render(&mut out);
        std::process::exit(i32::from(r.is_err()));
    }
    match try_parse_daemon_from::<A>(argv) {
        Ok(a) => a,
        Err(DaemonArgsError::Clap(e)) => e.exit(),
        Err(DaemonArgsError::Config(e)) => {
            let mut msg = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                msg.push_str(&format!(": {c}"));
                cur = c.source();
            }
            eprintln!("{}: {msg}", A::command().get_name());
            std::process::exit(2);
        }
    }
}

/// A default as a TOML value: numbers and booleans as themselves, the rest
/// as strings.
fn toml_literal(s: &str) -> String {
    if s == "true" || s == "false" || s.parse::<i64>().is_ok() {
        return s.to_string();
    }
    if s.parse::<f64>().is_ok_and(f64::is_finite) && !s.starts_with('.') {
        return s.to_string();
    }
    toml::Value::String(s.to_string()).to_string()
}

/// The documented config file of `cmd`: every key with its help text and
/// its built-in default; keys without a default are commented out.
pub fn default_config(cmd: &Command) -> String {
    let name = cmd.get_name().to_string();
    let mut out = format!(
        "# {name} --config FILE: every setting with its built-in default.\n\
         # A key is a long flag in snake case; a flag on the command line wins over\n\
         # this file, and this file over the built-in default. Keys that are\n\
         # commented out have no default.\n"
    );
    for k in config_keys(cmd) {
        out.push('\n');
        for line in k.help.lines() {
            for wrapped in wrap(line, 76) {
                out.push_str(format!("# {wrapped}").trim_end());
                out.push('\n');
            }
        }
        match &k.default {
            Some(d) => out.push_str(&format!("{} = {}\n", k.key, toml_literal(d))),
            None if k.required => out.push_str(&format!("# {} = ...   (required)\n", k.key)),
            None => out.push_str(&format!("# {} = ...   (no default)\n", k.key)),
        }
    }
    out
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Checks that a shipped config file `text` sets exactly the keys of `cmd`
/// that have a default, each to that default, and names every other key in
/// a comment line `# key = `. Returns what is wrong, one line each.
pub fn check_shipped(cmd: &Command, text: &str) -> Result<(), String> {
    let table: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let keys = config_keys(cmd);
    let mut wrong = Vec::new();
    for (k, v) in &table {
        let Some(key) = keys.iter().find(|x| x.key == *k) else {
            wrong.push(format!("`{k}` is not a setting"));
            continue;
        };
        let got = value_text(v).unwrap_or_else(|| v.to_string());
        match &key.default {
            Some(d) if same_value(d, &got) => {}
            Some(d) => wrong.push(format!("`{k}` is {got} in the file but {d} built in")),
            None => wrong.push(format!("`{k}` has no built-in default; comment it out")),
        }
    }
    for key in &keys {
        match &key.default {
            Some(d) if !table.contains_key(&key.key) => {
                wrong.push(format!("`{}` (default {d}) is missing", key.key))
            }
            None if !text
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("# {} =", key.key))) =>
            {
                wrong.push(format!(
                    "`{}` is not mentioned (`# {} = ...`)",
                    key.key, key.key
                ))
            }
            _ => {}
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("\n"))
    }
}

fn same_value(a: &str, b: &str) -> bool {
    a == b || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if x == y)
}

/// Writes `cmd`'s man page and one per subcommand (`roost-submit.1`, …)
/// into `dir`; returns the files written.
pub fn man_pages(cmd: Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(cmd: Command, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        out.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub.clone(), dir, out)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    // Building names each subcommand's page `roost-pool-init` and so on.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, dir, &mut out)?;
    Ok(out)
}

/// The completion script of `cmd` for `shell`.
pub fn completions(cmd: &mut Command, shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, cmd, name, out);
}

pub use clap_complete::Shell;

/// Where the shipped config files are: `dist/config/` of the workspace.
pub fn shipped_config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/config")
}

/// For a daemon's tests: panics unless `dist/config/NAME.toml` (NAME is
/// the command's name) sets every built-in default of `A` and names every
/// other key (see [`check_shipped`]); prints the file it should be.
pub fn assert_shipped<A: Parser>() {
    let cmd = A::command();
    let path = shipped_config_dir().join(format!("{}.toml", cmd.get_name()));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    if let Err(wrong) = check_shipped(&cmd, &text) {
        panic!(
            "{} does not say what {} does:\n{wrong}\n\nit could be:\n{}",
            path.display(),
            cmd.get_name(),
            default_config(&cmd)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// A daemon's flags, as the daemons write them.
    #[derive(Debug, Parser)]
    #[command(name = "food", version)]
    struct Args {
        /// Read settings from this TOML file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Name.
        #[arg(long)]
        name: String,
        /// Seconds.
        #[arg(long, default_value_t = 2.0)]
        cycle_secs: f64,
        /// Devices.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        devices: bool,
        /// JSON logs.
        #[arg(long)]
        log_json: bool,
        /// An address.
        #[arg(long)]
        advertise: Option<String>,
        /// Check and exit.
        #[arg(long, help_heading = NOT_CONFIG)]
        check: bool,
    }

    fn parse(file: &str, args: &[&str]) -> Result<Args, DaemonArgsError> {
        let d = std::env::temp_dir().join(format!("cliutil-{}-{}", std::process::id(), file.len()));
        std::fs::write(&d, file).unwrap();
        let mut argv: Vec<OsString> = vec!["food".into(), "--config".into(), d.clone().into()];
        argv.extend(args.iter().map(OsString::from));
        let r = try_parse_daemon_from::<Args>(argv);
        std::fs::remove_file(&d).unwrap();
        r
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let a = parse(
            "name = \"a\"\ncycle_secs = 5\ndevices = false\nlog_json = true\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            (a.name.as_str(), a.cycle_secs, a.devices, a.log_json),
            ("a", 5.0, false, true)
        );
        let a = parse(
            "name = \"a\"\ncycle_secs = 5\n",
            &["--name", "b", "--cycle-secs", "7"],
        )
        .unwrap();
        assert_eq!((a.name.as_str(), a.cycle_secs, a.devices), ("b", 7.0, true));
        // A required flag may come from the file only.
        assert!(parse("", &[]).is_err());
    }

    #[test]
    fn bad_files_name_the_file_and_key() {
        let e = parse("nmae = \"a\"\n", &[]).err().unwrap().to_string();
        assert!(e.contains("unknown key 'nmae' (expected one of: name, cycle_secs, devices, log_json, advertise)"), "{e}");
        let e = parse("name = \"a\"\ncycle_secs = \"soon\"\n", &[])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.ends_with(
                "key 'cycle_secs': invalid value 'soon' for '--cycle-secs <CYCLE_SECS>': \
                 invalid float literal"
            ),
            "{e}"
        );
        // The same value as a flag is clap's own error.
        let e = parse("name = \"a\"\n", &["--cycle-secs", "soon"])
            .err()
            .unwrap();
        assert!(matches!(e, DaemonArgsError::Clap(_)), "{e}");
        let e = parse("name = [1]\n", &[]).err().unwrap().to_string();
        assert!(
            e.ends_with("key 'name': expected a string, a number or a boolean"),
            "{e}"
        );
        let e = parse("name = \n", &[]).err().unwrap().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn the_default_config_round_trips() {
        let cmd = Args::command();
        let text = default_config(&cmd);
        assert!(text.contains("cycle_secs = 2\n"), "{text}");
        assert!(text.contains("# name = ...   (required)\n"), "{text}");
        assert!(!text.contains("check"), "{text}");
        check_shipped(&cmd, &text).unwrap();
        let drifted = text.replace("cycle_secs = 2\n", "cycle_secs = 3\n");
        assert_eq!(
            check_shipped(&cmd, &drifted).unwrap_err(),
            "`cycle_secs` is 3 in the file but 2 built in"
        );
        let missing = text.replace("# advertise = ...   (no default)\n", "");
        assert!(
            check_shipped(&cmd, &missing)
                .unwrap_err()
                .contains("`advertise` is not mentioned")
        );
    }

    #[test]
    fn man_pages_and_completions_are_generated() {
        let d = std::env::temp_dir().join(format!("cliutil-man-{}", std::process::id()));
        let files = man_pages(Args::command(), &d).unwrap();
        assert_eq!(files, [d.join("food.1")]);
        let page = std::fs::read_to_string(&files[0]).unwrap();
        assert!(page.contains("cycle\\-secs"), "{page}");
        std::fs::remove_dir_all(&d).unwrap();
        let mut out = Vec::new();
        completions(&mut Args::command(), Shell::Bash, &mut out);
        assert!(String::from_utf8(out).unwrap().contains("--cycle-secs"));
    }
}
