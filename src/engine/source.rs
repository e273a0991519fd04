//! Removing the source once its copy is installed.
//!
//! The source name is taken away in one atomic step: renamed aside to a
//! hidden `.xrename-src-*` name in its own directory (`RENAME_NOREPLACE`).
//! Only then is it checked: if what went aside is not the object that was
//! copied, it arrived after the copy was taken (an atomic save, say) and is
//! put back; the move happened first, and the newcomer stays. Checking the
//! name and then unlinking it would delete such a newcomer in between.
//!
//! A regular file that changed since it was copied (size, mtime or ctime) is
//! put back too, and the move is undone and tried again: the copy would
//! otherwise lose the change.
//!
//! Where renaming aside is impossible (a directory from an overlayfs lower
//! layer: the reason we are here) or expensive (a lower-layer file, which
//! overlayfs would first copy up whole), the source is removed in place
//! after the same checks.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, FileType, RenameFlags, Statx};
use rustix::io::Errno;

use super::check::{file_type, lstat, same_inode};
use super::error::{At, Error, Result, retry, tidy};
use super::file::SOURCE_CHANGED;
use super::install::{Role, with_fresh_name};
use super::path::Entry;

const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// Where the source is, once taken from its name.
pub enum Taken {
    /// Renamed aside to this hidden name.
    Aside(CString),
    /// Still at its name: it could not be renamed aside (overlayfs).
    InPlace,
    /// Nothing to remove: the name was removed or replaced meanwhile.
    Gone,
}

/// Takes the source name away from the moved object `moved`, checking that
/// it is that object and, for a regular file, unchanged since its copy.
pub fn take(src: &Entry, moved: &Statx) -> Result<Taken> {
    let dir = src.dir.as_fd();
    match lstat(dir, &src.name) {
        Ok(now) if !same_inode(&now, moved) => return Ok(Taken::Gone),
        Ok(now) if file_changed(&now, moved) => return Err(Error::new(Errno::AGAIN, SOURCE_CHANGED)),
        Ok(_) => {}
        Err(Errno::NOENT) => return Ok(Taken::Gone),
        Err(e) => return Err(Error::new(e, "look up source")),
    }
    let is_dir = file_type(moved) == FileType::Directory;
    if !is_dir && on_overlayfs(dir) {
        return Ok(Taken::InPlace);
    }
    let aside = match with_fresh_name(Role::Source, |n| {
        retry(|| rustix::fs::renameat_with(dir, &*src.name, dir, n, RenameFlags::NOREPLACE))
    }) {
        Ok(((), name)) => name,
        Err(Errno::XDEV) => return Ok(Taken::InPlace),
        Err(Errno::NOENT) => return Ok(Taken::Gone),
        // A rename adds a directory entry, an unlink does not: on a full
        // disk, over quota, or where a sandbox allows removing but not
        // creating, the preflight-approved unlink in place still works.
        Err(Errno::NOSPC | Errno::DQUOT | Errno::ACCESS | Errno::PERM | Errno::MLINK) => return Ok(Taken::InPlace),
        // No RENAME_NOREPLACE (NFS): a fresh random name is free.
        Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => {
            let ((), name) = with_fresh_name(Role::Source, |n| match lstat(dir, n) {
                Ok(_) => Err(Errno::EXIST),
                Err(Errno::NOENT) => retry(|| rustix::fs::renameat(dir, &*src.name, dir, n)),
                Err(e) => Err(e),
            })
            .at("move source aside")?;
            name
        }
        Err(e) => return Err(Error::new(e, "move source aside")),
    };
    match lstat(dir, &aside) {
        // Written to between the check and the rename (by a writer opening
        // it by name): put back, undo, try again. Not ctime: the rename
        // itself changes it.
        Ok(now) if same_inode(&now, moved) && content_changed(&now, moved) => {
            put_back(dir, &aside, &src.name);
            Err(Error::new(Errno::AGAIN, SOURCE_CHANGED))
        }
        Ok(now) if same_inode(&now, moved) => Ok(Taken::Aside(aside)),
        // A newcomer slipped in between the check and the rename: it stays.
        Ok(_) => {
            put_back(dir, &aside, &src.name);
            Ok(Taken::Gone)
        }
        Err(e) => {
            put_back(dir, &aside, &src.name);
            Err(Error::new(e, "look up source"))
        }
    }
}

/// Removes the regular file, symlink or special file `moved` from `src`:
/// taken from its name, then unlinked, then the removal made durable.
pub fn remove(src: &Entry, moved: &Statx, fsync: bool) -> Result<()> {
    let dir = src.dir.as_fd();
    let name = match take(src, moved)? {
        Taken::Gone => return Ok(()),
        Taken::InPlace => src.name.clone(),
        Taken::Aside(name) => name,
    };
    if let Err(e) = retry(|| rustix::fs::unlinkat(dir, &*name, AtFlags::empty())) {
        if name == src.name || put_back(dir, &name, &src.name) {
            return Err(Error::new(e, "remove source"));
        }
        // Neither removable nor restorable (its name was taken meanwhile):
        // the move stands, and the source stays at `.xrename-src-*`, which
        // `xrename clean` reports.
    }
    if fsync && src.syncable {
        // The source is gone: a failed fsync here must not undo the move.
        let _ = retry(|| rustix::fs::fsync(dir));
    }
    Ok(())
}

/// Puts a source set aside back under its name, if that name is free.
/// Returns whether it is back.
pub fn put_back(dir: BorrowedFd<'_>, aside: &CStr, name: &CStr) -> bool {
    if aside == name {
        return true;
    }
    match tidy(|| rustix::fs::renameat_with(dir, aside, dir, name, RenameFlags::NOREPLACE)) {
        Ok(()) => true,
        // No RENAME_NOREPLACE (NFS): rename only onto a free name.
        Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => {
            matches!(lstat(dir, name), Err(Errno::NOENT))
                && tidy(|| rustix::fs::renameat(dir, aside, dir, name)).is_ok()
        }
        Err(_) => false,
    }
}

/// Whether a regular file changed since `then` was taken (size, mtime or
/// ctime): also the copy's own check for a torn copy.
pub(crate) fn file_changed(now: &Statx, then: &Statx) -> bool {
    content_changed(now, then)
        || (file_type(then) == FileType::RegularFile
            && (now.stx_ctime.tv_sec, now.stx_ctime.tv_nsec) != (then.stx_ctime.tv_sec, then.stx_ctime.tv_nsec))
}

/// Whether a regular file's data changed since `then` (size or mtime).
fn content_changed(now: &Statx, then: &Statx) -> bool {
    file_type(then) == FileType::RegularFile
        && (now.stx_size != then.stx_size
            || (now.stx_mtime.tv_sec, now.stx_mtime.tv_nsec) != (then.stx_mtime.tv_sec, then.stx_mtime.tv_nsec))
}

fn on_overlayfs(dir: BorrowedFd<'_>) -> bool {
    retry(|| rustix::fs::fstatfs(dir)).is_ok_and(|s| s.f_type as u64 == OVERLAYFS_SUPER_MAGIC)
}
