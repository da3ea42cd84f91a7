//! Hooks on processes: `fork`/`vfork` (settle and flush first; the child
//! reconnects lazily), the `exec` family and `posix_spawn` (settle, flush,
//! and an environment that keeps the shim and the job's variables).

use std::ffi::{c_char, c_int};

use libc::pid_t;

use crate::ops::process::{EnvBuf, build_env, exec_cwd, prepare};
use crate::ops::run;
use crate::{real, sys};

unsafe extern "C" {
    static environ: *const *const c_char;
}

fn fork_impl() -> pid_t {
    run(
        -1,
        || {
            prepare();
            None
        },
        || {
            // SAFETY: fork takes no arguments.
            let pid = unsafe { real!(fork: fn() -> pid_t)() };
            if pid == 0 {
                // The child: the parent's channel is not its own.
                crate::chan::forked();
            }
            pid
        },
    )
}

/// # Safety
/// libc's contract for `fork`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fork() -> pid_t {
    fork_impl()
}

/// `vfork` is a `fork` here: a child sharing the parent's memory must not
/// run the shim's connection logic.
///
/// # Safety
/// libc's contract for `vfork` (which `fork` satisfies).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vfork() -> pid_t {
    fork_impl()
}

/// Runs `f` with the rewritten environment after settling and flushing;
/// `f` only returns on failure.
fn with_env(
    envp: *const *const c_char,
    f: impl FnOnce(*const *const c_char) -> c_int,
) -> Option<Result<c_int, i32>> {
    prepare();
    let cwd = exec_cwd();
    let mut buf = EnvBuf::new();
    // SAFETY: envp is the caller's NULL-terminated environment (or NULL).
    let env = unsafe { build_env(envp, &cwd, &mut buf) };
    let r = f(env);
    Some(if r == -1 { Err(sys::errno()) } else { Ok(r) })
}

/// A memfd holding a remote executable, if `path` is remote.
fn remote_exe(path: *const c_char) -> Result<Option<i32>, i32> {
    // SAFETY: path is the caller's C string.
    let p = unsafe { crate::ops::cstr(path) }?;
    crate::ops::process::fetch_exec(p).transpose()
}

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`; closes `fd` if it fails.
fn exec_fd(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    let empty = b"\0";
    let a = [
        fd as usize,
        empty.as_ptr() as usize,
        argv as usize,
        envp as usize,
        libc::AT_EMPTY_PATH as usize,
        0,
    ];
    // SAFETY: argv and envp are NULL-terminated arrays of C strings; empty is NUL-terminated.
    let r = unsafe { sys::sc(libc::SYS_execveat, a) };
    sys::close(fd);
    match r {
        Ok(_) => 0,
        Err(e) => {
            sys::set_errno(e);
            -1
        }
    }
}

/// # Safety
/// libc's contract for `execve`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    type F =
        unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
    run(
        -1,
        || {
            let exe = match remote_exe(path) {
                Ok(x) => x,
                Err(e) => return Some(Err(e)),
            };
            with_env(envp, |env| match exe {
                Some(fd) => exec_fd(fd, argv, env),
                // SAFETY: the caller's arguments with a valid environment.
                None => unsafe { real!(execve as F)(path, argv, env) },
            })
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(execve as F)(path, argv, envp) }
        },
    )
}

/// # Safety
/// libc's contract for `execv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: environ is libc's current environment.
    unsafe { execve(path, argv, environ) }
}

/// # Safety
/// libc's contract for `execvpe`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    type F =
        unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
    run(
        -1,
        || {
            // SAFETY: file is the caller's C string.
            let has_slash = unsafe { crate::ops::cstr(file) }.is_ok_and(|f| f.contains(&b'/'));
            let exe = if has_slash {
                match remote_exe(file) {
                    Ok(x) => x,
                    Err(e) => return Some(Err(e)),
                }
            } else {
                None
            };
            with_env(envp, |env| match exe {
                Some(fd) => exec_fd(fd, argv, env),
                // SAFETY: the caller's arguments with a valid environment.
                None => unsafe { real!(execvpe as F)(file, argv, env) },
            })
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(execvpe as F)(file, argv, envp) }
        },
    )
}

