//! The pool's TLS: a pool CA, one certificate per daemon and per user, and
//! rustls configurations that require TLS 1.3 and a certificate from the
//! pool CA on both ends.
//!
//! A certificate names its holder in the CN and a SAN DNS name, and its
//! role in the OU (`matchmaker`, `schedd`, `ownerd`, `starter`, `user`).
//! Files live in one directory: `ca.pem`, `ca.key`, `NAME.pem`, `NAME.key`,
//! and the pool's deny list `deny` ([`DenyList`]): serial numbers of revoked
//! certificates, checked in every handshake on both ends and re-read when
//! the file changes, so a revocation needs no restart.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate or key")]
    NoPem { path: PathBuf },
    #[error("certificate generation failed")]
    Gen(#[from] rcgen::Error),
    #[error("TLS configuration rejected")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier could not be built")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("`{0}` is not a valid host name for TLS")]
    Name(String),
}

/// What a peer's certificate says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub name: String,
    pub role: String,
}

/// Roles a certificate can carry.
pub const ROLES: &[&str] = &["matchmaker", "schedd", "ownerd", "starter", "user"];

fn write(path: &Path, data: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(|source| TlsError::Write {
        path: path.into(),
        source,
    })?;
    f.write_all(data.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|source| TlsError::Write {
            path: path.into(),
            source,
        })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

/// Creates a new pool CA in `dir` (overwriting any there).
pub fn init_ca(dir: &Path, pool_name: &str) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.into(),
        source,
    })?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("roost pool CA {pool_name}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&dir.join("ca.pem"), &cert.pem(), false)?;
    write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
    Ok(())
}

/// Issues a certificate for `name` with `role`, signed by the CA in `dir`.
/// `extra_names` are further SAN DNS names or IP addresses.
pub fn issue(dir: &Path, name: &str, role: &str, extra_names: &[String]) -> Result<(), TlsError> {
    issue_valid(dir, name, role, extra_names, None).map(|_| ())
}

/// When a certificate is valid (both ends inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: std::time::SystemTime,
    pub not_after: std::time::SystemTime,
}

impl Validity {
    /// From now for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = std::time::SystemTime::now();
        Validity {
            not_before: now,
            not_after: now + std::time::Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

/// Like [`issue`], valid for `validity` (`None`: without an end, like the
/// CA); returns the new certificate's serial number ([`serial_hex`]).
pub fn issue_valid(
    dir: &Path,
    name: &str,
    role: &str,
    extra_names: &[String],
    validity: Option<Validity>,
) -> Result<String, TlsError> {
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
    let ca_params = CertificateParams::from_ca_cert_pem(&read(&dir.join("ca.pem"))?)?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut sans = vec![name.to_string()];
    sans.extend(extra_names.iter().cloned());
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role);
    params.is_ca = IsCa::NoCa;
    if let Some(v) = validity {
        params.not_before = v.not_before.into();
        params.not_after = v.not_after.into();
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    write(&dir.join(format!("{name}.pem")), &cert.pem(), false)?;
    write(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    serial_hex(cert.der()).ok_or_else(|| TlsError::NoPem {
        path: dir.join(format!("{name}.pem")),
    })
}

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let v: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: path.into(),
            source,
        })?;
    if v.is_empty() {
        return Err(TlsError::NoPem { path: path.into() });
    }
    Ok(v)
}

pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|source| TlsError::Read {
            path: path.into(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPem { path: path.into() })
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A daemon's or user's credentials: the pool CA plus its own cert and key.
#[derive(Clone)]
pub struct Identity {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    pub name: String,
    /// The deny list both configurations check (`dir/deny`); a daemon
    /// with long-lived connections checks its peers against it again.
    pub deny: Arc<DenyList>,
}

impl Identity {
    /// Loads `dir/ca.pem`, `dir/NAME.pem`, `dir/NAME.key`.
    pub fn load(dir: &Path, name: &str) -> Result<Identity, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in certs(&dir.join("ca.pem"))? {
            roots.add(c)?;
        }
        let roots = Arc::new(roots);
        let chain = certs(&dir.join(format!("{name}.pem")))?;
        let key = private_key(&dir.join(format!("{name}.key")))?;
        let deny = Arc::new(DenyList::new(dir.join(DENY_FILE)));
        let verifier = Arc::new(DenyingClientVerifier {
            inner: WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()?,
            deny: deny.clone(),
        });
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        // No session resumption: a resumed handshake skips certificate
        // verification, so a revoked or expired peer would get back in.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let server_verifier = Arc::new(DenyingServerVerifier {
            inner: rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()?,
            deny: deny.clone(),
        });
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(chain, key)?;
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Identity {
            server: Arc::new(server),
            client: Arc::new(client),
            name: name.into(),
            deny,
        })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client.clone())
    }
}

/// The deny list's file name in a pki directory.
pub const DENY_FILE: &str = "deny";

/// A certificate's serial number as lowercase hex without leading zeros
/// (the form the deny list uses).
pub fn serial_hex(cert: &[u8]) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(normalize_serial(&x.tbs_certificate.raw_serial_as_string()).unwrap_or_default())
}

/// The serial number of the certificate in PEM file `path`.
pub fn file_serial(path: &Path) -> Result<String, TlsError> {
    let c = certs(path)?;
    serial_hex(c[0].as_ref()).ok_or_else(|| TlsError::NoPem { path: path.into() })
}

/// `3F:0a:01` or `3f0a01` → `3f0a01`; `None` unless hex digits (and colons).
fn normalize_serial(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let t = hex.trim_start_matches('0').to_ascii_lowercase();
    Some(if t.is_empty() { "0".into() } else { t })
}

/// Parses a deny list: one serial number (hex, colons allowed) per line,
/// `#` starts a comment. An error names the line.
pub fn parse_deny_list(text: &str) -> Result<std::collections::HashSet<String>, String> {
    let mut out = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        match normalize_serial(entry) {
            Some(s) => {
                out.insert(s);
            }
            None => {
                return Err(format!(
                    "line {}: `{entry}` is not a certificate serial number (hex digits, colons allowed)",
                    i + 1
                ));
            }
        }
    }
    Ok(out)
}

/// The pool's deny list, `PKI/deny`: certificates (by serial number) that
/// no daemon accepts, whatever their signature says. The file is checked
/// at every handshake and re-read when its modification time, size or
/// inode changed. A file that does not parse leaves the previous list in
/// force (and says so in the log); a missing file denies nothing.
#[derive(Debug)]
pub struct DenyList {
    path: PathBuf,
    state: std::sync::Mutex<DenyState>,
}

#[derive(Debug, Default)]
struct DenyState {
    stamp: Option<(std::time::SystemTime, u64, u64)>,
    serials: std::collections::HashSet<String>,
}

impl DenyList {
    pub fn new(path: PathBuf) -> DenyList {
        DenyList {
            path,
            state: std::sync::Mutex::new(DenyState::default()),
        }
    }

    fn refresh(&self, st: &mut DenyState) {
        use std::os::unix::fs::MetadataExt;
        let stamp = std::fs::metadata(&self.path).ok().map(|m| {
            (
                m.modified().unwrap_or(std::time::UNIX_EPOCH),
                m.len(),
                m.ino(),
            )
        });
        if stamp == st.stamp {
            return;
        }
        st.stamp = stamp;
        if stamp.is_none() {
            if !st.serials.is_empty() {
                tracing::info!(file = %self.path.display(), "deny list removed; no certificate is denied");
            }
            st.serials.clear();
            return;
        }
        match std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|t| parse_deny_list(&t))
        {
            Ok(serials) => {
                tracing::info!(file = %self.path.display(), entries = serials.len(), "deny list loaded");
                st.serials = serials;
            }
            Err(e) => tracing::warn!(
                file = %self.path.display(),
                "deny list not loaded ({e}); the previous list ({} entries) stays in force",
                st.serials.len()
            ),
        }
    }

    /// `Err` with the reason when `cert` is on the list.
    pub fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let serial = serial_hex(cert.as_ref()).unwrap_or_default();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut st);
        if !st.serials.contains(&serial) {
            return Ok(());
        }
        let who = peer_identity(cert)
            .map(|p| format!("`{}` (role `{}`)", p.name, p.role))
            .unwrap_or_else(|| "a certificate".into());
        let msg = format!(
            "{who} with serial {serial} is revoked (on the deny list {})",
            self.path.display()
        );
        // Who and why here; the daemon's own line says which connection
        // (rustls shows the error as `Revoked` and sends that alert).
        tracing::warn!("{msg}");
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked,
        ))
    }
}

