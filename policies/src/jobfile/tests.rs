//! Job files that parse (and what they expand to) and job files that do not
//! (and the exact message the user sees).

use super::*;

const CWD: &str = "/home/alice/work";

fn expand(text: &str, cluster: u64) -> Vec<ProcessDescription> {
    let d = parse("job.toml", text, Path::new(CWD))
        .unwrap_or_else(|e| panic!("{text}\nshould parse, got: {e}"));
    d.expand_full(cluster).expect("a parsed file expands")
}

fn one(text: &str) -> JobSpec {
    let mut v = expand(text, 1);
    assert_eq!(v.len(), 1, "{text}");
    v.remove(0).spec
}

fn err(text: &str) -> String {
    match parse("job.toml", text, Path::new(CWD)) {
        Ok(d) => panic!("{text}\nshould fail, parsed as {d:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn minimal_file_gets_defaults() {
    let s = one("executable = \"analyze\"\n");
    assert_eq!(
        s,
        JobSpec {
            executable: "analyze".into(),
            transfer_executable: true,
            arguments: vec![],
            input: None,
            output: None,
            error: None,
            initialdir: CWD.into(),
            environment: vec![],
            requirements: None,
            rank: None,
            request_cpus: 1,
            request_memory_mb: DEFAULT_REQUEST_MEMORY_MB,
            request_disk_mb: DEFAULT_REQUEST_DISK_MB,
            max_retries: 0,
            attributes: BTreeMap::new(),
        }
    );
}

#[test]
fn full_file_expands_every_key() {
    let text = r#"
executable = "bin/sim"
arguments = "--seed $(Process) --name 'run $(Cluster)'"
input = "in/$(Process).dat"
output = "out.$(Cluster).$(Process)"
error = "err.$(Process)"
log = "logs/sim.log"
initialdir = "project"
environment = { OMP_NUM_THREADS = "2", RUN = "$(Cluster).$(Process)", DEBUG = 1 }
transfer_executable = true
requirements = 'Memory >= 2048 && OpSys == "LINUX"'
rank = "KFlops"
request_cpus = 2
request_memory = "2 GB"
request_disk = 4096
checkpoint_interval = "30m"
max_retries = 3
notification = "Complete"
queue = 2

[attributes]
Project = "physics \"A\""
Priority = 5
Weight = 1.5
Urgent = true
"#;
    let procs = expand(text, 42);
    assert_eq!(procs.len(), 2);
    let p = &procs[1];
    let s = &p.spec;
    assert_eq!(s.executable, "bin/sim");
    assert!(s.transfer_executable);
    assert_eq!(s.arguments, ["--seed", "1", "--name", "run 42"]);
    assert_eq!(s.input.as_deref(), Some("in/1.dat"));
    assert_eq!(s.output.as_deref(), Some("out.42.1"));
    assert_eq!(s.error.as_deref(), Some("err.1"));
    assert_eq!(s.initialdir, "/home/alice/work/project");
    assert_eq!(
        s.environment,
        [
            ("OMP_NUM_THREADS".to_string(), "2".to_string()),
            ("RUN".into(), "42.1".into()),
            ("DEBUG".into(), "1".into())
        ]
    );
    assert_eq!(
        s.requirements.as_deref(),
        Some(r#"Memory >= 2048 && OpSys == "LINUX""#)
    );
    assert_eq!(s.rank.as_deref(), Some("KFlops"));
    assert_eq!(s.request_cpus, 2);
    assert_eq!(s.request_memory_mb, 2048);
    assert_eq!(s.request_disk_mb, 4096);
    assert_eq!(s.max_retries, 3);
    let attrs: Vec<(&str, &str)> = s
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        attrs,
        [
            ("CheckpointInterval", "1800"),
            ("Priority", "5"),
            ("Project", r#""physics \"A\"""#),
            ("Urgent", "true"),
            ("Weight", "1.5"),
        ]
    );
    assert_eq!(
        p.log.as_deref(),
        Some("/home/alice/work/project/logs/sim.log")
    );
    assert_eq!(p.checkpoint_interval_secs, Some(1800));
    assert_eq!(p.notification, Notification::Complete);
    assert_eq!(procs[0].spec.arguments, ["--seed", "0", "--name", "run 42"]);
}

#[test]
fn good_values_table() {
    // (file body after `executable = "a"`, what to look at, expected)
    type Check = fn(&JobSpec) -> String;
    let cases: &[(&str, Check, &str)] = &[
        (
            r#"arguments = "a 'b c' \"d \\\" e\" f\\ g ''""#,
            |s| format!("{:?}", s.arguments),
            r#"["a", "b c", "d \" e", "f g", ""]"#,
        ),
        (
            r#"arguments = ["x y", "$(Process)", ""]"#,
            |s| format!("{:?}", s.arguments),
            r#"["x y", "0", ""]"#,
        ),
        (
            r#"arguments = "  ""#,
            |s| format!("{:?}", s.arguments),
            "[]",
        ),
        (
            r#"environment = "A=1 B='x y' C= D=a=b""#,
            |s| format!("{:?}", s.environment),
            r#"[("A", "1"), ("B", "x y"), ("C", ""), ("D", "a=b")]"#,
        ),
        (
            "environment.PATH = \"/usr/bin\"",
            |s| format!("{:?}", s.environment),
            r#"[("PATH", "/usr/bin")]"#,
        ),
        (
            "request_memory = \"512M\"",
            |s| s.request_memory_mb.to_string(),
            "512",
        ),
        (
            "request_memory = \"1.5 GiB\"",
            |s| s.request_memory_mb.to_string(),
            "1536",
        ),
        (
            "request_memory = \"100 KB\"",
            |s| s.request_memory_mb.to_string(),
            "1",
        ),
        (
            "request_memory = \"3000\"",
            |s| s.request_memory_mb.to_string(),
            "3000",
        ),
        (
            "request_memory = 0",
            |s| s.request_memory_mb.to_string(),
            "0",
        ),
        (
            "request_disk = \"1 TB\"",
            |s| s.request_disk_mb.to_string(),
            "1048576",
        ),
        (
            "initialdir = \"/data/run\"",
            |s| s.initialdir.clone(),
            "/data/run",
        ),
        (
            "initialdir = \"../other/./x\"",
            |s| s.initialdir.clone(),
            "/home/alice/other/x",
        ),
        (
            "initialdir = \"run_$(Process)\"",
            |s| s.initialdir.clone(),
            "/home/alice/work/run_0",
        ),
        (
            "input = \"/dev/null\"",
            |s| format!("{:?}", s.input),
            "None",
        ),
        (
            "input = \"/home/alice/work/d/in\"",
            |s| format!("{:?}", s.input),
            "Some(\"/home/alice/work/d/in\")",
        ),
        (
            "input = \"d/../in\"",
            |s| format!("{:?}", s.input),
            "Some(\"d/../in\")",
        ),
        (
            "output = \"o.$(process).$(CLUSTER)\"",
            |s| format!("{:?}", s.output),
            "Some(\"o.0.1\")",
        ),
        (
            "output = \"cost$5 $x\"",
            |s| format!("{:?}", s.output),
            "Some(\"cost$5 $x\")",
        ),
        ("max_retries = 0", |s| s.max_retries.to_string(), "0"),
        (
            "transfer_executable = false\nexecutable = \"/opt/a\"",
            |s| format!("{} {}", s.executable, s.transfer_executable),
            "/opt/a false",
        ),
        (
            "requirements = \"TARGET.Cpus > $(Process)\"",
            |s| format!("{:?}", s.requirements),
            "Some(\"TARGET.Cpus > 0\")",
        ),
        (
            "attributes.Tag = \"job $(Process)\"",
            |s| format!("{:?}", s.attributes),
            r#"{"Tag": "\"job 0\""}"#,
        ),
        (
            "attributes.Big = 1e300",
            |s| format!("{:?}", s.attributes),
            r#"{"Big": "1e300"}"#,
        ),
        (
            "attributes.W = 2.0",
            |s| format!("{:?}", s.attributes),
            r#"{"W": "2.0"}"#,
        ),
    ];
    for (body, check, want) in cases {
        // `executable` may be overridden by the body (TOML forbids repeats,
        // so it is added only when the body lacks it).
        let text = if body.contains("executable = \"/") {
            body.to_string()
        } else {
            format!("executable = \"a\"\n{body}\n")
        };
        let s = one(&text);
        assert_eq!(check(&s), *want, "for {body}");
    }
}

#[test]
fn executable_outside_initialdir_is_not_transferred_by_default() {
    let s = one("executable = \"/usr/bin/sort\"\n");
    assert!(!s.transfer_executable);
    let s = one("executable = \"/home/alice/work/bin/x\"\n");
    assert!(s.transfer_executable);
    let s = one("executable = \"./x\"\n");
    assert!(s.transfer_executable);
}

#[test]
fn durations_and_notifications() {
    let get = |body: &str| expand(&format!("executable = \"a\"\n{body}\n"), 0).remove(0);
    assert_eq!(
        get("checkpoint_interval = 600").checkpoint_interval_secs,
        Some(600)
    );
    assert_eq!(
        get("checkpoint_interval = \"1h30m\"").checkpoint_interval_secs,
        Some(5400)
    );
    assert_eq!(
        get("checkpoint_interval = \"90s\"").checkpoint_interval_secs,
        Some(90)
    );
    assert_eq!(
        get("checkpoint_interval = \"2d\"").checkpoint_interval_secs,
        Some(172800)
    );
    let lease = get("lease = \"90s\"");
    assert_eq!(
        lease.spec.attributes.get("JobLease").map(String::as_str),
        Some("90")
    );
    assert!(!get("").spec.attributes.contains_key("JobLease"));
    assert_eq!(get("").checkpoint_interval_secs, None);
    let full_every = |body: &str| {
        get(body)
            .spec
            .attributes
            .get("CheckpointFullEvery")
            .cloned()
    };
    assert_eq!(full_every("checkpoint_full_every = 3"), Some("3".into()));
    assert_eq!(full_every(""), None);
    assert_eq!(get("").notification, Notification::Never);
    assert_eq!(
        get("notification = \"ERROR\"").notification,
        Notification::Error
    );
    assert_eq!(
        get("log = \"/var/log/x.log\"").log.as_deref(),
        Some("/var/log/x.log")
    );
}

#[test]
fn queue_count_numbers_processes() {
    let procs = expand(
        "executable = \"a\"\noutput = \"out.$(Process)\"\nqueue = 3\n",
        9,
    );
    let outs: Vec<_> = procs
        .iter()
        .map(|p| p.spec.output.clone().unwrap())
        .collect();
    assert_eq!(outs, ["out.0", "out.1", "out.2"]);
    let d = parse(
        "job.toml",
        "executable = \"a\"\nqueue = 3\n",
        Path::new(CWD),
    )
    .unwrap();
    assert_eq!(d.process_count(), 3);
    assert_eq!(d.expand(5).unwrap().len(), 3);
}

#[test]
fn queue_list_of_strings_defines_item() {
    let procs = expand(
        "executable = \"a\"\narguments = \"$(Item) $(ItemIndex)\"\nqueue = [\"x.csv\", \"y y.csv\"]\n",
        1,
    );
    let args: Vec<_> = procs.iter().map(|p| p.spec.arguments.clone()).collect();
    assert_eq!(args, [vec!["x.csv", "0"], vec!["y", "y.csv", "1"]]);
}

#[test]
fn queue_list_of_tables_defines_each_key() {
    let text = r#"
executable = "a"
arguments = ["$(name)", "$(SIZE)", "$(Process)"]
queue = [ { name = "small", size = 10 }, { name = "big", size = 1000 } ]
"#;
    let procs = expand(text, 1);
    let args: Vec<_> = procs.iter().map(|p| p.spec.arguments.clone()).collect();
    assert_eq!(args, [vec!["small", "10", "0"], vec!["big", "1000", "1"]]);

    let text = "executable = \"a\"\narguments = \"$(n)\"\n[[queue]]\nn = \"one\"\n[[queue]]\nn = \"two\"\n";
    let procs = expand(text, 1);
    let args: Vec<_> = procs.iter().map(|p| p.spec.arguments.clone()).collect();
    assert_eq!(args, [vec!["one"], vec!["two"]]);
}

#[test]
fn network_list_and_listen_become_attributes() {
    let s = one(
        "executable = \"a\"\nnetwork = [\"db.example:5432\", \"10.0.0.0/8\", \"[::1]:80\"]\nlisten = true\n",
    );
    assert_eq!(
        s.attributes.get("Network").map(String::as_str),
        Some("\"db.example:5432,10.0.0.0/8,[::1]:80\"")
    );
    assert_eq!(
        s.attributes.get("NetworkListen").map(String::as_str),
        Some("true")
    );
    let s = one("executable = \"a\"\n");
    assert!(!s.attributes.contains_key("Network") && !s.attributes.contains_key("NetworkListen"));
    let e = err("executable = \"a\"\nnetwork = [\"db:x\"]\n");
    assert!(e.contains("network[0]") && e.contains("host:port"), "{e}");
    let e = err("executable = \"a\"\nnetwork = \"db:5432\"\n");
    assert!(e.contains("network") && e.contains("array"), "{e}");
    let e = err("executable = \"a\"\nlisten = \"yes\"\n");
    assert!(e.contains("listen") && e.contains("true or false"), "{e}");
}

#[test]
fn relative_cwd_is_made_absolute() {
    let d = parse("job.toml", "executable = \"a\"\n", Path::new("sub")).unwrap();
    let s = d.expand(1).unwrap().remove(0);
    assert!(Path::new(&s.initialdir).is_absolute(), "{}", s.initialdir);
    assert!(s.initialdir.ends_with("/sub"), "{}", s.initialdir);
}

const ALL_KEYS: &str = "executable, arguments, input, output, error, log, initialdir, \
    environment, transfer_executable, requirements, rank, request_cpus, request_memory, \
    request_disk, checkpoint_interval, checkpoint_full_every, lease, network, listen, \
    max_retries, notification, attributes, queue";

#[test]
fn bad_files_name_file_line_and_key() {
    let builtin = "Cluster, ClusterId, Process, ProcId, ItemIndex";
    let cases: Vec<(&str, String)> = vec![
        (
            "executable = \"a\"\n# a comment\nexectuable = \"b\"\n",
            format!("job.toml:3:1: unknown key 'exectuable' (expected one of: {ALL_KEYS})"),
        ),
        (
            "executable = \"a\"\n\n[foo]\nx = 1\n",
            format!("job.toml:3:2: unknown key 'foo' (expected one of: {ALL_KEYS})"),
        ),
        (
            "arguments = \"x\"\n",
            "job.toml: missing required key 'executable'".into(),
        ),
        (
            "executable = \"a\"\nrequest_cpus = \"two\"\n",
            "job.toml:2:16: key 'request_cpus': expected an integer of at least 1, found string \"two\"".into(),
        ),
        (
            "executable = \"a\"\nrequest_cpus = 0\n",
            "job.toml:2:16: key 'request_cpus': expected an integer of at least 1, found integer 0".into(),
        ),
        (
            "executable = 5\n",
            "job.toml:1:14: key 'executable': expected a string, found integer 5".into(),
        ),
        (
            "executable = \"\"\n",
            "job.toml:1:14: key 'executable': must not be empty".into(),
        ),
        (
            "executable = \"a\"\noutput = \"out.$(Proces)\"\n",
            format!("job.toml:2:10: key 'output': unknown macro $(Proces) (defined here: {builtin})"),
        ),
        (
            "executable = \"a\"\nerror = \"e.$(Process\"\n",
            "job.toml:2:9: key 'error': unterminated macro '$(Process' (expected $(name))".into(),
        ),
        (
            "executable = \"a\"\nqueue = 0\n",
            "job.toml:2:9: key 'queue': expected a count (1 or more) or a list of strings or tables, found integer 0".into(),
        ),
        (
            "executable = \"a\"\nqueue = 2000000\n",
            "job.toml:2:9: key 'queue': expected at most 1000000 processes, found integer 2000000".into(),
        ),
        (
            "executable = \"a\"\nqueue = []\n",
            "job.toml:2:9: key 'queue': expected at least one item, found an array".into(),
        ),
        (
            "executable = \"a\"\nqueue = [\"x\",\n  { y = 1 }]\n",
            "job.toml:3:3: key 'queue[1]': expected a string like the first item, found a table".into(),
        ),
        (
            "executable = \"a\"\nqueue = [{ Process = 1 }]\n",
            "job.toml:2:12: key 'queue[0].Process': 'Process' is a built-in macro".into(),
        ),
        (
            "executable = \"a\"\narguments = \"$(a)\"\nqueue = [{ a = 1 }, { b = 2 }]\n",
            format!("job.toml:2:13: key 'arguments': unknown macro $(a) (defined here: {builtin}, b)"),
        ),
        (
            "executable = \"a\"\nenvironment = { \"A=B\" = \"x\" }\n",
            "job.toml:2:17: key 'environment.A=B': 'A=B' is not an environment variable name (expected no '=' and not empty)".into(),
        ),
        (
            "executable = \"a\"\nenvironment = \"A=1 B\"\n",
            "job.toml:2:15: key 'environment': 'B' is not NAME=VALUE (expected e.g. \"A=1 B='x y'\")".into(),
        ),
        (
            "executable = \"a\"\nenvironment = [\"A=1\"]\n",
            "job.toml:2:15: key 'environment': expected a table of NAME = \"value\" or a string \"A=1 B=2\", found an array".into(),
        ),
        (
            "executable = \"a\"\narguments = \"a 'b\"\n",
            "job.toml:2:13: key 'arguments': unterminated ' quote in \"a 'b\"".into(),
        ),
        (
            "executable = \"a\"\narguments = [\"a\", 1]\n",
            "job.toml:2:19: key 'arguments[1]': expected a string, found integer 1".into(),
        ),
        (
            "executable = \"a\"\ninput = \"../secret\"\n",
            "job.toml:2:9: key 'input': '../secret' leaves initialdir '/home/alice/work'".into(),
        ),
        (
            "executable = \"a\"\noutput = \"/etc/passwd\"\n",
            "job.toml:2:10: key 'output': '/etc/passwd' is outside initialdir '/home/alice/work'".into(),
        ),
        (
            "executable = \"a\"\noutput = \"/home/alice/work/../x\"\n",
            "job.toml:2:10: key 'output': '/home/alice/work/../x' is outside initialdir '/home/alice/work'".into(),
        ),
        (
            "executable = \"../bin/x\"\n",
            "job.toml:1:14: key 'executable': '../bin/x' leaves initialdir '/home/alice/work'".into(),
        ),
        (
            "executable = \"/bin/sort\"\ntransfer_executable = true\n",
            "job.toml:1:14: key 'executable': '/bin/sort' is outside initialdir '/home/alice/work' and cannot be transferred; set transfer_executable = false to run it from the execute host".into(),
        ),
        (
            "executable = \"x\"\ntransfer_executable = false\n",
            "job.toml:1:14: key 'executable': must be an absolute path when transfer_executable = false".into(),
        ),
        (
            "executable = \"a\"\ntransfer_executable = \"yes\"\n",
            "job.toml:2:23: key 'transfer_executable': expected true or false, found string \"yes\"".into(),
        ),
        (
            "executable = \"a\"\nrequest_memory = \"2 XB\"\n",
            "job.toml:2:18: key 'request_memory': expected MiB as an integer or a size like \"512 MB\" or \"2 GB\", found string \"2 XB\"".into(),
        ),
        (
            "executable = \"a\"\nrequest_disk = 1.5\n",
            "job.toml:2:16: key 'request_disk': expected MiB as an integer or a size like \"512 MB\" or \"2 GB\", found float 1.5".into(),
        ),
        (
            "executable = \"a\"\ncheckpoint_interval = \"5 parsecs\"\n",
            "job.toml:2:23: key 'checkpoint_interval': expected seconds as an integer or a duration like \"90s\", \"30m\" or \"1h30m\", found string \"5 parsecs\"".into(),
        ),
        (
            "executable = \"a\"\nmax_retries = -1\n",
            "job.toml:2:15: key 'max_retries': expected a non-negative integer, found integer -1".into(),
        ),
        (
            "executable = \"a\"\nnotification = \"sometimes\"\n",
            "job.toml:2:16: key 'notification': expected one of \"never\", \"always\", \"complete\", \"error\", found string \"sometimes\"".into(),
        ),
        (
            "executable = \"a\"\n[attributes]\n\"1abc\" = 1\n",
            "job.toml:3:1: key 'attributes.1abc': '1abc' is not an attribute name (expected letters, digits and '_', not starting with a digit)".into(),
        ),
        (
            "executable = \"a\"\n[attributes]\nFoo = 1\nfoo = 2\n",
            "job.toml:4:1: key 'attributes.foo': attribute foo is defined twice (names ignore case)".into(),
        ),
        (
            "executable = \"a\"\n[attributes]\nTarget = 1\n",
            "job.toml:3:1: key 'attributes.Target': 'Target' is a reserved word".into(),
        ),
        (
            "executable = \"a\"\n[attributes]\nList = [1, 2]\n",
            "job.toml:3:8: key 'attributes.List': expected a string, a finite number or a boolean, found an array".into(),
        ),
        (
            "executable = \"a\"\n[attributes]\nX = nan\n",
            "job.toml:3:5: key 'attributes.X': expected a string, a finite number or a boolean, found float NaN".into(),
        ),
        (
            "executable = \"a\"\nattributes = 3\n",
            "job.toml:2:14: key 'attributes': expected a table, found integer 3".into(),
        ),
        (
            "executable = \"a\"\nrequirements = \"Memory >= = 3\"\n",
            "job.toml:2:27: key 'requirements': bad expression: expected an expression, found '='".into(),
        ),
        (
            "executable = \"a\"\nrank = 'KFlops +'\n",
            "job.toml:2:17: key 'rank': bad expression: expected an expression, found the end".into(),
        ),
        (
            "executable = \"a\"\nrequirements = \"x == \\\"a\\\" &&\"\n",
            "job.toml:2:16: key 'requirements': bad expression: expected an expression, found the end".into(),
        ),
        (
            "executable = \"a\"\nrequirements = \"Cpus > $(Process) +\"\n",
            "job.toml:2:16: key 'requirements': bad expression: expected an expression, found the end".into(),
        ),
        (
            "executable = \"a\"\nrequirements = \"isUndefind(x)\"\n",
            "job.toml:2:17: key 'requirements': bad expression: unknown function 'isUndefind' (known: ifThenElse, isUndefined, isError, isString, isInteger, isReal, isBoolean, isList, member, identicalMember, stringListMember, stringListIMember, stringListSize, regexp, strcat, substr, size, toUpper, toLower, floor, ceiling, round, int, real, string, min, max, time)".into(),
        ),
        (
            "executable = \"a\"\nrequirements = \"  \"\n",
            "job.toml:2:16: key 'requirements': must not be empty".into(),
        ),
    ];
    for (text, want) in &cases {
        assert_eq!(&err(text), want, "for file:\n{text}");
    }
}

#[test]
fn toml_syntax_errors_name_the_line() {
    let e = err("executable = \"a\"\n\noutput = \"x\n");
    assert!(e.starts_with("job.toml:3:"), "{e}");
    let e = err("executable = \"a\"\nexecutable = \"b\"\n");
    assert!(e.starts_with("job.toml:2:"), "{e}");
    assert!(e.contains("duplicate key"), "{e}");
}

#[test]
fn split_words_handles_quotes_and_errors() {
    assert_eq!(split_words("a  b\tc").unwrap(), ["a", "b", "c"]);
    assert_eq!(split_words("'a\"b' \"c'd\"").unwrap(), ["a\"b", "c'd"]);
    assert_eq!(split_words("x\"y z\"w").unwrap(), ["xy zw"]);
    assert_eq!(split_words(r#""a\nb""#).unwrap(), [r"a\nb"]);
    assert!(split_words("a\\").is_err());
    assert!(split_words("\"a").is_err());
}

#[test]
fn sizes_and_durations_parse() {
    let sizes = [
        ("1", Some(1)),
        ("1 MB", Some(1)),
        ("2g", Some(2048)),
        ("0.5 GB", Some(512)),
        ("1025 K", Some(2)),
        ("", None),
        ("GB", None),
        ("1.2.3 MB", None),
        ("-1", None),
        ("5 bytes", None),
    ];
    for (s, want) in sizes {
        assert_eq!(parse_size_mb(s), want, "{s:?}");
    }
    let durations = [
        ("0", Some(0)),
        ("45", Some(45)),
        ("45s", Some(45)),
        ("2m", Some(120)),
        ("1h1m1s", Some(3661)),
        ("1h30", None),
        ("m", None),
        ("", None),
        ("-5", None),
    ];
    for (s, want) in durations {
        assert_eq!(parse_duration_secs(s), want, "{s:?}");
    }
}

#[test]
fn normalize_is_lexical() {
    assert_eq!(normalize(Path::new("/a/b/../c/./d")), Path::new("/a/c/d"));
    assert_eq!(normalize(Path::new("/../x")), Path::new("/x"));
    assert_eq!(normalize(Path::new("../../a")), Path::new("../../a"));
    assert_eq!(normalize(Path::new("a/../../b")), Path::new("../b"));
    assert!(escapes(Path::new("a/../../b")));
    assert!(!escapes(Path::new("a/../b")));
}
