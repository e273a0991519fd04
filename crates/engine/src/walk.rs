//! Depth-first walks over parallel directory trees with bounded resources.
//!
//! A walk keeps one [`Frame`] per directory level on an explicit stack (no
//! native recursion, so a 10,000-deep chain of directories is fine). Each
//! frame holds the names still to visit in that one directory, and one
//! descriptor per tree ("side": source and copy, say). Only the root, every
//! [`ANCHOR`]th level and the deepest [`WINDOW`] levels keep their
//! descriptors open (about 2 x depth / 256 + 66 in all); a level whose
//! descriptor was closed is reopened from the nearest open ancestor, name by
//! name, with `O_NOFOLLOW | O_DIRECTORY`, and must be the inode it was
//! (same device and inode), so a directory swapped for a symlink or another
//! directory meanwhile is never entered.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{FileType, Mode, OFlags, SeekFrom, Statx};
use rustix::io::Errno;

use super::error::{At, Error, Result, TIDY_TRIES, retry, tidy};
use super::stat::{Id, fstat, id, list_dir};

/// How many of the deepest levels keep open descriptors.
pub const WINDOW: usize = 32;

/// Every this many levels, a level keeps its descriptors, so reopening a
/// level costs at most this many `openat`s.
pub const ANCHOR: usize = 256;

/// The step name for a tree that changed under the walk.
pub const TREE_CHANGED: &str = "directory changed during the move";

/// Opens the directory `name` in `dir` without following a symlink.
pub fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    retry(|| rustix::fs::openat(dir, name, flags, Mode::empty()))
}

/// Opens the directory `name` in `dir` for a look that must not change its
/// atime (`O_NOATIME`, allowed to its owner and to `CAP_FOWNER`; without it
/// where not allowed).
pub fn open_dir_noatime(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match retry(|| rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty())) {
        Err(Errno::PERM) => open_dir(dir, name),
        other => other,
    }
}

/// The names in a directory, `.` and `..` left out, read from `dir` itself
/// (so its open flags, such as `O_NOATIME`, apply). `dir` must be fresh: the
/// listing starts at its current offset. A failed read starts over from the
/// beginning, a few times.
pub fn read_names(dir: BorrowedFd<'_>) -> Result<Vec<CString>> {
    Ok(read_entries(dir)?.into_iter().map(|(name, _)| name).collect())
}

/// As [`read_names`], with the type each entry had when listed (`d_type`;
/// `FileType::Unknown` where the filesystem does not say). A hint only: the
/// entry may be replaced before it is looked at.
pub fn read_entries(dir: BorrowedFd<'_>) -> Result<Vec<(CString, FileType)>> {
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut last = Errno::IO;
    for attempt in 0..TIDY_TRIES {
        if attempt > 0 && retry(|| rustix::fs::seek(dir, SeekFrom::Start(0))).is_err() {
            break;
        }
        match read_all(dir, &mut buf) {
            Ok(mut names) => {
                names.reverse(); // visited with pop(), in directory order
                return Ok(names);
            }
            Err(e) => last = e,
        }
    }
    // Listing is a step of the copy alone: a policy refusing it (EPERM,
    // EACCES on a directory already open) is not rename's EPERM.
    Err(Error::copy_step(last, "read directory"))
}

/// The names in a directory with their inode numbers as listed (`d_ino`),
/// `.` and `..` left out, read from `dir`'s current offset.
pub fn read_inodes(dir: BorrowedFd<'_>) -> Result<Vec<(CString, u64)>> {
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut out = Vec::new();
    list_dir(dir, &mut buf, |name, _, ino| {
        out.push((name.to_owned(), ino));
        true
    })
    .at("read directory")?;
    Ok(out)
}

fn read_all(dir: BorrowedFd<'_>, buf: &mut Vec<u8>) -> rustix::io::Result<Vec<(CString, FileType)>> {
    let mut names = Vec::new();
    list_dir(dir, buf, |name, kind, _| {
        names.push((name.to_owned(), kind));
        true
    })?;
    Ok(names)
}

