//! Moving a directory tree, as `mv` does across devices, but atomically.
//!
//! 1. The copy is built under a hidden temp directory next to the
//!    destination ([`Temp::named`]), created 0700 so no one else can use a
//!    half-built tree. The walk ([`walk`](super::walk)) is file-descriptor
//!    relative and never follows a symlink, so a subdirectory swapped for a
//!    symlink meanwhile can never make xrename read, copy or delete
//!    anything outside the source tree.
//! 2. While copying, everything the later removal of the source needs is
//!    checked (write and search permission on every non-empty directory,
//!    sticky-bit ownership, no immutable or append-only entry, no mount
//!    point inside), as is the kernel's EINVAL for a destination inside the
//!    source (reachable through a bind mount). Any failure drops the temp
//!    tree and changes nothing.
//! 3. Inside the tree hard links stay hard links, holes stay holes, every
//!    object type is recreated, and a directory gets its owner, xattrs
//!    (default ACLs included), mode and times after its children are written.
//! 4. One `syncfs` of the destination filesystem makes the whole tree
//!    durable before it gets its name: one barrier instead of one fsync per
//!    file. Then one atomic rename installs it
//!    ([`install`](super::install)), and the destination directory is fsynced.
//! 5. The source is renamed aside to a hidden name in its own directory (one
//!    atomic step: the source name is gone at once), then deleted entry by
//!    entry, each only if the installed copy has the same entry (same type;
//!    for files same size and mtime). Anything that changed during the move
//!    is kept and put back under the source name: never deleted unseen.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Access, AtFlags, FileType, Mode, OFlags, Statx, StatxAttributes};
use rustix::io::Errno;

use super::check::{file_type, fstat, lstat, same_inode};
use super::error::{At, Error, Result, retry, tidy};
use super::install::Temp;
use super::path::Entry;
use super::walk::{Id, TREE_CHANGED, Walk, id, open_dir, open_dir_noatime};
use super::{Options, Report, copy, meta, node, source};

/// Copies the directory `src` (seen as `st`) into a new hidden temp tree in
/// `dst`'s directory. Returns the temp, ready to install.
pub fn copy_tree<'d>(src: &Entry, st: &Statx, dst: &'d Entry, opts: &Options, report: &mut Report) -> Result<Temp<'d>> {
    let src_root = match open_dir(src.dir.as_fd(), &src.name) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Err(Error::new(Errno::AGAIN, TREE_CHANGED)),
        Err(e) => return Err(Error::new(e, "open source directory")),
    };
    if !same_inode(&fstat(src_root.as_fd()).at("stat source")?, st) {
        return Err(Error::new(Errno::AGAIN, TREE_CHANGED));
    }
    let dst_dir = dst.dir.as_fd();
    let dst_parent = id(&fstat(dst_dir).at("stat destination directory")?);
    let mut tmp =
        Temp::named(dst_dir, true, |n| retry(|| rustix::fs::mkdirat(dst_dir, n, Mode::from_raw_mode(0o700))))?;
    let tmp_root = open_dir(dst_dir, tmp.name().expect("named")).at("open temp directory")?;
    private(tmp_root.as_fd())?;
    let tmp_id = id(&fstat(tmp_root.as_fd()).at("stat temp directory")?);
    tmp.keep_fd(rustix::io::fcntl_dupfd_cloexec(&tmp_root, 0).at("dup")?);

    let walk = Walk::new([src_root, tmp_root])?;
    let progress = opts.progress.as_deref();
    let mut cx = Copy { walk, links: HashMap::new(), path: Vec::new(), report, progress };
    cx.check_dir(dst_parent)?;
    loop {
        let Some(name) = cx.walk.next_name() else {
            // A directory is complete: its metadata now, children first.
            let Some((frame, [s, t])) = cx.walk.pop()? else { break };
            meta::apply(s.as_fd(), t.as_fd(), &frame.st)?;
            cx.report.files += 1;
            let keep = cx.path.len().saturating_sub(frame.name.as_bytes().len() + 1);
            cx.path.truncate(keep);
            if cx.walk.is_done() {
                if opts.fsync {
                    retry(|| rustix::fs::syncfs(t.as_fd())).at("syncfs destination")?;
                }
                break;
            }
            continue;
        };
        cx.entry(name, dst_parent, tmp_id)?;
    }
    Ok(tmp)
}

