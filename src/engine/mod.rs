//! The cross-device move: plain Rust on file descriptors.
//!
//! [`rename`] is called after the kernel answered `EXDEV`. It opens the two
//! parent directories once and works relative to them from then on
//! ([`path`]), makes the checks a same-filesystem rename would make
//! ([`check`]), then moves the object by type. Every syscall is a raw one
//! through rustix, so nothing here can land in xrename's own hooks.
//!
//! Types handled so far: regular files ([`file`]). Other types give the
//! kernel's `EXDEV` back unchanged.

pub mod check;
pub mod copy;
mod error;
pub mod file;
pub mod install;
pub mod meta;
pub mod path;

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, FileType, RenameFlags, Statx};
use rustix::io::Errno;

use error::{At, retry};
pub use error::{Error, Result};
use path::Entry;

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

/// A rename the kernel refused with `EXDEV`.
#[derive(Debug)]
pub struct Request<'a> {
    /// The function called.
    pub op: Op,
    /// Directory `old` is relative to.
    pub old_dir: BorrowedFd<'a>,
    /// The source path.
    pub old: &'a CStr,
    /// Directory `new` is relative to.
    pub new_dir: BorrowedFd<'a>,
    /// The destination path.
    pub new: &'a CStr,
    /// `renameat2` flags.
    pub flags: u32,
}

/// How the engine works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// fsync data and directories (off only for throwaway data).
    pub fsync: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { fsync: true }
    }
}

/// What a move did, filled in as it goes (so a failed move reports too).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// The source's type, once known.
    pub kind: Option<FileType>,
    /// Bytes of data copied.
    pub bytes: u64,
    /// Objects created at the destination.
    pub files: u64,
}

/// Moves `req.old` to `req.new` across devices, or fails with the errno a
/// same-filesystem rename would have given, leaving everything as it was.
pub fn rename(req: &Request<'_>, opts: &Options, report: &mut Report) -> Result<()> {
    if req.flags != 0 {
        // renameat2 flags: not emulated yet; the kernel's answer stands.
        return Err(Error::new(Errno::XDEV, "renameat2 flags"));
    }
    let flags = RenameFlags::from_bits_retain(req.flags);
    let src = Entry::open(req.old_dir, req.old)?;
    let dst = Entry::open(req.new_dir, req.new)?;
    // A source replaced between the preflight and the open is looked at again.
    for _ in 0..4 {
        let (st, dst_st) = match check::preflight(&src, &dst, flags)? {
            check::Verdict::SameFile => return Ok(()),
            check::Verdict::Move { src, dst } => (src, dst),
        };
        let kind = check::file_type(&st);
        report.kind = Some(kind);
        let result = match kind {
            FileType::RegularFile => file::move_file(&src, &st, &dst, dst_st.is_some(), opts, report),
            _ => Err(Error::new(Errno::XDEV, "type not handled")),
        };
        match result {
            Err(e) if e.step == file::SOURCE_CHANGED => continue,
            other => return other,
        }
    }
    Err(Error::new(Errno::XDEV, file::SOURCE_CHANGED))
}

/// Removes the source name if it still refers to the inode that was moved,
/// then makes the removal durable.
///
/// If the name now holds another object, that object arrived after the
/// move's copy was taken: the move happened first, and the newcomer stays.
pub(crate) fn remove_source(src: &Entry, moved: &Statx, opts: &Options) -> Result<()> {
    match check::lstat(src.dir.as_fd(), &src.name) {
        Ok(now) if check::same_inode(&now, moved) => {
            let flags =
                if check::file_type(moved) == FileType::Directory { AtFlags::REMOVEDIR } else { AtFlags::empty() };
            retry(|| rustix::fs::unlinkat(src.dir.as_fd(), &*src.name, flags)).at("remove source")?;
        }
        Ok(_) | Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(Error::new(e, "look up source")),
    }
    if opts.fsync && src.syncable {
        // The source is gone: a failed fsync here must not undo the move.
        let _ = retry(|| rustix::fs::fsync(src.dir.as_fd()));
    }
    Ok(())
}
