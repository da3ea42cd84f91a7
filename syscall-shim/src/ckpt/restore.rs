//! Restarting from an image, in the shim's constructor of a fresh process
//! of the same executable. The stream holds a chain: a full image, then
//! the increments taken after it, each applied over the one before.

use super::maps;
use super::save::{MAX_FDS, MAX_REGIONS};
use super::sys::{self, read_exact, say, sc};
use super::{AREA, AREA_SIZE, ENV_RESTORE_FD};
use core::arch::asm;
use proto::ckpt::{
    DataSum, FD_LOCAL, FD_REMOTE, FdRecord, ImageHeader, KIND_FULL, KIND_INCREMENT, REATTACH,
    RF_DATA, RF_FILE, RF_HEAP, RF_STACK, Region, bitmap_words, checksum, page_hash, table_bytes,
};

/// Called by the shim after memory is restored and before the job runs
/// again: forget connections of the old process (no allocation allowed).
pub type AfterRestore = fn();

const MAPS_OFF: usize = 0;
const MAPS_LEN: usize = 1 << 20;
const HDR_OFF: usize = MAPS_LEN;
const IMG_OFF: usize = HDR_OFF + 4096;
const CUR_OFF: usize = IMG_OFF + MAX_REGIONS * core::mem::size_of::<Region>();
const FDS_OFF: usize = CUR_OFF + MAX_REGIONS * core::mem::size_of::<Region>();
const SOCK_OFF: usize = FDS_OFF + MAX_FDS * core::mem::size_of::<FdRecord>();
const BOUNCE_OFF: usize = SOCK_OFF + 4096;
const BOUNCE_LEN: usize = 4 << 20;
const BITMAP_OFF: usize = BOUNCE_OFF + BOUNCE_LEN;
const BITMAP_LEN: usize = 4 << 20;
const _: () = assert!(BITMAP_OFF + BITMAP_LEN + (1 << 20) < STACK_TOP);
const STACK_TOP: usize = AREA_SIZE as usize - 4096;

struct Args {
    fd: i32,
    sock: [u8; 108],
    after: AfterRestore,
}

/// If this process was started to restart an image (`ROOST_RESTORE_FD`),
/// restores it and never returns. `sock` is the starter's checkpoint socket
/// (for the remote fds).
pub fn maybe_restore(sock: &[u8], after: AfterRestore) {
    let Some(v) = std::env::var_os(ENV_RESTORE_FD) else {
        return;
    };
    let Some(fd) = v.to_str().and_then(|s| s.parse::<i32>().ok()) else {
        die(&[b"bad ROOST_RESTORE_FD"]);
    };
    // SAFETY: a fresh anonymous mapping at a fixed address that must be free.
    let a = unsafe {
        sc(
            sys::MMAP,
            AREA as usize,
            AREA_SIZE as usize,
            (libc::PROT_READ | libc::PROT_WRITE) as usize,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as usize,
            usize::MAX,
            0,
        )
    };
    if a as u64 != AREA {
        die(&[b"the restore area is taken"]);
    }
    let args = (AREA as usize + SOCK_OFF) as *mut Args;
    let mut s = [0u8; 108];
    s[..sock.len().min(107)].copy_from_slice(&sock[..sock.len().min(107)]);
    // SAFETY: the area was just mapped writable and is large enough.
    unsafe { args.write(Args { fd, sock: s, after }) };
    let top = AREA as usize + STACK_TOP;
    // SAFETY: switches to the area's stack and calls a function that never
    // returns; nothing on the old stack is used afterwards.
    unsafe {
        asm!("mov rsp, {st}", "call {f}", st = in(reg) top, f = sym restore_main, in("rdi") args as usize, options(noreturn));
    }
}

fn die(why: &[&[u8]]) -> ! {
    say(&[b"roost: restart failed: "]);
    say(why);
    say(&[b"\n"]);
    loop {
        // SAFETY: exit_group never returns.
        unsafe { sc(sys::EXIT_GROUP, 121, 0, 0, 0, 0, 0) };
    }
}

fn area<T>(off: usize) -> *mut T {
    (AREA as usize + off) as *mut T
}

