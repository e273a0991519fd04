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
//! Symlinks, special files and directory trees are built under a hidden
//! name ([`Temp::named`]) and placed the same way, with `renameat2`
//! (`RENAME_NOREPLACE`, or `RENAME_EXCHANGE` with an existing destination).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Statx};
use rustix::io::Errno;

use super::durable::{Durability, Placement};
use super::error::{At, Error, Result, TIDY_TRIES, retry, tidy};
use super::names::{Role, with_fresh};
use super::path::Entry;
use super::seen::Since;
use super::stat::{append_only, file_type, fstat, lstat, same_inode};

/// A new object in the destination directory that no one else can see or
/// rely on yet: an unnamed file, or a hidden name. Dropping it removes it
/// (a whole tree, for a directory).
pub struct Temp<'d> {
    dir: BorrowedFd<'d>,
    fd: Option<OwnedFd>,
    name: Option<CString>,
    /// What the hidden name says it holds.
    role: Role,
    is_dir: bool,
    /// The inode made under the hidden name, when it was made by name: a
    /// shared directory lets others rename something over that name, and
    /// what is installed must be what was made.
    made: Option<(u32, u32, u64)>,
}

impl<'d> Temp<'d> {
    /// Creates an empty, private (0600) regular file in `dir`.
    pub fn file(dir: BorrowedFd<'d>) -> Result<Temp<'d>> {
        if procfs_usable() {
            let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
            match retry(|| rustix::fs::openat(dir, c".", flags, Mode::from_raw_mode(0o600))) {
                Ok(fd) => {
                    return Ok(Temp { dir, fd: Some(fd), name: None, role: Role::Temp, is_dir: false, made: None });
                }
                // No O_TMPFILE on this filesystem or kernel: use a name.
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {}
                Err(e) => return Err(Error::new(e, "create temp file")),
            }
        }
        if append_only(dir) {
            // A named temp could never be renamed or removed there.
            return Err(Error::new(Errno::XDEV, "append-only destination directory"));
        }
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let (fd, name) =
            with_fresh(Role::Temp, |name| retry(|| rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))))
                .at("create temp file")?;
        Ok(Temp { dir, fd: Some(fd), name: Some(name), role: Role::Temp, is_dir: false, made: None })
    }

    /// Creates an object under a fresh hidden name in `dir` with `create`
    /// (`mkdirat`, `symlinkat`, `mknodat`, ...), which fails with EEXIST if
    /// the name is taken.
    /// A directory is named as a [`Role::Temp`] (what it may replace is an
    /// empty directory); anything else as [`Role::Old`], since once swapped
    /// in, its name holds the old destination.
    pub fn named(
        dir: BorrowedFd<'d>,
        is_dir: bool,
        mut create: impl FnMut(&CStr) -> rustix::io::Result<()>,
    ) -> Result<Temp<'d>> {
        let role = if is_dir { Role::Temp } else { Role::Old };
        let ((), name) = with_fresh(role, |name| create(name)).at("create temp")?;
        Ok(Temp { dir, fd: None, name: Some(name), role, is_dir, made: None })
    }

    /// Records the inode made under the hidden name (seen as `st` right
    /// after it was made): [`install`] refuses anything else found there.
    pub fn made(&mut self, st: &Statx) {
        self.made = Some((st.stx_dev_major, st.stx_dev_minor, st.stx_ino));
    }

    /// Keeps a descriptor of a named temp (a tree's root), so that its
    /// filesystem can be synced after the install.
    pub fn keep_fd(&mut self, fd: OwnedFd) {
        self.fd = Some(fd);
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
            (None, Some(name)) => lstat(self.dir, name).at("stat temp"),
            (None, None) => unreachable!("a temp has a descriptor or a name"),
        }
    }

    /// Gives the temp a [`Role::Old`] name before it is swapped with the
    /// destination, whose old object will then live under that name: an
    /// unnamed file is linked, a file named as a plain temp (no
    /// `O_TMPFILE`) is renamed. A directory keeps its temp name: what it
    /// can replace is an empty directory.
    fn ensure_named(&mut self) -> Result<&CStr> {
        match (&self.name, self.role, self.is_dir) {
            (None, _, _) => {
                let ((), name) = with_fresh(Role::Old, |name| self.link_unnamed(name)).at("name temp file")?;
                self.name = Some(name);
                self.role = Role::Old;
            }
            (Some(tmp), Role::Temp, false) => {
                let tmp = tmp.clone();
                let dir = self.dir;
                let ((), name) = with_fresh(Role::Old, |name| {
                    match retry(|| rustix::fs::renameat_with(dir, &*tmp, dir, name, RenameFlags::NOREPLACE)) {
                        // No RENAME_NOREPLACE: a link never replaces.
                        Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => {
                            retry(|| rustix::fs::linkat(dir, &*tmp, dir, name, AtFlags::empty()))?;
                            let _ = tidy(|| rustix::fs::unlinkat(dir, &*tmp, AtFlags::empty()));
                            Ok(())
                        }
                        other => other,
                    }
                })
                .at("name temp file")?;
                self.name = Some(name);
                self.role = Role::Old;
            }
            _ => {}
        }
        Ok(self.name.as_deref().expect("just named"))
    }

    fn link_unnamed(&self, name: &CStr) -> rustix::io::Result<()> {
        let proc = proc_fd_path(self.fd.as_ref().expect("unnamed temps are files"));
        retry(|| rustix::fs::linkat(rustix::fs::CWD, &*proc, self.dir, name, AtFlags::SYMLINK_FOLLOW))
    }

    /// Puts the temp at `name` only if nothing is there (EEXIST otherwise).
    fn place_noreplace(&mut self, name: &CStr) -> rustix::io::Result<()> {
        let Some(tmp) = self.name.as_deref() else {
            return self.link_unnamed(name);
        };
        match retry(|| rustix::fs::renameat_with(self.dir, tmp, self.dir, name, RenameFlags::NOREPLACE)) {
            Ok(()) => {}
            // No RENAME_NOREPLACE here (NFS, old kernels): a file is linked,
            // which never replaces, then unlinked. A directory cannot be
            // linked, and looking before a plain rename is not atomic: the
            // kernel's EXDEV stands.
            Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) if !self.is_dir => {
                retry(|| rustix::fs::linkat(self.dir, tmp, self.dir, name, AtFlags::empty()))?;
                let _ = tidy(|| rustix::fs::unlinkat(self.dir, tmp, AtFlags::empty()));
            }
            Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => return Err(Errno::XDEV),
            Err(e) => return Err(e),
        }
        self.name = None;
        Ok(())
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            // Something renamed over our hidden name is not ours to remove.
            let theirs = self.made.is_some_and(|made| {
                lstat(self.dir, name).is_ok_and(|st| (st.stx_dev_major, st.stx_dev_minor, st.stx_ino) != made)
            });
            if !theirs {
                remove_ours(self.dir, name, self.is_dir);
            }
        }
    }
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
    let new = Box::new(tmp.stat()?);
    if tmp.made.is_some_and(|made| made != (new.stx_dev_major, new.stx_dev_minor, new.stx_ino)) {
        // Someone renamed another object over our hidden name: never install
        // it (and dropping `tmp` leaves it alone).
        return Err(Error::new(Errno::XDEV, "install: the hidden name was taken over"));
    }
    let mut sync = Some(durability.placement(dst, tmp.fd.as_ref().map(|fd| fd.as_fd()))?);
    let mut placed = None;
    for _ in 0..8 {
        if !dst_exists {
            match tmp.place_noreplace(name) {
                Ok(()) => placed = Some(Placed::Fresh),
                Err(Errno::EXIST) if !noreplace => dst_exists = true,
                Err(e) => return Err(Error::new(e, "install")),
            }
        } else {
            let tmp_name = tmp.ensure_named()?.to_owned();
            match retry(|| rustix::fs::renameat_with(dir, &*tmp_name, dir, name, RenameFlags::EXCHANGE)) {
                Ok(()) => {
                    tmp.name = None; // now names the old destination
                    let placed = Placed::Exchanged { backup: tmp_name };
                    let sync = sync.take().expect("once");
                    let since = installed_at(dir, name, is_dir);
                    let installed = Installed { dir, name, new, is_dir, placed, sync, since, tree };
                    check_replaced(&installed)?;
                    return installed.synced();
                }
                Err(Errno::NOENT) => dst_exists = false,
                Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => {
                    placed = Some(replace_without_exchange(&mut tmp, name)?)
                }
                Err(e) => return Err(Error::new(e, "install")),
            }
        }
        if let Some(placed) = placed {
            let sync = sync.take().expect("once");
            let since = installed_at(dir, name, is_dir);
            return Installed { dir, name, new, is_dir, placed, sync, since, tree }.synced();
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
/// so nothing can fail after this.
///
/// Returns whether the new name is durable: if the flush failed, the caller
/// keeps the source (it is installed for good, and cannot be undone).
pub fn replace(mut tmp: Temp<'_>, dst: &Entry, durability: Durability) -> Result<bool> {
    let dir = tmp.dir;
    let placement = durability.placement(dst, tmp.fd.as_ref().map(|fd| fd.as_fd()))?;
    let tmp_name = tmp.ensure_named()?.to_owned();
    retry(|| rustix::fs::renameat(dir, &*tmp_name, dir, &*dst.name)).at("install")?;
    tmp.name = None;
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

fn installed_at(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> Option<Since> {
    if !is_dir {
        return None;
    }
    let st = lstat(dir, name).ok()?;
    Some(Since { ctime: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec), wall: super::seen::now() })
}

/// After an exchange the old destination sits at the backup name. If it
/// changed after the preflight into something rename may not replace (a
/// directory for a file; a file or a non-empty directory for a directory),
/// fail, which undoes the exchange.
fn check_replaced(installed: &Installed<'_>) -> Result<()> {
    let Placed::Exchanged { backup } = &installed.placed else {
        return Ok(());
    };
    let old = lstat(installed.dir, backup).at("stat old destination")?;
    let old_is_dir = file_type(&old) == FileType::Directory;
    match (installed.is_dir, old_is_dir) {
        (false, true) => Err(Error::new(Errno::ISDIR, "destination is a directory")),
        (true, false) => Err(Error::new(Errno::NOTDIR, "destination is not a directory")),
        (true, true) if !super::tree::is_empty(installed.dir, backup)? => {
            Err(Error::new(Errno::NOTEMPTY, "destination directory is not empty"))
        }
        _ => Ok(()),
    }
}

fn replace_without_exchange(tmp: &mut Temp<'_>, name: &CStr) -> Result<Placed> {
    let dir = tmp.dir;
    let tmp_name = tmp.ensure_named()?.to_owned();
    // Directories cannot be hard-linked: an old (empty) one cannot be kept.
    let backup = match tmp.is_dir {
        true => Err(Errno::PERM),
        false => with_fresh(Role::Old, |b| retry(|| rustix::fs::linkat(dir, name, dir, b, AtFlags::empty()))),
    };
    retry(|| rustix::fs::renameat(dir, &*tmp_name, dir, name)).at("install")?;
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
            Placed::Exchanged { backup } | Placed::Linked { backup } => remove_old(self.dir, &backup, self.is_dir),
            Placed::Fresh | Placed::Overwritten => {}
        }
        // `placed` is now Overwritten: dropping `self` undoes nothing.
    }

    fn rollback(&mut self) {
        if matches!(self.placed, Placed::Overwritten) {
            return;
        }
        let (dir, name) = (self.dir, self.name);
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
                remove_old(dir, backup, self.is_dir);
            }
            Placed::Exchanged { backup } => {
                let exchange = || tidy(|| rustix::fs::renameat_with(dir, &**backup, dir, name, RenameFlags::EXCHANGE));
                if exchange().is_ok() {
                    match tidy(|| lstat(dir, backup)) {
                        Ok(st) if same_inode(&st, &self.new) => self.withdraw_or_keep(backup),
                        // A rename landed on the name between the check and
                        // the exchange, and was swapped out with ours: put it
                        // back; it superseded the old destination.
                        Ok(_) => {
                            if exchange().is_ok() {
                                remove_old(dir, backup, self.is_dir);
                            }
                        }
                        Err(_) => {}
                    }
                } else {
                    let _ = tidy(|| rustix::fs::renameat(dir, &**backup, dir, name));
                }
            }
            Placed::Linked { backup } => {
                let _ = tidy(|| rustix::fs::renameat(dir, &**backup, dir, name));
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
                if !(ours && self.withdraw(&aside))
                    && tidy(|| rustix::fs::renameat_with(dir, &*aside, dir, name, RenameFlags::NOREPLACE)).is_err()
                {
                    let _ = with_fresh(Role::Source, |n| tidy(|| rustix::fs::renameat(dir, &*aside, dir, n)));
                }
            }
            // No RENAME_NOREPLACE (NFS): remove it by name.
            Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => self.withdraw_or_keep(name),
            Err(_) => {}
        }
    }

    /// Withdraws our object at `at`; what others added to a tree meanwhile
    /// is kept under a name `clean` never removes.
    fn withdraw_or_keep(&self, at: &CStr) {
        let dir = self.dir;
        if !self.withdraw(at) && at != self.name {
            let _ = with_fresh(Role::Source, |n| tidy(|| rustix::fs::renameat(dir, at, dir, n)));
        }
    }

    /// Removes our object at `at`: a file, or a tree but for entries the
    /// source does not have (added by others while it was installed).
    /// Returns whether everything went.
    fn withdraw(&self, at: &CStr) -> bool {
        match (self.since, self.tree) {
            (Some(since), Some(tree)) if self.is_dir => tree.withdraw(self.dir, at, since),
            _ => {
                remove_ours(self.dir, at, self.is_dir);
                true
            }
        }
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
