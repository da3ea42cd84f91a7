//! Checkpoint and restart of real programs under the real shim, against a
//! minimal checkpoint socket in the test: the image is taken on signal 36,
//! the process killed, and a fresh process of the same program restarted
//! from the image must finish with exactly the output of a run that was
//! never interrupted (C and Python, and a restart of a restarted image).

use proto::ckpt::{
    ACK_COMMITTED, FdRecord, IMG_KERNEL_TRACKED, ImageHeader, KIND_FULL, KIND_INCREMENT, Region,
};
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn shim() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/libroost_shim.so");
    assert!(
        p.exists(),
        "build the shim first: cargo build -p syscall-shim ({})",
        p.display()
    );
    p
}

fn require(what: &str, ok: bool) {
    assert!(ok, "prerequisite missing: {what}");
}

/// Reads one whole image (or a refusal) from the shim and acknowledges it;
/// fails if `child` dies first or nothing comes within 30 s.
fn receive_image(l: &UnixListener, child: &mut Child, dir: &Path) -> Vec<u8> {
    l.set_nonblocking(true).unwrap();
    let t0 = Instant::now();
    let mut s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let stderr = std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
                if let Ok(Some(st)) = child.try_wait() {
                    panic!("the job ended ({st:?}) instead of sending an image: {stderr}");
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "no image within 30 s: {stderr}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let hsize = std::mem::size_of::<ImageHeader>();
    let mut img = vec![0u8; hsize];
    if let Err(e) = s.read_exact(&mut img[..8]) {
        let _ = child.wait();
        let stderr = std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
        panic!("no image ({e}); the job: {:?}: {stderr}", child.try_wait());
    }
    if img[..8] == proto::ckpt::REFUSED {
        let mut why = String::new();
        let _ = s.read_to_string(&mut why);
        panic!("checkpoint refused: {why}");
    }
    s.read_exact(&mut img[8..]).unwrap();
    // SAFETY: ImageHeader is a plain integer record; the buffer has its size.
    let h: ImageHeader = unsafe { std::ptr::read_unaligned(img.as_ptr().cast()) };
    h.verify(4096, 1 << 16).expect("image header");
    let tables = h.nregions as usize * std::mem::size_of::<Region>()
        + h.nfds as usize * std::mem::size_of::<FdRecord>();
    let start = img.len();
    img.resize(start + tables, 0);
    s.read_exact(&mut img[start..]).unwrap();
    let mut data = 0usize;
    for i in 0..h.nregions as usize {
        let off = hsize + i * std::mem::size_of::<Region>();
        // SAFETY: as above, for one region record inside the tables read.
        let r: Region = unsafe { std::ptr::read_unaligned(img[off..].as_ptr().cast()) };
        data += r.data_len(4096) as usize;
    }
    let start = img.len();
    img.resize(start + data, 0);
    s.read_exact(&mut img[start..]).unwrap();
    s.write_all(&[ACK_COMMITTED]).unwrap();
    img
}

fn spawn(argv: &[&str], dir: &Path, sock: &Path, restore: Option<&[u8]>) -> Child {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..])
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LD_PRELOAD", shim())
        .env("ROOST_CKPT_SOCK", sock)
        .stdin(Stdio::null())
        // A restart gets its fds back from the image.
        .stdout(if restore.is_some() {
            Stdio::null()
        } else {
            std::fs::File::create(dir.join("stdout.txt"))
                .unwrap()
                .into()
        })
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("stderr.txt"))
                .unwrap(),
        );
    let mut pipe = None;
    if let Some(img) = restore {
        let mut fds = [0i32; 2];
        // SAFETY: pipe(2) into a local array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (r, w) = (fds[0], fds[1]);
        c.env("ROOST_RESTORE_FD", "1000");
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                libc::dup2(r, 1000);
                libc::close(w);
                Ok(())
            });
        }
        // SAFETY: `w` is this process's write end; the File owns it from here.
        let f: std::fs::File = unsafe { std::os::fd::FromRawFd::from_raw_fd(w) };
        pipe = Some((f, img.to_vec(), r));
    }
    // SAFETY: personality(2) in the child only.
    unsafe {
        c.pre_exec(|| {
            libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
            // Only the job's own fds (and the image pipe) cross into it.
            libc::syscall(libc::SYS_close_range, 3u32, 999u32, 0u32);
            libc::syscall(libc::SYS_close_range, 1001u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = c.spawn().expect("spawn job");
    if let Some((mut f, img, r)) = pipe {
        // SAFETY: closes this process's copy of the read end.
        unsafe { libc::close(r) };
        std::thread::spawn(move || {
            let _ = f.write_all(&img);
        });
    }
    child
}

/// Runs `argv`, checkpoints it after `after`, kills it, restarts it (again
/// `restarts` times, each from an image of the previous restart), and
/// returns the final contents of `out` (a file in `dir`).
fn migrate(argv: &[&str], dir: &Path, out: &str, after: Duration, restarts: usize) -> Vec<u8> {
    let sock = dir.join("ckpt.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let mut child = spawn(argv, dir, &sock, None);
    let mut image = None;
    for _ in 0..=restarts {
        std::thread::sleep(after);
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, 36) };
        let img = receive_image(&l, &mut child, dir);
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        child = spawn(argv, dir, &sock, Some(&img));
        image = Some(img);
    }
    let t0 = Instant::now();
    let st = child.wait().unwrap();
    let stderr = std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
    assert!(
        st.success(),
        "restarted job failed ({st:?}) after {:?}: {stderr}",
        t0.elapsed()
    );
    assert!(image.is_some());
    std::fs::read(dir.join(out)).unwrap()
}

fn reference(argv: &[&str], dir: &Path, out: &str) -> Vec<u8> {
    let st = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .stdout(std::fs::File::create(dir.join("stdout.txt")).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(dir.join(out)).unwrap()
}

fn ckptloop() -> PathBuf {
    compile("ckptloop")
}

fn compile(name: &str) -> PathBuf {
    require(
        "a C compiler `cc`",
        Command::new("cc").arg("--version").output().is_ok(),
    );
    let dir = tempfile::tempdir().unwrap().keep();
    let out = dir.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/jobs/{name}.c"));
    assert!(
        Command::new("cc")
            .args(["-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    out
}

#[test]
fn c_program_resumes_from_its_image_with_identical_output() {
    let bin = ckptloop();
    let b = bin.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let want = reference(&[b, "32", "30", "out.txt"], dir.path(), "out.txt");
    std::fs::remove_file(dir.path().join("out.txt")).unwrap();
    let got = migrate(
        &[b, "32", "30", "out.txt"],
        dir.path(),
        "out.txt",
        Duration::from_millis(600),
        0,
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

#[test]
fn a_restarted_image_can_be_checkpointed_and_restarted_again() {
    let bin = ckptloop();
    let b = bin.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let want = reference(&[b, "8", "40"], dir.path(), "stdout.txt");
    let got = migrate(
        &[b, "8", "40"],
        dir.path(),
        "stdout.txt",
        Duration::from_millis(500),
        2,
    );
    // Each restart reopens stdout at its offset at the checkpoint: lines
    // printed after an image was taken are printed again over themselves.
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

#[test]
fn python_resumes_from_its_image() {
    require("python3", Path::new("/usr/bin/python3").exists());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("loop.py"),
        "import time, json, hashlib\nacc = 0\ndata = [i*i for i in range(200000)]\nfor step in range(25):\n    acc = (acc * 31 + sum(data[step::7])) % 1000000007\n    h = hashlib.sha256(str(acc).encode()).hexdigest()[:12]\n    print(step, acc, h, json.dumps({'s': step}), flush=True)\n    time.sleep(0.05)\n",
    )
    .unwrap();
    let argv = ["/usr/bin/python3", "loop.py"];
    let want = reference(&argv, dir.path(), "stdout.txt");
    let got = migrate(
        &argv,
        dir.path(),
        "stdout.txt",
        Duration::from_millis(700),
        1,
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

fn header(img: &[u8]) -> ImageHeader {
    ImageHeader::from_bytes(img).expect("an image header")
}

/// Asks for an image with the sigqueue value that welcomes an increment.
fn ask_increment(child: &Child) {
    let v = libc::sigval {
        sival_ptr: std::ptr::without_provenance_mut(1),
    };
    // SAFETY: sigqueue(3) to our own child with a plain value.
    assert_eq!(unsafe { libc::sigqueue(child.id() as i32, 36, v) }, 0);
}

#[test]
fn increments_carry_only_changed_pages_and_restart_as_a_chain() {
    let bin = compile("migrate");
    let b = bin.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input: String = (0..40).map(|i| format!("line {i}\n")).collect();
    std::fs::write(dir.path().join("input.txt"), &input).unwrap();
    // 16 MiB heap; each line rewrites every 100th page.
    let argv = [b, "16", "input.txt", "out.txt", "40", "100"];
    let want = reference(&argv, dir.path(), "out.txt");
    std::fs::remove_file(dir.path().join("out.txt")).unwrap();

    let sock = dir.path().join("ckpt.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let mut child = spawn(&argv, dir.path(), &sock, None);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, 36) };
    let mut chain = vec![receive_image(&l, &mut child, dir.path())];
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(250));
        ask_increment(&child);
        chain.push(receive_image(&l, &mut child, dir.path()));
    }
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();

    let heads: Vec<ImageHeader> = chain.iter().map(|i| header(i)).collect();
    assert_eq!(
        heads.iter().map(|h| h.kind).collect::<Vec<_>>(),
        [KIND_FULL, KIND_INCREMENT, KIND_INCREMENT]
    );
    // This kernel keeps the record of written pages (userfaultfd in
    // asynchronous write-protect mode): increments come from it.
    for h in &heads[1..] {
        assert_eq!(h.flags & IMG_KERNEL_TRACKED, IMG_KERNEL_TRACKED);
    }
    assert_eq!(heads[0].flags & IMG_KERNEL_TRACKED, 0);
    assert_eq!(heads[1].parent_id, heads[0].image_id);
    assert_eq!(heads[2].parent_id, heads[1].image_id);
    // About 6 lines of 1% each changed between images: far below the
    // whole heap.
    for inc in &chain[1..] {
        assert!(
            inc.len() * 4 < chain[0].len(),
            "increment of {} bytes beside a full image of {}",
            inc.len(),
            chain[0].len()
        );
    }
    // A chain whose increment does not follow its parent is refused.
    let mut wrong = chain[0].clone();
    wrong.extend_from_slice(&chain[2]);
    let mut bad = spawn(&argv, dir.path(), &sock, Some(&wrong));
    assert!(!bad.wait().unwrap().success());
    let said = std::fs::read_to_string(dir.path().join("stderr.txt")).unwrap_or_default();
    assert!(said.contains("does not follow its parent"), "{said}");

    let all: Vec<u8> = chain.concat();
    let mut child = spawn(&argv, dir.path(), &sock, Some(&all));
    let st = child.wait().unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("stderr.txt")).unwrap_or_default();
    assert!(st.success(), "restarted job failed ({st:?}): {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(dir.path().join("out.txt")).unwrap()),
        String::from_utf8_lossy(&want)
    );
}
