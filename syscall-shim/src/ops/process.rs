//! Process ops: what `fork`, `exec`, `posix_spawn` and exit need — settled
//! read-ahead, flushed writes, and an environment that keeps the shim.

use std::ffi::{CStr, c_char};

use super::{SHIM, active, conf, guarded};
use crate::sys;

/// Before `fork`/`exec`/`spawn`: the shared offsets are the job's logical
/// offsets and every write so far is applied.
pub fn prepare() {
    let mut s = SHIM.lock();
    if !s.chan.live() {
        return;
    }
    let _ = s.settle_all();
    let _ = s.flush();
    for (_, v) in s.vfds.iter_mut() {
        v.shared = true;
    }
}

/// At `exit` (a destructor): apply this process's writes.
pub fn at_exit() {
    if !active() {
        return;
    }
    guarded(|| {
        // Another thread may hold the state at exit (blocked in a remote
        // call): the starter drains the placeholders anyway, so give up
        // rather than hang the exit.
        for _ in 0..1000 {
            if let Some(mut s) = SHIM.try_lock() {
                if s.chan.live() {
                    let _ = s.flush();
                }
                return;
            }
            // SAFETY: sched_yield takes no arguments.
            unsafe { libc::syscall(libc::SYS_sched_yield) };
        }
    });
}

const MAX_ENV: usize = 2048;
const ENV_BYTES: usize = 16 << 10;

/// Room on the caller's stack for a rewritten environment (no allocation).
pub struct EnvBuf {
    ptrs: [*const c_char; MAX_ENV],
    bytes: [u8; ENV_BYTES],
    used: usize,
}

impl EnvBuf {
    pub const fn new() -> EnvBuf {
        EnvBuf {
            ptrs: [std::ptr::null(); MAX_ENV],
            bytes: [0; ENV_BYTES],
            used: 0,
        }
    }

    /// Stores `parts` concatenated and NUL-terminated; its address.
    fn put(&mut self, parts: &[&[u8]]) -> Option<*const c_char> {
        let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 1;
        if self.used + len > ENV_BYTES {
            return None;
        }
        let start = self.used;
        for p in parts {
            self.bytes[self.used..self.used + p.len()].copy_from_slice(p);
            self.used += p.len();
        }
        self.bytes[self.used] = 0;
        self.used += 1;
        Some(self.bytes[start..].as_ptr().cast())
    }
}

impl Default for EnvBuf {
    fn default() -> Self {
        Self::new()
    }
}

fn strip_nul(v: &[u8]) -> &[u8] {
    v.strip_suffix(b"\0").unwrap_or(v)
}

/// `envp` with `LD_PRELOAD` (keeping the shim), `ROOST_SOCK`, `ROOST_ROOT`,
/// `ROOST_SHIM_LOG` and the current `ROOST_CWD`, built in `buf`.
///
/// # Safety
/// `envp` must be NULL or a NULL-terminated array of C strings.
pub unsafe fn build_env(
    envp: *const *const c_char,
    cwd: &[u8],
    buf: &mut EnvBuf,
) -> *const *const c_char {
    let c = conf();
    let ours = strip_nul(&c.env_preload);
    let ours_val = ours.strip_prefix(b"LD_PRELOAD=").unwrap_or_default();
    let mut n = 0;
    let mut theirs: Option<&[u8]> = None;
    let mut preload_done = ours.is_empty();
    let mut i = 0;
    while !envp.is_null() {
        // SAFETY: envp is NULL-terminated (the caller's contract).
        let p = unsafe { *envp.add(i) };
        if p.is_null() {
            break;
        }
        i += 1;
        // SAFETY: each entry is a C string.
        let e = unsafe { CStr::from_ptr(p) }.to_bytes();
        if [
            &b"ROOST_SOCK="[..],
            b"ROOST_ROOT=",
            b"ROOST_CWD=",
            b"ROOST_SHIM_LOG=",
        ]
        .iter()
        .any(|k| e.starts_with(k))
        {
            continue;
        }
        if let Some(v) = e.strip_prefix(b"LD_PRELOAD=")
            && !preload_done
        {
            if !ours_val.is_empty() && v.windows(ours_val.len()).any(|w| w == ours_val) {
                preload_done = true;
            } else {
                theirs = Some(v);
                continue;
            }
        }
        if n >= MAX_ENV - 8 {
            return envp;
        }
        buf.ptrs[n] = p;
        n += 1;
    }
    for k in &c.env_keep {
        buf.ptrs[n] = k.as_ptr().cast();
        n += 1;
    }
    if !preload_done {
        let p = match theirs {
            Some(t) if !t.is_empty() => buf.put(&[b"LD_PRELOAD=", ours_val, b":", t]),
            _ => Some(c.env_preload.as_ptr().cast()),
        };
        if let Some(p) = p {
            buf.ptrs[n] = p;
            n += 1;
        }
    }
    if let Some(p) = buf.put(&[b"ROOST_CWD=", cwd]) {
        buf.ptrs[n] = p;
        n += 1;
    }
    buf.ptrs[n] = std::ptr::null();
    buf.ptrs.as_ptr()
}

