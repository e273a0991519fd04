//! `/proc/self/mountinfo`, as proc(5) describes it.

/// One mount.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Mount id (statx's `stx_mnt_id`).
    pub id: u64,
    /// Device `major:minor` of the filesystem.
    pub dev: String,
    /// The directory of the filesystem that is mounted here (`/` unless a bind mount of a subtree).
    pub root: String,
    /// Where it is mounted.
    pub point: String,
    /// Per-mount options (`rw`, `ro`, ...).
    pub opts: String,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source (device, `tmpfs`, `overlay`, ...).
    pub source: String,
    /// Per-filesystem options (for overlayfs: `lowerdir=`, `upperdir=`, ...).
    pub super_opts: String,
}

/// Reads this process's mount table.
pub fn read() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Parses the text of a mountinfo file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (head, tail) = line.split_once(" - ")?;
    let f: Vec<&str> = head.split(' ').collect();
    let t: Vec<&str> = tail.splitn(3, ' ').collect();
    Some(Mount {
        id: f.first()?.parse().ok()?,
        dev: f.get(2)?.to_string(),
        root: unescape(f.get(3)?),
        point: unescape(f.get(4)?),
        opts: f.get(5)?.to_string(),
        fstype: t.first()?.to_string(),
        source: unescape(t.get(1)?),
        super_opts: t.get(2).map_or(String::new(), |s| s.to_string()),
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `key=` in a comma-separated option list, octal escapes
/// undone (a comma inside a value is shown as `\054`, so splitting at
/// commas first is right).
pub fn option(opts: &str, key: &str) -> Option<String> {
    options(opts, key).into_iter().next()
}

/// Every value of `key=` (overlayfs may repeat `lowerdir+=`), unescaped.
pub fn options(opts: &str, key: &str) -> Vec<String> {
    opts.split(',').filter_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('='))).map(unescape).collect()
}

/// The layers of an overlayfs `lowerdir` value: separated by `:`, with
/// `\:`, `\,` and `\\` standing for the character itself.
pub fn overlay_layers(value: &str) -> Vec<String> {
    let mut layers = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => layers.last_mut().expect("one").extend(chars.next()),
            ':' => layers.push(String::new()),
            c => layers.last_mut().expect("one").push(c),
        }
    }
    layers.retain(|l| !l.is_empty());
    layers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_bind_mount_with_an_escaped_space() {
        let m = parse("36 35 98:0 /mnt\\040dir /srv/a\\040b rw,noatime master:1 - ext4 /dev/root rw,errors=continue\n");
        assert_eq!(m.len(), 1);
        let m = &m[0];
        assert_eq!((m.id, m.dev.as_str(), m.root.as_str(), m.point.as_str()), (36, "98:0", "/mnt dir", "/srv/a b"));
        assert_eq!((m.fstype.as_str(), m.source.as_str()), ("ext4", "/dev/root"));
        assert_eq!(m.super_opts, "rw,errors=continue");
    }

    #[test]
    fn overlay_options() {
        let m = &parse("50 1 0:40 / /merged rw - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w\n")[0];
        assert_eq!(option(&m.super_opts, "lowerdir").as_deref(), Some("/l1:/l2"));
        assert_eq!(overlay_layers("/l1:/l2"), ["/l1", "/l2"]);
        assert_eq!(option(&m.super_opts, "redirect_dir"), None);
    }

    #[test]
    fn overlay_options_with_escaped_characters() {
        // As the kernel shows `lowerdir=/tmp/low er\,x:/a\:b`.
        let line =
            "71 46 0:40 / /m rw - overlay overlay rw,lowerdir=/tmp/low\\040er\\134\\054x:/a\\134:b,upperdir=/u\n";
        let m = &parse(line)[0];
        let lower = option(&m.super_opts, "lowerdir").expect("lowerdir");
        assert_eq!(lower, "/tmp/low er\\,x:/a\\:b");
        assert_eq!(overlay_layers(&lower), ["/tmp/low er,x", "/a:b"]);
        assert_eq!(option(&m.super_opts, "upperdir").as_deref(), Some("/u"));
    }
}