/// One directory level.
#[derive(Debug)]
pub struct Frame<const N: usize> {
    /// The directory's name in its parent (empty for the root).
    pub name: CString,
    /// Its identity on each side.
    pub ids: [Id; N],
    /// Its stat on side 0 (the tree being read).
    pub st: Box<Statx>,
    fds: [Option<Arc<OwnedFd>>; N],
    names: Vec<(CString, FileType)>,
}

/// A walk over `N` trees that have the same names.
#[derive(Debug)]
pub struct Walk<const N: usize> {
    frames: Vec<Frame<N>>,
    /// How many of the deepest levels keep their descriptors.
    window: usize,
}

/// Descriptors this process may still open (`RLIMIT_NOFILE` less those
/// open now, counted in `/proc/self/fd`; half the limit if that cannot be
/// read). Asked once per walk: a program may run with a limit of 20.
pub fn free_descriptors() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(1 << 20);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(1 << 20);
    let open = open_dir(rustix::fs::CWD, c"/proc/self/fd")
        .ok()
        .and_then(|d| read_names(d.as_fd()).ok())
        .map_or(limit / 2, |names| names.len());
    limit.saturating_sub(open)
}

impl<const N: usize> Walk<N> {
    /// Starts at the roots; side 0's entries are the ones visited. The
    /// deepest [`WINDOW`] levels keep their descriptors, fewer when the
    /// process may open few more (a quarter of what is free goes to the
    /// walk; the rest to the files being copied or probed meanwhile).
    pub fn new(roots: [OwnedFd; N]) -> Result<Walk<N>> {
        let window = (free_descriptors() / 4 / N).clamp(1, WINDOW);
        let mut w = Walk { frames: Vec::new(), window };
        w.push(CString::default(), roots)?;
        Ok(w)
    }

    /// Enters a subdirectory of the current one.
    pub fn push(&mut self, name: CString, fds: [OwnedFd; N]) -> Result<()> {
        self.push_seen(name, fds, [None; N])
    }

    /// As [`Walk::push`], where the caller has just looked at some of the
    /// descriptors (`seen`, one a side, `None` where it has not).
    pub fn push_seen(&mut self, name: CString, fds: [OwnedFd; N], seen: [Option<Statx>; N]) -> Result<()> {
        // A transient failure (EIO) is tried again: a walk that deletes an
        // old source must not stop halfway for it.
        let stat = |fd: &OwnedFd, seen: Option<Statx>| match seen {
            Some(st) => Ok(st),
            None => tidy(|| fstat(fd.as_fd())).at("stat directory"),
        };
        let st = stat(&fds[0], seen[0])?;
        let mut ids = [id(&st); N];
        for ((slot, fd), seen) in ids.iter_mut().zip(&fds).zip(seen).skip(1) {
            *slot = id(&stat(fd, seen)?);
        }
        let names = read_entries(fds[0].as_fd())?;
        self.frames.push(Frame { name, ids, st: Box::new(st), fds: fds.map(|fd| Some(Arc::new(fd))), names });
        let len = self.frames.len();
        if len > self.window + 1 {
            self.close(len - self.window - 1);
        }
        Ok(())
    }

    /// The next name to visit in the current directory.
    pub fn next_name(&mut self) -> Option<CString> {
        self.next_entry().map(|(name, _)| name)
    }

    /// The next name to visit, with the type it was listed with (a hint).
    pub fn next_entry(&mut self) -> Option<(CString, FileType)> {
        self.frames.last_mut().and_then(|f| f.names.pop())
    }

    /// Whether the current directory has names left.
    pub fn has_names(&self) -> bool {
        self.frames.last().is_some_and(|f| !f.names.is_empty())
    }

    /// The current directory.
    pub fn top(&self) -> &Frame<N> {
        self.frames.last().expect("a walk has a root until it ends")
    }

    /// Whether the root has been left: the walk is over.
    pub fn is_done(&self) -> bool {
        self.frames.is_empty()
    }

