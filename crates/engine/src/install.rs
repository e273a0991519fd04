//! Temp files and atomic placement at the destination, with rollback.
//!
//! The copy is written into an unnamed `O_TMPFILE` in the destination
//! directory, so a crash leaves nothing behind. Where the filesystem has no
//! `O_TMPFILE`, or `/proc` is missing (linking an unnamed file by
//! `/proc/thread-self/fd/N` with `AT_SYMLINK_FOLLOW` needs no capability, unlike
//! `AT_EMPTY_PATH`), a hidden file ([`names`](super::names)) is used
//! instead and removed on every failure path by [`Temp`]'s `Drop`.
//!
//! Placement (tempfile's `persist_noclobber` idea, extended to replace):
//! - no destination: link the unnamed file at the final name (`linkat`
//!   fails with EEXIST instead of replacing), so the name appears complete;
//! - a destination exists: give the temp a name, then swap it with the
//!   destination in one `renameat2(RENAME_EXCHANGE)`. Readers see the old
//!   file or the new one, never neither, and the old one stays under the
//!   temp name until the source is gone, so it can be put back. Where the
//!   filesystem cannot exchange, the old file is kept by a hard link and
//!   the temp renamed over it.
//!
//! [`Installed`] undoes the placement on `Drop` unless committed.
//!
//! In a shared directory anyone with write access could rename their own
//! object over a hidden name there at any moment, up to the rename that
//! installs it, or ours away (issue 11). So wherever others may write to
//! the destination directory ([`only_ours`]), whatever is named before it
//! is installed (a named temp file, an unnamed one given a name for the
//! exchange, another name's hard link, a symlink or special file, which can
//! only be made and given metadata by name: [`Temp::by_name`]) is named in
//! a private directory ([`Private`]), mode 0700 and ours, made under a
//! hidden name in the destination directory and used only through the
//! descriptor opened right after `mkdirat`. Only its owner and root may
//! enter it, so what is there is what xrename made. It is placed from there
//! into the destination directory by the same calls; once swapped, the old
//! destination waits there, and the directory is removed last. (A Landlock
//! domain without `REFER` refuses that rename between two directories with
//! EXDEV: the program gets it.)
//!
//! Directory trees cannot be built that way (moving a directory to another
//! parent needs write permission on it, which its final mode may not give,
//! and on an old destination directory exchanged with it). A tree is built
//! under a hidden name in the destination directory ([`Temp::dir`]), used
//! only through the descriptor opened after `mkdirat` and checked to be
//! ours, private and empty, and placed by name, with `renameat2`
//! (`RENAME_NOREPLACE`, or `RENAME_EXCHANGE` with an existing destination):
//! its name is checked to hold that descriptor's directory just before,
//! and the destination's just after, which undoes the placement if not.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Statx};
use rustix::io::Errno;

use super::durable::{Durability, Placement};
use super::error::{At, Error, Result, TIDY_TRIES, retry, tidy};
use super::names::{Role, with_fresh};
use super::path::Entry;
use super::seen::Since;
use super::stat::{file_type, fstat, is_append_only, lstat, same_inode};
use super::walk::open_dir;

/// A new object in the destination directory that no one else can see or
/// rely on yet: an unnamed file, or a hidden name (in the destination
/// directory, or in a private directory there). Dropping it removes it (a
/// whole tree, for a directory), then its private directory.
pub struct Temp<'d> {
    /// The destination directory.
    dir: BorrowedFd<'d>,
    fd: Option<OwnedFd>,
    name: Option<CString>,
    /// What the hidden name says it holds.
    role: Role,
    is_dir: bool,
    /// The status of the new object as made, if read ([`Temp::by_name`]):
    /// the installer uses only its identity, which no one else can have
    /// changed (no one else may rename anything where it is).
    made: Option<Box<Statx>>,
    /// Where `name` is, if not in `dir`. Declared last: dropped after the
    /// temp in it is removed.
    private: Option<Private<'d>>,
}

/// A directory of ours, mode 0700, made under a fresh hidden name in the
/// destination directory and used only by the descriptor opened right
/// after it was made: what is made in it by name cannot be replaced by
/// anyone else. Named [`Role::Old`]: once an old destination is swapped
/// into it, that may be the only copy of it after a crash. Removed on
/// drop if empty (else left, named, for `xrename clean`).
#[derive(Debug)]
struct Private<'d> {
    parent: BorrowedFd<'d>,
    name: CString,
    fd: OwnedFd,
}