struct Copy<'r> {
    walk: Walk<2>,
    /// Files with several links already copied: identity -> path in the copy.
    links: HashMap<Id, CString>,
    /// Path of the current directory inside the copy, for `linkat`.
    path: Vec<u8>,
    report: &'r mut Report,
    progress: Option<&'r std::sync::atomic::AtomicU64>,
}

impl Copy<'_> {
    /// Checks the current source directory can later be emptied and removed.
    fn check_dir(&mut self, dst_parent: Id) -> Result<()> {
        let top = self.walk.top();
        if top.ids[0] == dst_parent {
            return Err(Error::new(Errno::INVAL, "destination inside source"));
        }
        let st = top.st.clone();
        let non_empty = self.walk.has_names();
        let fd = self.walk.fd(0)?;
        if non_empty {
            retry(|| rustix::fs::accessat(fd, c".", Access::WRITE_OK | Access::EXEC_OK, AtFlags::EACCESS))
                .at("permission on source subdirectory")?;
        }
        if locked(&st) {
            return Err(Error::new(Errno::PERM, "immutable or append-only source"));
        }
        Ok(())
    }

    fn entry(&mut self, name: CString, dst_parent: Id, tmp_id: Id) -> Result<()> {
        let parent_st = self.walk.top().st.clone();
        let sdir = self.walk.fd(0)?;
        let st = match lstat(sdir, &name) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()), // removed meanwhile: not part of the move
            Err(e) => return Err(Error::new(e, "stat source entry")),
        };
        super::check::sticky(&parent_st, &st)?;
        if locked(&st) {
            return Err(Error::new(Errno::PERM, "immutable or append-only source"));
        }
        match file_type(&st) {
            FileType::Directory => self.enter(name, &st, dst_parent, tmp_id),
            FileType::RegularFile => self.file(name, &st),
            _ => {
                let [s, t] = self.walk.fds()?;
                node::create(s, &name, &st, t, &name).at("create node")?;
                node::apply_meta(s, &name, &st, t, &name)?;
                self.report.files += 1;
                Ok(())
            }
        }
    }

    fn enter(&mut self, name: CString, st: &Statx, dst_parent: Id, tmp_id: Id) -> Result<()> {
        if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
            && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        {
            return Err(Error::new(Errno::BUSY, "mount point inside source"));
        }
        if id(st) == tmp_id || self.walk.on_path(0, id(st)) {
            return Err(Error::new(Errno::INVAL, "destination inside source"));
        }
        let s = match open_dir(self.walk.fd(0)?, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            Err(Errno::NOTDIR | Errno::LOOP) => return Err(Error::new(Errno::AGAIN, TREE_CHANGED)),
            Err(e) => return Err(Error::new(e, "open source subdirectory")),
        };
        if !same_inode(&fstat(s.as_fd()).at("stat source subdirectory")?, st) {
            return Err(Error::new(Errno::AGAIN, TREE_CHANGED));
        }
        let tdir = self.walk.fd(1)?;
        retry(|| rustix::fs::mkdirat(tdir, &name, Mode::from_raw_mode(0o700))).at("create directory")?;
        let t = open_dir(tdir, &name).at("open new directory")?;
        private(t.as_fd())?;
        self.path.extend_from_slice(name.as_bytes());
        self.path.push(b'/');
        self.walk.push(name, [s, t])?;
        self.check_dir(dst_parent)
    }

    fn file(&mut self, name: CString, st: &Statx) -> Result<()> {
        let key = id(st);
        if st.stx_nlink > 1 {
            if let Some(first) = self.links.get(&key) {
                let (root, tdir) = self.walk.root_and_current(1)?;
                let (parent, last) = open_parent(root, first)?;
                return retry(|| rustix::fs::linkat(&parent, &*last, tdir, &*name, AtFlags::empty())).at("link");
            }
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        let sdir = self.walk.fd(0)?;
        let s = match retry(|| rustix::fs::openat(sdir, &*name, flags, Mode::empty())) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()), // removed meanwhile: not part of the move
            Err(e) => return Err(Error::new(e, "open source file")),
        };
        let st = fstat(s.as_fd()).at("stat source file")?;
        if id(&st) != key {
            return Err(Error::new(Errno::AGAIN, TREE_CHANGED));
        }
        let t = new_file(self.walk.fd(1)?, &name)?;
        copy::copy_data(s.as_fd(), t.as_fd(), st.stx_size, &mut self.report.bytes, self.progress, false)?;
        meta::apply(s.as_fd(), t.as_fd(), &st)?;
        // Changed while it was copied: the copy may be torn. Start over.
        if source::file_changed(&fstat(s.as_fd()).at("stat source file")?, &st) {
            return Err(Error::new(Errno::AGAIN, TREE_CHANGED));
        }
        self.report.files += 1;
        if st.stx_nlink > 1 {
            let mut p = self.path.clone();
            p.extend_from_slice(name.as_bytes());
            self.links.insert(key, CString::new(p).expect("no NUL"));
        }
        Ok(())
    }
}

