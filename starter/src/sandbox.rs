//! The job's sandbox on the execute host: what a stranger's program may
//! see and do here, even when it bypasses the shim with raw system calls.
//!
//! The job's process runs in new mount, pid, network, IPC and UTS
//! namespaces (and a user namespace when the starter is not root):
//!
//! - **pid**: a tiny init of ours is pid 1 and the job is its only child,
//!   pid 2, on every host and after every restart. The init reaps orphans
//!   and forwards termination signals to the job. The starter watches the
//!   job's own exit (a pidfd on its host pid) and, once the job is over,
//!   kills the init: the kernel then kills whatever is left in the
//!   namespace (a double-forked daemon included). The process the starter
//!   spawned stays outside as the init's parent and ends with the job's
//!   status, so the starter reaps one child as before.
//! - **mount**: the scratch directory is `/tmp`; the rest of the system is
//!   read-only; `/root` and `/home` are empty; `/proc` shows only the job.
//! - **network**: a namespace with only a loopback that is down: the job
//!   reaches the world through the starter's unix sockets only.
//! - **uid**: a starter running as root runs the job as a uid of its own
//!   ([`job_uid`]) that owns the scratch directory and nothing else.
//! - **landlock**: read and execute beneath the system's directories,
//!   everything beneath the scratch directory, nothing else.
//! - **seccomp**: a filter that refuses (`EPERM`) tracing, mounting,
//!   namespaces, kernel modules, kexec, bpf, keyrings, perf and the like.
//! - **rlimits** from the job's request, and a size-limited tmpfs as the
//!   scratch directory for `RequestDisk` ([`Quota`]).
//!
//! Everything the child does between fork and exec is a system call on
//! memory prepared before the fork ([`Sandbox::new`]).

use proto::job::JobSpec;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

/// The first of the uids jobs run as (a starter running as root runs its
/// job as this plus its own pid: unique among the jobs running here, so
/// that `RLIMIT_NPROC` counts one job's processes only).
pub const JOB_UID_BASE: u32 = 1_000_000_000;
/// Processes (and threads) a job may have at once.
pub const NPROC: u64 = 256;
/// Open files per process of a job.
pub const NOFILE: u64 = 4096;
/// A job's data segment may grow to this many times its `RequestMemory`
/// (and at least [`MIN_DATA_MB`]): a request is an estimate, not a promise
/// the job is held to exactly, but a runaway job stops here.
pub const DATA_FACTOR: u64 = 4;
pub const MIN_DATA_MB: u64 = 2048;
/// Size of the job's own `/dev/shm`.
const SHM_SIZE: &CStr = c"size=64m,mode=1777";
/// Directories of the owner's that the job sees empty.
const HIDDEN: &[&CStr] = &[c"/root", c"/home"];
/// Directories the job may read and execute beneath (those that exist).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/var",
    "/proc", "/sys", "/dev", "/run",
];
/// `personality(2)`: no address space randomization.
const ADDR_NO_RANDOMIZE: libc::c_ulong = 0x0040000;

/// The uid (and gid) a job of this starter runs as, when it runs as root.
pub fn job_uid() -> u32 {
    JOB_UID_BASE + std::process::id()
}

/// Resource limits from the job's request (0: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// `RequestMemory`, MiB.
    pub memory_mb: u64,
    /// `RequestDisk`, MiB: the scratch directory's size.
    pub disk_mb: u64,
}

impl Limits {
    pub fn from_spec(spec: &JobSpec) -> Limits {
        Limits {
            memory_mb: spec.request_memory_mb,
            disk_mb: spec.request_disk_mb,
        }
    }

    /// `(resource, limit)` pairs set in the job's process.
    fn rlimits(&self) -> Vec<(libc::__rlimit_resource_t, u64)> {
        let mut v = vec![
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_NPROC, NPROC),
            (libc::RLIMIT_NOFILE, NOFILE),
        ];
        if self.memory_mb > 0 {
            let data = (self.memory_mb * DATA_FACTOR).max(MIN_DATA_MB) << 20;
            v.push((libc::RLIMIT_DATA, data));
            // Address space also covers reservations that are never
            // touched (thread stacks, malloc arenas, the shim's areas).
            v.push((libc::RLIMIT_AS, data * 2 + (4 << 30)));
        }
        if self.disk_mb > 0 {
            v.push((libc::RLIMIT_FSIZE, self.disk_mb << 20));
        }
        v
    }
}

