//! What the hooks do: the shim's global state (channel, virtual fd table,
//! virtual current directory) and the call runner every hook goes through.
//!
//! Each op returns `None` when the call is local (the hook calls libc),
//! `Some(Ok(v))` when it was handled remotely, `Some(Err(errno))` on error.

pub mod dir;
pub mod file;
pub mod meta;
pub mod net;
pub mod process;
pub mod stdio;

use std::cell::Cell;
use std::ffi::{CStr, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use proto::Handle;
pub use proto::fileop::Errno;
use proto::fileop::{FileOp, FileReply};
use proto::shim::{ShimReply, ShimRequest};

use crate::chan::Chan;
use crate::lock::Spin;
use crate::path::{self, Where};
use crate::vfd::{Kind, Vfd, VfdTable};
use crate::{shim_log, sys};

/// What the shim learnt from its environment at start-up.
#[derive(Debug, Default)]
pub struct Conf {
    pub sock: Vec<u8>,
    pub root: Vec<u8>,
    pub scratch: Vec<u8>,
    /// `LD_PRELOAD=...` as this image got it.
    pub env_preload: Vec<u8>,
    /// `ROOST_SOCK=...`, `ROOST_ROOT=...`, `ROOST_SHIM_LOG=...` (NUL-terminated).
    pub env_keep: Vec<Vec<u8>>,
}

pub static CONF: OnceLock<Conf> = OnceLock::new();
static ACTIVE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while this thread runs shim code: nested hooks call libc.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

pub fn conf() -> &'static Conf {
    static EMPTY: Conf = Conf {
        sock: Vec::new(),
        root: Vec::new(),
        scratch: Vec::new(),
        env_preload: Vec::new(),
        env_keep: Vec::new(),
    };
    CONF.get().unwrap_or(&EMPTY)
}

/// This thread is running shim code (a signal handler must not use the
/// shim's state then).
pub fn in_shim() -> bool {
    BUSY.try_with(|b| b.get()).unwrap_or(true)
}

/// The shim is connected to a starter (not inert).
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Runs one hook: `op` decides, inside the re-entrancy guard and
/// `catch_unwind`; `bypass` calls libc when the call is local.
pub fn run<T>(
    fail: T,
    op: impl FnOnce() -> Option<Result<T, Errno>>,
    bypass: impl FnOnce() -> T,
) -> T {
    if !active() || BUSY.try_with(|b| b.get()).unwrap_or(true) {
        return bypass();
    }
    BUSY.with(|b| b.set(true));
    let r = catch_unwind(AssertUnwindSafe(op));
    BUSY.with(|b| b.set(false));
    match r {
        Ok(None) => bypass(),
        Ok(Some(Ok(v))) => v,
        Ok(Some(Err(e))) => {
            sys::set_errno(e);
            fail
        }
        Err(_) => {
            shim_log!("a hook panicked; returning EIO");
            sys::set_errno(libc::EIO);
            fail
        }
    }
}

/// Runs shim code outside any hook (constructor, destructor, cookie
/// functions) with the guard set; a panic gives `None`.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    if BUSY.try_with(|b| b.get()).unwrap_or(true) {
        return None;
    }
    BUSY.with(|b| b.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    BUSY.with(|b| b.set(false));
    if r.is_err() {
        shim_log!("shim code panicked");
    }
    r.ok()
}

/// The shim's mutable state.
pub struct Shim {
    pub chan: Chan,
    pub vfds: VfdTable,
    /// The virtual current directory when it is remote (absolute, submit host).
    pub cwd: Option<Vec<u8>>,
}

pub static SHIM: Spin<Shim> = Spin::new(Shim {
    chan: Chan::none(),
    vfds: VfdTable::new(),
    cwd: None,
});

/// Where a path argument leads.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Local,
    Remote { at: Option<Handle>, path: Vec<u8> },
}

impl Shim {
    /// Connects if this process has no live connection (start-up, or a
    /// forked child), says `Hello` and rebuilds the fd table from `Welcome`.
    pub fn ensure(&mut self) -> Result<(), Errno> {
        if self.chan.live() {
            return Ok(());
        }
        self.connect(false)
    }

