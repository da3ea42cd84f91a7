//! The real libc functions behind the hooks: `dlsym(RTLD_NEXT, name)`,
//! looked up once and cached in an atomic.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Looks `name` (NUL-terminated) up once; 0 if libc has no such symbol.
pub fn lookup(cache: &AtomicUsize, name: &'static [u8]) -> usize {
    let p = cache.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: name is a NUL-terminated static string; RTLD_NEXT is valid in a shared object.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
    cache.store(p, Ordering::Relaxed);
    p
}

/// `real!(name: fn(A, B) -> R)` is the next definition of `name` (libc's),
/// as a function pointer of that type. Aborts if libc lacks it (only used
/// for symbols glibc has).
#[macro_export]
macro_rules! real {
    ($name:ident : fn($($arg:ty),* $(,)?) -> $ret:ty) => {{
        static CACHE: ::std::sync::atomic::AtomicUsize = ::std::sync::atomic::AtomicUsize::new(0);
        let p = $crate::real::lookup(&CACHE, concat!(stringify!($name), "\0").as_bytes());
        if p == 0 {
            $crate::real::missing(stringify!($name));
        }
        #[allow(unused_unsafe)]
        // SAFETY: p is libc's definition of this symbol, whose C signature is the one spelled here.
        let f = unsafe { ::std::mem::transmute::<usize, unsafe extern "C" fn($($arg),*) -> $ret>(p) };
        f
    }};
    ($name:ident as $ty:ty) => {{
        static CACHE: ::std::sync::atomic::AtomicUsize = ::std::sync::atomic::AtomicUsize::new(0);
        let p = $crate::real::lookup(&CACHE, concat!(stringify!($name), "\0").as_bytes());
        if p == 0 {
            $crate::real::missing(stringify!($name));
        }
        #[allow(unused_unsafe)]
        // SAFETY: p is libc's definition of this symbol, whose C signature is the type named.
        let f = unsafe { ::std::mem::transmute::<usize, $ty>(p) };
        f
    }};
}

/// A libc symbol the shim needs is absent: nothing sane can continue.
pub fn missing(name: &str) -> ! {
    crate::shim_log!("libc has no symbol {name}");
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// `dlsym` for a symbol that may be absent.
pub fn optional(cache: &AtomicUsize, name: &'static [u8]) -> Option<*mut c_void> {
    let p = lookup(cache, name);
    (p != 0).then_some(p as *mut c_void)
}
