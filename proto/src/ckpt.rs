//! The checkpoint image format and the restart hand-over, as fixed-layout
//! records: the shim writes and reads them from a signal handler and from a
//! restore path that may not allocate, so there is no serde here.
//!
//! An image is: one [`ImageHeader`], `nregions` [`Region`]s, `nfds`
//! [`FdRecord`]s, then for every region with [`RF_DATA`], in table order:
//! a page bitmap ([`bitmap_words`] little-endian `u64`s, bit `i` set when
//! page `i` of the region follows), the `Region::pages` pages it marks, and
//! an 8-byte [`DataSum`] over the bitmap and the pages' [`page_hash`]es.
//! The header carries a
//! checksum of the header itself and of both tables. Readers check magic,
//! version, architecture, page size and every checksum before they use a
//! byte, and refuse an image with a clear reason.
//!
//! A [`KIND_FULL`] image marks every page. A [`KIND_INCREMENT`] marks only
//! the pages changed since its parent (`parent_id` = the parent's
//! `image_id`); the pages it leaves out are as the parent left them, so a
//! restart applies a chain: a full image, then its increments in order.
//! Every image carries the whole region and fd tables.
#![allow(unsafe_code)]

/// First bytes of every image.
pub const MAGIC: [u8; 8] = *b"ROOSTCK\x01";
/// Image format version this build reads and writes.
pub const VERSION: u32 = 2;
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

/// `ImageHeader::kind`: every page of every data region follows.
pub const KIND_FULL: u32 = 0;
/// `ImageHeader::kind`: only the pages changed since the parent follow.
pub const KIND_INCREMENT: u32 = 1;

/// `ImageHeader::flags`: the changed pages of an increment were found
/// (at least in part) from the kernel's record of written pages rather
/// than by hashing every page.
pub const IMG_KERNEL_TRACKED: u32 = 1;

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
    /// [`KIND_FULL`] or [`KIND_INCREMENT`].
    pub kind: u32,
    /// `IMG_*` bits.
    pub flags: u32,
    /// This image's identity (unique per job, never 0).
    pub image_id: u64,
    /// The image an increment applies to (0 for a full image).
    pub parent_id: u64,
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
    /// With `RF_DATA`: how many of the region's pages follow in the image.
    pub pages: u64,
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
        pages: 0,
        path: [0; 256],
    };

    /// Pages the region spans.
    pub fn npages(&self, page: u64) -> u64 {
        self.end.saturating_sub(self.start) / page
    }

    /// Bytes of the region's data in an image (bitmap, pages, checksum);
    /// 0 without `RF_DATA`.
    pub fn data_len(&self, page: u64) -> u64 {
        if self.flags & RF_DATA == 0 {
            return 0;
        }
        bitmap_words(self.npages(page)) * 8 + self.pages * page + 8
    }
}

/// `u64` words of the page bitmap of a region of `npages` pages.
pub fn bitmap_words(npages: u64) -> u64 {
    npages.div_ceil(64)
}

/// Keys of [`page_hash`]: one 16-byte key per 16-byte piece of a page, so
/// that moving data within a page changes its hash.
const PAGE_KEYS: [u64; 512] = {
    let mut k = [0u64; 512];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut i = 0;
    while i < 512 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        k[i] = x;
        i += 1;
    }
    k
};