/// Makes a directory of the copy 0700 whatever the umask, so that it can be
/// filled; its own mode comes when it is complete.
fn private(dir: BorrowedFd<'_>) -> Result<()> {
    retry(|| rustix::fs::fchmod(dir, Mode::from_raw_mode(0o700))).at("chmod temp directory")
}

/// Opens the parent of `path` (relative to `root`, inside the copy) one
/// component at a time, so that no path length limit applies however deep.
fn open_parent(root: BorrowedFd<'_>, path: &CStr) -> Result<(OwnedFd, CString)> {
    let bytes = path.to_bytes();
    let (dirs, last) = match bytes.iter().rposition(|&b| b == b'/') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (&bytes[..0], bytes),
    };
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = retry(|| rustix::fs::openat(root, c".", flags, Mode::empty())).at("open copy")?;
    for part in dirs.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        let part = CString::new(part).expect("no NUL");
        fd = retry(|| rustix::fs::openat(&fd, &*part, flags, Mode::empty())).at("open copy")?;
    }
    Ok((fd, CString::new(last).expect("no NUL")))
}

fn new_file(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd> {
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    retry(|| rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))).at("create file")
}

fn locked(st: &Statx) -> bool {
    let locked = StatxAttributes::IMMUTABLE | StatxAttributes::APPEND;
    st.stx_attributes.intersects(locked & st.stx_attributes_mask)
}

/// Whether the directory tree `dir`/`name` contains the directory `target`
/// (directories only are visited, nothing is changed). Used when source and
/// destination are one filesystem seen through two mounts, where the
/// destination may be inside the source without `..` ever leading there.
pub fn contains_dir(dir: BorrowedFd<'_>, name: &CStr, target: Id) -> Result<bool> {
    // The copy has not seen these directories yet: keep their atimes.
    let root = open_dir_noatime(dir, name).at("open source directory")?;
    let mut walk = Walk::new([root])?;
    if walk.top().ids[0] == target {
        return Ok(true);
    }
    while !walk.is_done() {
        let Some(n) = walk.next_name() else {
            walk.pop()?;
            continue;
        };
        let d = walk.fd(0)?;
        let Ok(st) = lstat(d, &n) else { continue };
        if file_type(&st) != FileType::Directory {
            continue;
        }
        if id(&st) == target {
            return Ok(true);
        }
        if let Ok(sub) = open_dir_noatime(d, &n) {
            walk.push(n, [sub])?;
        }
    }
    Ok(false)
}

/// Whether the directory `name` in `dir` is empty.
pub fn is_empty(dir: BorrowedFd<'_>, name: &CStr) -> Result<bool> {
    let fd = open_dir(dir, name).at("open directory")?;
    Ok(super::walk::read_names(fd.as_fd())?.is_empty())
}