extern "C" fn restore_main(args: usize) -> ! {
    // SAFETY: everything below touches only the restore area (mapped by
    // `maybe_restore`), memory the image describes (re-mapped before it is
    // written), and raw system calls. No statics are read after the image
    // overwrote them, except through addresses that are the same in both.
    unsafe {
        let Args { fd, sock, after } = core::ptr::read(args as *const Args);
        let hdr = area::<ImageHeader>(HDR_OFF);
        let hlen = core::mem::size_of::<ImageHeader>();
        if read_or_eof(fd, hdr.cast(), hlen) != Some(true) {
            die(&[b"the image ends in its header"]);
        }
        // A full image, then its increments in order, until the end.
        let mut parent = 0u64;
        let h = loop {
            let h = *hdr;
            if let Err(e) = h.verify(4096, MAX_REGIONS as u32) {
                die(&[e.as_str().as_bytes()]);
            }
            if parent == 0 && h.kind != KIND_FULL {
                die(&[b"the image chain does not begin with a full image"]);
            }
            if parent != 0 && (h.kind != KIND_INCREMENT || h.parent_id != parent) {
                die(&[b"an image of the chain does not follow its parent"]);
            }
            apply(fd, &h, parent == 0);
            parent = h.image_id;
            match read_or_eof(fd, hdr.cast(), hlen) {
                Some(true) => {}
                Some(false) => break h,
                None => die(&[b"the image ends in its header"]),
            }
        };
        let fds = core::slice::from_raw_parts(area::<FdRecord>(FDS_OFF), h.nfds as usize);
        sc(sys::CLOSE, fd as usize, 0, 0, 0, 0, 0);
        reopen_fds(fds, &sock);
        sc(sys::UMASK, h.umask as usize, 0, 0, 0, 0, 0);
        for (sig, act) in h.sigactions.iter().enumerate().skip(1) {
            if sig == 9 || sig == 19 {
                continue;
            }
            sc(sys::RT_SIGACTION, sig, act as *const _ as usize, 0, 8, 0, 0);
        }
        sc(sys::ARCH_PRCTL, 0x1002, h.fs_base as usize, 0, 0, 0, 0);
        super::save::reset_after_restore();
        after();
        asm!("mov rsp, {0}", "mov eax, 15", "syscall", in(reg) h.frame, options(noreturn));
    }
}

/// Reads exactly `len` bytes: `Some(true)`; `Some(false)` at a clean end
/// (nothing read); `None` when the stream ends inside.
unsafe fn read_or_eof(fd: i32, dst: *mut u8, len: usize) -> Option<bool> {
    let mut off = 0;
    while off < len {
        // SAFETY: the caller guarantees the range is writable.
        let r = unsafe {
            sc(
                sys::READ,
                fd as usize,
                dst as usize + off,
                len - off,
                0,
                0,
                0,
            )
        };
        if r == -4 {
            continue;
        }
        if r == 0 && off == 0 {
            return Some(false);
        }
        if r <= 0 {
            return None;
        }
        off += r as usize;
    }
    Some(true)
}

/// Unmaps `[a, b)`.
unsafe fn unmap(a: u64, b: u64) {
    if a < b {
        // SAFETY: the caller names a range that holds nothing still needed.
        unsafe { sc(sys::MUNMAP, a as usize, (b - a) as usize, 0, 0, 0, 0) };
    }
}

/// Makes `[r.start, r.end)` read-write, keeping the contents of the pages
/// mapped there (`cur`, sorted) and mapping fresh zero pages in the gaps.
unsafe fn keep_rw(r: &Region, cur: &[Region]) {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as usize;
    let anon = (libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_ANONYMOUS) as usize;
    // SAFETY: the ranges lie inside the image's region.
    unsafe {
        let fresh = |a: u64, b: u64| {
            if a < b
                && sc(
                    sys::MMAP,
                    a as usize,
                    (b - a) as usize,
                    rw,
                    anon,
                    usize::MAX,
                    0,
                ) as u64
                    != a
            {
                die(&[b"cannot map a memory region back"]);
            }
        };
        let mut a = r.start;
        for c in cur {
            if c.end <= a {
                continue;
            }
            if c.start >= r.end {
                break;
            }
            fresh(a, c.start.max(a));
            let e = c.end.min(r.end);
            let s = c.start.max(a);
            sc(sys::MPROTECT, s as usize, (e - s) as usize, rw, 0, 0, 0);
            a = e;
        }
        fresh(a, r.end);
    }
}

