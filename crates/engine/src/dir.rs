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

use rustix::fs::{Access, AtFlags, FileType, Mode, OFlags, Statx};
use rustix::io::Errno;

use super::durable::Durability;
use super::error::{At, Error, Result, retry, tidy};
use super::install::{Rollback, Temp};
use super::meta::{self, Obj};
use super::path::Entry;
use super::report::{Progress, Report};
use super::seen::{self, Records, Seen, Since};
use super::stat::{Id, file_type, fstat, id, locked, lstat, mount_root, same_inode};
use super::walk::{TREE_CHANGED, Walk, open_dir, open_dir_noatime};
use super::{copy, source, special, writers};

/// Files whose writers are looked for at once (one probe a batch); their
/// descriptors stay open until then.
const WRITER_BATCH: usize = 32;

/// Most memory the hard-link map of one tree copy may hold (paths and
/// their bookkeeping). An entry leaves the map once every name of its
/// inode has been met, so only files with names still to come (or outside
/// the tree) count; a tree that needs more is left to the program (EXDEV).
pub const LINK_MAP_MAX: usize = 32 << 20;

/// Bookkeeping of one map entry besides its path, counted against
/// [`LINK_MAP_MAX`].
const LINK_ENTRY_COST: usize = 64;

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
    job: copy::Job<'_>,
    report: &mut Report,
) -> Result<CopiedTree<'d>> {
    let copy::Job { durability, progress, leases, route, inherits } = job;
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
    let size_limit = copy::size_limit();
    let mut cx = Copy {
        walk,
        links: HashMap::new(),
        link_bytes: 0,
        path: Vec::new(),
        report,
        progress,
        records: Records::default(),
        size_limit,
        leases,
        route,
        inherits,
    };
    cx.check_dir(dst_parent)?;
    loop {
        let Some(name) = cx.walk.next_name() else {
            // A directory is complete: its metadata now, children first.
            let Some((frame, [s, t])) = cx.walk.pop()? else { break };
            meta::apply(
                Obj::Fd(s.as_fd()),
                Obj::Fd(t.as_fd()),
                &frame.st,
                meta::Made { st: None, inherits: cx.inherits },
            )?;
            cx.report.files += 1;
            cx.progress.inspect(|p| p.object());
            let keep = cx.path.len().saturating_sub(frame.name.as_bytes().len() + 1);
            cx.path.truncate(keep);
            if cx.walk.is_done() {
                durability.tree(t.as_fd())?;
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
    /// Files with several links already copied and names still to meet:
    /// identity -> path in the copy, and how many names are still to come.
    links: HashMap<Id, (CString, u32)>,
    /// What `links` holds, against [`LINK_MAP_MAX`].
    link_bytes: usize,
    /// Path of the current directory inside the copy, for `linkat`.
    path: Vec<u8>,
    report: &'r mut Report,
    progress: Option<&'r dyn Progress>,
    /// How data goes between the two filesystems.
    route: &'r copy::Route,
    /// Whether new objects inherit an ACL (the destination directory has a
    /// default one).
    inherits: bool,
    /// What each entry was when it was copied.
    records: Records,
    /// The process's file size limit.
    size_limit: Option<u64>,
    /// Files the program holds a lease on: never opened.
    leases: &'r copy::OwnLeases,
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
        if mount_root(&st) {
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
                special::create(s, &name, &st, t, &name).at("create node")?;
                let made = lstat(t, &name).at("stat new node")?;
                self.records.add_copy(&made);
                let made = meta::Made { st: Some(&made), inherits: self.inherits };
                meta::apply(Obj::At(s, &name), Obj::At(t, &name), &st, made)?;
                self.records.add(&Seen::record(&st, started));
                self.report.files += 1;
                self.progress.inspect(|p| p.object());
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
            if let Some((first, left)) = self.links.get_mut(&key) {
                let (root, tdir) = self.walk.root_and_current(1)?;
                let (parent, last) = open_parent(root, first)?;
                retry(|| rustix::fs::linkat(&parent, &*last, tdir, &*name, AtFlags::empty())).at("link")?;
                *left = left.saturating_sub(1);
                if *left == 0 {
                    // Every name met: the entry is no longer needed.
                    let (first, _) = self.links.remove(&key).expect("just found");
                    self.link_bytes -= first.as_bytes().len() + LINK_ENTRY_COST;
                }
                return Ok(());
            }
        }
        if self.leases.holds(st.stx_ino) {
            return Err(Error::new(Errno::XDEV, super::file::OWN_LEASE));
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
        let t = new_file(self.walk.fd(1)?, &name, u32::from(st.stx_mode))?;
        let made = fstat(t.as_fd()).at("stat new file")?;
        self.records.add_copy(&made);
        copy::copy_data(s.as_fd(), t.as_fd(), &st, self.route, &mut self.report.bytes, self.progress, None)?;
        let made = meta::Made { st: Some(&made), inherits: self.inherits };
        meta::apply(Obj::Fd(s.as_fd()), Obj::Fd(t.as_fd()), &st, made)?;
        // Changed while it was copied: the copy may be torn. Start over.
        if !seen.unchanged(&fstat(s.as_fd()).at("stat source file")?) {
            return Err(Error::changed(TREE_CHANGED));
        }
        self.records.add(&seen);
        self.report.files += 1;
        self.progress.inspect(|p| p.object());
        if st.stx_nlink > 1 {
            let mut p = self.path.clone();
            p.extend_from_slice(name.as_bytes());
            self.link_bytes += p.len() + LINK_ENTRY_COST;
            if self.link_bytes > LINK_MAP_MAX {
                return Err(Error::new(Errno::XDEV, "too many hard-linked files in the tree"));
            }
            self.links.insert(key, (CString::new(p).expect("no NUL"), st.stx_nlink - 1));
        }
        Ok(())
    }
}

/// Makes a directory of the copy 0700 whatever the umask, so that it can be
/// filled; its own mode comes when it is complete. The set-group-ID bit it
/// inherited from a setgid destination stays (what is made in it then
/// takes that group, as with mv, where the owner's group cannot be set);
/// no `chmod` at all when the umask left it so.
fn private(dir: BorrowedFd<'_>) -> Result<()> {
    let mode = u32::from(fstat(dir).at("stat temp directory")?.stx_mode);
    let want = 0o700 | (mode & Mode::SGID.bits());
    if mode & 0o7777 == want {
        return Ok(());
    }
    retry(|| rustix::fs::fchmod(dir, Mode::from_raw_mode(want))).at("chmod temp directory")
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

/// Creates a file of the copy with the source's permission bits (less the
/// umask): inside the private (0700) temp tree no one else can reach it,
/// and the mode usually needs no `chmod` afterwards.
fn new_file(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<OwnedFd> {
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    retry(|| rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode & 0o777))).at("create file")
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
    let probe = writers::Probe::new();
    while !walk.is_done() {
        let Some((n, listed)) = walk.next_entry() else {
            walk.pop()?;
            continue;
        };
        let d = walk.fd(0)?;
        // The type the listing gave is enough to open a directory
        // (O_DIRECTORY) or a regular file (non-blocking, never following
        // a symlink: anything else swapped in answers the probe "unknown",
        // so EXDEV), and to pass by anything else; only where the
        // filesystem does not say is the entry looked at.
        let kind = match listed {
            FileType::Unknown => match tidy(|| lstat(d, &n)) {
                Ok(st) => file_type(&st),
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(Error::new(e, "stat source entry")),
            },
            kind => kind,
        };
        match kind {
            FileType::Directory => {
                let sub = match tidy(|| open_dir_noatime(d, &n)) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) => continue, // gone since the listing
                    Err(e) => return Err(Error::new(e, "open source subdirectory")),
                };
                walk.push(n, [sub])?;
            }
            FileType::RegularFile => {
                // Whatever is opened there is probed: anything but a
                // regular file answers "unknown", so EXDEV.
                match tidy(|| copy::open_source(d, &n)) {
                    Ok(fd) => batch.push(fd),
                    Err(Errno::NOENT) => continue, // gone since the listing
                    Err(e) => return Err(Error::new(e, "open source file")),
                }
                if batch.len() >= batch_len {
                    probe.check(&batch.iter().map(|fd| fd.as_fd()).collect::<Vec<_>>())?;
                    batch.clear();
                }
            }
            _ => {}
        }
    }
    probe.check(&batch.iter().map(|fd| fd.as_fd()).collect::<Vec<_>>())
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
    durability: Durability,
    report: &mut Report,
) {
    let sdir = src.dir.as_fd();
    let aside = match taken {
        source::Taken::InPlace => None,
        source::Taken::Aside(name) => Some(name),
    };
    durability.source_removed(src);
    // From here the move has happened; what follows only tidies up, and
    // cannot undo it: the source is already (partly) gone.
    let victim = aside.as_deref().unwrap_or(&src.name);
    let deleted = super::tree::delete_copied(sdir, victim, dst, seen, records);
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
    durability.source_removed(src);
}

/// A tree installed at the destination, withdrawn in a rollback entry by
/// entry ([`tree::remove_copy`](super::tree::remove_copy)): what is ours
/// goes, what others added while it was visible stays.
#[derive(Debug)]
pub struct Withdraw<'a> {
    /// The source the tree was copied from (gone if another rename took it).
    pub original: &'a Entry,
    /// What was copied, and the identities of the copy's entries.
    pub records: &'a Records,
}

impl Rollback for Withdraw<'_> {
    fn withdraw(&self, dir: BorrowedFd<'_>, at: &CStr, since: Since) -> bool {
        super::tree::remove_copy(dir, at, since, self.original, self.records)
    }
}