/// Logs who a refused certificate names and why, in words (rustls's own
/// error, which the daemon logs too, names neither).
fn explain_refusal(cert: &CertificateDer<'_>, e: &rustls::Error) {
    use rustls::CertificateError as C;
    let who = peer_identity(cert)
        .map(|p| format!("a certificate naming `{}` (role `{}`)", p.name, p.role))
        .unwrap_or_else(|| "a certificate without a name or role".into());
    let why = match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "is not signed by this pool's CA",
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "has expired",
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "is not valid yet"
        }
        _ => "is refused",
    };
    tracing::warn!("{who} {why} ({e})");
}

/// The pool CA's client verification, then the deny list.
#[derive(Debug)]
pub(crate) struct DenyingClientVerifier {
    pub(crate) inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    pub(crate) deny: Arc<DenyList>,
}

impl rustls::server::danger::ClientCertVerifier for DenyingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| explain_refusal(end_entity, e))?;
        self.deny.check(end_entity)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The pool CA's server verification, then the deny list.
#[derive(Debug)]
struct DenyingServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    deny: Arc<DenyList>,
}

impl rustls::client::danger::ServerCertVerifier for DenyingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| explain_refusal(end_entity, e))?;
        self.deny.check(end_entity)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS server name for a pool host name.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::Name(name.into()))
}

/// Reads name (CN) and role (OU) from a peer's leaf certificate.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = x.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let role = subject
        .iter_organizational_unit()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(PeerIdentity { name, role })
}

/// The peer identity of an accepted server-side stream.
pub fn server_peer<IO>(s: &tokio_rustls::server::TlsStream<IO>) -> Option<PeerIdentity> {
    let (_, conn) = s.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(peer_identity)
}

