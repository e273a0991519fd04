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
use super::install::{Since, Temp, Tree};
use super::path::Entry;
use super::seen::{self, Records, Seen, Verdict, same_content};
use super::walk::{Id, TREE_CHANGED, Walk, id, open_dir, open_dir_noatime};
use super::writers;
use super::{Options, Report, copy, meta, node, source};

/// Files whose writers are looked for at once (one probe a batch); their
/// descriptors stay open until then.
const WRITER_BATCH: usize = 32;

/// A tree copied into a temp, ready to install.
pub struct CopiedTree<'d> {
    /// The copy.
    pub tmp: Temp<'d>,
    /// What the source root was when the copy began.
    pub seen: Seen,
    /// What every entry below it was when it was copied.
    pub records: Records,
}

/// Copies the directory `src` (seen as `st`) into a new hidden temp tree in
/// `dst`'s directory. Returns the temp, ready to install, and what was copied.
pub fn copy_tree<'d>(
    src: &Entry,
    st: &Statx,
    dst: &'d Entry,
    opts: &Options,
    report: &mut Report,
) -> Result<CopiedTree<'d>> {
    let src_root = match open_dir(src.dir.as_fd(), &src.name) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Err(Error::changed(TREE_CHANGED)),
        Err(e) => return Err(Error::new(e, "open source directory")),
    };
    let started = seen::now();
    let root_st = fstat(src_root.as_fd()).at("stat source")?;
    if !same_inode(&root_st, st) {
        return Err(Error::changed(TREE_CHANGED));
    }
    let root_seen = Seen::record(&root_st, started);
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
    let size_limit = copy::size_limit();
    let mut cx = Copy {
        walk,
        links: HashMap::new(),
        path: Vec::new(),
        report,
        progress,
        records: Records::default(),
        size_limit,
    };
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
    let mut records = cx.records;
    records.seal();
    Ok(CopiedTree { tmp, seen: root_seen, records })
}

struct Copy<'r> {
    walk: Walk<2>,
    /// Files with several links already copied: identity -> path in the copy.
    links: HashMap<Id, CString>,
    /// Path of the current directory inside the copy, for `linkat`.
    path: Vec<u8>,
    report: &'r mut Report,
    progress: Option<&'r std::sync::atomic::AtomicU64>,
    /// What each entry was when it was copied.
    records: Records,
    /// The process's file size limit.
    size_limit: Option<u64>,
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
        let started = seen::now();
        let st = match lstat(sdir, &name) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()), // removed meanwhile: not part of the move
            Err(e) => return Err(Error::new(e, "stat source entry")),
        };
        // Something mounted on an entry (a bind-mounted file or directory)
        // can be neither copied for what it hides nor removed: as rename.
        if is_mount_root(&st) {
            return Err(Error::new(Errno::BUSY, "mount point inside source"));
        }
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
                self.records.add_copy(&lstat(t, &name).at("stat new node")?);
                node::apply_meta(s, &name, &st, t, &name)?;
                self.records.add(&Seen::record(&st, started));
                self.report.files += 1;
                Ok(())
            }
        }
    }

    fn enter(&mut self, name: CString, st: &Statx, dst_parent: Id, tmp_id: Id) -> Result<()> {
        if id(st) == tmp_id || self.walk.on_path(0, id(st)) {
            return Err(Error::new(Errno::INVAL, "destination inside source"));
        }
        let s = match open_dir(self.walk.fd(0)?, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            Err(Errno::NOTDIR | Errno::LOOP) => return Err(Error::changed(TREE_CHANGED)),
            Err(e) => return Err(Error::new(e, "open source subdirectory")),
        };
        if !same_inode(&fstat(s.as_fd()).at("stat source subdirectory")?, st) {
            return Err(Error::changed(TREE_CHANGED));
        }
        let tdir = self.walk.fd(1)?;
        retry(|| rustix::fs::mkdirat(tdir, &name, Mode::from_raw_mode(0o700))).at("create directory")?;
        let t = open_dir(tdir, &name).at("open new directory")?;
        private(t.as_fd())?;
        self.path.extend_from_slice(name.as_bytes());
        self.path.push(b'/');
        // Recorded as it is before its names are read: an entry added or
        // removed later changes its mtime and ctime.
        let started = seen::now();
        self.walk.push(name, [s, t])?;
        self.records.add(&Seen::record(&self.walk.top().st, started));
        self.records.add_copy_id(self.walk.top().ids[1]);
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
        let sdir = self.walk.fd(0)?;
        let s = match copy::open_source(sdir, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()), // removed meanwhile: not part of the move
            Err(e) => return Err(Error::new(e, "open source file")),
        };
        let started = seen::now();
        let st = fstat(s.as_fd()).at("stat source file")?;
        if id(&st) != key {
            return Err(Error::changed(TREE_CHANGED));
        }
        let seen = Seen::record(&st, started);
        copy::within_limit(st.stx_size, self.size_limit)?;
        let t = new_file(self.walk.fd(1)?, &name)?;
        self.records.add_copy(&fstat(t.as_fd()).at("stat new file")?);
        copy::copy_data(s.as_fd(), t.as_fd(), st.stx_size, &mut self.report.bytes, self.progress, false)?;
        meta::apply(s.as_fd(), t.as_fd(), &st)?;
        // Changed while it was copied: the copy may be torn. Start over.
        if !seen.unchanged(&fstat(s.as_fd()).at("stat source file")?) {
            return Err(Error::changed(TREE_CHANGED));
        }
        self.records.add(&seen);
        self.report.files += 1;
        if st.stx_nlink > 1 {
            let mut p = self.path.clone();
            p.extend_from_slice(name.as_bytes());
            self.links.insert(key, CString::new(p).expect("no NUL"));
        }
        Ok(())
    }
}

