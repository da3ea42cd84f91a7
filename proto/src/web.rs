//! HTTPS on a daemon's TLS port, for browsers and Prometheus.
//!
//! A daemon's port speaks the pool's framed protocol to pool members (TLS
//! 1.3, certificates from the pool CA on both ends). A TLS client that
//! offers the ALPN protocol `http/1.1` in its hello (browsers, curl,
//! Prometheus) is handed a second configuration instead ([`accept`]): the
//! same server certificate, a client certificate optional (checked against
//! the pool CA and its deny list when one is sent), ALPN `http/1.1`; then a small read-only
//! HTTP/1.1 server answers one request per connection.
//!
//! A request is let in with a certificate from the pool CA or with the
//! pool's web token ([`TOKEN_FILE`] in the pki directory): `?token=` (the
//! answer sets the [`COOKIE`] cookie and redirects to the same page without
//! it), that cookie, or `Authorization: Bearer TOKEN`.

use crate::tls::{
    DENY_FILE, DenyList, DenyingClientVerifier, PeerIdentity, TlsError, certs, private_key,
    provider,
};
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The web token's file in a pool's pki directory.
pub const TOKEN_FILE: &str = "web-token";
/// The cookie that carries the web token.
pub const COOKIE: &str = "roost_token";
/// The longest request head read.
const MAX_HEAD: usize = 16 << 10;
/// The Prometheus text exposition format's content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The TLS configuration for HTTP clients: `NAME`'s certificate from
/// `dir`, client certificates from the pool CA accepted but not required,
/// ALPN `http/1.1`.
pub fn server_config(dir: &Path, name: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(&dir.join("ca.pem"))? {
        roots.add(c)?;
    }
    let chain = certs(&dir.join(format!("{name}.pem")))?;
    let key = private_key(&dir.join(format!("{name}.key")))?;
    // The pool's deny list applies here as on the pool's own connections.
    let verifier = Arc::new(DenyingClientVerifier {
        inner: WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()?,
        deny: Arc::new(DenyList::new(dir.join(DENY_FILE))),
    });
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // No resumption: a resumed handshake would skip the certificate checks.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Makes a new random web token in `dir` (mode 0600), replacing any.
pub fn make_token(dir: &Path) -> Result<String, TlsError> {
    use std::io::{Read, Write};
    let mut b = [0u8; 24];
    let path = dir.join(TOKEN_FILE);
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|source| TlsError::Read {
            path: "/dev/urandom".into(),
            source,
        })?;
    let token: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(&path)
        .and_then(|mut f| f.write_all(format!("{token}\n").as_bytes()))
        .map_err(|source| TlsError::Write { path, source })?;
    Ok(token)
}

/// The web token in `dir`, or `None` when there is none (then only pool
/// certificates let a request in).
pub fn load_token(dir: &Path) -> Result<Option<String>, TlsError> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Read { path, source }),
    }
}

/// What a daemon needs to answer HTTP clients.
#[derive(Clone)]
pub struct Web {
    pub config: Arc<ServerConfig>,
    pub token: Option<String>,
}

impl Web {
    /// The configuration and token of daemon `name` in pki directory `dir`.
    /// A token this daemon may not read (e.g. another user's) is logged
    /// and left out: then only pool certificates are let in.
    pub fn load(dir: &Path, name: &str) -> Result<Web, TlsError> {
        let token = load_token(dir).unwrap_or_else(|e| {
            tracing::warn!(
                "{e} ({}); HTTPS takes pool certificates only",
                source_of(&e)
            );
            None
        });
        Ok(Web {
            config: server_config(dir, name)?,
            token,
        })
    }
}

fn source_of(e: &TlsError) -> String {
    std::error::Error::source(e).map_or_else(String::new, |s| s.to_string())
}

/// An accepted TLS connection.
pub enum Accepted {
    /// A pool member: the framed protocol follows.
    Pool(TlsStream<TcpStream>),
    /// An HTTP client (it offered ALPN `http/1.1`).
    Web(TlsStream<TcpStream>),
}