/// Removes a tree xrename made itself (a temp or a rolled-back copy).
pub fn remove_tree(dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    let root = open_dir(dir, name).at("open temp directory")?;
    let _ = rustix::fs::fchmod(root.as_fd(), Mode::from_raw_mode(0o700));
    let dev = fstat(root.as_fd()).map(|st| (st.stx_dev_major, st.stx_dev_minor)).at("stat temp directory")?;
    let mut walk = Walk::new([root])?;
    loop {
        match walk.next_name() {
            Some(n) => {
                let d = walk.fd(0)?;
                match retry(|| rustix::fs::unlinkat(d, &*n, AtFlags::empty())) {
                    Err(Errno::ISDIR) => {
                        let sub = open_dir(d, &n).at("open temp subdirectory")?;
                        // Something mounted in it is not ours: never descend.
                        let st = fstat(sub.as_fd()).at("stat temp subdirectory")?;
                        if (st.stx_dev_major, st.stx_dev_minor) != dev {
                            return Err(Error::new(Errno::BUSY, "mount point in temp directory"));
                        }
                        // Ours, so we may open it up to empty it.
                        let _ = rustix::fs::fchmod(sub.as_fd(), Mode::from_raw_mode(0o700));
                        walk.push(n, [sub])?;
                    }
                    r => r.at("remove temp entry")?,
                }
            }
            None => {
                let Some((frame, _)) = walk.pop()? else { break };
                if walk.is_done() {
                    break;
                }
                let d = walk.fd(0)?;
                retry(|| rustix::fs::unlinkat(d, &*frame.name, AtFlags::REMOVEDIR)).at("remove temp dir")?;
            }
        }
    }
    retry(|| rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)).at("remove temp dir")
}

/// Removes the moved source directory `src` (seen as `moved`), whose copy
/// is installed as `dst`: taken from its name first ([`source::take`]),
/// then deleted entry by entry, keeping whatever the copy does not have.
pub fn remove_source(src: &Entry, moved: &Statx, dst: &Entry, opts: &Options) -> Result<()> {
    let sdir = src.dir.as_fd();
    let aside = match source::take(src, moved)? {
        source::Taken::Gone => return Ok(()),
        source::Taken::InPlace => None,
        source::Taken::Aside(name) => Some(name),
    };
    if opts.fsync && src.syncable {
        let _ = retry(|| rustix::fs::fsync(sdir));
    }
    // From here the move has happened; what follows only tidies up, and
    // cannot undo it: the source is already (partly) gone.
    let victim = aside.as_deref().unwrap_or(&src.name);
    let deleted = delete_copied(sdir, victim, dst);
    if let (true, Some(aside)) = (deleted.kept, &aside) {
        // What changed during the move goes back under the source name. If
        // the name is taken, it stays at the `.xrename-src-*` name, which
        // `xrename clean` reports and never removes. What only failed to be
        // deleted stays there too: the copy has all of it.
        source::put_back(sdir, aside, &src.name);
    }
    if opts.fsync && src.syncable {
        let _ = retry(|| rustix::fs::fsync(sdir));
    }
    Ok(())
}

/// Removes the installed copy `dir`/`name` of the tree `original` (intact,
/// since the move is being undone) during a rollback, entry by entry, and
/// only entries that are ours: untouched since `since`, the moment the copy
/// was installed (an older ctime), or the same as the original's entry.
/// Whatever others added to the visible tree or changed in it stays.
/// Returns whether the whole copy went.
pub fn remove_copy(dir: BorrowedFd<'_>, name: &CStr, since: (i64, u32), original: &Entry) -> bool {
    let ours = |st: &Statx, orig: Option<&Statx>| {
        (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec) < since || orig.is_some_and(|o| same_shape(st, o))
    };
    let pruned = prune(dir, name, original, ours);
    if pruned.kept || pruned.errors {
        return false;
    }
    // Everything in it was ours; if removing the root fails (a directory we
    // gave its final read-only mode, say), remove the rest as ours.
    tidy(|| rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)).is_ok() || remove_tree(dir, name).is_ok()
}

/// Deletes `dir`/`name`, an old source tree, entry by entry where the copy
/// at `dst` has the same entry.
fn delete_copied(dir: BorrowedFd<'_>, name: &CStr, dst: &Entry) -> Pruned {
    let mut pruned = prune(dir, name, dst, |st, copy| copy.is_some_and(|c| same_shape(st, c)));
    match tidy(|| rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)) {
        Ok(()) => {}
        Err(Errno::NOTEMPTY | Errno::EXIST) if pruned.kept || pruned.errors => {}
        Err(_) => pruned.errors = true,
    }
    pruned
}

