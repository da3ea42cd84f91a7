//! Talking to the schedd: one request and one reply per connection over its
//! 0600 Unix socket, in `proto::frame`s.

use proto::ProtoError;
use proto::cli::{CliReply, CliRequest};
use proto::frame::{MAX_FRAME, read_frame, write_frame};
use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the schedd may take to answer one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no pool selected: set ROOST_POOL=DIR or pass --pool DIR (start a pool with `roost pool up --dir DIR`)"
    )]
    NoPool,
    #[error("no schedd at {} — is the pool up? try `roost pool up --dir {pool}`", sock.display())]
    NoSchedd { sock: PathBuf, pool: String },
    #[error("cannot connect to the schedd at {}", sock.display())]
    Connect {
        sock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the schedd at {} did not answer within {} s", sock.display(), REPLY_TIMEOUT.as_secs())]
    Timeout { sock: PathBuf },
    #[error("talking to the schedd at {} failed", sock.display())]
    Wire {
        sock: PathBuf,
        #[source]
        source: ProtoError,
    },
}

/// The schedd the CLI talks to.
#[derive(Debug, Clone)]
pub struct Schedd {
    sock: PathBuf,
    /// The pool directory to name in "start the pool" hints.
    pool_hint: String,
}

impl Schedd {
    /// `sock` (from `ROOST_SCHEDD_SOCK`) wins; otherwise the pool's
    /// `submit/schedd.sock`.
    pub fn locate(pool: Option<&Path>, sock: Option<&Path>) -> Result<Schedd, ClientError> {
        let pool_hint = pool.map_or_else(|| "DIR".to_string(), |p| p.display().to_string());
        let sock = match (sock, pool) {
            (Some(s), _) => s.to_path_buf(),
            (None, Some(p)) => p.join(crate::pool::SCHEDD).join("schedd.sock"),
            (None, None) => return Err(ClientError::NoPool),
        };
        Ok(Schedd { sock, pool_hint })
    }

    pub fn at(sock: &Path, pool: &Path) -> Schedd {
        Schedd {
            sock: sock.to_path_buf(),
            pool_hint: pool.display().to_string(),
        }
    }

    pub fn sock(&self) -> &Path {
        &self.sock
    }

    /// Sends one request and reads its reply.
    pub fn request(&self, req: &CliRequest) -> Result<CliReply, ClientError> {
        let mut s = UnixStream::connect(&self.sock).map_err(|source| {
            if matches!(
                source.kind(),
                ErrorKind::NotFound | ErrorKind::ConnectionRefused
            ) {
                ClientError::NoSchedd {
                    sock: self.sock.clone(),
                    pool: self.pool_hint.clone(),
                }
            } else {
                ClientError::Connect {
                    sock: self.sock.clone(),
                    source,
                }
            }
        })?;
        let wire = |source: ProtoError| match &source {
            ProtoError::Io(e)
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                ClientError::Timeout {
                    sock: self.sock.clone(),
                }
            }
            _ => ClientError::Wire {
                sock: self.sock.clone(),
                source,
            },
        };
        s.set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| s.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|source| ClientError::Connect {
                sock: self.sock.clone(),
                source,
            })?;
        write_frame(&mut s, req).map_err(wire)?;
        read_frame(&mut s, MAX_FRAME).map_err(wire)
    }

    /// Whether the schedd answers `Ping`.
    pub fn ping(&self) -> Result<(), ClientError> {
        match self.request(&CliRequest::Ping)? {
            CliReply::Pong => Ok(()),
            other => Err(ClientError::Wire {
                sock: self.sock.clone(),
                source: ProtoError::Unexpected(format!("{other:?} in reply to Ping")),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn missing_socket_says_how_to_start_the_pool() {
        let d = tempfile::tempdir().unwrap();
        let s = Schedd::locate(Some(d.path()), None).unwrap();
        assert_eq!(s.sock(), d.path().join("submit/schedd.sock"));
        let e = s.ping().unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "no schedd at {}/submit/schedd.sock — is the pool up? try `roost pool up --dir {}`",
                d.path().display(),
                d.path().display()
            )
        );
        assert!(matches!(
            Schedd::locate(None, None),
            Err(ClientError::NoPool)
        ));
        let over = Schedd::locate(Some(d.path()), Some(Path::new("/x.sock"))).unwrap();
        assert_eq!(over.sock(), Path::new("/x.sock"));
    }

    #[test]
    fn one_request_one_reply() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.sock");
        let l = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let req: CliRequest = read_frame(&mut c, MAX_FRAME).unwrap();
            write_frame(&mut c, &CliReply::Pong).unwrap();
            req
        });
        Schedd::at(&path, d.path()).ping().unwrap();
        assert_eq!(server.join().unwrap(), CliRequest::Ping);
    }
}