/// What this kernel enforces of the sandbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Features {
    /// Landlock ABI version; 0: no landlock.
    pub landlock_abi: u32,
    /// seccomp filters.
    pub seccomp: bool,
}

/// Probes the kernel for landlock and seccomp.
pub fn features() -> Features {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and the
    // VERSION flag only returns the ABI version; nothing is created.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    // SAFETY: PR_GET_SECCOMP takes no pointers.
    let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } >= 0
        && cfg!(target_arch = "x86_64");
    Features {
        landlock_abi: u32::try_from(abi).unwrap_or(0),
        seccomp,
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `data` to a file of `/proc` with raw calls.
fn write_proc(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated, `data` is a live slice; the fd is
    // opened and closed here.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        check(fd)?;
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let e = io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(e);
        }
    }
    Ok(())
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Landlock rules, prepared before the fork.
struct Landlock {
    abi: u32,
    /// Read and execute beneath.
    read: Vec<CString>,
    /// Every handled right beneath.
    rw: Vec<CString>,
    /// Read, write and device ioctls beneath (`/dev`, `/proc`).
    dev: Vec<CString>,
}

/// What the job's process is set up with before it runs, built before the
/// fork (nothing is allocated in the child).
pub(crate) struct Sandbox {
    scratch: CString,
    /// `uid_map` and `gid_map` lines for a user namespace (not root).
    userns: Option<(Vec<u8>, Vec<u8>)>,
    /// The read end of a restart's image pipe, moved to `fd`.
    image: Option<(RawFd, RawFd)>,
    /// The uid and gid the job runs as (a starter running as root).
    drop_to: Option<(u32, u32)>,
    rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    landlock: Option<Landlock>,
    seccomp: Vec<libc::sock_filter>,
}

impl Sandbox {
    /// `image`: a restart's image pipe and the fd it becomes in the job.
    pub(crate) fn new(
        scratch: &Path,
        program: &Path,
        image: Option<(RawFd, RawFd)>,
        limits: &Limits,
        features: &Features,
    ) -> io::Result<Sandbox> {
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let (userns, drop_to) = if uid == 0 {
            (None, Some((job_uid(), job_uid())))
        } else {
            (
                Some((
                    format!("{uid} {uid} 1").into_bytes(),
                    format!("{gid} {gid} 1").into_bytes(),
                )),
                None,
            )
        };
        let landlock = (features.landlock_abi > 0)
            .then(|| -> io::Result<Landlock> {
                let mut read: Vec<CString> = Vec::new();
                for d in SYSTEM_DIRS {
                    if Path::new(d).exists() {
                        read.push(cstring(Path::new(d))?);
                    }
                }
                // A program this host keeps elsewhere (not shipped).
                if let Some(dir) = program.parent()
                    && !program.starts_with(scratch)
                    && !SYSTEM_DIRS.iter().any(|d| program.starts_with(d))
                    && dir.is_absolute()
                    && dir != Path::new("/")
                {
                    read.push(cstring(dir)?);
                }
                Ok(Landlock {
                    abi: features.landlock_abi,
                    read,
                    rw: vec![c"/tmp".to_owned(), c"/dev/shm".to_owned()],
                    dev: vec![c"/dev".to_owned(), c"/proc".to_owned()],
                })
            })
            .transpose()?;
        Ok(Sandbox {
            scratch: cstring(scratch)?,
            userns,
            image,
            drop_to,
            rlimits: limits.rlimits(),
            landlock,
            seccomp: if features.seccomp {
                seccomp_filter()
            } else {
                Vec::new()
            },
        })
    }

