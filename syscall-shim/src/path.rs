//! Path classification: which paths the job reaches on the submit host.
//!
//! An absolute path below the job's root (`ROOST_ROOT`) is remote; below a
//! system directory or the scratch directory it is local; any other
//! absolute path is remote (the shadow refuses it). A relative path is
//! remote when the virtual current directory is.

/// Directories that stay on the execute host.
const LOCAL: &[&[u8]] = &[
    b"/usr", b"/lib", b"/lib32", b"/lib64", b"/libx32", b"/bin", b"/sbin", b"/etc", b"/proc",
    b"/sys", b"/dev", b"/run", b"/tmp", b"/var", b"/nix", b"/opt",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    Local,
    Remote,
}

/// Is `path` equal to `dir` or below it? (`dir` absolute, no trailing `/`
/// except for `/` itself.)
pub fn under(path: &[u8], dir: &[u8]) -> bool {
    let dir = strip_slashes(dir);
    if dir.is_empty() {
        return path.starts_with(b"/");
    }
    path.starts_with(dir) && (path.len() == dir.len() || path[dir.len()] == b'/')
}

fn strip_slashes(mut p: &[u8]) -> &[u8] {
    while p.len() > 1 && p.ends_with(b"/") {
        p = &p[..p.len() - 1];
    }
    if p == b"/" { &[] } else { p }
}

/// Classifies `path` for a job whose root is `root`, whose scratch
/// directory is `scratch`, and whose current directory is remote or not.
pub fn classify(path: &[u8], root: &[u8], scratch: &[u8], cwd_remote: bool) -> Where {
    if path.is_empty() {
        return Where::Local;
    }
    if path[0] != b'/' {
        return if cwd_remote {
            Where::Remote
        } else {
            Where::Local
        };
    }
    if path.iter().all(|&b| b == b'/') {
        // The execute host's root directory itself.
        return Where::Local;
    }
    let in_root = !root.is_empty() && under(path, root);
    let in_scratch = !scratch.is_empty() && under(path, scratch);
    if in_scratch && (!in_root || strip_slashes(scratch).len() > strip_slashes(root).len()) {
        return Where::Local;
    }
    if in_root {
        return Where::Remote;
    }
    if LOCAL.iter().any(|d| under(path, d)) {
        return Where::Local;
    }
    Where::Remote
}

/// The path to send for a remote `path`: absolute paths as they are,
/// relative ones joined to the virtual current directory `cwd`.
pub fn absolute(path: &[u8], cwd: &[u8]) -> Vec<u8> {
    if path.first() == Some(&b'/') || cwd.is_empty() {
        return path.to_vec();
    }
    let mut out = Vec::with_capacity(cwd.len() + 1 + path.len());
    out.extend_from_slice(cwd);
    if !out.ends_with(b"/") {
        out.push(b'/');
    }
    out.extend_from_slice(path);
    out
}

/// `/dev/stdin`, `/dev/stdout`, `/dev/stderr`, `/dev/fd/N`,
/// `/proc/self/fd/N`: the fd number they name.
pub fn fd_alias(path: &[u8]) -> Option<i32> {
    match path {
        b"/dev/stdin" => return Some(0),
        b"/dev/stdout" => return Some(1),
        b"/dev/stderr" => return Some(2),
        _ => {}
    }
    let rest = path
        .strip_prefix(b"/dev/fd/")
        .or_else(|| path.strip_prefix(b"/proc/self/fd/"))?;
    if rest.is_empty() || rest.len() > 9 || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &[u8] = b"/home/ann/job";
    const SCRATCH: &[u8] = b"/var/lib/roost/scratch/7";

    fn c(p: &str, remote_cwd: bool) -> Where {
        classify(p.as_bytes(), ROOT, SCRATCH, remote_cwd)
    }

    #[test]
    fn root_and_outside_paths_are_remote_system_paths_local() {
        assert_eq!(c("/home/ann/job", false), Where::Remote);
        assert_eq!(c("/home/ann/job/in.txt", false), Where::Remote);
        assert_eq!(
            c("/home/ann/jobs/x", false),
            Where::Remote,
            "outside the root is remote too (shadow refuses)"
        );
        assert_eq!(c("/home/ann/.ssh/id_rsa", false), Where::Remote);
        assert_eq!(c("/usr/lib/libc.so.6", true), Where::Local);
        assert_eq!(c("/lib64/ld-linux-x86-64.so.2", true), Where::Local);
        assert_eq!(
            c("/library/x", true),
            Where::Remote,
            "prefix must end at a component"
        );
        assert_eq!(c("/", true), Where::Local);
        assert_eq!(c("//", true), Where::Local);
        assert_eq!(c("/etc/passwd", true), Where::Local);
        assert_eq!(c("/proc/self/maps", true), Where::Local);
        assert_eq!(c("/dev/null", true), Where::Local);
        assert_eq!(c("/tmp/x", true), Where::Local);
        assert_eq!(c("/var/lib/roost/scratch/7/a.out", true), Where::Local);
    }

    #[test]
    fn relative_paths_follow_the_current_directory() {
        assert_eq!(c("in.txt", true), Where::Remote);
        assert_eq!(c("../x", true), Where::Remote);
        assert_eq!(c("in.txt", false), Where::Local);
        assert_eq!(c("", true), Where::Local);
    }

    #[test]
    fn scratch_inside_root_and_root_inside_tmp() {
        // A root under /tmp (tests) is remote; the scratch dir inside it local.
        assert_eq!(
            classify(b"/tmp/t1/root/f", b"/tmp/t1/root", b"/tmp/t1/scratch", true),
            Where::Remote
        );
        assert_eq!(
            classify(
                b"/tmp/t1/scratch/f",
                b"/tmp/t1/root",
                b"/tmp/t1/scratch",
                true
            ),
            Where::Local
        );
        assert_eq!(classify(b"/r/s/f", b"/r", b"/r/s", true), Where::Local);
        assert_eq!(classify(b"/r/t", b"/r/", b"/r/s", true), Where::Remote);
    }

    #[test]
    fn absolute_joins_relative_paths_to_the_cwd() {
        assert_eq!(absolute(b"a/b", b"/home/ann/job"), b"/home/ann/job/a/b");
        assert_eq!(absolute(b"a", b"/"), b"/a");
        assert_eq!(absolute(b"/x/y", b"/home"), b"/x/y");
    }

    #[test]
    fn fd_aliases() {
        assert_eq!(fd_alias(b"/dev/stdout"), Some(1));
        assert_eq!(fd_alias(b"/dev/fd/7"), Some(7));
        assert_eq!(fd_alias(b"/proc/self/fd/12"), Some(12));
        assert_eq!(fd_alias(b"/dev/fd/"), None);
        assert_eq!(fd_alias(b"/dev/fd/1x"), None);
        assert_eq!(fd_alias(b"/dev/null"), None);
    }
}