impl<'d> Private<'d> {
    /// Makes one in `parent`, for the filesystem user `me`.
    fn new(parent: BorrowedFd<'d>, me: u32) -> Result<Private<'d>> {
        let path = |d: BorrowedFd<'_>, n: &CStr| {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            retry(|| rustix::fs::openat(d, n, flags, Mode::empty()))
        };
        // A umask that takes write or search from the owner: nothing could
        // be made in it (but by root, which needs neither).
        let usable = |_: &OwnedFd, st: &Statx| match u32::from(st.stx_mode) & 0o300 != 0o300 && me != 0 {
            true => Err(Error::new(Errno::XDEV, "the umask leaves no access to a temp directory")),
            false => Ok(()),
        };
        let (name, fd, _) = own_dir(parent, Role::Old, false, me, path, usable)?;
        Ok(Private { parent, name, fd })
    }
}

impl<'d> Private<'d> {
    /// A new one in `dir` (seen as `st`) if others may write to it
    /// ([`only_ours`]); `None` where only we may.
    fn if_shared(dir: BorrowedFd<'d>, st: &Statx) -> Result<Option<Private<'d>>> {
        let me = super::sys::fsuid();
        if only_ours(st, me) { Ok(None) } else { Private::new(dir, me).map(Some) }
    }

    /// The private directory if there is one, else `dir`.
    fn or<'a>(private: &'a Option<Self>, dir: BorrowedFd<'a>) -> BorrowedFd<'a> {
        private.as_ref().map_or(dir, |p| p.fd.as_fd())
    }
}

impl Drop for Private<'_> {
    fn drop(&mut self) {
        let _ = tidy(|| rustix::fs::unlinkat(self.parent, &*self.name, AtFlags::REMOVEDIR));
    }
}

/// Whether no one but us may write to the directory seen as `st`: it is
/// ours (the filesystem uid `me`, which permission checks use), without
/// group or other write permission (with an ACL, those bits are its mask).
/// Anywhere else, others may rename their own object over a name there, or
/// ours away, at any moment. (A sticky directory is no exception: the
/// kernel's sticky rule asks who owns the entry, and an object chowned to
/// the source's owner is that user's to replace.)
fn only_ours(st: &Statx, me: u32) -> bool {
    st.stx_uid == me && u32::from(st.stx_mode) & 0o022 == 0
}

/// What [`make`] made: `create`'s result, its name, that name's role, and
/// the private directory it is in, if any.
type Made<'d, T> = (T, CString, Role, Option<Private<'d>>);

/// Fails with EXDEV where a hidden name (or a private directory) could
/// never be renamed or removed again: an append-only directory seen as `st`.
fn names_allowed(st: &Statx) -> Result<()> {
    match is_append_only(st) {
        true => Err(Error::new(Errno::XDEV, "append-only destination directory")),
        false => Ok(()),
    }
}

/// Makes an object by name, with `create` (given a directory and a name,
/// it fails with EEXIST if the name is taken), where no one else can rename
/// anything over it or away: under a fresh hidden name of `role` in `dir`
/// (seen as `st`) where only we may write to it ([`only_ours`]); elsewhere in
/// a new [`Private`] directory in `dir`, under `name` (the destination's, so
/// that a leftover is plain to see), or a fresh hidden name if that is
/// taken, named as a [`Role::Old`]: once swapped, it holds the old destination.
fn make<'d, T>(
    dir: BorrowedFd<'d>,
    st: &Statx,
    name: &CStr,
    role: Role,
    step: &'static str,
    mut create: impl FnMut(BorrowedFd<'_>, &CStr) -> rustix::io::Result<T>,
) -> Result<Made<'d, T>> {
    names_allowed(st)?;
    let Some(private) = Private::if_shared(dir, st)? else {
        let (made, name) = with_fresh(role, |n| create(dir, n)).at(step)?;
        return Ok((made, name, role, None));
    };
    let at = private.fd.as_fd();
    let (made, name) = match create(at, name) {
        Ok(made) => (made, name.to_owned()),
        Err(Errno::EXIST) => with_fresh(Role::Old, |n| create(at, n)).at(step)?,
        Err(e) => return Err(Error::new(e, step)),
    };
    Ok((made, name, Role::Old, Some(private)))
}

