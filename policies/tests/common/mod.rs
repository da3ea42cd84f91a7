//! What the differential tests against HTCondor's own libraries share: a
//! deterministic generator, JSON strings as Python writes them, and a
//! Python that has the `htcondor` package.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A small deterministic generator (xorshift64*), so a failure reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// JSON string encoding as Python's `json.dumps` writes it (ASCII only).
pub fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Python with HTCondor's `classad2` and `htcondor2`: `$ROOST_CLASSAD_PYTHON`,
/// or a virtual environment under the target directory, made (and
/// `pip install htcondor`) on first use.
pub fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ROOST_CLASSAD_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("classad-venv");
    let py = venv.join("bin/python");
    let works = |py: &Path| {
        Command::new(py)
            .args(["-c", "import classad2, htcondor2"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(&py) {
        return Some(py);
    }
    // Made under a name of its own and renamed into place, so that test
    // processes running at once never see (or make) half a venv; the
    // interpreter finds its site-packages relative to its own path.
    let tmp = venv.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&tmp)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(tmp.join("bin/python"))
            .args(["-m", "pip", "install", "-q", "htcondor"])
            .status()
            .is_ok_and(|s| s.success());
    if made && std::fs::rename(&tmp, &venv).is_err() {
        // Another process put its venv there first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    works(&py).then_some(py)
}
