//! The checkpoint image format and the restart hand-over, as fixed-layout
//! records: the shim writes and reads them from a signal handler and from a
//! restore path that may not allocate, so there is no serde here.
//!
//! An image is: one [`ImageHeader`], `nregions` [`Region`]s, `nfds`
//! [`FdRecord`]s, then the bytes of every region with [`RF_DATA`], in table
//! order, each followed by its 8-byte [`checksum`]. The header carries a
//! checksum of the header itself and of both tables. Readers check magic,
//! version, architecture, page size and every checksum before they use a
//! byte, and refuse an image with a clear reason.
#![allow(unsafe_code)]

/// First bytes of every image.
pub const MAGIC: [u8; 8] = *b"ROOSTCK\x01";
/// Image format version this build reads and writes.
pub const VERSION: u32 = 1;
/// `ImageHeader::arch` for x86-64.
pub const ARCH_X86_64: u32 = 62;

/// The region's bytes follow in the image.
pub const RF_DATA: u32 = 1;
/// The region maps a file (`Region::path`, `Region::offset`).
pub const RF_FILE: u32 = 2;
/// The main thread's stack.
pub const RF_STACK: u32 = 4;
/// The program break heap.
pub const RF_HEAP: u32 = 8;

/// A remote fd (a shadow handle) at this number.
pub const FD_REMOTE: u32 = 1;
/// A remote fd that is a read stream (the starter pushes the file into it).
pub const FD_STREAM: u32 = 2;
/// A local file or device, reopened by path at `offset`.
pub const FD_LOCAL: u32 = 4;

/// First bytes of a refusal instead of an image; a reason follows.
pub const REFUSED: [u8; 8] = *b"ROOSTNO!";
/// First bytes of a restarted process asking for its remote fds.
pub const REATTACH: [u8; 8] = *b"ROOSTRA\x01";
/// The starter's answer once an image is committed.
pub const ACK_COMMITTED: u8 = b'K';

/// A kernel `struct sigaction` (x86-64 `rt_sigaction` layout).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ImageHeader {
    pub magic: [u8; 8],
    pub version: u32,
    pub arch: u32,
    pub page_size: u32,
    pub nregions: u32,
    pub nfds: u32,
    pub umask: u32,
    /// `arch_prctl(ARCH_GET_FS)` at the checkpoint.
    pub fs_base: u64,
    /// Address of the `ucontext_t` of the checkpoint signal's frame; the
    /// restart returns through it with `rt_sigreturn`.
    pub frame: u64,
    /// The program break.
    pub brk: u64,
    pub sigactions: [KSigaction; 65],
    /// Checksum of the region and fd tables.
    pub tables_sum: u64,
    /// Checksum of this header with `header_sum` = 0.
    pub header_sum: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// `RF_*` bits.
    pub flags: u32,
    pub offset: u64,
    /// NUL-terminated path of a file mapping, or a `[name]`.
    pub path: [u8; 256],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdRecord {
    pub fd: i32,
    /// `FD_CLOEXEC` and the like (`F_GETFD`).
    pub fd_flags: i32,
    /// `FD_*` kind bits.
    pub kind: u32,
    /// Open flags (`F_GETFL`).
    pub open_flags: i32,
    pub handle: u64,
    /// Bytes the starter had pushed into a stream that the job had not read.
    pub unread: u64,
    /// A local file's offset.
    pub offset: u64,
    /// A local file's path, NUL-terminated.
    pub path: [u8; 256],
}

impl FdRecord {
    pub const EMPTY: FdRecord = FdRecord {
        fd: -1,
        fd_flags: 0,
        kind: 0,
        open_flags: 0,
        handle: 0,
        unread: 0,
        offset: 0,
        path: [0; 256],
    };
}

impl Region {
    pub const EMPTY: Region = Region {
        start: 0,
        end: 0,
        prot: 0,
        flags: 0,
        offset: 0,
        path: [0; 256],
    };
}

/// A fast 64-bit checksum (not cryptographic) over `data`.
pub fn checksum(data: &[u8]) -> u64 {
    let mut c = Checksum::new(data.len() as u64);
    c.update(data);
    c.finish()
}

/// [`checksum`] computed piece by piece: every piece but the last must be a
/// multiple of 8 bytes long, and `total` is the length of all of them.
#[derive(Debug, Clone, Copy)]
pub struct Checksum(u64);

