//! A regular file that some process holds open for writing is never copied
//! away from its writer.
//!
//! The kernel's rename keeps the inode: a writer holding a descriptor
//! (InnoDB's `.ibd` files, a log writer, SQLite) goes on writing into the
//! moved file. A copy cannot follow it: writes made after the copy would go
//! into the deleted source and be lost while rename said 0. So such a file
//! is not moved at all: the program gets the kernel's EXDEV back.
//!
//! How writers are seen: a read lease (`fcntl(F_SETLEASE, F_RDLCK)`,
//! fcntl(2)) is refused with EAGAIN while any process, the caller included,
//! has the file open for writing or mapped shared and writable, and while
//! the kernel itself writes it (a loop device's backing file, a swap file):
//! the kernel's own count of writers, system-wide, about 2 us a file. A
//! lease break would signal the lease holder (SIGIO, whose default action
//! kills), so the lease is never taken by the program: a short-lived child
//! shares the program's memory and descriptor table (`CLONE_VM |
//! CLONE_VFORK | CLONE_FILES`, as posix_spawn does), has every signal but
//! SIGSYS blocked, takes and drops the leases on the descriptors it is
//! given, and exits (`sys::lease_probe`). It
//! raises no SIGCHLD (exit signal 0) and is reaped with `__WCLONE`, so the
//! program's ordinary `wait` never sees it.
//!
//! Where no lease can be had (a caller that neither owns the file nor has
//! `CAP_LEASE`, a filesystem without leases, a child that cannot be made or
//! that the program reaped first), nothing can prove the file has no
//! writer: `/proc` shows neither processes hidden by `hidepid` or another
//! PID namespace nor the kernel's own writers. The move is refused (EXDEV):
//! fail closed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;

use super::error::{Error, Result};

/// The step name of a move refused because of a writer.
pub const OPEN_FOR_WRITING: &str = "open for writing";
/// The step name when writers could not be looked for.
pub const UNCHECKABLE: &str = "open for writing: cannot check (no lease)";

/// Looks for writers, once or in batches (a tree): keeps the probe's
/// stack between batches.
pub struct Probe(Option<super::sys::ProbeStack>);

impl Probe {
    /// A probe; if its stack cannot be had, every check answers "cannot
    /// check" (EXDEV).
    pub fn new() -> Probe {
        Probe(super::sys::ProbeStack::new())
    }

    /// Fails with EXDEV if any of `files` (descriptors open read-only) is
    /// open for writing anywhere, or if that cannot be told.
    pub fn check(&self, files: &[BorrowedFd<'_>]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let Some(stack) = &self.0 else { return Err(Error::new(Errno::XDEV, UNCHECKABLE)) };
        let fds: Vec<i32> = files.iter().map(|fd| fd.as_raw_fd()).collect();
        super::sys::lease_probe(stack, &fds).into_iter().try_for_each(verdict)
    }
}

/// What one answer of the probe means.
fn verdict(answer: Option<i32>) -> Result<()> {
    match answer {
        Some(0) => Ok(()),
        Some(libc::EAGAIN) => Err(Error::new(Errno::XDEV, OPEN_FOR_WRITING)),
        _ => Err(Error::new(Errno::XDEV, UNCHECKABLE)),
    }
}

/// Free descriptors below which none is kept for the probe.
const KEEP_FROM: usize = 256;

/// glibc's `fd_set` holds descriptors below this.
const FD_SETSIZE: usize = 1024;

/// Most descriptors one probe's child is given.
const PROBE_MAX: usize = 1024;

/// The source descriptors of a tree's copied files, kept open from their
/// copy to the probe after the take, so that the probe needs no open and
/// no close of its own: two calls a file instead of four. A kept
/// descriptor names the very inode that was copied, whatever its name is
/// now, and the deletion only ever removes names that still hold a copied
/// inode: probing every kept descriptor probes whatever the deletion may
/// remove. Kept up to a small budget ([`Kept::budget`]); past it every
/// descriptor is closed at once and the probe opens the taken tree's files
/// by name instead. Shared by the threads copying files: each keeps its
/// file's descriptor as soon as the file is copied, or closes it at once
/// past the budget.
#[derive(Debug, Default)]
pub struct Kept {
    fds: Mutex<Vec<OwnedFd>>,
    budget: usize,
    gave_up: AtomicBool,
}

impl Kept {
    /// Keeps up to `budget` descriptors.
    pub fn new(budget: usize) -> Kept {
        Kept { fds: Mutex::new(Vec::new()), budget, gave_up: AtomicBool::new(false) }
    }

    /// How many to keep when `free` descriptors are free and `open` are
    /// open as the copy begins. Kept descriptors take the lowest free numbers, which the
    /// program's other threads would get meanwhile, so they are few: an
    /// eighth of the free ones (the rest stays the program's: a thread near
    /// its limit must not get EMFILE because of a move), and never so many
    /// that the descriptors open, ours included, pass half of FD_SETSIZE
    /// (1,024: a program that gets a descriptor above it and hands it to
    /// `select` is aborted by glibc). None under a small limit, where every
    /// descriptor counts (a process limited to 20 still moves a deep tree).
    pub fn budget(free: usize, open: usize) -> usize {
        let below_select = (FD_SETSIZE / 2).saturating_sub(open);
        if free < KEEP_FROM { 0 } else { (free / 8).min(below_select) }
    }

    /// Keeps the descriptor of a file just copied, or closes it (and every
    /// one kept so far) once the budget is spent: the probe then goes by
    /// name.
    pub fn keep(&self, fd: OwnedFd) {
        if self.gave_up.load(Ordering::Relaxed) {
            return;
        }
        let mut fds = self.fds.lock().unwrap_or_else(|e| e.into_inner());
        if self.gave_up.load(Ordering::Relaxed) {
            return; // another thread gave up meanwhile
        }
        if fds.len() < self.budget {
            fds.push(fd);
        } else {
            self.gave_up.store(true, Ordering::Relaxed);
            *fds = Vec::new();
        }
    }

    /// Probes every copied file through its kept descriptor; `None` if the
    /// budget was spent (then the caller probes by name). Closes them.
    pub fn check(self, probe: &Probe) -> Option<Result<()>> {
        if self.gave_up.into_inner() {
            return None;
        }
        let fds = self.fds.into_inner().unwrap_or_else(|e| e.into_inner());
        Some(fds.chunks(PROBE_MAX).try_for_each(|c| probe.check(&c.iter().map(|fd| fd.as_fd()).collect::<Vec<_>>())))
    }
}

impl Default for Probe {
    fn default() -> Self {
        Probe::new()
    }
}

/// Fails with EXDEV if any of `files` (descriptors open read-only) is open
/// for writing anywhere, or if that cannot be told.
pub fn check(files: &[BorrowedFd<'_>]) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    Probe::new().check(files)
}