    /// Runs in the child between fork and exec: returns (to exec the job)
    /// only in the job's process, pid 2 of a new pid namespace; the process
    /// that called it and the namespace's init never return.
    pub(crate) fn enter(&self) -> io::Result<()> {
        let mut ns = libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS;
        if self.userns.is_some() {
            ns |= libc::CLONE_NEWUSER;
        }
        // SAFETY: unshare takes flags only.
        check(unsafe { libc::unshare(ns) })?;
        if let Some((uid_map, gid_map)) = &self.userns {
            write_proc(c"/proc/self/setgroups", b"deny")?;
            write_proc(c"/proc/self/uid_map", uid_map)?;
            write_proc(c"/proc/self/gid_map", gid_map)?;
        }
        self.mounts()?;
        // SAFETY: NUL-terminated paths, numbers and fds, as chdir(2),
        // personality(2), close_range(2), dup2(2) and setrlimit(2) take
        // them.
        unsafe {
            check(libc::chdir(c"/tmp".as_ptr()))?;
            let cur = libc::personality(0xffff_ffff);
            check(cur)?;
            check(libc::personality(cur as libc::c_ulong | ADDR_NO_RANDOMIZE))?;
            // Whatever this process inherited stays out of the job (an fd
            // the job does not know of would make it uncheckpointable).
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            if let Some((fd, to)) = self.image {
                check(libc::dup2(fd, to))?;
            }
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            check(libc::setrlimit(libc::RLIMIT_CORE, &none))?;
        }
        let mut status = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two fds into the array.
        check(unsafe { libc::pipe2(status.as_mut_ptr(), libc::O_CLOEXEC) })?;
        // SAFETY: fork in the child of a fork: this process has one thread.
        let init = unsafe { libc::fork() };
        check(init)?;
        if init > 0 {
            // SAFETY: only system calls follow, and this process ends there.
            unsafe { outside(init, status[0]) }
        }
        // SAFETY: prctl with numbers.
        unsafe {
            // The namespace dies with the process outside it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        }
        // The namespace's init (pid 1): its own /proc, then the job.
        // SAFETY: prctl and mount(2) with NUL-terminated strings and a
        // null data pointer.
        unsafe {
            // A fresh /proc shows the namespace's processes; without it the
            // job sees the host's (the mount fails in some user namespaces).
            libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            );
        }
        // SAFETY: as above; one thread.
        let job = unsafe { libc::fork() };
        if job < 0 {
            // SAFETY: _exit ends this process.
            unsafe { libc::_exit(127) };
        }
        if job > 0 {
            // SAFETY: only system calls follow, and this process ends there.
            unsafe { init_loop(job, status[1]) }
        }
        // The job (pid 2).
        // SAFETY: closing our copies of the status pipe.
        unsafe {
            libc::close(status[0]);
            libc::close(status[1]);
        }
        self.confine()
    }

