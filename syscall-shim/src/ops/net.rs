//! Socket ops: TCP sockets held by the shadow on the submit host (see
//! `proto::net` and docs/internals.md, "Sockets").
//!
//! `socket(AF_INET|AF_INET6, SOCK_STREAM)` becomes a remote socket: a
//! placeholder whose data the starter relays to and from the shadow's real
//! socket, so `read`/`write`/`send`/`recv`/`poll`/`epoll` and `O_NONBLOCK`
//! on it are the kernel's own. The calls that act on the socket itself
//! (`connect`, `bind`, `listen`, `accept`, names, options, `shutdown`) and
//! name resolution go to the shadow. Other sockets (AF_UNIX, UDP) stay local.

use proto::fileop::{Errno, FileOp, FileReply};
use proto::net::{NetOp, NetReply, SockAddr};

use super::{SHIM, unexpected};
use crate::sys;

type Op<T> = Option<Result<T, Errno>>;

/// Addresses and the canonical name of a resolved host.
pub type Resolved = (Vec<SockAddr>, Option<String>);

/// Decodes a `sockaddr` the job passed.
///
/// # Safety
/// `addr` must be NULL or readable for `len` bytes.
pub unsafe fn read_addr(addr: *const libc::sockaddr, len: u32) -> Result<SockAddr, Errno> {
    if addr.is_null() {
        return Err(libc::EFAULT);
    }
    let len = len as usize;
    if len < size_of::<libc::sa_family_t>() {
        return Err(libc::EINVAL);
    }
    // SAFETY: at least the family is readable (checked above).
    let fam = unsafe { (*addr).sa_family } as i32;
    match fam {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: len covers a sockaddr_in; read_unaligned needs no alignment.
            let a = unsafe { addr.cast::<libc::sockaddr_in>().read_unaligned() };
            Ok(SockAddr::V4 {
                ip: a.sin_addr.s_addr.to_ne_bytes(),
                port: u16::from_be(a.sin_port),
            })
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: len covers a sockaddr_in6.
            let a = unsafe { addr.cast::<libc::sockaddr_in6>().read_unaligned() };
            Ok(SockAddr::V6 {
                ip: a.sin6_addr.s6_addr,
                port: u16::from_be(a.sin6_port),
                flowinfo: u32::from_be(a.sin6_flowinfo),
                scope: a.sin6_scope_id,
            })
        }
        libc::AF_INET | libc::AF_INET6 => Err(libc::EINVAL),
        _ => Err(libc::EAFNOSUPPORT),
    }
}

/// The C form of an address: the bytes of a `sockaddr_in` / `sockaddr_in6`.
pub fn c_addr(a: SockAddr) -> ([u8; 28], usize) {
    let mut out = [0u8; 28];
    match a {
        SockAddr::V4 { ip, port } => {
            let s = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip),
                },
                sin_zero: [0; 8],
            };
            let n = size_of::<libc::sockaddr_in>();
            // SAFETY: s is a plain C struct of n bytes, out has room for it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (&s as *const libc::sockaddr_in).cast::<u8>(),
                    out.as_mut_ptr(),
                    n,
                )
            };
            (out, n)
        }
        SockAddr::V6 {
            ip,
            port,
            flowinfo,
            scope,
        } => {
            let s = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: port.to_be(),
                sin6_flowinfo: flowinfo.to_be(),
                sin6_addr: libc::in6_addr { s6_addr: ip },
                sin6_scope_id: scope,
            };
            let n = size_of::<libc::sockaddr_in6>();
            // SAFETY: s is a plain C struct of n bytes (28), out has room for it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (&s as *const libc::sockaddr_in6).cast::<u8>(),
                    out.as_mut_ptr(),
                    n,
                )
            };
            (out, n)
        }
    }
}

/// Stores an address for the job (`accept`, `getsockname`): truncated to
/// `*len`, which is set to the full size.
///
/// # Safety
/// `addr` must be NULL or writable for `*len` bytes; `len` NULL or valid.
pub unsafe fn write_addr(a: SockAddr, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) {
    if addr.is_null() || len.is_null() {
        return;
    }
    let (bytes, n) = c_addr(a);
    // SAFETY: len is valid (the caller's contract).
    let room = unsafe { *len } as usize;
    // SAFETY: addr has room for `room` bytes; we copy at most that.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr.cast::<u8>(), room.min(n));
        *len = n as libc::socklen_t;
    }
}

