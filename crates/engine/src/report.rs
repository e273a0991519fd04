//! What a move was asked to do and what it did, for the log and the
//! command's summary.

use rustix::fs::FileType;

/// What a move did, filled in as it goes (so a failed move reports too).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// The source's type, once known.
    pub kind: Option<FileType>,
    /// Bytes of data copied.
    pub bytes: u64,
    /// Objects created at the destination.
    pub files: u64,
    /// A name in the source's directory that still holds some of the
    /// source after the move: entries kept because they changed during
    /// the move (under the source's own name), or an old source that could
    /// not be deleted or put back (`.xrename-src-*`).
    pub leftover: Option<std::ffi::CString>,
}

/// Where a move counts what it has done so far, for a display elsewhere
/// (another thread, or another process through shared memory).
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// `n` more bytes of data copied.
    fn bytes(&self, n: u64);
    /// One more object (file, directory, link, node) created.
    fn object(&self) {}
}

/// Bytes only.
impl Progress for std::sync::atomic::AtomicU64 {
    fn bytes(&self, n: u64) {
        self.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Which function the program called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `rename(3)`
    Rename,
    /// `renameat(2)`
    Renameat,
    /// `renameat2(2)`
    Renameat2,
}

impl Op {
    /// The function's name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Rename => "rename",
            Op::Renameat => "renameat",
            Op::Renameat2 => "renameat2",
        }
    }
}
