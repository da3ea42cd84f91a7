//! Tests of the remote-file engine against a temporary initialdir.

use super::*;
use proptest::prelude::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

struct T {
    _tmp: tempfile::TempDir,
    /// The initialdir.
    root: PathBuf,
    /// A directory beside it that must stay unreachable.
    outside: PathBuf,
    fs: JobFs,
}

fn setup() -> T {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("job");
    let outside = tmp.path().join("secret");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("key"), b"private").unwrap();
    std::fs::write(root.join("in.txt"), b"hello world\n").unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    let fs = JobFs::new(&root).unwrap();
    T {
        _tmp: tmp,
        root,
        outside,
        fs,
    }
}

fn open(fs: &mut JobFs, path: &str, flags: i32, mode: u32) -> Result<Handle, Errno> {
    match fs.call(FileOp::Open {
        at: None,
        path: path.into(),
        flags,
        mode,
    }) {
        FileReply::Opened { h, .. } => Ok(h),
        FileReply::Err(e) => Err(e),
        r => panic!("unexpected reply {r:?}"),
    }
}

fn data(r: FileReply) -> Vec<u8> {
    match r {
        FileReply::Data(d) => d,
        r => panic!("expected Data, got {r:?}"),
    }
}

fn stat(r: FileReply) -> Stat {
    match r {
        FileReply::Stat(s) => s,
        r => panic!("expected Stat, got {r:?}"),
    }
}

fn path_reply(r: FileReply) -> Vec<u8> {
    match r {
        FileReply::Path(p) => p,
        r => panic!("expected Path, got {r:?}"),
    }
}

