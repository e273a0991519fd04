//! Moving a directory tree, as `mv` does across devices, but atomically.
//!
//! 1. The copy is built under a hidden temp directory next to the
//!    destination ([`Temp::dir`]), created 0700 so no one else can use a
//!    half-built tree, and used only through the descriptor opened right
//!    after it was made, checked to be ours, private and empty (another
//!    user could have renamed their own directory over its name in between;
//!    the installer checks the name again). The walk ([`walk`](super::walk)) is file-descriptor
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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Access, AtFlags, FileType, Mode, OFlags, Statx};
use rustix::io::Errno;

use super::durable::Durability;
use super::error::{At, Error, Result, patient, retry, tidy};
use super::install::{Rollback, Temp};
use super::meta::{self, Obj};
use super::path::Entry;
use super::report::{Progress, Report};
use super::seen::{self, Records, Seen, Since};
use super::stat::{Id, file_type, fstat, id, locked, lstat, mount_root, same_inode};
use super::walk::{Frame, TREE_CHANGED, Walk, open_dir, open_dir_noatime};
use super::{copy, pool, source, special, writers};

/// Files whose writers one child of the probe looks for, at most (it
/// opens, probes and closes them itself).
const WRITER_NAMES: usize = 1024;

/// Directories whose files one child of the probe looks at, at most (each
/// kept open until then).
const WRITER_DIRS: usize = 32;

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
    /// The copy of the directory the caller's working directory was (see
    /// [`copy_tree`]), if it was in the tree.
    pub cwd: Option<OwnedFd>,
}

/// Copies the directory `src` (seen as `st`) into a new hidden temp tree in
/// `dst`'s directory. Returns the temp, ready to install, and what was copied.
/// `cwd`: the caller's working directory, whose copy, if it is in the tree,
/// is kept open for the working directory to follow.
pub fn copy_tree<'d>(
    src: &Entry,
    st: &Statx,
    dst: &'d Entry,
    job: copy::Job<'_>,
    cwd: Option<Id>,
    report: &mut Report,
) -> Result<CopiedTree<'d>> {
    let copy::Job { durability, progress, leases, route, inherits, threads } = job;
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
    let (tmp, tmp_root, made) = Temp::dir(dst_dir)?;
    private(tmp_root.as_fd(), &made)?;
    let tmp_id = id(&made);
    let cwd_copy = match cwd {
        Some(cwd) if cwd == id(&root_st) => Some(rustix::io::fcntl_dupfd_cloexec(&tmp_root, 0).at("dup")?),
        _ => None,
    };

    let walk = Walk::new([src_root, tmp_root])?;
    let threads = pool::workers_for_tree(threads, super::walk::free_descriptors());
    let env = Env { route, progress, inherits, size_limit: copy::size_limit(), stop: AtomicBool::new(false) };
    let work = |b: Batch| copy_batch(&env, b);
    let mut cx = Copy {
        walk,
        groups: vec![None],
        left: std::collections::VecDeque::new(),
        // Directories left with files still being copied: a few, so that
        // each thread may be creating files in a directory of its own.
        most_left: if threads == 0 { 0 } else { threads + 1 },
        next_key: 0,
        links: HashMap::new(),
        link_bytes: 0,
        path: Vec::new(),
        report,
        env: &env,
        records: Records::default(),
        leases,
        dst_parent,
        tmp_id,
        cwd,
        cwd_copy,
        listening: special::Listening::default(),
    };
    // With durability, the filesystem is written back all through the copy
    // (on a thread of its own, with a descriptor of its own on the
    // destination's filesystem), so that the one barrier before the install
    // has little left to wait for.
    let flush_failed = std::sync::atomic::AtomicI32::new(0);
    let flush = |stop: &AtomicBool| {
        if let Ok(fd) = open_dir(dst_dir, c".") {
            durability.flush_until(fd.as_fd(), stop, &flush_failed);
        }
    };
    // Started once the tree proves big enough for the crew to have a thread.
    pool::alongside(flush, |flusher| {
        pool::crew(threads, &work, |crew| -> Result<()> {
            cx.check_dir()?;
            cx.files(crew)?;
            loop {
                cx.finish_left(crew, false)?;
                let Some(name) = cx.walk.next_name() else {
                    // Every entry of the directory visited but the files on
                    // the crew: the walk goes on while they are copied, or
                    // takes what became of them.
                    if let Some(key) = cx.groups.last().copied().flatten() {
                        if cx.groups.len() > 1 && cx.most_left > 0 && !crew.is_done(key) {
                            cx.leave(crew, key)?;
                            continue;
                        }
                        let revisits = cx.complete_current(crew)?;
                        if !revisits.is_empty() {
                            cx.revisit(revisits);
                            continue;
                        }
                    }
                    // Every directory left (all below this one) complete before
                    // this one gets its mode: a late hard link may need to
                    // reach a name through it, which its final mode may forbid.
                    cx.finish_left(crew, true)?;
                    // A directory is complete: its metadata now, children first.
                    let Some((frame, [s, t])) = cx.walk.pop()? else { break };
                    cx.groups.pop();
                    cx.done_dir(&frame.st, [s.as_fd(), t.as_fd()])?;
                    cx.up(&frame.name);
                    if cx.walk.is_done() {
                        durability.tree(t.as_fd())?;
                        break;
                    }
                    continue;
                };
                cx.entry(name, crew)?;
                if crew.workers() > 0 && durability.is_on() {
                    flusher.start();
                }
            }
            // Every batch was taken (a failed one stopped the others, and
            // its failure was returned): nothing was left out unseen.
            if cx.env.stop.load(Ordering::Relaxed) {
                return Err(Error::new(Errno::XDEV, "a copying thread failed"));
            }
            Ok(())
        })
    })?;
    match flush_failed.into_inner() {
        0 => {}
        e => return Err(Error::copy_step(Errno::from_raw_os_error(e), "syncfs destination")),
    }
    let mut records = cx.records;
    records.seal();
    Ok(CopiedTree { tmp, seen: root_seen, records, cwd: cx.cwd_copy })
}

