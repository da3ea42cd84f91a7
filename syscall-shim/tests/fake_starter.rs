//! Real programs under the real `libroost_shim.so`, against a small fake
//! starter in the test process that serves the shim protocol from a temp
//! directory with `std::fs` (the job's root). The job's real cwd is a
//! separate, empty scratch directory, so every file it sees is remote.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::Handle;
use proto::fileop::{Dirent, FileOp, FileReply, Stat};
use proto::frame::{MAX_FRAME, encode, read_frame};
use proto::shim::{InheritedFd, ShimReply, ShimRequest};

struct Open {
    file: File,
    path: PathBuf,
    flags: i32,
    dir: bool,
    dents: Option<Vec<Dirent>>,
    /// Our end of the placeholder; `None` once the job closed every copy.
    ours: Option<UnixStream>,
    /// Inode of the job's end.
    ino: u64,
    stream: bool,
}

#[derive(Default)]
struct State {
    next: u64,
    handles: HashMap<u64, Open>,
    cwd: PathBuf,
    calls: Vec<String>,
}

struct Fake {
    root: PathBuf,
    state: Mutex<State>,
}

fn errno(e: std::io::Error) -> FileReply {
    FileReply::Err(e.raw_os_error().unwrap_or(libc::EIO))
}

fn stat_of(m: &std::fs::Metadata) -> Stat {
    Stat {
        dev: m.dev(),
        ino: m.ino(),
        mode: m.mode(),
        nlink: m.nlink(),
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev(),
        size: m.size() as i64,
        blksize: m.blksize() as i64,
        blocks: m.blocks() as i64,
        atime: (m.atime(), m.atime_nsec()),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    }
}