impl<'d> Temp<'d> {
    /// Creates an empty, private (0600) regular file in `dir`, bound for
    /// `name` there: unnamed where it can be, else by name ([`make`]).
    pub fn file(dir: BorrowedFd<'d>, name: &CStr) -> Result<Temp<'d>> {
        if procfs_usable() {
            let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
            match retry(|| rustix::fs::openat(dir, c".", flags, Mode::from_raw_mode(0o600))) {
                Ok(fd) => {
                    return Ok(Temp {
                        dir,
                        fd: Some(fd),
                        name: None,
                        role: Role::Temp,
                        is_dir: false,
                        made: None,
                        private: None,
                    });
                }
                // No O_TMPFILE on this filesystem or kernel: use a name.
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {}
                Err(e) => return Err(Error::new(e, "create temp file")),
            }
        }
        let st = fstat(dir).at("stat destination directory")?;
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let create =
            |at: BorrowedFd<'_>, n: &CStr| retry(|| rustix::fs::openat(at, n, flags, Mode::from_raw_mode(0o600)));
        let (fd, name, role, private) = make(dir, &st, name, Role::Temp, "create temp file", create)?;
        Ok(Temp { dir, fd: Some(fd), name: Some(name), role, is_dir: false, made: None, private })
    }

    /// Creates an object that is made and given its metadata by name, with
    /// `create` (`symlinkat`, `mknodat`, `linkat`: given a directory and a
    /// name, it fails with EEXIST if the name is taken), bound for `name` in
    /// `dir`, where no one else can rename anything over it ([`make`]), and
    /// reads its status.
    pub fn by_name(
        dir: BorrowedFd<'d>,
        name: &CStr,
        create: impl FnMut(BorrowedFd<'_>, &CStr) -> rustix::io::Result<()>,
    ) -> Result<Temp<'d>> {
        let st = fstat(dir).at("stat destination directory")?;
        let ((), name, role, private) = make(dir, &st, name, Role::Old, "create temp", create)?;
        let mut tmp = Temp { dir, fd: None, name: Some(name), role, is_dir: false, made: None, private };
        tmp.made = Some(Box::new(tmp.stat()?));
        Ok(tmp)
    }

    /// Makes an empty directory, mode 0700, under a fresh hidden
    /// ([`Role::Temp`]) name in `dir`, and opens it: a tree's root, to be
    /// built through the descriptor returned, with its status. Nothing makes
    /// a directory unnamed or opens it as it is made: anyone who may write to
    /// `dir` could rename their own directory over the name in between, to
    /// read or change the copy before it is installed (issue 11). What is
    /// opened must be ours (the filesystem uid: no one else can make one of
    /// ours), grant no one else anything (the set-group-ID bit a setgid `dir`
    /// passes on is allowed: it grants nothing) and be empty (not another
    /// directory of ours renamed there); else EXDEV, and the name is removed
    /// only if it holds an empty directory, which anyone who may write there
    /// could remove. The temp keeps a descriptor of it: if the name is
    /// swapped later, the tree is still found (and emptied on drop).
    pub fn dir(dir: BorrowedFd<'d>) -> Result<(Temp<'d>, OwnedFd, Statx)> {
        // Not another directory of ours renamed there.
        let empty = |fd: &OwnedFd, _: &Statx| match is_empty_at_start(fd.as_fd())? {
            true => Ok(()),
            false => Err(Error::new(Errno::XDEV, "the temp directory is not ours")),
        };
        let (name, fd, st) = own_dir(dir, Role::Temp, true, super::sys::fsuid(), open_dir, empty)?;
        let kept = match rustix::io::fcntl_dupfd_cloexec(&fd, 0) {
            Ok(kept) => kept,
            Err(e) => {
                let _ = tidy(|| rustix::fs::unlinkat(dir, &*name, AtFlags::REMOVEDIR));
                return Err(Error::new(e, "dup"));
            }
        };
        let tmp =
            Temp { dir, fd: Some(kept), name: Some(name), role: Role::Temp, is_dir: true, made: None, private: None };
        Ok((tmp, fd, st))
    }

    /// The directory the hidden name is in: the destination directory, or
    /// the private directory the temp was made in.
    pub fn at(&self) -> BorrowedFd<'_> {
        Private::or(&self.private, self.dir)
    }

    /// The new object's status as made, if it was read.
    pub fn made(&self) -> Option<&Statx> {
        self.made.as_deref()
    }