    /// The mount namespace: scratch as `/tmp`, the owner's directories
    /// empty, a private `/dev/shm`, the system read-only.
    fn mounts(&self) -> io::Result<()> {
        let none = std::ptr::null();
        // SAFETY: NUL-terminated paths and null optional arguments, as
        // mount(2) and statvfs(3) take them; `st` is written by statvfs.
        unsafe {
            check(libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                self.scratch.as_ptr(),
                c"/tmp".as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            for dir in HIDDEN {
                let r = libc::mount(
                    c"none".as_ptr(),
                    dir.as_ptr(),
                    c"tmpfs".as_ptr(),
                    nosuid | libc::MS_RDONLY,
                    c"size=4k,mode=0755".as_ptr().cast(),
                );
                if r < 0 && *libc::__errno_location() != libc::ENOENT {
                    return Err(io::Error::last_os_error());
                }
            }
            let r = libc::mount(
                c"none".as_ptr(),
                c"/dev/shm".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                SHM_SIZE.as_ptr().cast::<libc::c_void>(),
            );
            let _ = r;
            // The root mount read-only (only in this namespace). Flags the
            // mount has that a user namespace may not clear are kept.
            let mut st = std::mem::zeroed::<libc::statvfs>();
            check(libc::statvfs(c"/".as_ptr(), &mut st))?;
            let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
            for (st_flag, ms) in [
                (libc::ST_NOSUID, libc::MS_NOSUID),
                (libc::ST_NODEV, libc::MS_NODEV),
                (libc::ST_NOEXEC, libc::MS_NOEXEC),
                (libc::ST_NOATIME, libc::MS_NOATIME),
                (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
                (libc::ST_RELATIME, libc::MS_RELATIME),
            ] {
                if st.f_flag & st_flag != 0 {
                    flags |= ms;
                }
            }
            let r = libc::mount(none, c"/".as_ptr(), none, flags, std::ptr::null());
            if r < 0 && self.drop_to.is_some() {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// In the job's process: its uid, limits, landlock and seccomp.
    fn confine(&self) -> io::Result<()> {
        // SAFETY: setgroups with no groups, set*id and setrlimit with
        // numbers and a live struct, prctl with numbers.
        unsafe {
            if let Some((uid, gid)) = self.drop_to {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(gid, gid, gid))?;
                check(libc::setresuid(uid, uid, uid))?;
            }
            for &(res, lim) in &self.rlimits {
                let mut cur = std::mem::zeroed::<libc::rlimit>();
                check(libc::getrlimit(res, &mut cur))?;
                let lim = lim.min(cur.rlim_max);
                let l = libc::rlimit {
                    rlim_cur: lim,
                    rlim_max: lim,
                };
                check(libc::setrlimit(res, &l))?;
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        if let Some(l) = &self.landlock {
            l.restrict()?;
        }
        if !self.seccomp.is_empty() {
            let prog = libc::sock_fprog {
                len: self.seccomp.len() as u16,
                filter: self.seccomp.as_ptr().cast_mut(),
            };
            const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
            // SAFETY: `prog` points at the filter, which lives in `self`
            // for the call; the kernel copies it.
            check(unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    SECCOMP_SET_MODE_FILTER,
                    0 as libc::c_uint,
                    &prog as *const libc::sock_fprog,
                ) as libc::c_int
            })?;
        }
        Ok(())
    }
}

/// The job's pid as its init knows it (for forwarding signals).
static JOB: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let job = JOB.load(Ordering::Relaxed);
    if job > 0 {
        // SAFETY: kill(2) is async-signal-safe and takes numbers.
        unsafe { libc::kill(job, sig) };
    }
}

/// The namespace's init: forwards termination signals to the job, reaps
/// every process that ends in the namespace, sends the job's wait status
/// to the outside process when the job ends, and exits when nothing is
/// left. The starter kills it (and with it the whole namespace) once the
/// job is over: its main process exited and its files let go, or a grace
/// after that.
///
/// # Safety
/// Only in a single-threaded child of a fork; `status` is a pipe's
/// write end.
unsafe fn init_loop(job: libc::pid_t, status: RawFd) -> ! {
    JOB.store(job, Ordering::Relaxed);
    // SAFETY: sigaction with a handler that only calls kill(2); close_range
    // with numbers; wait4 and write on live locals.
    unsafe {
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            let mut sa = std::mem::zeroed::<libc::sigaction>();
            sa.sa_sigaction = forward as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        // Nothing of the job's (placeholders, the spawner's pipe) stays
        // open here.
        if status > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (status - 1) as u32, 0u32);
        }
        libc::syscall(
            libc::SYS_close_range,
            (status + 1) as u32,
            libc::c_uint::MAX,
            0u32,
        );
        loop {
            // The job's status is sent before it is reaped: the starter
            // kills this init only once the job is reaped.
            let mut info = std::mem::zeroed::<libc::siginfo_t>();
            let r = libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT);
            if r < 0 {
                if *libc::__errno_location() == libc::ECHILD {
                    libc::_exit(0);
                }
                continue;
            }
            let pid = info.si_pid();
            if pid == job {
                let code = info.si_status();
                let st: libc::c_int = match info.si_code {
                    libc::CLD_EXITED => (code & 0xff) << 8,
                    libc::CLD_DUMPED => code | 0x80,
                    _ => code,
                };
                libc::write(status, (&raw const st).cast(), size_of::<libc::c_int>());
            }
            let mut st: libc::c_int = 0;
            libc::wait4(pid, &mut st, 0, std::ptr::null_mut());
        }
    }
}