impl Checksum {
    pub fn new(total: u64) -> Checksum {
        Checksum(0x9E37_79B9_7F4A_7C15 ^ total)
    }

    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            h = (h ^ w).wrapping_mul(0xFF51_AFD7_ED55_8CCD).rotate_left(29);
        }
        for &b in chunks.remainder() {
            h = (h ^ b as u64)
                .wrapping_mul(0xC4CE_B9FE_1A85_EC53)
                .rotate_left(17);
        }
        self.0 = h;
    }

    pub fn finish(self) -> u64 {
        self.0 ^ (self.0 >> 31)
    }
}

/// Why an image cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageError {
    Magic,
    Version(u32),
    Arch(u32),
    PageSize(u32),
    HeaderSum,
    TablesSum,
    DataSum,
    TooManyRegions(u32),
}

impl ImageError {
    pub fn as_str(&self) -> &'static str {
        match self {
            ImageError::Magic => "not a roost checkpoint image (bad magic)",
            ImageError::Version(_) => "checkpoint image of another format version",
            ImageError::Arch(_) => "checkpoint image of another architecture",
            ImageError::PageSize(_) => "checkpoint image of another page size",
            ImageError::HeaderSum => "checkpoint image header is corrupt (checksum)",
            ImageError::TablesSum => "checkpoint image tables are corrupt (checksum)",
            ImageError::DataSum => "checkpoint image data is corrupt (checksum)",
            ImageError::TooManyRegions(_) => "checkpoint image has too many regions",
        }
    }
}

impl ImageHeader {
    /// The header as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // Plain-old-data with no padding holes that matter: every field is
        // an integer, and the checksum covers the same bytes on both sides.
        bytes_of(self)
    }

    /// Sets `header_sum` over the header.
    pub fn seal(&mut self) {
        self.header_sum = 0;
        self.header_sum = checksum(self.as_bytes());
    }

    /// Checks what a reader must check before trusting the header.
    pub fn verify(&self, page_size: u32, max_regions: u32) -> Result<(), ImageError> {
        if self.magic != MAGIC {
            return Err(ImageError::Magic);
        }
        if self.version != VERSION {
            return Err(ImageError::Version(self.version));
        }
        if self.arch != ARCH_X86_64 {
            return Err(ImageError::Arch(self.arch));
        }
        if self.page_size != page_size {
            return Err(ImageError::PageSize(self.page_size));
        }
        let mut copy = *self;
        copy.header_sum = 0;
        if checksum(copy.as_bytes()) != self.header_sum {
            return Err(ImageError::HeaderSum);
        }
        if self.nregions > max_regions {
            return Err(ImageError::TooManyRegions(self.nregions));
        }
        Ok(())
    }
}

fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    let p: *const T = v;
    // SAFETY: `T` is one of this module's `repr(C)` integer-only records;
    // the slice covers exactly the value and lives as long as the borrow.
    unsafe { core::slice::from_raw_parts(p.cast::<u8>(), core::mem::size_of::<T>()) }
}

/// The bytes of a table of records.
pub fn table_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: as in `bytes_of`, for a contiguous slice of records.
    unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<u8>(), core::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_seal_and_verify() {
        let mut h = ImageHeader {
            magic: MAGIC,
            version: VERSION,
            arch: ARCH_X86_64,
            page_size: 4096,
            nregions: 3,
            nfds: 1,
            umask: 0o22,
            fs_base: 1,
            frame: 2,
            brk: 3,
            sigactions: [KSigaction::default(); 65],
            tables_sum: 9,
            header_sum: 0,
        };
        h.seal();
        assert_eq!(h.verify(4096, 10), Ok(()));
        assert_eq!(h.verify(8192, 10), Err(ImageError::PageSize(4096)));
        assert_eq!(h.verify(4096, 2), Err(ImageError::TooManyRegions(3)));
        let mut bad = h;
        bad.brk = 4;
        assert_eq!(bad.verify(4096, 10), Err(ImageError::HeaderSum));
        let mut bad = h;
        bad.magic[0] = b'X';
        assert_eq!(bad.verify(4096, 10), Err(ImageError::Magic));
        let mut bad = h;
        bad.version = 2;
        assert_eq!(bad.verify(4096, 10), Err(ImageError::Version(2)));
    }

    #[test]
    fn checksum_in_pieces_is_the_same() {
        let d: Vec<u8> = (0..10_003u32).map(|i| (i * 7 % 253) as u8).collect();
        let mut c = Checksum::new(d.len() as u64);
        for piece in d.chunks(1024) {
            c.update(piece);
        }
        assert_eq!(c.finish(), checksum(&d));
    }

    #[test]
    fn checksum_sees_every_byte() {
        let a = vec![0u8; 4099];
        let base = checksum(&a);
        for i in [0, 7, 8, 4095, 4098] {
            let mut b = a.clone();
            b[i] = 1;
            assert_ne!(checksum(&b), base, "byte {i}");
        }
    }
}