/// What the per-file work needs besides the file: the same for the whole
/// tree, shared by the threads copying files.
struct Env<'a> {
    /// How data goes between the two filesystems.
    route: &'a copy::Route,
    progress: Option<&'a dyn Progress>,
    /// Whether new objects inherit an ACL (the destination directory has a
    /// default one).
    inherits: bool,
    /// The process's file size limit.
    size_limit: Option<u64>,
    /// Set when a batch failed: the others stop early.
    stop: AtomicBool,
}

/// Files of one directory for one thread to copy.
struct Batch {
    /// Its place in the directory's batches, to report the first failure
    /// in directory order whichever thread met it first.
    index: usize,
    /// The source directory and its copy.
    dirs: [Arc<OwnedFd>; 2],
    /// The source directory's status (for the sticky-bit check).
    parent: Arc<Statx>,
    names: Vec<CString>,
}

/// A file copied: what it was when copied, its copy, the bytes copied.
struct Copied {
    seen: Seen,
    /// The copy's identity, if it was looked at (else the walk takes it
    /// from the directory's listing).
    copy: Option<Id>,
    bytes: u64,
}

/// How the first file a batch created was made (asked mode, status): the
/// others of the batch are made alike (same directory, same credentials,
/// same umask), so they need no `fstat` of their own to know whether the
/// owner and mode must be set.
struct Learned {
    asked: u32,
    made: Statx,
}

impl Learned {
    /// The status a file created asking `mode` has, where it can be told:
    /// the owner the first file got, and the mode asked less what the
    /// umask took from the first (only for bits the first file asked).
    fn predict(&self, mode: u32) -> Option<Statx> {
        let got = u32::from(self.made.stx_mode) & 0o7777;
        if mode & !self.asked != 0 || got & !self.asked != 0 {
            return None;
        }
        let mut st = self.made;
        let kind = u32::from(self.made.stx_mode) & !0o7777;
        st.stx_mode = u16::try_from(kind | (mode & got)).ok()?;
        Some(st)
    }
}

/// What became of one file of a batch.
enum Done {
    /// Copied, under that name.
    Copied(CString, Copied),
    /// Gone since the listing: not part of the move.
    Gone,
    /// Left to the walk, which looks at it again by name: a file with
    /// several names (the walk keeps the map of them, and links or copies
    /// it), or not a regular file any more. Closed meanwhile, so that a
    /// directory of thousands of such files holds no descriptor for them.
    Walk(CString),
}

type BatchResult = (usize, Result<Vec<Done>>);
type FileCrew<'s, 'e> = pool::Crew<'s, 'e, Batch, BatchResult>;

