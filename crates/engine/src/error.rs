//! Errors that keep the errno as data, with the step that failed.
//!
//! An engine error becomes the program's errno in exactly one place,
//! [`crate::program_errno`].

use core::fmt;

use rustix::io::Errno;

/// A failed step of a move: the errno the caller will see, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    /// The errno returned to the program.
    pub errno: Errno,
    /// What xrename was doing, for the log.
    pub step: &'static str,
    /// Whether the move, undone, is worth another try.
    pub(crate) next: Next,
    /// Whether the kernel's rename makes this step too.
    pub(crate) origin: Origin,
}

/// Whether a step is one the kernel's rename makes (its errno keeps its
/// meaning), or one only a copy needs: writing metadata, sizing the copy,
/// making it durable. A policy refusing one of those (EPERM, EACCES from a
/// seccomp filter, an LSM, a FUSE server) means nothing rename(2) could
/// say: the program gets EXDEV ([`crate::program_errno`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A check or an effect of the kernel's rename as well.
    Rename,
    /// A step of the copy alone: writing, metadata, syncing.
    Copy,
    /// Reading the source's data (its holes included), which the kernel's
    /// rename never does: whatever fails there, the program gets EXDEV.
    Read,
}

/// What the orchestrator does with a failed attempt: an internal verdict,
/// never an errno the program could see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Report the error.
    Fail,
    /// The source changed while it was copied: everything is undone, try
    /// again (a few times; then the kernel's EXDEV).
    Retry,
}

impl Error {
    /// An error at `step`.
    pub fn new(errno: Errno, step: &'static str) -> Error {
        Error { errno, step, next: Next::Fail, origin: Origin::Rename }
    }

    /// An error at `step`, one the kernel's rename never makes.
    pub fn copy_step(errno: Errno, step: &'static str) -> Error {
        Error { errno, step, next: Next::Fail, origin: Origin::Copy }
    }

    /// An error at `step`, reading the source's data.
    pub fn read_step(errno: Errno, step: &'static str) -> Error {
        Error { errno, step, next: Next::Fail, origin: Origin::Read }
    }

    /// The source changed under the move at `step`: undo, then try again.
    /// If it keeps changing the program gets the kernel's EXDEV.
    pub(crate) fn changed(step: &'static str) -> Error {
        Error { errno: Errno::XDEV, step, next: Next::Retry, origin: Origin::Rename }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, std::io::Error::from_raw_os_error(self.errno.raw_os_error()))
    }
}

impl std::error::Error for Error {}

/// The engine's result type.
pub type Result<T> = core::result::Result<T, Error>;

/// Attaches the step to a syscall's error.
pub(crate) trait At<T> {
    /// A step the kernel's rename makes too.
    fn at(self, step: &'static str) -> Result<T>;
    /// A step of the copy alone (see [`Origin`]).
    fn at_copy(self, step: &'static str) -> Result<T>;
    /// Reading the source's data (see [`Origin`]).
    fn at_read(self, step: &'static str) -> Result<T>;
}

impl<T> At<T> for rustix::io::Result<T> {
    fn at(self, step: &'static str) -> Result<T> {
        self.map_err(|errno| Error::new(errno, step))
    }

    fn at_copy(self, step: &'static str) -> Result<T> {
        self.map_err(|errno| Error::copy_step(errno, step))
    }

    fn at_read(self, step: &'static str) -> Result<T> {
        self.map_err(|errno| Error::read_step(errno, step))
    }
}

/// Retries a syscall that was interrupted by a signal handler.
pub(crate) fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// Runs a step of the writer probe, after the install: as [`tidy`], and
/// where the process is out of descriptors (EMFILE, ENFILE: another thread
/// of the program may hold all of them for a moment), waits for one, up to
/// about a second (1, 2, 4, ... 512 ms), rather than undo the move, whose
/// withdrawal needs descriptors too.
pub(crate) fn patient<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    let mut last = tidy(&mut f);
    for wait in (0..10).map(|i| 1u64 << i) {
        if !matches!(last, Err(Errno::MFILE | Errno::NFILE)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(wait));
        last = tidy(&mut f);
    }
    last
}

/// How often a cleanup step is tried: see [`tidy`].
pub(crate) const TIDY_TRIES: usize = 3;

/// Runs a cleanup or rollback step. These have no one to report to, and
/// leaving them undone leaves a trace, so a failure other than ENOENT (the
/// work is done already) is tried again, a few times.
pub(crate) fn tidy<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    let mut last = Err(Errno::IO);
    for _ in 0..TIDY_TRIES {
        last = retry(&mut f);
        if matches!(last, Ok(_) | Err(Errno::NOENT)) {
            break;
        }
    }
    last
}
