//! Submit files that map onto a job description (and what they expand
//! to), and the ones that do not (and the message naming the line).

use super::*;
use proto::job::JobSpec;

const CWD: &str = "/home/alice/work";

fn specs(text: &str) -> Vec<JobSpec> {
    parse("job.sub", text, Path::new(CWD))
        .unwrap_or_else(|e| panic!("{text}\nshould parse, got: {e}"))
        .expand(3)
        .unwrap()
}

fn err(text: &str) -> String {
    match parse("job.sub", text, Path::new(CWD)) {
        Ok(d) => panic!("{text}\nshould fail, parsed as {d:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_typical_submit_file_maps() {
    let text = r#"
# A typical job
universe       = vanilla
executable     = analyze
arguments      = "--in data.$(Process) 'two words' 'it''s' ""q"""
input          = in.$(Process)
output         = out.$(Cluster).$(Process)
error          = err.$(Process)
log            = job.log
Initialdir     = run
environment    = "A=1 B='x y'"
requirements   = Memory >= 2048 && \
                 OpSys == "LINUX"
rank           = KFlops
request_cpus   = 2
request_memory = 2 GB
request_disk   = 2048
+Project       = "physics"
MY.Priority    = 5 + 1
queue 2
"#;
    let v = specs(text);
    assert_eq!(v.len(), 2);
    let s = &v[1];
    assert_eq!(s.executable, "analyze");
    assert!(s.transfer_executable);
    assert_eq!(
        s.arguments,
        ["--in", "data.1", "two words", "it's", "\"q\""]
    );
    assert_eq!(s.input.as_deref(), Some("in.1"));
    assert_eq!(s.output.as_deref(), Some("out.3.1"));
    assert_eq!(s.error.as_deref(), Some("err.1"));
    assert_eq!(s.initialdir, "/home/alice/work/run");
    assert_eq!(
        s.environment,
        [
            ("A".to_string(), "1".to_string()),
            ("B".into(), "x y".into())
        ]
    );
    assert_eq!(
        s.requirements.as_deref(),
        Some("Memory >= 2048 && OpSys == \"LINUX\"")
    );
    assert_eq!(s.rank.as_deref(), Some("KFlops"));
    assert_eq!(s.request_cpus, 2);
    assert_eq!(s.request_memory_mb, 2048);
    assert_eq!(s.request_disk_mb, 2, "a bare request_disk is KiB");
    assert_eq!(s.attributes["Project"], "\"physics\"");
    assert_eq!(s.attributes["Priority"], "5 + 1");
}

#[test]
fn old_syntax_arguments_and_environment() {
    let v = specs(
        "executable = /bin/echo\narguments = a b\\\"c\nenvironment = A=1;B=two words\nqueue\n",
    );
    assert_eq!(v[0].arguments, ["a", "b\"c"]);
    assert_eq!(
        v[0].environment,
        [
            ("A".to_string(), "1".to_string()),
            ("B".into(), "two words".into())
        ]
    );
    assert!(!v[0].transfer_executable);
}

#[test]
fn queue_forms() {
    let args =
        |text: &str| -> Vec<Vec<String>> { specs(text).into_iter().map(|s| s.arguments).collect() };
    assert_eq!(
        args("executable = a\narguments = $(Process)\nqueue\n"),
        [["0"]]
    );
    assert_eq!(
        args("executable = a\narguments = $(Process)\nqueue 3\n"),
        [["0"], ["1"], ["2"]]
    );
    assert_eq!(
        args("executable = a\narguments = $(Item)\nqueue from (x.csv y.csv)\n"),
        [["x.csv", "y.csv"]],
        "from: one item per line (one process); arguments split after expansion, as in HTCondor"
    );
    assert_eq!(
        args("executable = a\narguments = $(Item)\nqueue in (x.csv, y.csv z)\n"),
        [["x.csv"], ["y.csv"], ["z"]]
    );
    assert_eq!(
        args(
            "executable = a\narguments = $(name) $(size)\nqueue name, size from (\n  small, 10\n  big 1000\n)\n"
        ),
        [["small", "10"], ["big", "1000"]]
    );
    assert_eq!(
        args("executable = a\narguments = $(f) $(Process)\nqueue 2 f in (a, b)\n"),
        [["a", "0"], ["a", "1"], ["b", "2"], ["b", "3"]]
    );
    assert_eq!(
        args("executable = a\narguments = $(ItemIndex)\nqueue 2 f in (a, b)\n"),
        [["0"], ["0"], ["1"], ["1"]],
        "ItemIndex counts items, not processes"
    );
    assert_eq!(
        args("executable = a\narguments = $(input_file)\nqueue input_file in (p, q)\n"),
        [["p"], ["q"]]
    );
}

#[test]
fn queue_from_a_file_reads_it_relative_to_cwd() {
    let dir = std::env::temp_dir().join(format!("roost-submit-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("items.txt"), "one\n# skipped\n\ntwo\n").unwrap();
    let d = parse(
        "job.sub",
        "executable = a\narguments = $(Item)\nqueue from items.txt\n",
        &dir,
    )
    .unwrap();
    let args: Vec<Vec<String>> = d
        .expand(1)
        .unwrap()
        .into_iter()
        .map(|s| s.arguments)
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(args, [["one"], ["two"]]);
}

#[test]
fn parse_any_picks_the_format_by_name() {
    let cwd = Path::new(CWD);
    let sub = crate::jobfile::parse_any("job.sub", "executable = a\nqueue 2\n", cwd).unwrap();
    assert_eq!(sub.process_count(), 2);
    let toml =
        crate::jobfile::parse_any("job.toml", "executable = \"a\"\nqueue = 2\n", cwd).unwrap();
    assert_eq!(toml.expand(1).unwrap(), sub.expand(1).unwrap());
}

#[test]
fn bad_submit_files_name_the_line() {
    let expected = "executable, arguments, input, output, error, log, initialdir, iwd, environment, \
        requirements, rank, request_cpus, request_memory, request_disk, transfer_executable, \
        max_retries, notification, universe, +Attr, queue";
    let cases: Vec<(&str, String)> = vec![
        (
            "executable = a\n\nshould_transfer_files = YES\nqueue\n",
            format!("job.sub:3:1: unknown key 'should_transfer_files' (expected one of: {expected})"),
        ),
        (
            "executable = a\n",
            "job.sub: missing required key 'queue'".into(),
        ),
        (
            "arguments = x\nqueue\n",
            "job.sub: missing required key 'executable'".into(),
        ),
        (
            "executable = a\nthis is not a statement\nqueue\n",
            "job.sub:2:1: expected KEY = VALUE or a queue statement".into(),
        ),
        (
            "executable = a\nuniverse = docker\nqueue\n",
            "job.sub:2:12: key 'universe': roost runs vanilla and standard universe jobs, not 'docker'".into(),
        ),
        (
            "executable = a\nrequest_cpus = many\nqueue\n",
            "job.sub:2:16: key 'request_cpus': expected an integer of at least 1, found 'many'".into(),
        ),
        (
            "executable = a\nrequirements = Memory >= = 1\nqueue\n",
            "job.sub:2:26: key 'requirements': bad expression: expected an expression, found '='".into(),
        ),
        (
            "executable = a\n+Bad = 1 +\nqueue\n",
            "job.sub:2:11: key '+Bad': bad expression: expected an expression, found the end".into(),
        ),
        (
            "executable = a\n+1x = 1\nqueue\n",
            "job.sub:2:1: key '+1x': '1x' is not an attribute name (expected letters, digits and '_', not starting with a digit)".into(),
        ),
        (
            "executable = a\noutput = o.$(Proc)\nqueue\n",
            "job.sub:2:10: key 'output': unknown macro $(Proc) (defined here: Cluster, ClusterId, Process, ProcId, ItemIndex)".into(),
        ),
        (
            "executable = a\nqueue\nqueue\n",
            "job.sub:3:1: a second queue statement (roost accepts one, at the end)".into(),
        ),
        (
            "executable = a\nqueue\noutput = x\n",
            "job.sub:3:1: statement after the queue statement (roost accepts one queue statement, at the end)".into(),
        ),
        (
            "executable = a\nqueue f matching *.dat\n",
            "job.sub:2:1: key 'queue': 'queue ... matching' is not supported (use 'from' or 'in')".into(),
        ),
        (
            "executable = a\nqueue f from (\n a\n",
            "job.sub:2:1: queue list is not closed (expected ')')".into(),
        ),
        (
            "executable = a\nqueue 0\n",
            "job.sub:2:1: key 'queue': expected a count from 1 to 1000000, found 0".into(),
        ),
        (
            "executable = a\nqueue Process in (a)\n",
            "job.sub:2:1: key 'queue': 'Process' is a built-in macro".into(),
        ),
        (
            "executable = a\narguments = \"a 'b\"\nqueue\n",
            "job.sub:2:13: key 'arguments': unterminated ' quote in \"a 'b\"".into(),
        ),
        (
            "executable = a\nenvironment = \"A=1 B\"\nqueue\n",
            "job.sub:2:15: key 'environment': 'B' is not NAME=VALUE (expected e.g. \"A=1 B='x y'\")".into(),
        ),
        (
            "executable = a\ninput = ../../etc/passwd\nqueue\n",
            "job.sub:2:9: key 'input': '../../etc/passwd' leaves initialdir '/home/alice/work'".into(),
        ),
    ];
    for (text, want) in &cases {
        assert_eq!(&err(text), want, "for file:\n{text}");
    }
}