/// The process the starter spawned, outside the namespace: waits for the
/// init and ends as the job did.
///
/// # Safety
/// Only in a single-threaded child of a fork; `status` is a pipe's read
/// end.
unsafe fn outside(init: libc::pid_t, status: RawFd) -> ! {
    // SAFETY: dup2/close_range/wait4/read/kill/signal with numbers and
    // live locals.
    unsafe {
        libc::dup2(status, 0);
        libc::syscall(libc::SYS_close_range, 1u32, libc::c_uint::MAX, 0u32);
        let mut st: libc::c_int = 0;
        loop {
            let r = libc::wait4(init, &mut st, 0, std::ptr::null_mut());
            if r == init || *libc::__errno_location() != libc::EINTR {
                break;
            }
        }
        let mut job: libc::c_int = 0;
        let n = libc::read(0, (&raw mut job).cast(), size_of::<libc::c_int>());
        if n == size_of::<libc::c_int>() as isize {
            st = job;
        }
        if libc::WIFSIGNALED(st) {
            let sig = libc::WTERMSIG(st);
            libc::signal(sig, libc::SIG_DFL);
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(libc::WEXITSTATUS(st));
    }
}

impl Landlock {
    fn restrict(&self) -> io::Result<()> {
        const EXECUTE: u64 = 1 << 0;
        const WRITE_FILE: u64 = 1 << 1;
        const READ_FILE: u64 = 1 << 2;
        const READ_DIR: u64 = 1 << 3;
        const REFER: u64 = 1 << 13;
        const TRUNCATE: u64 = 1 << 14;
        const IOCTL_DEV: u64 = 1 << 15;
        const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
        const SCOPE_SIGNAL: u64 = 1 << 1;
        const RULE_PATH_BENEATH: libc::c_int = 1;
        #[repr(C)]
        struct RulesetAttr {
            handled_access_fs: u64,
            handled_access_net: u64,
            scoped: u64,
        }
        #[repr(C, packed)]
        struct PathBeneath {
            allowed_access: u64,
            parent_fd: i32,
        }
        let mut handled = (1u64 << 13) - 1;
        if self.abi >= 2 {
            handled |= REFER;
        }
        if self.abi >= 3 {
            handled |= TRUNCATE;
        }
        if self.abi >= 5 {
            handled |= IOCTL_DEV;
        }
        let attr = RulesetAttr {
            handled_access_fs: handled,
            handled_access_net: 0,
            scoped: if self.abi >= 6 {
                SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
            } else {
                0
            },
        };
        let size = if self.abi >= 6 {
            size_of::<RulesetAttr>()
        } else if self.abi >= 4 {
            16
        } else {
            8
        };
        // SAFETY: landlock_create_ruleset reads `size` bytes of `attr`, a
        // live, initialized struct at least that long.
        let ruleset = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                size,
                0u32,
            )
        } as libc::c_int;
        check(ruleset)?;
        let rules = [
            (&self.read, EXECUTE | READ_FILE | READ_DIR),
            (
                &self.dev,
                (READ_FILE | READ_DIR | WRITE_FILE | TRUNCATE | IOCTL_DEV) & handled,
            ),
            (&self.rw, handled),
        ];
        let mut r = Ok(());
        'all: for (paths, access) in rules {
            for p in paths {
                // SAFETY: open(2) of a NUL-terminated path; the fd is closed
                // below.
                let fd = unsafe { libc::open(p.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
                if fd < 0 {
                    continue;
                }
                let rule = PathBeneath {
                    allowed_access: access,
                    parent_fd: fd,
                };
                // SAFETY: landlock_add_rule reads the live `rule`; both fds
                // are open.
                let a = unsafe {
                    libc::syscall(
                        libc::SYS_landlock_add_rule,
                        ruleset,
                        RULE_PATH_BENEATH,
                        &rule as *const PathBeneath,
                        0u32,
                    )
                } as libc::c_int;
                // SAFETY: our own fd.
                unsafe { libc::close(fd) };
                if let Err(e) = check(a) {
                    r = Err(e);
                    break 'all;
                }
            }
        }
        if r.is_ok() {
            // SAFETY: restricts this process with the ruleset fd.
            r = check(unsafe {
                libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) as libc::c_int
            });
        }
        // SAFETY: our own fd.
        unsafe { libc::close(ruleset) };
        r
    }
}