fn is_mount_root(st: &Statx) -> bool {
    st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
        && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
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

/// Refuses the move (EXDEV, step `open for writing`) if a regular file of
/// the taken source tree is open for writing or mapped shared-writable by
/// any process. Made once the tree has left its name, so no one can open a
/// file of it by path any more (but through a working directory or an
/// open directory inside it): a writer that opened one during the copy is
/// seen here, before anything is deleted.
pub fn check_writers(src: &Entry, taken: &source::Taken) -> Result<()> {
    let name = match taken {
        source::Taken::Aside(name) => name.as_c_str(),
        source::Taken::InPlace => &src.name,
    };
    // The move has happened but for the deletion: a transient failure here
    // is tried again rather than undoing it.
    let root = tidy(|| open_dir_noatime(src.dir.as_fd(), name)).at("open source directory")?;
    let mut walk = Walk::new([root])?;
    // A quarter of the free descriptors, at most WRITER_BATCH, at least one.
    let batch_len = (super::walk::free_descriptors() / 4).clamp(1, WRITER_BATCH);
    let mut batch: Vec<OwnedFd> = Vec::new();
    while !walk.is_done() {
        let Some(n) = walk.next_name() else {
            walk.pop()?;
            continue;
        };
        let d = walk.fd(0)?;
        let st = match tidy(|| lstat(d, &n)) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(Error::new(e, "stat source entry")),
        };
        match file_type(&st) {
            FileType::Directory => {
                let sub = tidy(|| open_dir_noatime(d, &n)).at("open source subdirectory")?;
                walk.push(n, [sub])?;
            }
            FileType::RegularFile => {
                // Whatever is opened there is probed: anything but a
                // regular file answers "unknown", so EXDEV.
                batch.push(tidy(|| copy::open_source(d, &n)).at("open source file")?);
                if batch.len() >= batch_len {
                    writers::check(&batch.iter().map(|fd| fd.as_fd()).collect::<Vec<_>>())?;
                    batch.clear();
                }
            }
            _ => {}
        }
    }
    writers::check(&batch.iter().map(|fd| fd.as_fd()).collect::<Vec<_>>())
}