fn copy_batch(env: &Env<'_>, b: Batch) -> BatchResult {
    let [s, t] = &b.dirs;
    let mut out = Vec::with_capacity(b.names.len());
    let mut learned = None;
    for name in b.names {
        if env.stop.load(Ordering::Relaxed) {
            break;
        }
        match open_file(env, s.as_fd(), t.as_fd(), &b.parent, name, &mut learned) {
            Ok(done) => out.push(done),
            Err(e) => {
                env.stop.store(true, Ordering::Relaxed);
                return (b.index, Err(e));
            }
        }
    }
    (b.index, Ok(out))
}

/// Opens the source file `name` (listed as a regular file) and copies it,
/// unless it has several names or is something else now.
fn open_file(
    env: &Env<'_>,
    sdir: BorrowedFd<'_>,
    tdir: BorrowedFd<'_>,
    parent: &Statx,
    name: CString,
    learned: &mut Option<Learned>,
) -> Result<Done> {
    let s = match copy::open_source(sdir, &name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Done::Gone), // removed meanwhile: not part of the move
        Err(e) if not_a_file_now(e) => return Err(Error::changed(TREE_CHANGED)),
        Err(e) => return Err(Error::new(e, "open source file")),
    };
    let started = seen::now();
    let st = fstat(s.as_fd()).at("stat source file")?;
    if file_type(&st) != FileType::RegularFile || st.stx_nlink > 1 {
        return Ok(Done::Walk(name));
    }
    removable(parent, &st)?;
    let copied = copy_file(env, s.as_fd(), &st, started, tdir, &name, learned)?;
    Ok(Done::Copied(name, copied))
}

/// Looks at the entry `name` of the source directory `dir` (seen as
/// `parent`), and when; `None` if it was removed meanwhile (not part of
/// the move). Checks it can later be removed.
fn look(dir: BorrowedFd<'_>, parent: &Statx, name: &CStr) -> Result<Option<(Statx, seen::Stamp)>> {
    let started = seen::now();
    let st = match lstat(dir, name) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(Error::new(e, "stat source entry")),
    };
    removable(parent, &st)?;
    Ok(Some((st, started)))
}

/// What removing the entry seen as `st` from the source directory seen as
/// `parent` later needs, checked now: as rename would refuse.
fn removable(parent: &Statx, st: &Statx) -> Result<()> {
    // Something mounted on an entry (a bind-mounted file or directory)
    // can be neither copied for what it hides nor removed: as rename.
    if mount_root(st) {
        return Err(Error::new(Errno::BUSY, "mount point inside source"));
    }
    super::check::sticky(parent, st)?;
    if locked(st) {
        return Err(Error::new(Errno::PERM, "immutable or append-only source"));
    }
    Ok(())
}

/// Copies the open source file `s` (seen as `st` after `started`) to a new
/// file `name` in `tdir`, with its metadata. `learned`: how an earlier file
/// of the same directory was made, learned by the first one (not where
/// the directory has a default ACL, which decides modes on its own).
fn copy_file(
    env: &Env<'_>,
    s: BorrowedFd<'_>,
    st: &Statx,
    started: seen::Stamp,
    tdir: BorrowedFd<'_>,
    name: &CStr,
    learned: &mut Option<Learned>,
) -> Result<Copied> {
    let seen = Seen::record(st, started);
    copy::within_limit(st.stx_size, env.size_limit)?;
    let asked = u32::from(st.stx_mode) & 0o777;
    let t = new_file(tdir, name, asked)?;
    let predicted = if env.inherits { None } else { learned.as_ref().and_then(|l| l.predict(asked)) };
    let (made, copy) = match predicted {
        Some(p) => (p, None),
        None => {
            let made = fstat(t.as_fd()).at("stat new file")?;
            if learned.is_none() && !env.inherits {
                *learned = Some(Learned { asked, made });
            }
            let copy = id(&made);
            (made, Some(copy))
        }
    };
    let mut bytes = 0;
    copy::copy_data(s, t.as_fd(), st, env.route, &mut bytes, env.progress, None)?;
    meta::apply(Obj::Fd(s), Obj::Fd(t.as_fd()), st, meta::Made { st: Some(&made), inherits: env.inherits })?;
    // Changed while it was copied: the copy may be torn. Start over.
    if !seen.unchanged(&fstat(s).at("stat source file")?) {
        return Err(Error::changed(TREE_CHANGED));
    }
    env.progress.inspect(|p| p.object());
    Ok(Copied { seen, copy, bytes })
}

