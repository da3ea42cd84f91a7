//! Taking an image, inside the checkpoint signal's handler.

use super::maps;
use super::sys::{self, sc, write_all};
use super::{AREA, SIG_CKPT};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use proto::ckpt::{
    ACK_COMMITTED, ARCH_X86_64, Checksum, FD_LOCAL, FdRecord, ImageHeader, KSigaction, MAGIC,
    REFUSED, RF_DATA, Region, VERSION, checksum, table_bytes,
};

pub const MAX_REGIONS: usize = 8192;
pub const MAX_FDS: usize = 1024;

/// Lists the shim's remote fds into the slice; returns how many, or `None`
/// when the shim's state is busy (the checkpoint must wait).
pub type RemoteFds = fn(&mut [FdRecord]) -> Option<usize>;
/// True for fds that belong to the shim itself (its channel).
pub type Internal = fn(i32) -> bool;

struct Statics {
    sock: [u8; 108],
    maps: [u8; 1 << 20],
    regions: [Region; MAX_REGIONS],
    fds: [FdRecord; MAX_FDS],
    dents: [u8; 8192],
    bounce: [u8; BOUNCE],
}

/// Memory is copied through this buffer before it is sent, so the bytes sent
/// and their checksum agree even for the stack the handler runs on.
const BOUNCE: usize = 1 << 20;

static mut S: Statics = Statics {
    sock: [0; 108],
    maps: [0; 1 << 20],
    regions: [Region::EMPTY; MAX_REGIONS],
    fds: [FdRecord::EMPTY; MAX_FDS],
    dents: [0; 8192],
    bounce: [0; BOUNCE],
};
static BUSY: AtomicBool = AtomicBool::new(false);
static REMOTE: AtomicUsize = AtomicUsize::new(0);
static INTERNAL: AtomicUsize = AtomicUsize::new(0);

/// Called by a restart once memory holds the image: the image was taken
/// inside the handler, so it says a checkpoint is in progress.
pub fn reset_after_restore() {
    BUSY.store(false, Ordering::SeqCst);
}

/// Installs the checkpoint handler. `sock` is the starter's checkpoint socket.
pub fn install(sock: &[u8], remote: RemoteFds, internal: Internal) -> bool {
    if sock.len() >= 108 {
        return false;
    }
    // SAFETY: called once from the constructor, before the handler exists.
    unsafe {
        let s = &mut *core::ptr::addr_of_mut!(S);
        s.sock[..sock.len()].copy_from_slice(sock);
    }
    REMOTE.store(remote as usize, Ordering::SeqCst);
    INTERNAL.store(internal as usize, Ordering::SeqCst);
    // SAFETY: a zeroed sigaction is valid; we fill handler, flags and mask.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigfillset(&mut sa.sa_mask);
        libc::sigaction(SIG_CKPT, &sa, core::ptr::null_mut()) == 0
    }
}

extern "C" fn on_signal(_sig: i32, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    if BUSY.swap(true, Ordering::SeqCst) {
        return;
    }
    take(uc as u64);
    BUSY.store(false, Ordering::SeqCst);
}

