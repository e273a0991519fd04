//! Operations on whole trees, below both the tree mover and the installer:
//! emptiness, containment, removing a tree xrename made, and pruning a tree
//! entry by entry where a [`Rule`] allows it.
//!
//! Pruning is how a tree leaves its old place without losing anything that
//! changed during the move: the old source is deleted only where an entry
//! is provably what was copied ([`delete_copied`]), and a rolled-back copy
//! loses only what is ours ([`remove_copy`]). Everything is `*at` relative
//! to open directories ([`Walk`]), never following a symlink, never
//! crossing into another mount.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, Statx};
use rustix::io::Errno;

use super::error::{At, Error, Result, TIDY_TRIES, retry, tidy};
use super::path::Entry;
use super::seen::{Records, Seen, Since, Verdict, same_content};
use super::stat::{Id, file_type, fstat, id, lstat, mount_root, same_inode};
use super::walk::{Walk, open_dir, open_dir_noatime};

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
    empty(open_dir(dir, name).at("open temp directory")?)?;
    retry(|| rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)).at("remove temp dir")
}

/// Empties a tree xrename made itself, open as `root` (whatever its name
/// is now, if it still has one), read from its start.
pub fn empty_tree(root: &OwnedFd) -> Result<()> {
    let root = rustix::io::fcntl_dupfd_cloexec(root, 0).at("dup")?;
    retry(|| rustix::fs::seek(&root, rustix::fs::SeekFrom::Start(0))).at("rewind temp directory")?;
    empty(root)
}