    /// `new_image`: first connection of a freshly exec'd image (fd 0 may
    /// become a stream).
    pub fn connect(&mut self, new_image: bool) -> Result<(), Errno> {
        self.chan.close();
        let log = crate::log::fd();
        let mut inherited = Vec::new();
        for fd in sys::open_fds() {
            if fd == log {
                continue;
            }
            if let Ok(st) = sys::fstat(fd)
                && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
            {
                inherited.push((fd, st.st_ino));
            }
        }
        let chan = Chan::connect(&conf().sock)
            .inspect_err(|e| shim_log!("cannot connect to the starter: errno {e}"))?;
        self.chan = chan;
        let pid = sys::getpid();
        let (reply, fd) = self.chan.call(&ShimRequest::Hello {
            pid,
            inherited: inherited.clone(),
        })?;
        if let Some(f) = fd {
            sys::close(f);
        }
        let ShimReply::Welcome { remote } = reply else {
            shim_log!("starter answered Hello with {reply:?}");
            self.chan.close();
            return Err(libc::EIO);
        };
        let mut old: Vec<(i32, Vfd)> = Vec::new();
        for (fd, v) in self.vfds.iter_mut() {
            old.push((fd, std::mem::replace(v, Vfd::new(Handle(0), 0, 0))));
        }
        self.vfds.clear();
        for r in remote {
            let Some(&(_, ino)) = inherited.iter().find(|(f, _)| *f == r.fd) else {
                continue;
            };
            let mut v = Vfd::new(r.h, r.flags, ino);
            v.stream = r.stream;
            v.dir = r.dir;
            v.shared = true;
            if let Some((_, o)) = old.iter_mut().find(|(f, o)| *f == r.fd && o.h == r.h) {
                v.kind = o.kind;
                v.dents = std::mem::take(&mut o.dents);
                // A restarted image keeps what it had read ahead (the shadow's
                // offset was restored past it); a forked child has none.
                v.ra = std::mem::take(&mut o.ra);
                v.ra_pos = o.ra_pos;
                v.ra_win = o.ra_win;
            }
            if new_image
                && r.fd == 0
                && !r.stream
                && !r.dir
                && r.flags & libc::O_ACCMODE == libc::O_RDONLY
            {
                match self.chan.call(&ShimRequest::Stream { h: r.h }) {
                    Ok((ShimReply::Ok, _)) => v.stream = true,
                    other => shim_log!("Stream for fd 0 failed: {other:?}"),
                }
            }
            let _ = self.vfds.insert(r.fd, v);
        }
        shim_log!("connected: fd {} pid {pid}", self.chan.fd);
        Ok(())
    }

    /// One request, one reply (connecting first if needed).
    pub fn request(&mut self, req: &ShimRequest) -> Result<(ShimReply, Option<i32>), Errno> {
        self.ensure()?;
        match self.chan.call(req) {
            Ok(r) => Ok(r),
            Err(e) => {
                shim_log!("channel failed (errno {e}); closing it");
                self.chan.close();
                Err(libc::EIO)
            }
        }
    }

    /// A remote call; the fd that came with the reply, if any.
    pub fn call_fd(&mut self, op: FileOp) -> Result<(FileReply, Option<i32>), Errno> {
        match self.request(&ShimRequest::Call(op))? {
            (ShimReply::Reply(FileReply::Err(e)), fd) => {
                if let Some(f) = fd {
                    sys::close(f);
                }
                Err(e)
            }
            (ShimReply::Reply(r), fd) => Ok((r, fd)),
            (other, fd) => {
                if let Some(f) = fd {
                    sys::close(f);
                }
                shim_log!("unexpected reply {other:?}");
                Err(libc::EIO)
            }
        }
    }

    /// A remote call whose reply carries no fd.
    pub fn call(&mut self, op: FileOp) -> Result<FileReply, Errno> {
        let (r, fd) = self.call_fd(op)?;
        if let Some(f) = fd {
            sys::close(f);
        }
        Ok(r)
    }

    /// A call that replies `Ok`.
    pub fn call_ok(&mut self, op: FileOp) -> Result<(), Errno> {
        match self.call(op)? {
            FileReply::Ok => Ok(()),
            r => unexpected(r),
        }
    }

    /// The remote entry for `fd`, if it still is the placeholder we know
    /// (an fd closed behind the shim's back is forgotten).
    pub fn vfd(&mut self, fd: i32) -> Option<&mut Vfd> {
        let ino = self.vfds.get(fd)?.ino;
        match sys::fstat(fd) {
            Ok(st) if st.st_ino == ino => self.vfds.get_mut(fd),
            _ => {
                self.vfds.remove(fd);
                None
            }
        }
    }