/// Applies one image whose header has been read: a full image replaces
/// the address space; an increment changes it from its parent's.
unsafe fn apply(fd: i32, h: &ImageHeader, full: bool) {
    // SAFETY: as in `restore_main`.
    unsafe {
        if h.nfds as usize > MAX_FDS {
            die(&[b"too many fds in the image"]);
        }
        let nreg = h.nregions as usize;
        let img = core::slice::from_raw_parts_mut(area::<Region>(IMG_OFF), nreg);
        let fds = core::slice::from_raw_parts_mut(area::<FdRecord>(FDS_OFF), h.nfds as usize);
        if !read_exact(fd, img.as_mut_ptr().cast(), core::mem::size_of_val(img))
            || !read_exact(fd, fds.as_mut_ptr().cast(), core::mem::size_of_val(fds))
        {
            die(&[b"the image ends in its tables"]);
        }
        if checksum(table_bytes(img)) ^ checksum(table_bytes(fds)).rotate_left(1) != h.tables_sum {
            die(&[b"checkpoint image tables are corrupt (checksum)"]);
        }
        let text = core::slice::from_raw_parts_mut(area::<u8>(MAPS_OFF), MAPS_LEN);
        let n = maps::read(text);
        let cur = core::slice::from_raw_parts_mut(area::<Region>(CUR_OFF), MAX_REGIONS);
        let Some(ncur) = maps::parse(&text[..n], cur, AREA) else {
            die(&[b"too many regions here"])
        };
        let cur = &cur[..ncur];
        for r in img.iter() {
            if r.start < AREA + AREA_SIZE && AREA < r.end {
                die(&[b"the image overlaps the restore area"]);
            }
        }
        if full {
            // What this process has and the image has not goes.
            for c in cur {
                if !img.iter().any(|r| r.start < c.end && c.start < r.end) {
                    unmap(c.start, c.end);
                }
            }
        } else {
            // Every part of the parent's layout that the increment does
            // not have goes.
            for c in cur {
                let mut a = c.start;
                for r in img.iter() {
                    if r.end <= a {
                        continue;
                    }
                    if r.start >= c.end {
                        break;
                    }
                    unmap(a, r.start.max(a));
                    a = a.max(r.end);
                }
                unmap(a, c.end);
            }
        }
        sc(sys::BRK, h.brk as usize, 0, 0, 0, 0, 0);
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as usize;
        let anon = (libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_ANONYMOUS) as usize;
        for r in img.iter() {
            let len = (r.end - r.start) as usize;
            // Same file mapped at the same place here (this run's loader put it there).
            let same = cur.iter().any(|c| {
                c.start == r.start
                    && c.end == r.end
                    && c.offset == r.offset
                    && c.flags & RF_FILE == r.flags & RF_FILE
                    && (r.flags & RF_FILE == 0 || c.path == r.path)
            });
            if r.flags & RF_DATA == 0 {
                if same {
                    sc(
                        sys::MPROTECT,
                        r.start as usize,
                        len,
                        r.prot as usize,
                        0,
                        0,
                        0,
                    );
                } else if r.flags & RF_FILE != 0 {
                    let pfd = sc(
                        sys::OPEN,
                        r.path.as_ptr() as usize,
                        libc::O_RDONLY as usize,
                        0,
                        0,
                        0,
                        0,
                    );
                    if pfd < 0 {
                        let end = r.path.iter().position(|&c| c == 0).unwrap_or(0);
                        die(&[b"cannot open mapped file ", &r.path[..end]]);
                    }
                    let a = sc(
                        sys::MMAP,
                        r.start as usize,
                        len,
                        r.prot as usize,
                        (libc::MAP_PRIVATE | libc::MAP_FIXED) as usize,
                        pfd as usize,
                        r.offset as usize,
                    );
                    sc(sys::CLOSE, pfd as usize, 0, 0, 0, 0, 0);
                    if a as u64 != r.start {
                        die(&[b"cannot map a file back"]);
                    }
                } else {
                    sc(
                        sys::MMAP,
                        r.start as usize,
                        len,
                        r.prot as usize,
                        anon,
                        usize::MAX,
                        0,
                    );
                }
                continue;
            }
            if r.flags & RF_STACK != 0 {
                // Grow this process's stack down to the image's, page by
                // page (a read keeps what an increment's parent left).
                let mut a = r.end - 4096;
                while a >= r.start {
                    if full {
                        core::ptr::write_volatile(a as *mut u8, 0);
                    } else {
                        core::ptr::read_volatile(a as *const u8);
                    }
                    a -= 4096;
                }
                sc(sys::MPROTECT, r.start as usize, len, rw, 0, 0, 0);
            } else if r.flags & RF_HEAP != 0
                && sc(sys::MPROTECT, r.start as usize, len, rw, 0, 0, 0) == 0
            {
            } else if !full {
                keep_rw(r, cur);
            } else if same {
                sc(sys::MPROTECT, r.start as usize, len, rw, 0, 0, 0);
            } else if sc(sys::MMAP, r.start as usize, len, rw, anon, usize::MAX, 0) as u64
                != r.start
            {
                die(&[b"cannot map a memory region back"]);
            }
            if full && r.pages == r.npages(4096) {
                // Every page is about to be written: fault them in with
                // one call (MADV_POPULATE_WRITE) rather than one trap per
                // page; a kernel without it just faults as the copy goes.
                sc(sys::MADVISE, r.start as usize, len, 23, 0, 0, 0);
            }
            fill(fd, r);
            sc(
                sys::MPROTECT,
                r.start as usize,
                len,
                r.prot as usize,
                0,
                0,
                0,
            );
        }
    }
}