fn empty(root: OwnedFd) -> Result<()> {
    let _ = rustix::fs::fchmod(root.as_fd(), Mode::from_raw_mode(0o700));
    let dev = fstat(root.as_fd()).map(|st| (st.stx_dev_major, st.stx_dev_minor)).at("stat temp directory")?;
    let mut walk = Walk::new([root])?;
    loop {
        match walk.next_name() {
            Some(n) => {
                let d = walk.fd(0)?;
                match retry(|| rustix::fs::unlinkat(d, &*n, AtFlags::empty())) {
                    Err(Errno::ISDIR) => {
                        let sub = match open_dir(d, &n) {
                            // Ours, given its final mode already, one that
                            // shuts its owner out (0007, say): opened up.
                            Err(Errno::ACCESS)
                                if super::meta::chmod_nofollow(d, &n, 0o700).is_ok_and(|r| r.is_ok()) =>
                            {
                                open_dir(d, &n)
                            }
                            other => other,
                        }
                        .at("open temp subdirectory")?;
                        // Something mounted in it (another device, or a
                        // bind mount of this one) is not ours: never descend.
                        let st = fstat(sub.as_fd()).at("stat temp subdirectory")?;
                        if (st.stx_dev_major, st.stx_dev_minor) != dev || mount_root(&st) {
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
    Ok(())
}

/// Removes the installed copy `dir`/`name` of `original` (whose copied
/// entries are `records`) during a rollback,
/// entry by entry, and only entries that are ours: made by xrename in the
/// copy, and untouched since the install (an older ctime) or the same as
/// the original's entry. Whatever others added to the visible tree, or
/// changed in it, stays. When the original is gone (another rename took
/// it first), the copy is judged alone. Returns whether the whole copy went.
pub fn remove_copy(dir: BorrowedFd<'_>, name: &CStr, since: Since, original: &Entry, records: &Records) -> bool {
    // A rollback is rare, and the threads are for the common path.
    let alone = matches!(lstat(original.dir.as_fd(), &original.name), Err(Errno::NOENT));
    let rule = Withdraw { since, alone, records };
    let pruned = prune(dir, name, original, &rule, &mut PruneState::default(), 0);
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
pub fn delete_copied(
    dir: BorrowedFd<'_>,
    name: &CStr,
    dst: &Entry,
    seen: &Seen,
    records: &Records,
    threads: usize,
) -> Pruned {
    let rule = Delete { records };
    let mut pruned = Pruned::default();
    let mut state = PruneState::default();
    for _ in 0..TIDY_PASSES {
        pruned = prune(dir, name, dst, &rule, &mut state, threads);
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
pub struct Pruned {
    /// Entries were kept because they are not to be deleted.
    pub kept: bool,
    /// Some step failed even when tried again.
    pub errors: bool,
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
    /// directory `r` (looked at only if the rule needs it), and how many
    /// other names of its inode were deleted.
    fn delete(
        &self,
        d: BorrowedFd<'_>,
        r: BorrowedFd<'_>,
        name: &CStr,
        st: &Statx,
        other: &Other<'_>,
        unlinked: u32,
    ) -> bool;
    /// Whether the directory seen as `st` may be removed once emptied
    /// (judged before any of its entries is touched).
    fn remove_dir(&self, st: &Statx) -> bool;
    /// Whether the inode of the file seen as `st` had other names: its
    /// deletion is then judged by the walk, which counts the names it
    /// deleted.
    fn had_links(&self, st: &Statx) -> bool {
        st.stx_nlink > 1
    }
    /// Whether the tree (or a directory of it) may be judged alone where
    /// the reference has none.
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
        orig: &Other<'_>,
        unlinked: u32,
    ) -> bool {
        let ctime = (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec);
        self.records.is_copy(st)
            // Another name of an inode already deleted here: removing the
            // first name changed its ctime, not what it is.
            && (unlinked > 0
                || ctime < self.since.ctime
                || orig.get().is_some_and(|o| same_shape(st, &o))
                // Walked alone (the original was taken by another rename):
                // untouched since the install, by the wall clock.
                || (self.alone && ctime <= self.since.wall))
    }

    fn remove_dir(&self, st: &Statx) -> bool {
        // A directory xrename made in the copy; one someone else made in
        // the installed tree (empty or not) stays.
        self.records.is_copy(st)
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
        copy: &Other<'_>,
        unlinked: u32,
    ) -> bool {
        // What was recorded when it was copied proves it (an entry that
        // appeared during the move is not recorded; one replaced, renamed
        // or written since has another ctime). Only an entry whose times
        // cannot tell is compared with its copy. A record is of an inode,
        // not of a name: a name of an inode with several (a hard link made
        // during the move, in a directory listed before it was made, gets
        // no ctime of its own) goes only if the copy has that name too.
        let several = st.stx_nlink > 1 || unlinked > 0 || self.records.had_links(st);
        if several && !copy.get().is_some_and(|c| file_type(&c) == file_type(st)) {
            return false;
        }
        match self.records.judge(st, unlinked) {
            Verdict::Unchanged => true,
            Verdict::Racy => match copy.get() {
                Some(c) if file_type(&c) == file_type(st) => same_as_copy(d, r, name, st, &c),
                _ => false, // not in the copy: it appeared during the move
            },
            Verdict::Changed | Verdict::Unknown => false,
        }
    }

    fn remove_dir(&self, st: &Statx) -> bool {
        matches!(self.records.judge(st, 0), Verdict::Unchanged | Verdict::Racy)
    }

    fn had_links(&self, st: &Statx) -> bool {
        st.stx_nlink > 1 || self.records.had_links(st)
    }
}

/// For a racy entry: whether the source entry holds what its copy holds.
/// Reading the copy may change its atime: it gets back its times.
fn same_as_copy(d: BorrowedFd<'_>, r: BorrowedFd<'_>, name: &CStr, st: &Statx, copy: &Statx) -> bool {
    let same = same_data(d, r, name, st, copy);
    if matches!(file_type(st), FileType::RegularFile | FileType::Symlink) {
        let flags = AtFlags::SYMLINK_NOFOLLOW;
        let _ = retry(|| rustix::fs::utimensat(r, name, &super::meta::timestamps(copy), flags));
    }
    same
}

fn same_data(d: BorrowedFd<'_>, r: BorrowedFd<'_>, name: &CStr, st: &Statx, copy: &Statx) -> bool {
    match file_type(st) {
        FileType::RegularFile => {
            if st.stx_size != copy.stx_size {
                return false;
            }
            let (Ok(a), Ok(b)) =
                (tidy(|| super::copy::open_source(d, name)), tidy(|| super::copy::open_source(r, name)))
            else {
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

/// The entry of a name in the reference tree, looked at only when a
/// [`Rule`] needs it (most deletions are proven by what was recorded).
struct Other<'a> {
    dir: BorrowedFd<'a>,
    name: &'a CStr,
    /// Whether there is a reference tree at all.
    present: bool,
    /// Looking failed (not for want of an entry): the step failed.
    failed: std::cell::Cell<bool>,
    /// What the one look found.
    looked: std::cell::OnceCell<Option<Statx>>,
}

impl Other<'_> {
    fn get(&self) -> Option<Statx> {
        if !self.present {
            return None;
        }
        *self.looked.get_or_init(|| match tidy(|| lstat(self.dir, self.name)) {
            Ok(o) => Some(o),
            Err(Errno::NOENT) => None,
            Err(_) => {
                self.failed.set(true);
                None
            }
        })
    }
}

/// Files of one directory for one thread to prune.
struct Batch {
    dirs: [Arc<OwnedFd>; 2],
    /// Whether the directory has one in the reference tree.
    has_ref: bool,
    names: Vec<CString>,
}

/// How a batch went, and the names left to the walk (directories and
/// files with several names, which need the walk's bookkeeping).
#[derive(Default)]
struct BatchDone {
    pruned: Pruned,
    revisit: Vec<CString>,
}

fn prune_batch(rule: &(dyn Rule + Sync), b: Batch) -> BatchDone {
    let has_ref = b.has_ref;
    let [d, r] = &b.dirs;
    let mut out = BatchDone::default();
    for n in b.names {
        match prune_file(d.as_fd(), r.as_fd(), &n, rule, has_ref, None) {
            Step::Done(p) => {
                out.pruned.kept |= p.kept;
                out.pruned.errors |= p.errors;
            }
            Step::Dir(_) | Step::Walk => out.revisit.push(n),
        }
    }
    out
}

/// What [`prune_file`] did.
enum Step {
    Done(Pruned),
    /// A directory, seen so.
    Dir(Box<Statx>),
    /// A file with several names, left to the walk (which has the state).
    Walk,
}

/// Deletes the non-directory `n` in `d` if `rule` accepts it.
fn prune_file(
    d: BorrowedFd<'_>,
    r: BorrowedFd<'_>,
    n: &CStr,
    rule: &(dyn Rule + Sync),
    has_ref: bool,
    state: Option<&mut PruneState>,
) -> Step {
    let mut out = Pruned::default();
    let st = match tidy(|| lstat(d, n)) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Step::Done(out),
        Err(_) => {
            out.errors = true;
            return Step::Done(out);
        }
    };
    if file_type(&st) == FileType::Directory {
        return Step::Dir(Box::new(st));
    }
    if state.is_none() && rule.had_links(&st) {
        return Step::Walk;
    }
    let count = state.as_ref().and_then(|s| s.unlinked.get(&id(&st)).copied()).unwrap_or(0);
    let other = Other { dir: r, name: n, present: has_ref, failed: Default::default(), looked: Default::default() };
    if rule.delete(d, r, n, &st, &other, count) {
        let gone = tidy(|| rustix::fs::unlinkat(d, n, AtFlags::empty())).is_ok();
        if gone && st.stx_nlink > 1 {
            if let Some(state) = state {
                *state.unlinked.entry(id(&st)).or_insert(0) += 1;
            }
        }
        out.errors = !gone;
    } else if other.failed.get() {
        out.errors = true;
    } else {
        out.kept = true;
    }
    Step::Done(out)
}

/// Deletes the entries of the tree `dir`/`name` (not its root) that `rule`
/// accepts, given the entry and the one of the same name in `reference` (a
/// tree with the same layout), and the directories that end up empty. A
/// directory is entered only if `reference` has one of that name and it is
/// on the root's device. Each step is a cleanup step ([`tidy`]).
/// `state` carries what earlier passes did. The files of each directory
/// are pruned by up to `threads` threads ([`pool`](super::pool)), handed
/// over when the walk enters it and taken back before its other entries
/// (its subdirectories); a directory with nothing else is left with its
/// files pending while the walk goes on to the next ones (up to `threads +
/// 1` so), and removed once its files are, and after everything left
/// below it.
fn prune(
    dir: BorrowedFd<'_>,
    name: &CStr,
    reference: &Entry,
    rule: &(dyn Rule + Sync),
    state: &mut PruneState,
    threads: usize,
) -> Pruned {
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
    let work = |b: Batch| prune_batch(rule, b);
    super::pool::crew(threads, &work, |crew| {
        // The files of the directory just entered, on the crew, under a
        // key of their own (without threads, every entry is judged by the
        // walk itself).
        let mut next_key = 0;
        let mut files = |walk: &mut Walk<2>, crew: &mut PruneCrew<'_, '_>, out: &mut Pruned, has_ref: bool| {
            if threads == 0 {
                return None;
            }
            let names = walk.take_files();
            if names.is_empty() {
                return None;
            }
            let Ok(dirs) = walk.shared() else {
                out.errors = true;
                return None;
            };
            next_key += 1;
            for names in crew.batches(names) {
                crew.submit(next_key, Batch { dirs: dirs.clone(), has_ref, names });
            }
            Some(next_key)
        };
        // The directories on the current path (the root first, which stays).
        let root = Level { keep: true, has_ref, key: files(&mut walk, crew, &mut out, has_ref), entered: 0 };
        let mut path = vec![root];
        // Directories walked whose files are still on the crew: a few, so
        // that each thread may be removing files in a directory of its own
        // (removals in one directory take its lock in turn). Each is
        // removed once its files are.
        let mut left: VecDeque<Left> = VecDeque::new();
        let most_left = threads + 1;
        let mut left_count = 0;
        loop {
            let level = path.last_mut().expect("the root's");
            let has_ref = level.has_ref;
            if let Some(n) = walk.next_name() {
                // The directory's files are taken back before any other
                // entry (a subdirectory): jobs waiting on the crew hold
                // their directory open, and a deep tree must not hold
                // every level (as for the copy). Names they leave to the
                // walk come first.
                if let Some(key) = level.key.take() {
                    let revisit = settle(crew.collect(key), &mut out);
                    if !revisit.is_empty() {
                        walk.revisit(n);
                        revisit.into_iter().for_each(|m| walk.revisit(m));
                        continue;
                    }
                }
                let Ok([d, r]) = walk.fds() else {
                    out.errors = true;
                    break;
                };
                let st = match prune_file(d, r, &n, rule, has_ref, Some(state)) {
                    Step::Dir(st) => st,
                    Step::Done(p) => {
                        out.kept |= p.kept;
                        out.errors |= p.errors;
                        continue;
                    }
                    Step::Walk => unreachable!("the walk has the state"),
                };
                let other = match has_ref.then(|| tidy(|| lstat(r, &n))) {
                    None | Some(Err(Errno::NOENT)) => None,
                    Some(Ok(o)) => Some(o),
                    Some(Err(_)) => {
                        out.errors = true;
                        continue;
                    }
                };
                let sub_ref = has_ref && other.is_some_and(|o| file_type(&o) == FileType::Directory);
                if has_ref && !sub_ref && !rule.alone() {
                    out.kept = true;
                    continue;
                }
                let Ok(a) = tidy(|| open_dir(d, &n)) else {
                    out.errors = true;
                    continue;
                };
                let b = match sub_ref {
                    true => tidy(|| open_dir(r, &n)),
                    false => rustix::io::fcntl_dupfd_cloexec(&a, 0),
                };
                let Ok(b) = b else {
                    out.errors = true;
                    continue;
                };
                match tidy(|| fstat(a.as_fd())) {
                    // Replaced meanwhile, or something mounted there (another
                    // device, or a bind mount of this one): keep. Judged
                    // alone (no directory of that name to compare with), only
                    // a directory xrename made is entered.
                    Ok(now)
                        if !same_inode(&now, &st)
                            || (now.stx_dev_major, now.stx_dev_minor) != dev
                            || mount_root(&now)
                            || (!sub_ref && !rule.remove_dir(&now)) =>
                    {
                        out.kept = true
                    }
                    Ok(now) => {
                        let keep = !(state.approved.contains(&id(&now)) || rule.remove_dir(&now));
                        if !keep {
                            state.approved.insert(id(&now));
                        }
                        match walk.push_seen(n, [a, b], [Some(now), None]) {
                            Ok(()) => {
                                let key = files(&mut walk, crew, &mut out, sub_ref);
                                path.push(Level { keep, has_ref: sub_ref, key, entered: left_count });
                            }
                            Err(_) => out.errors = true,
                        }
                    }
                    Err(_) => out.errors = true,
                }
                continue;
            }
            // Every name of the directory visited. Its files are taken back
            // now if they are done, or if it is the root (it stays); else the
            // walk leaves it with them.
            let is_root = path.len() == 1;
            let level = path.last_mut().expect("the root's");
            if let Some(key) = level.key.take_if(|k| is_root || crew.is_done(*k)) {
                let revisit = settle(crew.collect(key), &mut out);
                if !revisit.is_empty() {
                    revisit.into_iter().for_each(|n| walk.revisit(n));
                    continue;
                }
            }
            match walk.pop() {
                Ok(Some((frame, [d, r]))) if !walk.is_done() => {
                    let Level { keep, has_ref, key, entered: since } = path.pop().expect("not the root");
                    let Ok([parent, _]) = walk.shared() else {
                        out.errors = true;
                        continue;
                    };
                    let dir = Left { key, dirs: [d, r], parent, name: frame.name, keep, has_ref, seq: left_count };
                    if key.is_some() {
                        left.push_back(dir);
                        left_count += 1;
                        while left.len() > most_left {
                            let oldest = left.pop_front().expect("more than one");
                            finish(oldest, crew, rule, state, &mut out);
                        }
                        continue;
                    }
                    // The ones left below it first (with those left before
                    // them: children always come before their parent).
                    while left.back().is_some_and(|l| l.seq >= since) {
                        let first = left.pop_front().expect("not empty");
                        finish(first, crew, rule, state, &mut out);
                    }
                    finish(dir, crew, rule, state, &mut out);
                }
                Ok(_) => break,
                Err(_) => {
                    out.errors = true;
                    break;
                }
            }
        }
        while let Some(dir) = left.pop_front() {
            finish(dir, crew, rule, state, &mut out);
        }
    });
    out
}

type PruneCrew<'s, 'e> = super::pool::Crew<'s, 'e, Batch, BatchDone>;

/// A directory on the walk's current path.
struct Level {
    /// It must stay (changed meanwhile).
    keep: bool,
    /// It has one in the reference tree (a withdrawn copy's directory may
    /// not: the original's was renamed meanwhile; it is then judged alone).
    has_ref: bool,
    /// The key of its files on the crew, until taken back.
    key: Option<u64>,
    /// How many directories had been left when it was entered: those left
    /// since are below it.
    entered: u64,
}

/// A directory walked, to remove once its files are (on the crew under
/// `key`, if any).
struct Left {
    key: Option<u64>,
    /// The directory, and its reference.
    dirs: [Arc<OwnedFd>; 2],
    /// Its parent in the tree being pruned.
    parent: Arc<OwnedFd>,
    name: CString,
    /// Whether it must stay (changed meanwhile).
    keep: bool,
    has_ref: bool,
    /// How many directories were left before it.
    seq: u64,
}

/// Takes back what became of the batches of one directory; returns the
/// names left to the walk.
fn settle(done: Vec<super::pool::Outcome<BatchDone>>, out: &mut Pruned) -> Vec<CString> {
    let mut revisit = Vec::new();
    for r in done {
        match r {
            Ok(done) => {
                out.kept |= done.pruned.kept;
                out.errors |= done.pruned.errors;
                revisit.extend(done.revisit);
            }
            Err(_) => out.errors = true,
        }
    }
    revisit
}

/// Removes a directory the walk has left, once its files are: the names
/// they left (files with several names) are judged here, with the walk's
/// state; a directory among them (a file replaced by one since the
/// listing) keeps it.
fn finish(dir: Left, crew: &mut PruneCrew<'_, '_>, rule: &(dyn Rule + Sync), state: &mut PruneState, out: &mut Pruned) {
    let mut keep = dir.keep;
    if let Some(key) = dir.key {
        let [d, r] = &dir.dirs;
        for n in settle(crew.collect(key), out) {
            match prune_file(d.as_fd(), r.as_fd(), &n, rule, dir.has_ref, Some(state)) {
                Step::Done(p) => {
                    out.kept |= p.kept;
                    out.errors |= p.errors;
                }
                Step::Dir(_) | Step::Walk => keep = true,
            }
        }
    }
    if keep {
        out.kept = true;
        return;
    }
    match tidy(|| rustix::fs::unlinkat(&*dir.parent, &*dir.name, AtFlags::REMOVEDIR)) {
        Ok(()) => {}
        Err(Errno::NOTEMPTY | Errno::EXIST) if out.kept || out.errors => {}
        Err(_) => out.errors = true,
    }
}

/// Starts a walk of two roots, trying again on a transient failure.
fn tidy_walk(root: OwnedFd, other: OwnedFd) -> Option<Walk<2>> {
    for _ in 0..TIDY_TRIES {
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