    /// Takes out the names of the current directory that were listed as
    /// regular files (a hint: each may have been replaced since), leaving
    /// the others to visit; in directory order.
    pub fn take_files(&mut self) -> Vec<CString> {
        let Some(f) = self.frames.last_mut() else { return Vec::new() };
        let (files, rest): (Vec<_>, Vec<_>) = f.names.drain(..).partition(|(_, t)| *t == FileType::RegularFile);
        f.names = rest;
        files.into_iter().rev().map(|(name, _)| name).collect()
    }

    /// Puts `name` back among the current directory's names to visit, next,
    /// with no type (it is to be looked at by name).
    pub fn revisit(&mut self, name: CString) {
        if let Some(f) = self.frames.last_mut() {
            f.names.push((name, FileType::Unknown));
        }
    }

    /// The current directory's descriptors, one per side, to share with
    /// other threads (they stay open as long as a clone is held).
    pub fn shared(&mut self) -> Result<[Arc<OwnedFd>; N]> {
        let j = self.frames.len() - 1;
        self.ensure_open(j)?;
        Ok(std::array::from_fn(|side| Arc::clone(self.frames[j].fds[side].as_ref().expect("opened"))))
    }

    /// Leaves the current directory; returns it with its descriptors.
    pub fn pop(&mut self) -> Result<Option<(Frame<N>, [Arc<OwnedFd>; N])>> {
        let Some(j) = self.frames.len().checked_sub(1) else { return Ok(None) };
        self.ensure_open(j)?;
        let mut frame = self.frames.pop().expect("checked");
        let fds = std::mem::replace(&mut frame.fds, std::array::from_fn(|_| None)).map(|fd| fd.expect("opened"));
        if let Some(parent) = self.frames.len().checked_sub(1) {
            self.ensure_open(parent)?;
        }
        Ok(Some((frame, fds)))
    }

    /// The current directory's descriptor on `side`.
    pub fn fd(&mut self, side: usize) -> Result<BorrowedFd<'_>> {
        let j = self.frames.len() - 1;
        self.ensure_open(j)?;
        Ok(self.frames[j].fds[side].as_ref().expect("opened").as_fd())
    }

    /// The current directory's descriptors, one per side.
    pub fn fds(&mut self) -> Result<[BorrowedFd<'_>; N]> {
        let j = self.frames.len() - 1;
        self.ensure_open(j)?;
        Ok(std::array::from_fn(|side| self.frames[j].fds[side].as_ref().expect("opened").as_fd()))
    }

    /// The root's descriptor on `side` (the root's stay open).
    pub fn root(&self, side: usize) -> BorrowedFd<'_> {
        self.frames[0].fds[side].as_ref().expect("the root stays open").as_fd()
    }

    /// Whether `id` is a directory on the current path (side `side`).
    pub fn on_path(&self, side: usize, target: Id) -> bool {
        self.frames.iter().any(|f| f.ids[side] == target)
    }

    fn ensure_open(&mut self, j: usize) -> Result<()> {
        if self.frames[j].fds[0].is_some() {
            return Ok(());
        }
        let i = (0..j).rev().find(|&i| self.frames[i].fds[0].is_some()).expect("the root stays open");
        // Levels above the window are opened only to reach the next one,
        // and closed again at once: at most one of them is open at a time.
        let keep_from = (j + 1).saturating_sub(self.window);
        for k in i + 1..=j {
            for side in 0..N {
                let parent = self.frames[k - 1].fds[side].as_ref().expect("opened in order").as_fd();
                let fd = match open_dir(parent, &self.frames[k].name) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Err(Error::changed(TREE_CHANGED)),
                    Err(e) => return Err(Error::new(e, "reopen directory")),
                };
                if id(&fstat(fd.as_fd()).at("stat directory")?) != self.frames[k].ids[side] {
                    return Err(Error::changed(TREE_CHANGED));
                }
                self.frames[k].fds[side] = Some(Arc::new(fd));
            }
            if k - 1 > i && k - 1 < keep_from {
                self.close(k - 1);
            }
        }
        Ok(())
    }

    fn close(&mut self, k: usize) {
        if k % ANCHOR != 0 {
            self.frames[k].fds = std::array::from_fn(|_| None);
        }
    }
}