/// A directory the walk has left while its files were still being copied:
/// completed (what became of them, the names left to look at by name, its
/// metadata) once they are.
struct Left {
    /// Its files' jobs on the crew.
    key: u64,
    frame: Frame<2>,
    dirs: [Arc<OwnedFd>; 2],
    /// Its path inside the copy, with a trailing `/`.
    path: Vec<u8>,
}

struct Copy<'r> {
    walk: Walk<2>,
    /// For each directory of the walk, the key of its files' jobs on the
    /// crew, until what became of them is taken.
    groups: Vec<Option<u64>>,
    /// Directories left with files still being copied, oldest first.
    left: std::collections::VecDeque<Left>,
    /// How many directories may be left so.
    most_left: usize,
    next_key: u64,
    /// Files with several links already copied and names still to meet:
    /// identity -> path in the copy, and how many names are still to come.
    links: HashMap<Id, (CString, u32)>,
    /// What `links` holds, against [`LINK_MAP_MAX`].
    link_bytes: usize,
    /// Path of the current directory inside the copy, for `linkat`.
    path: Vec<u8>,
    report: &'r mut Report,
    env: &'r Env<'r>,
    /// What each entry was when it was copied.
    records: Records,
    /// Files the program holds a lease on: never opened.
    leases: &'r copy::OwnLeases,
    /// The destination's directory, and the temp root: a destination inside
    /// the source is found by them.
    dst_parent: Id,
    tmp_id: Id,
    /// The caller's working directory, and its copy once made.
    cwd: Option<Id>,
    cwd_copy: Option<OwnedFd>,
    /// Sockets servers listen on, once a socket file is met.
    listening: special::Listening,
}

