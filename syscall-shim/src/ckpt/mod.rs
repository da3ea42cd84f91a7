//! User-level checkpoint and restart of the job's process, from inside it.
//!
//! The starter asks for a checkpoint with [`SIG_CKPT`]. The handler
//! ([`save`]) connects to the starter's checkpoint socket and streams an
//! image (`proto::ckpt`): the registers live in the signal frame on the
//! stack, which the image contains, so the restart returns through that
//! frame with `rt_sigreturn` and the job goes on as if the handler had just
//! returned. The starter answers one byte once the image is committed.
//!
//! A restart ([`restore`]) runs the same executable with ASLR off and the
//! same paths (the sandbox mounts the scratch directory at a fixed place),
//! so the loader lays it out as the original; the shim's constructor then
//! replaces the memory with the image's, re-creates the remote fds at their
//! numbers, and returns into the saved frame.
//!
//! Both paths use raw system calls and static or stack memory only: the
//! handler may interrupt malloc, and the restore path runs while the heap
//! and the shim's own statics are being overwritten.

pub mod maps;
pub mod restore;
pub mod save;
pub mod sys;
pub mod wp;

/// The signal that asks for a checkpoint (`SIGRTMIN + 2` in glibc terms).
pub const SIG_CKPT: i32 = 36;

/// Env: fd from which a restarting process reads its image.
pub const ENV_RESTORE_FD: &str = "ROOST_RESTORE_FD";
/// Env: path of the starter's checkpoint socket.
pub const ENV_CKPT_SOCK: &str = "ROOST_CKPT_SOCK";

/// Where the restore code keeps its stack and tables while it rewrites the
/// address space; never part of an image.
pub const AREA: u64 = 0x6fff_f000_0000;
pub const AREA_SIZE: u64 = 32 << 20;
/// The checkpoint handler's work area (tables, buffers, page hashes);
/// never part of an image.
pub const WORK: u64 = 0x6ffe_0000_0000;
pub const WORK_SIZE: u64 = 1 << 30;

use crate::ops::SHIM;
use core::sync::atomic::{AtomicI32, Ordering};
use proto::ckpt::{FD_REMOTE, FD_STREAM, FdRecord};
use std::ffi::{CStr, c_char};

/// The shim's channel fd when the handler last looked (not part of the image).
static CHAN_FD: AtomicI32 = AtomicI32::new(-1);

/// The shim's remote fds as image records; `None` while a hook holds the
/// shim's state (the starter asks again a moment later).
fn remote_fds(out: &mut [FdRecord]) -> Option<usize> {
    if crate::ops::in_shim() {
        return None;
    }
    let s = SHIM.try_lock()?;
    CHAN_FD.store(s.chan.fd, Ordering::SeqCst);
    let mut n = 0;
    for (fd, v) in s.vfds.iter() {
        if n == out.len() {
            return None;
        }
        let mut r = FdRecord::EMPTY;
        r.fd = fd;
        r.kind = FD_REMOTE | if v.stream { FD_STREAM } else { 0 };
        r.open_flags = v.flags;
        r.handle = v.h.0;
        // SAFETY: F_GETFD and FIONREAD on an fd of this process, into a local.
        unsafe {
            r.fd_flags =
                sys::sc(sys::FCNTL, fd as usize, libc::F_GETFD as usize, 0, 0, 0, 0) as i32;
            if v.stream {
                let mut unread: i32 = 0;
                if sys::sc(
                    sys::IOCTL,
                    fd as usize,
                    libc::FIONREAD as usize,
                    &mut unread as *mut i32 as usize,
                    0,
                    0,
                    0,
                ) == 0
                {
                    r.unread = unread.max(0) as u64;
                }
            }
        }
        out[n] = r;
        n += 1;
    }
    Some(n)
}

/// The shim's own fds: its channel and its log.
fn internal(fd: i32) -> bool {
    fd == CHAN_FD.load(Ordering::SeqCst) || fd == crate::log::fd()
}

/// After a restart: the channel of the old process is gone; the next call
/// connects anew. Must not allocate or free.
fn after_restore() {
    let mut s = SHIM.lock();
    s.chan = crate::chan::Chan::none();
}

fn env(envp: *const *const c_char, name: &[u8]) -> Option<&'static [u8]> {
    if envp.is_null() {
        return None;
    }
    let mut p = envp;
    // SAFETY: `envp` is the NUL-terminated environment array the loader
    // passed to the constructor; its strings live for the whole process.
    unsafe {
        while !(*p).is_null() {
            let e = CStr::from_ptr(*p).to_bytes();
            if e.len() > name.len() && e.starts_with(name) && e[name.len()] == b'=' {
                return Some(&e[name.len() + 1..]);
            }
            p = p.add(1);
        }
    }
    None
}

/// First thing at start-up: a process started to restart an image
/// (`ROOST_RESTORE_FD`) becomes that image here and never returns.
pub fn restart_if_asked(envp: *const *const c_char) {
    if env(envp, ENV_RESTORE_FD.as_bytes()).is_none() {
        return;
    }
    let sock = env(envp, ENV_CKPT_SOCK.as_bytes()).unwrap_or_default();
    restore::maybe_restore(sock, after_restore);
}

/// After the shim is set up: answer checkpoint requests (`ROOST_CKPT_SOCK`).
pub fn install(envp: *const *const c_char) {
    if let Some(sock) = env(envp, ENV_CKPT_SOCK.as_bytes())
        && !sock.is_empty()
        && !save::install(sock, remote_fds, internal)
    {
        crate::shim_log!("cannot install the checkpoint handler");
    }
}
