//! Differential test of the `.sub` subset against HTCondor's own submit
//! language (the `htcondor2` module of the `htcondor` Python package):
//! generated submit files, expanded process by process, must give the same
//! value for every key in roost and in HTCondor.
//!
//! HTCondor's side: `htcondor2.Submit(text)` reads the file, `itemdata()`
//! and `getQArgs()` give the processes, and `expand(key)` expands each key
//! with `$(Cluster)`, `$(Process)` and the item's macros set. The Python
//! build of `htcondor2` does not implement `Submit.jobs()` (it raises
//! `NotImplementedError`), so the last step HTCondor's `condor_submit` takes,
//! turning the expanded text into job-ad values, is done in the Python
//! script below by the HTCondor manual's rules: argument and environment
//! syntax (old and new), request sizes in KiB/MiB with units. Expressions
//! (`requirements`, `rank`, `+Attr`) are compared by their values, evaluated
//! by HTCondor's ClassAd library (`classad2`) and by roost's evaluator
//! against the same job and machine ads.
//!
//! The Python interpreter is the one `policies/tests/differential.rs` uses:
//! `$ROOST_CLASSAD_PYTHON`, or a virtual environment under the target
//! directory made on first use with `pip install htcondor`. Without it the
//! test fails under `CI=true` and warns elsewhere.
//!
//! Where roost differs from HTCondor on purpose ([`DIFFERENCES`], each
//! checked by `roost_differs_on_purpose`; the user's guide quotes them):
//! - `confined_paths`: `input`, `output`, `error` and the executable must
//!   stay inside `initialdir`; HTCondor accepts `../x`.
//! - `unknown_keys_are_errors`: a key outside the subset (including
//!   HTCondor's own macro definitions such as `name = value`) is an error
//!   naming its line; HTCondor stores it.
//! - `request_values_are_literals`: `request_cpus`, `request_memory` and
//!   `request_disk` take a number (with a unit), not an expression or a
//!   macro.
//! - `one_queue_statement`: one queue statement, at the end of the file;
//!   HTCondor allows several and keys after them.
//!
//! `ROOST_SUBMIT_DIFF_SEED=N` generates a different set of files.

mod common;
use common::{Rng, json_string, python};
use policies::ad::Ad;
use policies::expr::{self, Value};
use policies::jobfile;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How many submit files are generated and compared.
const FILES: usize = 400;

/// The directory submit files are "in": the default `initialdir`.
const CWD: &str = "/srv/roost-submit";

/// The cluster number both sides expand with.
const CLUSTER: u64 = 4217;

/// The job ad (`MY`) expressions are evaluated in.
const JOB_AD: &str =
    r#"[ RequestMemory = 2048; RequestCpus = 2; Owner = "alice"; ImageSize = 1000 ]"#;

/// Machine ads (`TARGET`) expressions are evaluated against.
const MACHINES: [&str; 3] = [
    r#"[ Memory = 4096; Cpus = 8; Disk = 1000000; OpSys = "LINUX"; Arch = "X86_64";
        KFlops = 900000; Mips = 3000; Machine = "node1.example.org"; LoadAvg = 0.25 ]"#,
    r#"[ Memory = 1024; Cpus = 1; Disk = 20000; OpSys = "linux"; Arch = "aarch64";
        KFlops = 120000; Mips = 800; Machine = "edge.example.org"; LoadAvg = 1.5 ]"#,
    r#"[ Memory = 65536; Cpus = 64; Disk = 90000000; OpSys = "WINDOWS"; Arch = "X86_64";
        KFlops = 4000000; Mips = 9000; Machine = "big.example.org"; LoadAvg = 0.0 ]"#,
];

