//! `roost pool urls`: every daemon's web endpoints.
//!
//! The pool page is on the matchmaker's own port (HTTPS, `?token=` from
//! `DIR/pki/web-token`). Each daemon serves `/metrics`: the matchmaker and
//! the schedd on their TLS ports, each ownerd on its `--metrics-listen`
//! port. Where the schedds and ownerds serve them is asked of the
//! matchmaker (its `/state`, which holds what their reports and ads say),
//! so the list is right however the pool is laid out.

use crate::pool::{PoolConfig, PoolDir, USER};
use anyhow::{Context, Result, bail};
use proto::tls::{Identity, server_name};
use serde_json::{Value, json};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One endpoint: the daemon, what it serves, the URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Url {
    pub daemon: String,
    pub what: &'static str,
    pub url: String,
}

/// The endpoints, from the matchmaker's `/state` (`state`).
pub fn list(cfg: &PoolConfig, token: Option<&str>, state: &Value) -> Vec<Url> {
    let mm = &cfg.matchmaker.addr;
    let mut v = vec![
        Url {
            daemon: cfg.matchmaker.name.clone(),
            what: "pool page",
            url: match token {
                Some(t) => format!("https://{mm}/?token={t}"),
                None => format!("https://{mm}/"),
            },
        },
        Url {
            daemon: cfg.matchmaker.name.clone(),
            what: "metrics",
            url: format!("https://{mm}/metrics"),
        },
    ];
    let empty = Vec::new();
    for q in state["queues"].as_array().unwrap_or(&empty) {
        if let (Some(name), Some(addr)) = (q["schedd"].as_str(), q["metrics"].as_str()) {
            v.push(Url {
                daemon: name.to_string(),
                what: "metrics",
                url: format!("https://{addr}/metrics"),
            });
        }
    }
    for m in state["machines"].as_array().unwrap_or(&empty) {
        if let (Some(name), Some(addr)) = (m["name"].as_str(), m["metrics"].as_str()) {
            v.push(Url {
                daemon: name.to_string(),
                what: "metrics",
                url: format!("https://{addr}/metrics"),
            });
        }
    }
    v
}

/// GETs `path` from the matchmaker over HTTPS with the pool's `user`
/// certificate; the body of a 200 answer.
pub fn get(pool: &PoolDir, cfg: &PoolConfig, path: &str) -> Result<String> {
    let pki = pool.pki();
    let identity = Identity::load(&pki, USER).with_context(|| {
        format!(
            "cannot load the `{USER}` certificate from {}",
            pki.display()
        )
    })?;
    let mut client = (*identity.client).clone();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let addr = cfg.matchmaker.addr.clone();
    let name = server_name(&cfg.matchmaker.name)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let resp = rt.block_on(async {
        let work = async {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await?;
            tls.write_all(req.as_bytes()).await?;
            tls.flush().await?;
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("timed out")))
    });
    let resp = resp.with_context(|| {
        format!(
            "asking the matchmaker {} at {addr} for {path}",
            cfg.matchmaker.name
        )
    })?;
    let text = String::from_utf8_lossy(&resp);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("the matchmaker at {addr} sent no HTTP answer to {path}");
    };
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("the matchmaker at {addr} answered {path} with `{status}`: {body}");
    }
    Ok(body.to_string())
}

/// `roost pool urls [--json]`.
pub fn print(pool: &PoolDir, cfg: &PoolConfig, as_json: bool, out: &mut dyn Write) -> Result<()> {
    let token = proto::web::load_token(&pool.pki())?;
    let body = get(pool, cfg, "/state")?;
    let state: Value =
        serde_json::from_str(&body).context("the matchmaker's /state is not JSON")?;
    let urls = list(cfg, token.as_deref(), &state);
    if as_json {
        let v: Vec<Value> = urls
            .iter()
            .map(|u| json!({ "daemon": u.daemon, "what": u.what, "url": u.url }))
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let w = urls.iter().map(|u| u.daemon.len()).max().unwrap_or(0);
    for u in &urls {
        writeln!(out, "{:<w$}  {:<9}  {}", u.daemon, u.what, u.url)?;
    }
    match token {
        Some(_) => writeln!(
            out,
            "\n/metrics takes `Authorization: Bearer TOKEN` (TOKEN is in {}) or a pool certificate.",
            pool.pki().join(proto::web::TOKEN_FILE).display()
        )?,
        None => writeln!(
            out,
            "\nThis pool has no web token ({}): only pool certificates are let in.",
            pool.pki().join(proto::web::TOKEN_FILE).display()
        )?,
    }
    Ok(())
}