/// The peer identity of a client-side stream.
pub fn client_peer<IO>(s: &tokio_rustls::client::TlsStream<IO>) -> Option<PeerIdentity> {
    let (_, conn) = s.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(peer_identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn mutual_tls_handshake_and_roles() {
        let d = std::env::temp_dir().join(format!("roost-tls-{}", std::process::id()));
        init_ca(&d, "test").unwrap();
        issue(&d, "schedd-a", "schedd", &[]).unwrap();
        issue(&d, "exec1", "ownerd", &[]).unwrap();
        let srv = Identity::load(&d, "schedd-a").unwrap();
        let cli = Identity::load(&d, "exec1").unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acc = srv.acceptor();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut t = acc.accept(s).await.unwrap();
            let who = server_peer(&t).unwrap();
            let mut b = [0u8; 5];
            t.read_exact(&mut b).await.unwrap();
            t.write_all(b"world").await.unwrap();
            t.flush().await.unwrap();
            who
        });
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut t = cli
            .connector()
            .connect(server_name("schedd-a").unwrap(), s)
            .await
            .unwrap();
        assert_eq!(
            client_peer(&t).unwrap(),
            PeerIdentity {
                name: "schedd-a".into(),
                role: "schedd".into()
            }
        );
        t.write_all(b"hello").await.unwrap();
        t.flush().await.unwrap();
        let mut b = [0u8; 5];
        t.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"world");
        assert_eq!(
            server.await.unwrap(),
            PeerIdentity {
                name: "exec1".into(),
                role: "ownerd".into()
            }
        );

        // A certificate from another CA is refused.
        let other = d.join("other");
        init_ca(&other, "other").unwrap();
        issue(&other, "intruder", "ownerd", &[]).unwrap();
        let bad = Identity::load(&other, "intruder").unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acc = srv.acceptor();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            acc.accept(s).await.is_err()
        });
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let r = bad
            .connector()
            .connect(server_name("schedd-a").unwrap(), s)
            .await;
        // The client refuses the server (unknown CA) or the server the client.
        let refused_server_side = server.await.unwrap();
        assert!(r.is_err() || refused_server_side);
        std::fs::remove_dir_all(&d).ok();
    }

    /// One handshake of `client` against `server`: the server's error, if any.
    async fn handshake(server: &Identity, client: &Identity, name: &str) -> Result<(), String> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acc = server.acceptor();
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut t = acc.accept(s).await.map_err(|e| e.to_string())?;
            t.write_all(b"x").await.map_err(|e| e.to_string())?;
            t.flush().await.map_err(|e| e.to_string())
        });
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let c = client
            .connector()
            .connect(server_name(name).unwrap(), s)
            .await;
        if let Ok(mut t) = c {
            let mut b = [0u8; 1];
            let _ = t.read_exact(&mut b).await;
        }
        srv.await.unwrap()
    }

    #[tokio::test]
    async fn deny_list_and_expiry_refuse_certificates_without_a_restart() {
        let d = tempfile_dir("deny");
        init_ca(&d, "test").unwrap();
        issue(&d, "cm", "matchmaker", &[]).unwrap();
        let serial = issue_valid(&d, "exec1", "ownerd", &[], Some(Validity::days(30))).unwrap();
        assert_eq!(file_serial(&d.join("exec1.pem")).unwrap(), serial);
        let now = std::time::SystemTime::now();
        issue_valid(
            &d,
            "old",
            "ownerd",
            &[],
            Some(Validity {
                not_before: now - std::time::Duration::from_secs(10 * 86_400),
                not_after: now - std::time::Duration::from_secs(86_400),
            }),
        )
        .unwrap();
        let srv = Identity::load(&d, "cm").unwrap();
        let exec1 = Identity::load(&d, "exec1").unwrap();
        let old = Identity::load(&d, "old").unwrap();
        handshake(&srv, &exec1, "cm").await.unwrap();
        let e = handshake(&srv, &old, "cm").await.unwrap_err();
        assert!(e.contains("expired"), "{e}");

        // Revoked by serial, in the form `openssl x509 -serial` prints too.
        let upper: Vec<String> = serial
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        std::fs::write(
            d.join(DENY_FILE),
            format!("# revoked\n{}  # exec1\n", upper.join(":")),
        )
        .unwrap();
        let e = handshake(&srv, &exec1, "cm").await.unwrap_err();
        assert!(e.contains("Revoked"), "{e}");
        // The client end checks too: exec1 as a server is refused by cm.
        let e2 = handshake(&exec1, &srv, "exec1").await;
        assert!(e2.is_err(), "a revoked server was accepted");
        // A broken list keeps the previous one in force.
        std::fs::write(d.join(DENY_FILE), "not-hex\n").unwrap();
        assert!(handshake(&srv, &exec1, "cm").await.is_err());
        std::fs::remove_file(d.join(DENY_FILE)).unwrap();
        handshake(&srv, &exec1, "cm").await.unwrap();
        std::fs::remove_dir_all(&d).ok();
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("roost-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn deny_list_lines() {
        let l = parse_deny_list("# c\n\n 0A:ff # x\n00ab\n").unwrap();
        assert!(
            l.contains("aff") && l.contains("ab") && l.len() == 2,
            "{l:?}"
        );
        let e = parse_deny_list("ab\nexec1\n").unwrap_err();
        assert!(e.starts_with("line 2: `exec1`"), "{e}");
    }
}
