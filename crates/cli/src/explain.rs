//! `xrename explain SRC DST`: would `rename(SRC, DST)` fail with EXDEV, and why?
//!
//! The kernel compares the mounts of the two parent directories
//! (`do_renameat2` in fs/namei.c): different mounts give EXDEV, even two
//! bind mounts of one filesystem. Then filesystems refuse some renames on
//! one mount with EXDEV themselves: btrfs between subvolumes; XFS, ext4
//! and f2fs into a project-inherit directory of another project (project
//! quotas); ext4, f2fs and ubifs into an encrypted directory (fscrypt) of
//! another policy; overlayfs for a directory that has a lower layer,
//! without `redirect_dir=on`. This reads `/proc/self/mountinfo`, `statx`
//! (mount id, btrfs subvolume id), the project and encryption ioctls and
//! overlayfs's opaque xattrs, changing nothing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, StatxFlags};

use crate::fail;
use crate::mountinfo::{self, Mount};
use crate::run::human;

pub fn main(m: &clap::ArgMatches) -> i32 {
    let src: &OsString = m.get_one("SRC").expect("required");
    let dst: &OsString = m.get_one("DST").expect("required");
    match explain(Path::new(src), Path::new(dst)) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => fail(e),
    }
}

struct Side {
    parent: PathBuf,
    mount: Mount,
    dev: (u32, u32),
    /// btrfs subvolume id (0 where statx does not give it) and device.
    subvol: (u64, (u32, u32)),
}

fn side(path: &Path) -> Result<Side, String> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    const STATX_SUBVOL: u32 = 0x8000;
    let want = StatxFlags::BASIC_STATS | StatxFlags::MNT_ID | StatxFlags::from_bits_retain(STATX_SUBVOL);
    let st = rustix::fs::statx(rustix::fs::CWD, &parent, AtFlags::empty(), want)
        .map_err(|e| format!("{}: {e}", parent.display()))?;
    let subvol = if st.stx_mask & STATX_SUBVOL != 0 { st.stx_subvol } else { 0 };
    if FileType::from_raw_mode(st.stx_mode.into()) != FileType::Directory {
        return Err(format!("{}: Not a directory (rename would fail with this, not EXDEV)", parent.display()));
    }
    let mounts = mountinfo::read().map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mount = mounts
        .into_iter()
        .find(|m| m.id == st.stx_mnt_id)
        .ok_or_else(|| format!("{}: mount {} is not in /proc/self/mountinfo", parent.display(), st.stx_mnt_id))?;
    let dev = (st.stx_dev_major, st.stx_dev_minor);
    Ok(Side { parent, mount, dev, subvol: (subvol, dev) })
}

fn explain(src: &Path, dst: &Path) -> Result<String, String> {
    let st = rustix::fs::statx(rustix::fs::CWD, src, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS)
        .map_err(|e| format!("{}: {e} (rename would fail with this, not EXDEV)", src.display()))?;
    let kind = FileType::from_raw_mode(st.stx_mode.into());
    let mount_root = st.stx_attributes_mask.contains(rustix::fs::StatxAttributes::MOUNT_ROOT)
        && st.stx_attributes.contains(rustix::fs::StatxAttributes::MOUNT_ROOT);
    if mount_root {
        return Err(format!("{}: a mount point: rename would fail with EBUSY, not EXDEV", src.display()));
    }
    let mut out = String::new();
    let mut dst = dst.to_path_buf();
    if dst.is_dir() && !same(src, &dst) {
        if let Some(name) = src.file_name() {
            out.push_str(&format!("{} is a directory: explaining a move into it, as mv does.\n", dst.display()));
            dst = dst.join(name);
        }
    }
    let (s, d) = (side(src)?, side(&dst)?);
    out.push_str(&format!("source:      {} ({})\n", src.display(), describe_kind(kind)));
    out.push_str(&describe_mount(&s));
    out.push_str(&format!("destination: {}\n", dst.display()));
    out.push_str(&describe_mount(&d));

    let mut exdev = true;
    let verdict = if s.mount.id != d.mount.id {
        if s.dev == d.dev {
            format!(
                "EXDEV: two mounts of one filesystem ({} {}): a bind mount. The kernel refuses rename between \
                 mounts, even of the same filesystem.",
                s.mount.fstype, s.mount.dev
            )
        } else {
            format!("EXDEV: different filesystems ({} and {}).", s.mount.fstype, d.mount.fstype)
        }
    } else if let Some(why) = btrfs_subvolumes(&s, &d, src)
        .or_else(|| project_quota(src, kind, &d))
        .or_else(|| fscrypt(src, kind, &d))
        .or_else(|| overlay_lower_dir(&s.mount, src, kind))
    {
        why
    } else {
        exdev = false;
        "no EXDEV: both sides are on one mount, so rename(2) works without xrename (unless a Landlock sandbox \
         without the REFER right answers EXDEV)."
            .to_owned()
    };
    out.push_str(&format!("verdict:     {verdict}\n"));
    if !exdev {
        out.push_str("xrename:     nothing to do: the kernel renames it.\n");
        return Ok(out);
    }
    let (files, bytes) = count(src, kind);
    out.push_str(&format!(
        "xrename:     would copy {files} object(s), {} of data, into a hidden temp beside the destination, \
         install it atomically, then remove the source.\n",
        human(bytes)
    ));
    out.push_str(&format!("keeps:       {}\n", keeps(&d.mount)));
    Ok(out)
}

