//! libroost_shim.so: interposes libc file calls and forwards remote ones.
//!
//! Loaded with `LD_PRELOAD` into every process of a job. At start-up (an
//! `.init_array` constructor) it connects to the starter (`ROOST_SOCK`),
//! says `Hello` and builds the virtual fd table from `Welcome`. Every hooked
//! call that touches a remote path or fd is forwarded as a
//! [`proto::fileop::FileOp`]; everything else calls straight through to libc.
//! Without `ROOST_SOCK` the shim is inert.
//!
//! Layout: `hooks/` holds the `extern "C"` entry points (thin), `ops/` what
//! they do, [`vfd`] the virtual fd table, [`chan`] the channel to the
//! starter (raw system calls only), [`path`] path classification.

pub mod chan;
pub mod ckpt;
pub mod hooks;
pub mod lock;
pub mod log;
pub mod ops;
pub mod path;
pub mod real;
pub mod sys;
pub mod vfd;

use std::ffi::{c_char, c_int};

/// Runs when the library is loaded, before the program's `main`.
extern "C" fn roost_shim_init(
    _argc: c_int,
    _argv: *const *const c_char,
    envp: *const *const c_char,
) {
    // A restart becomes its image here and never returns.
    ckpt::restart_if_asked(envp);
    ops::init(envp);
    ckpt::install(envp);
}

/// Runs at `exit`: applies this process's writes on the submit host.
extern "C" fn roost_shim_fini() {
    ops::process::at_exit();
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = roost_shim_init;

#[used]
#[unsafe(link_section = ".fini_array")]
static FINI: extern "C" fn() = roost_shim_fini;