/// The differences roost keeps on purpose: a name, a submit file, and
/// what roost does with it. `roost_differs_on_purpose` checks that roost
/// does this and that HTCondor accepts the file.
const DIFFERENCES: &[(&str, &str, &str)] = &[
    (
        "confined_paths",
        "executable = job.sh\noutput = ../out.txt\nqueue\n",
        "leaves initialdir",
    ),
    (
        "unknown_keys_are_errors",
        "executable = job.sh\nmy_setting = 3\narguments = $(my_setting)\nqueue\n",
        "unknown key 'my_setting'",
    ),
    (
        "request_values_are_literals",
        "executable = job.sh\nrequest_memory = 1024 * 2\nqueue\n",
        "expected MiB",
    ),
    (
        "one_queue_statement",
        "executable = job.sh\nqueue 2\narguments = b\nqueue 1\n",
        "statement after the queue statement",
    ),
];

/// HTCondor's side. Reads a directory of `N.sub` files and prints, per
/// file, one canonical line per key and process, then `end`.
const PYTHON: &str = r#"
import sys, os, re, json, struct, classad2, htcondor2
folder, count, cwd, cluster = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
my = classad2.ClassAd(sys.argv[5])
machines = [classad2.ClassAd(a) for a in sys.argv[6:]]

def canon(v):
    if isinstance(v, classad2.Value):
        return {classad2.Value.Undefined: "undefined", classad2.Value.Error: "error"}.get(v, "other:" + repr(v))
    if isinstance(v, bool): return "true" if v else "false"
    if isinstance(v, int): return "i:%d" % v
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")): return "nonfinite"
        if v == 0.0: v = 0.0
        return "r:" + struct.pack(">d", v).hex()
    if isinstance(v, str): return "s:" + json.dumps(v)
    if isinstance(v, list): return "[" + ",".join(canon(x) for x in v) + "]"
    if isinstance(v, classad2.ExprTree): return canon(v.eval(my))
    return "other:" + repr(v)

def evaluate(text):
    try:
        t = classad2.ExprTree(text)
    except Exception:
        return "parse-error"
    return ",".join(canon(t.eval(my, m)) for m in machines)

def new_syntax(s, what):
    # The manual's new syntax: the whole value in double quotes; blanks
    # separate words; '...' keeps blanks, '' inside it is a '; "" is a ".
    s = s[1:-1]
    words, word, in_word, i = [], "", False, 0
    while i < len(s):
        c = s[i]; i += 1
        if c in " \t":
            if in_word: words.append(word); word, in_word = "", False
        elif c == '"':
            assert s[i] == '"', what; i += 1; word += '"'; in_word = True
        elif c == "'":
            in_word = True
            while True:
                if s[i] == "'" and i + 1 < len(s) and s[i + 1] == "'": word += "'"; i += 2
                elif s[i] == "'": i += 1; break
                else: word += s[i]; i += 1
        else:
            word += c; in_word = True
    if in_word: words.append(word)
    return words

def arguments(s):
    if s.startswith('"'): return new_syntax(s, s)
    # Old syntax: blanks separate words, \" is a ".
    return [w.replace('\\"', '"') for w in s.split()]

def environment(s):
    pairs = new_syntax(s, s) if s.startswith('"') else [p for p in s.split(";") if p.strip()]
    env = {}
    for p in pairs:
        k, v = p.split("=", 1); env[k] = v
    return env