/// Completes the TLS handshake of `tcp`, with `web`'s configuration when
/// the client offers ALPN `http/1.1` (and `web` is given), `pool`'s otherwise.
pub async fn accept(
    tcp: TcpStream,
    pool: &Arc<ServerConfig>,
    web: Option<&Arc<ServerConfig>>,
) -> std::io::Result<Accepted> {
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let http = start
        .client_hello()
        .alpn()
        .is_some_and(|mut a| a.any(|p| p == b"http/1.1"));
    match web {
        Some(w) if http => Ok(Accepted::Web(start.into_stream(w.clone()).await?)),
        _ => Ok(Accepted::Pool(start.into_stream(pool.clone()).await?)),
    }
}

/// A request's method, path, query and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connection closed before a request")]
    Closed,
    #[error("i/o error reading the request")]
    Io(#[from] std::io::Error),
    #[error("request head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
}

impl Request {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter named `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The token the request carries: `Authorization: Bearer`, the cookie,
    /// or `?token=`.
    pub fn token(&self) -> Option<&str> {
        if let Some(t) = self
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
        {
            return Some(t.trim());
        }
        if let Some(t) = self.header("cookie").and_then(|c| {
            c.split(';')
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| *k == COOKIE)
                .map(|(_, v)| v)
        }) {
            return Some(t);
        }
        self.param("token")
    }

    /// Parses a request head (up to the empty line).
    pub fn parse(head: &str) -> Result<Request, HttpError> {
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or_default();
        let mut parts = first.split(' ');
        let (Some(method), Some(target), Some(version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(HttpError::Malformed(format!("request line {first:?}")));
        };
        if !version.starts_with("HTTP/1.") || parts.next().is_some() {
            return Err(HttpError::Malformed(format!("request line {first:?}")));
        }
        let (path, q) = target.split_once('?').unwrap_or((target, ""));
        let query = q
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        let mut headers = Vec::new();
        for l in lines.filter(|l| !l.is_empty()) {
            let Some((k, v)) = l.split_once(':') else {
                return Err(HttpError::Malformed(format!("header line {l:?}")));
            };
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        Ok(Request {
            method: method.to_string(),
            path: percent_decode(path),
            query,
            headers,
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one request head.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HttpError::Closed
            } else {
                HttpError::Malformed("connection closed inside the request head".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])
                .map_err(|_| HttpError::Malformed("request head is not UTF-8".into()))?;
            return Request::parse(head);
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::TooLarge);
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

/// Writes a whole response and closes the connection.
pub async fn respond<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await?;
    w.shutdown().await
}

/// Starts a Server-Sent Events stream; the caller then writes events with
/// [`sse_event`].
pub async fn start_sse<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    w.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
          Connection: close\r\n\r\n",
    )
    .await?;
    w.flush().await
}

/// Writes one Server-Sent Event (`data` must hold no newline).
pub async fn sse_event<W: AsyncWrite + Unpin>(
    w: &mut W,
    event: &str,
    data: &str,
) -> std::io::Result<()> {
    debug_assert!(!data.contains('\n'));
    w.write_all(format!("event: {event}\ndata: {data}\n\n").as_bytes())
        .await?;
    w.flush().await
}

/// Who a request came from, when it may come in.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// A certificate from the pool CA.
    Cert(PeerIdentity),
    /// The pool's web token.
    Token,
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What [`admit`] decided.
pub enum Admission {
    /// Serve the request.
    Serve(Request, Caller),
    /// The redirect that sets the cookie is written.
    Answered,
    /// A refusal (401, 405) is written.
    Refused,
}

/// Reads a request from an HTTP connection and checks who sent it. A
/// request without a pool certificate or the token is answered 401, one
/// that brings the token in `?token=` is redirected to the same page
/// without it, with the cookie set.
pub async fn admit(
    tls: &mut TlsStream<TcpStream>,
    token: Option<&str>,
) -> Result<Admission, HttpError> {
    let req = read_request(tls).await?;
    let peer = crate::tls::server_peer(tls);
    if req.method != "GET" && req.method != "HEAD" {
        respond(
            tls,
            405,
            "text/plain; charset=utf-8",
            &[("Allow", "GET")],
            b"only GET is served here\n",
        )
        .await?;
        return Ok(Admission::Refused);
    }
    let by_token = match (token, req.token()) {
        (Some(want), Some(got)) => same(want, got),
        _ => false,
    };
    if by_token && req.param("token").is_some() {
        let rest: Vec<String> = req
            .query
            .iter()
            .filter(|(k, _)| k != "token")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let to = if rest.is_empty() {
            req.path.clone()
        } else {
            format!("{}?{}", req.path, rest.join("&"))
        };
        let cookie = format!(
            "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict",
            token.unwrap_or_default()
        );
        respond(
            tls,
            303,
            "text/plain; charset=utf-8",
            &[("Location", &to), ("Set-Cookie", &cookie)],
            b"",
        )
        .await?;
        return Ok(Admission::Answered);
    }
    if by_token {
        return Ok(Admission::Serve(req, Caller::Token));
    }
    if let Some(p) = peer {
        return Ok(Admission::Serve(req, Caller::Cert(p)));
    }
    let msg = if token.is_some() {
        "this page needs the pool's web token: open the address `roost pool urls` prints \
         (it carries ?token=), send `Authorization: Bearer TOKEN`, or present a certificate \
         from the pool CA\n"
    } else {
        "this daemon has no web token (pki/web-token): present a certificate from the pool CA\n"
    };
    respond(tls, 401, "text/plain; charset=utf-8", &[], msg.as_bytes()).await?;
    Ok(Admission::Refused)
}

/// Serves `/metrics` (from `render`) on every connection of `listener`,
/// HTTPS with `web` (for a daemon that has no other TLS port). `rejected`
/// is called with a reason for each connection refused.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    web: Web,
    render: impl Fn() -> String + Send + Sync + 'static,
    rejected: impl Fn(&'static str) + Send + Sync + 'static,
) {
    let render = Arc::new(render);
    let rejected = Arc::new(rejected);
    let acceptor = tokio_rustls::TlsAcceptor::from(web.config.clone());
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let (acceptor, token, render, rejected) = (
            acceptor.clone(),
            web.token.clone(),
            render.clone(),
            rejected.clone(),
        );
        tokio::spawn(async move {
            let hs = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let mut tls = match hs.await {
                Ok(Ok(t)) => t,
                _ => return rejected("tls"),
            };
            let t = std::time::Duration::from_secs(10);
            match tokio::time::timeout(t, admit(&mut tls, token.as_deref())).await {
                Ok(Ok(Admission::Serve(req, _))) if req.path == "/metrics" => {
                    let body = render();
                    let _ =
                        respond(&mut tls, 200, METRICS_CONTENT_TYPE, &[], body.as_bytes()).await;
                }
                Ok(Ok(Admission::Serve(_, _))) => {
                    let _ = respond(
                        &mut tls,
                        404,
                        "text/plain; charset=utf-8",
                        &[],
                        b"this port serves /metrics only\n",
                    )
                    .await;
                }
                Ok(Ok(Admission::Answered)) => {}
                Ok(Ok(Admission::Refused)) => rejected("unauthorized"),
                _ => rejected("bad request"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_browser_request() {
        let r = Request::parse(
            "GET /job?schedd=submit&id=1.0&token=a%2Bb HTTP/1.1\r\nHost: x\r\n\
             Cookie: a=b; roost_token=tok\r\nAccept: */*",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/job");
        assert_eq!(r.param("schedd"), Some("submit"));
        assert_eq!(r.param("id"), Some("1.0"));
        assert_eq!(r.param("token"), Some("a+b"));
        assert_eq!(r.header("host"), Some("x"));
        // The cookie wins over the query.
        assert_eq!(r.token(), Some("tok"));
        assert!(Request::parse("GET /\r\n").is_err());
        assert!(Request::parse("GET / HTTP/1.1\r\nno colon").is_err());
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
    }
}