fn connect(path: &[u8; 108]) -> i32 {
    // SAFETY: plain socket creation.
    let fd = unsafe {
        sc(
            sys::SOCKET,
            libc::AF_UNIX as usize,
            (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as usize,
            0,
            0,
            0,
            0,
        )
    };
    if fd < 0 {
        return -1;
    }
    let mut addr = [0u8; 110];
    addr[0] = libc::AF_UNIX as u8;
    addr[2..].copy_from_slice(path);
    // SAFETY: `addr` is a sockaddr_un of the given length.
    let r = unsafe {
        sc(
            sys::CONNECT,
            fd as usize,
            addr.as_ptr() as usize,
            addr.len(),
            0,
            0,
            0,
        )
    };
    if r < 0 {
        // SAFETY: closes the socket made above.
        unsafe { sc(sys::CLOSE, fd as usize, 0, 0, 0, 0, 0) };
        return -1;
    }
    fd as i32
}

/// Tells the starter why there is no image. Nothing goes to the job's own
/// stderr: that is the user's file; the starter logs the reason.
fn refuse(fd: i32, why: &[&[u8]]) {
    write_all(fd, &REFUSED);
    for w in why {
        write_all(fd, w);
    }
}

/// Counts entries of a directory opened by path (threads in /proc/self/task).
fn count_dir(path: &[u8], buf: &mut [u8]) -> usize {
    // SAFETY: NUL-terminated path, O_DIRECTORY read-only.
    let d = unsafe {
        sc(
            sys::OPEN,
            path.as_ptr() as usize,
            (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as usize,
            0,
            0,
            0,
            0,
        )
    };
    if d < 0 {
        return 0;
    }
    let mut n = 0;
    loop {
        // SAFETY: `buf` is writable for its length.
        let r = unsafe {
            sc(
                sys::GETDENTS64,
                d as usize,
                buf.as_mut_ptr() as usize,
                buf.len(),
                0,
                0,
                0,
            )
        };
        if r <= 0 {
            break;
        }
        let mut off = 0;
        while off < r as usize {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if buf[off + 19] != b'.' {
                n += 1;
            }
            off += reclen;
        }
    }
    // SAFETY: closes the directory opened above.
    unsafe { sc(sys::CLOSE, d as usize, 0, 0, 0, 0, 0) };
    n
}

/// Adds local fds (files and devices reopened by path) after the remote ones.
/// Returns the new count, or an error naming the fd.
fn local_fds(
    fds: &mut [FdRecord],
    mut n: usize,
    own: i32,
    dents: &mut [u8],
    bad: &mut i32,
) -> Option<usize> {
    let internal: Internal = {
        let p = INTERNAL.load(Ordering::SeqCst);
        // SAFETY: the value was stored from a `fn(i32) -> bool` in `install`.
        unsafe { core::mem::transmute::<usize, Internal>(p) }
    };
    let remote_n = n;
    let path = b"/proc/self/fd\0";
    // SAFETY: NUL-terminated path, O_DIRECTORY read-only.
    let d = unsafe {
        sc(
            sys::OPEN,
            path.as_ptr() as usize,
            (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as usize,
            0,
            0,
            0,
            0,
        )
    } as i32;
    if d < 0 {
        return None;
    }
    let mut ok = true;
    'outer: loop {
        // SAFETY: `dents` is writable for its length.
        let r = unsafe {
            sc(
                sys::GETDENTS64,
                d as usize,
                dents.as_mut_ptr() as usize,
                dents.len(),
                0,
                0,
                0,
            )
        };
        if r <= 0 {
            break;
        }
        let mut off = 0;
        while off < r as usize {
            let reclen = u16::from_ne_bytes([dents[off + 16], dents[off + 17]]) as usize;
            let name = &dents[off + 19..off + reclen];
            off += reclen;
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            let name = &name[..end];
            if name.first() == Some(&b'.') {
                continue;
            }
            let fd = name.iter().fold(0i32, |v, &c| v * 10 + (c - b'0') as i32);
            if fd == d || fd == own || internal(fd) || fds[..remote_n].iter().any(|f| f.fd == fd) {
                continue;
            }
            if n == fds.len() {
                ok = false;
                break 'outer;
            }
            let mut rec = FdRecord::EMPTY;
            rec.fd = fd;
            rec.kind = FD_LOCAL;
            let mut link = [0u8; 26];
            link[..14].copy_from_slice(b"/proc/self/fd/");
            let mut db = [0u8; 20];
            let digits = sys::dec(fd as u64, &mut db);
            link[14..14 + digits.len()].copy_from_slice(digits);
            // SAFETY: `link` is NUL-terminated; `rec.path` is writable for 255 bytes.
            let l = unsafe {
                sc(
                    sys::READLINK,
                    link.as_ptr() as usize,
                    rec.path.as_mut_ptr() as usize,
                    255,
                    0,
                    0,
                    0,
                )
            };
            if l <= 0 || rec.path[0] != b'/' {
                *bad = fd;
                ok = false;
                break 'outer;
            }
            // SAFETY: F_GETFD/F_GETFL take no pointer.
            unsafe {
                rec.fd_flags =
                    sc(sys::FCNTL, fd as usize, libc::F_GETFD as usize, 0, 0, 0, 0) as i32;
                rec.open_flags =
                    sc(sys::FCNTL, fd as usize, libc::F_GETFL as usize, 0, 0, 0, 0) as i32;
                let o = sc(sys::LSEEK, fd as usize, 0, libc::SEEK_CUR as usize, 0, 0, 0);
                rec.offset = if o < 0 { 0 } else { o as u64 };
            }
            fds[n] = rec;
            n += 1;
        }
    }
    // SAFETY: closes the directory opened above.
    unsafe { sc(sys::CLOSE, d as usize, 0, 0, 0, 0, 0) };
    if ok { Some(n) } else { None }
}

/// Takes one image and streams it to the starter; `frame` is the handler's
/// `ucontext_t` address.
fn take(frame: u64) {
    // SAFETY: BUSY guarantees one handler at a time uses the statics.
    let s = unsafe { &mut *core::ptr::addr_of_mut!(S) };
    let fd = connect(&s.sock);
    if fd < 0 {
        return;
    }
    let threads = count_dir(b"/proc/self/task\0", &mut s.dents);
    if threads > 1 {
        let mut b = [0u8; 20];
        refuse(
            fd,
            &[
                b"the job has ",
                sys::dec(threads as u64, &mut b),
                b" threads",
            ],
        );
        return close(fd);
    }
    let n = maps::read(&mut s.maps);
    let Some(nreg) = maps::parse(&s.maps[..n], &mut s.regions, AREA) else {
        refuse(fd, &[b"too many memory regions"]);
        return close(fd);
    };
    for r in &s.regions[..nreg] {
        if r.flags & maps::SHARED != 0 && r.prot & 2 != 0 {
            let end = r.path.iter().position(|&c| c == 0).unwrap_or(0);
            refuse(fd, &[b"a shared writable mapping ", &r.path[..end]]);
            return close(fd);
        }
    }
    let remote: RemoteFds = {
        let p = REMOTE.load(Ordering::SeqCst);
        // SAFETY: the value was stored from a `RemoteFds` in `install`.
        unsafe { core::mem::transmute::<usize, RemoteFds>(p) }
    };
    let Some(nremote) = remote(&mut s.fds) else {
        refuse(fd, &[b"the shim is busy"]);
        return close(fd);
    };
    let mut bad = -1;
    let Some(nfds) = local_fds(&mut s.fds, nremote, fd, &mut s.dents, &mut bad) else {
        let mut b = [0u8; 20];
        if bad >= 0 {
            refuse(
                fd,
                &[
                    b"fd ",
                    sys::dec(bad as u64, &mut b),
                    b" is a pipe, socket or other object that cannot move",
                ],
            );
        } else {
            refuse(fd, &[b"too many open fds"]);
        }
        return close(fd);
    };
    let mut h = ImageHeader {
        magic: MAGIC,
        version: VERSION,
        arch: ARCH_X86_64,
        page_size: 4096,
        nregions: nreg as u32,
        nfds: nfds as u32,
        umask: 0,
        fs_base: 0,
        frame,
        brk: 0,
        sigactions: [KSigaction::default(); 65],
        tables_sum: 0,
        header_sum: 0,
    };
    // SAFETY: each call passes pointers to live locals of the right type.
    unsafe {
        sc(
            sys::ARCH_PRCTL,
            0x1003,
            core::ptr::addr_of_mut!(h.fs_base) as usize,
            0,
            0,
            0,
            0,
        );
        h.brk = sc(sys::BRK, 0, 0, 0, 0, 0, 0) as u64;
        let old = sc(sys::UMASK, 0, 0, 0, 0, 0, 0);
        sc(sys::UMASK, old as usize, 0, 0, 0, 0, 0);
        h.umask = old as u32;
        for sig in 1..65usize {
            sc(
                sys::RT_SIGACTION,
                sig,
                0,
                core::ptr::addr_of_mut!(h.sigactions[sig]) as usize,
                8,
                0,
                0,
            );
        }
    }
    let regions = table_bytes(&s.regions[..nreg]);
    let fdt = table_bytes(&s.fds[..nfds]);
    h.tables_sum = checksum(regions) ^ checksum(fdt).rotate_left(1);
    h.seal();
    let mut ok = write_all(fd, h.as_bytes()) && write_all(fd, regions) && write_all(fd, fdt);
    for r in &s.regions[..nreg] {
        if !ok {
            break;
        }
        if r.flags & RF_DATA == 0 {
            continue;
        }
        let len = (r.end - r.start) as usize;
        let mut sum = Checksum::new(len as u64);
        let mut off = 0;
        while ok && off < len {
            let n = (len - off).min(BOUNCE);
            // SAFETY: the region is mapped readable (from maps); the bounce
            // buffer may lie inside it, so the copy may overlap.
            unsafe {
                core::ptr::copy(
                    (r.start as usize + off) as *const u8,
                    s.bounce.as_mut_ptr(),
                    n,
                )
            };
            sum.update(&s.bounce[..n]);
            ok = write_all(fd, &s.bounce[..n]);
            off += n;
        }
        ok = ok && write_all(fd, &sum.finish().to_le_bytes());
    }
    if !ok {
        return close(fd);
    }
    // Wait until the image is committed on the submit host.
    let mut ack = [0u8; 1];
    // SAFETY: reading one byte into a local.
    let r = unsafe {
        sc(
            sys::READ,
            fd as usize,
            ack.as_mut_ptr() as usize,
            1,
            0,
            0,
            0,
        )
    };
    // Committed or not, the job goes on; the starter decides what follows.
    let _committed = r == 1 && ack[0] == ACK_COMMITTED;
    close(fd);
}

fn close(fd: i32) {
    // SAFETY: closes a socket this module opened.
    unsafe { sc(sys::CLOSE, fd as usize, 0, 0, 0, 0, 0) };
}
