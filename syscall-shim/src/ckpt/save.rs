//! Taking an image, inside the checkpoint signal's handler.
//!
//! The handler's tables, buffers and page hashes live in a work area
//! mapped with raw calls at [`WORK`] (never part of an image, so a restart
//! has none and its first image is full). After an image is committed the
//! area keeps one hash per saved page; an increment sends only the pages
//! whose hash changed, and the restart applies it over its parent.

use super::sys::{self, sc, write_all};
use super::{AREA, SIG_CKPT, WORK, WORK_SIZE};
use super::{maps, wp};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use proto::ckpt::{
    ACK_COMMITTED, ARCH_X86_64, DataSum, FD_LOCAL, FdRecord, IMG_KERNEL_TRACKED, ImageHeader,
    KIND_FULL, KIND_INCREMENT, KSigaction, MAGIC, REFUSED, RF_DATA, RF_STACK, Region, VERSION,
    bitmap_words, checksum, page_hash, table_bytes,
};

pub const MAX_REGIONS: usize = 8192;
pub const MAX_FDS: usize = 1024;
const PAGE: usize = 4096;

/// Lists the shim's remote fds into the slice; returns how many, or `None`
/// when the shim's state is busy (the checkpoint must wait).
pub type RemoteFds = fn(&mut [FdRecord]) -> Option<usize>;
/// True for fds that belong to the shim itself (its channel).
pub type Internal = fn(i32) -> bool;

/// The starter's `sigqueue` value that welcomes an increment.
pub const WANT_INCREMENT: i32 = 1;

/// What the work area remembers of the last committed image.
#[repr(C)]
struct Track {
    /// 1 when the hashes describe the last committed image.
    valid: u64,
    image_id: u64,
    nprev: u64,
    /// Which hash half holds the last image's hashes.
    half: u64,
    /// Images taken so far (mixed into new image ids).
    count: u64,
    /// The userfaultfd that records written pages ([`wp`]): 0 not opened
    /// yet, -1 not available.
    uffd: i64,
    /// 1 when the registered regions of the last image were protected at
    /// its commit (their written pages are the changed ones).
    wp: u64,
}

/// A data region of the last committed image and where its hashes start.
#[derive(Clone, Copy)]
#[repr(C)]
struct Prev {
    start: u64,
    end: u64,
    hash_off: u64,
    /// Registered with the userfaultfd and protected.
    registered: u64,
}

// Offsets in the work area.
const TRACK_OFF: usize = 0;
const PREV_OFF: usize = 0x1000;
/// Per data region of the image being taken: 1 when its changed pages
/// came from the kernel's record (it stays registered and protected).
const KEPT_OFF: usize = PREV_OFF + MAX_REGIONS * core::mem::size_of::<Prev>();
const SCAN_OFF: usize = KEPT_OFF + MAX_REGIONS;
const SCAN_LEN: usize = 4096;
const MAPS_OFF: usize = 0x60000;
const MAPS_LEN: usize = 1 << 20;
const REGIONS_OFF: usize = MAPS_OFF + MAPS_LEN;
const FDS_OFF: usize = REGIONS_OFF + MAX_REGIONS * core::mem::size_of::<Region>();
const DENTS_OFF: usize = FDS_OFF + MAX_FDS * core::mem::size_of::<FdRecord>();
const DENTS_LEN: usize = 8192;
const BOUNCE_OFF: usize = 0x40_0000;
/// Memory is copied through this buffer before it is sent, so the bytes
/// sent, their checksum and their hash agree even for the stack the
/// handler runs on.
const BOUNCE: usize = 4 << 20;
const DIRTY_OFF: usize = BOUNCE_OFF + BOUNCE;
const DIRTY_LEN: usize = 8 << 20;
const HASH_OFF: usize = DIRTY_OFF + DIRTY_LEN;
const HALF: usize = (WORK_SIZE as usize - HASH_OFF) / 2;
/// Pages whose hashes fit in one half (more than that: full images only).
const MAX_TRACKED: u64 = (HALF / 8) as u64;
const _: () = assert!(DENTS_OFF + DENTS_LEN <= BOUNCE_OFF);
const _: () = assert!(SCAN_OFF + SCAN_LEN * core::mem::size_of::<wp::PageRegion>() <= MAPS_OFF);

