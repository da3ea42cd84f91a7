//! `roost-ownerd --check-policy FILE` against the real daemon's start-up:
//! a bad policy gets the same message from both (one code path), a good
//! one gets the report.

use std::path::Path;
use std::process::{Command, Output};

fn ownerd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roost-ownerd"))
        .args(args)
        .output()
        .expect("running roost-ownerd")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The daemon as an administrator starts it, with `policy`; it stops at
/// the policy, before the certificates (which do not exist) are read.
fn daemon_with(policy: &Path, dir: &Path) -> Output {
    ownerd(&[
        "--pki",
        dir.join("no-pki").to_str().unwrap(),
        "--name",
        "exec1",
        "--dir",
        dir.to_str().unwrap(),
        "--matchmaker",
        "127.0.0.1:9",
        "--matchmaker-name",
        "cm",
        "--policy",
        policy.to_str().unwrap(),
    ])
}

#[test]
fn a_bad_policy_gets_the_same_message_from_the_check_and_from_the_daemon() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("unknown-key.toml", "strat = \"KeyboardIdle > 60\"\n"),
        ("bad-expr.toml", "suspend = \"KeyboardIdle < \"\n"),
        ("not-toml.toml", "start = \n"),
        ("bad-attr.toml", "[attributes]\n\"2x\" = 1\n"),
    ];
    for (name, text) in cases {
        let file = d.path().join(name);
        std::fs::write(&file, text).unwrap();
        let check = ownerd(&["--check-policy", file.to_str().unwrap()]);
        let real = daemon_with(&file, d.path());
        assert_eq!(check.status.code(), Some(1), "{name}: {}", stderr(&check));
        assert_eq!(real.status.code(), Some(1), "{name}: {}", stderr(&real));
        assert!(check.stdout.is_empty(), "{name}");
        assert_eq!(stderr(&check), stderr(&real), "{name}");
        let msg = stderr(&check);
        assert!(
            msg.starts_with(&format!(
                "roost-ownerd: the owner's policy is not valid: {}:",
                file.display()
            )),
            "{name}: {msg}"
        );
    }
    let e = stderr(&ownerd(&["--check-policy", "/nonexistent/policy.toml"]));
    assert_eq!(
        e,
        stderr(&daemon_with(
            Path::new("/nonexistent/policy.toml"),
            d.path()
        ))
    );
    assert_eq!(
        e,
        "roost-ownerd: cannot read the policy file /nonexistent/policy.toml: \
         No such file or directory (os error 2)\n"
    );
}

#[test]
fn a_good_policy_is_evaluated_against_this_machine_now() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("policy.toml");
    std::fs::write(
        &file,
        "start = \"KeyboardIdle > 120\"\nsuspend = \"KeyboardIdle < 30\"\n",
    )
    .unwrap();
    let activity = d.path().join("activity");
    std::fs::write(&activity, "").unwrap();
    let check = |args: &[&str]| {
        let mut a = vec!["--check-policy", file.to_str().unwrap(), "--name", "desk7"];
        a.extend_from_slice(args);
        a.extend([
            "--activity-file",
            activity.to_str().unwrap(),
            "--devices",
            "false",
        ]);
        let o = ownerd(&a);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    // Just touched: KeyboardIdle is (about) 0, START is false: Owner.
    let r = check(&[]);
    assert!(r.contains("  Machine = \"desk7\"\n"), "{r}");
    let idle: i64 = r
        .lines()
        .find_map(|l| l.trim().strip_prefix("KeyboardIdle = "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(idle < 100, "{r}");
    assert!(
        r.contains("Without a job this machine is Owner/Idle and takes no job now."),
        "{r}"
    );
    let start = r.lines().find(|l| l.starts_with("  start ")).unwrap();
    assert!(
        start.contains(" false ") && start.ends_with("KeyboardIdle > 120"),
        "{start}"
    );

    // Last touched an hour ago: START is true, and a key press suspends.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&activity)
        .unwrap()
        .set_times(
            std::fs::FileTimes::new()
                .set_accessed(hour_ago)
                .set_modified(hour_ago),
        )
        .unwrap();
    let r = check(&[]);
    assert!(
        r.contains("Without a job this machine is Unclaimed/Idle and takes jobs now."),
        "{r}"
    );
    assert!(
        r.contains(
            "If the owner touched the keyboard now, once, while a job runs:\n\
             \x20 +    0s  Claimed/Busy -> Claimed/Suspended: SUSPEND is true; the job's processes are stopped\n\
             \x20 +  301s  Claimed/Suspended -> Claimed/Busy: CONTINUE is true; the job's processes run again\n"
        ),
        "{r}"
    );
}
