//! User names for uids, from `/etc/passwd`.

/// The name `/etc/passwd` gives `uid`, or the number as text.
pub(crate) fn name_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| lookup(&text, uid))
        .unwrap_or_else(|| uid.to_string())
}

fn lookup(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let u: u32 = f.next()?.parse().ok()?;
        (u == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_names_and_falls_back_to_numbers() {
        let p = "root:x:0:0:root:/root:/bin/bash\n# comment\nbad line\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(lookup(p, 0).as_deref(), Some("root"));
        assert_eq!(lookup(p, 1000).as_deref(), Some("alice"));
        assert_eq!(lookup(p, 5), None);
        assert_eq!(name_of(0), "root");
        assert_eq!(name_of(4_000_000_000), "4000000000");
    }
}
