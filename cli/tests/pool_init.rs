//! `roost pool init` run as a user runs it: the files it leaves and what
//! they hold.

use cli::pool::{PoolConfig, PoolDir};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn roost() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roost"));
    c.env_remove("ROOST_POOL")
        .env_remove("ROOST_SCHEDD_SOCK")
        .env_remove("ROOST_MATCHMAKER");
    c
}

#[test]
fn pool_init_makes_certificates_and_pool_toml() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let out = roost()
        .args(["pool", "init", "--hosts", "3", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.starts_with(&format!("made a pool in {}", dir.display())),
        "{said}"
    );
    assert!(said.contains("execute hosts exec1, exec2, exec3"), "{said}");

    let pki = dir.join("pki");
    for name in ["cm", "submit", "exec1", "exec2", "exec3", "user"] {
        proto::tls::Identity::load(&pki, name)
            .unwrap_or_else(|e| panic!("certificate {name} does not load: {e}"));
        let mode = std::fs::metadata(pki.join(format!("{name}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}.key is readable by others");
    }
    assert!(!pki.join("exec4.pem").exists());

    let cfg: PoolConfig =
        toml::from_str(&std::fs::read_to_string(dir.join("pool.toml")).unwrap()).unwrap();
    assert_eq!(cfg, PoolDir::new(&dir).unwrap().load().unwrap());
    assert_eq!(
        (cfg.matchmaker.name.as_str(), cfg.schedd.name.as_str()),
        ("cm", "submit")
    );
    assert_eq!(cfg.exec_names(), ["exec1", "exec2", "exec3"]);
    for addr in [&cfg.matchmaker.addr, &cfg.schedd.addr] {
        let sa: std::net::SocketAddr = addr.parse().unwrap();
        assert!(sa.ip().is_loopback() && sa.port() != 0, "{addr}");
    }
    assert_ne!(cfg.matchmaker.addr, cfg.schedd.addr);
    for host in ["cm", "submit", "exec1", "exec2", "exec3"] {
        assert!(dir.join(host).is_dir(), "no directory for {host}");
    }

    // A second init keeps the pool unless told otherwise.
    let again = roost()
        .args(["pool", "init", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8(again.stderr).unwrap();
    assert!(
        err.contains("already holds a pool") && err.contains("--force"),
        "{err}"
    );
    let ca_before = std::fs::read(pki.join("ca.pem")).unwrap();
    let forced = roost()
        .args(["pool", "init", "--force", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(forced.status.success());
    assert_ne!(
        std::fs::read(pki.join("ca.pem")).unwrap(),
        ca_before,
        "--force made no new CA"
    );
}

#[test]
fn pool_init_uses_roost_pool_and_touch_marks_the_owner_active() {
    let tmp = tempfile::tempdir().unwrap();
    let out = roost()
        .args(["pool", "init"])
        .env("ROOST_POOL", tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let act = tmp.path().join("exec2/activity");
    assert!(!act.exists());
    let out = roost()
        .args(["pool", "touch", "exec2", "--pool"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let age = std::fs::metadata(&act)
        .unwrap()
        .modified()
        .unwrap()
        .elapsed()
        .unwrap_or_default();
    assert!(age.as_secs() < 5);
    let out = roost()
        .args(["pool", "touch", "cm", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cm is not an execute host"));
}

#[test]
fn commands_without_a_pool_say_what_to_do() {
    let out = roost().args(["q"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "roost: no pool selected: set ROOST_POOL=DIR or pass --pool DIR (start a pool with `roost pool up --dir DIR`)\n"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = roost()
        .args(["q"])
        .env("ROOST_POOL", tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!(
            "roost: no schedd at {0}/submit/schedd.sock — is the pool up? try `roost pool up --dir {0}`\n",
            tmp.path().display()
        )
    );
    let out = roost()
        .args(["pool", "down", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "pool down of no pool must succeed");
}

#[test]
fn pool_up_names_missing_daemons() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("bin");
    std::fs::create_dir(&empty).unwrap();
    let out = roost()
        .args(["pool", "up", "--dir"])
        .arg(tmp.path().join("p"))
        .env("ROOST_BIN_DIR", &empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("roost-matchmaker, roost-schedd, roost-ownerd, roost-starter, libroost_shim.so not found in"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