UNITS = {"": None, "K": 1, "KB": 1, "M": 1024, "MB": 1024, "G": 1 << 20, "GB": 1 << 20, "T": 1 << 30, "TB": 1 << 30}
def size_mib(s, bare_kib):
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", s)
    if not m: return "expression " + s
    per = UNITS[m[2].upper()] or (1 if bare_kib else 1024)
    return str(-(-int(m[1]) * per // 1024))

def j(s): return json.dumps(s)

out = []
for n in range(count):
    start = len(out)
    text = open(os.path.join(folder, "%d.sub" % n)).read()
    try:
        sub = htcondor2.Submit(text)
        q = sub.getQArgs().strip()
        m = re.match(r"(\d+)\b", q)
        repeat = int(m[1]) if m else 1
        items = sub.itemdata()
        rows = [{}] if items is None else [r if isinstance(r, dict) else {"Item": r} for r in items]
        keys = {k.lower(): k for k in sub.keys()}
        proc = 0
        for index, row in enumerate(rows):
            for step in range(repeat):
                s = htcondor2.Submit(text)
                for k, v in [("Cluster", cluster), ("ClusterId", cluster), ("Process", str(proc)), ("ProcId", str(proc)), ("ItemIndex", str(index)), ("Step", str(step))] + list(row.items()):
                    s[k] = v
                x = lambda k: s.expand(keys[k]) if k in keys else None
                out.append("proc %d" % proc)
                out.append("executable " + j(x("executable")))
                out.append("arguments " + j(arguments(x("arguments")) if x("arguments") else []))
                for k in ("input", "output", "error"):
                    out.append(k + " " + j(x(k)))
                iwd = x("initialdir") or x("iwd")
                iwd = os.path.normpath(os.path.join(cwd, iwd)) if iwd else cwd
                out.append("initialdir " + j(iwd))
                out.append("log " + j(os.path.normpath(os.path.join(iwd, x("log"))) if x("log") else None))
                env = environment(x("environment")) if x("environment") else {}
                out.append("environment " + " ".join(k + "=" + j(env[k]) for k in sorted(env)))
                for k in ("requirements", "rank"):
                    out.append(k + " " + (evaluate(x(k)) if x(k) else "unset"))
                if x("request_cpus"): out.append("request_cpus " + x("request_cpus").strip())
                if x("request_memory"): out.append("request_memory_mib " + size_mib(x("request_memory"), False))
                if x("request_disk"): out.append("request_disk_mib " + size_mib(x("request_disk"), True))
                for k in sorted(k for k in keys if k.startswith("my.")):
                    out.append("attr " + keys[k][3:] + " " + evaluate(s.expand(keys[k])))
                proc += 1
    except Exception as e:
        # condor_submit refuses the file (or its arguments or environment).
        out = out[:start] + ["rejected " + repr(e).replace("\n", " ")]
    out.append("end")
sys.stdout.write("\n".join(out) + "\n")
"#;

/// One generated submit file: its text and the `request_*` keys it sets.
struct Generated {
    text: String,
    sets: Vec<&'static str>,
}

/// Writes a key the way people do: any case, any blanks around `=`.
fn key(r: &mut Rng, name: &str) -> String {
    let name = match r.below(4) {
        0 => name.to_ascii_uppercase(),
        1 => {
            let mut c = name.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        }
        _ => name.to_string(),
    };
    let eq = r.pick(&[" = ", "=", " =", "=  ", "\t= "]);
    format!("{name}{eq}")
}

/// A macro reference to the process, the cluster or an item variable.
fn macro_ref(r: &mut Rng, vars: &[String]) -> String {
    if !vars.is_empty() && r.chance(10) {
        return "$(ItemIndex)".into();
    }
    if !vars.is_empty() && r.chance(50) {
        let v = &vars[r.below(vars.len())];
        let v = if r.chance(30) {
            v.to_ascii_lowercase()
        } else {
            v.clone()
        };
        return format!("$({v})");
    }
    format!(
        "$({})",
        r.pick(&[
            "Process",
            "Cluster",
            "ProcId",
            "ClusterId",
            "process",
            "CLUSTER"
        ])
    )
}

/// A word without blanks, sometimes with a macro in it.
fn plain_word(r: &mut Rng, vars: &[String]) -> String {
    let base = r.pick(&[
        "-v",
        "--size=10",
        "x",
        "data.csv",
        "a,b",
        "50%",
        "@file",
        "k=v",
        "0",
        "-n",
        "é",
        "$$",
    ]);
    match r.below(4) {
        0 => macro_ref(r, vars),
        1 => format!("{base}{}", macro_ref(r, vars)),
        _ => base.to_string(),
    }
}

/// `arguments` in the new syntax: quoted words, `''` and `""` escapes.
fn new_arguments(r: &mut Rng, vars: &[String]) -> String {
    let n = r.below(5);
    let mut words = Vec::new();
    for _ in 0..n {
        let w = match r.below(6) {
            0 => format!("'{} {}'", plain_word(r, vars), plain_word(r, vars)),
            1 => "'it''s'".to_string(),
            2 => format!("say\"\"{}\"\"", plain_word(r, vars)),
            3 => "''".to_string(),
            _ => plain_word(r, vars),
        };
        words.push(w);
    }
    let sep = r.pick(&[" ", "  ", "\t"]);
    format!("\"{}\"", words.join(sep))
}

/// `arguments` in the old syntax: blank-separated, `\"` is a quote.
fn old_arguments(r: &mut Rng, vars: &[String]) -> String {
    let n = 1 + r.below(4);
    let mut words: Vec<String> = Vec::new();
    for _ in 0..n {
        let w = match r.below(5) {
            0 => "\\\"quoted\\\"".to_string(),
            1 => "it's".to_string(),
            _ => plain_word(r, vars),
        };
        words.push(w);
    }
    words.join(" ")
}

fn env_value(r: &mut Rng, vars: &[String]) -> String {
    match r.below(5) {
        0 => macro_ref(r, vars),
        1 => "/usr/bin:/bin".into(),
        2 => "x=y".into(),
        3 => format!("run{}", macro_ref(r, vars)),
        _ => r.pick(&["1", "yes", "", "C.UTF-8"]).into(),
    }
}

fn environment(r: &mut Rng, vars: &[String]) -> String {
    let names = [
        "PATH",
        "OMP_NUM_THREADS",
        "RUN_ID",
        "LANG",
        "_x1",
        "Mixed_Case",
    ];
    let n = 1 + r.below(4);
    let chosen: Vec<&str> = (0..n).map(|i| names[(i * 2 + r.below(2)) % 6]).collect();
    let mut seen = Vec::new();
    let chosen: Vec<&str> = chosen
        .into_iter()
        .filter(|c| {
            let fresh = !seen.contains(c);
            seen.push(*c);
            fresh
        })
        .collect();
    if r.chance(50) {
        let pairs: Vec<String> = chosen
            .iter()
            .map(|name| {
                let v = match r.below(4) {
                    0 => format!("'{} two'", env_value(r, vars)),
                    1 => "'it''s'".into(),
                    _ => env_value(r, vars),
                };
                format!("{name}={v}")
            })
            .collect();
        format!("\"{}\"", pairs.join(" "))
    } else {
        let pairs: Vec<String> = chosen
            .iter()
            .map(|name| format!("{name}={}", env_value(r, vars)))
            .collect();
        pairs.join(";")
    }
}

fn clause(r: &mut Rng, vars: &[String]) -> String {
    match r.below(10) {
        0 => format!(
            "TARGET.Memory >= {}",
            r.pick(&["1024", "2048", "4096", "100000"])
        ),
        1 => format!(
            "TARGET.OpSys == \"{}\"",
            r.pick(&["LINUX", "Linux", "WINDOWS"])
        ),
        2 => format!("TARGET.Cpus > {}", macro_ref(r, &[])),
        3 => format!(
            "regexp(\"{}\", TARGET.Machine)",
            r.pick(&["^node", "example", "^big"])
        ),
        4 => "MY.RequestMemory <= TARGET.Memory".into(),
        5 => format!(
            "(TARGET.Arch == \"X86_64\" || TARGET.Arch =?= \"{}\")",
            r.pick(&["aarch64", "AARCH64"])
        ),
        6 => "TARGET.LoadAvg < 1.0".into(),
        7 => format!("TARGET.Machine != \"{}\"", macro_ref(r, vars)),
        8 => format!(
            "member(TARGET.Cpus, {{1, 8, {}}})",
            r.pick(&["64", "2", "3"])
        ),
        _ => "TARGET.Disk > 2 * 1024 * 1024".into(),
    }
}

fn requirements(r: &mut Rng, vars: &[String]) -> String {
    let n = 1 + r.below(3);
    let parts: Vec<String> = (0..n).map(|_| clause(r, vars)).collect();
    let op = r.pick(&[" && ", " || "]);
    parts.join(op)
}

fn rank(r: &mut Rng) -> String {
    r.pick(&[
        "TARGET.KFlops",
        "TARGET.Memory / 1024 + $(Process)",
        "TARGET.Mips * 2 - TARGET.LoadAvg",
        "ifThenElse(TARGET.Arch == \"X86_64\", 10, 1)",
        "TARGET.Cpus",
        "-TARGET.LoadAvg",
    ])
    .into()
}

fn size(r: &mut Rng) -> String {
    let n = r.pick(&["1", "100", "1500", "2048", "3", "999999"]);
    let unit = r.pick(&["", "", "K", "KB", "M", "MB", "G", "GB", "k", "mb", "Gb"]);
    let blank = if unit.is_empty() {
        ""
    } else {
        r.pick(&["", " "])
    };
    format!("{n}{blank}{unit}")
}

fn custom_attribute(r: &mut Rng, vars: &[String], i: usize) -> String {
    let name = format!(
        "{}{i}",
        r.pick(&["Project", "Weight", "IsTest", "Group", "Tags"])
    );
    let prefix = r.pick(&["+", "+", "MY."]);
    let value = match r.below(6) {
        0 => format!("\"proj_{}\"", macro_ref(r, vars)),
        1 => format!("{} * 2 + 1", macro_ref(r, &[])),
        2 => r.pick(&["true", "false", "undefined"]).into(),
        3 => "{1, 2.5, \"x\"}".into(),
        4 => "MY.RequestMemory / 2".into(),
        _ => "strcat(\"a\", \"b\")".into(),
    };
    format!("{prefix}{name} = {value}")
}

/// Item values: no blanks, except where a `from` list's last variable
/// takes the rest of its line.
fn item(r: &mut Rng) -> String {
    r.pick(&[
        "alpha", "b2", "x-1", "42", "3.5", "data_7", "UPPER", "a.b", "z",
    ])
    .into()
}

/// The queue statement and the item variables it defines.
fn queue(r: &mut Rng) -> (String, Vec<String>) {
    let count = if r.chance(30) {
        format!("{} ", 1 + r.below(3))
    } else {
        String::new()
    };
    match r.below(7) {
        0 => ("queue".into(), vec![]),
        1 => (format!("queue {}", 1 + r.below(5)), vec![]),
        2 | 3 => {
            let var = r.pick(&["Item", "name", "Sample", ""]);
            let n = 1 + r.below(4);
            let items: Vec<String> = (0..n).map(|_| item(r)).collect();
            let sep = r.pick(&[", ", ",", " "]);
            let v = if var.is_empty() { "Item" } else { var };
            let space = if var.is_empty() { "" } else { " " };
            (
                format!("queue {count}{var}{space}in ({})", items.join(sep)),
                vec![v.to_string()],
            )
        }
        4 => {
            let var = r.pick(&["Item", "file"]);
            let n = 1 + r.below(3);
            let items: Vec<String> = (0..n).map(|_| item(r)).collect();
            (
                format!("queue {count}{var} from ({})", items.join(", ")),
                vec![var.to_string()],
            )
        }
        _ => {
            let vars = ["a", "b", "c"][..2 + r.below(2)].to_vec();
            let n = 1 + r.below(3);
            let mut rows = Vec::new();
            for _ in 0..n {
                let mut fields: Vec<String> = vars.iter().map(|_| item(r)).collect();
                if r.chance(30) {
                    let last = fields.len() - 1;
                    fields[last] = format!("{} tail", fields[last]);
                }
                let sep = r.pick(&[" ", ", ", ","]);
                rows.push(format!("  {}", fields.join(sep)));
            }
            let sep = r.pick(&[",", ", ", " "]);
            (
                format!(
                    "queue {count}{} from (\n{}\n)",
                    vars.join(sep),
                    rows.join("\n")
                ),
                vars.iter().map(|v| v.to_string()).collect(),
            )
        }
    }
}

fn generate(r: &mut Rng, n: usize) -> Generated {
    let (queue, vars) = queue(r);
    let mut lines = vec![format!("# generated submit file {n}")];
    let mut sets = Vec::new();
    if r.chance(20) {
        lines.push(format!("{}vanilla", key(r, "universe")));
    }
    let exe = match r.below(4) {
        0 => "/bin/echo".to_string(),
        1 => format!("bin/run_{}.sh", macro_ref(r, &vars)),
        _ => r.pick(&["job.sh", "./analyse", "sweep.py"]).to_string(),
    };
    lines.push(format!("{}{exe}", key(r, "executable")));
    if r.chance(80) {
        let args = if r.chance(60) {
            new_arguments(r, &vars)
        } else {
            old_arguments(r, &vars)
        };
        lines.push(format!("{}{args}", key(r, "arguments")));
    }
    if r.chance(40) {
        let v = format!("in/{}.txt", macro_ref(r, &vars));
        lines.push(format!("{}{v}", key(r, "input")));
    }
    for k in ["output", "error"] {
        if r.chance(60) {
            let v = format!(
                "{k}.{}.{}",
                macro_ref(r, &vars),
                r.pick(&["txt", "$(Process)", "log"])
            );
            lines.push(format!("{}{v}", key(r, k)));
        }
    }
    if r.chance(40) {
        lines.push(format!(
            "{}{}",
            key(r, "log"),
            r.pick(&["job.log", "logs/$(Cluster).log"])
        ));
    }
    if r.chance(30) {
        let iwd = match r.below(3) {
            0 => format!("runs/{}", macro_ref(r, &vars)),
            1 => "/srv/roost-submit/abs".to_string(),
            _ => "sub/./dir/".to_string(),
        };
        let k = if r.chance(20) { "iwd" } else { "initialdir" };
        lines.push(format!("{}{iwd}", key(r, k)));
    }
    if r.chance(60) {
        let req = requirements(r, &vars);
        lines.push(format!("{}{req}", key(r, "requirements")));
    }
    if r.chance(40) {
        let rank = rank(r);
        lines.push(format!("{}{rank}", key(r, "rank")));
    }
    if r.chance(40) {
        lines.push(format!("{}{}", key(r, "request_cpus"), 1 + r.below(16)));
        sets.push("request_cpus");
    }
    if r.chance(50) {
        let s = size(r);
        lines.push(format!("{}{s}", key(r, "request_memory")));
        sets.push("request_memory");
    }
    if r.chance(40) {
        let s = size(r);
        lines.push(format!("{}{s}", key(r, "request_disk")));
        sets.push("request_disk");
    }
    if r.chance(50) {
        let env = environment(r, &vars);
        lines.push(format!("{}{env}", key(r, "environment")));
    }
    for i in 0..r.below(4) {
        lines.push(custom_attribute(r, &vars, i));
    }
    // Keys in any order before the queue statement, which comes last.
    for i in (2..lines.len()).rev() {
        let j = 1 + r.below(i);
        lines.swap(i, j);
    }
    if r.chance(20) {
        lines.insert(1, String::new());
    }
    lines.push(queue);
    Generated {
        text: lines.join("\n") + "\n",
        sets,
    }
}

/// The value of an expression against each machine, as the script prints
/// it; `unset` when there is none.
fn evaluate(text: Option<&str>, my: &Ad, machines: &[Ad]) -> String {
    let Some(text) = text else {
        return "unset".into();
    };
    let Ok(e) = expr::parse(text) else {
        return "parse-error".into();
    };
    machines
        .iter()
        .map(|m| canon(&expr::eval(&e, my, m)))
        .collect::<Vec<_>>()
        .join(",")
}

fn canon(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => format!("i:{i}"),
        Value::Real(r) if !r.is_finite() => "nonfinite".into(),
        Value::Real(r) => {
            let r = if *r == 0.0 { 0.0 } else { *r };
            format!("r:{:016x}", r.to_bits())
        }
        Value::Str(s) => format!("s:{}", json_string(s)),
        Value::List(items) => {
            let inner: Vec<String> = items.iter().map(canon).collect();
            format!("[{}]", inner.join(","))
        }
        Value::Undefined => "undefined".into(),
        Value::Error => "error".into(),
    }
}

fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".into(), json_string)
}