/// How pruning a tree went.
#[derive(Debug, Default)]
struct Pruned {
    /// Entries were kept because they are not to be deleted.
    kept: bool,
    /// Some step failed even when tried again.
    errors: bool,
}

/// Deletes the entries of the tree `dir`/`name` (not its root) that `delete`
/// accepts, given the entry and the one of the same name in `reference` (a
/// tree with the same layout), and the directories that end up empty. A
/// directory is entered only if `reference` has one of that name. Another
/// name of an inode already deleted here is deleted too (removing the first
/// name changed its ctime, not what it is). Each step is a cleanup step
/// ([`tidy`]).
fn prune(
    dir: BorrowedFd<'_>,
    name: &CStr,
    reference: &Entry,
    delete: impl Fn(&Statx, Option<&Statx>) -> bool,
) -> Pruned {
    let mut out = Pruned::default();
    let walk = match (tidy(|| open_dir(dir, name)), tidy(|| open_dir(reference.dir.as_fd(), &reference.name))) {
        (Ok(root), Ok(other)) => Walk::new([root, other]).ok(),
        _ => None,
    };
    let Some(mut walk) = walk else {
        out.errors = true;
        return out;
    };
    let mut unlinked = std::collections::HashSet::new();
    loop {
        if let Some(n) = walk.next_name() {
            let Ok([d, r]) = walk.fds() else {
                out.errors = true;
                break;
            };
            let st = match tidy(|| lstat(d, &n)) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(_) => {
                    out.errors = true;
                    continue;
                }
            };
            let other = match tidy(|| lstat(r, &n)) {
                Ok(o) => Some(o),
                Err(Errno::NOENT) => None,
                Err(_) => {
                    out.errors = true;
                    continue;
                }
            };
            if file_type(&st) == FileType::Directory {
                if !other.is_some_and(|o| file_type(&o) == FileType::Directory) {
                    out.kept = true;
                    continue;
                }
                let (Ok(a), Ok(b)) = (tidy(|| open_dir(d, &n)), tidy(|| open_dir(r, &n))) else {
                    out.errors = true;
                    continue;
                };
                match tidy(|| fstat(a.as_fd())) {
                    Ok(now) if same_inode(&now, &st) => out.errors |= walk.push(n, [a, b]).is_err(),
                    Ok(_) => out.kept = true, // replaced meanwhile
                    Err(_) => out.errors = true,
                }
            } else if unlinked.contains(&id(&st)) || delete(&st, other.as_ref()) {
                let gone = tidy(|| rustix::fs::unlinkat(d, &*n, AtFlags::empty())).is_ok();
                if gone && st.stx_nlink > 1 {
                    unlinked.insert(id(&st));
                }
                out.errors |= !gone;
            } else {
                out.kept = true;
            }
            continue;
        }
        match walk.pop() {
            Ok(Some((frame, _))) if !walk.is_done() => match walk.fd(0) {
                Ok(d) => match tidy(|| rustix::fs::unlinkat(d, &*frame.name, AtFlags::REMOVEDIR)) {
                    Ok(()) => {}
                    Err(Errno::NOTEMPTY | Errno::EXIST) if out.kept || out.errors => {}
                    Err(_) => out.errors = true,
                },
                Err(_) => out.errors = true,
            },
            Ok(_) => break,
            Err(_) => {
                out.errors = true;
                break;
            }
        }
    }
    out
}

/// Whether a source entry and its copy look the same: same type, and for
/// files and symlinks the same size and mtime.
fn same_shape(s: &Statx, c: &Statx) -> bool {
    let kind = file_type(s);
    kind == file_type(c)
        && match kind {
            FileType::RegularFile | FileType::Symlink => {
                s.stx_size == c.stx_size
                    && s.stx_mtime.tv_sec == c.stx_mtime.tv_sec
                    && s.stx_mtime.tv_nsec == c.stx_mtime.tv_nsec
            }
            _ => true,
        }
}
