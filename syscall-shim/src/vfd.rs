//! The virtual fd table: which fd numbers are remote, for which handle,
//! with which flags, plus per-fd read-ahead and pending directory entries.
//!
//! A remote fd's number is held locally by its placeholder socket, so the
//! table is indexed by fd. The placeholder's inode is kept to notice an fd
//! that was closed and reused behind the shim's back.

use proto::Handle;
use proto::fileop::Dirent;
use std::collections::VecDeque;

/// Remote fds must be below this number.
pub const MAX_FD: usize = 1024;

/// Read-ahead window bounds (bytes).
pub const RA_MIN: u32 = 64 << 10;
pub const RA_MAX: u32 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unknown,
    Regular,
    Other,
}

#[derive(Debug)]
pub struct Vfd {
    pub h: Handle,
    /// Open flags (`O_ACCMODE`, `O_APPEND`, `O_NONBLOCK`, ...).
    pub flags: i32,
    /// The starter pushes the file into the placeholder (reads are raw).
    pub stream: bool,
    pub dir: bool,
    /// A remote socket (`proto::net`): written and read in the placeholder.
    pub sock: bool,
    pub kind: Kind,
    /// Inode of the placeholder socket.
    pub ino: u64,
    /// This process wrote into the placeholder since the last flush.
    pub written: bool,
    /// The open file description may be used by another fd or process.
    pub shared: bool,
    /// Read-ahead: bytes fetched beyond the job's offset, from `ra_pos`.
    pub ra: Vec<u8>,
    pub ra_pos: usize,
    pub ra_win: u32,
    /// Directory entries fetched but not yet returned by `getdents64`.
    pub dents: VecDeque<Dirent>,
}

impl Vfd {
    pub fn new(h: Handle, flags: i32, ino: u64) -> Vfd {
        Vfd {
            h,
            flags,
            stream: false,
            dir: false,
            sock: proto::net::is_sock(h),
            kind: Kind::Unknown,
            ino,
            written: false,
            shared: false,
            ra: Vec::new(),
            ra_pos: 0,
            ra_win: RA_MIN,
            dents: VecDeque::new(),
        }
    }

    /// Bytes read ahead and not yet consumed by the job.
    pub fn ra_left(&self) -> usize {
        self.ra.len() - self.ra_pos
    }

    pub fn readable(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_WRONLY
    }

    pub fn writable(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_RDONLY
    }

    /// A copy for a duplicated fd (same handle, no private buffers).
    pub fn dup(&self, ino: u64) -> Vfd {
        Vfd {
            stream: self.stream,
            dir: self.dir,
            kind: self.kind,
            shared: true,
            ..Vfd::new(self.h, self.flags, ino)
        }
    }
}

pub struct VfdTable {
    slots: [Option<Vfd>; MAX_FD],
}

impl Default for VfdTable {
    fn default() -> Self {
        Self::new()
    }
}

impl VfdTable {
    pub const fn new() -> Self {
        VfdTable {
            slots: [const { None }; MAX_FD],
        }
    }

    pub fn get(&self, fd: i32) -> Option<&Vfd> {
        self.slots.get(usize::try_from(fd).ok()?)?.as_ref()
    }

    pub fn get_mut(&mut self, fd: i32) -> Option<&mut Vfd> {
        self.slots.get_mut(usize::try_from(fd).ok()?)?.as_mut()
    }

    /// Records `fd` as remote; `EMFILE` if the number is out of range.
    pub fn insert(&mut self, fd: i32, v: Vfd) -> Result<(), proto::fileop::Errno> {
        let slot = usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .ok_or(libc::EMFILE)?;
        *slot = Some(v);
        Ok(())
    }

    pub fn remove(&mut self, fd: i32) -> Option<Vfd> {
        self.slots.get_mut(usize::try_from(fd).ok()?)?.take()
    }

    pub fn clear(&mut self) {
        for s in self.slots.iter_mut() {
            *s = None;
        }
    }

    /// Every remote fd, with its entry.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (i32, &mut Vfd)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.as_mut().map(|v| (i as i32, v)))
    }

    pub fn iter(&self) -> impl Iterator<Item = (i32, &Vfd)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|v| (i as i32, v)))
    }

    /// Other fds of this process on the same handle as `fd`.
    pub fn others(&self, fd: i32, h: Handle) -> impl Iterator<Item = i32> + '_ {
        self.iter()
            .filter(move |(f, v)| *f != fd && v.h == h)
            .map(|(f, _)| f)
    }

    pub fn any_written(&self) -> bool {
        self.iter().any(|(_, v)| v.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove_and_range() {
        let mut t = VfdTable::new();
        assert!(t.get(3).is_none());
        t.insert(3, Vfd::new(Handle(9), libc::O_RDONLY, 11))
            .unwrap();
        assert_eq!(t.get(3).unwrap().h, Handle(9));
        assert!(t.get(3).unwrap().readable());
        assert!(!t.get(3).unwrap().writable());
        assert_eq!(
            t.insert(MAX_FD as i32, Vfd::new(Handle(1), 0, 0)),
            Err(libc::EMFILE)
        );
        assert_eq!(t.insert(-1, Vfd::new(Handle(1), 0, 0)), Err(libc::EMFILE));
        assert!(t.get(-5).is_none());
        let d = t.get(3).unwrap().dup(12);
        assert!(d.shared);
        t.insert(7, d).unwrap();
        assert_eq!(t.others(3, Handle(9)).collect::<Vec<_>>(), vec![7]);
        assert!(!t.any_written());
        t.get_mut(7).unwrap().written = true;
        assert!(t.any_written());
        assert_eq!(t.remove(3).unwrap().ino, 11);
        assert!(t.get(3).is_none());
        assert_eq!(t.iter().count(), 1);
        t.clear();
        assert_eq!(t.iter().count(), 0);
    }

    #[test]
    fn read_ahead_accounting() {
        let mut v = Vfd::new(Handle(1), libc::O_RDWR, 0);
        assert!(v.readable() && v.writable());
        v.ra = vec![1, 2, 3, 4];
        v.ra_pos = 1;
        assert_eq!(v.ra_left(), 3);
    }
}