    /// The remote entry for `fd` as the table has it, without asking the
    /// kernel whether the placeholder is still there: for the hot paths
    /// (`read`, `pread`), which check with [`Shim::vfd`] when the shadow
    /// answers with an error (a placeholder closed behind the shim's back
    /// has its handle closed by the starter before the call arrives).
    pub fn vfd_fast(&mut self, fd: i32) -> Option<&mut Vfd> {
        self.vfds.get_mut(fd)
    }

    /// Is `fd` remote? (connecting first, so a forked child knows.)
    pub fn remote(&mut self, fd: i32) -> bool {
        if self.vfds.get(fd).is_none() || self.ensure().is_err() {
            return false;
        }
        self.vfd(fd).is_some()
    }

    /// Gives back read-ahead of `fd` to the shadow (moves the shared
    /// offset back to the job's logical offset).
    pub fn settle(&mut self, fd: i32) -> Result<(), Errno> {
        let Some(v) = self.vfds.get_mut(fd) else {
            return Ok(());
        };
        let left = v.ra_left();
        let h = v.h;
        v.ra.clear();
        v.ra_pos = 0;
        if left == 0 {
            return Ok(());
        }
        match self.call(FileOp::Lseek {
            h,
            off: -(left as i64),
            whence: libc::SEEK_CUR,
        })? {
            FileReply::Offset(_) => Ok(()),
            r => unexpected(r),
        }
    }

    /// Settles every other fd on the same handle as `fd`.
    pub fn settle_others(&mut self, fd: i32, h: Handle) -> Result<(), Errno> {
        let others: Vec<i32> = self.vfds.others(fd, h).collect();
        for o in others {
            self.settle(o)?;
        }
        Ok(())
    }

    pub fn settle_all(&mut self) -> Result<(), Errno> {
        let fds: Vec<i32> = self
            .vfds
            .iter()
            .filter(|(_, v)| v.ra_left() > 0)
            .map(|(f, _)| f)
            .collect();
        for f in fds {
            self.settle(f)?;
        }
        Ok(())
    }

    /// Applies this process's writes on the submit host (if it wrote any).
    pub fn flush(&mut self) -> Result<(), Errno> {
        if !self.vfds.any_written() {
            return Ok(());
        }
        match self.request(&ShimRequest::Flush)? {
            (ShimReply::Ok, _) => {
                for (_, v) in self.vfds.iter_mut() {
                    v.written = false;
                }
                Ok(())
            }
            (r, _) => {
                shim_log!("unexpected reply to Flush: {r:?}");
                Err(libc::EIO)
            }
        }
    }

    /// Classifies a path argument of `*at(dirfd, path)`.
    pub fn route(&mut self, dirfd: i32, path: &[u8]) -> Route {
        if path.first() == Some(&b'/') {
            let c = conf();
            return match path::classify(path, &c.root, &c.scratch, true) {
                Where::Remote => Route::Remote {
                    at: None,
                    path: path.to_vec(),
                },
                Where::Local => Route::Local,
            };
        }
        if dirfd == libc::AT_FDCWD {
            return match &self.cwd {
                Some(cwd) if !path.is_empty() => Route::Remote {
                    at: None,
                    path: path::absolute(path, cwd),
                },
                _ => Route::Local,
            };
        }
        if self.vfds.get(dirfd).is_none() || self.ensure().is_err() {
            return Route::Local;
        }
        match self.vfd(dirfd) {
            Some(v) => Route::Remote {
                at: Some(v.h),
                path: path.to_vec(),
            },
            None => Route::Local,
        }
    }

    /// Records a placeholder received for a new remote file.
    pub fn install(&mut self, fd: i32, h: Handle, flags: i32, mode: u32) -> Result<i32, Errno> {
        let ino = sys::fstat(fd).map(|s| s.st_ino).unwrap_or(0);
        if flags & libc::O_CLOEXEC != 0 {
            let _ = sys::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC as usize);
        }
        let keep = libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_NONBLOCK
            | libc::O_DIRECT
            | libc::O_NOATIME
            | libc::O_SYNC
            | libc::O_DSYNC;
        let mut v = Vfd::new(h, flags & keep, ino);
        let fmt = mode & libc::S_IFMT;
        v.dir = fmt == libc::S_IFDIR;
        v.kind = if fmt == libc::S_IFREG {
            Kind::Regular
        } else {
            Kind::Other
        };
        if let Err(e) = self.vfds.insert(fd, v) {
            sys::close(fd);
            return Err(e);
        }
        Ok(fd)
    }
}

