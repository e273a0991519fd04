//! The checks a same-filesystem rename makes after its `EXDEV` test, made
//! here in the kernel's order, so that an emulated rename fails with the
//! errno the kernel would have given.
//!
//! The order follows `do_renameat2`, `vfs_rename`, `may_delete` and
//! `may_create` in fs/namei.c: `.`/`..` (EBUSY), read-only mount (EROFS),
//! missing source (ENOENT), `RENAME_NOREPLACE` (EEXIST), trailing slashes on
//! a non-directory (ENOTDIR), same inode (success, nothing done), then the
//! permission to remove the source and to create or replace the target
//! (EACCES, sticky-bit and immutable/append-only rules: EPERM), then the
//! directory/non-directory mismatch (EISDIR, ENOTDIR).
//!
//! Doing this first is also how xrename refuses, before copying a byte,
//! what it can already see will fail.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Access, AtFlags, FileType, Mode, OFlags, RenameFlags, StatVfsMountFlags, Statx};
use rustix::io::Errno;

use super::error::{At, Error, Result, retry};
use super::path::{Entry, Last};
use super::stat::{file_type, fstat, id, lstat, mount_root, same_inode};

/// What the preflight found.
#[derive(Debug)]
pub enum Verdict {
    /// Source and target are the same inode: rename succeeds and does nothing.
    SameFile,
    /// The move may go ahead.
    Move {
        /// The source as it was seen.
        src: Box<Statx>,
        /// The target, if one exists.
        dst: Option<Box<Statx>>,
    },
}

/// Runs every check the kernel would make, in its order.
pub fn preflight(src: &Entry, dst: &Entry, flags: RenameFlags) -> Result<Verdict> {
    let noreplace = flags.contains(RenameFlags::NOREPLACE);
    if src.last == Last::Special {
        return Err(Error::new(Errno::BUSY, "source is . or .."));
    }
    if dst.last == Last::Special {
        let errno = if noreplace { Errno::EXIST } else { Errno::BUSY };
        return Err(Error::new(errno, "destination is . or .."));
    }
    read_only(src.dir.as_fd())?;
    read_only(dst.dir.as_fd())?;
    let s = lstat(src.dir.as_fd(), &src.name).at("look up source")?;
    let d = match lstat(dst.dir.as_fd(), &dst.name) {
        Ok(d) => Some(d),
        Err(Errno::NOENT) => None,
        Err(e) => return Err(Error::new(e, "look up destination")),
    };
    if noreplace && d.is_some() {
        return Err(Error::new(Errno::EXIST, "destination exists"));
    }
    let src_is_dir = file_type(&s) == FileType::Directory;
    if !src_is_dir && (src.trailing_slash || dst.trailing_slash) {
        return Err(Error::new(Errno::NOTDIR, "trailing slash on a non-directory"));
    }
    if src_is_dir && (is_ancestor(&s, dst.dir.as_fd()) || inside_through_another_mount(src, &s, dst)) {
        return Err(Error::new(Errno::INVAL, "destination inside source"));
    }
    // lock_rename's trap: a target that is an ancestor of the source, for
    // any kind of source.
    if let Some(d) = &d {
        if is_ancestor(d, src.dir.as_fd()) {
            return Err(Error::new(Errno::NOTEMPTY, "destination is an ancestor of source"));
        }
    }
    if let Some(d) = &d {
        if same_inode(&s, d) {
            return Ok(Verdict::SameFile);
        }
    }
    may_delete(src, &s, src_is_dir, "source")?;
    match &d {
        None => {
            // may_create: a removed directory (still open) takes no new entries.
            if fstat(dst.dir.as_fd()).at("stat directory")?.stx_nlink == 0 {
                return Err(Error::new(Errno::NOENT, "destination directory was removed"));
            }
            may_write_dir(dst.dir.as_fd(), "destination")?
        }
        Some(d) => may_delete(dst, d, src_is_dir, "destination")?,
    }
    if src_is_dir {
        // A directory that changes parent gets a new `..`: vfs_rename wants
        // write permission on the directory itself.
        let flags = AtFlags::EACCESS | AtFlags::SYMLINK_NOFOLLOW;
        retry(|| rustix::fs::accessat(src.dir.as_fd(), &*src.name, Access::WRITE_OK, flags))
            .at("permission on source directory itself")?;
    }
    if mount_root(&s) || d.as_ref().is_some_and(mount_root) {
        return Err(Error::new(Errno::BUSY, "mount point"));
    }
    if src_is_dir && d.is_some() && !super::tree::is_empty(dst.dir.as_fd(), &dst.name)? {
        return Err(Error::new(Errno::NOTEMPTY, "destination directory is not empty"));
    }
    Ok(Verdict::Move { src: Box::new(s), dst: d.map(Box::new) })
}

/// One filesystem through two mounts (a bind mount, overlayfs): the
/// destination directory can be inside the source tree with no `..` path
/// between them, so look for it in the tree (directories only), before
/// anything is created there.
fn inside_through_another_mount(src: &Entry, s: &Statx, dst: &Entry) -> bool {
    let Ok(d) = fstat(dst.dir.as_fd()) else { return false };
    if (d.stx_dev_major, d.stx_dev_minor) != (s.stx_dev_major, s.stx_dev_minor) {
        return false;
    }
    // A walk that fails finds nothing; the copy still refuses the
    // destination if it meets it.
    super::tree::contains_dir(src.dir.as_fd(), &src.name, id(&d)).unwrap_or(false)
}