/// Roost's side, in the script's canonical lines, or roost's error.
fn roost_lines(g: &Generated, n: usize, my: &Ad, machines: &[Ad]) -> Result<String, String> {
    let file = format!("{n}.sub");
    let d = jobfile::parse_any(&file, &g.text, Path::new(CWD)).map_err(|e| e.to_string())?;
    let procs = d.expand_full(CLUSTER).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for (i, p) in procs.iter().enumerate() {
        let s = &p.spec;
        let _ = writeln!(out, "proc {i}");
        let _ = writeln!(out, "executable {}", json_string(&s.executable));
        let args: Vec<String> = s.arguments.iter().map(|a| json_string(a)).collect();
        let _ = writeln!(out, "arguments [{}]", args.join(", "));
        let _ = writeln!(out, "input {}", json_opt(s.input.as_deref()));
        let _ = writeln!(out, "output {}", json_opt(s.output.as_deref()));
        let _ = writeln!(out, "error {}", json_opt(s.error.as_deref()));
        let _ = writeln!(out, "initialdir {}", json_string(&s.initialdir));
        let _ = writeln!(out, "log {}", json_opt(p.log.as_deref()));
        let env: BTreeMap<&str, &str> = s
            .environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let env: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{k}={}", json_string(v)))
            .collect();
        let _ = writeln!(out, "environment {}", env.join(" "));
        let _ = writeln!(
            out,
            "requirements {}",
            evaluate(s.requirements.as_deref(), my, machines)
        );
        let _ = writeln!(out, "rank {}", evaluate(s.rank.as_deref(), my, machines));
        if g.sets.contains(&"request_cpus") {
            let _ = writeln!(out, "request_cpus {}", s.request_cpus);
        }
        if g.sets.contains(&"request_memory") {
            let _ = writeln!(out, "request_memory_mib {}", s.request_memory_mb);
        }
        if g.sets.contains(&"request_disk") {
            let _ = writeln!(out, "request_disk_mib {}", s.request_disk_mb);
        }
        let mut attrs: Vec<(&String, &String)> = s.attributes.iter().collect();
        attrs.sort_by_key(|(k, _)| k.to_ascii_lowercase());
        for (name, text) in attrs {
            let _ = writeln!(out, "attr {name} {}", evaluate(Some(text), my, machines));
        }
    }
    out.push_str("end\n");
    Ok(out)
}