    /// The temp file's descriptor (regular files only).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_ref().expect("a temp file has a descriptor").as_fd()
    }

    /// The hidden name, if the temp has one.
    pub fn name(&self) -> Option<&CStr> {
        self.name.as_deref()
    }

    fn stat(&self) -> Result<Statx> {
        match (&self.fd, &self.name) {
            (Some(fd), _) => fstat(fd.as_fd()).at("stat temp"),
            (None, Some(name)) => lstat(self.at(), name).at("stat temp"),
            (None, None) => unreachable!("a temp has a descriptor or a name"),
        }
    }

    /// Gives the temp a [`Role::Old`] name before it is swapped with the
    /// destination, whose old object will then live under that name: an
    /// unnamed file is linked, a file or a tree named as a plain temp is
    /// renamed. (A directory replaces only an empty one, but one that
    /// someone filled after the check would sit, after a crash, under a
    /// temp's name, which `xrename clean --remove` deletes.)
    fn ensure_named(&mut self) -> Result<&CStr> {
        match (&self.name, self.role, self.is_dir) {
            (None, _, _) => {
                // Anyone who may write to the destination directory could
                // rename their own file over that name before the exchange.
                let st = fstat(self.dir).at("stat destination directory")?;
                names_allowed(&st)?;
                self.private = Private::if_shared(self.dir, &st)?;
                let ((), name) = with_fresh(Role::Old, |name| self.link_unnamed(name)).at("name temp file")?;
                self.name = Some(name);
                self.role = Role::Old;
            }
            (Some(tmp), Role::Temp, is_dir) => {
                let tmp = tmp.clone();
                let dir = self.at();
                let renamed = with_fresh(Role::Old, |name| {
                    match retry(|| rustix::fs::renameat_with(dir, &*tmp, dir, name, RenameFlags::NOREPLACE)) {
                        // No RENAME_NOREPLACE: a link never replaces.
                        Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) if !is_dir => {
                            retry(|| rustix::fs::linkat(dir, &*tmp, dir, name, AtFlags::empty()))?;
                            let _ = tidy(|| rustix::fs::unlinkat(dir, &*tmp, AtFlags::empty()));
                            Ok(())
                        }
                        other => other,
                    }
                });
                match renamed {
                    Ok(((), name)) => {
                        self.name = Some(name);
                        self.role = Role::Old;
                    }
                    // No RENAME_NOREPLACE (NFS, FUSE), and a directory
                    // cannot be linked: it keeps its temp name. The
                    // exchange, which needs the same support, fails too, and
                    // a plain rename replaces the old (empty) directory:
                    // nothing of it is kept under the temp's name.
                    Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) if is_dir => {}
                    Err(e) => return Err(Error::new(e, "name temp file")),
                }
            }
            _ => {}
        }
        Ok(self.name.as_deref().expect("just named"))
    }

    fn link_unnamed(&self, name: &CStr) -> rustix::io::Result<()> {
        let proc = proc_fd_path(self.fd.as_ref().expect("unnamed temps are files"));
        retry(|| rustix::fs::linkat(rustix::fs::CWD, &*proc, self.at(), name, AtFlags::SYMLINK_FOLLOW))
    }

    /// Puts the temp at `name` only if nothing is there (EEXIST otherwise).
    fn place_noreplace(&mut self, name: &CStr) -> rustix::io::Result<()> {
        let Some(tmp) = self.name.as_deref() else {
            return self.link_unnamed(name);
        };
        let at = self.at();
        match retry(|| rustix::fs::renameat_with(at, tmp, self.dir, name, RenameFlags::NOREPLACE)) {
            Ok(()) => {}
            // No RENAME_NOREPLACE here (NFS, old kernels): a file is linked,
            // which never replaces, then unlinked. A directory cannot be
            // linked, and looking before a plain rename is not atomic: the
            // kernel's EXDEV stands.
            Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) if !self.is_dir => {
                retry(|| rustix::fs::linkat(at, tmp, self.dir, name, AtFlags::empty()))?;
                let _ = tidy(|| rustix::fs::unlinkat(at, tmp, AtFlags::empty()));
            }
            Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => return Err(Errno::XDEV),
            Err(e) => return Err(e),
        }
        self.name = None;
        Ok(())
    }

    /// For a tree (named in the destination directory, see [`Temp::dir`]):
    /// fails with EXDEV unless its name still holds the directory built,
    /// seen as `new`. Anyone who may write there could have renamed it
    /// away and theirs to its name.
    fn still_ours(&self, new: &Statx) -> Result<()> {
        let Some(name) = self.name.as_deref().filter(|_| self.is_dir) else { return Ok(()) };
        match lstat(self.at(), name) {
            Ok(st) if same_inode(&st, new) => Ok(()),
            Ok(_) | Err(Errno::NOENT) => Err(Error::new(Errno::XDEV, "the temp directory was replaced")),
            Err(e) => Err(Error::new(e, "stat temp directory")),
        }
    }

    /// After a tree, seen as `new`, was `placed` from `from` at `name`: its
    /// name could still have been swapped between [`Temp::still_ours`] and
    /// the rename, so `name` is checked now. If another directory went there
    /// (or it cannot be told), the placement is undone (what went to `name`
    /// goes back to `from`, an old destination back to `name`) and this
    /// fails (EXDEV for another directory); once undone, the temp names
    /// `from` again, and dropping it empties the tree through its
    /// descriptor, wherever it is. Where nothing of anyone's was at `name`
    /// before (no destination, or an empty directory the rename replaced)
    /// and the tree built is gone (no link left: another rename replaced
    /// it, empty, after ours), the directory found there came by that
    /// rename and stays, as the kernel leaves it; no name is touched.
    /// Returns when it was installed, for a rollback.
    fn placed_ours(&mut self, from: &CStr, name: &CStr, placed: &Placed, new: &Statx) -> Result<Since> {
        let (dir, at) = (self.dir, self.at());
        let (error, another) = match tidy(|| lstat(dir, name)) {
            Ok(st) if same_inode(&st, new) => {
                return Ok(Since { ctime: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec), wall: super::seen::now() });
            }
            Ok(_) => (Error::new(Errno::XDEV, "the temp directory was replaced"), self.unlinked()),
            Err(Errno::NOENT) => (Error::new(Errno::XDEV, "the temp directory was replaced"), false),
            Err(e) => (Error::new(e, "stat installed directory"), false),
        };
        let undone = match placed {
            Placed::Exchanged { backup } => {
                tidy(|| rustix::fs::renameat_with(at, &**backup, dir, name, RenameFlags::EXCHANGE))
            }
            _ if another => {
                self.name = None;
                return Err(error);
            }
            _ => tidy(|| rustix::fs::renameat_with(dir, name, at, from, RenameFlags::NOREPLACE)),
        };
        // Only what went back to `from` is emptied when the temp is
        // dropped: a placement that could not be undone stays where it is
        // (a tree others may have written to meanwhile is never emptied).
        if undone.is_ok() {
            self.name = Some(from.to_owned());
        }
        Err(error)
    }
}