/// # Safety
/// libc's contract for `execvp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: environ is libc's current environment.
    unsafe { execvpe(file, argv, environ) }
}

/// # Safety
/// libc's contract for `fexecve`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    type F = unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char) -> c_int;
    run(
        -1,
        || {
            // SAFETY: the caller's arguments with a valid environment.
            with_env(envp, |env| unsafe { real!(fexecve as F)(fd, argv, env) })
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(fexecve as F)(fd, argv, envp) }
        },
    )
}

type Spawn = unsafe extern "C" fn(
    *mut pid_t,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    *const *const c_char,
    *const *const c_char,
) -> c_int;

/// `posix_spawn` returns an error number rather than setting errno.
fn spawn_result(r: c_int) -> Option<Result<c_int, i32>> {
    Some(Ok(r))
}

/// # Safety
/// libc's contract for `posix_spawn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut pid_t,
    path: *const c_char,
    fa: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    run(
        libc::EIO,
        || {
            prepare();
            let cwd = exec_cwd();
            let mut buf = EnvBuf::new();
            // SAFETY: envp is the caller's environment (or NULL).
            let env = unsafe { build_env(envp, &cwd, &mut buf) };
            // SAFETY: the caller's arguments with a valid environment.
            spawn_result(unsafe { real!(posix_spawn as Spawn)(pid, path, fa, attr, argv, env) })
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(posix_spawn as Spawn)(pid, path, fa, attr, argv, envp) }
        },
    )
}

/// # Safety
/// libc's contract for `posix_spawnp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut pid_t,
    file: *const c_char,
    fa: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    run(
        libc::EIO,
        || {
            prepare();
            let cwd = exec_cwd();
            let mut buf = EnvBuf::new();
            // SAFETY: envp is the caller's environment (or NULL).
            let env = unsafe { build_env(envp, &cwd, &mut buf) };
            // SAFETY: the caller's arguments with a valid environment.
            spawn_result(unsafe { real!(posix_spawnp as Spawn)(pid, file, fa, attr, argv, env) })
        },
        || {
            // SAFETY: passed on unchanged.
            unsafe { real!(posix_spawnp as Spawn)(pid, file, fa, attr, argv, envp) }
        },
    )
}

/// The variadic `execl` family: a naked entry point spills the argument
/// registers next to the stack arguments, so the `NULL`-terminated list
/// (and, for `execle`, the `envp` after it) is one contiguous array, then
/// calls [`execl_impl`] with it. x86-64 System V only.
macro_rules! execl_entry {
    ($name:ident, $kind:literal) => {
        /// # Safety
        /// libc's contract for this `execl` variant (a NULL-terminated
        /// argument list of C strings).
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, arg: *const c_char) -> c_int {
            std::arch::naked_asm!(
                "pop r11",
                "push r9",
                "push r8",
                "push rcx",
                "push rdx",
                "push rsi",
                "push rbx",
                "mov rbx, r11",
                "lea rsi, [rsp + 8]",
                concat!("mov edx, ", $kind),
                "call {imp}",
                "mov r11, rbx",
                "pop rbx",
                "add rsp, 40",
                "push r11",
                "ret",
                imp = sym execl_impl,
            )
        }
    };
}

execl_entry!(execl, 0);
execl_entry!(execlp, 1);
execl_entry!(execle, 2);

/// `args` is the `NULL`-terminated argument list; for `execle` the
/// environment pointer follows the `NULL`.
unsafe extern "C" fn execl_impl(
    path: *const c_char,
    args: *const *const c_char,
    kind: c_int,
) -> c_int {
    // SAFETY: args is the caller's NULL-terminated list; environ is libc's environment.
    unsafe {
        match kind {
            0 => execve(path, args, environ),
            1 => execvpe(path, args, environ),
            _ => {
                let mut i = 0;
                while !(*args.add(i)).is_null() {
                    i += 1;
                }
                let envp = *args.add(i + 1) as *const *const c_char;
                execve(path, args, envp)
            }
        }
    }
}
