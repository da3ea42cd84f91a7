//! The README's main command: `roost demo` brings up a personal pool on
//! this machine, runs a job, makes the owner of its host come back, and the
//! job is checkpointed, resumed on the other host and finishes with output
//! byte-identical to a run that never moved.

use roost_tests::{ensure_built, require};
use std::process::Command;

#[test]
fn the_readme_demo_passes() {
    require(
        "python3 at /usr/bin/python3",
        std::path::Path::new("/usr/bin/python3").exists(),
    );
    let bins = ensure_built();
    let out = Command::new(bins.join("roost"))
        .arg("demo")
        .output()
        .expect("running roost demo");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "roost demo failed:\n{text}");
    for want in [
        "suspended",
        "checkpointed",
        "vacated",
        "resumed",
        "results.txt is byte-identical to the reference's",
        "sweep.out is byte-identical to the reference's",
        "demo passed",
    ] {
        assert!(
            text.contains(want),
            "`{want}` missing from the demo's output:\n{text}"
        );
    }
    // The job ran on two different hosts.
    let hosts: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" executing "))
        .filter_map(|l| l.split("host=").nth(1))
        .collect();
    assert!(
        hosts.len() >= 2 && hosts[0] != hosts[hosts.len() - 1],
        "the job did not move: {hosts:?}\n{text}"
    );
}