impl Temp<'_> {
    /// Whether the tree built has no name left anywhere.
    fn unlinked(&self) -> bool {
        self.fd.as_ref().is_some_and(|fd| fstat(fd.as_fd()).is_ok_and(|st| st.stx_nlink == 0))
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        let Some(name) = &self.name else { return };
        match (self.is_dir, self.fd.take()) {
            // The name may hold someone else's directory by now: the tree is
            // emptied through its descriptor, then the name removed if it
            // holds an empty directory (ours, or one anyone could remove).
            (true, Some(fd)) => {
                for _ in 0..TIDY_TRIES {
                    if super::tree::empty_tree(&fd).is_ok() {
                        break;
                    }
                }
                let _ = tidy(|| rustix::fs::unlinkat(self.at(), &**name, AtFlags::REMOVEDIR));
            }
            _ => remove_ours(self.at(), name, self.is_dir),
        }
    }
}

/// Makes a directory, mode 0700, under a fresh hidden `role` name in
/// `parent`, opens it with `open` and checks it: nothing makes a directory
/// and opens it at once, and anyone who may write to `parent` could rename
/// their own over the name in between. What is opened must be ours (the
/// filesystem uid `me`: no one else can make one of ours), grant no one
/// else anything whatever the umask or default ACL (with an ACL, the group
/// bits are its mask; the set-group-ID bit a setgid `parent` passes on
/// grants nothing), and pass `more`; else EXDEV. On any failure the name
/// is removed only if it holds an empty directory, which anyone who may
/// write there could remove. The `mkdir`'s errno is rename's where the
/// directory is what is moved (`as_rename`: EMLINK, EDQUOT...); no errno of
/// the later steps is.
fn own_dir(
    parent: BorrowedFd<'_>,
    role: Role,
    as_rename: bool,
    me: u32,
    open: impl Fn(BorrowedFd<'_>, &CStr) -> rustix::io::Result<OwnedFd>,
    more: impl FnOnce(&OwnedFd, &Statx) -> Result<()>,
) -> Result<(CString, OwnedFd, Statx)> {
    let mkdir = |n: &CStr| retry(|| rustix::fs::mkdirat(parent, n, Mode::from_raw_mode(0o700)));
    let ((), name) = match with_fresh(role, mkdir) {
        Ok(made) => made,
        Err(e) if as_rename => return Err(Error::new(e, "create temp")),
        Err(e) => return Err(Error::copy_step(e, "create temp directory")),
    };
    let opened = (|| {
        let fd = open(parent, &name).at_copy("open temp directory")?;
        let st = fstat(fd.as_fd()).at_copy("stat temp directory")?;
        let mode = u32::from(st.stx_mode) & 0o7777 & !Mode::SGID.bits();
        if st.stx_uid != me || mode & !0o700 != 0 {
            return Err(Error::new(Errno::XDEV, "the temp directory is not ours"));
        }
        more(&fd, &st)?;
        Ok((fd, st))
    })();
    match opened {
        Ok((fd, st)) => Ok((name, fd, st)),
        Err(e) => {
            let _ = tidy(|| rustix::fs::unlinkat(parent, &*name, AtFlags::REMOVEDIR));
            Err(e)
        }
    }
}

/// Whether the directory just opened as `fd` is empty; its listing is
/// then read from the start again.
fn is_empty_at_start(fd: BorrowedFd<'_>) -> Result<bool> {
    let empty = super::walk::read_names(fd)?.is_empty();
    retry(|| rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(0))).at_copy("rewind temp directory")?;
    Ok(empty)
}

/// Removes an object xrename made (a temp, or a backup of an old empty
/// directory); errors are ignored, as there is no one left to tell.
fn remove_ours(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) {
    if is_dir {
        for _ in 0..TIDY_TRIES {
            if super::tree::remove_tree(dir, name).is_ok() {
                break;
            }
        }
    } else {
        let _ = tidy(|| rustix::fs::unlinkat(dir, name, AtFlags::empty()));
    }
}

