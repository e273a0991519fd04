//! Durability: every fsync, syncfs and early writeback of a move is
//! decided here, and nowhere else.
//!
//! The order a move needs (ext4's `auto_da_alloc` is not a guarantee; see
//! "Durability and crashes" in README):
//! 1. the copy's data and metadata are on disk before any name points at
//!    it: `fsync` of a file ([`Durability::file`]), one `syncfs` of the
//!    destination filesystem for a whole tree ([`Durability::tree`]);
//! 2. the new name is on disk before the source is removed: `fsync` of the
//!    destination directory, or `syncfs` through the new object where the
//!    directory cannot be opened for reading ([`Durability::placement`]);
//! 3. the source's removal is flushed last, best effort: the move has
//!    happened, and a crash before it leaves two complete copies, never
//!    none ([`Durability::source_removed`]).
//!
//! A big file's writeback is started chunk by chunk while it is copied
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts writing without
//! waiting, and leaves the pages cached, unlike `fadvise(DONTNEED)`), and
//! the copy waits for the chunk [`WINDOW`] bytes behind it to be written:
//! at most that much data is dirty at any time, the disk writes while the
//! copy reads, and the final fsync has little left to do.
//!
//! With `XRENAME_FSYNC=0` none of this happens: faster, and unsafe on a crash.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use rustix::io::Errno;

use super::error::{At, Error, Result, retry};
use super::path::Entry;

/// From this size on, a copy's writeback starts while it is copied.
pub const EARLY_WRITEBACK: u64 = 16 << 20;

/// The steps of a copy written back early.
pub const WRITEBACK_CHUNK: u64 = 8 << 20;

/// Most data of one copy written back early that may still be dirty.
pub const WINDOW: u64 = 64 << 20;

/// The background flush of a tree's copy waits this long between calls.
pub const FLUSH_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether, and how, a move is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    on: bool,
}

/// How a new name is made durable, decided before it is placed.
#[derive(Debug)]
pub enum Placement {
    /// Not at all (`XRENAME_FSYNC=0`, or nothing to sync through).
    No,
    /// `fsync` of the destination directory.
    Dir,
    /// The directory cannot be opened for reading, so cannot be fsynced:
    /// `syncfs` of its filesystem through the new object's descriptor.
    Filesystem(OwnedFd),
}

impl Durability {
    /// Durable moves (`true`), or none at all.
    pub fn new(on: bool) -> Durability {
        Durability { on }
    }

    /// Whether anything is synced at all.
    pub fn is_on(self) -> bool {
        self.on
    }

    /// Whether a copy of `size` bytes has its writeback started as it goes.
    pub fn early_writeback(self, size: u64) -> bool {
        self.on && size >= EARLY_WRITEBACK
    }

    /// Starts writing `len` bytes of `fd` at `off` to disk, without waiting
    /// (advice: a refusal changes nothing).
    pub fn start_writeback(self, fd: BorrowedFd<'_>, off: u64, len: u64) {
        if self.on {
            let _ = super::sys::sync_file_range_write(fd, off, len);
        }
    }

    /// Waits until `len` bytes of `fd` at `off` (written back early) are on
    /// disk, so that dirty data stays within [`WINDOW`]. Not advice: the
    /// wait reports a writeback error of the file (EIO, ENOSPC) and marks
    /// it seen for this open file, so the final `fsync` on the same
    /// descriptor would not report it again: the error fails the copy here
    /// (as the fsync's would). Only a filesystem that cannot do it
    /// (EINVAL, ESPIPE, ENOSYS, EOPNOTSUPP) is passed over.
    pub fn wait_writeback(self, fd: BorrowedFd<'_>, off: u64, len: u64) -> Result<()> {
        if !self.on {
            return Ok(());
        }
        match retry(|| super::sys::sync_file_range_wait(fd, off, len)) {
            Ok(()) | Err(Errno::INVAL | Errno::SPIPE | Errno::NOSYS | Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(Error::copy_step(e, "write back")),
        }
    }

    /// A copied file's data and metadata, before it gets a name.
    pub fn file(self, fd: BorrowedFd<'_>) -> Result<()> {
        if self.on {
            retry(|| rustix::fs::fsync(fd)).at_copy("fsync temp file")?;
        }
        Ok(())
    }

    /// While a tree is copied: writes back what is dirty on the filesystem
    /// of `fd`, every [`FLUSH_PAUSE`] until `stop` (which wakes it), so that
    /// the tree's one barrier ([`Durability::tree`]) finds most of it on
    /// disk already. Paced, so that a filesystem with nothing to write
    /// (tmpfs, some FUSE) is not asked in a loop, and the journal commits
    /// each call forces stay few. An error is kept in `failed` (the
    /// barrier might not report it again) and ends the loop.
    pub fn flush_until(self, fd: BorrowedFd<'_>, stop: &AtomicBool, failed: &AtomicI32) {
        while self.on && !stop.load(Ordering::Relaxed) {
            if let Err(e) = retry(|| rustix::fs::syncfs(fd)) {
                failed.store(e.raw_os_error(), Ordering::Relaxed);
                return;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::park_timeout(FLUSH_PAUSE);
        }
    }

    /// A copied tree, before it gets a name: one barrier for the whole
    /// filesystem instead of one fsync per file.
    pub fn tree(self, fd: BorrowedFd<'_>) -> Result<()> {
        if self.on {
            retry(|| rustix::fs::syncfs(fd)).at_copy("syncfs destination")?;
        }
        Ok(())
    }

    /// How a new name in `dst`'s directory will be made durable; `object`
    /// is a descriptor of what is placed, if there is one.
    pub fn placement(self, dst: &Entry, object: Option<BorrowedFd<'_>>) -> Result<Placement> {
        Ok(match (self.on, dst.syncable, object) {
            (false, _, _) | (true, false, None) => Placement::No,
            (true, true, _) => Placement::Dir,
            (true, false, Some(fd)) => Placement::Filesystem(rustix::io::fcntl_dupfd_cloexec(fd, 0).at("dup")?),
        })
    }

    /// Makes a placement (or its undoing) in `dir` durable.
    pub fn placed(placement: &Placement, dir: BorrowedFd<'_>) -> Result<()> {
        match placement {
            Placement::No => Ok(()),
            Placement::Dir => retry(|| rustix::fs::fsync(dir)).at_copy("sync destination"),
            Placement::Filesystem(fd) => retry(|| rustix::fs::syncfs(fd.as_fd())).at_copy("sync destination"),
        }
    }

    /// The source's directory once the source is gone (or before a tree's
    /// entry-by-entry deletion): best effort, the move has happened.
    pub fn source_removed(self, src: &Entry) {
        if self.on && src.syncable {
            let _ = retry(|| rustix::fs::fsync(src.dir.as_fd()));
        }
    }
}