fn same(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

fn describe_kind(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "FIFO",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Socket => "socket",
        _ => "unknown type",
    }
}

fn describe_mount(s: &Side) -> String {
    let m = &s.mount;
    let bind =
        if m.root != "/" { format!(", showing {} of that filesystem (a bind mount)", m.root) } else { String::new() };
    format!(
        "             in {}: mount {} at {} ({} from {}, device {}{bind})\n",
        s.parent.display(),
        m.id,
        m.point,
        m.fstype,
        m.source,
        m.dev
    )
}

/// On overlayfs, a directory that has a lower layer (merged, or lower
/// only) cannot be renamed unless `redirect_dir=on`. One that exists only
/// in the upper layer (created there, or made opaque, or below an opaque
/// directory) renames like any other.
fn overlay_lower_dir(m: &Mount, src: &Path, kind: FileType) -> Option<String> {
    if m.fstype != "overlay" || kind != FileType::Directory {
        return None;
    }
    let redirect = mountinfo::option(&m.super_opts, "redirect_dir").unwrap_or_else(|| "off (the usual default)".into());
    if redirect == "on" {
        return None;
    }
    let abs = src.canonicalize().ok()?;
    // Inside the filesystem: the mount's root (a bind mount of a subtree
    // shows that directory), then the path below the mount point.
    let rel = Path::new(m.root.trim_start_matches('/')).join(abs.strip_prefix(&m.point).ok()?);
    let lowers: Vec<String> = ["lowerdir", "lowerdir+"]
        .iter()
        .flat_map(|k| mountinfo::options(&m.super_opts, k))
        .flat_map(|v| mountinfo::overlay_layers(&v))
        .collect();
    if let Some(upper) = mountinfo::option(&m.super_opts, "upperdir") {
        let user_xattrs = m.super_opts.split(',').any(|o| o == "userxattr");
        if !upper_lets_lower_show(Path::new(&upper), &rel, user_xattrs) {
            return None;
        }
    }
    let layer = lowers.iter().find(|l| Path::new(l).join(&rel).is_dir())?;
    Some(format!(
        "EXDEV: {} is a directory of the overlayfs lower layer {layer}, and redirect_dir is {redirect}: \
         overlayfs cannot rename it (the Docker case).",
        src.display()
    ))
}

/// Whether lower layers show through the upper layer at `rel`: not if
/// the upper layer has an opaque directory there or above it, or anything
/// that is not a directory (a whiteout, a file) on the way.
fn upper_lets_lower_show(upper: &Path, rel: &Path, user_xattrs: bool) -> bool {
    let opaque_name = if user_xattrs { "user.overlay.opaque" } else { "trusted.overlay.opaque" };
    let mut cur = upper.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Err(_) => return true, // nothing above here in the upper layer
            Ok(m) if !m.is_dir() => return false,
            Ok(_) => {
                let mut v = [0u8; 4];
                if rustix::fs::lgetxattr(&cur, opaque_name, &mut v[..]).is_ok_and(|n| v[..n] == *b"y") {
                    return false;
                }
            }
        }
    }
    true
}

/// btrfs: a rename between directories of two subvolumes on one mount is
/// EXDEV (a subvolume itself may move).
fn btrfs_subvolumes(s: &Side, d: &Side, src: &Path) -> Option<String> {
    if s.mount.fstype != "btrfs" || s.subvol == d.subvol {
        return None;
    }
    let st = rustix::fs::statx(rustix::fs::CWD, src, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::INO).ok()?;
    if st.stx_ino == 256 {
        return None; // the root of a subvolume: moving it is allowed
    }
    let name = |v: &(u64, (u32, u32))| {
        if v.0 != 0 { format!("subvolume {}", v.0) } else { format!("device {}:{}", v.1.0, v.1.1) }
    };
    Some(format!(
        "EXDEV: two btrfs subvolumes on one mount ({} and {}): btrfs renames only within a subvolume.",
        name(&s.subvol),
        name(&d.subvol)
    ))
}