impl Copy<'_> {
    /// Checks the current source directory can later be emptied and removed.
    fn check_dir(&mut self) -> Result<()> {
        let top = self.walk.top();
        if top.ids[0] == self.dst_parent {
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

    /// Hands the files the current directory listed as regular files to
    /// the crew's threads, in batches under a key of the directory's own,
    /// to be copied while the walk goes on; without a stat by name (the
    /// open file is looked at). Not when the program holds leases: then
    /// every file is first looked at by name ([`Copy::file`]), never
    /// opened if it is one of the leased ones.
    fn files(&mut self, crew: &mut FileCrew<'_, '_>) -> Result<()> {
        if !self.leases.is_empty() {
            return Ok(());
        }
        let names = self.walk.take_files();
        if names.is_empty() {
            return Ok(());
        }
        let dirs = self.walk.shared()?;
        let parent = Arc::new(*self.walk.top().st);
        let key = self.next_key;
        self.next_key += 1;
        for (index, names) in crew.batches(names).into_iter().enumerate() {
            crew.submit(key, Batch { index, dirs: dirs.clone(), parent: Arc::clone(&parent), names });
        }
        *self.groups.last_mut().expect("the walk's") = Some(key);
        Ok(())
    }

    /// Takes what became of the current directory's files on the crew, if
    /// not yet taken; returns the names left to look at by name.
    fn complete_current(&mut self, crew: &mut FileCrew<'_, '_>) -> Result<Vec<CString>> {
        let Some(key) = self.groups.last_mut().and_then(Option::take) else { return Ok(Vec::new()) };
        let dirs = self.walk.shared()?;
        self.complete(crew, key, &dirs[1])
    }

    /// Has the walk visit `names` of the current directory next, in order.
    fn revisit(&mut self, names: Vec<CString>) {
        names.into_iter().rev().for_each(|n| self.walk.revisit(n));
    }

    /// Leaves the current directory to the crew: the walk goes on, and the
    /// directory is completed once its files are copied. The oldest
    /// directories left are completed first if too many are.
    fn leave(&mut self, crew: &mut FileCrew<'_, '_>, key: u64) -> Result<()> {
        while self.left.len() >= self.most_left {
            self.finish_one(crew)?;
        }
        let Some((frame, dirs)) = self.walk.pop()? else { return Ok(()) };
        self.groups.pop();
        let path = self.path.clone();
        self.up(&frame.name);
        self.left.push_back(Left { key, frame, dirs, path });
        Ok(())
    }

    /// The walk has left the directory `name`: the path in the copy too.
    fn up(&mut self, name: &CStr) {
        self.path.truncate(self.path.len().saturating_sub(name.to_bytes().len() + 1));
    }

    /// Completes the directories left whose files are copied (`all`: every
    /// one, waiting for them).
    fn finish_left(&mut self, crew: &mut FileCrew<'_, '_>, all: bool) -> Result<()> {
        while self.left.front().is_some_and(|l| all || crew.is_done(l.key)) {
            self.finish_one(crew)?;
        }
        Ok(())
    }

    /// Completes the oldest directory left: takes what became of its
    /// files, looks at the names left to look at by name, and gives it
    /// its metadata.
    fn finish_one(&mut self, crew: &mut FileCrew<'_, '_>) -> Result<()> {
        let Some(left) = self.left.pop_front() else { return Ok(()) };
        let revisits = self.complete(crew, left.key, &left.dirs[1])?;
        for name in revisits {
            let Some((st, started)) = look(left.dirs[0].as_fd(), &left.frame.st, &name)? else { continue };
            // Listed as a regular file, and a directory now: the walk has
            // left the place to enter it.
            if file_type(&st) == FileType::Directory {
                return Err(Error::changed(TREE_CHANGED));
            }
            self.other(&left.dirs, &left.path, name, &st, started)?;
        }
        self.done_dir(&left.frame.st, [left.dirs[0].as_fd(), left.dirs[1].as_fd()])
    }

    /// A directory whose every entry is copied: its metadata.
    fn done_dir(&mut self, st: &Statx, [s, t]: [BorrowedFd<'_>; 2]) -> Result<()> {
        meta::apply(Obj::Fd(s), Obj::Fd(t), st, meta::Made { st: None, inherits: self.env.inherits })?;
        self.report.files += 1;
        self.env.progress.inspect(|p| p.object());
        Ok(())
    }

    /// Takes what became of the files handed to the crew under `key` (of
    /// the directory whose copy is `tdir`): records them, and returns the
    /// names to look at by name.
    fn complete(&mut self, crew: &mut FileCrew<'_, '_>, key: u64, tdir: &OwnedFd) -> Result<Vec<CString>> {
        let mut batches = Vec::new();
        for r in crew.collect(key) {
            match r {
                Ok(b) => batches.push(b),
                Err(_) => return Err(Error::new(Errno::XDEV, "a copying thread failed")),
            }
        }
        // The first failure in directory order, whichever thread met it.
        batches.sort_unstable_by_key(|(i, _)| *i);
        let mut done = Vec::new();
        for (_, b) in batches {
            done.extend(b?);
        }
        let mut samples = Vec::new();
        let mut unseen = std::collections::HashSet::new();
        let mut revisits = Vec::new();
        for d in done {
            match d {
                Done::Copied(name, c) => {
                    match c.copy {
                        Some(copy) => samples.push((name, copy)),
                        None => {
                            unseen.insert(name);
                        }
                    }
                    self.copied(c);
                }
                Done::Gone => {}
                Done::Walk(name) => revisits.push(name),
            }
        }
        if !unseen.is_empty() {
            self.copies_from_listing(tdir.as_fd(), &samples, &unseen)?;
        }
        Ok(revisits)
    }

    /// Records the identities of the files just made in the current
    /// directory of the copy and not looked at (`unseen`), from its listing
    /// (`d_ino`): one `getdents` for the directory instead of one `fstat` a
    /// file. Trusted only if every file that was looked at (`samples`:
    /// name, identity) has one device and is listed with its inode number;
    /// where a filesystem
    /// lists other numbers than `stat` gives (some FUSE servers), each is
    /// looked at. Only names xrename made count: anything else found in the
    /// private temp is not ours (a rollback leaves it).
    fn copies_from_listing(
        &mut self,
        tdir: BorrowedFd<'_>,
        samples: &[(CString, Id)],
        unseen: &std::collections::HashSet<CString>,
    ) -> Result<()> {
        // The device is the one `stat` gave the files looked at, not the
        // directory's: an overlay whose layers are on different filesystems
        // gives its directories its own device and its files their layer's.
        // All samples must have one device, and be listed as they are.
        let dev = samples.first().map(|(_, (major, minor, _))| (*major, *minor));
        // The copy's side of the walk is never listed otherwise: read from
        // its start.
        let listed = super::walk::read_inodes(tdir)?;
        let agree = dev.is_some()
            && samples.iter().all(|(name, (major, minor, ino))| {
                Some((*major, *minor)) == dev && listed.iter().any(|(n, i)| n == name && i == ino)
            });
        let (major, minor) = dev.unwrap_or_default();
        for (name, ino) in listed {
            if !unseen.contains(&name) {
                continue;
            }
            if agree {
                self.records.add_copy_id((major, minor, ino));
            } else {
                let st = lstat(tdir, &name).at("stat new file")?;
                self.records.add_copy(&st);
            }
        }
        Ok(())
    }

    fn entry(&mut self, name: CString, crew: &mut FileCrew<'_, '_>) -> Result<()> {
        let parent_st = self.walk.top().st.clone();
        let Some((st, started)) = look(self.walk.fd(0)?, &parent_st, &name)? else { return Ok(()) };
        if file_type(&st) == FileType::Directory {
            return self.enter(name, &st, crew);
        }
        let dirs = self.walk.shared()?;
        let path = std::mem::take(&mut self.path);
        let done = self.other(&dirs, &path, name, &st, started);
        self.path = path;
        done
    }

    /// Copies the entry `name` (not a directory, seen as `st` after
    /// `started`) of the source directory `dirs[0]` into its copy `dirs[1]`,
    /// at `path` in the copy.
    fn other(
        &mut self,
        dirs: &[Arc<OwnedFd>; 2],
        path: &[u8],
        name: CString,
        st: &Statx,
        started: seen::Stamp,
    ) -> Result<()> {
        let [s, t] = [dirs[0].as_fd(), dirs[1].as_fd()];
        if file_type(st) == FileType::RegularFile {
            return self.file([s, t], path, name, st);
        }
        self.listening.check(st, s)?;
        special::create(s, &name, st, t, &name).at("create node")?;
        let made = lstat(t, &name).at("stat new node")?;
        self.records.add_copy(&made);
        let made = meta::Made { st: Some(&made), inherits: self.env.inherits };
        meta::apply(Obj::At(s, &name), Obj::At(t, &name), st, made)?;
        self.records.add(&Seen::record(st, started));
        self.report.files += 1;
        self.env.progress.inspect(|p| p.object());
        Ok(())
    }

    fn enter(&mut self, name: CString, st: &Statx, crew: &mut FileCrew<'_, '_>) -> Result<()> {
        if id(st) == self.tmp_id || self.walk.on_path(0, id(st)) {
            return Err(Error::new(Errno::INVAL, "destination inside source"));
        }
        // The files of this directory first: jobs waiting on the crew hold
        // their directory open, and a deep tree must not hold every level.
        // Names left to look at by name (files with several names) are
        // visited before the subdirectory, as without a crew: a hard link
        // made later inside the subdirectory then links to the copy here,
        // never the other way, through a subdirectory already given a
        // mode that may forbid it.
        let revisits = self.complete_current(crew)?;
        if !revisits.is_empty() {
            self.walk.revisit(name);
            self.revisit(revisits);
            return Ok(());
        }
        let s = match open_dir(self.walk.fd(0)?, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            Err(Errno::NOTDIR | Errno::LOOP) => return Err(Error::changed(TREE_CHANGED)),
            Err(e) => return Err(Error::new(e, "open source subdirectory")),
        };
        // Recorded as it is before its names are read: an entry added or
        // removed later changes its mtime and ctime.
        let started = seen::now();
        let s_st = fstat(s.as_fd()).at("stat source subdirectory")?;
        if !same_inode(&s_st, st) {
            return Err(Error::changed(TREE_CHANGED));
        }
        let tdir = self.walk.fd(1)?;
        retry(|| rustix::fs::mkdirat(tdir, &name, Mode::from_raw_mode(0o700))).at("create directory")?;
        let t = open_dir(tdir, &name).at("open new directory")?;
        let t_st = fstat(t.as_fd()).at("stat temp directory")?;
        if self.cwd == Some(id(&s_st)) {
            self.cwd_copy = Some(rustix::io::fcntl_dupfd_cloexec(&t, 0).at("dup")?);
        }
        private(t.as_fd(), &t_st)?;
        self.path.extend_from_slice(name.as_bytes());
        self.path.push(b'/');
        self.walk.push_seen(name, [s, t], [Some(s_st), Some(t_st)])?;
        self.groups.push(None);
        self.records.add(&Seen::record(&self.walk.top().st, started));
        self.records.add_copy_id(self.walk.top().ids[1]);
        self.check_dir()?;
        self.files(crew)
    }

    /// A regular file looked at by name (listed without a type, with
    /// several names, or the program holds leases), in the source
    /// directory `sdir` whose copy is `tdir`, at `path` in the copy.
    fn file(&mut self, [sdir, tdir]: [BorrowedFd<'_>; 2], path: &[u8], name: CString, st: &Statx) -> Result<()> {
        let key = id(st);
        if st.stx_nlink > 1 && self.link(tdir, &name, key)? {
            return Ok(());
        }
        if self.leases.holds(st.stx_ino) {
            return Err(Error::new(Errno::XDEV, super::file::OWN_LEASE));
        }
        let s = match copy::open_source(sdir, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()), // removed meanwhile: not part of the move
            Err(e) if not_a_file_now(e) => return Err(Error::changed(TREE_CHANGED)),
            Err(e) => return Err(Error::new(e, "open source file")),
        };
        let started = seen::now();
        let st = fstat(s.as_fd()).at("stat source file")?;
        if id(&st) != key {
            return Err(Error::changed(TREE_CHANGED));
        }
        self.copy_opened(tdir, path, name, s.as_fd(), &st, started)
    }

    /// Links `name` in `tdir` to the copy of another name of the inode
    /// `key` met before; false if none was.
    fn link(&mut self, tdir: BorrowedFd<'_>, name: &CStr, key: Id) -> Result<bool> {
        let Some((first, left)) = self.links.get_mut(&key) else { return Ok(false) };
        let (parent, last) = open_parent(self.walk.root(1), first)?;
        retry(|| rustix::fs::linkat(&parent, &*last, tdir, name, AtFlags::empty())).at("link")?;
        *left = left.saturating_sub(1);
        if *left == 0 {
            // Every name met: the entry is no longer needed.
            let (first, _) = self.links.remove(&key).expect("just found");
            self.link_bytes -= first.as_bytes().len() + LINK_ENTRY_COST;
        }
        Ok(true)
    }

    fn copied(&mut self, c: Copied) {
        if let Some(copy) = c.copy {
            self.records.add_copy_id(copy);
        }
        self.records.add(&c.seen);
        self.report.files += 1;
        self.report.bytes += c.bytes;
    }

    /// Copies the open file `s` into `tdir`, at `path` in the copy, and
    /// remembers it if it has other names to meet.
    fn copy_opened(
        &mut self,
        tdir: BorrowedFd<'_>,
        path: &[u8],
        name: CString,
        s: BorrowedFd<'_>,
        st: &Statx,
        started: seen::Stamp,
    ) -> Result<()> {
        let copied = copy_file(self.env, s, st, started, tdir, &name, &mut None)?;
        self.copied(copied);
        if st.stx_nlink > 1 {
            let mut p = path.to_vec();
            p.extend_from_slice(name.as_bytes());
            self.link_bytes += p.len() + LINK_ENTRY_COST;
            if self.link_bytes > LINK_MAP_MAX {
                return Err(Error::new(Errno::XDEV, "too many hard-linked files in the tree"));
            }
            self.links.insert(id(st), (CString::new(p).expect("no NUL"), st.stx_nlink - 1));
        }
        Ok(())
    }
}

/// Makes a directory of the copy, seen as `st`, 0700 whatever the umask, so
/// that it can be filled; its own mode comes when it is complete. The
/// set-group-ID bit it inherited from a setgid destination stays (what is
/// made in it then takes that group, as with mv, where the owner's group
/// cannot be set); no `chmod` at all when the umask left it so.
fn private(dir: BorrowedFd<'_>, st: &Statx) -> Result<()> {
    let mode = u32::from(st.stx_mode);
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
/// seen here, before anything is deleted. Every regular file of the taken
/// tree is opened through its directory and probed, in batches.
pub fn check_writers(src: &Entry, taken: &source::Taken) -> Result<()> {
    let probe = writers::Probe::new();
    let name = match taken {
        source::Taken::Aside(name) => name.as_c_str(),
        source::Taken::InPlace => &src.name,
    };
    // The move has happened but for the deletion: a transient failure here
    // is tried again rather than undoing it.
    let root = patient(|| open_dir_noatime(src.dir.as_fd(), name)).at("open source directory")?;
    let mut walk = Walk::new([root])?;
    // A quarter of the free descriptors for the files the probe holds open
    // at once, as many for the directories its pending names are in.
    let budget = (super::walk::free_descriptors() / 4).max(1);
    let hold = budget.min(super::sys::HOLD_MOST);
    let most_dirs = budget.min(WRITER_DIRS);
    // Names of regular files to probe, each with its directory (kept open
    // until then, whatever that directory is called by now), handed to one
    // child of the probe at a time: it opens, probes and closes them.
    let mut pending: Vec<(Arc<OwnedFd>, CString)> = Vec::new();
    let mut dirs = 0;
    let run = |pending: &mut Vec<(Arc<OwnedFd>, CString)>| -> Result<()> {
        let mut rest = &pending[..];
        while !rest.is_empty() {
            let dirs: Vec<BorrowedFd<'_>> = rest.iter().map(|(d, _)| d.as_fd()).collect();
            let names: Vec<&CStr> = rest.iter().map(|(_, n)| n.as_c_str()).collect();
            let done = probe.check_names(&dirs, &names, hold)?;
            let Some((i, errno)) = done.iter().enumerate().find_map(|(i, p)| match *p {
                super::sys::Probed::Open(e) => Some((i, Errno::from_raw_os_error(e))),
                _ => None,
            }) else {
                break;
            };
            // The child stopped at an open that failed: taken from there
            // as one file, as the copy opens one.
            let (d, n) = &rest[i];
            probe_one(&probe, d.as_fd(), n, errno)?;
            rest = &rest[i + 1..];
        }
        pending.clear();
        Ok(())
    };
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
                let sub = match patient(|| open_dir_noatime(d, &n)) {
                    Ok(fd) => fd,
                    // Gone from its name since the listing: renamed (maybe
                    // to a place already walked, whose files would then go
                    // unprobed and, unchanged themselves, be deleted) or
                    // removed. Nothing can tell which: fail closed.
                    Err(Errno::NOENT) => return Err(Error::new(Errno::XDEV, TREE_CHANGED)),
                    Err(e) => return Err(Error::new(e, "open source subdirectory")),
                };
                walk.push(n, [sub])?;
            }
            FileType::RegularFile => {
                let [dir] = walk.shared()?;
                if !pending.last().is_some_and(|(last, _)| Arc::ptr_eq(last, &dir)) {
                    if dirs == most_dirs {
                        run(&mut pending)?;
                        dirs = 0;
                    }
                    dirs += 1;
                }
                pending.push((dir, n));
                if pending.len() >= WRITER_NAMES {
                    run(&mut pending)?;
                    dirs = 0;
                }
            }
            _ => {}
        }
    }
    run(&mut pending)
}