fn python_or_fail() -> Option<PathBuf> {
    let py = python();
    if py.is_none() {
        let msg = "cannot run the submit differential test: no Python with the `htcondor` \
                   package (set ROOST_CLASSAD_PYTHON or allow `pip install htcondor`)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("WARNING: {msg}; not checked on this machine");
    }
    py
}

/// Runs the script over `texts`, returning its output split per file.
fn htcondor_lines(py: &Path, texts: &[&str]) -> Vec<String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "submit-diff-{}-{}",
        std::process::id(),
        texts.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, t) in texts.iter().enumerate() {
        std::fs::write(dir.join(format!("{i}.sub")), t).unwrap();
    }
    let mut cmd = Command::new(py);
    cmd.args(["-c", PYTHON])
        .arg(&dir)
        .arg(texts.len().to_string())
        .arg(CWD)
        .arg(CLUSTER.to_string())
        .arg(JOB_AD)
        .args(MACHINES);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("python runs");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "python failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut files = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        cur.push_str(line);
        cur.push('\n');
        if line == "end" {
            files.push(std::mem::take(&mut cur));
        }
    }
    assert_eq!(files.len(), texts.len(), "script output: {text}");
    files
}

#[test]
fn submit_files_expand_as_in_htcondor() {
    let Some(py) = python_or_fail() else { return };
    let seed = std::env::var("ROOST_SUBMIT_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_5bf1_1e00_0002);
    let mut rng = Rng(seed);
    let generated: Vec<Generated> = (0..FILES).map(|n| generate(&mut rng, n)).collect();
    let texts: Vec<&str> = generated.iter().map(|g| g.text.as_str()).collect();
    let theirs = htcondor_lines(&py, &texts);

    let my = Ad::parse("job", JOB_AD).unwrap();
    let machines: Vec<Ad> = MACHINES
        .iter()
        .map(|m| Ad::parse("machine", m).unwrap())
        .collect();
    let mut mismatches = Vec::new();
    let mut processes = 0;
    let mut compared = 0;
    let mut rejected = 0;
    for (n, (g, theirs)) in generated.iter().zip(&theirs).enumerate() {
        let (ours, why) = match roost_lines(g, n, &my, &machines) {
            Ok(lines) => (lines, String::new()),
            Err(e) => ("rejected\nend\n".to_string(), e),
        };
        // Both refuse the file: the same answer (HTCondor's reason is
        // its own wording).
        if ours.starts_with("rejected") && theirs.starts_with("rejected") {
            if std::env::var_os("ROOST_SUBMIT_DIFF_SHOW").is_some() {
                eprintln!("file {n} refused:\n{}  roost: {why}\n  {theirs}", g.text);
            }
            rejected += 1;
            continue;
        }
        assert!(
            !theirs.contains("parse-error") && !theirs.contains("expression "),
            "file {n}: HTCondor cannot read a generated expression:\n{}{theirs}",
            g.text
        );
        processes += ours.lines().filter(|l| l.starts_with("proc ")).count();
        compared += 1;
        if &ours != theirs {
            let diff = ours
                .lines()
                .zip(theirs.lines())
                .find(|(a, b)| a != b)
                .map_or_else(
                    || "(different number of lines)".to_string(),
                    |(a, b)| format!("roost:    {a} {why}\n  htcondor: {b}"),
                );
            mismatches.push(format!("file {n}:\n{}  {diff}", g.text));
        }
    }
    eprintln!(
        "{compared} submit files, {processes} processes compared key by key; \
         {rejected} files refused by both"
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} files differ, e.g.:\n{}",
        mismatches.len(),
        generated.len(),
        mismatches[..mismatches.len().min(6)].join("\n")
    );
    assert!(
        compared >= FILES * 9 / 10,
        "only {compared} files compared ({rejected} refused by both)"
    );
    assert!(processes >= FILES, "only {processes} processes");
}

#[test]
fn roost_differs_on_purpose() {
    let Some(py) = python_or_fail() else { return };
    let texts: Vec<&str> = DIFFERENCES.iter().map(|(_, t, _)| *t).collect();
    let theirs = htcondor_lines(&py, &texts);
    let my = Ad::parse("job", JOB_AD).unwrap();
    let machines: Vec<Ad> = MACHINES
        .iter()
        .map(|m| Ad::parse("machine", m).unwrap())
        .collect();
    for ((name, text, roost_does), theirs) in DIFFERENCES.iter().zip(&theirs) {
        assert!(
            !theirs.starts_with("rejected"),
            "{name}: HTCondor rejects the file: {theirs}"
        );
        let g = Generated {
            text: text.to_string(),
            sets: vec!["request_memory"],
        };
        let ours = roost_lines(&g, 0, &my, &machines).unwrap_or_else(|e| e);
        assert_ne!(&ours, theirs, "{name}: roost and HTCondor now agree");
        let shown = &ours;
        assert!(
            shown.contains(roost_does),
            "{name}: expected roost to say '{roost_does}', got: {shown}"
        );
    }
}