/// System calls the job is refused (`EPERM`).
#[cfg(target_arch = "x86_64")]
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_perf_event_open,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_vhangup,
    libc::SYS_uselib,
    libc::SYS_lookup_dcookie,
    libc::SYS_fanotify_init,
];

/// The seccomp filter: other architectures' calls are killed, [`DENIED`]
/// calls and `clone` with namespace flags get `EPERM`, `clone3` gets
/// `ENOSYS` (its flags are behind a pointer; libc falls back to `clone`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn seccomp_filter() -> Vec<libc::sock_filter> {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const X32_BIT: u32 = 0x4000_0000;
    let ld = |off: u32| libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k: off,
    };
    let jmp = |op: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ret = |k: u32| libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let ns_flags = (libc::CLONE_NEWNS
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWCGROUP) as u32;
    let mut f = vec![
        ld(4),
        jmp(libc::BPF_JEQ, AUDIT_ARCH_X86_64, 1, 0),
        ret(RET_KILL_PROCESS),
        ld(0),
        jmp(libc::BPF_JGE, X32_BIT, 0, 1),
        ret(RET_ERRNO | libc::EPERM as u32),
    ];
    for &nr in DENIED {
        f.push(jmp(libc::BPF_JEQ, nr as u32, 0, 1));
        f.push(ret(RET_ERRNO | libc::EPERM as u32));
    }
    f.push(jmp(libc::BPF_JEQ, libc::SYS_clone3 as u32, 0, 1));
    f.push(ret(RET_ERRNO | libc::ENOSYS as u32));
    f.extend([
        jmp(libc::BPF_JEQ, libc::SYS_clone as u32, 0, 3),
        ld(16),
        jmp(libc::BPF_JSET, ns_flags, 0, 1),
        ret(RET_ERRNO | libc::EPERM as u32),
        ret(RET_ALLOW),
    ]);
    f
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn seccomp_filter() -> Vec<libc::sock_filter> {
    Vec::new()
}

/// A size-limited tmpfs mounted over the scratch directory (in the
/// starter's mount namespace), holding what was in the directory before;
/// unmounted when dropped.
pub struct Quota {
    scratch: PathBuf,
}

impl Quota {
    /// Mounts a tmpfs of `disk_mb` MiB plus the size of what is already in
    /// `scratch` (the shipped executable) over it, owned by `uid`, and
    /// copies the directory's contents in.
    pub fn mount(scratch: &Path, disk_mb: u64, extra: u64, uid: u32) -> io::Result<Quota> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut files = Vec::new();
        let mut size = (disk_mb << 20) + extra;
        for e in std::fs::read_dir(scratch)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_file() {
                size += m.len();
                files.push(e.file_name());
            }
        }
        let under = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(scratch)?;
        let target = cstring(scratch)?;
        let opts = CString::new(format!("size={size},mode=0700,uid={uid},gid={uid}"))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: NUL-terminated strings for mount(2).
        check(unsafe {
            libc::mount(
                c"roost-scratch".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        })?;
        let quota = Quota {
            scratch: scratch.to_path_buf(),
        };
        let from = PathBuf::from(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            under.as_raw_fd()
        }));
        for name in files {
            std::fs::copy(from.join(&name), scratch.join(&name))?;
        }
        Ok(quota)
    }
}