static mut SOCK: [u8; 108] = [0; 108];
static BUSY: AtomicBool = AtomicBool::new(false);
/// The work area is mapped in this process.
static WORK_READY: AtomicBool = AtomicBool::new(false);
static REMOTE: AtomicUsize = AtomicUsize::new(0);
static INTERNAL: AtomicUsize = AtomicUsize::new(0);

/// Called by a restart once memory holds the image: the image was taken
/// inside the handler, so it says a checkpoint is in progress, and it says
/// the work area is mapped, which it is not in this process.
pub fn reset_after_restore() {
    BUSY.store(false, Ordering::SeqCst);
    WORK_READY.store(false, Ordering::SeqCst);
}

/// Maps the work area if it is not yet; false if it cannot be.
fn work_area() -> bool {
    if WORK_READY.load(Ordering::SeqCst) {
        return true;
    }
    // SAFETY: a fresh anonymous mapping at an address that must be free;
    // MAP_NORESERVE: only the pages used take memory.
    let a = unsafe {
        sc(
            sys::MMAP,
            WORK as usize,
            WORK_SIZE as usize,
            (libc::PROT_READ | libc::PROT_WRITE) as usize,
            (libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_NORESERVE
                | libc::MAP_FIXED_NOREPLACE) as usize,
            usize::MAX,
            0,
        )
    };
    if a as u64 != WORK {
        return false;
    }
    WORK_READY.store(true, Ordering::SeqCst);
    true
}

fn at<T>(off: usize) -> *mut T {
    (WORK as usize + off) as *mut T
}