/// Removes an old destination kept at `backup`. An old directory was empty:
/// rmdir, never a recursive delete of someone's data.
fn remove_old(dir: BorrowedFd<'_>, backup: &CStr, is_dir: bool) {
    let flags = if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
    let _ = tidy(|| rustix::fs::unlinkat(dir, backup, flags));
}

/// How the new file was put in place, and so how to undo it.
#[derive(Debug)]
enum Placed {
    /// There was no destination.
    Fresh,
    /// Exchanged: the old destination now lives at `backup`.
    Exchanged { backup: CString },
    /// The old destination is kept by a hard link at `backup`.
    Linked { backup: CString },
    /// Replaced with no way back (the filesystem can neither exchange nor link).
    Overwritten,
}

/// A new file at the destination whose placement is undone on drop unless
/// [`Installed::commit`] is called.
#[derive(Debug)]
pub struct Installed<'d> {
    dir: BorrowedFd<'d>,
    name: &'d CStr,
    new: Box<Statx>,
    is_dir: bool,
    placed: Placed,
    sync: Placement,
    /// For a tree: when it was installed (its ctime then), and how to
    /// withdraw it. Once installed, the tree is visible and others may add
    /// to it or change it; a rollback removes only what is ours.
    since: Option<Since>,
    tree: Option<&'d dyn Rollback>,
    /// The private directory the object came from, where a backup is kept
    /// (see [`Temp::at`]). Declared last: removed after the backup.
    private: Option<Private<'d>>,
}

/// What the preflight saw at the destination, and what may be done there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Nothing there (yet): place without replacing, replace if one appears.
    Absent,
    /// Something there: replace it.
    Present,
    /// `RENAME_NOREPLACE`: place only if nothing is there, else EEXIST.
    MustNotExist,
}

/// Puts `tmp` at `dst`'s name in its directory, atomically, replacing what
/// is there unless `dest` forbids it. Races with the destination appearing
/// or vanishing after the preflight are handled. With `fsync`, the new name
/// is made durable before this returns. `tree` withdraws an installed
/// tree in a rollback (see [`Installed`]).
pub fn install<'d>(
    mut tmp: Temp<'d>,
    dst: &'d Entry,
    dest: Dest,
    durability: Durability,
    tree: Option<&'d dyn Rollback>,
) -> Result<Installed<'d>> {
    let name: &'d CStr = &dst.name;
    let noreplace = dest == Dest::MustNotExist;
    let mut dst_exists = dest == Dest::Present;
    let (dir, is_dir) = (tmp.dir, tmp.is_dir);
    let new = match tmp.made.take() {
        Some(made) => made,
        None => Box::new(tmp.stat()?),
    };
    let mut sync = Some(durability.placement(dst, tmp.fd.as_ref().map(|fd| fd.as_fd()))?);
    let mut placed = None;
    for _ in 0..8 {
        if dst_exists && is_dir {
            // Renamed to an old destination's name first, then checked.
            tmp.ensure_named()?;
        }
        tmp.still_ours(&new)?;
        let from = if is_dir { tmp.name.clone() } else { None };
        if !dst_exists {
            match tmp.place_noreplace(name) {
                Ok(()) => placed = Some(Placed::Fresh),
                Err(Errno::EXIST) if !noreplace => dst_exists = true,
                Err(e) => return Err(Error::new(e, "install")),
            }
        } else {
            let tmp_name = tmp.ensure_named()?.to_owned();
            match retry(|| rustix::fs::renameat_with(tmp.at(), &*tmp_name, dir, name, RenameFlags::EXCHANGE)) {
                Ok(()) => {
                    tmp.name = None; // now names the old destination
                    placed = Some(Placed::Exchanged { backup: tmp_name });
                }
                Err(Errno::NOENT) => dst_exists = false,
                Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => {
                    placed = Some(replace_without_exchange(&mut tmp, name)?)
                }
                Err(e) => return Err(Error::new(e, "install")),
            }
        }
        if let Some(placed) = placed {
            let since = match &from {
                Some(from) => Some(tmp.placed_ours(from, name, &placed, &new)?),
                None => None,
            };
            let sync = sync.take().expect("once");
            let private = tmp.private.take();
            let installed = Installed { dir, name, new, is_dir, placed, sync, since, tree, private };
            check_replaced(&installed)?;
            return installed.synced();
        }
    }
    // rename(2) never answers EAGAIN: the kernel's EXDEV, nothing changed.
    Err(Error::new(Errno::XDEV, "install: destination keeps changing"))
}

