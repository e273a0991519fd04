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

use rustix::fs::{AtFlags, FileType, RenameFlags};
use rustix::io::Errno;

use super::durable::Durability;
use super::error::{Error, Result, retry, tidy};
use super::names::{Role, with_fresh};
use super::path::Entry;
use super::report::Report;
use super::seen::{Seen, same_content};
use super::stat::{fstat, lstat};

const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// Up to this size, a lower-layer file is renamed aside all the same: its
/// copy-up costs less than the risk of removing it by name.
const OVERLAY_COPY_UP_MAX: u64 = 1 << 20;

/// The step name when the source changed while it was copied.
pub const SOURCE_CHANGED: &str = "source changed during the move";
/// The step name when another rename took the source first.
pub const TAKEN: &str = "source taken by another rename";

/// Where the source is, once taken from its name.
pub enum Taken {
    /// Renamed aside to this hidden name.
    Aside(CString),
    /// Still at its name: it could not be renamed aside (overlayfs).
    InPlace,
}

/// For a regular file whose timestamps cannot prove it unchanged
/// ([`Seen::racy`]): the open source and a readable descriptor of its
/// copy, to compare their content once the source is taken, and the copy's
/// times, which reading it may change (set again afterwards).
pub type Verify<'a> = Option<(BorrowedFd<'a>, BorrowedFd<'a>, &'a rustix::fs::Timestamps)>;

/// Takes the source name away from the moved object (seen as `seen` when
/// its copy began). Rename is a claim: if the object is no longer at its
/// name, another rename took it first and this move must be withdrawn
/// (ENOENT), or it was replaced (an atomic save), and the move starts over
/// with the newcomer. A regular file that changed since it was copied is
/// put back, and the move starts over too.
pub fn take(src: &Entry, seen: &Seen, verify: Verify<'_>, report: &mut Report) -> Result<Taken> {
    let dir = src.dir.as_fd();
    let is_dir = seen.kind() == FileType::Directory;
    match lstat(dir, &src.name) {
        Ok(now) if !seen.same_inode(&now) => return Err(Error::changed("source replaced during the move")),
        Ok(now) if !is_dir && !seen.unchanged(&now) => return Err(Error::changed(SOURCE_CHANGED)),
        Ok(_) => {}
        Err(Errno::NOENT) => return Err(Error::new(Errno::NOENT, TAKEN)),
        Err(e) => return Err(Error::new(e, "look up source")),
    }
    // On overlayfs a file that may come from the image's lower layer (its
    // handle says it has a lower origin, or cannot say) would be copied up
    // whole to be renamed aside: a big one is checked and removed in place
    // (an atomic save landing on the name in the microseconds between is
    // lost: README, "Known limits"). A file made in the upper layer, or a
    // small one, is renamed aside as anywhere else.
    if !is_dir
        && seen.size() > OVERLAY_COPY_UP_MAX
        && on_overlayfs(dir)
        && super::sys::overlay_upper_only(dir, &src.name) != Some(true)
    {
        same_as_copy(verify)?;
        return Ok(Taken::InPlace);
    }
    let aside = match with_fresh(Role::Source, |n| {
        retry(|| rustix::fs::renameat_with(dir, &*src.name, dir, n, RenameFlags::NOREPLACE))
    }) {
        Ok(((), name)) => name,
        Err(Errno::XDEV) => {
            same_as_copy(verify)?;
            return Ok(Taken::InPlace);
        }
        Err(Errno::NOENT) => return Err(Error::new(Errno::NOENT, TAKEN)),
        // A rename adds a directory entry, an unlink does not: on a full
        // disk, over quota, or where a sandbox allows removing but not
        // creating, the preflight-approved unlink in place still works.
        Err(Errno::NOSPC | Errno::DQUOT | Errno::ACCESS | Errno::PERM | Errno::MLINK) => {
            same_as_copy(verify)?;
            return Ok(Taken::InPlace);
        }
        // No RENAME_NOREPLACE (NFS): a fresh random name is free.
        Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => {
            match with_fresh(Role::Source, |n| match lstat(dir, n) {
                Ok(_) => Err(Errno::EXIST),
                Err(Errno::NOENT) => retry(|| rustix::fs::renameat(dir, &*src.name, dir, n)),
                Err(e) => Err(e),
            }) {
                Ok(((), name)) => name,
                Err(Errno::NOENT) => return Err(Error::new(Errno::NOENT, TAKEN)),
                Err(e) => return Err(Error::new(e, "move source aside")),
            }
        }
        Err(e) => return Err(Error::new(e, "move source aside")),
    };
    // Now no one can reach it by name: judge it once more. Not its ctime:
    // the rename itself changed that.
    let verdict = match lstat(dir, &aside) {
        // A newcomer slipped in between the check and the rename.
        Ok(now) if !seen.same_inode(&now) => Err(Error::changed("source replaced during the move")),
        Ok(now) if !is_dir && !seen.unchanged_but_ctime(&now) => Err(Error::changed(SOURCE_CHANGED)),
        Ok(_) => same_as_copy(verify),
        Err(e) => Err(Error::new(e, "look up source")),
    };
    match verdict {
        Ok(()) => Ok(Taken::Aside(aside)),
        Err(e) => {
            give_back(dir, &aside, &src.name, report);
            Err(e)
        }
    }
}

