//! Hooks on sockets: `socket`, `connect`, `bind`, `listen`, `accept`,
//! `accept4`, `shutdown`, `getsockname`, `getpeername`, `getsockopt`,
//! `setsockopt`, and name resolution (`getaddrinfo`, `gethostbyname`) on
//! the submit host. Data calls (`send`, `recv`, `read`, `write`, `poll`,
//! ...) need no hook: a remote socket's placeholder is a kernel socket.

use std::ffi::{c_char, c_int, c_void};

use libc::{addrinfo, sockaddr, socklen_t};
use proto::net::SockAddr;

use crate::lock::Spin;
use crate::ops::{net, run};
use crate::real;

/// # Safety
/// libc's contract for `socket`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    run(
        -1,
        || net::socket(domain, ty, protocol),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(socket: fn(c_int, c_int, c_int) -> c_int)(domain, ty, protocol) }
        },
    )
}

/// # Safety
/// libc's contract for `connect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    run(
        -1,
        // SAFETY: the caller's address, `len` bytes.
        || unsafe { net::connect(fd, addr, len) },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(connect: fn(c_int, *const sockaddr, socklen_t) -> c_int)(fd, addr, len) }
        },
    )
}

/// # Safety
/// libc's contract for `bind`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    run(
        -1,
        // SAFETY: the caller's address, `len` bytes.
        || unsafe { net::bind(fd, addr, len) },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(bind: fn(c_int, *const sockaddr, socklen_t) -> c_int)(fd, addr, len) }
        },
    )
}

/// # Safety
/// libc's contract for `listen`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    run(
        -1,
        || net::listen(fd, backlog),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(listen: fn(c_int, c_int) -> c_int)(fd, backlog) }
        },
    )
}

/// # Safety
/// libc's contract for `shutdown`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    run(
        -1,
        || net::shutdown(fd, how),
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(shutdown: fn(c_int, c_int) -> c_int)(fd, how) }
        },
    )
}

/// # Safety
/// libc's contract for `accept4`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    run(
        -1,
        // SAFETY: the caller's buffers.
        || unsafe { net::accept4(fd, addr, len, flags) },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(accept4: fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int)(
                    fd, addr, len, flags,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `accept`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    run(
        -1,
        // SAFETY: the caller's buffers.
        || unsafe { net::accept4(fd, addr, len, 0) },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(accept: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int)(fd, addr, len)
            }
        },
    )
}

/// # Safety
/// libc's contract for `getsockname`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    run(
        -1,
        // SAFETY: the caller's buffers.
        || unsafe { net::name(fd, addr, len, false) },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(getsockname: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int)(fd, addr, len)
            }
        },
    )
}

/// # Safety
/// libc's contract for `getpeername`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    run(
        -1,
        // SAFETY: the caller's buffers.
        || unsafe { net::name(fd, addr, len, true) },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(getpeername: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int)(fd, addr, len)
            }
        },
    )
}

/// # Safety
/// libc's contract for `getsockopt`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    run(
        -1,
        // SAFETY: the caller's buffers.
        || unsafe { net::getsockopt(fd, level, name, val.cast(), len) },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(getsockopt: fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int)(
                    fd, level, name, val, len,
                )
            }
        },
    )
}

/// # Safety
/// libc's contract for `setsockopt`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    run(
        -1,
        // SAFETY: the caller's buffer of `len` bytes.
        || unsafe { net::setsockopt(fd, level, name, val.cast(), len) },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(setsockopt: fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int)(
                    fd, level, name, val, len,
                )
            }
        },
    )
}

/// One `addrinfo` node as glibc's `freeaddrinfo` frees it: the address in
/// the same `malloc` block, the canonical name in its own.
fn new_node(a: SockAddr, socktype: c_int, protocol: c_int, canon: Option<&str>) -> *mut addrinfo {
    let (bytes, n) = net::c_addr(a);
    let size = size_of::<addrinfo>() + bytes.len();
    // SAFETY: calloc has no preconditions; a NULL result is checked.
    let p = unsafe { libc::calloc(1, size) }.cast::<addrinfo>();
    if p.is_null() {
        return p;
    }
    // SAFETY: p is a fresh zeroed block of `size` bytes, suitably aligned by calloc;
    // the address is stored right after the addrinfo, inside the block.
    unsafe {
        let sa = p.cast::<u8>().add(size_of::<addrinfo>());
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), sa, n);
        (*p).ai_family = match a {
            SockAddr::V4 { .. } => libc::AF_INET,
            SockAddr::V6 { .. } => libc::AF_INET6,
        };
        (*p).ai_socktype = socktype;
        (*p).ai_protocol = protocol;
        (*p).ai_addrlen = n as socklen_t;
        (*p).ai_addr = sa.cast();
        if let Some(c) = canon {
            let cn = libc::calloc(1, c.len() + 1).cast::<u8>();
            if !cn.is_null() {
                std::ptr::copy_nonoverlapping(c.as_ptr(), cn, c.len());
                (*p).ai_canonname = cn.cast();
            }
        }
    }
    p
}

