//! A pool directory: its layout, its `pool.toml`, and `roost pool init`
//! (the pool CA and every certificate).
//!
//! ```text
//! DIR/pool.toml     names and addresses
//! DIR/pki/          ca.pem ca.key, cm, submit, exec1..N, user (.pem/.key),
//!                   web-token (the pool page's and /metrics' token, 0600)
//! DIR/cm/           matchmaker.log matchmaker.pid
//! DIR/submit/       schedd.sock queue.db schedd.log schedd.pid
//! DIR/execN/        activity ownerd.log ownerd.pid scratch/
//! ```

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// The matchmaker's host name in a personal pool.
pub const MATCHMAKER: &str = "cm";
/// The submit host's name in a personal pool.
pub const SCHEDD: &str = "submit";
/// The certificate the CLI uses for TLS (e.g. `roost status`).
pub const USER: &str = "user";

/// `DIR/pool.toml`. Unknown keys are kept out of the way (not rejected) so a
/// test harness can record more about its hosts in the same file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub matchmaker: Endpoint,
    pub schedd: Endpoint,
    #[serde(default)]
    pub exec: Vec<ExecHost>,
}

/// A daemon that listens: its name (also its certificate's) and `IP:PORT`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecHost {
    pub name: String,
}

impl PoolConfig {
    pub fn exec_names(&self) -> Vec<&str> {
        self.exec.iter().map(|e| e.name.as_str()).collect()
    }
}

/// Where a pool's files are.
#[derive(Debug, Clone)]
pub struct PoolDir {
    root: PathBuf,
}

