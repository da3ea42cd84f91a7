//! `roost pool add-host`, `add-user` and `revoke`: certificates from the
//! pool CA in `DIR/pki`, and the pool's deny list `DIR/pki/deny`.
//!
//! A certificate's role (its OU) decides what its holder may do: `ownerd`
//! for an execute host, `schedd` for a submit host, `matchmaker` for the
//! central manager, `user` for a person using `roost` over TLS. Every daemon
//! re-reads `PKI/deny` when it changes and refuses the certificates it
//! lists from their next handshake (`proto::tls::DenyList`).

use crate::pool::PoolDir;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Roles `roost pool add-host` issues.
pub const HOST_ROLES: &[&str] = &["ownerd", "schedd", "matchmaker"];

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub serial: String,
    pub role: String,
}

/// A name a certificate can carry (a DNS label or dotted name).
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        bail!(
            "`{name}` is not a valid host or user name for a certificate (letters, digits, `-` and `.`)"
        );
    }
    if ["ca", proto::tls::DENY_FILE].contains(&name) {
        bail!("`{name}` is reserved in the pki directory; pick another name");
    }
    Ok(())
}

fn require_ca(pki: &Path) -> Result<()> {
    if !pki.join("ca.key").is_file() || !pki.join("ca.pem").is_file() {
        bail!(
            "{} holds no pool CA (ca.pem and ca.key); make one with `roost pool init --dir DIR`",
            pki.display()
        );
    }
    Ok(())
}

/// Issues `name`'s certificate with `role`, valid for `days` days, into
/// `DIR/pki`. Refuses to replace an existing certificate unless `force`.
pub fn add(
    dir: &PoolDir,
    name: &str,
    role: &str,
    extra_names: &[String],
    days: u32,
    force: bool,
) -> Result<Issued> {
    check_name(name)?;
    if !proto::tls::ROLES.contains(&role) {
        bail!(
            "unknown role `{role}` (one of {})",
            proto::tls::ROLES.join(", ")
        );
    }
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let pki = dir.pki();
    require_ca(&pki)?;
    let cert = pki.join(format!("{name}.pem"));
    if cert.exists() && !force {
        let serial = proto::tls::file_serial(&cert)
            .map(|s| format!("serial {s}"))
            .unwrap_or_else(|e| format!("unreadable: {e}"));
        bail!(
            "{name} already has a certificate ({}, {serial}); pass --force to replace it, and \
             `roost pool revoke {name}` first if the old one must stop working",
            cert.display()
        );
    }
    let serial = proto::tls::issue_valid(
        &pki,
        name,
        role,
        extra_names,
        Some(proto::tls::Validity::days(days)),
    )
    .with_context(|| {
        format!(
            "cannot issue the certificate of {name} ({role}) in {}",
            pki.display()
        )
    })?;
    Ok(Issued {
        key: pki.join(format!("{name}.key")),
        cert,
        serial,
        role: role.into(),
    })
}

/// Puts a certificate on the deny list: `what` is a name with a
/// certificate in `DIR/pki` or a serial number. Returns the serial and
/// whether it was new. The file is replaced atomically (a daemon never
/// reads half of it).
pub fn revoke(dir: &PoolDir, what: &str) -> Result<(String, bool)> {
    let pki = dir.pki();
    require_ca(&pki)?;
    let cert = pki.join(format!("{what}.pem"));
    let (serial, label) = if check_name(what).is_ok() && cert.is_file() {
        let s = proto::tls::file_serial(&cert)
            .with_context(|| format!("cannot read the serial number of {}", cert.display()))?;
        (s, what.to_string())
    } else {
        match proto::tls::parse_deny_list(what) {
            Ok(set) if set.len() == 1 => {
                (set.into_iter().next().unwrap_or_default(), String::new())
            }
            _ => bail!(
                "`{what}` is neither a certificate in {} nor a serial number (hex)",
                pki.display()
            ),
        }
    };
    let path = pki.join(proto::tls::DENY_FILE);
    let old = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let listed = proto::tls::parse_deny_list(&old)
        .map_err(|e| anyhow::anyhow!("{}: {e}; fix it before adding to it", path.display()))?;
    if listed.contains(&serial) {
        return Ok((serial, false));
    }
    let mut text = if old.is_empty() {
        "# The pool's deny list: serial numbers of revoked certificates, one a line.\n\
         # Every daemon re-reads it when it changes (`roost pool revoke`).\n"
            .to_string()
    } else {
        old
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if label.is_empty() {
        text.push_str(&format!("{serial}  # revoked at {when}\n"));
    } else {
        text.push_str(&format!("{serial}  # {label}, revoked at {when}\n"));
    }
    let tmp = pki.join(".deny.tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok((serial, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_refuses_bad_names_roles_and_overwrites_and_revoke_lists_serials() {
        let d = tempfile::tempdir().unwrap();
        let pool = PoolDir::new(d.path()).unwrap();
        let e = add(&pool, "exec9", "ownerd", &[], 30, false).unwrap_err();
        assert!(e.to_string().contains("holds no pool CA"), "{e}");
        proto::tls::init_ca(&pool.pki(), "t").unwrap();
        let i = add(&pool, "exec9", "ownerd", &[], 30, false).unwrap();
        assert!(i.cert.is_file() && i.key.is_file());
        assert_eq!(proto::tls::file_serial(&i.cert).unwrap(), i.serial);
        let e = add(&pool, "exec9", "ownerd", &[], 30, false).unwrap_err();
        assert!(e.to_string().contains("already has a certificate"), "{e}");
        let j = add(&pool, "exec9", "ownerd", &[], 30, true).unwrap();
        assert_ne!(i.serial, j.serial);
        for bad in ["", "a/b", "-x", "ca", "deny", "a..b"] {
            assert!(add(&pool, bad, "user", &[], 1, false).is_err(), "{bad}");
        }
        let e = add(&pool, "x", "admin", &[], 1, false).unwrap_err();
        assert!(e.to_string().contains("unknown role `admin`"), "{e}");

        assert_eq!(revoke(&pool, "exec9").unwrap(), (j.serial.clone(), true));
        assert_eq!(revoke(&pool, "exec9").unwrap(), (j.serial.clone(), false));
        assert_eq!(revoke(&pool, "0A:0b").unwrap(), ("a0b".to_string(), true));
        let e = revoke(&pool, "nobody-here").unwrap_err();
        assert!(e.to_string().contains("neither a certificate"), "{e}");
        let text = std::fs::read_to_string(pool.pki().join("deny")).unwrap();
        let set = proto::tls::parse_deny_list(&text).unwrap();
        assert!(set.contains(&j.serial) && set.contains("a0b") && set.len() == 2);
        assert!(text.contains("# exec9, revoked at"), "{text}");
    }
}