/// Whether the directory `dir` is `ancestor` or lies below it, following
/// `..` up to the root (through mount points, as path lookup does). Uses
/// `O_PATH`, which needs only search permission; if the way up cannot be
/// walked the answer is "no", and the tree walk still catches a destination
/// inside the source when it meets it.
fn is_ancestor(ancestor: &Statx, dir: BorrowedFd<'_>) -> bool {
    let Ok(mut cur) = fstat(dir) else { return false };
    let mut fd: Option<OwnedFd> = None;
    loop {
        if same_inode(&cur, ancestor) {
            return true;
        }
        let here = fd.as_ref().map_or(dir, |f| f.as_fd());
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let Ok(parent) = retry(|| rustix::fs::openat(here, c"..", flags, Mode::empty())) else { return false };
        let Ok(up) = fstat(parent.as_fd()) else { return false };
        if same_inode(&up, &cur) {
            return false; // the root
        }
        cur = up;
        fd = Some(parent);
    }
}

fn read_only(dir: BorrowedFd<'_>) -> Result<()> {
    let vfs = retry(|| rustix::fs::fstatvfs(dir)).at("statvfs")?;
    if vfs.f_flag.contains(StatVfsMountFlags::RDONLY) {
        return Err(Error::new(Errno::ROFS, "read-only mount"));
    }
    Ok(())
}

/// Write and search permission on a directory, with the caller's current
/// effective credentials (`inode_permission(dir, MAY_WRITE | MAY_EXEC)`).
fn may_write_dir(dir: BorrowedFd<'_>, side: &'static str) -> Result<()> {
    let step = if side == "source" { "permission on source directory" } else { "permission on destination directory" };
    retry(|| rustix::fs::accessat(dir, c".", Access::WRITE_OK | Access::EXEC_OK, AtFlags::EACCESS)).at(step)
}

/// `may_delete`: may `victim`, found in `entry`'s directory, be removed or replaced?
fn may_delete(entry: &Entry, victim: &Statx, isdir: bool, side: &'static str) -> Result<()> {
    may_write_dir(entry.dir.as_fd(), side)?;
    let dir = fstat(entry.dir.as_fd()).at("stat directory")?;
    // Entries of an append-only directory can be added, not removed.
    if super::stat::is_append_only(&dir) {
        return Err(Error::new(Errno::PERM, "append-only directory"));
    }
    sticky(&dir, victim)?;
    if super::stat::locked(victim) {
        return Err(Error::new(Errno::PERM, "immutable or append-only"));
    }
    let victim_is_dir = file_type(victim) == FileType::Directory;
    if isdir && !victim_is_dir {
        return Err(Error::new(Errno::NOTDIR, "destination is not a directory"));
    }
    if !isdir && victim_is_dir {
        return Err(Error::new(Errno::ISDIR, "destination is a directory"));
    }
    Ok(())
}

/// The sticky-directory rule (`check_sticky`, fs/namei.c): in a sticky
/// directory only the owner of an entry, the owner of the directory (both
/// compared with the *filesystem* uid), or `CAP_FOWNER` may remove the
/// entry; and the capability counts only over an entry whose owner and
/// group are both mapped in the caller's user namespace
/// (`capable_wrt_inode_uidgid`).
pub fn sticky(dir: &Statx, victim: &Statx) -> Result<()> {
    if u32::from(dir.stx_mode) & libc::S_ISVTX != 0 {
        let me = super::sys::fsuid();
        if victim.stx_uid != me
            && dir.stx_uid != me
            && !(has_fowner()
                && id_mapped(c"/proc/self/uid_map", victim.stx_uid)
                && id_mapped(c"/proc/self/gid_map", victim.stx_gid))
        {
            return Err(Error::new(Errno::PERM, "sticky directory"));
        }
    }
    Ok(())
}

/// Whether `id` (as this namespace sees it) has a mapping in `map`
/// (`/proc/self/uid_map` or `gid_map`). An unmapped owner shows as the
/// overflow id, outside every range; where the map cannot be read (no
/// /proc), the initial namespace is assumed, where every id is mapped.
fn id_mapped(map: &std::ffi::CStr, id: u32) -> bool {
    let Ok(fd) = rustix::fs::open(map, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) else { return true };
    let mut buf = [0u8; 4096];
    let Ok(n) = retry(|| rustix::io::read(&fd, &mut buf)) else { return true };
    String::from_utf8_lossy(&buf[..n]).lines().any(|line| {
        let mut f = line.split_ascii_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
        let (inside, _outside, count) = (f.next().unwrap_or(0), f.next(), f.next().unwrap_or(0));
        (inside..inside + count).contains(&u64::from(id))
    })
}

fn has_fowner() -> bool {
    rustix::thread::capabilities(None)
        .map(|c| c.effective.contains(rustix::thread::CapabilitySet::FOWNER))
        .unwrap_or(false)
}