/// Puts `tmp` at `dst`'s name in its directory with a plain rename,
/// replacing what is there with no way back, and makes that durable. For a
/// destination that cannot be kept for a rollback without a cost the
/// kernel's rename never pays (an overlayfs lower-layer file, which an
/// exchange or a link would copy up whole; a lower-layer directory, which
/// cannot be exchanged at all): the caller has already taken the source,
/// so nothing can fail after this, but a tree found not to be what went to
/// the name ([`Temp::placed_ours`]): then the caller gives the source back.
///
/// Returns whether the new name is durable: if the flush failed, the caller
/// keeps the source (it is installed for good, and cannot be undone).
pub fn replace(mut tmp: Temp<'_>, dst: &Entry, durability: Durability) -> Result<bool> {
    let dir = tmp.dir;
    let placement = durability.placement(dst, tmp.fd.as_ref().map(|fd| fd.as_fd()))?;
    let tmp_name = tmp.ensure_named()?.to_owned();
    let new = match tmp.is_dir {
        true => Some(tmp.stat()?),
        false => None,
    };
    if let Some(new) = &new {
        tmp.still_ours(new)?;
    }
    retry(|| rustix::fs::renameat(tmp.at(), &*tmp_name, dir, &*dst.name)).at("install")?;
    tmp.name = None;
    if let Some(new) = &new {
        // The old destination (an empty directory) is gone either way.
        tmp.placed_ours(&tmp_name, &dst.name, &Placed::Overwritten, new)?;
    }
    Ok(Durability::placed(&placement, dir).is_ok())
}

/// How a rollback withdraws an installed tree that others could see (and
/// add to) while it was installed: given by the tree mover, which knows
/// what the tree holds; the installer only knows it placed a directory.
pub trait Rollback: core::fmt::Debug {
    /// Removes what is ours of the installed tree `dir`/`at`, installed at
    /// `since`; returns whether all of it went.
    fn withdraw(&self, dir: BorrowedFd<'_>, at: &CStr, since: Since) -> bool;
}

/// After an exchange the old destination sits at the backup name. If it
/// changed after the preflight into something rename may not replace (a
/// directory for a file; a file or a non-empty directory for a directory),
/// fail, which undoes the exchange.
fn check_replaced(installed: &Installed<'_>) -> Result<()> {
    let Placed::Exchanged { backup } = &installed.placed else {
        return Ok(());
    };
    let old = lstat(installed.at(), backup).at("stat old destination")?;
    let old_is_dir = file_type(&old) == FileType::Directory;
    match (installed.is_dir, old_is_dir) {
        (false, true) => Err(Error::new(Errno::ISDIR, "destination is a directory")),
        (true, false) => Err(Error::new(Errno::NOTDIR, "destination is not a directory")),
        (true, true) if !super::tree::is_empty(installed.at(), backup)? => {
            Err(Error::new(Errno::NOTEMPTY, "destination directory is not empty"))
        }
        _ => Ok(()),
    }
}

fn replace_without_exchange(tmp: &mut Temp<'_>, name: &CStr) -> Result<Placed> {
    let dir = tmp.dir;
    let tmp_name = tmp.ensure_named()?.to_owned();
    let at = tmp.at();
    // Directories cannot be hard-linked: an old (empty) one cannot be kept.
    let backup = match tmp.is_dir {
        true => Err(Errno::PERM),
        false => with_fresh(Role::Old, |b| retry(|| rustix::fs::linkat(dir, name, at, b, AtFlags::empty()))),
    };
    retry(|| rustix::fs::renameat(at, &*tmp_name, dir, name)).at("install")?;
    tmp.name = None;
    Ok(match backup {
        Ok(((), backup)) => Placed::Linked { backup },
        Err(_) => Placed::Overwritten,
    })
}

impl Installed<'_> {
    fn synced(self) -> Result<Self> {
        // Dropping `self` on error undoes the placement.
        Durability::placed(&self.sync, self.dir)?;
        Ok(self)
    }

    /// The source is gone: forget the old destination for good.
    pub fn commit(mut self) {
        match core::mem::replace(&mut self.placed, Placed::Overwritten) {
            Placed::Exchanged { backup } | Placed::Linked { backup } => remove_old(self.at(), &backup, self.is_dir),
            Placed::Fresh | Placed::Overwritten => {}
        }
        // `placed` is now Overwritten: dropping `self` undoes nothing.
    }

