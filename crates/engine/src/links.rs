//! Other names of a file already moved become hard links, not copies.
//!
//! `mv x y dir/` where x and y are hard links of one file keeps them linked
//! (one inode, two links) across devices: GNU mv remembers, per source
//! inode, the name it created for the first one, and links the second to
//! it. The kernel's rename of each name would keep them linked too. Under
//! the shim every rename is a separate call, so the memory has to outlive
//! the call: a [`Links`] belongs to the caller (one per process for the
//! preload, one per command for `xrename mv`) and is handed to the engine
//! in [`Options`](super::Options).
//!
//! A remembered copy is used only if everything still holds: the source is
//! the same inode, unchanged since it was copied (and its timestamps prove
//! it: not racy, see [`seen`](super::seen)), the copy is still at its name,
//! the same inode, unchanged (its ctime included), and on the destination's
//! filesystem. Otherwise the file is copied as usual.
//!
//! Bounded: at most [`CAPACITY`] sources are remembered (the oldest is
//! forgotten first), each with one directory descriptor (shared between
//! entries of one directory); a source is forgotten once its last name has
//! moved. The memory is never waited for: if another thread holds it (or
//! held it when the process forked), the file is simply copied.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Statx};

use super::error::retry;
use super::install::Temp;
use super::path::Entry;
use super::seen::{Seen, same_content};
use super::stat::{Id, fstat, id, lstat};

/// How many moved multi-link sources are remembered.
pub const CAPACITY: usize = 64;

/// Moved files with other names still to move: source -> its copy.
#[derive(Debug, Default)]
pub struct Links {
    memo: Mutex<Vec<Memo>>,
}

#[derive(Debug)]
struct Memo {
    /// The source as it was copied.
    src: Seen,
    /// The copy: its directory, name, and stat once installed.
    dir: Arc<OwnedFd>,
    dir_id: Id,
    name: CString,
    copy: Statx,
}

impl Links {
    /// An empty memory.
    pub fn new() -> Links {
        Links::default()
    }

    /// For the source seen as `now`, another name of which moved earlier
    /// (its link count has dropped since), a hidden hard link in
    /// `dst`'s directory to the copy made when another of its names moved,
    /// if that copy is still exactly what was made.
    pub(crate) fn reuse<'d>(&self, src: BorrowedFd<'_>, now: &Statx, dst: &'d Entry) -> Option<Temp<'d>> {
        let mut memo = self.memo.try_lock().ok()?;
        let i = memo.iter().position(|m| m.src.same_inode(now))?;
        let m = &memo[i];
        let dst_dev = fstat(dst.dir.as_fd()).ok().map(|st| (st.stx_dev_major, st.stx_dev_minor))?;
        let usable = m.src.unchanged_but_ctime(now)
            && (m.dir_id.0, m.dir_id.1) == dst_dev
            && lstat(m.dir.as_fd(), &m.name).is_ok_and(|st| same_copy(&st, &m.copy))
            // Timestamps that cannot prove the source unchanged since: compare.
            && (!m.src.racy() || same_as(src, m));
        if !usable {
            memo.remove(i);
            return None;
        }
        let (from_dir, from) = (m.dir.clone(), m.name.clone());
        // Made and installed by name: where others may write to the
        // destination directory, in a private directory (issue 11).
        let link = |at: BorrowedFd<'_>, n: &CStr| {
            retry(|| rustix::fs::linkat(from_dir.as_fd(), &*from, at, n, AtFlags::empty()))
        };
        let tmp = Temp::by_name(dst.dir.as_fd(), &dst.name, link).ok()?;
        // The copy's name could have been replaced between the look and the link.
        let linked = *tmp.made()?;
        if id(&linked) != id(&memo[i].copy) {
            return None; // dropping `tmp` removes the link
        }
        memo[i].copy = linked;
        Some(tmp)
    }

    /// After a move of a regular file seen as `src` to `dst`: remember its
    /// copy if the source has other names left, forget it if not.
    pub(crate) fn moved(&self, src: &Seen, dst: &Entry) {
        let Ok(mut memo) = self.memo.try_lock() else { return };
        memo.retain(|m| !m.src.same_id(src));
        if src.nlink() < 2 {
            return;
        }
        let (Ok(copy), Ok(dir_st)) = (lstat(dst.dir.as_fd(), &dst.name), fstat(dst.dir.as_fd())) else { return };
        let dir_id = id(&dir_st);
        let dir = match memo.iter().find(|m| m.dir_id == dir_id) {
            Some(m) => m.dir.clone(),
            None => match rustix::io::fcntl_dupfd_cloexec(dst.dir.as_fd(), 0) {
                Ok(fd) => Arc::new(fd),
                Err(_) => return,
            },
        };
        if memo.len() >= CAPACITY {
            memo.remove(0);
        }
        memo.push(Memo { src: src.clone(), dir, dir_id, name: dst.name.clone(), copy });
    }
}

/// Whether the source `src` holds what the remembered copy holds.
fn same_as(src: BorrowedFd<'_>, m: &Memo) -> bool {
    let Ok(copy) = super::copy::open_source(m.dir.as_fd(), &m.name) else { return false };
    let same = matches!(same_content(src, copy.as_fd(), m.copy.stx_size), Ok(true));
    // Reading the copy may have set its atime (no O_NOATIME for us there).
    let _ = retry(|| rustix::fs::futimens(&copy, &super::meta::timestamps(&m.copy)));
    same
}

/// Whether `now` is still the copy seen as `then`: the same inode, nothing
/// changed (ctime included: a write, chmod or link by anyone else).
fn same_copy(now: &Statx, then: &Statx) -> bool {
    id(now) == id(then)
        && now.stx_size == then.stx_size
        && now.stx_mode == then.stx_mode
        && (now.stx_uid, now.stx_gid) == (then.stx_uid, then.stx_gid)
        && (now.stx_mtime.tv_sec, now.stx_mtime.tv_nsec) == (then.stx_mtime.tv_sec, then.stx_mtime.tv_nsec)
        && (now.stx_ctime.tv_sec, now.stx_ctime.tv_nsec) == (then.stx_ctime.tv_sec, then.stx_ctime.tv_nsec)
}
