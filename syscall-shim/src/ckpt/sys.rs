//! Raw system calls for the checkpoint paths (no libc, no errno).

use core::arch::asm;

pub const READ: usize = 0;
pub const WRITE: usize = 1;
pub const OPEN: usize = 2;
pub const CLOSE: usize = 3;
pub const FSTAT: usize = 5;
pub const LSEEK: usize = 8;
pub const MMAP: usize = 9;
pub const MPROTECT: usize = 10;
pub const MUNMAP: usize = 11;
pub const BRK: usize = 12;
pub const MADVISE: usize = 28;
pub const RT_SIGACTION: usize = 13;
pub const IOCTL: usize = 16;
pub const SOCKET: usize = 41;
pub const CONNECT: usize = 42;
pub const RECVMSG: usize = 47;
pub const DUP2: usize = 33;
pub const FCNTL: usize = 72;
pub const FSYNC: usize = 74;
pub const READLINK: usize = 89;
pub const UMASK: usize = 95;
pub const ARCH_PRCTL: usize = 158;
pub const EXIT_GROUP: usize = 231;
pub const GETDENTS64: usize = 217;

/// One system call; returns the raw result (negative errno on failure).
///
/// # Safety
/// The arguments must be valid for system call `n`.
#[inline(always)]
pub unsafe fn sc(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let r: isize;
    // SAFETY: the caller guarantees the arguments suit syscall `n`; the
    // kernel clobbers only rcx and r11, which are declared.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => r, in("rdi") a, in("rsi") b, in("rdx") c,
             in("r10") d, in("r8") e, in("r9") f, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r
}

/// Writes all of `buf` to `fd`; false on any error.
pub fn write_all(fd: i32, buf: &[u8]) -> bool {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer and length describe the live slice `buf[off..]`.
        let r = unsafe {
            sc(
                WRITE,
                fd as usize,
                buf.as_ptr() as usize + off,
                buf.len() - off,
                0,
                0,
                0,
            )
        };
        if r == -4 {
            continue;
        }
        if r <= 0 {
            return false;
        }
        off += r as usize;
    }
    true
}

/// Reads exactly `len` bytes to `dst`; false on error or end of file.
///
/// # Safety
/// `dst..dst+len` must be writable memory.
pub unsafe fn read_exact(fd: i32, dst: *mut u8, len: usize) -> bool {
    let mut off = 0;
    while off < len {
        // SAFETY: the caller guarantees the range is writable.
        let r = unsafe { sc(READ, fd as usize, dst as usize + off, len - off, 0, 0, 0) };
        if r == -4 {
            continue;
        }
        if r <= 0 {
            return false;
        }
        off += r as usize;
    }
    true
}

/// Writes a message to stderr.
pub fn say(parts: &[&[u8]]) {
    for p in parts {
        write_all(2, p);
    }
}

/// Formats `v` in decimal into `buf`; returns the digits.
pub fn dec(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}