/// The socket handle of `fd`, if it is a remote socket.
fn sock_handle(fd: i32) -> Option<proto::Handle> {
    let mut s = SHIM.lock();
    if !s.remote(fd) {
        return None;
    }
    s.vfds.get(fd).filter(|v| v.sock).map(|v| v.h)
}

/// `socket(domain, type, protocol)`.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> Op<i32> {
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    if !matches!(domain, libc::AF_INET | libc::AF_INET6)
        || base != libc::SOCK_STREAM
        || !matches!(protocol, 0 | libc::IPPROTO_TCP)
    {
        return None;
    }
    let mut s = SHIM.lock();
    if s.ensure().is_err() {
        return None;
    }
    let op = NetOp::Socket {
        domain,
        ty: base,
        protocol,
    };
    Some(match s.call_fd(FileOp::Net(op)) {
        Ok((FileReply::Opened { h, stat }, Some(fd))) => {
            let cloexec = if ty & libc::SOCK_CLOEXEC != 0 {
                libc::O_CLOEXEC
            } else {
                0
            };
            install_sock(
                &mut s,
                fd,
                h,
                cloexec,
                ty & libc::SOCK_NONBLOCK != 0,
                stat.mode,
            )
        }
        Ok((r, fd)) => {
            if let Some(f) = fd {
                sys::close(f);
            }
            unexpected(r)
        }
        Err(e) => Err(e),
    })
}

fn install_sock(
    s: &mut super::Shim,
    fd: i32,
    h: proto::Handle,
    cloexec: i32,
    nonblock: bool,
    mode: u32,
) -> Result<i32, Errno> {
    let fd = s.install(fd, h, libc::O_RDWR | cloexec, mode)?;
    if let Some(v) = s.vfds.get_mut(fd) {
        v.stream = true;
        v.sock = true;
    }
    if nonblock {
        let _ = sys::fcntl(
            fd,
            libc::F_SETFL,
            (libc::O_RDWR | libc::O_NONBLOCK) as usize,
        );
    }
    Ok(fd)
}

/// A call on a remote socket that replies `Ok`.
fn simple(fd: i32, op: impl FnOnce(proto::Handle) -> NetOp) -> Op<i32> {
    let h = sock_handle(fd)?;
    let mut s = SHIM.lock();
    Some(s.call_ok(FileOp::Net(op(h))).map(|()| 0))
}

/// `connect(fd, addr, len)`: completes on the submit host before it
/// returns, also for a non-blocking socket (which POSIX allows).
///
/// # Safety
/// `addr` must be readable for `len` bytes.
pub unsafe fn connect(fd: i32, addr: *const libc::sockaddr, len: u32) -> Op<i32> {
    sock_handle(fd)?;
    // SAFETY: forwarded from the caller.
    let a = match unsafe { read_addr(addr, len) } {
        Ok(a) => a,
        Err(e) => return Some(Err(e)),
    };
    simple(fd, |h| NetOp::Connect { h, addr: a })
}

/// # Safety
/// `addr` must be readable for `len` bytes.
pub unsafe fn bind(fd: i32, addr: *const libc::sockaddr, len: u32) -> Op<i32> {
    sock_handle(fd)?;
    // SAFETY: forwarded from the caller.
    let a = match unsafe { read_addr(addr, len) } {
        Ok(a) => a,
        Err(e) => return Some(Err(e)),
    };
    simple(fd, |h| NetOp::Bind { h, addr: a })
}

pub fn listen(fd: i32, backlog: i32) -> Op<i32> {
    simple(fd, |h| NetOp::Listen { h, backlog })
}

pub fn shutdown(fd: i32, how: i32) -> Op<i32> {
    simple(fd, |h| NetOp::Shutdown { h, how })
}