#[test]
fn read_write_share_the_handle_offset_and_count_bytes() {
    let mut t = setup();
    let h = open(&mut t.fs, "in.txt", libc::O_RDONLY, 0).unwrap();
    assert_eq!(data(t.fs.call(FileOp::Read { h, len: 6 })), b"hello ");
    assert_eq!(data(t.fs.call(FileOp::Read { h, len: 100 })), b"world\n");
    assert_eq!(data(t.fs.call(FileOp::Read { h, len: 100 })), b"");
    assert_eq!(t.fs.bytes_read(), 12);
    // A second open has its own offset.
    let h2 = open(&mut t.fs, "in.txt", libc::O_RDONLY, 0).unwrap();
    assert_eq!(data(t.fs.call(FileOp::Read { h: h2, len: 5 })), b"hello");

    let w = open(
        &mut t.fs,
        "out.txt",
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        0o600,
    )
    .unwrap();
    assert_eq!(
        t.fs.call(FileOp::Write {
            h: w,
            data: b"abc".to_vec()
        }),
        FileReply::Count(3)
    );
    assert_eq!(t.fs.write(w, b"def").unwrap(), 3);
    assert_eq!(t.fs.bytes_written(), 6);
    assert_eq!(t.fs.call(FileOp::Close { h: w }), FileReply::Ok);
    assert_eq!(
        t.fs.call(FileOp::Close { h: w }),
        FileReply::Err(libc::EBADF)
    );
    assert_eq!(std::fs::read(t.root.join("out.txt")).unwrap(), b"abcdef");
    let mode = std::fs::metadata(t.root.join("out.txt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode & !0o600,
        0,
        "created with the job's mode (umask applied)"
    );
    assert_eq!(
        t.fs.call(FileOp::Read { h: w, len: 1 }),
        FileReply::Err(libc::EBADF)
    );
}

#[test]
fn pread_pwrite_lseek() {
    let mut t = setup();
    let h = open(&mut t.fs, "in.txt", libc::O_RDWR, 0).unwrap();
    assert_eq!(
        data(t.fs.call(FileOp::Pread { h, len: 5, off: 6 })),
        b"world"
    );
    assert_eq!(
        t.fs.call(FileOp::Pwrite {
            h,
            data: b"W".to_vec(),
            off: 6
        }),
        FileReply::Count(1)
    );
    // pread/pwrite leave the offset alone.
    assert_eq!(
        t.fs.call(FileOp::Lseek {
            h,
            off: 0,
            whence: libc::SEEK_CUR
        }),
        FileReply::Offset(0)
    );
    assert_eq!(
        t.fs.call(FileOp::Lseek {
            h,
            off: -6,
            whence: libc::SEEK_END
        }),
        FileReply::Offset(6)
    );
    assert_eq!(data(t.fs.call(FileOp::Read { h, len: 5 })), b"World");
    assert_eq!(
        t.fs.call(FileOp::Lseek {
            h,
            off: -1,
            whence: libc::SEEK_SET
        }),
        FileReply::Err(libc::EINVAL)
    );
    assert_eq!(
        t.fs.call(FileOp::Lseek {
            h,
            off: 0,
            whence: 99
        }),
        FileReply::Err(libc::EINVAL)
    );
    assert_eq!(
        t.fs.call(FileOp::Pread { h, len: 1, off: -1 }),
        FileReply::Err(libc::EINVAL)
    );
}

#[test]
fn escapes_get_eacces() {
    let mut t = setup();
    let key = t.outside.join("key");
    symlink(&key, t.root.join("evil")).unwrap();
    symlink("../../secret", t.root.join("sub/up")).unwrap();
    symlink("/proc/self/root/etc/passwd", t.root.join("magic")).unwrap();
    let rd = libc::O_RDONLY;
    assert_eq!(open(&mut t.fs, "../secret/key", rd, 0), Err(libc::EACCES));
    assert_eq!(
        open(&mut t.fs, "../../../../../../etc/passwd", rd, 0),
        Err(libc::EACCES)
    );
    assert_eq!(
        open(&mut t.fs, key.to_str().unwrap(), rd, 0),
        Err(libc::EACCES)
    );
    assert_eq!(open(&mut t.fs, "/etc/passwd", rd, 0), Err(libc::EACCES));
    assert_eq!(open(&mut t.fs, "evil", rd, 0), Err(libc::EACCES));
    assert_eq!(open(&mut t.fs, "sub/up/key", rd, 0), Err(libc::EACCES));
    assert!(open(&mut t.fs, "magic", rd, 0).is_err());
    // A sibling whose name starts with the root's name is outside too.
    let sibling = format!("{}x/f", t.root.display());
    assert_eq!(open(&mut t.fs, &sibling, rd, 0), Err(libc::EACCES));
    // Creating through an escape fails and creates nothing.
    assert_eq!(
        open(
            &mut t.fs,
            "../secret/new",
            libc::O_WRONLY | libc::O_CREAT,
            0o644
        ),
        Err(libc::EACCES)
    );
    assert!(!t.outside.join("new").exists());
    let s = |p: &str| FileOp::Stat {
        at: None,
        path: p.into(),
        nofollow: false,
    };
    assert_eq!(t.fs.call(s("evil")), FileReply::Err(libc::EACCES));
    assert_eq!(t.fs.call(s("..")), FileReply::Err(libc::EACCES));
    assert_eq!(
        t.fs.call(FileOp::Unlink {
            at: None,
            path: b"../secret/key".to_vec(),
            dir: false
        }),
        FileReply::Err(libc::EACCES)
    );
    assert_eq!(
        t.fs.call(FileOp::Rename {
            from_at: None,
            from: b"in.txt".to_vec(),
            to_at: None,
            to: b"../secret/stolen".to_vec(),
            flags: 0
        }),
        FileReply::Err(libc::EACCES)
    );
    assert_eq!(
        t.fs.call(FileOp::Chdir {
            at: None,
            path: b"..".to_vec()
        }),
        FileReply::Err(libc::EACCES)
    );
    assert_eq!(t.fs.executable("../secret/key"), Err(libc::EACCES));
    assert_eq!(std::fs::read(&key).unwrap(), b"private");
    // Inside paths still work, absolute or with `..` that stays inside.
    assert!(open(&mut t.fs, "sub/../in.txt", rd, 0).is_ok());
    let abs = format!("{}/in.txt", t.root.display());
    assert!(open(&mut t.fs, &abs, rd, 0).is_ok());
    assert_eq!(
        stat(t.fs.call(s(&t.root.display().to_string()))).mode & libc::S_IFMT,
        libc::S_IFDIR
    );
}

#[test]
fn stat_follows_or_not_and_access() {
    let mut t = setup();
    symlink("in.txt", t.root.join("link")).unwrap();
    let follow = stat(t.fs.call(FileOp::Stat {
        at: None,
        path: b"link".to_vec(),
        nofollow: false,
    }));
    let nofollow = stat(t.fs.call(FileOp::Stat {
        at: None,
        path: b"link".to_vec(),
        nofollow: true,
    }));
    assert_eq!(follow.size, 12);
    assert_eq!(follow.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(nofollow.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        follow.ino,
        std::fs::metadata(t.root.join("in.txt")).unwrap().ino()
    );
    let h = open(&mut t.fs, "in.txt", libc::O_RDONLY, 0).unwrap();
    assert_eq!(stat(t.fs.call(FileOp::Fstat { h })), follow);
    assert_eq!(
        t.fs.call(FileOp::Stat {
            at: None,
            path: b"nope".to_vec(),
            nofollow: false
        }),
        FileReply::Err(libc::ENOENT)
    );
    assert_eq!(
        t.fs.call(FileOp::Stat {
            at: None,
            path: b"in.txt/".to_vec(),
            nofollow: true
        }),
        FileReply::Err(libc::ENOTDIR)
    );
    let acc = |p: &str, mode| FileOp::Access {
        at: None,
        path: p.into(),
        mode,
        flags: 0,
    };
    assert_eq!(t.fs.call(acc("in.txt", libc::R_OK)), FileReply::Ok);
    assert_eq!(t.fs.call(acc("in.txt", libc::F_OK)), FileReply::Ok);
    assert_eq!(t.fs.call(acc("link", libc::F_OK)), FileReply::Ok);
    assert_eq!(
        t.fs.call(acc("nope", libc::F_OK)),
        FileReply::Err(libc::ENOENT)
    );
    assert_eq!(
        t.fs.call(acc("in.txt", libc::X_OK)),
        FileReply::Err(libc::EACCES)
    );
}

#[test]
fn unlink_rmdir_mkdir_rename_link_symlink_readlink() {
    let mut t = setup();
    let p = |s: &str| s.as_bytes().to_vec();
    assert_eq!(
        t.fs.call(FileOp::Mkdir {
            at: None,
            path: p("d"),
            mode: 0o755
        }),
        FileReply::Ok
    );
    assert!(t.root.join("d").is_dir());
    assert_eq!(
        t.fs.call(FileOp::Mkdir {
            at: None,
            path: p("d"),
            mode: 0o755
        }),
        FileReply::Err(libc::EEXIST)
    );
    assert_eq!(
        t.fs.call(FileOp::Mkdir {
            at: None,
            path: p("d/e/"),
            mode: 0o755
        }),
        FileReply::Ok
    );
    assert_eq!(
        t.fs.call(FileOp::Unlink {
            at: None,
            path: p("d"),
            dir: true
        }),
        FileReply::Err(libc::ENOTEMPTY)
    );
    assert_eq!(
        t.fs.call(FileOp::Unlink {
            at: None,
            path: p("d/e"),
            dir: true
        }),
        FileReply::Ok
    );
    assert_eq!(
        t.fs.call(FileOp::Unlink {
            at: None,
            path: p("d"),
            dir: false
        }),
        FileReply::Err(libc::EISDIR)
    );
    assert_eq!(
        t.fs.call(FileOp::Unlink {
            at: None,
            path: p("d"),
            dir: true
        }),
        FileReply::Ok
    );
    assert!(!t.root.join("d").exists());

    let rename = |from: &str, to: &str, flags| FileOp::Rename {
        from_at: None,
        from: from.into(),
        to_at: None,
        to: to.into(),
        flags,
    };
    assert_eq!(t.fs.call(rename("in.txt", "sub/moved", 0)), FileReply::Ok);
    assert_eq!(
        std::fs::read(t.root.join("sub/moved")).unwrap(),
        b"hello world\n"
    );
    std::fs::write(t.root.join("other"), b"x").unwrap();
    assert_eq!(
        t.fs.call(rename("other", "sub/moved", libc::RENAME_NOREPLACE)),
        FileReply::Err(libc::EEXIST)
    );

    assert_eq!(
        t.fs.call(FileOp::Link {
            from_at: None,
            from: p("other"),
            to_at: None,
            to: p("hard")
        }),
        FileReply::Ok
    );
    assert_eq!(std::fs::metadata(t.root.join("other")).unwrap().nlink(), 2);
    assert_eq!(
        t.fs.call(FileOp::Symlink {
            target: p("sub/moved"),
            at: None,
            path: p("sl")
        }),
        FileReply::Ok
    );
    assert_eq!(
        path_reply(t.fs.call(FileOp::Readlink {
            at: None,
            path: p("sl")
        })),
        b"sub/moved"
    );
    assert_eq!(
        t.fs.call(FileOp::Readlink {
            at: None,
            path: p("other")
        }),
        FileReply::Err(libc::EINVAL)
    );
    let h = open(&mut t.fs, "sl", libc::O_RDONLY, 0).unwrap();
    assert_eq!(data(t.fs.call(FileOp::Read { h, len: 5 })), b"hello");
    assert_eq!(
        t.fs.call(FileOp::Unlink {
            at: None,
            path: p("sl"),
            dir: false
        }),
        FileReply::Ok
    );
    assert!(
        t.root.join("sub/moved").exists(),
        "unlink removes the link, not its target"
    );
}

#[test]
fn getdents_pages_through_a_directory() {
    let mut t = setup();
    let names: Vec<String> = (0..50).map(|i| format!("f{i:02}")).collect();
    for n in &names {
        std::fs::write(t.root.join("sub").join(n), b"").unwrap();
    }
    let h = open(&mut t.fs, "sub", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    let mut seen = Vec::new();
    loop {
        let FileReply::Dirents(d) = t.fs.call(FileOp::Getdents { h, max: 7 }) else {
            panic!()
        };
        if d.is_empty() {
            break;
        }
        assert!(d.len() <= 7);
        for e in d {
            if e.name != b"." && e.name != b".." {
                assert_eq!(e.kind, libc::DT_REG);
            } else {
                assert_eq!(e.kind, libc::DT_DIR);
            }
            seen.push(String::from_utf8(e.name).unwrap());
        }
    }
    seen.sort();
    let mut want: Vec<String> = names.clone();
    want.push(".".into());
    want.push("..".into());
    want.sort();
    assert_eq!(seen, want);
    // Rewinding starts over.
    assert_eq!(
        t.fs.call(FileOp::Lseek {
            h,
            off: 0,
            whence: libc::SEEK_SET
        }),
        FileReply::Offset(0)
    );
    let FileReply::Dirents(d) = t.fs.call(FileOp::Getdents { h, max: 1000 }) else {
        panic!()
    };
    assert_eq!(d.len(), 52);
    let f = open(&mut t.fs, "in.txt", libc::O_RDONLY, 0).unwrap();
    assert_eq!(
        t.fs.call(FileOp::Getdents { h: f, max: 10 }),
        FileReply::Err(libc::ENOTDIR)
    );
}

#[test]
fn chdir_getcwd_and_at_handles() {
    let mut t = setup();
    let root = t.root.display().to_string();
    std::fs::create_dir(t.root.join("sub/deep")).unwrap();
    std::fs::write(t.root.join("sub/deep/f"), b"deep").unwrap();
    symlink("sub/deep", t.root.join("dl")).unwrap();
    assert_eq!(path_reply(t.fs.call(FileOp::Getcwd)), root.as_bytes());
    assert_eq!(
        path_reply(t.fs.call(FileOp::Chdir {
            at: None,
            path: b"sub".to_vec()
        })),
        format!("{root}/sub").as_bytes()
    );
    let h = open(&mut t.fs, "deep/f", libc::O_RDONLY, 0).unwrap();
    assert_eq!(data(t.fs.call(FileOp::Read { h, len: 10 })), b"deep");
    // `..` may climb back to the root but not above it.
    assert!(open(&mut t.fs, "../in.txt", libc::O_RDONLY, 0).is_ok());
    assert_eq!(
        open(&mut t.fs, "../../secret/key", libc::O_RDONLY, 0),
        Err(libc::EACCES)
    );
    // A chdir through a symlink lands on the real directory.
    assert_eq!(
        path_reply(
            t.fs.call(FileOp::Chdir {
                at: None,
                path: b"/"
                    .iter()
                    .chain(root.as_bytes())
                    .skip(1)
                    .chain(b"/dl")
                    .copied()
                    .collect()
            })
        ),
        format!("{root}/sub/deep").as_bytes()
    );
    assert_eq!(
        path_reply(t.fs.call(FileOp::Getcwd)),
        format!("{root}/sub/deep").as_bytes()
    );
    assert_eq!(
        t.fs.call(FileOp::Chdir {
            at: None,
            path: b"f".to_vec()
        }),
        FileReply::Err(libc::ENOTDIR)
    );
    assert_eq!(
        t.fs.call(FileOp::Chdir {
            at: None,
            path: b"../../..".to_vec()
        }),
        FileReply::Err(libc::EACCES)
    );
    assert_eq!(
        path_reply(t.fs.call(FileOp::Getcwd)),
        format!("{root}/sub/deep").as_bytes()
    );
    // Paths relative to a directory handle, and fchdir.
    let d = open(
        &mut t.fs,
        format!("{root}/sub").as_str(),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .unwrap();
    let FileReply::Opened { h: f, .. } = t.fs.call(FileOp::Open {
        at: Some(d),
        path: b"../in.txt".to_vec(),
        flags: libc::O_RDONLY,
        mode: 0,
    }) else {
        panic!()
    };
    assert_eq!(data(t.fs.call(FileOp::Read { h: f, len: 5 })), b"hello");
    assert_eq!(
        t.fs.call(FileOp::Open {
            at: Some(d),
            path: b"../../secret/key".to_vec(),
            flags: libc::O_RDONLY,
            mode: 0
        }),
        FileReply::Err(libc::EACCES)
    );
    assert_eq!(
        path_reply(t.fs.call(FileOp::Chdir {
            at: Some(d),
            path: Vec::new()
        })),
        format!("{root}/sub").as_bytes()
    );
}

#[test]
fn truncate_fsync_chmod_utimens_barrier() {
    let mut t = setup();
    let h = open(&mut t.fs, "in.txt", libc::O_RDWR, 0).unwrap();
    assert_eq!(t.fs.call(FileOp::Ftruncate { h, len: 5 }), FileReply::Ok);
    assert_eq!(std::fs::read(t.root.join("in.txt")).unwrap(), b"hello");
    assert_eq!(
        t.fs.call(FileOp::Ftruncate { h, len: -1 }),
        FileReply::Err(libc::EINVAL)
    );
    assert_eq!(
        t.fs.call(FileOp::Truncate {
            at: None,
            path: b"in.txt".to_vec(),
            len: 2
        }),
        FileReply::Ok
    );
    assert_eq!(std::fs::read(t.root.join("in.txt")).unwrap(), b"he");
    assert_eq!(
        t.fs.call(FileOp::Fsync {
            h,
            data_only: false
        }),
        FileReply::Ok
    );
    assert_eq!(
        t.fs.call(FileOp::Fsync { h, data_only: true }),
        FileReply::Ok
    );
    assert_eq!(
        t.fs.call(FileOp::Chmod {
            at: None,
            path: b"in.txt".to_vec(),
            mode: 0o640
        }),
        FileReply::Ok
    );
    let m = std::fs::metadata(t.root.join("in.txt")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o640);
    assert_eq!(
        t.fs.call(FileOp::Utimens {
            at: None,
            path: b"in.txt".to_vec(),
            times: [Some((1_000_000, 5)), Some((2_000_000, 7))],
            nofollow: false
        }),
        FileReply::Ok
    );
    let m = std::fs::metadata(t.root.join("in.txt")).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000, 5));
    assert_eq!((m.mtime(), m.mtime_nsec()), (2_000_000, 7));
    symlink("in.txt", t.root.join("l")).unwrap();
    assert_eq!(
        t.fs.call(FileOp::Utimens {
            at: None,
            path: b"l".to_vec(),
            times: [None, None],
            nofollow: true
        }),
        FileReply::Ok
    );
    let m = std::fs::metadata(t.root.join("in.txt")).unwrap();
    assert_eq!(m.mtime(), 2_000_000, "nofollow left the target alone");
    assert_eq!(t.fs.call(FileOp::Barrier), FileReply::Ok);
}

#[test]
fn record_locks_conflict_between_handles() {
    let mut t = setup();
    let a = open(&mut t.fs, "in.txt", libc::O_RDWR, 0).unwrap();
    let b = open(&mut t.fs, "in.txt", libc::O_RDWR, 0).unwrap();
    let wr = Flock {
        typ: libc::F_WRLCK as i16,
        whence: libc::SEEK_SET as i16,
        start: 0,
        len: 4,
        pid: 0,
    };
    assert_eq!(
        t.fs.call(FileOp::Lock {
            h: a,
            cmd: libc::F_SETLK,
            lock: wr
        }),
        FileReply::Ok
    );
    let FileReply::Lock(got) = t.fs.call(FileOp::Lock {
        h: b,
        cmd: libc::F_GETLK,
        lock: wr,
    }) else {
        panic!()
    };
    assert_eq!((got.typ, got.start, got.len), (libc::F_WRLCK as i16, 0, 4));
    assert_eq!(
        t.fs.call(FileOp::Lock {
            h: b,
            cmd: libc::F_SETLK,
            lock: wr
        }),
        FileReply::Err(libc::EAGAIN)
    );
    // A range that does not overlap is free.
    let other = Flock { start: 4, ..wr };
    assert_eq!(
        t.fs.call(FileOp::Lock {
            h: b,
            cmd: libc::F_SETLK,
            lock: other
        }),
        FileReply::Ok
    );
    let un = Flock {
        typ: libc::F_UNLCK as i16,
        ..wr
    };
    assert_eq!(
        t.fs.call(FileOp::Lock {
            h: a,
            cmd: libc::F_SETLK,
            lock: un
        }),
        FileReply::Ok
    );
    let FileReply::Lock(got) = t.fs.call(FileOp::Lock {
        h: b,
        cmd: libc::F_GETLK,
        lock: wr,
    }) else {
        panic!()
    };
    assert_eq!(got.typ, libc::F_UNLCK as i16);
    // The waiting form has a non-waiting twin for async callers.
    let wait = FileOp::Lock {
        h: b,
        cmd: libc::F_SETLKW,
        lock: wr,
    };
    let try_op = nonblocking_lock(&wait).unwrap();
    assert_eq!(
        try_op,
        FileOp::Lock {
            h: b,
            cmd: libc::F_OFD_SETLK,
            lock: wr
        }
    );
    assert_eq!(
        t.fs.call(FileOp::Lock {
            h: a,
            cmd: libc::F_SETLK,
            lock: wr
        }),
        FileReply::Ok
    );
    assert_eq!(t.fs.call(try_op.clone()), FileReply::Err(libc::EAGAIN));
    assert_eq!(
        t.fs.call(FileOp::Lock {
            h: a,
            cmd: libc::F_SETLK,
            lock: un
        }),
        FileReply::Ok
    );
    assert_eq!(t.fs.call(try_op), FileReply::Ok);
    assert_eq!(
        t.fs.call(FileOp::Lock {
            h: a,
            cmd: libc::F_SETLK,
            lock: wr
        }),
        FileReply::Err(libc::EAGAIN)
    );
    // Called directly, the waiting form takes a free lock at once.
    assert_eq!(
        t.fs.call(FileOp::Lock {
            h: b,
            cmd: libc::F_SETLK,
            lock: un
        }),
        FileReply::Ok
    );
    assert_eq!(
        t.fs.call(FileOp::Lock {
            h: a,
            cmd: libc::F_SETLKW,
            lock: wr
        }),
        FileReply::Ok
    );
    assert!(
        nonblocking_lock(&FileOp::Lock {
            h: a,
            cmd: libc::F_SETLK,
            lock: wr
        })
        .is_none()
    );
    // Closing the handle releases its locks.
    assert_eq!(t.fs.call(FileOp::Close { h: a }), FileReply::Ok);
    assert_eq!(
        t.fs.call(FileOp::Lock {
            h: b,
            cmd: libc::F_SETLK,
            lock: wr
        }),
        FileReply::Ok
    );
    assert_eq!(
        t.fs.call(FileOp::Lock {
            h: b,
            cmd: 12345,
            lock: wr
        }),
        FileReply::Err(libc::EINVAL)
    );
}

#[test]
fn open_std_and_executable() {
    let mut t = setup();
    std::fs::write(t.root.join("out"), b"old contents").unwrap();
    // The job's cwd does not matter for its standard files.
    t.fs.call(FileOp::Chdir {
        at: None,
        path: b"sub".to_vec(),
    });
    let out =
        t.fs.open_std("out", libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)
            .unwrap();
    let err =
        t.fs.open_std("logs.err", libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)
            .unwrap();
    let inp = t.fs.open_std("in.txt", libc::O_RDONLY).unwrap();
    assert_eq!(t.fs.handle_flags(inp), Some(libc::O_RDONLY));
    t.fs.write(out, b"new").unwrap();
    t.fs.write(err, b"e").unwrap();
    assert_eq!(std::fs::read(t.root.join("out")).unwrap(), b"new");
    let m = std::fs::metadata(t.root.join("logs.err")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777 & !0o644, 0);
    assert_eq!(
        t.fs.open_std("../secret/key", libc::O_RDONLY),
        Err(libc::EACCES)
    );
    assert_eq!(t.fs.open_std("missing", libc::O_RDONLY), Err(libc::ENOENT));
    assert_eq!(t.fs.executable("in.txt").unwrap(), b"hello world\n");
    let abs = format!("{}/in.txt", t.root.display());
    assert_eq!(t.fs.executable(&abs).unwrap(), b"hello world\n");
    assert_eq!(t.fs.executable("/bin/sh"), Err(libc::EACCES));
}

#[test]
fn relative_initialdir_is_refused() {
    assert!(matches!(
        JobFs::new(Path::new("rel")),
        Err(FsError::NotAbsolute { .. })
    ));
    assert!(matches!(
        JobFs::new(Path::new("/nonexistent/roost")),
        Err(FsError::Open { .. })
    ));
}

/// A component of a random relative path.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("a".to_string()),
        Just("b".to_string()),
        Just("up".to_string()),
        Just("abs".to_string()),
        Just("loop".to_string()),
        Just("in.txt".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Whatever a relative path of `..`, names and symlinks looks like, a
    /// file opened through it lies inside the root, and escapes are EACCES.
    #[test]
    fn random_paths_never_leave_the_root(
        comps in proptest::collection::vec(component(), 1..8),
        start in proptest::option::of(prop_oneof![Just("a"), Just("a/b")]),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("job");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("in.txt"), b"in").unwrap();
        std::fs::write(tmp.path().join("in.txt"), b"OUT").unwrap();
        symlink("..", root.join("up")).unwrap();
        symlink("../..", root.join("a/up")).unwrap();
        symlink("../../..", root.join("a/b/up")).unwrap();
        symlink(tmp.path(), root.join("abs")).unwrap();
        symlink(tmp.path(), root.join("a/abs")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let mut fs = JobFs::new(&root).unwrap();
        if let Some(s) = start {
            let r = fs.call(FileOp::Chdir { at: None, path: s.into() });
            prop_assert!(matches!(r, FileReply::Path(_)), "chdir {}: {:?}", s, r);
        }
        let path = comps.join("/");
        let canon_root = std::fs::canonicalize(&root).unwrap();
        for flags in [libc::O_RDONLY, libc::O_RDONLY | libc::O_DIRECTORY] {
            match fs.call(FileOp::Open { at: None, path: path.clone().into(), flags, mode: 0 }) {
                FileReply::Opened { h, .. } => {
                    let fd = fs.fd(h).unwrap();
                    let real = std::fs::read_link(proc_fd(fd)).unwrap();
                    prop_assert!(real.starts_with(&canon_root), "{path} opened {real:?}");
                }
                FileReply::Err(e) => prop_assert!(
                    [libc::EACCES, libc::ENOENT, libc::ENOTDIR, libc::ELOOP].contains(&e),
                    "{path}: errno {e}"
                ),
                r => prop_assert!(false, "{r:?}"),
            }
        }
        match fs.call(FileOp::Chdir { at: None, path: path.clone().into() }) {
            FileReply::Path(p) => prop_assert!(p.starts_with(root.as_os_str().as_bytes())),
            FileReply::Err(e) => prop_assert!([libc::EACCES, libc::ENOENT, libc::ENOTDIR, libc::ELOOP].contains(&e)),
            r => prop_assert!(false, "{r:?}"),
        }
        if let FileReply::Stat(s) = fs.call(FileOp::Stat { at: None, path: path.clone().into(), nofollow: false }) {
            let outside = std::fs::metadata(tmp.path()).unwrap();
            prop_assert!(s.ino != outside.ino() || s.dev != outside.dev(), "{path} reached the parent");
        }
    }
}

#[test]
fn an_empty_path_with_a_handle_names_the_handle() {
    let mut t = setup();
    let h = open(&mut t.fs, "in.txt", libc::O_RDONLY, 0).unwrap();
    let st = stat(t.fs.call(FileOp::Stat {
        at: Some(h),
        path: Vec::new(),
        nofollow: false,
    }));
    assert_eq!(st.size, 12);
    assert_eq!(
        t.fs.call(FileOp::Chmod {
            at: Some(h),
            path: Vec::new(),
            mode: 0o600
        }),
        FileReply::Ok
    );
    let m = std::fs::metadata(t.root.join("in.txt")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    let times = [Some((5, 0)), Some((6, 0))];
    let op = FileOp::Utimens {
        at: Some(h),
        path: Vec::new(),
        times,
        nofollow: false,
    };
    assert_eq!(t.fs.call(op), FileReply::Ok);
    assert_eq!(std::fs::metadata(t.root.join("in.txt")).unwrap().mtime(), 6);
    let op = FileOp::Access {
        at: Some(h),
        path: Vec::new(),
        mode: libc::R_OK,
        flags: libc::AT_EMPTY_PATH,
    };
    assert_eq!(t.fs.call(op), FileReply::Ok);
    // Without a handle an empty path is ENOENT, as in the kernel.
    let op = FileOp::Stat {
        at: None,
        path: Vec::new(),
        nofollow: false,
    };
    assert_eq!(t.fs.call(op), FileReply::Err(libc::ENOENT));
    let op = FileOp::Stat {
        at: Some(Handle(4242)),
        path: Vec::new(),
        nofollow: false,
    };
    assert_eq!(t.fs.call(op), FileReply::Err(libc::EBADF));
}

fn rd(fs: &mut JobFs, h: Handle, len: u32) -> Vec<u8> {
    data(fs.call(FileOp::Read { h, len }))
}

#[test]
fn snapshot_then_restore_cuts_files_back_and_keeps_offsets() {
    let mut t = setup();
    let input = open(&mut t.fs, "in.txt", libc::O_RDONLY, 0).unwrap();
    let out = open(
        &mut t.fs,
        "sub/out.txt",
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        0o644,
    )
    .unwrap();
    let log = open(
        &mut t.fs,
        "log.txt",
        libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        0o644,
    )
    .unwrap();
    assert_eq!(rd(&mut t.fs, input, 6), b"hello ");
    t.fs.write(out, b"first part\n").unwrap();
    t.fs.write(log, b"log 1\n").unwrap();
    assert!(matches!(
        t.fs.call(FileOp::Chdir {
            at: None,
            path: b"sub".to_vec()
        }),
        FileReply::Path(_)
    ));
    // The starter had read the input further ahead than the job had.
    let snap = t.fs.snapshot(&[]);
    let h = |id: Handle| snap.handles.iter().find(|x| x.id == id.0).unwrap().clone();
    assert_eq!((h(input).offset, h(input).size), (6, None));
    assert_eq!((h(out).offset, h(out).size), (11, Some(11)));
    assert_eq!(h(out).path, b"sub/out.txt");
    assert_eq!(h(log).size, Some(6));
    assert_eq!(snap.cwd, b"sub");
    assert!(snap.unrestorable().is_empty());
    let json = serde_json::to_string(&snap).unwrap();
    let back: FsSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);

    // The job goes on past the checkpoint, then its host is lost.
    assert_eq!(rd(&mut t.fs, input, 6), b"world\n");
    t.fs.write(out, b"written after the checkpoint\n").unwrap();
    t.fs.write(log, b"log 2\n").unwrap();
    drop(t.fs.call(FileOp::Close { h: out }));

    let mut fs = JobFs::restore(&t.root, &snap).unwrap();
    assert_eq!(
        std::fs::read(t.root.join("sub/out.txt")).unwrap(),
        b"first part\n"
    );
    assert_eq!(std::fs::read(t.root.join("log.txt")).unwrap(), b"log 1\n");
    assert_eq!(fs.cwd(), join_abs(t.root.as_os_str().as_bytes(), b"sub"));
    // Same handles, same offsets: the replayed run writes the same bytes.
    assert_eq!(rd(&mut fs, input, 6), b"world\n");
    fs.write(out, b"written after the checkpoint\n").unwrap();
    fs.write(log, b"log 2\n").unwrap();
    assert_eq!(
        std::fs::read(t.root.join("sub/out.txt")).unwrap(),
        b"first part\nwritten after the checkpoint\n"
    );
    assert_eq!(
        std::fs::read(t.root.join("log.txt")).unwrap(),
        b"log 1\nlog 2\n"
    );
    // Restoring again from the same snapshot gives the same files again.
    let fs2 = JobFs::restore(&t.root, &snap).unwrap();
    assert_eq!(
        std::fs::read(t.root.join("sub/out.txt")).unwrap(),
        b"first part\n"
    );
    // New handles do not collide with restored ones.
    let mut fs2 = fs2;
    let n = open(&mut fs2, "/dev/null", libc::O_RDONLY, 0);
    assert!(n.is_err(), "absolute paths outside stay refused");
    let n = open(&mut fs2, "more.txt", libc::O_WRONLY | libc::O_CREAT, 0o644).unwrap();
    assert!(n.0 > log.0, "{n:?}");
    assert_eq!(fs2.bytes_written(), snap.bytes_written);
}

#[test]
fn snapshot_follows_renames_uses_stream_offsets_and_sees_deleted_files() {
    let mut t = setup();
    let out = open(&mut t.fs, "a.txt", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    t.fs.write(out, b"0123456789").unwrap();
    let op = FileOp::Rename {
        from_at: None,
        from: b"a.txt".to_vec(),
        to_at: None,
        to: b"sub/b.txt".to_vec(),
        flags: 0,
    };
    assert_eq!(t.fs.call(op), FileReply::Ok);
    let input = open(&mut t.fs, "in.txt", libc::O_RDONLY, 0).unwrap();
    assert_eq!(rd(&mut t.fs, input, 12).len(), 12);
    let d = open(&mut t.fs, "sub", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    let snap = t.fs.snapshot(&[(input, 3)]);
    let h = |id: Handle| snap.handles.iter().find(|x| x.id == id.0).unwrap().clone();
    assert_eq!(h(out).path, b"sub/b.txt");
    assert_eq!(h(input).offset, 3);
    assert!(h(d).dir && !h(out).dir);
    let mut fs = JobFs::restore(&t.root, &snap).unwrap();
    assert_eq!(rd(&mut fs, input, 4), b"lo w");
    assert_eq!(
        fs.call(FileOp::Pread {
            h: out,
            len: 100,
            off: 0
        }),
        FileReply::Data(b"0123456789".to_vec())
    );

    // A file unlinked while open cannot come back: the snapshot says so.
    let tmp = open(&mut t.fs, "scratch", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    let op = FileOp::Unlink {
        at: None,
        path: b"scratch".to_vec(),
        dir: false,
    };
    assert_eq!(t.fs.call(op), FileReply::Ok);
    let snap = t.fs.snapshot(&[]);
    assert!(snap.handles.iter().any(|x| x.id == tmp.0 && x.deleted));
    assert_eq!(snap.unrestorable(), ["scratch"]);
    let e = JobFs::restore(&t.root, &snap).unwrap_err().to_string();
    assert!(e.contains("scratch"), "{e}");
}

#[test]
fn recycled_read_buffers_hold_only_the_bytes_of_each_read() {
    let mut t = setup();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(t.root.join("big"), &body).unwrap();
    let h = open(&mut t.fs, "big", libc::O_RDONLY, 0).unwrap();
    let a = data(t.fs.call(FileOp::Read { h, len: 200_000 }));
    assert_eq!(a, &body[..200_000]);
    t.fs.recycle(a);
    // A short read into the recycled buffer: no stale bytes past the end.
    let b = data(t.fs.call(FileOp::Read { h, len: 200_000 }));
    assert_eq!(b, &body[200_000..]);
    t.fs.recycle(b);
    let c = data(t.fs.call(FileOp::Pread {
        h,
        len: 3,
        off: 250_000,
    }));
    assert_eq!(c, &body[250_000..250_003]);
    t.fs.recycle(c);
    assert_eq!(data(t.fs.call(FileOp::Read { h, len: 10 })), b"");
    assert_eq!(
        t.fs.call(FileOp::Read {
            h: Handle(999),
            len: 10
        }),
        FileReply::Err(libc::EBADF)
    );
    assert_eq!(t.fs.bytes_read(), 300_003);
}
