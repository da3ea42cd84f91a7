//! The `extern "C"` entry points the dynamic linker binds the job's libc
//! calls to. Each one decodes its arguments, calls an op through
//! [`crate::ops::run`] (re-entrancy guard, `catch_unwind`, errno) and, for a
//! local call, calls the real libc function or the raw system call.

pub mod dir;
pub mod file;
pub mod meta;
pub mod net;
pub mod process;
pub mod stdio;

use std::ffi::c_char;

use proto::fileop::Errno;

/// A path argument, or `EFAULT`.
///
/// # Safety
/// `p` must be NULL or a NUL-terminated string.
pub(crate) unsafe fn arg<'a>(p: *const c_char) -> Result<&'a [u8], Errno> {
    // SAFETY: forwarded from the caller.
    unsafe { crate::ops::cstr(p) }
}
