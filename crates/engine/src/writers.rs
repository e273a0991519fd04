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
//! given (`sys::lease_probe`) or on the files it is given by name, which
//! it opens and closes itself (`sys::lease_probe_names`: a tree's, up to
//! 1,024 a child), and exits. It
//! raises no SIGCHLD (exit signal 0) and is reaped with `__WCLONE`, so the
//! program's ordinary `wait` never sees it.
//!
//! Where no lease can be had (a caller that neither owns the file nor has
//! `CAP_LEASE`, a filesystem without leases, a child that cannot be made or
//! that the program reaped first), nothing can prove the file has no
//! writer: `/proc` shows neither processes hidden by `hidepid` or another
//! PID namespace nor the kernel's own writers. The move is refused (EXDEV):
//! fail closed.

use std::os::fd::{AsRawFd, BorrowedFd};

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

    /// Opens each of `names` (C strings) in its directory of `dirs` in the
    /// probe's child and asks each for a read lease there, keeping at most
    /// `hold` open at once: fails with EXDEV if one is open for writing or
    /// cannot be told; else what became of each ([`Probed`]: the child
    /// stops at the first open that fails, and the caller takes it from
    /// there).
    pub(crate) fn check_names(
        &self,
        dirs: &[BorrowedFd<'_>],
        names: &[&std::ffi::CStr],
        hold: usize,
    ) -> Result<Vec<super::sys::Probed>> {
        let Some(stack) = &self.0 else { return Err(Error::new(Errno::XDEV, UNCHECKABLE)) };
        let raw: Vec<i32> = dirs.iter().map(|fd| fd.as_raw_fd()).collect();
        let ptrs: Vec<*const libc::c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let Some(done) = super::sys::lease_probe_names(stack, &raw, &ptrs, hold) else {
            return Err(Error::new(Errno::XDEV, UNCHECKABLE));
        };
        for p in &done {
            if let super::sys::Probed::Lease(answer) = *p {
                verdict(Some(answer))?;
            }
        }
        Ok(done)
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