impl Drop for Quota {
    fn drop(&mut self) {
        if let Ok(p) = cstring(&self.scratch) {
            // SAFETY: umount2 of a NUL-terminated path.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// This host's memory, MiB (0 if unknown).
pub fn memory_mb() -> u64 {
    let mut si = std::mem::MaybeUninit::<libc::sysinfo>::zeroed();
    // SAFETY: sysinfo(2) fills the zeroed struct it is given.
    if unsafe { libc::sysinfo(si.as_mut_ptr()) } != 0 {
        return 0;
    }
    // SAFETY: zeroed, then filled by a successful sysinfo.
    let si = unsafe { si.assume_init() };
    si.totalram.saturating_mul(u64::from(si.mem_unit)) >> 20
}

/// Unmounts a scratch directory's tmpfs that a starter that died left
/// mounted (nothing happens if there is none).
pub fn unmount_scratch(scratch: &Path) {
    if let Ok(p) = cstring(scratch) {
        // SAFETY: umount2 of a NUL-terminated path.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Gives the scratch directory and what is in it to the job's uid.
pub fn give(scratch: &Path, uid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(scratch, Some(uid), Some(uid))?;
    for e in std::fs::read_dir(scratch)? {
        std::os::unix::fs::lchown(e?.path(), Some(uid), Some(uid))?;
    }
    Ok(())
}

/// The host pids of a sandboxed job: the namespace's init, and the job
/// (pid 2 inside; 0 when it had exited before it was looked for).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tree {
    pub init: i32,
    pub job: i32,
}

/// `(ppid, state)` of a process, from `/proc/PID/stat`.
fn ppid_state(pid: i32) -> Option<(i32, u8)> {
    let s = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = s.iter().rposition(|&c| c == b')')?;
    let rest = std::str::from_utf8(&s[close + 1..]).ok()?;
    let mut f = rest.split_ascii_whitespace();
    let state = f.next()?.bytes().next()?;
    Some((f.next()?.parse().ok()?, state))
}

/// The pids of `/proc`.
fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The pid of `pid` in its innermost pid namespace (`NSpid`).
fn inner_pid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_ascii_whitespace()
        .last()?
        .parse()
        .ok()
}

impl Tree {
    /// Finds the init and the job under the spawned process `outer`
    /// (once spawned, both exist: the job has exec'ed).
    pub(crate) fn find(outer: i32) -> Option<Tree> {
        let pids = all_pids();
        let child_of = |parent: i32| {
            pids.iter()
                .copied()
                .filter(move |&p| ppid_state(p).is_some_and(|(pp, _)| pp == parent))
        };
        let init = child_of(outer).find(|&p| inner_pid(p) == Some(1))?;
        // A quick job may have exited (and been reaped) already.
        let job = child_of(init)
            .find(|&p| inner_pid(p) == Some(2))
            .unwrap_or(0);
        Some(Tree { init, job })
    }

    /// The processes of the namespace but its init: `(pid, state)`.
    pub(crate) fn members(&self) -> Vec<(i32, u8)> {
        let Ok(ns) = std::fs::read_link(format!("/proc/{}/ns/pid", self.init)) else {
            return Vec::new();
        };
        all_pids()
            .into_iter()
            .filter(|&p| p != self.init)
            .filter(|p| std::fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|l| l == ns))
            .filter_map(|p| Some((p, ppid_state(p)?.1)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_request() {
        let l = Limits {
            memory_mb: 1024,
            disk_mb: 16,
        };
        let r = l.rlimits();
        let get = |res| r.iter().find(|(x, _)| *x == res).map(|(_, v)| *v);
        assert_eq!(get(libc::RLIMIT_CORE), Some(0));
        assert_eq!(get(libc::RLIMIT_NPROC), Some(NPROC));
        assert_eq!(get(libc::RLIMIT_DATA), Some(4096 << 20));
        assert_eq!(get(libc::RLIMIT_FSIZE), Some(16 << 20));
        let none = Limits::default().rlimits();
        assert!(none.iter().all(|(x, _)| *x != libc::RLIMIT_DATA));
    }

    #[test]
    fn the_filter_ends_in_allow_and_its_jumps_stay_inside() {
        let f = seccomp_filter();
        if f.is_empty() {
            return;
        }
        assert!(f.len() < 4096);
        for (i, ins) in f.iter().enumerate() {
            if ins.code as u32 & 0x07 == libc::BPF_JMP {
                assert!(
                    i + 1 + (ins.jt.max(ins.jf) as usize) < f.len(),
                    "jump at {i}"
                );
            }
        }
        assert_eq!(f.last().unwrap().k, 0x7fff_0000);
    }
}