/// Reads a data region's bitmap and the pages it marks into the region.
unsafe fn fill(fd: i32, r: &Region) {
    const PAGE: usize = 4096;
    // SAFETY: the region is mapped read-write; the buffers lie in the
    // restore area.
    unsafe {
        let np = r.npages(PAGE as u64) as usize;
        let nw = bitmap_words(np as u64) as usize;
        if nw * 8 > BITMAP_LEN {
            die(&[b"a memory region of the image is too large"]);
        }
        let bits = core::slice::from_raw_parts_mut(area::<u64>(BITMAP_OFF), nw);
        if !read_exact(fd, bits.as_mut_ptr().cast(), nw * 8) {
            die(&[b"the image ends in a page bitmap"]);
        }
        let marked: u64 = bits.iter().map(|w| w.count_ones() as u64).sum();
        if marked != r.pages {
            die(&[b"checkpoint image data is corrupt (page bitmap)"]);
        }
        let mut sum = DataSum::new(nw as u64, r.pages);
        sum.bitmap(table_bytes(bits));
        // Through a buffer in the restore area: the kernel may write
        // into restored memory at any time (the rseq area), so the
        // checksum is taken over the bytes as they arrived.
        let bounce = core::slice::from_raw_parts_mut(area::<u8>(BOUNCE_OFF), BOUNCE_LEN);
        let set = |i: usize| bits[i / 64] & (1 << (i % 64)) != 0;
        let mut i = 0;
        while i < np {
            if bits[i / 64] == 0 {
                i = (i / 64 + 1) * 64;
                continue;
            }
            if !set(i) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < np && j - i < BOUNCE_LEN / PAGE && set(j) {
                j += 1;
            }
            let n = (j - i) * PAGE;
            if !read_exact(fd, bounce.as_mut_ptr(), n) {
                die(&[b"the image ends in a memory region"]);
            }
            for p in bounce[..n].chunks_exact(PAGE) {
                sum.page(page_hash(p));
            }
            core::ptr::copy_nonoverlapping(
                bounce.as_ptr(),
                (r.start as usize + i * PAGE) as *mut u8,
                n,
            );
            i = j;
        }
        let mut want = [0u8; 8];
        if !read_exact(fd, want.as_mut_ptr(), 8) {
            die(&[b"the image ends in a checksum"]);
        }
        if sum.finish() != u64::from_le_bytes(want) {
            die(&[b"checkpoint image data is corrupt (checksum)"]);
        }
    }
}

