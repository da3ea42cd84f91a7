//! The shim's optional log (`ROOST_SHIM_LOG`): formatted into a stack
//! buffer and appended with one raw `write`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI32, Ordering};

static LOG_FD: AtomicI32 = AtomicI32::new(-1);

/// Opens the log file (called once at start-up).
pub fn open(path: &[u8]) {
    let mut p = [0u8; 4096];
    if path.is_empty() || path.len() >= p.len() {
        return;
    }
    p[..path.len()].copy_from_slice(path);
    let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC;
    // SAFETY: p is NUL-terminated (zero-filled past the path).
    let fd = unsafe {
        crate::sys::sc(
            libc::SYS_openat,
            [
                libc::AT_FDCWD as usize,
                p.as_ptr() as usize,
                flags as usize,
                0o644,
                0,
                0,
            ],
        )
    };
    if let Ok(fd) = fd {
        let fd = fd as i32;
        let high = crate::sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, 950)
            .map(|f| f as i32)
            .unwrap_or(fd);
        if high != fd {
            crate::sys::close(fd);
        }
        LOG_FD.store(high, Ordering::Relaxed);
    }
}

pub fn fd() -> i32 {
    LOG_FD.load(Ordering::Relaxed)
}

struct Buf {
    b: [u8; 1024],
    n: usize,
}

impl Write for Buf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.b.len() - 1 - self.n;
        let k = s.len().min(room);
        self.b[self.n..self.n + k].copy_from_slice(&s.as_bytes()[..k]);
        self.n += k;
        Ok(())
    }
}

/// Appends one line to the log, if there is one.
pub fn line(args: std::fmt::Arguments<'_>) {
    let fd = fd();
    if fd < 0 {
        return;
    }
    let mut b = Buf { b: [0; 1024], n: 0 };
    let _ = write!(b, "roost-shim[{}]: ", crate::sys::getpid());
    let _ = b.write_fmt(args);
    b.b[b.n] = b'\n';
    let _ = crate::sys::write_all(fd, &b.b[..b.n + 1]);
}

/// `shim_log!("fmt", args)`: one line on the shim log.
#[macro_export]
macro_rules! shim_log {
    ($($t:tt)*) => { $crate::log::line(format_args!($($t)*)) };
}