/// # Safety
/// libc's contract for `getaddrinfo`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    run(
        libc::EAI_SYSTEM,
        || {
            if res.is_null() || node.is_null() && service.is_null() {
                return Some(Ok(libc::EAI_NONAME));
            }
            // SAFETY: NULL or NUL-terminated strings (libc's contract).
            let host = unsafe { crate::ops::cstr(node) }.ok();
            // SAFETY: as above.
            let serv = unsafe { crate::ops::cstr(service) }.ok();
            let (family, socktype, protocol, flags) = if hints.is_null() {
                (libc::AF_UNSPEC, 0, 0, 0)
            } else {
                // SAFETY: a non-NULL hints points to an addrinfo (libc's contract).
                let h = unsafe { &*hints };
                (h.ai_family, h.ai_socktype, h.ai_protocol, h.ai_flags)
            };
            let (addrs, canon) = match net::resolve(host, serv, family, flags)? {
                Ok(Ok(v)) => v,
                Ok(Err(eai)) => return Some(Ok(eai)),
                Err(e) => return Some(Err(e)),
            };
            let (st, pr) = match socktype {
                0 => (libc::SOCK_STREAM, libc::IPPROTO_TCP),
                t => (t, protocol),
            };
            let want_canon = flags & libc::AI_CANONNAME != 0;
            let mut head: *mut addrinfo = std::ptr::null_mut();
            let mut tail: *mut addrinfo = std::ptr::null_mut();
            for (i, a) in addrs.into_iter().enumerate() {
                let c = (want_canon && i == 0)
                    .then_some(canon.as_deref().unwrap_or(""))
                    .filter(|c| !c.is_empty());
                let n = new_node(a, st, pr, c);
                if n.is_null() {
                    break;
                }
                if tail.is_null() {
                    head = n;
                } else {
                    // SAFETY: tail is a node made above.
                    unsafe { (*tail).ai_next = n };
                }
                tail = n;
            }
            if head.is_null() {
                return Some(Ok(libc::EAI_MEMORY));
            }
            // SAFETY: res is non-NULL (checked).
            unsafe { *res = head };
            Some(Ok(0))
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe {
                real!(getaddrinfo: fn(*const c_char, *const c_char, *const addrinfo, *mut *mut addrinfo) -> c_int)(
                    node, service, hints, res,
                )
            }
        },
    )
}

/// `gethostbyname`'s static result, as libc keeps one.
struct HostEnt {
    name: [u8; 256],
    addrs: [[u8; 4]; 8],
    list: [*mut c_char; 9],
    aliases: [*mut c_char; 1],
    ent: libc::hostent,
}

// SAFETY: the raw pointers point into the same static; access is under the Spin lock.
unsafe impl Send for HostEnt {}

static HOSTENT: Spin<HostEnt> = Spin::new(HostEnt {
    name: [0; 256],
    addrs: [[0; 4]; 8],
    list: [std::ptr::null_mut(); 9],
    aliases: [std::ptr::null_mut(); 1],
    ent: libc::hostent {
        h_name: std::ptr::null_mut(),
        h_aliases: std::ptr::null_mut(),
        h_addrtype: 0,
        h_length: 0,
        h_addr_list: std::ptr::null_mut(),
    },
});

/// # Safety
/// libc's contract for `gethostbyname` (IPv4 addresses; the result is
/// static and overwritten by the next call).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut libc::hostent {
    run(
        std::ptr::null_mut(),
        || {
            // SAFETY: a NUL-terminated string (libc's contract).
            let host = match unsafe { crate::ops::cstr(name) } {
                Ok(h) => h,
                Err(e) => return Some(Err(e)),
            };
            let addrs = match net::resolve(Some(host), None, libc::AF_INET, 0)? {
                Ok(Ok((a, _))) => a,
                Ok(Err(_)) => return Some(Err(libc::ENOENT)),
                Err(e) => return Some(Err(e)),
            };
            let mut g = HOSTENT.lock();
            let h = &mut *g;
            let n = host.len().min(h.name.len() - 1);
            h.name[..n].copy_from_slice(&host[..n]);
            h.name[n] = 0;
            let mut k = 0;
            for a in addrs {
                if let SockAddr::V4 { ip, .. } = a
                    && k < h.addrs.len()
                {
                    h.addrs[k] = ip;
                    k += 1;
                }
            }
            for i in 0..h.list.len() {
                h.list[i] = if i < k {
                    h.addrs[i].as_mut_ptr().cast()
                } else {
                    std::ptr::null_mut()
                };
            }
            h.aliases[0] = std::ptr::null_mut();
            h.ent = libc::hostent {
                h_name: h.name.as_mut_ptr().cast(),
                h_aliases: h.aliases.as_mut_ptr(),
                h_addrtype: libc::AF_INET,
                h_length: 4,
                h_addr_list: h.list.as_mut_ptr(),
            };
            let p: *mut libc::hostent = &mut h.ent;
            Some(Ok(p))
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(gethostbyname: fn(*const c_char) -> *mut libc::hostent)(name) }
        },
    )
}