/// The shim's own descriptors (channel, log), which the job may not close.
pub fn own_fds() -> [i32; 2] {
    let s = SHIM.lock();
    [if s.chan.live() { s.chan.fd } else { -1 }, crate::log::fd()]
}

/// Forgets remote fds in `[a, b]` after `close_range`.
pub fn forget_range(a: u64, b: u64, flags: i32) {
    if flags & libc::CLOSE_RANGE_CLOEXEC as i32 != 0 {
        return;
    }
    let mut s = SHIM.lock();
    let fds: Vec<i32> = s
        .vfds
        .iter()
        .map(|(f, _)| f)
        .filter(|&f| (a..=b).contains(&(f as u64)))
        .collect();
    for f in fds {
        s.vfds.remove(f);
    }
}

pub fn unexpected<T>(r: FileReply) -> Result<T, Errno> {
    shim_log!("unexpected reply {r:?}");
    Err(libc::EIO)
}

/// A C string argument as bytes (`EFAULT` for NULL).
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
pub unsafe fn cstr<'a>(p: *const c_char) -> Result<&'a [u8], Errno> {
    if p.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: p is non-NULL and NUL-terminated (the caller's contract).
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

fn env_value<'a>(envp: *const *const c_char, name: &[u8]) -> Option<&'a [u8]> {
    if envp.is_null() {
        return None;
    }
    let mut i = 0;
    loop {
        // SAFETY: envp is the NULL-terminated environment array given to the constructor.
        let p = unsafe { *envp.add(i) };
        if p.is_null() {
            return None;
        }
        // SAFETY: each environment entry is a NUL-terminated string.
        let e = unsafe { CStr::from_ptr(p) }.to_bytes();
        if e.len() > name.len() && e.starts_with(name) && e[name.len()] == b'=' {
            return Some(&e[name.len() + 1..]);
        }
        i += 1;
    }
}

fn env_entry(name: &str, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + value.len() + 2);
    v.extend_from_slice(name.as_bytes());
    v.push(b'=');
    v.extend_from_slice(value);
    v.push(0);
    v
}

/// Start-up: read the environment, connect, say `Hello`.
pub fn init(envp: *const *const c_char) {
    use proto::shim::{ENV_CWD, ENV_LOG, ENV_ROOT, ENV_SOCK};
    let Some(sock) = env_value(envp, ENV_SOCK.as_bytes()) else {
        return;
    };
    if sock.is_empty() {
        return;
    }
    guarded(|| {
        let log = env_value(envp, ENV_LOG.as_bytes());
        if let Some(l) = log {
            crate::log::open(l);
        }
        std::panic::set_hook(Box::new(|info| shim_log!("panic: {info}")));
        let root = env_value(envp, ENV_ROOT.as_bytes())
            .unwrap_or_default()
            .to_vec();
        let cwd = env_value(envp, ENV_CWD.as_bytes())
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|| root.clone());
        let scratch = sys::real_cwd();
        let mut env_keep = vec![env_entry(ENV_SOCK, sock), env_entry(ENV_ROOT, &root)];
        if let Some(l) = log {
            env_keep.push(env_entry(ENV_LOG, l));
        }
        let conf = Conf {
            sock: sock.to_vec(),
            root: root.clone(),
            env_preload: env_value(envp, b"LD_PRELOAD")
                .map(|p| env_entry("LD_PRELOAD", p))
                .unwrap_or_default(),
            env_keep,
            scratch,
        };
        let remote_cwd = !cwd.is_empty()
            && path::classify(&cwd, &conf.root, &conf.scratch, true) == Where::Remote
            && cwd.first() == Some(&b'/');
        let _ = CONF.set(conf);
        let mut s = SHIM.lock();
        s.cwd = remote_cwd.then_some(cwd);
        ACTIVE.store(true, Ordering::Relaxed);
        if let Err(e) = s.connect(true) {
            shim_log!("start-up connection failed: errno {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lookup_finds_exact_names() {
        let a = c"ROOST_SOCKX=1";
        let b = c"ROOST_SOCK=/s";
        let envp = [a.as_ptr(), b.as_ptr(), std::ptr::null()];
        assert_eq!(env_value(envp.as_ptr(), b"ROOST_SOCK"), Some(&b"/s"[..]));
        assert_eq!(env_value(envp.as_ptr(), b"ROOST_ROOT"), None);
        assert_eq!(env_entry("A", b"b"), b"A=b\0");
    }

    #[test]
    fn the_runner_bypasses_when_inert() {
        assert!(!active());
        assert_eq!(run(-1, || Some(Ok(5)), || 7), 7);
    }
}