/// Installs the checkpoint handler. `sock` is the starter's checkpoint socket.
pub fn install(sock: &[u8], remote: RemoteFds, internal: Internal) -> bool {
    if sock.len() >= 108 {
        return false;
    }
    // SAFETY: called once from the constructor, before the handler exists.
    unsafe {
        let s = &mut *core::ptr::addr_of_mut!(SOCK);
        s[..sock.len()].copy_from_slice(sock);
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

extern "C" fn on_signal(_sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    if BUSY.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo; si_code is at offset 8 and
    // a sigqueue value (SI_QUEUE) at offset 24 on x86-64.
    let want_increment = unsafe {
        let b = info as *const u8;
        !info.is_null()
            && core::ptr::read_unaligned(b.add(8).cast::<i32>()) == libc::SI_QUEUE
            && core::ptr::read_unaligned(b.add(24).cast::<i32>()) == WANT_INCREMENT
    };
    take(uc as u64, want_increment);
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
    own: [i32; 2],
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
            if fd == d
                || own.contains(&fd)
                || internal(fd)
                || fds[..remote_n].iter().any(|f| f.fd == fd)
            {
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
/// `ucontext_t` address. An increment when asked for and the hashes of the
/// last committed image are at hand; a full image otherwise.
fn take(frame: u64, want_increment: bool) {
    // SAFETY: BUSY guarantees one handler at a time uses the statics.
    let sock = unsafe { &*core::ptr::addr_of!(SOCK) };
    let fd = connect(sock);
    if fd < 0 {
        return;
    }
    if !work_area() {
        refuse(fd, &[b"cannot map the checkpoint work area"]);
        return close(fd);
    }
    // SAFETY: the work area is mapped read-write and only this handler
    // (one at a time, BUSY) uses it; the pieces do not overlap.
    let (track, prev_all, maps_buf, regions, fds, dents, bounce, dirty) = unsafe {
        (
            &mut *at::<Track>(TRACK_OFF),
            core::slice::from_raw_parts_mut(at::<Prev>(PREV_OFF), MAX_REGIONS),
            core::slice::from_raw_parts_mut(at::<u8>(MAPS_OFF), MAPS_LEN),
            core::slice::from_raw_parts_mut(at::<Region>(REGIONS_OFF), MAX_REGIONS),
            core::slice::from_raw_parts_mut(at::<FdRecord>(FDS_OFF), MAX_FDS),
            core::slice::from_raw_parts_mut(at::<u8>(DENTS_OFF), DENTS_LEN),
            core::slice::from_raw_parts_mut(at::<u8>(BOUNCE_OFF), BOUNCE),
            core::slice::from_raw_parts_mut(at::<u64>(DIRTY_OFF), DIRTY_LEN / 8),
        )
    };
    if track.uffd > 0 && !wp::is_ours(track.uffd as i32) {
        // The job closed it: the record of written pages is gone.
        track.uffd = 0;
        track.valid = 0;
    }
    let threads = count_dir(b"/proc/self/task\0", dents);
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
    let n = maps::read(maps_buf);
    let Some(nreg) = maps::parse(&maps_buf[..n], regions, AREA) else {
        refuse(fd, &[b"too many memory regions"]);
        return close(fd);
    };
    let regions = &mut regions[..nreg];
    for r in regions.iter() {
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
    let Some(nremote) = remote(fds) else {
        refuse(fd, &[b"the shim is busy"]);
        return close(fd);
    };
    let mut bad = -1;
    let Some(nfds) = local_fds(fds, nremote, [fd, track.uffd as i32], dents, &mut bad) else {
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

    // Which pages go: all of them, or those whose hash changed.
    let (mut pages, mut words) = (0u64, 0u64);
    for r in regions.iter().filter(|r| r.flags & RF_DATA != 0) {
        let np = r.npages(PAGE as u64);
        pages += np;
        words += bitmap_words(np);
    }
    let tracked = pages <= MAX_TRACKED && words as usize <= dirty.len();
    if !tracked {
        track.valid = 0;
    }
    let increment = want_increment && tracked && track.valid == 1;
    let new_half = if track.valid == 1 { 1 - track.half } else { 0 };
    // SAFETY: both halves lie in the work area, after every other piece.
    // (The old half is read only for an increment, when it is the other one.)
    let (old_hash, new_hash): (&[u64], &mut [u64]) = unsafe {
        let h0 = at::<u64>(HASH_OFF + track.half.min(1) as usize * HALF);
        let h1 = at::<u64>(HASH_OFF + new_half as usize * HALF);
        (
            if increment {
                core::slice::from_raw_parts(h0, HALF / 8)
            } else {
                &[]
            },
            core::slice::from_raw_parts_mut(h1, HALF / 8),
        )
    };
    let prev = &prev_all[..(track.nprev as usize).min(MAX_REGIONS)];
    // SAFETY: both lie in the work area, apart from every other piece.
    let (kept, scanv) = unsafe {
        (
            core::slice::from_raw_parts_mut(at::<u8>(KEPT_OFF), MAX_REGIONS),
            core::slice::from_raw_parts_mut(at::<wp::PageRegion>(SCAN_OFF), SCAN_LEN),
        )
    };
    kept.fill(0);
    let wp_on = increment && track.uffd > 0 && track.wp == 1;
    let pagemap = if wp_on {
        // SAFETY: a NUL-terminated path, read-only.
        unsafe {
            sc(
                sys::OPEN,
                c"/proc/self/pagemap".as_ptr() as usize,
                (libc::O_RDONLY | libc::O_CLOEXEC) as usize,
                0,
                0,
                0,
                0,
            ) as i32
        }
    } else {
        -1
    };
    let wp_on = wp_on && pagemap >= 0;
    let (mut hoff, mut woff, mut pi, mut ri) = (0usize, 0usize, 0usize, 0usize);
    for r in regions.iter_mut().filter(|r| r.flags & RF_DATA != 0) {
        let np = r.npages(PAGE as u64) as usize;
        let nw = bitmap_words(np as u64) as usize;
        let bits = &mut dirty[woff..woff + nw];
        if !increment {
            bits.fill(u64::MAX);
            if !np.is_multiple_of(64) {
                bits[nw - 1] = (1u64 << (np % 64)) - 1;
            }
            r.pages = np as u64;
        } else {
            bits.fill(0);
            kept[ri] = 0;
            // Inside a region that was registered and protected at the last
            // commit: the kernel's record says which pages were written;
            // pages that went away without a write (`madvise`, reclaim) are
            // checked by their hash.
            let by_kernel = if wp_on {
                prev.iter()
                    .find(|p| p.registered == 1 && p.start <= r.start && r.end <= p.end)
            } else {
                None
            };
            if let Some(p) = by_kernel {
                let base = p.hash_off as usize + (r.start - p.start) as usize / PAGE;
                new_hash[hoff..hoff + np].copy_from_slice(&old_hash[base..base + np]);
                let (start, stack) = (r.start, r.flags & RF_STACK != 0);
                let mark = |bits: &mut [u64], a: u64, b: u64| {
                    for i in ((a - start) as usize / PAGE)..((b - start) as usize / PAGE).min(np) {
                        bits[i / 64] |= 1 << (i % 64);
                    }
                };
                let mut ok = wp::scan(pagemap, r.start, r.end, true, scanv, |a, b| {
                    mark(bits, a, b)
                });
                ok = ok
                    && wp::scan(pagemap, r.start, r.end, false, scanv, |a, b| {
                        for i in
                            ((a - start) as usize / PAGE)..((b - start) as usize / PAGE).min(np)
                        {
                            if bits[i / 64] & (1 << (i % 64)) != 0 {
                                continue;
                            }
                            let pa = start + (i * PAGE) as u64;
                            let h = if stack {
                                // SAFETY: as below, from a copy.
                                unsafe {
                                    core::ptr::copy(pa as *const u8, bounce.as_mut_ptr(), PAGE)
                                };
                                page_hash(&bounce[..PAGE])
                            } else {
                                // SAFETY: the page lies in a readable region.
                                page_hash(unsafe {
                                    core::slice::from_raw_parts(pa as *const u8, PAGE)
                                })
                            };
                            if h != new_hash[hoff + i] {
                                bits[i / 64] |= 1 << (i % 64);
                                new_hash[hoff + i] = h;
                            }
                        }
                    });
                if ok {
                    kept[ri] = 1;
                    r.pages = bits.iter().map(|w| w.count_ones() as u64).sum();
                    hoff += np;
                    woff += nw;
                    ri += 1;
                    continue;
                }
                bits.fill(0);
            }
            let mut sent = 0;
            for i in 0..np {
                let a = r.start + (i * PAGE) as u64;
                let h = if r.flags & RF_STACK != 0 {
                    // The stack holds this handler's own frames: hashed
                    // from a copy (memmove), not in place.
                    // SAFETY: the page is mapped readable; the bounce
                    // buffer lies in the work area.
                    unsafe { core::ptr::copy(a as *const u8, bounce.as_mut_ptr(), PAGE) };
                    page_hash(&bounce[..PAGE])
                } else {
                    // SAFETY: the page lies in a readable region of this
                    // process, outside the handler's stack.
                    page_hash(unsafe { core::slice::from_raw_parts(a as *const u8, PAGE) })
                };
                while pi < prev.len() && prev[pi].end <= a {
                    pi += 1;
                }
                let same = pi < prev.len()
                    && prev[pi].start <= a
                    && old_hash
                        [prev[pi].hash_off as usize + ((a - prev[pi].start) as usize / PAGE)]
                        == h;
                if !same {
                    bits[i / 64] |= 1 << (i % 64);
                    sent += 1;
                }
                new_hash[hoff + i] = h;
            }
            r.pages = sent;
        }
        hoff += np;
        woff += nw;
        ri += 1;
    }
    if pagemap >= 0 {
        close(pagemap);
    }

    track.count += 1;
    let mut tsc = 0u64;
    // SAFETY: rdtsc has no memory effects.
    unsafe {
        core::arch::asm!("rdtsc", "shl rdx, 32", "or rax, rdx", out("rax") tsc, out("rdx") _, options(nomem, nostack));
    }
    let image_id = (tsc ^ track.count.rotate_left(48) ^ track.image_id.rotate_left(17)) | 1;
    let mut h = ImageHeader {
        magic: MAGIC,
        version: VERSION,
        arch: ARCH_X86_64,
        page_size: PAGE as u32,
        nregions: nreg as u32,
        nfds: nfds as u32,
        umask: 0,
        fs_base: 0,
        frame,
        brk: 0,
        sigactions: [KSigaction::default(); 65],
        kind: if increment { KIND_INCREMENT } else { KIND_FULL },
        flags: if kept.contains(&1) {
            IMG_KERNEL_TRACKED
        } else {
            0
        },
        image_id,
        parent_id: if increment { track.image_id } else { 0 },
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
    let rbytes = table_bytes(regions);
    let fdt = table_bytes(&fds[..nfds]);
    h.tables_sum = checksum(rbytes) ^ checksum(fdt).rotate_left(1);
    h.seal();
    let mut ok = write_all(fd, h.as_bytes()) && write_all(fd, rbytes) && write_all(fd, fdt);
    let (mut hoff, mut woff) = (0usize, 0usize);
    for r in regions.iter().filter(|r| r.flags & RF_DATA != 0) {
        if !ok {
            break;
        }
        let np = r.npages(PAGE as u64) as usize;
        let nw = bitmap_words(np as u64) as usize;
        let bits = &dirty[woff..woff + nw];
        let mut sum = DataSum::new(nw as u64, r.pages);
        let bitmap = table_bytes(bits);
        sum.bitmap(bitmap);
        ok = write_all(fd, bitmap);
        let set = |i: usize| bits[i / 64] & (1 << (i % 64)) != 0;
        let mut i = 0;
        while ok && i < np {
            if bits[i / 64] == 0 {
                i = (i / 64 + 1) * 64;
                continue;
            }
            if !set(i) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < np && j - i < BOUNCE / PAGE && set(j) {
                j += 1;
            }
            let len = (j - i) * PAGE;
            // SAFETY: the pages are mapped readable (from maps); the
            // bounce buffer lies in the work area, outside every region.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    (r.start as usize + i * PAGE) as *const u8,
                    bounce.as_mut_ptr(),
                    len,
                )
            };
            for (k, p) in bounce[..len].chunks_exact(PAGE).enumerate() {
                let h = page_hash(p);
                sum.page(h);
                if tracked {
                    new_hash[hoff + i + k] = h;
                }
            }
            ok = write_all(fd, &bounce[..len]);
            i = j;
        }
        ok = ok && write_all(fd, &sum.finish().to_le_bytes());
        hoff += np;
        woff += nw;
    }
    if !ok {
        track.valid = 0;
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
    // The hashes describe the next parent only if this image is committed.
    if r == 1 && ack[0] == ACK_COMMITTED && tracked {
        if track.uffd == 0 {
            track.uffd = match wp::open() {
                fd if fd > 0 => fd as i64,
                _ => -1,
            };
        }
        // The regions the kernel's record did not cover this time are
        // registered and protected now; the others were protected again
        // by the scan.
        let uffd = track.uffd as i32;
        let mut n = 0;
        let mut off = 0u64;
        for r in regions.iter().filter(|r| r.flags & RF_DATA != 0) {
            let registered = if uffd <= 0 {
                false
            } else if kept[n] == 1 {
                true
            } else {
                wp::register(uffd, r.start, r.end) && wp::protect(uffd, r.start, r.end)
            };
            prev_all[n] = Prev {
                start: r.start,
                end: r.end,
                hash_off: off,
                registered: registered as u64,
            };
            off += r.npages(PAGE as u64);
            n += 1;
        }
        track.nprev = n as u64;
        track.half = new_half;
        track.image_id = image_id;
        track.wp = u64::from(uffd > 0);
        track.valid = 1;
    } else {
        track.valid = 0;
    }
    close(fd);
}

fn close(fd: i32) {
    // SAFETY: closes a socket this module opened.
    unsafe { sc(sys::CLOSE, fd as usize, 0, 0, 0, 0, 0) };
}