/// Deletes the taken source tree `src` entry by entry, keeping whatever is
/// not provably what was copied into `dst`; what is kept goes back under
/// the source name. Cannot fail: the move has happened.
pub fn delete_taken(
    src: &Entry,
    taken: source::Taken,
    seen: &Seen,
    records: &Records,
    dst: &Entry,
    opts: &Options,
    report: &mut Report,
) {
    let sdir = src.dir.as_fd();
    let aside = match taken {
        source::Taken::InPlace => None,
        source::Taken::Aside(name) => Some(name),
    };
    if opts.fsync && src.syncable {
        let _ = retry(|| rustix::fs::fsync(sdir));
    }
    // From here the move has happened; what follows only tidies up, and
    // cannot undo it: the source is already (partly) gone.
    let victim = aside.as_deref().unwrap_or(&src.name);
    let deleted = delete_copied(sdir, victim, dst, seen, records);
    match (&aside, deleted.kept, deleted.errors) {
        (_, false, false) => {}
        // What changed during the move goes back under the source name. If
        // the name is taken, it stays at the `.xrename-src-*` name, which
        // `xrename clean` reports and never removes.
        (Some(aside), true, _) => match source::put_back(sdir, aside, &src.name) {
            true => report.leftover = Some(src.name.clone()),
            false => report.leftover = Some(aside.clone()),
        },
        // What only failed to be deleted stays there: the copy has all of it.
        (Some(aside), false, true) => report.leftover = Some(aside.clone()),
        (None, _, _) => report.leftover = Some(src.name.clone()),
    }
    if opts.fsync && src.syncable {
        let _ = retry(|| rustix::fs::fsync(sdir));
    }
}

/// Removes the installed copy `dir`/`name` of `tree` during a rollback,
/// entry by entry, and only entries that are ours: made by xrename in the
/// copy, and untouched since the install (an older ctime) or the same as
/// the original's entry. Whatever others added to the visible tree, or
/// changed in it, stays. When the original is gone (another rename took
/// it first), the copy is judged alone. Returns whether the whole copy went.
pub fn remove_copy(dir: BorrowedFd<'_>, name: &CStr, since: Since, tree: &Tree<'_>) -> bool {
    let alone = matches!(lstat(tree.original.dir.as_fd(), &tree.original.name), Err(Errno::NOENT));
    let rule = Withdraw { since, alone, records: tree.records };
    let pruned = prune(dir, name, tree.original, &rule, &mut PruneState::default());
    if pruned.kept || pruned.errors {
        return false;
    }
    // Everything in it was ours; if removing the root fails (a directory we
    // gave its final read-only mode, say), remove the rest as ours.
    tidy(|| rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)).is_ok() || remove_tree(dir, name).is_ok()
}

/// Deletes `dir`/`name`, an old source tree, entry by entry where the
/// entry is provably what was copied into `dst`. A step that fails is tried
/// again in a later pass, a few times.
fn delete_copied(dir: BorrowedFd<'_>, name: &CStr, dst: &Entry, seen: &Seen, records: &Records) -> Pruned {
    let rule = Delete { records };
    let mut pruned = Pruned::default();
    let mut state = PruneState::default();
    for _ in 0..TIDY_PASSES {
        pruned = prune(dir, name, dst, &rule, &mut state);
        if !pruned.errors {
            break;
        }
    }
    // The root: rename changed its ctime; its mode and owner must be as copied.
    let root_unchanged = tidy(|| lstat(dir, name)).is_ok_and(|now| seen.same_mode_and_owner(&now));
    if !root_unchanged {
        pruned.kept = true;
        return pruned;
    }
    match tidy(|| rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)) {
        Ok(()) => {}
        Err(Errno::NOTEMPTY | Errno::EXIST) if pruned.kept || pruned.errors => {}
        Err(_) => pruned.errors = true,
    }
    pruned
}

/// Passes over an old source tree whose deletion failed somewhere.
const TIDY_PASSES: usize = 3;

/// How pruning a tree went.
#[derive(Debug, Default)]
struct Pruned {
    /// Entries were kept because they are not to be deleted.
    kept: bool,
    /// Some step failed even when tried again.
    errors: bool,
}

/// What earlier passes of [`prune`] over the same tree did, which changed
/// what later passes see.
#[derive(Debug, Default)]
struct PruneState {
    /// Names of multi-link inodes deleted, by inode: each changed the
    /// inode's ctime and link count.
    unlinked: HashMap<Id, u32>,
    /// Directories judged removable before their entries were touched
    /// (deleting entries changed their times).
    approved: std::collections::HashSet<Id>,
}

/// What [`prune`] may delete.
trait Rule {
    /// Whether the non-directory `name` in `d` (seen as `st`) may be
    /// deleted, given `other`, the entry of that name in the reference
    /// directory `r`, and how many other names of its inode were deleted.
    fn delete(
        &self,
        d: BorrowedFd<'_>,
        r: BorrowedFd<'_>,
        name: &CStr,
        st: &Statx,
        other: Option<&Statx>,
        unlinked: u32,
    ) -> bool;
    /// Whether the directory seen as `st` may be removed once emptied
    /// (judged before any of its entries is touched).
    fn remove_dir(&self, st: &Statx) -> bool;
    /// Whether the tree may be judged alone when the reference is gone.
    fn alone(&self) -> bool {
        false
    }
}

