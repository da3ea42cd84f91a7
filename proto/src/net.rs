//! The socket calls a job makes, as the shadow executes them on the submit
//! host (carried in [`crate::fileop::FileOp::Net`]).
//!
//! A remote socket is a handle like a file. Its data never travels as
//! calls: the job writes into its placeholder (forwarded as
//! `ToShadow::Write`), and the shadow pushes what the peer sends
//! (`FromShadow::Push`) for the starter to write into the placeholder, so
//! `read`/`recv`/`poll` on it are plain kernel calls in the job. The
//! starter acknowledges pushed bytes once they are in the placeholder
//! (`ToShadow::PushAck`); the shadow keeps at most [`PUSH_WINDOW`] bytes
//! unacknowledged per socket.
//!
//! A listening socket's placeholder receives one byte per connection the
//! shadow has accepted, so that `poll` sees it readable; the job's
//! `accept` reads one byte and then asks for the connection.

use crate::ids::Handle;
use serde::{Deserialize, Serialize};

/// Bytes the shadow may push to one socket before the starter acknowledges them.
pub const PUSH_WINDOW: u64 = 1 << 20;

/// Handles of sockets have this bit set (file handles never do).
pub const SOCK_HANDLE_BIT: u64 = 1 << 62;

/// Is `h` a socket handle?
pub fn is_sock(h: Handle) -> bool {
    h.0 & SOCK_HANDLE_BIT != 0
}

/// A socket address (`sockaddr_in` / `sockaddr_in6`), host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SockAddr {
    V4 {
        ip: [u8; 4],
        port: u16,
    },
    V6 {
        ip: [u8; 16],
        port: u16,
        flowinfo: u32,
        scope: u32,
    },
}

impl SockAddr {
    pub fn to_std(self) -> std::net::SocketAddr {
        match self {
            SockAddr::V4 { ip, port } => (std::net::Ipv4Addr::from(ip), port).into(),
            SockAddr::V6 {
                ip,
                port,
                flowinfo,
                scope,
            } => std::net::SocketAddrV6::new(ip.into(), port, flowinfo, scope).into(),
        }
    }

    pub fn from_std(a: std::net::SocketAddr) -> SockAddr {
        match a {
            std::net::SocketAddr::V4(a) => SockAddr::V4 {
                ip: a.ip().octets(),
                port: a.port(),
            },
            std::net::SocketAddr::V6(a) => SockAddr::V6 {
                ip: a.ip().octets(),
                port: a.port(),
                flowinfo: a.flowinfo(),
                scope: a.scope_id(),
            },
        }
    }

    pub fn port(self) -> u16 {
        match self {
            SockAddr::V4 { port, .. } | SockAddr::V6 { port, .. } => port,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetOp {
    /// `socket(domain, type, protocol)` (type without `SOCK_NONBLOCK` /
    /// `SOCK_CLOEXEC`). Replies `Opened` with an `S_IFSOCK` stat; the
    /// starter attaches the placeholder.
    Socket { domain: i32, ty: i32, protocol: i32 },
    /// `connect`. Replies `Ok`; `EACCES` when the job's `network` list
    /// does not allow the destination.
    Connect { h: Handle, addr: SockAddr },
    /// `bind`. Replies `Ok`.
    Bind { h: Handle, addr: SockAddr },
    /// `listen`. Replies `Ok`; `EACCES` unless the job may listen.
    Listen { h: Handle, backlog: i32 },
    /// Takes one connection the shadow accepted on a listening socket.
    /// Replies `Net(Accepted)` (the starter attaches a placeholder), or
    /// `EAGAIN` when none is queued.
    Accept { h: Handle },
    /// `getsockname` (`peer`: `getpeername`). Replies `Net(Addr)`.
    Name { h: Handle, peer: bool },
    /// `getsockopt`. Replies `Data` (the option's bytes).
    GetOpt { h: Handle, level: i32, name: i32 },
    /// `setsockopt`. Replies `Ok`.
    SetOpt {
        h: Handle,
        level: i32,
        name: i32,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// `shutdown(how)`, after every byte written before it. Replies `Ok`.
    Shutdown { h: Handle, how: i32 },
    /// `getaddrinfo` on the submit host (`family`: `AF_UNSPEC`/`AF_INET`/
    /// `AF_INET6`). A `host` of the form `C.P` (or `C.P.roost`) names a job
    /// of the same cluster: its listening sockets. Replies `Net(Addrs)`;
    /// an errno of `-EAI_*` is a resolver error.
    Resolve {
        host: Option<String>,
        service: Option<String>,
        family: i32,
        flags: i32,
    },
}

impl NetOp {
    pub fn handle(&self) -> Option<Handle> {
        use NetOp::*;
        match self {
            Connect { h, .. }
            | Bind { h, .. }
            | Listen { h, .. }
            | Accept { h }
            | Name { h, .. }
            | GetOpt { h, .. }
            | SetOpt { h, .. }
            | Shutdown { h, .. } => Some(*h),
            Socket { .. } | Resolve { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetReply {
    /// A new connected socket from `Accept`.
    Accepted {
        h: Handle,
        peer: SockAddr,
    },
    Addr(SockAddr),
    Addrs {
        addrs: Vec<SockAddr>,
        canon: Option<String>,
    },
}
