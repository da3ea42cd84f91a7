//! The channel to the starter: one Unix stream socket per process image,
//! frames of `proto::frame`, raw system calls only.
//!
//! The socket is moved to a high fd number (≥ [`CHAN_FD_MIN`], close-on-exec)
//! so the job's own fd numbers stay small. A reply may carry one fd with
//! SCM_RIGHTS (the placeholder of a newly opened remote file); it is
//! installed at the lowest free fd number, as `open` would.

use proto::fileop::Errno;
use proto::frame::{MAX_FRAME, check_header, decode_body, encode};
use proto::shim::{ShimReply, ShimRequest};
use std::mem::{size_of, zeroed};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::lock::Spin;
use crate::sys;

/// The channel's fd is at least this number.
pub const CHAN_FD_MIN: i32 = 900;

/// This process's pid as the shim last learnt it: set when a channel
/// connects and in a forked child, so that a call needs no `getpid`.
static PID: AtomicI32 = AtomicI32::new(0);

/// This process's pid (cached; see [`forked`]).
pub fn pid() -> i32 {
    match PID.load(Ordering::Relaxed) {
        0 => forked(),
        p => p,
    }
}

/// In a forked child (and wherever the cache may be stale): learns the
/// pid again, so that the parent's channel is no longer taken as ours.
pub fn forked() -> i32 {
    let p = sys::getpid();
    PID.store(p, Ordering::Relaxed);
    p
}

/// Reply bodies up to this size keep their buffer for the next reply.
const KEEP_RECV: usize = 8 << 20 | 64 << 10;

/// The receive buffer of [`Chan::recv`].
static RECV_BUF: Spin<Vec<u8>> = Spin::new(Vec::new());

/// One connection, owned by the process with pid `pid`.
#[derive(Debug)]
pub struct Chan {
    pub fd: i32,
    pub pid: i32,
    /// Inode of the socket, to tell it from a reused fd number.
    pub ino: u64,
}

impl Chan {
    pub const fn none() -> Chan {
        Chan {
            fd: -1,
            pid: 0,
            ino: 0,
        }
    }

    /// Connected in this process (a forked child must reconnect).
    pub fn live(&self) -> bool {
        self.fd >= 0 && self.pid == pid()
    }

    /// Connects to the starter's socket at `path`.
    pub fn connect(path: &[u8]) -> Result<Chan, Errno> {
        // SAFETY: an all-zero sockaddr_un is valid.
        let mut addr: libc::sockaddr_un = unsafe { zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        if path.len() >= addr.sun_path.len() {
            return Err(libc::ENAMETOOLONG);
        }
        for (d, s) in addr.sun_path.iter_mut().zip(path) {
            *d = *s as libc::c_char;
        }
        let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
        // SAFETY: socket takes integers only.
        let s = unsafe {
            sys::sc(
                libc::SYS_socket,
                [libc::AF_UNIX as usize, ty as usize, 0, 0, 0, 0],
            )
        }? as i32;
        let len = size_of::<libc::sa_family_t>() + path.len() + 1;
        // SAFETY: addr is a valid sockaddr_un of at least `len` bytes.
        if let Err(e) = unsafe {
            sys::sc_retry(
                libc::SYS_connect,
                [s as usize, &addr as *const _ as usize, len, 0, 0, 0],
            )
        } {
            sys::close(s);
            return Err(e);
        }
        let fd = match sys::fcntl(s, libc::F_DUPFD_CLOEXEC, CHAN_FD_MIN as usize) {
            Ok(fd) => {
                sys::close(s);
                fd as i32
            }
            Err(_) => s,
        };
        let ino = sys::fstat(fd).map(|st| st.st_ino).unwrap_or(0);
        Ok(Chan {
            fd,
            pid: forked(),
            ino,
        })
    }

    /// Closes the socket (in a forked child: this process's copy), unless
    /// its fd number now holds something else.
    pub fn close(&mut self) {
        if self.fd >= 0 && sys::fstat(self.fd).is_ok_and(|st| st.st_ino == self.ino) {
            sys::close(self.fd);
        }
        self.fd = -1;
    }

    /// Sends one request.
    pub fn send(&self, req: &ShimRequest) -> Result<(), Errno> {
        let buf = encode(req).map_err(|_| libc::EIO)?;
        let mut rest = &buf[..];
        while !rest.is_empty() {
            // MSG_NOSIGNAL: a starter that went away is an error, not a SIGPIPE for the job.
            // SAFETY: rest is a valid readable slice.
            let n = unsafe {
                sys::sc_retry(
                    libc::SYS_sendto,
                    [
                        self.fd as usize,
                        rest.as_ptr() as usize,
                        rest.len(),
                        libc::MSG_NOSIGNAL as usize,
                        0,
                        0,
                    ],
                )
            }
            .map_err(|_| libc::EIO)?;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Receives one reply and the fd that came with it, if any.
    pub fn recv(&self) -> Result<(ShimReply, Option<i32>), Errno> {
        let mut fd = None;
        let mut hdr = [0u8; 4];
        self.recv_exact(&mut hdr, &mut fd)?;
        let len = check_header(hdr, MAX_FRAME).map_err(|_| libc::EIO)?;
        // The body goes into one buffer kept between replies (the shim's
        // state lock is held around every call): no fresh pages per reply.
        let mut body = RECV_BUF.lock();
        if body.len() < len {
            body.resize(len, 0);
        }
        let r = self.recv_exact(&mut body[..len], &mut fd);
        let decoded = r.and_then(|()| decode_body(&body[..len]).map_err(|_| libc::EIO));
        if body.capacity() > KEEP_RECV {
            *body = Vec::new();
        }
        drop(body);
        match decoded {
            Ok(r) => Ok((r, fd)),
            Err(e) => {
                if let Some(f) = fd {
                    sys::close(f);
                }
                Err(e)
            }
        }
    }

    /// One request, one reply.
    pub fn call(&self, req: &ShimRequest) -> Result<(ShimReply, Option<i32>), Errno> {
        self.send(req)?;
        self.recv()
    }

    fn recv_exact(&self, mut buf: &mut [u8], fd: &mut Option<i32>) -> Result<(), Errno> {
        while !buf.is_empty() {
            let n = self.recvmsg(buf, fd)?;
            if n == 0 {
                return Err(libc::EIO);
            }
            buf = &mut buf[n..];
        }
        Ok(())
    }

    fn recvmsg(&self, buf: &mut [u8], fd: &mut Option<i32>) -> Result<usize, Errno> {
        // Room for a few fds, 8-byte aligned.
        let mut cbuf = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>();
        // SAFETY: msg points to a valid iovec and control buffer that outlive the call.
        let n = unsafe {
            sys::sc_retry(
                libc::SYS_recvmsg,
                [self.fd as usize, &mut msg as *mut _ as usize, 0, 0, 0, 0],
            )
        }
        .map_err(|_| libc::EIO)?;
        // SAFETY: msg was filled in by the kernel; the CMSG macros walk its control buffer.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<i32>();
                    let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<i32>();
                    for i in 0..count {
                        let f = data.add(i).read_unaligned();
                        if fd.is_none() {
                            *fd = Some(f);
                        } else {
                            sys::close(f);
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(n)
    }
}