    fn rollback(&mut self) {
        if matches!(self.placed, Placed::Overwritten) {
            return;
        }
        let (dir, name, at) = (self.dir, self.name, self.at());
        let ours = self.holds_ours();
        match &self.placed {
            // Remove our file, and only ours: when in doubt, leave it (a
            // second complete copy is better than a deleted stranger).
            Placed::Fresh => {
                if ours == Some(true) {
                    self.withdraw_from_name();
                }
            }
            // Another rename replaced our file meanwhile: it came later, so it
            // superseded the old destination too. The old one goes, theirs stays.
            Placed::Exchanged { backup } | Placed::Linked { backup } if ours == Some(false) => {
                remove_old(at, backup, self.is_dir);
            }
            Placed::Exchanged { backup } => {
                let exchange = || tidy(|| rustix::fs::renameat_with(at, &**backup, dir, name, RenameFlags::EXCHANGE));
                if exchange().is_ok() {
                    match tidy(|| lstat(at, backup)) {
                        Ok(st) if same_inode(&st, &self.new) => self.withdraw_or_keep(at, backup),
                        // A rename landed on the name between the check and
                        // the exchange, and was swapped out with ours: put it
                        // back; it superseded the old destination.
                        Ok(_) => {
                            if exchange().is_ok() {
                                remove_old(at, backup, self.is_dir);
                            }
                        }
                        Err(_) => {}
                    }
                } else {
                    let _ = tidy(|| rustix::fs::renameat(at, &**backup, dir, name));
                }
            }
            Placed::Linked { backup } => {
                let _ = tidy(|| rustix::fs::renameat(at, &**backup, dir, name));
            }
            Placed::Overwritten => return,
        }
        for _ in 0..TIDY_TRIES {
            if Durability::placed(&self.sync, self.dir).is_ok() {
                break;
            }
        }
    }

    /// Withdraws our object from the destination name: renamed aside first
    /// (a rename landing on the name after the check must not be deleted),
    /// checked to be ours there, then removed.
    fn withdraw_from_name(&self) {
        let (dir, name) = (self.dir, self.name);
        let aside =
            with_fresh(Role::Temp, |n| tidy(|| rustix::fs::renameat_with(dir, name, dir, n, RenameFlags::NOREPLACE)));
        match aside {
            Ok(((), aside)) => {
                let ours = tidy(|| lstat(dir, &aside)).is_ok_and(|st| same_inode(&st, &self.new));
                // Not ours after all, or others added to it while it was
                // visible: back under its name, or else kept under a name
                // `clean` never removes.
                if !(ours && self.withdraw(dir, &aside))
                    && tidy(|| rustix::fs::renameat_with(dir, &*aside, dir, name, RenameFlags::NOREPLACE)).is_err()
                {
                    let _ = with_fresh(Role::Source, |n| tidy(|| rustix::fs::renameat(dir, &*aside, dir, n)));
                }
            }
            // No RENAME_NOREPLACE (NFS): remove it by name.
            Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => self.withdraw_or_keep(dir, name),
            Err(_) => {}
        }
    }

    /// Withdraws our object at `dir`/`at`; what others added to a tree
    /// meanwhile is kept under a name `clean` never removes.
    fn withdraw_or_keep(&self, dir: BorrowedFd<'_>, at: &CStr) {
        if !self.withdraw(dir, at) && at != self.name {
            let _ = with_fresh(Role::Source, |n| tidy(|| rustix::fs::renameat(dir, at, self.dir, n)));
        }
    }

    /// Removes our object at `dir`/`at`: a file, or a tree but for entries
    /// the source does not have (added by others while it was installed).
    /// Returns whether everything went.
    fn withdraw(&self, dir: BorrowedFd<'_>, at: &CStr) -> bool {
        match (self.since, self.tree) {
            (Some(since), Some(tree)) if self.is_dir => tree.withdraw(dir, at, since),
            _ => {
                remove_ours(dir, at, self.is_dir);
                true
            }
        }
    }

    /// The directory a backup is kept in (see [`Temp::at`]).
    fn at(&self) -> BorrowedFd<'_> {
        Private::or(&self.private, self.dir)
    }

    /// Whether the destination name still holds what we installed; `None`
    /// when it cannot be told.
    fn holds_ours(&self) -> Option<bool> {
        match tidy(|| lstat(self.dir, self.name)) {
            Ok(st) => Some(same_inode(&st, &self.new)),
            Err(Errno::NOENT) => Some(false),
            Err(_) => None,
        }
    }
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        self.rollback();
    }
}

/// `/proc/thread-self/fd/N`: this thread's descriptor table, which is not
/// the process leader's after `unshare(CLONE_FILES)`, and still there after
/// the leader has exited.
fn proc_fd_path(fd: &OwnedFd) -> CString {
    use std::os::fd::AsRawFd;
    CString::new(format!("/proc/thread-self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

/// Whether `/proc/thread-self/fd` can be used to link unnamed files.
/// Asked at every move: a process may `chroot` into a tree without /proc
/// after one move and make the next.
fn procfs_usable() -> bool {
    retry(|| {
        rustix::fs::statx(rustix::fs::CWD, c"/proc/thread-self/fd", AtFlags::empty(), rustix::fs::StatxFlags::TYPE)
    })
    .is_ok()
}