impl Fake {
    fn resolve(&self, st: &State, at: Option<Handle>, path: &[u8]) -> Result<PathBuf, i32> {
        let p = Path::new(std::str::from_utf8(path).map_err(|_| libc::EINVAL)?);
        let base = match at {
            Some(h) => st.handles.get(&h.0).ok_or(libc::EBADF)?.path.clone(),
            None => st.cwd.clone(),
        };
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        };
        let mut full = PathBuf::new();
        for c in joined.components() {
            match c {
                std::path::Component::ParentDir => {
                    full.pop();
                }
                std::path::Component::CurDir => {}
                c => full.push(c),
            }
        }
        if !full.starts_with(&self.root) {
            return Err(libc::EACCES);
        }
        Ok(full)
    }

    /// An empty path with a handle names the handle's file.
    fn by_handle_or_path(
        &self,
        st: &State,
        at: Option<Handle>,
        path: &[u8],
    ) -> Result<PathBuf, i32> {
        match at {
            Some(h) if path.is_empty() => st
                .handles
                .get(&h.0)
                .map(|o| o.path.clone())
                .ok_or(libc::EBADF),
            _ => self.resolve(st, at, path),
        }
    }

    /// Applies whatever the job wrote into placeholders; forgets closed ones.
    fn drain(&self, st: &mut State) {
        let mut gone = Vec::new();
        for (h, o) in st.handles.iter_mut() {
            let Some(s) = o.ours.as_mut() else { continue };
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 65536];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        gone.push(*h);
                        break;
                    }
                    Ok(n) => o.file.write_all(&buf[..n]).unwrap(),
                    Err(_) => break,
                }
            }
            let _ = s.set_nonblocking(false);
        }
        for h in gone {
            st.handles.remove(&h);
        }
    }

    /// Opens `path` as a new handle; returns it and the job's end.
    fn open(
        &self,
        st: &mut State,
        path: PathBuf,
        flags: i32,
        mode: u32,
    ) -> Result<(Handle, Stat, OwnedFd), i32> {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
        }
        // SAFETY: fd was just opened and is owned here.
        let file = unsafe { File::from_raw_fd(fd) };
        let m = file.metadata().map_err(|e| e.raw_os_error().unwrap())?;
        let (ours, theirs) = UnixStream::pair().unwrap();
        // SAFETY: an all-zero struct stat is valid; fstat fills it.
        let mut sb: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: theirs is an open socket and sb is writable.
        assert_eq!(unsafe { libc::fstat(theirs.as_raw_fd(), &mut sb) }, 0);
        let ino = sb.st_ino;
        st.next += 1;
        let h = st.next;
        st.handles.insert(
            h,
            Open {
                file,
                path,
                flags,
                dir: m.is_dir(),
                dents: None,
                ours: Some(ours),
                ino,
                stream: false,
            },
        );
        Ok((Handle(h), stat_of(&m), OwnedFd::from(theirs)))
    }

    fn call(&self, st: &mut State, op: FileOp) -> (FileReply, Option<OwnedFd>) {
        self.drain(st);
        st.calls.push(format!("{op:?}").chars().take(60).collect());
        let r = match op {
            FileOp::Open {
                at,
                path,
                flags,
                mode,
            } => match self.resolve(st, at, &path) {
                Ok(p) => match self.open(st, p, flags, mode) {
                    Ok((h, stat, fd)) => return (FileReply::Opened { h, stat }, Some(fd)),
                    Err(e) => FileReply::Err(e),
                },
                Err(e) => FileReply::Err(e),
            },
            FileOp::Read { h, len } => match st.handles.get_mut(&h.0) {
                Some(o) => {
                    let mut buf = vec![0u8; len as usize];
                    let mut n = 0;
                    loop {
                        match o.file.read(&mut buf[n..]) {
                            Ok(0) => break,
                            Ok(k) => n += k,
                            Err(e) => return (errno(e), None),
                        }
                        if n == buf.len() {
                            break;
                        }
                    }
                    buf.truncate(n);
                    FileReply::Data(buf)
                }
                None => FileReply::Err(libc::EBADF),
            },
            FileOp::Pread { h, len, off } => match st.handles.get_mut(&h.0) {
                Some(o) => {
                    let mut buf = vec![0u8; len as usize];
                    let n = std::os::unix::fs::FileExt::read_at(&o.file, &mut buf, off as u64)
                        .unwrap_or(0);
                    buf.truncate(n);
                    FileReply::Data(buf)
                }
                None => FileReply::Err(libc::EBADF),
            },
            FileOp::Pwrite { h, data, off } => match st.handles.get_mut(&h.0) {
                Some(o) => match std::os::unix::fs::FileExt::write_at(&o.file, &data, off as u64) {
                    Ok(n) => FileReply::Count(n as u64),
                    Err(e) => errno(e),
                },
                None => FileReply::Err(libc::EBADF),
            },
            FileOp::Lseek { h, off, whence } => match st.handles.get_mut(&h.0) {
                Some(o) => {
                    if o.dir {
                        o.dents = None;
                    }
                    let pos = match whence {
                        libc::SEEK_SET => SeekFrom::Start(off as u64),
                        libc::SEEK_CUR => SeekFrom::Current(off),
                        _ => SeekFrom::End(off),
                    };
                    match o.file.seek(pos) {
                        Ok(p) => FileReply::Offset(p as i64),
                        Err(e) => errno(e),
                    }
                }
                None => FileReply::Err(libc::EBADF),
            },
            FileOp::Fstat { h } => match st.handles.get(&h.0) {
                Some(o) => FileReply::Stat(stat_of(&o.file.metadata().unwrap())),
                None => FileReply::Err(libc::EBADF),
            },
            FileOp::Stat { at, path, nofollow } => match self.resolve(st, at, &path) {
                Ok(p) => match if nofollow {
                    std::fs::symlink_metadata(&p)
                } else {
                    std::fs::metadata(&p)
                } {
                    Ok(m) => FileReply::Stat(stat_of(&m)),
                    Err(e) => errno(e),
                },
                Err(e) => FileReply::Err(e),
            },
            FileOp::Access { at, path, .. } => match self.resolve(st, at, &path) {
                Ok(p) if p.exists() => FileReply::Ok,
                Ok(_) => FileReply::Err(libc::ENOENT),
                Err(e) => FileReply::Err(e),
            },
            FileOp::Unlink { at, path, dir } => match self.resolve(st, at, &path) {
                Ok(p) => match if dir {
                    std::fs::remove_dir(p)
                } else {
                    std::fs::remove_file(p)
                } {
                    Ok(()) => FileReply::Ok,
                    Err(e) => errno(e),
                },
                Err(e) => FileReply::Err(e),
            },
            FileOp::Mkdir { at, path, .. } => match self.resolve(st, at, &path) {
                Ok(p) => match std::fs::create_dir(p) {
                    Ok(()) => FileReply::Ok,
                    Err(e) => errno(e),
                },
                Err(e) => FileReply::Err(e),
            },
            FileOp::Rename {
                from_at,
                from,
                to_at,
                to,
                ..
            } => {
                match (
                    self.resolve(st, from_at, &from),
                    self.resolve(st, to_at, &to),
                ) {
                    (Ok(a), Ok(b)) => match std::fs::rename(a, b) {
                        Ok(()) => FileReply::Ok,
                        Err(e) => errno(e),
                    },
                    _ => FileReply::Err(libc::EACCES),
                }
            }
            FileOp::Getdents { h, .. } => match st.handles.get_mut(&h.0) {
                Some(o) if o.dir => {
                    if o.dents.is_none() {
                        let mut v = vec![
                            Dirent {
                                ino: 1,
                                kind: libc::DT_DIR,
                                name: b".".to_vec(),
                            },
                            Dirent {
                                ino: 1,
                                kind: libc::DT_DIR,
                                name: b"..".to_vec(),
                            },
                        ];
                        for e in std::fs::read_dir(&o.path).unwrap() {
                            let e = e.unwrap();
                            let kind = if e.file_type().unwrap().is_dir() {
                                libc::DT_DIR
                            } else {
                                libc::DT_REG
                            };
                            v.push(Dirent {
                                ino: e.metadata().unwrap().ino(),
                                kind,
                                name: e.file_name().into_encoded_bytes(),
                            });
                        }
                        o.dents = Some(v.clone());
                        FileReply::Dirents(v)
                    } else {
                        FileReply::Dirents(Vec::new())
                    }
                }
                Some(_) => FileReply::Err(libc::ENOTDIR),
                None => FileReply::Err(libc::EBADF),
            },
            FileOp::Chdir { at, path } => match self.resolve(st, at, &path) {
                Ok(p) if p.is_dir() => {
                    st.cwd = p.clone();
                    FileReply::Path(p.into_os_string().into_encoded_bytes())
                }
                Ok(_) => FileReply::Err(libc::ENOENT),
                Err(e) => FileReply::Err(e),
            },
            FileOp::Ftruncate { h, len } => match st.handles.get(&h.0) {
                Some(o) => match o.file.set_len(len as u64) {
                    Ok(()) => FileReply::Ok,
                    Err(e) => errno(e),
                },
                None => FileReply::Err(libc::EBADF),
            },
            FileOp::Symlink { target, at, path } => match self.resolve(st, at, &path) {
                Ok(p) => match std::os::unix::fs::symlink(std::str::from_utf8(&target).unwrap(), p)
                {
                    Ok(()) => FileReply::Ok,
                    Err(e) => errno(e),
                },
                Err(e) => FileReply::Err(e),
            },
            FileOp::Readlink { at, path } => match self.resolve(st, at, &path) {
                Ok(p) => match std::fs::read_link(p) {
                    Ok(t) => FileReply::Path(t.into_os_string().into_encoded_bytes()),
                    Err(e) => errno(e),
                },
                Err(e) => FileReply::Err(e),
            },
            FileOp::Chmod { at, path, mode } => match self.by_handle_or_path(st, at, &path) {
                Ok(p) => {
                    use std::os::unix::fs::PermissionsExt;
                    match std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)) {
                        Ok(()) => FileReply::Ok,
                        Err(e) => errno(e),
                    }
                }
                Err(e) => FileReply::Err(e),
            },
            FileOp::Utimens {
                at, path, times, ..
            } => match self.by_handle_or_path(st, at, &path) {
                Ok(p) => {
                    let ts = |t: Option<(i64, i64)>| match t {
                        Some((s, n)) => libc::timespec {
                            tv_sec: s,
                            tv_nsec: n,
                        },
                        None => libc::timespec {
                            tv_sec: 0,
                            tv_nsec: libc::UTIME_NOW,
                        },
                    };
                    let t = [ts(times[0]), ts(times[1])];
                    let c = CString::new(p.into_os_string().into_encoded_bytes()).unwrap();
                    // SAFETY: c is a C string and t two timespecs.
                    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) } == 0 {
                        FileReply::Ok
                    } else {
                        errno(std::io::Error::last_os_error())
                    }
                }
                Err(e) => FileReply::Err(e),
            },
            FileOp::Truncate { at, path, len } => match self.resolve(st, at, &path) {
                Ok(p) => match std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .and_then(|f| f.set_len(len as u64))
                {
                    Ok(()) => FileReply::Ok,
                    Err(e) => errno(e),
                },
                Err(e) => FileReply::Err(e),
            },
            FileOp::Fsync { .. } | FileOp::Barrier => FileReply::Ok,
            FileOp::Close { h } => {
                st.handles.remove(&h.0);
                FileReply::Ok
            }
            _ => FileReply::Err(libc::ENOSYS),
        };
        (r, None)
    }

    fn serve(self: Arc<Self>, mut conn: UnixStream) {
        loop {
            let req: ShimRequest = match read_frame(&mut conn, MAX_FRAME) {
                Ok(r) => r,
                Err(_) => return,
            };
            let mut st = self.state.lock().unwrap();
            let (reply, fd) = match req {
                ShimRequest::Hello { inherited, .. } => {
                    let remote = inherited
                        .iter()
                        .filter_map(|&(fd, ino)| {
                            st.handles
                                .iter()
                                .find(|(_, o)| o.ino == ino && o.ours.is_some())
                                .map(|(h, o)| InheritedFd {
                                    fd,
                                    h: Handle(*h),
                                    flags: o.flags,
                                    stream: o.stream,
                                    dir: o.dir,
                                })
                        })
                        .collect();
                    (ShimReply::Welcome { remote }, None)
                }
                ShimRequest::Call(op) => {
                    let (r, fd) = self.call(&mut st, op);
                    (ShimReply::Reply(r), fd)
                }
                ShimRequest::Flush => {
                    self.drain(&mut st);
                    (ShimReply::Ok, None)
                }
                ShimRequest::Stream { h } => match st.handles.get_mut(&h.0) {
                    Some(o) => {
                        o.stream = true;
                        let mut file = o.file.try_clone().unwrap();
                        let mut out = o.ours.as_ref().unwrap().try_clone().unwrap();
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut file, &mut out);
                            let _ = out.shutdown(std::net::Shutdown::Write);
                        });
                        (ShimReply::Ok, None)
                    }
                    None => (ShimReply::Reply(FileReply::Err(libc::EBADF)), None),
                },
            };
            drop(st);
            send(&conn, &reply, fd);
        }
    }
}