/// A fast 64-bit hash of one page (not cryptographic), used to find the
/// pages that changed since the last image: the accumulate step of xxh3
/// (`acc += lo32(d ^ k) * hi32(d ^ k) + swap(d)`) with a key per 16-byte
/// piece, on SSE2 where there is one; then a final mix. `page` must be a
/// multiple of 64 bytes long, at most 4096 (a page).
pub fn page_hash(page: &[u8]) -> u64 {
    debug_assert!(page.len().is_multiple_of(64) && page.len() <= 4096);
    let lanes = accumulate(page);
    let mut h = page.len() as u64 ^ 0x9E37_79B9_7F4A_7C15;
    for (i, l) in lanes.iter().enumerate() {
        h = (h ^ l.wrapping_add(PAGE_KEYS[i]))
            .wrapping_mul(0x9FB2_1C65_1E98_DF25)
            .rotate_left(29);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^ (h >> 29)
}

#[cfg(target_arch = "x86_64")]
fn accumulate(page: &[u8]) -> [u64; 8] {
    use core::arch::x86_64::*;
    let n = page.len().min(4096) / 64;
    let mut out = [0u64; 8];
    // SAFETY: SSE2 is part of x86-64; every load reads 16 bytes inside
    // `page` (64-byte steps, `n` whole steps) or inside `PAGE_KEYS`
    // (512 u64s = 256 pieces of 16 bytes, one per piece of a page), and
    // the stores write into `out`, 8 u64s.
    unsafe {
        let mut acc = [_mm_setzero_si128(); 4];
        let d = page.as_ptr();
        let k = PAGE_KEYS.as_ptr().cast::<u8>();
        for s in 0..n {
            for (j, a) in acc.iter_mut().enumerate() {
                let off = s * 64 + j * 16;
                let data = _mm_loadu_si128(d.add(off).cast());
                let key = _mm_loadu_si128(k.add(off).cast());
                let dk = _mm_xor_si128(data, key);
                let hi = _mm_shuffle_epi32::<0b00_11_00_01>(dk);
                let prod = _mm_mul_epu32(dk, hi);
                let swapped = _mm_shuffle_epi32::<0b01_00_11_10>(data);
                *a = _mm_add_epi64(*a, _mm_add_epi64(prod, swapped));
            }
        }
        for (j, a) in acc.iter().enumerate() {
            _mm_storeu_si128(out.as_mut_ptr().add(j * 2).cast(), *a);
        }
    }
    out
}

#[cfg(not(target_arch = "x86_64"))]
fn accumulate(page: &[u8]) -> [u64; 8] {
    let mut out = [0u64; 8];
    for (i, c) in page.chunks_exact(8).enumerate() {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        let dk = w ^ PAGE_KEYS[i % 512];
        let lane = &mut out[i % 8];
        let partner = page
            .get((i ^ 1) * 8..(i ^ 1) * 8 + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        *lane = lane
            .wrapping_add((dk & 0xFFFF_FFFF).wrapping_mul(dk >> 32))
            .wrapping_add(partner);
    }
    out
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

/// The checksum after a data region's bytes in an image: over its bitmap
/// and the [`page_hash`] of each page that follows, in order (the hashes
/// are computed anyway to find changed pages, and run at memory speed).
#[derive(Debug, Clone, Copy)]
pub struct DataSum(Checksum);

impl DataSum {
    /// For a region with a bitmap of `words` words and `pages` pages.
    pub fn new(words: u64, pages: u64) -> DataSum {
        DataSum(Checksum::new(words * 8 + pages * 8))
    }

    /// The bitmap's bytes (a multiple of 8 long).
    pub fn bitmap(&mut self, b: &[u8]) {
        self.0.update(b);
    }

    /// The next page's hash.
    pub fn page(&mut self, hash: u64) {
        self.0.update(&hash.to_le_bytes());
    }

    pub fn finish(self) -> u64 {
        self.0.finish()
    }
}

/// zstd level of images: a fast level (negative levels trade a little
/// ratio for speed); the data of a typical job compresses about as well
/// as at level 1.
pub const ZSTD_LEVEL: i32 = -3;

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

    /// A header from the first bytes of an image (unchecked: call
    /// [`ImageHeader::verify`]); `None` when there are too few.
    pub fn from_bytes(b: &[u8]) -> Option<ImageHeader> {
        if b.len() < core::mem::size_of::<ImageHeader>() {
            return None;
        }
        // SAFETY: the header is a `repr(C)` record of integers, valid for
        // any bytes; the slice holds at least its size; unaligned read.
        Some(unsafe { core::ptr::read_unaligned(b.as_ptr().cast::<ImageHeader>()) })
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

/// Record types that are plain integers: every byte pattern is a value.
pub trait Pod: Copy {}
impl Pod for ImageHeader {}
impl Pod for Region {}
impl Pod for FdRecord {}

/// Reads records laid out back to back in `b` (a multiple of their size;
/// a partial record at the end is ignored).
pub fn records<T: Pod>(b: &[u8]) -> Vec<T> {
    b.chunks_exact(core::mem::size_of::<T>())
        .map(|c| {
            // SAFETY: `c` holds exactly `size_of::<T>()` bytes, and `T` is a
            // `repr(C)` record of integers (`Pod`), valid for any bytes;
            // the read is unaligned-safe.
            unsafe { core::ptr::read_unaligned(c.as_ptr().cast::<T>()) }
        })
        .collect()
}

/// The start of an image, read and checked: header, region table, fd
/// table, and how many bytes of region data follow.
#[derive(Debug, Clone)]
pub struct Tables {
    /// The header and both tables exactly as read.
    pub bytes: Vec<u8>,
    pub header: ImageHeader,
    pub regions: Vec<Region>,
    pub fds: Vec<FdRecord>,
    /// Bytes of region data after the tables (bitmaps, pages, checksums).
    pub data_len: u64,
}

/// Why the start of an image could not be read.
#[derive(Debug)]
pub enum TablesError {
    /// Reading the image's `what` ("header", "tables") failed.
    Io(&'static str, std::io::Error),
    /// The image is not usable; the reason.
    Bad(String),
}

/// Reads an image's header and tables from `r` and checks them: the
/// header's magic, version, architecture, page size and checksum, the
/// counts against `max_regions`/`max_fds`, the tables' checksum, and that
/// every region adds up (it ends after it starts, holds no more pages than
/// it spans, and the data of all regions has a size that fits in a `u64`).
/// Nothing is allocated before the counts are checked.
pub fn read_tables<R: std::io::Read>(
    r: &mut R,
    page: u32,
    max_regions: u32,
    max_fds: u32,
) -> Result<Tables, TablesError> {
    let hlen = core::mem::size_of::<ImageHeader>();
    let mut bytes = vec![0u8; hlen];
    r.read_exact(&mut bytes)
        .map_err(|e| TablesError::Io("header", e))?;
    let header = ImageHeader::from_bytes(&bytes).ok_or(TablesError::Bad("short header".into()))?;
    header
        .verify(page, max_regions)
        .map_err(|e| TablesError::Bad(e.as_str().into()))?;
    if header.nfds > max_fds {
        return Err(TablesError::Bad(format!(
            "checkpoint image has {} fds (at most {max_fds})",
            header.nfds
        )));
    }
    let rlen = header.nregions as usize * core::mem::size_of::<Region>();
    let flen = header.nfds as usize * core::mem::size_of::<FdRecord>();
    bytes.resize(hlen + rlen + flen, 0);
    r.read_exact(&mut bytes[hlen..])
        .map_err(|e| TablesError::Io("tables", e))?;
    let (rt, ft) = bytes[hlen..].split_at(rlen);
    if checksum(rt) ^ checksum(ft).rotate_left(1) != header.tables_sum {
        return Err(TablesError::Bad(ImageError::TablesSum.as_str().into()));
    }
    let regions: Vec<Region> = records(rt);
    let fds: Vec<FdRecord> = records(ft);
    let bad = || TablesError::Bad("checkpoint image has a region that does not add up".into());
    let page = page as u64;
    let mut data_len = 0u64;
    for r in &regions {
        if r.end < r.start || r.pages > r.npages(page) {
            return Err(bad());
        }
        if r.flags & RF_DATA != 0 {
            // Each term is at most the region's span (plus a few words),
            // but the sum over many regions can overflow.
            let len = (bitmap_words(r.npages(page)) * 8)
                .checked_add(r.pages * page)
                .and_then(|n| n.checked_add(8))
                .ok_or_else(bad)?;
            data_len = data_len.checked_add(len).ok_or_else(bad)?;
        }
    }
    Ok(Tables {
        bytes,
        header,
        regions,
        fds,
        data_len,
    })
}

/// The bytes of a table of records.
pub fn table_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: as in `bytes_of`, for a contiguous slice of records.
    unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<u8>(), core::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of an image with `regions` and one fd, sealed.
    fn image_start(regions: &[Region]) -> Vec<u8> {
        let fds = [FdRecord::EMPTY];
        let mut h = ImageHeader {
            magic: MAGIC,
            version: VERSION,
            arch: ARCH_X86_64,
            page_size: 4096,
            nregions: regions.len() as u32,
            nfds: 1,
            umask: 0o22,
            fs_base: 0,
            frame: 0,
            brk: 0,
            sigactions: [KSigaction::default(); 65],
            kind: KIND_FULL,
            flags: 0,
            image_id: 1,
            parent_id: 0,
            tables_sum: checksum(table_bytes(regions)) ^ checksum(table_bytes(&fds)).rotate_left(1),
            header_sum: 0,
        };
        h.seal();
        let mut b = h.as_bytes().to_vec();
        b.extend_from_slice(table_bytes(regions));
        b.extend_from_slice(table_bytes(&fds));
        b
    }

    fn region(start: u64, end: u64, pages: u64) -> Region {
        Region {
            start,
            end,
            flags: RF_DATA,
            pages,
            ..Region::EMPTY
        }
    }

    #[test]
    fn read_tables_accepts_an_image_start_and_sizes_its_data() {
        let regions = [region(0x1000, 0x5000, 4), region(0x9000, 0xa000, 0)];
        let b = image_start(&regions);
        let t = read_tables(&mut &b[..], 4096, 16, 16).unwrap();
        assert_eq!(t.bytes, b);
        assert_eq!(t.regions.len(), 2);
        assert_eq!(t.fds, vec![FdRecord::EMPTY]);
        // (1 bitmap word + 4 pages + checksum) + (1 word + 0 pages + checksum)
        assert_eq!(t.data_len, (8 + 4 * 4096 + 8) + (8 + 8));
    }

    #[test]
    fn read_tables_refuses_what_does_not_add_up() {
        let err = |b: &[u8]| match read_tables(&mut &b[..], 4096, 16, 16) {
            Err(TablesError::Bad(why)) => why,
            Err(TablesError::Io(what, e)) => format!("io {what}: {e}"),
            Ok(_) => "accepted".into(),
        };
        let good = image_start(&[region(0x1000, 0x5000, 4)]);
        assert_eq!(err(&good[..100]), "io header: failed to fill whole buffer");
        assert!(err(&good[..good.len() - 1]).starts_with("io tables"));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(err(&flipped), ImageError::TablesSum.as_str());
        // More pages than the region spans; a region ending before it starts.
        assert!(err(&image_start(&[region(0x1000, 0x2000, 2)])).contains("does not add up"));
        assert!(err(&image_start(&[region(0x2000, 0x1000, 0)])).contains("does not add up"));
        // Regions whose data sizes overflow a u64 together.
        let huge = region(0, !0xfffu64, (u64::MAX >> 12) - 1);
        assert!(err(&image_start(&[huge, huge])).contains("does not add up"));
        assert_eq!(
            err(&image_start(&vec![region(0, 0x1000, 1); 17])),
            ImageError::TooManyRegions(17).as_str()
        );
    }

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
            kind: KIND_FULL,
            flags: 0,
            image_id: 5,
            parent_id: 0,
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
        bad.version = 1;
        assert_eq!(bad.verify(4096, 10), Err(ImageError::Version(1)));
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
    fn page_hash_sees_every_byte_and_every_move() {
        let a: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let base = page_hash(&a);
        let mut seen = std::collections::HashSet::new();
        for i in 0..4096 {
            for bit in [0, 7] {
                let mut b = a.clone();
                b[i] ^= 1 << bit;
                let h = page_hash(&b);
                assert_ne!(h, base, "byte {i} bit {bit}");
                assert!(seen.insert(h), "byte {i} bit {bit} collides");
            }
        }
        // Pieces swapped, and words swapped inside a piece.
        for (x, y) in [(0, 16), (0, 4080), (100, 2000), (0, 8)] {
            let mut b = a.clone();
            for k in 0..8 {
                b.swap(x + k, y + k);
            }
            assert_ne!(page_hash(&b), base, "{x} <-> {y}");
        }
        assert_ne!(page_hash(&[0u8; 4096]), page_hash(&[1u8; 4096]));
    }

    #[test]
    fn region_data_len_counts_bitmap_pages_and_checksum() {
        let mut r = Region::EMPTY;
        r.start = 0x1000;
        r.end = 0x1000 + 65 * 4096;
        r.flags = RF_DATA;
        r.pages = 3;
        assert_eq!(r.data_len(4096), 2 * 8 + 3 * 4096 + 8);
        r.flags = 0;
        assert_eq!(r.data_len(4096), 0);
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