/// The current directory a new image starts in (`ROOST_CWD`).
pub fn exec_cwd() -> Vec<u8> {
    SHIM.lock().cwd.clone().unwrap_or_else(sys::real_cwd)
}

/// An executable on a remote path cannot be mapped by the kernel from
/// there: copies it into a memfd (nothing is left in the scratch
/// directory) for `execveat(fd, "", AT_EMPTY_PATH)`. `None` when `path` is
/// local. A script's memfd stays open across the exec (its interpreter
/// reads it as `/dev/fd/N`); an ELF file's is close-on-exec.
pub fn fetch_exec(path: &[u8]) -> Option<Result<i32, crate::ops::Errno>> {
    let data = {
        let mut s = SHIM.lock();
        let super::Route::Remote { at, path } = s.route(libc::AT_FDCWD, path) else {
            return None;
        };
        let fd =
            match super::file::open_remote(&mut s, at, path, libc::O_RDONLY | libc::O_CLOEXEC, 0) {
                Ok(fd) => fd,
                Err(e) => return Some(Err(e)),
            };
        let mut data = Vec::new();
        let mut chunk = vec![0u8; 1 << 20];
        let r = loop {
            // SAFETY: chunk is writable for its length.
            match unsafe { super::file::read_remote(&mut s, fd, chunk.as_mut_ptr(), chunk.len()) } {
                Ok(0) => break Ok(()),
                Ok(n) => data.extend_from_slice(&chunk[..n as usize]),
                Err(e) => break Err(e),
            }
        };
        s.vfds.remove(fd);
        sys::close(fd);
        if let Err(e) = r {
            return Some(Err(e));
        }
        data
    };
    let flags = if data.starts_with(b"\x7fELF") {
        libc::MFD_CLOEXEC
    } else {
        0
    };
    let name = b"roost-exec\0";
    // SAFETY: name is NUL-terminated.
    let fd = match unsafe {
        sys::sc(
            libc::SYS_memfd_create,
            [name.as_ptr() as usize, flags as usize, 0, 0, 0, 0],
        )
    } {
        Ok(fd) => fd as i32,
        Err(e) => return Some(Err(e)),
    };
    if let Err(e) = sys::write_all(fd, &data) {
        sys::close(fd);
        return Some(Err(e));
    }
    Some(Ok(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(p: *const *const c_char) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            // SAFETY: p is a NULL-terminated array built by build_env.
            let e = unsafe { *p.add(i) };
            if e.is_null() {
                return out;
            }
            // SAFETY: entries are C strings.
            out.push(unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned());
            i += 1;
        }
    }

    #[test]
    fn env_keeps_the_job_variables_and_the_cwd() {
        let a = c"PATH=/bin";
        let b = c"ROOST_CWD=/stale";
        let envp = [a.as_ptr(), b.as_ptr(), std::ptr::null()];
        let mut buf = Box::new(EnvBuf::new());
        // SAFETY: envp is NULL-terminated.
        let out = strings(unsafe { build_env(envp.as_ptr(), b"/home/ann/job/sub", &mut buf) });
        assert!(out.contains(&"PATH=/bin".to_string()));
        assert!(out.contains(&"ROOST_CWD=/home/ann/job/sub".to_string()));
        assert!(!out.contains(&"ROOST_CWD=/stale".to_string()));
        // SAFETY: an empty environment (NULL pointer) is allowed.
        let out = strings(unsafe { build_env(std::ptr::null(), b"/x", &mut buf) });
        assert_eq!(out, vec!["ROOST_CWD=/x".to_string()]);
    }
}