/// `accept4`: waits (in the kernel, as the placeholder's blocking mode
/// says) for the byte the starter writes per incoming connection, then
/// takes that connection from the shadow.
///
/// # Safety
/// `addr`/`len` as for `accept`.
pub unsafe fn accept4(
    fd: i32,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    flags: i32,
) -> Op<i32> {
    let h = sock_handle(fd)?;
    let mut token = [0u8; 1];
    // The shim's lock is not held while the job waits here.
    // SAFETY: token is a writable 1-byte buffer.
    match unsafe { sys::read(fd, token.as_mut_ptr(), 1) } {
        Ok(1) => {}
        Ok(_) => return Some(Err(libc::EINVAL)),
        Err(e) => return Some(Err(e)),
    }
    let mut s = SHIM.lock();
    Some(match s.call_fd(FileOp::Net(NetOp::Accept { h })) {
        Ok((FileReply::Net(NetReply::Accepted { h, peer }), Some(nfd))) => {
            let cloexec = if flags & libc::SOCK_CLOEXEC != 0 {
                libc::O_CLOEXEC
            } else {
                0
            };
            let r = install_sock(
                &mut s,
                nfd,
                h,
                cloexec,
                flags & libc::SOCK_NONBLOCK != 0,
                libc::S_IFSOCK,
            );
            if r.is_ok() {
                // SAFETY: forwarded from the caller.
                unsafe { write_addr(peer, addr, len) };
            }
            r
        }
        Ok((r, fd)) => {
            if let Some(f) = fd {
                sys::close(f);
            }
            unexpected(r)
        }
        Err(e) => Err(e),
    })
}

/// `getsockname` / `getpeername`.
///
/// # Safety
/// `addr`/`len` as for `getsockname`.
pub unsafe fn name(
    fd: i32,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    peer: bool,
) -> Op<i32> {
    let h = sock_handle(fd)?;
    if addr.is_null() || len.is_null() {
        return Some(Err(libc::EFAULT));
    }
    let mut s = SHIM.lock();
    Some(match s.call(FileOp::Net(NetOp::Name { h, peer })) {
        Ok(FileReply::Net(NetReply::Addr(a))) => {
            // SAFETY: checked non-NULL; the caller's buffers.
            unsafe { write_addr(a, addr, len) };
            Ok(0)
        }
        Ok(r) => unexpected(r),
        Err(e) => Err(e),
    })
}

/// Options the placeholder itself implements (timeouts of the job's
/// blocking calls on it).
fn local_opt(level: i32, name: i32) -> bool {
    level == libc::SOL_SOCKET
        && matches!(
            name,
            libc::SO_RCVTIMEO | libc::SO_SNDTIMEO | libc::SO_RCVLOWAT | libc::SO_SNDLOWAT
        )
}

/// # Safety
/// `val` must be writable for `*len` bytes; `len` valid.
pub unsafe fn getsockopt(
    fd: i32,
    level: i32,
    name: i32,
    val: *mut u8,
    len: *mut libc::socklen_t,
) -> Op<i32> {
    if local_opt(level, name) {
        return None;
    }
    let h = sock_handle(fd)?;
    if val.is_null() || len.is_null() {
        return Some(Err(libc::EFAULT));
    }
    let mut s = SHIM.lock();
    Some(
        match s.call(FileOp::Net(NetOp::GetOpt { h, level, name })) {
            Ok(FileReply::Data(d)) => {
                // SAFETY: len valid, val writable for *len bytes (caller's contract).
                unsafe {
                    let n = (*len as usize).min(d.len());
                    std::ptr::copy_nonoverlapping(d.as_ptr(), val, n);
                    *len = n as libc::socklen_t;
                }
                Ok(0)
            }
            Ok(r) => unexpected(r),
            Err(e) => Err(e),
        },
    )
}

/// # Safety
/// `val` must be readable for `len` bytes.
pub unsafe fn setsockopt(fd: i32, level: i32, name: i32, val: *const u8, len: u32) -> Op<i32> {
    if local_opt(level, name) {
        return None;
    }
    sock_handle(fd)?;
    let value = if val.is_null() {
        Vec::new()
    } else {
        // SAFETY: val is readable for len bytes (caller's contract).
        unsafe { std::slice::from_raw_parts(val, len as usize) }.to_vec()
    };
    simple(fd, |h| NetOp::SetOpt {
        h,
        level,
        name,
        value,
    })
}

/// `getaddrinfo` on the submit host: the addresses, or an `EAI_*` code.
pub fn resolve(
    host: Option<&[u8]>,
    service: Option<&[u8]>,
    family: i32,
    flags: i32,
) -> Op<Result<Resolved, i32>> {
    let mut s = SHIM.lock();
    if s.ensure().is_err() {
        return None;
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let op = NetOp::Resolve {
        host: host.map(text),
        service: service.map(text),
        family,
        flags,
    };
    Some(match s.call(FileOp::Net(op)) {
        Ok(FileReply::Net(NetReply::Addrs { addrs, canon })) => Ok(Ok((addrs, canon))),
        Ok(r) => unexpected(r),
        Err(e) if e < 0 => Ok(Err(e)),
        Err(e) => Err(e),
    })
}
