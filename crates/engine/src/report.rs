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