/// Sends one frame, with `fd` attached (SCM_RIGHTS) if given.
fn send(conn: &UnixStream, reply: &ShimReply, fd: Option<OwnedFd>) {
    let buf = encode(reply).unwrap();
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut _,
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = &fd {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: the control buffer is large enough for one fd.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            libc::CMSG_DATA(c)
                .cast::<i32>()
                .write_unaligned(fd.as_raw_fd());
        }
    }
    // SAFETY: msg points to live buffers.
    let n = unsafe { libc::sendmsg(conn.as_raw_fd(), &msg, 0) };
    assert!(n > 0);
    let mut conn = conn;
    conn.write_all(&buf[n as usize..]).unwrap();
}

fn shim() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let so = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("libroost_shim.so");
    assert!(
        so.exists(),
        "{} is missing: build the crate first",
        so.display()
    );
    so
}

struct Job {
    fake: Arc<Fake>,
    dir: tempfile::TempDir,
    sock: PathBuf,
}

impl Job {
    fn new() -> Job {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(dir.path().join("scratch")).unwrap();
        let sock = dir.path().join("starter.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let fake = Arc::new(Fake {
            root: root.clone(),
            state: Mutex::new(State {
                cwd: root,
                ..State::default()
            }),
        });
        let f = fake.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let f = f.clone();
                std::thread::spawn(move || f.serve(conn.unwrap()));
            }
        });
        let f = fake.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(5));
                let mut st = f.state.lock().unwrap();
                f.drain(&mut st);
            }
        });
        Job { fake, dir, sock }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn put(&self, name: &str, data: &[u8]) {
        std::fs::write(self.root().join(name), data).unwrap();
    }

    fn get(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.root().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// A remote handle on `name`, and the placeholder for the job.
    fn std_handle(&self, name: &str, flags: i32) -> OwnedFd {
        let mut st = self.fake.state.lock().unwrap();
        let (_, _, fd) = self
            .fake
            .open(&mut st, self.root().join(name), flags, 0o644)
            .unwrap();
        fd
    }

    /// Runs `argv` with stdin/stdout remote (`input`, `output` under the
    /// root) and stderr local; returns the exit code and stderr.
    fn run(&self, argv: &[&str], input: Option<&str>, output: &str) -> (i32, String) {
        let stdin = match input {
            Some(i) => Stdio::from(self.std_handle(i, libc::O_RDONLY)),
            None => Stdio::null(),
        };
        let stdout =
            Stdio::from(self.std_handle(output, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC));
        let root = self.root();
        let out = Command::new(argv[0])
            .args(&argv[1..])
            .current_dir(self.dir.path().join("scratch"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LD_PRELOAD", shim())
            .env("ROOST_SOCK", &self.sock)
            .env("ROOST_ROOT", &root)
            .env("ROOST_CWD", &root)
            .env("ROOST_SHIM_LOG", self.dir.path().join("shim.log"))
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        // The starter drains every placeholder when the job has ended.
        std::thread::sleep(Duration::from_millis(20));
        let mut st = self.fake.state.lock().unwrap();
        self.fake.drain(&mut st);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn calls(&self) -> Vec<String> {
        self.fake.state.lock().unwrap().calls.clone()
    }
}

#[test]
fn cat_reads_a_remote_file_and_writes_remote_stdout() {
    let job = Job::new();
    let data: Vec<u8> = (0..300_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    job.put("in.txt", &data);
    let (code, err) = job.run(&["/bin/cat", "in.txt"], None, "out.txt");
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(job.get("out.txt"), data);
    assert!(!job.dir.path().join("scratch/out.txt").exists());
    // Read-ahead: far fewer reads than 4 KiB-sized calls would need.
    let reads = job.calls().iter().filter(|c| c.starts_with("Read")).count();
    assert!(reads < data.len() / 65536 + 4, "{reads} reads");
}

#[test]
fn sort_reads_remote_stdin_as_a_stream() {
    let job = Job::new();
    job.put("in.txt", b"pear\napple\nfig\n");
    let (code, err) = job.run(&["/usr/bin/sort"], Some("in.txt"), "sorted.txt");
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(job.get("sorted.txt"), b"apple\nfig\npear\n");
}

#[test]
fn a_shell_pipeline_with_redirections_runs_remote() {
    let job = Job::new();
    job.put("words.txt", b"b\na\nb\nc\na\nb\n");
    let script = "cat words.txt | tr a-c A-C | sort | uniq -c > counts.txt; wc -l < counts.txt; cd sub && echo in-sub > here.txt && pwd";
    let (code, err) = job.run(&["/bin/sh", "-c", script], None, "out.txt");
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(
        String::from_utf8(job.get("counts.txt")).unwrap(),
        "      2 A\n      3 B\n      1 C\n"
    );
    let root = job.root();
    assert_eq!(
        String::from_utf8(job.get("out.txt")).unwrap(),
        format!("3\n{}/sub\n", root.display())
    );
    assert_eq!(job.get("sub/here.txt"), b"in-sub\n");
}

const C_PROGRAM: &str = r#"
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    char buf[64];
    int fd = open("data.bin", O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    struct stat st;
    fstat(fd, &st);
    printf("size=%lld reg=%d\n", (long long)st.st_size, S_ISREG(st.st_mode));
    ssize_t n = read(fd, buf, 5);
    printf("read=%zd %.5s\n", n, buf);
    printf("lseek=%lld\n", (long long)lseek(fd, 10, SEEK_SET));
    n = read(fd, buf, 3);
    printf("after-seek=%.3s\n", buf);
    printf("cur=%lld\n", (long long)lseek(fd, 0, SEEK_CUR));
    n = pread(fd, buf, 4, 20);
    printf("pread=%.4s\n", buf);
    int d = dup(fd);
    n = read(d, buf, 2);
    printf("dup-read=%.2s fileno-ok=%d\n", buf, d > fd);
    close(d);
    close(fd);

    fd = open("new.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    write(fd, "hello ", 6);
    write(fd, "world\n", 6);
    pwrite(fd, "H", 1, 0);
    close(fd);

    FILE *f = fopen("stdio.txt", "w");
    fprintf(f, "fileno-remote=%d\n", fileno(f) > 2);
    fclose(f);
    f = fopen("stdio.txt", "r");
    fgets(buf, sizeof buf, f);
    fclose(f);
    printf("fgets=%s", buf);

    if (stat("sub", &st) == 0) printf("sub-dir=%d\n", S_ISDIR(st.st_mode));
    printf("missing=%d\n", access("nope", F_OK));
    mkdir("made", 0755);
    rename("new.txt", "made/renamed.txt");
    unlink("stdio.txt");

    DIR *dir = opendir("made");
    struct dirent *e; int count = 0;
    while ((e = readdir(dir)) != NULL) if (e->d_name[0] != '.') { printf("entry=%s\n", e->d_name); count++; }
    closedir(dir);

    chdir("made");
    getcwd(buf, sizeof buf);
    printf("cwd-ends=%s\n", strrchr(buf, '/'));
    fd = open("renamed.txt", O_RDONLY);
    n = read(fd, buf, 12);
    printf("renamed=%.12s", buf);
    close(fd);

    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        fd = open("child.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        write(fd, "from child\n", 11);
        close(fd);
        printf("child done\n");
        exit(0);
    }
    waitpid(pid, NULL, 0);
    fd = open("child.txt", O_RDONLY);
    n = read(fd, buf, 11);
    printf("parent sees=%.11s", buf);
    return 0;
}
"#;

#[test]
fn a_c_program_with_raw_calls_stdio_dirs_and_fork() {
    let job = Job::new();
    let src = job.dir.path().join("t.c");
    std::fs::write(&src, C_PROGRAM).unwrap();
    let exe = job.dir.path().join("scratch/t");
    let cc = Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap();
    assert!(cc.success());
    job.put("data.bin", b"abcdefghijKLMNOPQRSTuvwxyz0123456789");
    let (code, err) = job.run(&[exe.to_str().unwrap()], None, "out.txt");
    assert_eq!(code, 0, "stderr: {err}");
    let out = String::from_utf8(job.get("out.txt")).unwrap();
    let want = "size=36 reg=1\nread=5 abcde\nlseek=10\nafter-seek=KLM\ncur=13\npread=uvwx\n\
                dup-read=NO fileno-ok=1\nfgets=fileno-remote=1\nsub-dir=1\nmissing=-1\n\
                entry=renamed.txt\ncwd-ends=/made\nrenamed=Hello world\nchild done\nparent sees=from child\n";
    assert_eq!(out, want);
    assert_eq!(job.get("made/renamed.txt"), b"Hello world\n");
    assert!(!job.root().join("stdio.txt").exists());
}

#[test]
fn python_reads_csv_and_writes_json() {
    let job = Job::new();
    job.put("in.csv", b"name,n\nann,3\nbob,4\n");
    let script = "import csv, json, os\n\
                  rows = list(csv.DictReader(open('in.csv')))\n\
                  json.dump({'rows': rows, 'files': sorted(os.listdir('.'))}, open('out.json', 'w'))\n\
                  print(os.getcwd() == os.environ['ROOST_ROOT'], os.path.exists('out.json'), flush=True)\n\
                  import subprocess\n\
                  r = subprocess.run(['cat', 'in.csv'], capture_output=True)\n\
                  subprocess.run('ls sub; ls -l in.csv | cut -c1-10', shell=True, check=True)\n\
                  print(r.stdout.decode().splitlines()[1], r.returncode)\n\
                  import helper\n\
                  print(helper.X)\n";
    job.put("prog.py", script.as_bytes());
    job.put("helper.py", b"X = 42\n");
    let (code, err) = job.run(&["/usr/bin/python3", "prog.py"], None, "out.txt");
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(
        String::from_utf8(job.get("out.json")).unwrap(),
        r#"{"rows": [{"name": "ann", "n": "3"}, {"name": "bob", "n": "4"}], "files": ["helper.py", "in.csv", "out.txt", "prog.py", "sub"]}"#
    );
    assert_eq!(
        String::from_utf8(job.get("out.txt")).unwrap(),
        "True True\n-rw-r--r--\nann,3 0\n42\n"
    );
    assert!(
        job.root().join("__pycache__").is_dir(),
        "python caches the module's bytecode on the submit host"
    );
}

const C_PROGRAM_2: &str = r#"
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <utime.h>
#include <unistd.h>

int main(void) {
    char *r = realpath("sub/../data.txt", NULL);
    printf("realpath-ok=%d\n", r != NULL && strlen(r) > 9 && strcmp(r + strlen(r) - 9, "/data.txt") == 0);
    printf("realpath-missing=%d\n", realpath("nope.txt", NULL) == NULL);
    struct utimbuf ub = {1000000000, 1000000000};
    struct stat sb;
    printf("utime=%d ", utime("data.txt", &ub));
    printf("mtime=%lld\n", stat("data.txt", &sb) == 0 ? (long long)sb.st_mtime : -1LL);
    int fifo = mkfifo("fifo", 0600);
    printf("mkfifo=%d eperm=%d\n", fifo, errno == EPERM);
    int mfd = open("data.txt", O_RDONLY);
    char *m = mmap(NULL, 5, PROT_READ, MAP_PRIVATE, mfd, 0);
    printf("mmap=%.4s\n", m == MAP_FAILED ? "FAIL" : m);
    close(mfd);
    struct dirent **list;
    int n = scandir(".", &list, NULL, alphasort);
    for (int i = 0; i < n; i++) if (list[i]->d_name[0] != '.') printf("scandir=%s\n", list[i]->d_name);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char *argv[] = {"sh", "-c", "cat data.txt; ./helper.sh arg", NULL};
        char *envp[] = {NULL};
        execve("/bin/sh", argv, envp);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    printf("status=%d\n", WEXITSTATUS(st));
    fflush(stdout);
    if (fork() == 0) {
        char *envp[] = {"A=1", NULL};
        execle("/bin/sh", "sh", "-c", "echo $A; cat data.txt", (char *)NULL, envp);
        _exit(127);
    }
    wait(&st);
    if (fork() == 0) {
        execlp("cat", "cat", "data.txt", "data.txt", (char *)NULL);
        _exit(127);
    }
    wait(&st);
    printf("status=%d\n", WEXITSTATUS(st));
    return 0;
}
"#;

#[test]
fn realpath_scandir_and_exec_with_a_cleared_environment_and_a_remote_script() {
    let job = Job::new();
    let src = job.dir.path().join("t2.c");
    std::fs::write(&src, C_PROGRAM_2).unwrap();
    let exe = job.dir.path().join("scratch/t2");
    let cc = Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap();
    assert!(cc.success());
    job.put("data.txt", b"data\n");
    job.put("helper.sh", b"#!/bin/sh\necho helper $1\n");
    let (code, err) = job.run(&[exe.to_str().unwrap()], None, "out.txt");
    assert_eq!(code, 0, "stderr: {err}");
    let out = String::from_utf8(job.get("out.txt")).unwrap();
    assert_eq!(
        out,
        "realpath-ok=1\nrealpath-missing=1\nutime=0 mtime=1000000000\nmkfifo=-1 eperm=1\nmmap=data\nscandir=data.txt\nscandir=helper.sh\nscandir=out.txt\nscandir=sub\n\
         data\nhelper arg\nstatus=0\n1\ndata\ndata\ndata\nstatus=0\n"
    );
}

/// Every file under `dir` (relative names) with its bytes, `None` for a
/// directory and the target for a symlink.
fn tree(dir: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.push((
                    name,
                    Some(
                        std::fs::read_link(&p)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    ),
                ));
            } else if m.is_dir() {
                out.push((name, None));
                todo.push(p);
            } else {
                out.push((name, Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_coreutils_tour_matches_a_local_run() {
    let script = "set -e\n\
mkdir -p d/e && echo hi > d/e/f.txt && cp -r d d2 && mv d2/e/f.txt d2/g.txt\n\
ln -s g.txt d2/link && readlink d2/link > rl.txt && cat d2/link >> rl.txt\n\
chmod 600 d2/g.txt && ls -l d2/g.txt | cut -c1-10 > perms.txt\n\
find d d2 | sort > find.txt\n\
touch -d 2020-01-01 d/e/f.txt && stat -c %Y d/e/f.txt > mtime.txt\n\
rm -r d\n\
head -c 100 in.txt > head.txt && tail -n 3 in.txt > tail.txt && grep -c a in.txt > grep.txt\n\
sed -i s/a/A/g in.txt\n\
tar cf t.tar in.txt head.txt && tar tf t.tar > tar.txt && rm t.tar\n\
wc in.txt > wc.txt\n\
printf '#!/bin/sh\\necho helper $1\\n' > helper.sh && chmod +x helper.sh && ./helper.sh x > helper.txt\n\
(cd d2 && pwd | sed 's|.*/||' > ../sub.txt)\n\
ls > ls.txt\n\
cat < in.txt | md5sum > md5.txt\n\
echo done\n";
    let input: Vec<u8> = (0..2000u32)
        .flat_map(|i| format!("a{i} b{} c\n", i * 7 % 13).into_bytes())
        .collect();

    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("in.txt"), &input).unwrap();
    std::fs::write(local.path().join("tour.sh"), script).unwrap();
    let out = std::fs::File::create(local.path().join("out.txt")).unwrap();
    let st = Command::new("/bin/sh")
        .arg("tour.sh")
        .current_dir(local.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdout(out)
        .status()
        .unwrap();
    assert!(st.success());

    let job = Job::new();
    std::fs::remove_dir(job.root().join("sub")).unwrap();
    job.put("in.txt", &input);
    job.put("tour.sh", script.as_bytes());
    let (code, err) = job.run(&["/bin/sh", "tour.sh"], None, "out.txt");
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(err, "");
    let (want, got) = (tree(local.path()), tree(&job.root()));
    assert_eq!(
        want.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        got.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for ((n, w), (_, g)) in want.iter().zip(&got) {
        assert!(
            w == g,
            "{n} differs: local {:?}, job {:?}",
            w.as_ref().map(|b| String::from_utf8_lossy(b)),
            g.as_ref().map(|b| String::from_utf8_lossy(b))
        );
    }
    assert_eq!(
        std::fs::read_dir(job.dir.path().join("scratch"))
            .unwrap()
            .count(),
        0,
        "nothing left in the scratch directory"
    );
}
