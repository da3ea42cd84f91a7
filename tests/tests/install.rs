//! Installing roost: `--version` on every program, the crates' binaries as
//! `cargo install --path CRATE` installs them, the systemd units (checked
//! by `systemd-analyze verify`, and their command lines run with `--help`
//! against the shipped config files), shell completions and man pages.

use roost_tests::{ensure_built, require, workspace};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PROGRAMS: &[&str] = &[
    "roost",
    "roost-matchmaker",
    "roost-schedd",
    "roost-ownerd",
    "roost-starter",
];

fn run(exe: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("roost-install-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_program_answers_version() {
    let bin = ensure_built();
    let version = env!("CARGO_PKG_VERSION");
    for p in PROGRAMS {
        let o = run(&bin.join(p), &["--version"]);
        assert!(o.status.success(), "{p} --version: {}", text(&o.stderr));
        assert_eq!(text(&o.stdout), format!("{p} {version}\n"));
    }
}

/// `cargo install --path CRATE` installs every bin target of the crate:
/// these are the programs each crate must have.
#[test]
fn each_crate_installs_its_programs() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .current_dir(workspace())
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bins = |dir: &str| -> Vec<String> {
        let manifest = workspace().join(dir).join("Cargo.toml");
        let pkg = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| Path::new(p["manifest_path"].as_str().unwrap()) == manifest)
            .unwrap_or_else(|| panic!("no package in {dir}"));
        let mut v: Vec<String> = pkg["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(bins("cli"), ["roost"]);
    assert_eq!(bins("matchmaker"), ["roost-matchmaker"]);
    assert_eq!(bins("shadow"), ["roost-schedd"]);
    assert_eq!(bins("starter"), ["roost-ownerd", "roost-starter"]);
}

/// The units' `ExecStart=` lines.
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart= line");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn systemd_units_verify_and_name_existing_flags() {
    let bin = ensure_built();
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    require(
        "systemd-analyze (Debian package systemd)",
        analyze.is_ok_and(|o| o.status.success()),
    );
    let d = scratch("units");
    let units = workspace().join("dist/systemd");
    for (unit, program) in [
        ("roost-matchmaker.service", "roost-matchmaker"),
        ("roost-schedd.service", "roost-schedd"),
        ("roost-ownerd.service", "roost-ownerd"),
    ] {
        let text_of = std::fs::read_to_string(units.join(unit)).unwrap();
        let argv = exec_start(&text_of);
        assert_eq!(argv[0], format!("/usr/local/bin/{program}"), "{unit}");
        // The unit as installed from this build.
        let here = text_of.replace("/usr/local/bin/", &format!("{}/", bin.display()));
        let f = d.join(unit);
        std::fs::write(&f, here).unwrap();
        let o = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "systemd-analyze verify {unit}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        // Its command line, with the shipped config file, is accepted.
        let shipped = workspace().join(format!("dist/config/{program}.toml"));
        let args: Vec<String> = argv[1..]
            .iter()
            .map(|a| {
                if a.ends_with(&format!("{program}.toml")) {
                    shipped.display().to_string()
                } else {
                    a.clone()
                }
            })
            .chain(["--help".to_string()])
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&bin.join(program), &args);
        assert!(
            o.status.success(),
            "{unit}: {program} {args:?}: {}",
            text(&o.stderr)
        );
        assert!(text(&o.stdout).contains("--config <FILE>"), "{unit}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_config_file_sets_flags_and_a_flag_beats_it() {
    let bin = ensure_built();
    let d = scratch("config");
    // A valid setting reaches the daemon: its check of the value speaks.
    let cfg = d.join("mm.toml");
    std::fs::write(
        &cfg,
        "pki = \"/nonexistent\"\nname = \"cm\"\nlisten = \"127.0.0.1:0\"\ncycle_secs = -1\n",
    )
    .unwrap();
    let mm = bin.join("roost-matchmaker");
    let o = run(&mm, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("--cycle-secs must be a positive number of seconds, not -1"),
        "{}",
        text(&o.stderr)
    );
    // The flag wins over the file: now the certificates are what is missing.
    let o = run(
        &mm,
        &["--config", cfg.to_str().unwrap(), "--cycle-secs", "2"],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.contains("loading the certificate of `cm` from /nonexistent"),
        "{e}"
    );
    // A wrong key is named, with the file.
    std::fs::write(&cfg, "cycle_sec = 2\n").unwrap();
    let o = run(&mm, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).starts_with(&format!(
            "roost-matchmaker: {}: unknown key 'cycle_sec' (expected one of: pki, name, listen, cycle_secs,",
            cfg.display()
        )),
        "{}",
        text(&o.stderr)
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn completions_and_man_pages_are_generated_from_the_definitions() {
    let bin = ensure_built();
    let roost = bin.join("roost");
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&roost, &["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", text(&o.stderr));
        let script = text(&o.stdout);
        // fish spells flags `-l dry-run`.
        for word in ["submit", "dry-run", "pool", "completions"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let bash = text(&run(&roost, &["completions", "bash"]).stdout);
    let d = scratch("man");
    let f = d.join("roost.bash");
    std::fs::write(&f, &bash).unwrap();
    let o = Command::new("bash").arg("-n").arg(&f).output().unwrap();
    assert!(o.status.success(), "bash -n: {}", text(&o.stderr));
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p roost", f.display()))
        .output()
        .unwrap();
    assert!(text(&o.stdout).contains("roost"), "{}", text(&o.stderr));

    let out = d.join("man1");
    let o = Command::new(&roost)
        .args(["man", "--out", out.to_str().unwrap()])
        .env("ROOST_BIN_DIR", &bin)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let listed = text(&o.stdout);
    for (page, must) in [
        ("roost.1", "submit"),
        ("roost-submit.1", "dry\\-run"),
        ("roost-pool-up.1", "idle\\-secs"),
        ("roost-completions.1", "fish"),
        ("roost-matchmaker.1", "cycle\\-secs"),
        ("roost-schedd.1", "claim\\-timeout\\-secs"),
        ("roost-ownerd.1", "check\\-policy"),
        ("roost-starter.1", "scratch"),
    ] {
        let p = out.join(page);
        let body = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            body.starts_with(".ie \\n(.g .ds Aq \\(aq") || body.contains(".TH "),
            "{page}"
        );
        assert!(body.contains(must), "{page} lacks {must}");
        assert!(listed.contains(&p.display().to_string()), "{listed}");
    }
    // Without the daemons, roost's pages are written and the rest named.
    let o = Command::new(&roost)
        .args(["man", "--out", d.join("partial").to_str().unwrap()])
        .env("ROOST_BIN_DIR", &d)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(d.join("partial/roost-submit.1").is_file());
    assert!(
        text(&o.stderr).contains(&format!(
            "roost: cannot run {}/roost-ownerd for its man page",
            d.display()
        )),
        "{}",
        text(&o.stderr)
    );
    std::fs::remove_dir_all(&d).unwrap();
}
