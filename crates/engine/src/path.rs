//! Splitting a path into "the parent, and the last component".
//!
//! Everything the engine does happens relative to the parent directory's
//! descriptor and the last component's name (cap-std's rule), so a path is
//! resolved once, and trailing slashes and `.`/`..` are classified here the
//! way the kernel's `filename_parentat` does before `do_renameat2` looks at
//! them.

use std::ffi::{CStr, CString};
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::error::{At, Result, retry};

/// What kind of last component a path has (the kernel's `LAST_*` types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Last {
    /// An ordinary name.
    Normal,
    /// `.` or `..`, or the root itself: rename refuses these with `EBUSY`.
    Special,
}

/// A path cut into its parent and last component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split<'a> {
    /// The parent, as a path relative to the starting directory (`.` when none).
    pub parent: &'a [u8],
    /// The last component, without trailing slashes.
    pub name: &'a [u8],
    /// The path ended in one or more `/`.
    pub trailing_slash: bool,
    /// The kind of last component.
    pub last: Last,
}

/// Splits `path` as the kernel does for rename.
pub fn split(path: &[u8]) -> core::result::Result<Split<'_>, Errno> {
    if path.is_empty() {
        return Err(Errno::NOENT);
    }
    let trimmed_len = path.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    if trimmed_len == 0 {
        return Ok(Split { parent: b"/", name: b"/", trailing_slash: false, last: Last::Special });
    }
    let trimmed = &path[..trimmed_len];
    let trailing_slash = trimmed_len < path.len();
    let (parent, name): (&[u8], &[u8]) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => (&trimmed[..=i], &trimmed[i + 1..]),
        None => (b".", trimmed),
    };
    let last = if name == b"." || name == b".." { Last::Special } else { Last::Normal };
    Ok(Split { parent, name, trailing_slash, last })
}

/// An open parent directory and the name of an entry in it.
#[derive(Debug)]
pub struct Entry {
    /// The parent directory.
    pub dir: OwnedFd,
    /// Whether `dir` can be fsynced (opened for reading, not `O_PATH`).
    pub syncable: bool,
    /// The last component.
    pub name: CString,
    /// The path had a trailing slash.
    pub trailing_slash: bool,
    /// The kind of last component.
    pub last: Last,
}

impl Entry {
    /// Opens the parent of `path` (resolved from `at`, following symlinks in
    /// the parent part, as the kernel does).
    pub fn open(at: BorrowedFd<'_>, path: &CStr) -> Result<Entry> {
        let s = split(path.to_bytes()).map_err(|e| super::Error::new(e, "parse path"))?;
        let parent = CString::new(s.parent).expect("no NUL inside a C string");
        let flags = OFlags::DIRECTORY | OFlags::CLOEXEC;
        let (dir, syncable) = match retry(|| rustix::fs::openat(at, &*parent, flags | OFlags::RDONLY, Mode::empty())) {
            Ok(fd) => (fd, true),
            // A directory we may write and search but not read: the kernel's
            // rename works there, so we must too, without the directory fsync.
            Err(Errno::ACCESS) => (
                retry(|| rustix::fs::openat(at, &*parent, flags | OFlags::PATH, Mode::empty()))
                    .at("open parent directory")?,
                false,
            ),
            Err(e) => return Err(super::Error::new(e, "open parent directory")),
        };
        let name = CString::new(s.name).expect("no NUL inside a C string");
        Ok(Entry { dir, syncable, name, trailing_slash: s.trailing_slash, last: s.last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(p: &str) -> (String, String, bool, Last) {
        let s = split(p.as_bytes()).unwrap();
        (
            String::from_utf8(s.parent.to_vec()).unwrap(),
            String::from_utf8(s.name.to_vec()).unwrap(),
            s.trailing_slash,
            s.last,
        )
    }

    #[test]
    fn plain_name_is_relative_to_dot() {
        assert_eq!(sp("a"), (".".into(), "a".into(), false, Last::Normal));
    }

    #[test]
    fn absolute_and_nested_paths_keep_their_parent() {
        assert_eq!(sp("/a"), ("/".into(), "a".into(), false, Last::Normal));
        assert_eq!(sp("/x/y/z"), ("/x/y/".into(), "z".into(), false, Last::Normal));
        assert_eq!(sp("x//y"), ("x//".into(), "y".into(), false, Last::Normal));
    }

    #[test]
    fn trailing_slashes_are_noted_and_removed() {
        assert_eq!(sp("a/"), (".".into(), "a".into(), true, Last::Normal));
        assert_eq!(sp("/d/a///"), ("/d/".into(), "a".into(), true, Last::Normal));
    }

    #[test]
    fn dot_dotdot_and_root_are_special() {
        assert_eq!(sp("a/.").3, Last::Special);
        assert_eq!(sp("..").3, Last::Special);
        assert_eq!(sp("a/../").3, Last::Special);
        assert_eq!(sp("/").3, Last::Special);
        assert_eq!(sp("///").3, Last::Special);
        assert_eq!(sp(".hidden").3, Last::Normal);
        assert_eq!(sp("...").3, Last::Normal);
    }

    #[test]
    fn empty_path_is_enoent() {
        assert_eq!(split(b""), Err(Errno::NOENT));
    }
}