/// Puts every fd of the image back at its number: local files by path and
/// offset, remote ones from the starter (sent with SCM_RIGHTS).
unsafe fn reopen_fds(fds: &[FdRecord], sock: &[u8; 108]) {
    // SAFETY: raw calls on fds and buffers owned here.
    unsafe {
        for f in fds.iter().filter(|f| f.kind & FD_LOCAL != 0) {
            let flags = f.open_flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL);
            let nfd = sc(
                sys::OPEN,
                f.path.as_ptr() as usize,
                (flags | libc::O_CLOEXEC) as usize,
                0,
                0,
                0,
                0,
            );
            if nfd < 0 {
                let end = f.path.iter().position(|&c| c == 0).unwrap_or(0);
                die(&[b"cannot reopen ", &f.path[..end]]);
            }
            if f.offset > 0 {
                sc(
                    sys::LSEEK,
                    nfd as usize,
                    f.offset as usize,
                    libc::SEEK_SET as usize,
                    0,
                    0,
                    0,
                );
            }
            place(nfd as i32, f);
        }
        let nremote = fds.iter().filter(|f| f.kind & FD_REMOTE != 0).count();
        if nremote == 0 {
            return;
        }
        let s = sc(
            sys::SOCKET,
            libc::AF_UNIX as usize,
            (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as usize,
            0,
            0,
            0,
            0,
        );
        let mut addr = [0u8; 110];
        addr[0] = libc::AF_UNIX as u8;
        addr[2..].copy_from_slice(sock);
        if s < 0
            || sc(
                sys::CONNECT,
                s as usize,
                addr.as_ptr() as usize,
                addr.len(),
                0,
                0,
                0,
            ) < 0
        {
            die(&[b"cannot reach the starter for the remote fds"]);
        }
        // The socket must not sit on a number the image's fds go back to.
        let high = sc(
            sys::FCNTL,
            s as usize,
            libc::F_DUPFD_CLOEXEC as usize,
            900,
            0,
            0,
            0,
        );
        let s = if high >= 0 {
            sc(sys::CLOSE, s as usize, 0, 0, 0, 0, 0);
            high as i32
        } else {
            s as i32
        };
        let count = (nremote as u32).to_le_bytes();
        let mut ok = sys::write_all(s, &REATTACH) && sys::write_all(s, &count);
        for f in fds.iter().filter(|f| f.kind & FD_REMOTE != 0) {
            ok = ok && sys::write_all(s, table_bytes(core::slice::from_ref(f)));
        }
        if !ok {
            die(&[b"the starter went away"]);
        }
        for f in fds.iter().filter(|f| f.kind & FD_REMOTE != 0) {
            let nfd = recv_fd(s);
            if nfd < 0 {
                die(&[b"the starter could not reopen a remote fd"]);
            }
            place(nfd, f);
        }
        sc(sys::CLOSE, s as usize, 0, 0, 0, 0, 0);
    }
}

/// Moves `nfd` to the record's fd number with its close-on-exec flag.
unsafe fn place(nfd: i32, f: &FdRecord) {
    // SAFETY: dup3/close on fds owned by this process.
    unsafe {
        if nfd != f.fd {
            let cloexec = if f.fd_flags & libc::FD_CLOEXEC != 0 {
                libc::O_CLOEXEC
            } else {
                0
            };
            if sc(292, nfd as usize, f.fd as usize, cloexec as usize, 0, 0, 0) < 0 {
                die(&[b"cannot put an fd back at its number"]);
            }
            sc(sys::CLOSE, nfd as usize, 0, 0, 0, 0, 0);
        } else if f.fd_flags & libc::FD_CLOEXEC == 0 {
            sc(sys::FCNTL, nfd as usize, libc::F_SETFD as usize, 0, 0, 0, 0);
        }
    }
}

/// Receives one byte with one fd attached; returns the fd or -1.
unsafe fn recv_fd(s: i32) -> i32 {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; the buffers outlive the call.
    unsafe {
        let mut msg: libc::msghdr = core::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = core::mem::size_of_val(&cbuf);
        let r = sc(
            sys::RECVMSG,
            s as usize,
            &mut msg as *mut _ as usize,
            libc::MSG_CMSG_CLOEXEC as usize,
            0,
            0,
            0,
        );
        if r != 1 || byte[0] != b'F' {
            return -1;
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            return -1;
        }
        core::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>())
    }
}