/// For a racy file, whether the source still holds what was copied.
fn same_as_copy(verify: Verify<'_>) -> Result<()> {
    let Some((src, copy, times)) = verify else { return Ok(()) };
    let size = fstat(src).map(|st| st.stx_size).map_err(|e| Error::new(e, "stat source"))?;
    let copy_size = fstat(copy).map(|st| st.stx_size).map_err(|e| Error::new(e, "stat copy"))?;
    let same = size == copy_size && same_content(src, copy, size)?;
    // Reading the copy may have set its atime (relatime): as copied again.
    retry(|| rustix::fs::futimens(copy, times)).map_err(|e| Error::new(e, "set times"))?;
    if !same {
        return Err(Error::changed(SOURCE_CHANGED));
    }
    Ok(())
}

/// Puts a source set aside back under its name; if that fails (the name
/// was taken meanwhile), the source stays at its hidden name, which the
/// report (and so the log line) names as a leftover.
pub fn give_back(dir: BorrowedFd<'_>, aside: &CStr, name: &CStr, report: &mut Report) {
    if !put_back(dir, aside, name) {
        report.leftover = Some(aside.to_owned());
    }
}

/// Unlinks a taken source and makes that durable. If the unlink fails and
/// the move can still be `undoable`, the source goes back to its name and
/// the error is returned (the caller undoes the install); otherwise the
/// move stands and what remains is named in the report.
pub fn finish(src: &Entry, taken: Taken, durability: Durability, undoable: bool, report: &mut Report) -> Result<()> {
    let dir = src.dir.as_fd();
    let name = match taken {
        Taken::InPlace => src.name.clone(),
        Taken::Aside(name) => name,
    };
    if let Err(e) = retry(|| rustix::fs::unlinkat(dir, &*name, AtFlags::empty())) {
        if undoable && (name == src.name || put_back(dir, &name, &src.name)) {
            return Err(Error::new(e, "remove source"));
        }
        // Neither removable nor restorable (its name was taken meanwhile),
        // or the install cannot be undone: the move stands, and the source
        // stays, named in the log line (and at `.xrename-src-*`, reported
        // by `xrename clean`).
        report.leftover = Some(name);
    }
    // The source is gone: a failed fsync here must not undo the move.
    durability.source_removed(src);
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

/// Whether `dir` is on overlayfs.
pub fn on_overlayfs(dir: BorrowedFd<'_>) -> bool {
    retry(|| rustix::fs::fstatfs(dir)).is_ok_and(|s| s.f_type as u64 == OVERLAYFS_SUPER_MAGIC)
}