/// Withdrawing our installed copy: what is ours goes.
struct Withdraw<'a> {
    since: Since,
    alone: bool,
    records: &'a Records,
}

impl Rule for Withdraw<'_> {
    fn delete(
        &self,
        _: BorrowedFd<'_>,
        _: BorrowedFd<'_>,
        _: &CStr,
        st: &Statx,
        orig: Option<&Statx>,
        unlinked: u32,
    ) -> bool {
        let ctime = (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec);
        self.records.is_copy(st)
            // Another name of an inode already deleted here: removing the
            // first name changed its ctime, not what it is.
            && (unlinked > 0
                || ctime < self.since.ctime
                || orig.is_some_and(|o| same_shape(st, o))
                // Walked alone (the original was taken by another rename):
                // untouched since the install, by the wall clock.
                || (self.alone && ctime <= self.since.wall))
    }

    fn remove_dir(&self, _: &Statx) -> bool {
        true
    }

    fn alone(&self) -> bool {
        true
    }
}

/// Deleting the old source: what is provably what was copied goes.
struct Delete<'a> {
    records: &'a Records,
}

impl Rule for Delete<'_> {
    fn delete(
        &self,
        d: BorrowedFd<'_>,
        r: BorrowedFd<'_>,
        name: &CStr,
        st: &Statx,
        copy: Option<&Statx>,
        unlinked: u32,
    ) -> bool {
        let Some(copy) = copy.filter(|c| file_type(c) == file_type(st)) else {
            return false; // not in the copy: it appeared during the move
        };
        match self.records.judge(st, unlinked) {
            Verdict::Unchanged => true,
            Verdict::Racy => same_as_copy(d, r, name, st, copy),
            Verdict::Changed | Verdict::Unknown => false,
        }
    }

    fn remove_dir(&self, st: &Statx) -> bool {
        matches!(self.records.judge(st, 0), Verdict::Unchanged | Verdict::Racy)
    }
}

/// For a racy entry: whether the source entry holds what its copy holds.
/// Reading the copy may change its atime: it gets back its times.
fn same_as_copy(d: BorrowedFd<'_>, r: BorrowedFd<'_>, name: &CStr, st: &Statx, copy: &Statx) -> bool {
    let same = same_data(d, r, name, st, copy);
    if matches!(file_type(st), FileType::RegularFile | FileType::Symlink) {
        let flags = AtFlags::SYMLINK_NOFOLLOW;
        let _ = retry(|| rustix::fs::utimensat(r, name, &meta::timestamps(copy), flags));
    }
    same
}

fn same_data(d: BorrowedFd<'_>, r: BorrowedFd<'_>, name: &CStr, st: &Statx, copy: &Statx) -> bool {
    match file_type(st) {
        FileType::RegularFile => {
            if st.stx_size != copy.stx_size {
                return false;
            }
            let (Ok(a), Ok(b)) = (tidy(|| copy::open_source(d, name)), tidy(|| copy::open_source(r, name))) else {
                return false;
            };
            matches!(same_content(a.as_fd(), b.as_fd(), st.stx_size), Ok(true))
        }
        FileType::Symlink => {
            let target = |dir| tidy(|| rustix::fs::readlinkat(dir, name, Vec::new()));
            matches!((target(d), target(r)), (Ok(a), Ok(b)) if a == b)
        }
        // Nothing but the metadata compared already.
        _ => true,
    }
}