/// Opens the regular file `n` in `d` (whose open by the probe's child
/// failed with `errno`) as the copy opens one (a transient error tried
/// again, another process's lease waited for, a free descriptor waited
/// for), and probes it alone.
fn probe_one(probe: &writers::Probe, d: BorrowedFd<'_>, n: &CStr, errno: Errno) -> Result<()> {
    let mut opened = match errno {
        e if e == Errno::NOENT || not_a_file_now(e) => Err(errno),
        _ => tidy(|| copy::open_source(d, n)),
    };
    if matches!(opened, Err(Errno::MFILE | Errno::NFILE)) {
        opened = patient(|| copy::open_source(d, n));
    }
    match opened {
        Ok(fd) => probe.check(&[fd.as_fd()]),
        // Gone since the listing (up to a batch ago): removed, or renamed
        // within the tree by someone who may hold it open for writing (a
        // log rotated), to a name this probe may never look at: its
        // deletion would keep it, but the program would be told the move
        // happened while the writes go on at the source. Something else
        // under its name now: nothing proves what it is. Fail closed.
        Err(e) if e == Errno::NOENT || not_a_file_now(e) => Err(Error::new(Errno::XDEV, TREE_CHANGED)),
        Err(e) => Err(Error::new(e, "open source file")),
    }
}

/// Whether opening a name listed as a regular file failed because
/// something else is under it now: a symlink (the open never follows
/// one), a socket, a device node. The tree changed since the listing.
fn not_a_file_now(e: Errno) -> bool {
    matches!(e, Errno::LOOP | Errno::NXIO | Errno::NODEV)
}

/// Deletes the taken source tree `src` entry by entry, keeping whatever is
/// not provably what was copied into `dst`; what is kept goes back under
/// the source name. Cannot fail: the move has happened.
#[allow(clippy::too_many_arguments)] // what the deletion needs, each from another step of the move
pub fn delete_taken(
    src: &Entry,
    taken: source::Taken,
    seen: &Seen,
    records: &Records,
    dst: &Entry,
    durability: Durability,
    threads: Option<usize>,
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
    let threads = pool::workers_for_tree(threads, super::walk::free_descriptors());
    let deleted = super::tree::delete_copied(sdir, victim, dst, seen, records, threads);
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