impl PoolDir {
    /// `root` is made absolute and canonical (symlinks and `..` resolved as
    /// far as it exists), so the daemons, started elsewhere, get absolute
    /// paths and every spelling of one pool gives the same paths.
    pub fn new(root: &Path) -> Result<PoolDir> {
        Ok(PoolDir {
            root: resolve(root)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("pool.toml")
    }
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.root.join(host)
    }
    /// The schedd's CLI socket.
    pub fn schedd_sock(&self) -> PathBuf {
        self.host_dir(SCHEDD).join("schedd.sock")
    }
    pub fn activity_file(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("activity")
    }

    pub fn exists(&self) -> bool {
        self.config_path().is_file()
    }

    pub fn load(&self) -> Result<PoolConfig> {
        let path = self.config_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{} holds no pool (no pool.toml); make one with `roost pool up --dir {}`",
                self.root.display(),
                self.root.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid pool.toml", path.display()))
    }

    /// Writes `pool.toml` atomically (a reader never sees half a file).
    pub fn save(&self, cfg: &PoolConfig) -> Result<()> {
        let path = self.config_path();
        let text = format!(
            "# A roost pool: host names (also their certificates' names) and addresses.\n\
             # Written by `roost pool init`; each host's files are in DIR/NAME/.\n\n{}",
            toml::to_string(cfg).context("cannot encode pool.toml")?
        );
        let tmp = self.root.join(".pool.toml.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    }
}

/// `path` made absolute, with its longest existing ancestor canonicalized
/// and the rest (which does not exist yet) normalized lexically.
fn resolve(path: &Path) -> Result<PathBuf> {
    use std::path::Component;
    let abs = std::path::absolute(path)
        .with_context(|| format!("cannot make {} an absolute path", path.display()))?;
    let mut base = abs.as_path();
    let mut rest = Vec::new();
    let canon = loop {
        match base.canonicalize() {
            Ok(c) => break c,
            Err(_) => match (base.parent(), base.components().next_back()) {
                (Some(parent), Some(last)) => {
                    rest.push(last.as_os_str().to_os_string());
                    base = parent;
                }
                // The root itself: nothing further to resolve.
                _ => break base.to_path_buf(),
            },
        }
    };
    let mut out = canon;
    for name in rest.iter().rev() {
        match Path::new(name).components().next() {
            Some(Component::ParentDir) => {
                out.pop();
            }
            Some(Component::CurDir) | None => {}
            _ => out.push(name),
        }
    }
    Ok(out)
}

/// Picks `n` distinct free TCP ports on 127.0.0.1 (held together while
/// picking, so they differ).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("cannot bind a free port on 127.0.0.1"))
        .collect::<Result<_>>()?;
    held.iter()
        .map(|l| Ok(l.local_addr().context("cannot read a bound port")?.port()))
        .collect()
}

/// Whether something already listens on (or holds) `addr`.
pub fn addr_in_use(addr: &str) -> bool {
    TcpListener::bind(addr).is_err()
}

fn exec_name(i: u32) -> String {
    format!("exec{i}")
}

/// `roost pool init`: a new CA, certificates for `cm`, `submit`,
/// `exec1..hosts` and `user`, the host directories and `pool.toml`.
pub fn init(dir: &PoolDir, hosts: u32, force: bool) -> Result<PoolConfig> {
    if dir.exists() && !force {
        bail!(
            "{} already holds a pool (pool.toml); use it with `roost pool up --dir {}`, or pass \
             --force to make a new CA and certificates",
            dir.root().display(),
            dir.root().display()
        );
    }
    std::fs::create_dir_all(dir.root())
        .with_context(|| format!("cannot create {}", dir.root().display()))?;
    let pki = dir.pki();
    let pool_name = dir
        .root()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "roost".into());
    proto::tls::init_ca(&pki, &pool_name)
        .with_context(|| format!("cannot make the pool CA in {}", pki.display()))?;
    issue(&pki, MATCHMAKER, "matchmaker")?;
    issue(&pki, SCHEDD, "schedd")?;
    issue(&pki, USER, "user")?;
    proto::web::make_token(&pki)
        .with_context(|| format!("cannot make the web token in {}", pki.display()))?;
    let ports = free_ports(2)?;
    let mut cfg = PoolConfig {
        matchmaker: Endpoint {
            name: MATCHMAKER.into(),
            addr: format!("127.0.0.1:{}", ports[0]),
        },
        schedd: Endpoint {
            name: SCHEDD.into(),
            addr: format!("127.0.0.1:{}", ports[1]),
        },
        exec: Vec::new(),
    };
    add_hosts(dir, &mut cfg, hosts)?;
    for host in [MATCHMAKER, SCHEDD] {
        make_dir(&dir.host_dir(host))?;
    }
    dir.save(&cfg)?;
    Ok(cfg)
}

/// Adds execute hosts (certificates and directories) until there are `hosts`.
/// Does not save `pool.toml`.
pub fn add_hosts(dir: &PoolDir, cfg: &mut PoolConfig, hosts: u32) -> Result<()> {
    let pki = dir.pki();
    for i in 1..=hosts {
        let name = exec_name(i);
        if cfg.exec.iter().any(|e| e.name == name) {
            continue;
        }
        issue(&pki, &name, "ownerd")?;
        make_dir(&dir.host_dir(&name))?;
        cfg.exec.push(ExecHost { name });
    }
    Ok(())
}

fn issue(pki: &Path, name: &str, role: &str) -> Result<()> {
    proto::tls::issue(pki, name, role, &[]).with_context(|| {
        format!(
            "cannot issue the certificate for {name} ({role}) in {}",
            pki.display()
        )
    })
}

fn make_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_keeps_harness_keys_harmless() {
        let cfg = PoolConfig {
            matchmaker: Endpoint {
                name: "cm".into(),
                addr: "127.0.0.1:1".into(),
            },
            schedd: Endpoint {
                name: "submit".into(),
                addr: "127.0.0.1:2".into(),
            },
            exec: vec![ExecHost {
                name: "exec1".into(),
            }],
        };
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<PoolConfig>(&text).unwrap(), cfg);
        let with_extra = format!("{text}\n[netns]\ncm = \"ns-cm\"\n");
        assert_eq!(toml::from_str::<PoolConfig>(&with_extra).unwrap(), cfg);
    }

    #[test]
    fn every_spelling_of_a_pool_gives_the_same_paths() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("a")).unwrap();
        std::os::unix::fs::symlink(real.join("a"), real.join("link")).unwrap();
        let want = real.join("a").join("pool");
        for spelling in [
            "a/pool",
            "link/pool",
            "a/../a/pool",
            "a/x/../pool",
            "./a/./pool",
        ] {
            let got = PoolDir::new(&real.join(spelling)).unwrap();
            assert_eq!(got.root(), want, "{spelling}");
        }
        std::fs::create_dir(&want).unwrap();
        assert_eq!(PoolDir::new(&real.join("link/pool")).unwrap().root(), want);
    }

    #[test]
    fn free_ports_differ() {
        let p = free_ports(3).unwrap();
        assert!(p[0] != p[1] && p[1] != p[2] && p[0] != p[2], "{p:?}");
    }

    #[test]
    fn load_without_pool_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let pool = PoolDir::new(d.path()).unwrap();
        let e = pool.load().unwrap_err().to_string();
        assert!(
            e.contains("holds no pool") && e.contains("roost pool up --dir"),
            "{e}"
        );
    }
}