/// XFS, ext4, f2fs: a destination directory with the project-inherit flag
/// takes only objects of its own project (project quotas).
fn project_quota(src: &Path, kind: FileType, d: &Side) -> Option<String> {
    let dir = open_dir_or_file(&d.parent, FileType::Directory)?;
    let (flags, dst_proj) = crate::ptrace::fs_xattr(std::os::fd::AsFd::as_fd(&dir)).ok()?;
    const FS_XFLAG_PROJINHERIT: u32 = 0x200;
    if flags & FS_XFLAG_PROJINHERIT == 0 {
        return None;
    }
    let obj = open_object(src, kind)?;
    let (_, src_proj) = crate::ptrace::fs_xattr(std::os::fd::AsFd::as_fd(&obj)).ok()?;
    (src_proj != dst_proj).then(|| {
        format!(
            "EXDEV: {} belongs to project quota {dst_proj} (project-inherit) and the source to project {src_proj}: \
             {} moves only objects of its own project into it.",
            d.parent.display(),
            d.mount.fstype
        )
    })
}

/// fscrypt (ext4, f2fs, ubifs): an encrypted destination directory takes
/// only objects under its own encryption policy.
fn fscrypt(src: &Path, kind: FileType, d: &Side) -> Option<String> {
    let dir = open_dir_or_file(&d.parent, FileType::Directory)?;
    let dst_policy = crate::ptrace::encryption_policy(std::os::fd::AsFd::as_fd(&dir)).ok()??;
    let obj = open_object(src, kind)?;
    let src_policy = crate::ptrace::encryption_policy(std::os::fd::AsFd::as_fd(&obj)).ok()?;
    (src_policy.as_ref() != Some(&dst_policy)).then(|| {
        format!(
            "EXDEV: {} is encrypted (fscrypt) and the source is {}: an encrypted directory takes only objects \
             under its own encryption policy.",
            d.parent.display(),
            if src_policy.is_some() { "under another policy" } else { "not encrypted" }
        )
    })
}

/// Opens a directory, or a file already known to be a regular file or a
/// directory (never a FIFO or a device, whose open has effects).
fn open_dir_or_file(p: &Path, kind: FileType) -> Option<std::os::fd::OwnedFd> {
    use rustix::fs::OFlags;
    let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    match kind {
        FileType::Directory => flags |= OFlags::DIRECTORY,
        FileType::RegularFile => {}
        _ => return None,
    }
    let fd = rustix::fs::open(p, flags, rustix::fs::Mode::empty()).ok()?;
    // Swapped meanwhile for something else: not judged.
    let st = rustix::fs::fstat(&fd).ok()?;
    (FileType::from_raw_mode(st.st_mode) == kind).then_some(fd)
}

/// The source, opened for its ioctls if it is a file or a directory; any
/// other object (a symlink, a device that opening could disturb) is judged
/// by its parent directory, whose project and policy it was created with.
fn open_object(src: &Path, kind: FileType) -> Option<std::os::fd::OwnedFd> {
    match kind {
        FileType::RegularFile | FileType::Directory => open_dir_or_file(src, kind),
        _ => open_dir_or_file(
            src.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
            FileType::Directory,
        ),
    }
}

/// Objects and bytes of data a move would copy.
fn count(src: &Path, kind: FileType) -> (u64, u64) {
    if kind != FileType::Directory {
        let bytes =
            if kind == FileType::RegularFile { std::fs::symlink_metadata(src).map_or(0, |m| m.len()) } else { 0 };
        return (1, bytes);
    }
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        files += 1;
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) => {
                    files += 1;
                    if t.is_file() {
                        bytes += e.metadata().map_or(0, |m| m.len());
                    }
                }
                Err(_) => {}
            }
        }
    }
    (files, bytes)
}

/// What a filesystem of this type keeps, from what its type supports.
fn keeps(m: &Mount) -> String {
    let t = m.fstype.as_str();
    let base = match t {
        "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" | "f2fs" | "zfs" | "bcachefs" | "jfs" | "reiserfs" | "tmpfs" => {
            let acl = if m.super_opts.split(',').any(|o| o == "noacl") { "no ACLs (mounted noacl)" } else { "ACLs" };
            format!("{t} keeps owner, mode, nanosecond times, extended attributes, {acl}, holes")
        }
        "overlay" => "overlay keeps what its upper layer keeps (usually owner, mode, times, xattrs, ACLs)".to_owned(),
        "nfs" | "nfs4" => {
            "nfs keeps owner and mode as the server maps them; xattrs only with NFS 4.2; no POSIX ACLs".to_owned()
        }
        "vfat" | "msdos" | "exfat" | "ntfs" | "ntfs3" | "fuseblk" => {
            format!("{t} keeps no owner, no Unix mode, no xattrs, no ACLs: mv would warn, xrename copies what it can")
        }
        _ => {
            format!("{t}: unknown; xrename copies what the filesystem accepts and skips unsupported xattrs as mv does")
        }
    };
    if m.opts.split(',').any(|o| o == "ro") {
        format!("{base} (but the mount is READ-ONLY: the move would fail with EROFS)")
    } else {
        base
    }
}