/// Deletes the entries of the tree `dir`/`name` (not its root) that `rule`
/// accepts, given the entry and the one of the same name in `reference` (a
/// tree with the same layout), and the directories that end up empty. A
/// directory is entered only if `reference` has one of that name and it is
/// on the root's device. Each step is a cleanup step ([`tidy`]).
/// `state` carries what earlier passes did.
fn prune(dir: BorrowedFd<'_>, name: &CStr, reference: &Entry, rule: &dyn Rule, state: &mut PruneState) -> Pruned {
    let mut out = Pruned::default();
    // Without a reference (the original of a copy being withdrawn was taken
    // by another rename), the tree is walked alone and judged by itself.
    let other = tidy(|| open_dir(reference.dir.as_fd(), &reference.name));
    let has_ref = !matches!(other, Err(Errno::NOENT) if rule.alone());
    let walk = match (tidy(|| open_dir(dir, name)), other) {
        (Ok(root), Ok(other)) => tidy_walk(root, other),
        (Ok(root), Err(_)) if !has_ref => {
            rustix::io::fcntl_dupfd_cloexec(&root, 0).ok().and_then(|d| tidy_walk(root, d))
        }
        _ => None,
    };
    let Some(mut walk) = walk else {
        out.errors = true;
        return out;
    };
    let dev = (walk.top().st.stx_dev_major, walk.top().st.stx_dev_minor);
    // Directories on the current path that must stay (changed meanwhile).
    let mut keep_dirs: Vec<bool> = vec![true];
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
            let other = match has_ref.then(|| tidy(|| lstat(r, &n))) {
                None | Some(Err(Errno::NOENT)) => None,
                Some(Ok(o)) => Some(o),
                Some(Err(_)) => {
                    out.errors = true;
                    continue;
                }
            };
            if file_type(&st) == FileType::Directory {
                if has_ref && !other.is_some_and(|o| file_type(&o) == FileType::Directory) {
                    out.kept = true;
                    continue;
                }
                let Ok(a) = tidy(|| open_dir(d, &n)) else {
                    out.errors = true;
                    continue;
                };
                let b = match has_ref {
                    true => tidy(|| open_dir(r, &n)),
                    false => rustix::io::fcntl_dupfd_cloexec(&a, 0),
                };
                let Ok(b) = b else {
                    out.errors = true;
                    continue;
                };
                match tidy(|| fstat(a.as_fd())) {
                    // Replaced meanwhile, or something mounted there: keep.
                    Ok(now) if !same_inode(&now, &st) || (now.stx_dev_major, now.stx_dev_minor) != dev => {
                        out.kept = true
                    }
                    Ok(now) => {
                        let keep = !(state.approved.contains(&id(&now)) || rule.remove_dir(&now));
                        if !keep {
                            state.approved.insert(id(&now));
                        }
                        match walk.push(n, [a, b]) {
                            Ok(()) => keep_dirs.push(keep),
                            Err(_) => out.errors = true,
                        }
                    }
                    Err(_) => out.errors = true,
                }
            } else {
                let count = state.unlinked.get(&id(&st)).copied().unwrap_or(0);
                if rule.delete(d, r, &n, &st, other.as_ref(), count) {
                    let gone = tidy(|| rustix::fs::unlinkat(d, &*n, AtFlags::empty())).is_ok();
                    if gone && st.stx_nlink > 1 {
                        *state.unlinked.entry(id(&st)).or_insert(0) += 1;
                    }
                    out.errors |= !gone;
                } else {
                    out.kept = true;
                }
            }
            continue;
        }
        match walk.pop() {
            Ok(Some((frame, _))) if !walk.is_done() => {
                if keep_dirs.pop() == Some(true) {
                    out.kept = true;
                    continue;
                }
                match walk.fd(0) {
                    Ok(d) => match tidy(|| rustix::fs::unlinkat(d, &*frame.name, AtFlags::REMOVEDIR)) {
                        Ok(()) => {}
                        Err(Errno::NOTEMPTY | Errno::EXIST) if out.kept || out.errors => {}
                        Err(_) => out.errors = true,
                    },
                    Err(_) => out.errors = true,
                }
            }
            Ok(_) => break,
            Err(_) => {
                out.errors = true;
                break;
            }
        }
    }
    out
}

/// Starts a walk of two roots, trying again on a transient failure.
fn tidy_walk(root: OwnedFd, other: OwnedFd) -> Option<Walk<2>> {
    for _ in 0..super::error::TIDY_TRIES {
        // Descriptors of one open file share its offset: list from the start.
        let _ = rustix::fs::seek(&root, rustix::fs::SeekFrom::Start(0));
        let (Ok(a), Ok(b)) = (rustix::io::fcntl_dupfd_cloexec(&root, 0), rustix::io::fcntl_dupfd_cloexec(&other, 0))
        else {
            continue;
        };
        if let Ok(w) = Walk::new([a, b]) {
            return Some(w);
        }
    }
    None
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
