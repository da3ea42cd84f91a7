//! libroost_shim.so: interposes libc file calls and forwards remote ones.
