//! The pool's TLS: a pool CA, one certificate per daemon and per user, and
//! rustls configurations that require TLS 1.3 and a certificate from the
//! pool CA on both ends.
//!
//! A certificate names its holder in the CN and a SAN DNS name, and its
//! role in the OU (`matchmaker`, `schedd`, `ownerd`, `starter`, `user`).
//! Files live in one directory: `ca.pem`, `ca.key`, `NAME.pem`, `NAME.key`.

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
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    write(&dir.join(format!("{name}.pem")), &cert.pem(), false)?;
    write(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    Ok(())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|source| TlsError::Read {
            path: path.into(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPem { path: path.into() })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A daemon's or user's credentials: the pool CA plus its own cert and key.
#[derive(Clone)]
pub struct Identity {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    pub name: String,
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
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build()?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Identity {
            server: Arc::new(server),
            client: Arc::new(client),
            name: name.into(),
        })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client.clone())
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
}
